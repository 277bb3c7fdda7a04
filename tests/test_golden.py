"""The regression set: today's code must reproduce tests/golden/ (made by scripts/make_golden.py).

Each golden file holds an op's float64 inputs, parameters and upstream gradient, and the
outputs and gradients refsparse computed from them. ``vectors.recompute`` runs today's code
on exactly the stored numbers (nothing is re-drawn), and every output and gradient is
compared with the stored one:

- **bit for bit** (0 ULP; +0 == −0) when the test runs where the vectors were made, on the
  fast kernels they were made with (the reference path sums in its own order) — the
  same numpy, scipy and numba versions, CPU model, SIMD extensions and Numba thread count
  (``vectors.fingerprint()``, kept in each file's ``golden_fingerprint`` metadata). The same
  code then runs the same instructions in the same order, so any difference is a change in
  the numerics, and must be explained (then rerun scripts/make_golden.py).

- **within GOLDEN_ULPS = 64 ULPs of each tensor's largest entry** elsewhere:
  ``|new − golden| <= 64 · eps · max|golden|`` entry-wise (eps = 2.2e-16, so ~1.4e-14
  relative to the tensor's scale). Why not bit for bit there: OpenBLAS chooses its GEMM
  kernel (and so the order of the partial sums of every product) by CPU; numpy runs exp
  and other ufuncs through SIMD implementations chosen by CPU, which differ from each
  other by up to 1 ULP; the Numba kernels' reductions are reassociated (``fastmath={"reassoc"}``) and
  vectorised to the CPU's width. Each of these moves a sum by a few ULPs *of the terms
  summed*, not of the result — where terms cancel (a gradient entry near 0) the result's
  own ULP count can be large — so the bound is stated relative to the tensor's largest
  entry, as gradcheck measures errors — or, for a gradient, of its layer's largest gradient
  entry if that is larger (the tensors whose names share the prefix up to the last dot): a
  gradient that is zero by the math holds nothing but such rounding noise, and its own
  largest entry is the noise itself. The key projection's bias is one: softmax ignores a
  number added to every score of a row, so its gradient is a sum of terms that cancel, and
  the terms' size is that of the key projection's weight gradient. 64 leaves a wide margin over the few ULPs these
  reorderings cost on the sizes used here (T <= 16, widths <= 32, two layers), while a real
  change in the math (a missing term, eps outside the root, a different GELU form) moves
  results by 1e-8 or more.

Inputs, parameters, integer tensors and the upstream gradient are read, not recomputed; the
outputs' and gradients' names and shapes must match the file exactly.
"""

import glob
import json
import os

import numpy as np
import pytest

import refsparse.kernels

from refsparse import vectors
from refsparse.validate import load, ulp_distance

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
FILES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.safetensors")))
GOLDEN_ULPS = 64


def test_the_regression_set_is_there_and_small():
    names = {os.path.basename(f)[: -len(".safetensors")] for f in FILES}
    for needed in ("layernorm", "gelu", "attention_causal_empty_row", "sparse_attention_local",
                   "sparse_attention_strided", "cross_entropy", "encoder_layer", "decoder_lm_local"):
        assert needed in names, f"tests/golden/{needed}.safetensors is missing: run scripts/make_golden.py"
    assert sum(os.path.getsize(f) for f in FILES) < 1_000_000


def _scale(name, stored):
    """The scale a tensor is compared at elsewhere: its largest entry, or for a gradient
    the largest entry of its layer's gradients (names sharing the prefix up to the last dot)."""
    layer = name.rsplit(".", 1)[0] + "."
    group = [t for n, t in stored.items() if n == name or (name.startswith("grad.") and n.startswith(layer))]
    return max((float(np.max(np.abs(t))) for t in group if t.size), default=0.0)


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.basename(p))
def test_golden_vectors_are_reproduced(path):
    tensors, meta = load(path)
    assert meta["dtype"] == "float64"
    new = vectors.recompute(tensors, meta)
    stored = {k: v for k, v in tensors.items() if k == "output" or k.startswith("grad.")}
    assert sorted(new) == sorted(stored), f"{meta['op']}: the computed tensors' names changed"

    # bit for bit only where the vectors were made *and* on the path they were made on (the fast
    # kernels); the reference kernels sum in their own order, a few ULPs of scale away
    same_machine = (json.loads(meta["golden_fingerprint"]) == vectors.fingerprint()
                    and refsparse.kernels.current() == "fast")
    problems = []
    for name, ref in stored.items():
        got = new[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, \
            f"{name}: {got.shape} {got.dtype}, golden {ref.shape} {ref.dtype}"
        ulps = ulp_distance(ref, got)
        if same_machine:
            if ulps.max() != 0:
                i = np.unravel_index(np.argmax(ulps), ref.shape)
                problems.append(f"{name}: {np.count_nonzero(ulps)} entries differ (max {ulps.max()} ULP); "
                                f"at {i}: golden {ref[i]!r}, now {got[i]!r}")
        else:
            scale = _scale(name, stored)
            bound = GOLDEN_ULPS * np.finfo(ref.dtype).eps * scale
            err = np.abs(got - ref)
            if not np.all(err <= bound):
                i = np.unravel_index(np.argmax(err), ref.shape)
                problems.append(f"{name}: max |new - golden| = {err.max():.3e} > {bound:.3e} "
                                f"({GOLDEN_ULPS} ULPs of the scale {scale:.3e}); at {i}: "
                                f"golden {ref[i]!r}, now {got[i]!r}")
    how = "bit for bit (same machine fingerprint)" if same_machine else f"within {GOLDEN_ULPS} ULPs of scale"
    assert not problems, (f"{os.path.basename(path)} ({meta['op']}) not reproduced {how}:\n  "
                          + "\n  ".join(problems)
                          + "\nIf the change is intended, explain it and rerun scripts/make_golden.py.")


def test_a_changed_number_is_caught():
    """The check itself: one golden output nudged by one ULP is no longer reproduced."""
    tensors, meta = load(os.path.join(GOLDEN_DIR, "layernorm.safetensors"))
    new = vectors.recompute(tensors, meta)
    nudged = tensors["output"].copy()
    nudged.flat[3] = np.nextafter(nudged.flat[3], np.inf)
    assert ulp_distance(nudged, new["output"]).max() == 1
