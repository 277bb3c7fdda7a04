"""The softmax passes of dense attention, as Numba loops over the rows of one slice.

NumPy twins: ``refsparse.functional.attention._masked_softmax`` (forward, steps 2–3) and
``_softmax_grad`` (backward, step 3) — the same formulas as whole-array NumPy passes;
the tests hold the two together. The kernels exist for speed: the twin walks the
(…, Tq, Tk) scores ~8 times (scale, mask, max, subtract, exp, sum, divide), these walk
each row while it sits in cache. The exponential stays NumPy's ``np.exp``, between the two
forward kernels: it is SIMD-vectorised (Numba's scalar ``exp`` is ~10× slower here) and
accurate to the last bit.

Each kernel works on ONE slice, serially (``nogil=True``, no ``parallel``): attention
calls it from the threads of :mod:`refsparse.kernels.parallel`, one slice of the batch
per call, between that slice's BLAS products.

Arrays (one dtype, float32 or float64):

    s, p, dp   (M, Tq, Tk)  C-contiguous; M = the heads of one batch element (or 1)
    blocked    (Mb, Tq, Tk) bool C-contiguous, True = may NOT attend; Mb = M (a mask per
                            slice) or 1 (one mask for all, e.g. causal); or None (every
                            key allowed)

Forward, row by row (the twin's steps 2–3):

    masked_shift:   s ← s·scale;  s_j ← −∞ where blocked or j > q0 + i (causal; q0 = the
                    first query's row);  m = max_j s_j (0 if all −∞);
                    s ← s − m                       (then the caller: s ← exp(s))
    normalize_rows: d = Σ_j s_j (1 if d = 0: an empty row stays 0);  s ← s / d

Backward (the twin's step 3, with attention's scale folded in):

    softmax_grad:   ds = ((dp − Σ_j dp_j p_j) ⊙ p) · scale,   in place of dp

The row sums use ``fastmath={"reassoc"}`` (they vectorize only so): they agree with
NumPy's pairwise sums to a few ulps of the terms, which is all the tests ask.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def masked_shift(s, blocked, scale, q0):
    """In place on s (M, Tq, Tk): scale, mask to −∞, subtract each row's max. O(M·Tq·Tk).

    Causal cut: row i keeps keys j <= q0 + i only (the rows are the queries q0, q0 + 1, …;
    q0 >= Tk cuts nothing).
    """
    M, Tq, Tk = s.shape
    sc = s.dtype.type(scale)
    ninf = s.dtype.type(-np.inf)
    for a in range(M):
        ab = a if blocked is not None and blocked.shape[0] > 1 else 0
        for i in range(Tq):
            row = s[a, i]
            last = q0 + i  # the last key this query may see
            if blocked is None:
                for j in range(Tk):
                    row[j] = ninf if j > last else row[j] * sc
            else:
                b = blocked[ab, i]
                for j in range(Tk):
                    row[j] = ninf if (j > last or b[j]) else row[j] * sc
            m = ninf
            for j in range(Tk):
                m = max(m, row[j])
            if m == ninf:  # an empty row: exp(−∞ − 0) = 0, no NaN from −∞ − (−∞)
                m = s.dtype.type(0)
            for j in range(Tk):
                row[j] -= m


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def normalize_rows(s):
    """In place on s (M, Tq, Tk) = exp(shifted scores): divide each row by its sum. O(M·Tq·Tk)."""
    M, Tq, Tk = s.shape
    for a in range(M):
        for i in range(Tq):
            row = s[a, i]
            d = s.dtype.type(0)
            for j in range(Tk):
                d += row[j]
            if d == 0:  # an empty row stays 0 / 1 = 0
                d = s.dtype.type(1)
            for j in range(Tk):
                row[j] /= d


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def softmax_grad(dp, p, scale):
    """In place on dp (M, Tq, Tk): dp ← ((dp − Σ_j dp_j p_j) ⊙ p) · scale. O(M·Tq·Tk)."""
    M, Tq, Tk = dp.shape
    sc = dp.dtype.type(scale)
    for a in range(M):
        for i in range(Tq):
            g = dp[a, i]
            y = p[a, i]
            r = dp.dtype.type(0)
            for j in range(Tk):
                r += g[j] * y[j]
            for j in range(Tk):
                g[j] = (g[j] - r) * y[j] * sc
