"""examples/validate_torch_sdpa.py: a user's kernel (here torch's) checked against refsparse.

At float64 tolerances (rtol 1e-10, atol 1e-12) torch's scaled_dot_product_attention with the
pattern as its boolean mask, and a dense torch Linear masked to the sparse weight's pattern,
match refsparse's exported vectors; with one mask entry altered the check fails, naming the
output and gradient tensors, and the script exits 1.
"""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "validate_torch_sdpa.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("validate_torch_sdpa", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_torch_matches_at_float64_tolerances(example, tmp_path, capsys):
    assert (example.RTOL, example.ATOL) == (1e-10, 1e-12)
    assert example.main(["--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "all candidates match" in out and "FAIL" not in out
    reports = example.validate(str(tmp_path), verbose=False)
    assert "sdpa" in reports and all(r.ok for r in reports.values())
    names = {r.name for r in reports["sdpa"].results}
    assert names == {"output", "grad.input.q", "grad.input.k", "grad.input.v"}
    if "masked_linear" in reports:
        assert {r.name for r in reports["masked_linear"].results} == {
            "output", "grad.input.x", "grad.param.weight", "grad.param.bias"}


def test_an_altered_mask_fails_loudly(example, tmp_path, capsys):
    assert example.main(["--out-dir", str(tmp_path), "--alter-mask"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: sdpa" in out
    for name in ("output", "grad.input.q", "grad.input.k", "grad.input.v"):
        assert f"{name}: " in out and "out of rtol/atol" in out
    reports = example.validate(str(tmp_path), alter_mask=True, verbose=False)
    assert not reports["sdpa"].ok
    assert {r.name for r in reports["sdpa"].failures} == {"output", "grad.input.q", "grad.input.k",
                                                          "grad.input.v"}
    if "masked_linear" in reports:
        failed = {r.name for r in reports["masked_linear"].failures}
        assert {"output", "grad.input.x", "grad.param.weight"} <= failed
