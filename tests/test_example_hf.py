"""The GPT-2 page of docs/validating.md and examples/validate_hf_gpt2.py run as written."""

import importlib.util
import os
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpt2_section():
    with open(os.path.join(ROOT, "docs", "validating.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("## Validate your GPT-2 port")
    end = text.index("\n## ", start + 10)
    return text[start:end]


def test_the_docs_gpt2_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _gpt2_section(), re.DOTALL)
    assert len(blocks) == 2 and "check_lm(model, ids)" in blocks[0]
    code = [ln for ln in blocks[0].splitlines() if ln.strip() and not ln.startswith(("import", "from"))]
    assert len(code) <= 5  # the promise: five lines of user code
    env = {}
    for i, block in enumerate(blocks):  # the second block continues the first (padding)
        exec(compile(block, f"docs/validating.md GPT-2 block {i}", "exec"), env)  # noqa: S102
    out = capsys.readouterr().out
    assert "grad.transformer.h.1.mlp.c_proj.weight" in out and "OK: 30 of 30 tensors pass" in out
    assert out.strip().endswith("True")  # the padded batch passes too


def _example():
    spec = importlib.util.spec_from_file_location("validate_hf_gpt2", os.path.join(ROOT, "examples",
                                                                                  "validate_hf_gpt2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_passes_and_catches_a_planted_bug(capsys):
    example = _example()
    assert example.main([]) == 0
    assert "OK: the GPT-2 matches refsparse" in capsys.readouterr().out
    assert example.main(["--bug", "eps"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the GPT-2 does not match refsparse" in out and "grad.transformer.h.0.ln_1.weight" in out
