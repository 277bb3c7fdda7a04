"""The softmax passes of dense attention: the driver, and the fast kernels (Numba loops
over the rows of one slice).

The driver, called by [`functional.attention`][refsparse.functional.attention]:

    masked_softmax(s, blocked, scale, causal)   in place on s (..., Tq, Tk): steps 2–3
    masked_softmax_grad(dp, p, scale)           in place on dp (..., Tq, Tk): step 3 back
    for_each_slice(fn, lead)                    fn(i) for each index i of lead's first axis

runs the path that is switched on ([`kernels.current`][refsparse.kernels.current]):
the reference, [`kernels.reference.softmax`][refsparse.kernels.reference.softmax]
(whole-array NumPy, the definition; and a plain loop over the slices), or the kernels
below (and the slices on the threads of
[`parallel_for`][refsparse.kernels.parallel.parallel_for]) — which run the reference on
slices of fewer than ``KERNEL_MIN_SIZE`` scores. The tests hold the two paths together.
``s`` (and ``dp``, ``p``) must be C-contiguous; ``blocked`` is a bool array broadcastable
to s, True = may NOT attend, or None; ``causal`` also blocks every key j > query i.
The kernels exist for speed: the reference walks the
(…, Tq, Tk) scores ~8 times (scale, mask, max, subtract, exp, sum, divide), these walk
each row while it sits in cache, and skip the exp of the keys past a causal cut. The
exponential is [`refsparse.kernels.activations.exp_softmax`][refsparse.kernels.activations.exp_softmax]: ``np.exp`` in float64,
and in float32 a vectorised polynomial — measured twice as fast as NumPy's float32
``np.exp`` on this machine, within one ulp of it.

Each kernel works on ONE slice, serially (``nogil=True``, no ``parallel``): attention
calls it from the threads of [`refsparse.kernels.parallel`][refsparse.kernels.parallel], one slice of the batch
per call, between that slice's BLAS products.

Arrays (one dtype, float32 or float64):

    s, p, dp   (M, Tq, Tk)  C-contiguous; M = the heads of one batch element (or 1)
    blocked    (Mb, Tq, Tk) bool C-contiguous, True = may NOT attend; Mb = M (a mask per
                            slice) or 1 (one mask for all, e.g. causal); or None (every
                            key allowed)

Forward, row by row (the reference's steps 2–3):

    softmax_rows:   s ← s·scale;  s_j ← −∞ where blocked, 0 where j > q0 + i (causal;
                    q0 = the first query's row);  m = max_j s_j;
                    s ← exp(s − m) / Σ_j exp(s_j − m)      (a row with no key: all 0)

Backward (step 3, with attention's scale folded in):

    softmax_grad:   ds = ((dp − Σ_j dp_j p_j) ⊙ p) · scale,   in place of dp

The row sums use ``fastmath={"reassoc"}`` (they vectorize only so): they agree with
the reference's pairwise sums to a few ulps of the terms, which is all the tests ask.
"""

from __future__ import annotations

import numba
import numpy as np

from . import parallel
from .activations import exp_softmax
from .reference import softmax as ref
from .switch import current

__all__ = ["KERNEL_MIN_SIZE", "for_each_slice", "masked_softmax", "masked_softmax_grad",
           "softmax_grad", "softmax_rows"]

# slices of fewer scores than this run the reference on the fast path too: as fast there,
# and it keeps small problems (tests, golden vectors) on the reference code, bit for bit
KERNEL_MIN_SIZE = 16384


