"""bench/spmm_locality.py at a tiny size: its patterns are what the comparison needs (the same
entries in every row, the confined ones drawn below S), and a run checks the kernels against
the dense twin and reports every pattern it could build. No timings are asserted."""

import argparse
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, *parts):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loc = _load("bench_spmm_locality", "bench", "spmm_locality.py")


@pytest.mark.parametrize("along_transpose", [False, True])
def test_patterns_hold_equal_rows_and_confined_ids_stay_below_the_span(along_transpose):
    c_out, c_in, density, span = 48, 80, 0.25, 32
    rng = np.random.default_rng(0)
    width = c_out if along_transpose else c_in
    for ids_from in (width, span):
        w = loc.pattern(c_out, c_in, density, ids_from, along_transpose, rng)
        m = w.T.tocsr() if along_transpose else w  # rows along which the ids were drawn
        m.sort_indices()
        counts = np.diff(m.indptr)
        assert (counts == round(density * width)).all()
        assert m.indices.max() < ids_from
        assert w.has_canonical_format and w.nnz == counts.sum()
    assert m.indices.max() >= span // 2  # the confined ids spread over the span, not a few of them


def test_a_run_reports_random_confined_and_floor_with_equal_entries():
    args = argparse.Namespace(density=0.25, span=32, rounds=1, repeats=1)
    out = loc.measure((64, 96), args)
    assert [r["op"] for r in out] == ["forward", "backward"]
    for r in out:
        assert set(r["ms"]) == {"random", "confined", "floor"}
        assert r["nnz"] == round(0.25 * (96 if r["op"] == "forward" else 64)) * (64 if r["op"] == "forward" else 96)
        assert r["entries_ms"]["random"] == r["ms"]["random"] - r["ms"]["floor"]


def test_rows_too_full_for_the_span_get_no_confined_pattern():
    args = argparse.Namespace(density=0.5, span=32, rounds=1, repeats=1)
    out = loc.measure((64, 96), args)  # forward rows hold 48 > 32 entries, backward rows 32
    assert set(out[0]["ms"]) == {"random", "floor"} and "confined" not in out[0]["entries_ms"]
    assert set(out[1]["ms"]) == {"random", "confined", "floor"}


def test_the_check_catches_a_wrong_kernel(monkeypatch):
    from refsparse.kernels import spmm

    real = spmm.forward
    monkeypatch.setattr(spmm, "forward", lambda x, w, b: real(x, w, b) * np.float32(1.001))
    with pytest.raises(AssertionError, match="dense twin"):
        loc.measure((64, 96), argparse.Namespace(density=0.25, span=32, rounds=1, repeats=1))
