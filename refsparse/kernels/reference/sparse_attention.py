"""Sparse attention, the reference: the three steps of
`refsparse.functional.sparse_attention` over each CSR row, and the backward over the
transposed pattern. O(nnz · D) time, O(nnz + B·H·T·D) memory; nothing T × T.

Layout: q (B, Tq, H, D), k (B, Tk, H, D), v (B, Tk, H, Dv), out (B, Tq, H, Dv), lse (B, H, Tq).
Pattern (pb, ph) = (b if PB > 1 else 0, h if PH > 1 else 0): row i of it holds the keys
indices[indptr[pb, ph, i] : indptr[pb, ph, i+1]]; column j (the transpose) the queries
t_indices[t_indptr[pb, ph, j] : t_indptr[pb, ph, j+1]]. The compiled loops allocate
nothing: every array comes from the Python wrappers (so tracemalloc sees all the memory).
"""

import numba
import numpy as np


def forward(q, k, v, pattern, scale):
    """out (B, Tq, H, Dv), lse (B, H, Tq); ``pattern`` has .indptr, .indices and .width."""
    B, Tq, H, _ = q.shape
    out = np.zeros((B, Tq, H, v.shape[3]), q.dtype)  # an empty row keeps out_i = 0
    lse = np.empty((B, H, Tq), q.dtype)
    s = np.empty(max(pattern.width, 1), q.dtype)  # the scores of one row
    _forward(q, k, v, pattern.indptr, pattern.indices, scale, out, lse, s)
    return out, lse


@numba.njit(cache=True)
def _dot(a, b):
    """a · b, summed in order."""
    total = a.dtype.type(0)
    for d in range(a.size):
        total += a[d] * b[d]
    return total


@numba.njit(cache=True)
def _axpy(y, a, x):
    """y += a x, in place."""
    for d in range(y.size):
        y[d] += a * x[d]


@numba.njit(cache=True)
def _forward(q, k, v, indptr, indices, scale, out, lse, s):
    B, Tq, H, _ = q.shape
    for b in range(B):
        for h in range(H):
            ip = indptr[b if indptr.shape[0] > 1 else 0, h if indptr.shape[1] > 1 else 0]  # (Tq+1,)
            for i in range(Tq):
                e0, e1 = ip[i], ip[i + 1]
                if e1 == e0:  # no key: out_i = 0, lse_i = −∞
                    lse[b, h, i] = -np.inf
                    continue
                # 1. s_ij = q_i · k_j / √D at the row's keys only
                m = q.dtype.type(-np.inf)
                for e in range(e0, e1):
                    s[e - e0] = _dot(q[b, i, h], k[b, indices[e], h]) * scale
                    m = max(m, s[e - e0])
                # 2. lse_i = m + log Σ_j exp(s_ij − m)   (the max subtracted: no overflow)
                total = q.dtype.type(0)
                for e in range(e0, e1):
                    total += np.exp(s[e - e0] - m)
                lse[b, h, i] = m + np.log(total)
                # 3. out_i = Σ_j p_ij v_j,  p_ij = exp(s_ij − lse_i)
                for e in range(e0, e1):
                    _axpy(out[b, i, h], np.exp(s[e - e0] - lse[b, h, i]), v[b, indices[e], h])


def backward(dout, q, k, v, out, lse, pattern, scale):
    """dq, dk, dv in q's, k's, v's layout; ``pattern`` also has .t_indptr, .t_indices."""
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    delta = np.einsum("bihd,bihd->bhi", dout, out)  # (B, H, Tq) delta_i = dO_i · O_i
    _backward(dout, q, k, v, lse, delta, pattern.indptr, pattern.indices, pattern.t_indptr,
              pattern.t_indices, scale, dq, dk, dv)
    return dq, dk, dv


@numba.njit(cache=True)
def _p_ds(dout, q, k, v, lse, delta, b, h, i, j, scale):
    """p_ij = exp(s_ij − lse_i), recomputed, and ds_ij = p_ij (dO_i · v_j − delta_i)."""
    p = np.exp(_dot(q[b, i, h], k[b, j, h]) * scale - lse[b, h, i])
    return p, p * (_dot(dout[b, i, h], v[b, j, h]) - delta[b, h, i])


@numba.njit(cache=True)
def _backward(dout, q, k, v, lse, delta, indptr, indices, t_indptr, t_indices, scale, dq, dk, dv):
    B, Tq, H, _ = q.shape
    Tk = k.shape[1]
    for b in range(B):
        for h in range(H):
            pb, ph = b if indptr.shape[0] > 1 else 0, h if indptr.shape[1] > 1 else 0
            ip, t_ip = indptr[pb, ph], t_indptr[pb, ph]  # (Tq+1,), (Tk+1,)
            # dq_i = Σ_{j in row i} ds_ij k_j / √D            (over the rows)
            for i in range(Tq):
                for e in range(ip[i], ip[i + 1]):
                    j = indices[e]
                    p, ds = _p_ds(dout, q, k, v, lse, delta, b, h, i, j, scale)
                    _axpy(dq[b, i, h], ds * scale, k[b, j, h])
            # dv_j = Σ_{i in column j} p_ij dO_i,  dk_j = Σ_i ds_ij q_i / √D   (the transpose)
            for j in range(Tk):
                for e in range(t_ip[j], t_ip[j + 1]):
                    i = t_indices[e]
                    p, ds = _p_ds(dout, q, k, v, lse, delta, b, h, i, j, scale)
                    _axpy(dv[b, j, h], p, dout[b, i, h])
                    _axpy(dk[b, j, h], ds * scale, q[b, i, h])