def masked_softmax(s, blocked, scale, causal):
    """In place on the raw scores s (..., Tq, Tk), C-contiguous: each row ← softmax(row ·
    scale) over its allowed keys (not ``blocked``; with ``causal``, keys j <= i), 0 at the
    others; a row with no allowed key is all 0."""
    if current() == "reference" or s.size < KERNEL_MIN_SIZE:
        ref.masked_softmax(s, blocked, scale, causal)
        return
    Tq, Tk = s.shape[-2:]
    s3 = s.reshape(-1, Tq, Tk)  # (M, Tq, Tk), a view
    b3 = None if blocked is None else _kernel_mask(np.broadcast_to(blocked, s.shape), s3.shape)
    softmax_rows(s3, b3, scale, 0 if causal else Tk)  # the causal cut: keys j > 0 + i


def masked_softmax_grad(dp, p, scale):
    """In place on dp (..., Tq, Tk): dp ← ((dp − Σ_j dp_j p_j) ⊙ p) · scale; dp and p
    C-contiguous."""
    if current() == "reference" or p.size < KERNEL_MIN_SIZE:
        ref.masked_softmax_grad(dp, p, scale)
        return
    Tq, Tk = p.shape[-2:]
    softmax_grad(dp.reshape(-1, Tq, Tk), p.reshape(-1, Tq, Tk), scale)


def for_each_slice(fn, lead):
    """Call fn(i) for every index i of the first axis of the leading axes ``lead``; fn(())
    when there is none. The slices are independent: the result is the same in any order.

    Fast path: the slices run side by side on the threads of
    [`parallel_for`][refsparse.kernels.parallel.parallel_for] (BLAS products, NumPy
    element-wise passes and the ``nogil`` kernels below release the GIL; one thread
    unless BLAS is single-threaded). Reference path: a plain loop.
    """
    if len(lead) == 0:
        fn(())
    else:
        parallel.parallel_for(fn, lead[0])


def _kernel_mask(blocked, shape):
    """A slice's mask in the layout ``softmax_rows`` reads fast: C-contiguous (Mb, Tq, Tk).

    Mb = 1 when every matrix of the slice shares one mask (a broadcast axis: causal, a
    padding mask shared by the heads), else Mb = M: a copy of at most the slice's size,
    never the broadcast expanded M times when it need not be.
    """
    b3 = blocked.reshape(shape)  # (M, Tq, Tk), a view unless broadcast axes must merge
    if b3.strides[0] == 0:
        b3 = b3[:1]
    return np.ascontiguousarray(b3)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def softmax_rows(s, blocked, scale, q0):
    """In place on s (M, Tq, Tk), the raw scores q kᵀ: each row ← softmax(row · scale) over
    its allowed keys, 0 elsewhere. O(M·Tq·Tk), one walk of each row while it is in cache.

    Row i allows key j iff j <= q0 + i (the causal cut: the rows are the queries q0,
    q0 + 1, …; q0 >= Tk cuts nothing) and not ``blocked[·, i, j]``. Keys past the cut
    are set to 0 without an exp; a row with no allowed key is all 0.
    """
    M, Tq, Tk = s.shape
    sc = s.dtype.type(scale)
    zero = s.dtype.type(0)
    ninf = s.dtype.type(-np.inf)
    for a in range(M):
        ab = a if blocked is not None and blocked.shape[0] > 1 else 0
        for i in range(Tq):
            row = s[a, i]  # (Tk,)
            n = min(Tk, max(q0 + i + 1, 0))  # keys [0, n) are before the cut
            for j in range(n, Tk):
                row[j] = zero
            # scale; masked keys to −∞
            if blocked is None:
                for j in range(n):
                    row[j] *= sc
            else:
                b = blocked[ab, i]
                for j in range(n):
                    row[j] = ninf if b[j] else row[j] * sc
            m = ninf
            for j in range(n):
                m = max(m, row[j])
            if m == ninf:  # an empty row: all 0, no NaN from −∞ − (−∞)
                for j in range(n):
                    row[j] = zero
                continue
            # exp of the shifted scores (the row max gives exp(0) = 1), their sum, divide
            d = zero
            for j in range(n):
                e = exp_softmax(row[j] - m)
                row[j] = e
                d += e
            for j in range(n):
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
