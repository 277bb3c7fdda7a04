"""Attention over a sparse pattern: forward, and the backward split into dQ and dK/dV.

Layout legend (all arrays C-contiguous, one dtype, float32 or float64):

    B batch, H heads, Tq queries, Tk keys, D head width (q, k), Dv value width
    q    (B, Tq, H, D)      the (B, T, C) projection output reshaped: no transpose copy
    k    (B, Tk, H, D)
    v    (B, Tk, H, Dv)
    out  (B, Tq, H, Dv)     reshapes to (B, Tq, H·Dv) for the output projection for free
    lse  (B, H, Tq)         per-row log-sum-exp of the scaled scores (−∞ for an empty row)

Pattern arrays (CSR of the boolean (Tq, Tk) pattern, one per (batch, head) group):

    indptr   (PB, PH, Tq+1) int64   row i of pattern (pb, ph) is indices[indptr[pb, ph, i] :
                                    indptr[pb, ph, i+1]]; offsets are absolute into indices
    indices  (nnz_all,) int32       key ids, sorted within a row, no duplicates
    PB ∈ {1, B}, PH ∈ {1, H}: a pattern shared by the batch or the heads has size 1 there;
    (b, h) uses pattern (b if PB > 1 else 0, h if PH > 1 else 0).

The transposed pattern (t_indptr (PB, PH, Tk+1), t_indices = query ids) drives the
dK/dV kernel, which is then row-parallel over keys: no two threads write one row.

NumPy twin: ``refsparse.functional.attention_forward`` / ``attention_backward`` with the
dense boolean mask ``pattern.toarray()`` — the tests hold these kernels to it.

Cost: forward 2·nnz·D flops and one exp per entry (online softmax, one pass); backward
7·nnz·D flops and two exps per entry (scores recomputed from ``lse``, as FlashAttention
does). Memory: O(B·H·T) besides inputs and outputs — never O(T²).
"""

from __future__ import annotations

import numba
import numpy as np

_FLAGS = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})


