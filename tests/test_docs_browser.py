"""scripts/docs_browser.py (run by .ci/docs-browser) fails on what it exists to catch.

A tiny hand-written site holds one clean page and one page with each fault: raw TeX, an image
that does not exist, one from the network, a JavaScript error, a table wider than the column with
no scroll box, and a link to a folder. The pure-Python parts are tested always; the browser run only where
Debian's chromium, websocket-client and the docs extra's MathJax are installed.
"""

import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


browser = _load("docs_browser", "scripts/docs_browser.py")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<script>window.MathJax = {{options: {{ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"}},
  tex: {{inlineMath: [["\\\\(", "\\\\)"]]}}}};</script>
<script src="javascripts/mathjax/tex-svg.js"></script></head>
<body><article class="md-content__inner" style="width: 600px">{body}</article></body></html>"""

CLEAN = """<h1 id="t">Clean</h1><p>A formula <span class="arithmatex">\\(a^2 + b^2\\)</span>, code
<code>\\(not math\\)</code>, a <a href="broken.html">link to a page</a>.</p>
<table><tr><td>narrow</td></tr></table>"""

BROKEN = """<h1 id="b">Broken</h1><p>Left raw: \\frac{a}{b} and $$x$$.</p>
<img src="img/none.png" alt="missing"><img src="http://example.com/x.png" alt="remote">
<script>null.boom();</script>
<table style="width: 1500px"><tr><td>wide</td></tr></table>
<p><a href="folder/">a folder</a></p>"""


def _site(tmp_path):
    hooks = _load("mkdocs_hooks", "scripts/mkdocs_hooks.py")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE.format(title="Clean", body=CLEAN))
    (site / "broken.html").write_text(PAGE.format(title="Broken", body=BROKEN))
    (site / "folder").mkdir()
    return site, hooks


def test_links_to_folders_are_found(tmp_path):
    site, _ = _site(tmp_path)
    bad = browser.disk_links(str(site), ["index.html", "broken.html"])
    # (MathJax is not copied into this site: its script is a link to no file too)
    assert [b for b in bad if "mathjax" not in b] == ["broken.html: img/none.png", "broken.html: folder/"]
    assert "index.html: javascripts/mathjax/tex-svg.js" in bad


def test_check_info_names_each_fault():
    info = {"untypeset": ["\\(x\\)"], "mathErrors": [], "rawTex": ["\\frac"], "brokenImages": ["a.png"],
            "wideTables": ["table 1"], "pageWidth": 1500, "wideSignatures": ["f(a, b)"], "sphinxRoles": [":func:f"]}
    problems = "\n".join(browser.check_info(info))
    for what in ("not typeset", "raw TeX", "image did not load", "table wider", "page 1500 px wide",
                 "signature wider", "Sphinx role"):
        assert what in problems, what
    clean = {k: ([] if isinstance(v, list) else 0) for k, v in info.items()}
    assert browser.check_info(clean) == []


def _have_browser():
    if not shutil.which("chromium"):
        return "no chromium"
    if importlib.util.find_spec("websocket") is None:
        return "no websocket-client"
    try:
        _load("mkdocs_hooks", "scripts/mkdocs_hooks.py").mathjax_dir()
    except RuntimeError as e:
        return str(e)
    return None


@pytest.mark.slow
def test_the_browser_run_fails_on_the_broken_page_only(tmp_path, capsys):
    reason = _have_browser()
    if reason:
        pytest.skip(reason)
    site, hooks = _site(tmp_path)
    hooks.copy_mathjax(str(site))
    status = browser.main([str(site), "--chromium", shutil.which("chromium")])
    out = capsys.readouterr()
    assert status == 1
    lines = {line.split()[1]: line for line in out.out.splitlines() if line.startswith(("ok ", "FAIL"))}
    assert lines["index.html"].startswith("ok"), out
    assert lines["broken.html"].startswith("FAIL"), out
    for what in ("raw TeX", "image did not load", "JavaScript error", "table wider", "link to no file",
                 "request beyond the loopback: http://example.com/x.png"):
        assert what in out.err, what
    # the clean page's formula was typeset, from the MathJax the hook ships
    assert "1 formulas" in lines["index.html"]
