"""The docs site's pages stay true to the code: the tour runs, its paths and names exist.

(The site itself is built with `mkdocs build --strict` in .ci/run; this needs no mkdocs.)
"""

import os
import re

import pytest

import refsparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _read(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def test_every_page_in_the_nav_exists():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        nav = re.findall(r":\s*([\w-]+\.md)\s*$", f.read(), re.M)
    assert "tour.md" in nav and "validating.md" in nav and "api.md" in nav
    for page in nav:
        assert os.path.exists(os.path.join(DOCS, page)), page


@pytest.mark.parametrize("page,printed", [("tour.md", "loss"), ("getting-started.md", "max")])
def test_the_code_of_a_page_runs(page, printed, capsys):
    code = re.findall(r"```python\n(.*?)```", _read(page), re.S)
    assert code, f"docs/{page} lost its code"
    for i, block in enumerate(code):
        exec(compile(block, f"docs/{page} block {i}", "exec"), {})
    assert printed in capsys.readouterr().out


@pytest.mark.parametrize("page", ["tour.md", "validating.md", "getting-started.md", "sparse-training.md"])
def test_the_files_a_page_names_exist(page):
    paths = set(re.findall(r"`((?:refsparse|tests|scripts|examples|bench)/[\w/.-]+\.py)`", _read(page)))
    assert paths
    missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, f"docs/{page} names files that do not exist: {missing}"


def test_the_functions_the_tour_names_exist():
    import importlib

    text = _read("tour.md")
    # `name(` … (`refsparse/x/y.py`): each function or class named next to its file is in that file
    pairs = re.findall(r"`([A-Za-z_][\w.]*)(?:\([^`]*\))?`[^`]{0,80}?\(`(refsparse/[\w/]+)\.py`\)", text)
    assert len(pairs) > 10
    for name, path in pairs:
        module = importlib.import_module(path.replace("/", "."))
        obj = module
        for part in name.split("."):
            assert hasattr(obj, part), f"docs/tour.md: {name} is not in {path}.py"
            obj = getattr(obj, part)
    assert refsparse.__version__