@numba.njit(**_FLAGS)
def sparse_attention_fwd(q, k, v, indptr, indices, scale, out, lse):
    """Forward over the pattern's entries only; writes ``out`` and ``lse``.

    For each (b, h, i), over the stored keys j of row i (online softmax, Milakov &
    Gimelshein 2018): s_j = q_i · k_j · scale, m = max_j s_j, l = Σ_j exp(s_j − m),
    out_i = Σ_j exp(s_j − m) v_j / l, lse_i = m + log l. An empty row gives out_i = 0 and
    lse_i = −∞.

    ``scale`` must be a scalar of q's dtype. Complexity O(nnz · (D + Dv)) per (b, h).
    """
    B, Tq, H, D = q.shape
    Dv = v.shape[3]
    PB, PH = indptr.shape[0], indptr.shape[1]
    zero = q.dtype.type(0)
    one = q.dtype.type(1)
    neg_inf = q.dtype.type(-np.inf)
    for r in numba.prange(B * H * Tq):
        b = r // (H * Tq)
        h = (r // Tq) % H
        i = r % Tq
        pb = b if PB > 1 else 0
        ph = h if PH > 1 else 0
        e0 = indptr[pb, ph, i]
        e1 = indptr[pb, ph, i + 1]
        o = out[b, i, h]  # (Dv,) the accumulator, then the output row
        for d in range(Dv):
            o[d] = zero
        if e0 == e1:
            lse[b, h, i] = neg_inf
            continue
        qi = q[b, i, h]  # (D,)
        m = neg_inf
        l = zero
        for e in range(e0, e1):
            j = indices[e]
            kj = k[b, j, h]
            s = zero
            for d in range(D):
                s += qi[d] * kj[d]
            s *= scale
            if s > m:  # a new row max: rescale what has been summed so far
                c = np.exp(m - s)  # exp(−∞) = 0 at the first entry
                l *= c
                for d in range(Dv):
                    o[d] *= c
                m = s
            p = np.exp(s - m)
            l += p
            vj = v[b, j, h]
            for d in range(Dv):
                o[d] += p * vj[d]
        inv = one / l
        for d in range(Dv):
            o[d] *= inv
        lse[b, h, i] = m + np.log(l)


@numba.njit(**_FLAGS)
def sparse_attention_bwd_dq(q, k, v, out, dout, lse, indptr, indices, scale, dq, delta):
    """dQ, row-parallel over queries; also writes delta_i = dO_i · O_i for the dK/dV pass.

    With p_ij = exp(q_i · k_j · scale − lse_i) recomputed per stored entry:
    dp_ij = dO_i · v_j, ds_ij = p_ij (dp_ij − delta_i), dq_i = scale · Σ_j ds_ij k_j
    (delta_i = Σ_j p_ij dp_ij = dO_i · O_i: docs/backprop.md, section Attention).
    """
    B, Tq, H, D = q.shape
    Dv = v.shape[3]
    PB, PH = indptr.shape[0], indptr.shape[1]
    zero = q.dtype.type(0)
    for r in numba.prange(B * H * Tq):
        b = r // (H * Tq)
        h = (r // Tq) % H
        i = r % Tq
        pb = b if PB > 1 else 0
        ph = h if PH > 1 else 0
        e0 = indptr[pb, ph, i]
        e1 = indptr[pb, ph, i + 1]
        doi = dout[b, i, h]  # (Dv,)
        oi = out[b, i, h]
        dl = zero
        for d in range(Dv):
            dl += doi[d] * oi[d]
        delta[b, h, i] = dl
        dqi = dq[b, i, h]  # (D,)
        for d in range(D):
            dqi[d] = zero
        if e0 == e1:
            continue
        qi = q[b, i, h]
        L = lse[b, h, i]
        for e in range(e0, e1):
            j = indices[e]
            kj = k[b, j, h]
            vj = v[b, j, h]
            s = zero
            for d in range(D):
                s += qi[d] * kj[d]
            p = np.exp(s * scale - L)
            dp = zero
            for d in range(Dv):
                dp += doi[d] * vj[d]
            ds = p * (dp - dl)
            for d in range(D):
                dqi[d] += ds * kj[d]
        for d in range(D):
            dqi[d] *= scale


@numba.njit(**_FLAGS)
def sparse_attention_bwd_dkv(q, k, v, dout, lse, delta, t_indptr, t_indices, scale, dk, dv):
    """dK and dV, row-parallel over keys through the transposed pattern.

    For each key j and each query i that may attend to it:
    dv_j += p_ij dO_i,   dk_j += scale · p_ij (dO_i · v_j − delta_i) q_i.
    A key no query attends to gets zero gradients.
    """
    B, Tk, H, D = k.shape
    Dv = v.shape[3]
    PB, PH = t_indptr.shape[0], t_indptr.shape[1]
    zero = q.dtype.type(0)
    for r in numba.prange(B * H * Tk):
        b = r // (H * Tk)
        h = (r // Tk) % H
        j = r % Tk
        pb = b if PB > 1 else 0
        ph = h if PH > 1 else 0
        e0 = t_indptr[pb, ph, j]
        e1 = t_indptr[pb, ph, j + 1]
        dkj = dk[b, j, h]  # (D,)
        dvj = dv[b, j, h]  # (Dv,)
        for d in range(D):
            dkj[d] = zero
        for d in range(Dv):
            dvj[d] = zero
        if e0 == e1:
            continue
        kj = k[b, j, h]
        vj = v[b, j, h]
        for e in range(e0, e1):
            i = t_indices[e]
            qi = q[b, i, h]
            doi = dout[b, i, h]
            s = zero
            for d in range(D):
                s += qi[d] * kj[d]
            p = np.exp(s * scale - lse[b, h, i])
            dp = zero
            for d in range(Dv):
                dvj[d] += p * doi[d]
                dp += doi[d] * vj[d]
            ds = p * (dp - delta[b, h, i])
            for d in range(D):
                dkj[d] += ds * qi[d]
        for d in range(D):
            dkj[d] *= scale
