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
dK/dV kernel, which is then parallel over keys: no two threads write one row.

Slabs of heads
--------------
The rows a group streams through — keys and values in the forward and the dQ kernel,
queries and dO in the dK/dV kernel — are first copied, a slab of SH heads at a time, into
scratch of shape (SH, T, 1, D) where one head's rows are contiguous:

    ks[sl, j, 0] = k[b, j, h]        (b, h) = divmod(s0 + sl, H), for the slab s0 … s0+SH-1

In (B, T, H, D) memory a head's consecutive rows are H·D numbers apart — 2 KB for 8 heads
of 64 in float32 — and a power-of-two stride puts a window's 128 keys on a few cache sets,
which evicts them before the next group of rows reuses them. Measured here at T = 4096,
window 128: forward + backward 1.2× faster with the copies, their cost included. SH is set
by :func:`new_slabs` so that a slab stays under SLAB_BYTES whatever B·H is.

Row groups and their shared keys
--------------------------------
The kernels work on groups of G = 4 consecutive rows (queries; keys in the dK/dV
kernel). Neighbouring rows of local, strided, block and BigBird patterns mostly attend to
the same keys: in a causal window of 128, rows i … i+3 share 125 keys. For each group,
:func:`shared_segments` finds once per pattern the longest run of keys that all G rows
hold at consecutive positions of their CSR rows:

    seg_start (PB, PH, n_groups, G) int64   absolute offset in ``indices`` where the run
                                            starts in each row of the group
    seg_len   (PB, PH, n_groups) int64      its length (0: no shared run, or a group of
                                            fewer than G rows at the end)

Every entry is still computed exactly once:

- **shared run (fast path)**: for each key j of the run, the G rows' dot products with
  k_j are one loop over d with G accumulators (k_j is loaded once for G rows), and the
  weighted sums add w_rj·v_j into G rows in one loop over d;
- **the rest of each row (general path)**: entry by entry, one row at a time — for a
  pattern with no shared keys (random patterns) this is the whole computation.

The order of the terms of each sum changes (shared run first), not the terms.

Per group the kernels first fill a scratch row of scores per query (``work``: (n_threads,
2, G, width) with width ≥ the longest row), then softmax each row in place, then
accumulate — three short loops instead of an online softmax, so the exp calls run in a
tight loop and no rescaling is needed.

NumPy twin: ``refsparse.functional.attention_forward`` / ``attention_backward`` with the
dense boolean mask ``pattern.toarray()`` — the tests hold these kernels to it.

Cost: forward 2·nnz·D multiply-adds and one exp per entry; backward 7·nnz·D multiply-adds
and two exps per entry (scores recomputed from ``lse``, as FlashAttention does), plus a copy
of two (B, T, H, D) arrays per kernel. Memory besides inputs and outputs: O(B·H·T) (lse,
delta), the pattern, one slab (at most SLAB_BYTES) and 2·G·width numbers per thread —
never O(T²).
"""

from __future__ import annotations

import numba
import numpy as np

from .activations import exp_softmax

G = 4  # rows per group (the fast path's register blocking)

_FLAGS = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})
_INNER = dict(cache=True, fastmath={"reassoc", "contract"})


@numba.njit(cache=True)
def shared_segments(indptr, indices):
    """For each group of G consecutive rows, the longest run of keys the G rows share at
    consecutive positions.

    indptr (PB, PH, T+1) int64, indices (nnz_all,) int32, rows sorted.
    Returns seg_start (PB, PH, n_groups, G) int64, seg_len (PB, PH, n_groups) int64, with
    n_groups = ceil(T / G). Where seg_len is 0, seg_start holds each row's first offset.

    A G-way merge of the sorted rows: O(nnz) per pattern, run once by prepare_pattern.
    """
    PB, PH, T1 = indptr.shape
    T = T1 - 1
    n_groups = (T + G - 1) // G
    seg_start = np.zeros((PB, PH, n_groups, G), dtype=np.int64)
    seg_len = np.zeros((PB, PH, n_groups), dtype=np.int64)
    pos = np.empty(G, dtype=np.int64)  # merge cursor in each row
    last = np.empty(G, dtype=np.int64)  # positions of the previous shared key
    run = np.empty(G, dtype=np.int64)  # where the current run starts in each row
    for pb in range(PB):
        for ph in range(PH):
            ip = indptr[pb, ph]  # (T+1,)
            for g in range(n_groups):
                i0 = g * G
                for r in range(G):
                    seg_start[pb, ph, g, r] = ip[min(i0 + r, T)]
                if i0 + G > T:
                    continue  # a short last group: general path only
                for r in range(G):
                    pos[r] = ip[i0 + r]
                best = 0
                n_run = 0
                while True:
                    top = -1  # the largest current key: every row advances to it
                    for r in range(G):
                        if pos[r] < ip[i0 + r + 1]:
                            top = max(top, indices[pos[r]])
                    exhausted = False
                    equal = True
                    for r in range(G):
                        while pos[r] < ip[i0 + r + 1] and indices[pos[r]] < top:
                            pos[r] += 1
                        if pos[r] == ip[i0 + r + 1]:
                            exhausted = True  # a row has no key left: no more shared keys
                        elif indices[pos[r]] != top:
                            equal = False
                    if exhausted:
                        break
                    if not equal:
                        continue
                    # `top` is shared, at positions pos[r]: extend the run or start one
                    consecutive = n_run > 0
                    for r in range(G):
                        consecutive = consecutive and pos[r] == last[r] + 1
                    if not consecutive:
                        n_run = 0
                        for r in range(G):
                            run[r] = pos[r]
                    n_run += 1
                    if n_run > best:
                        best = n_run
                        for r in range(G):
                            seg_start[pb, ph, g, r] = run[r]
                    for r in range(G):
                        last[r] = pos[r]
                        pos[r] += 1
                seg_len[pb, ph, g] = best
    return seg_start, seg_len


@numba.njit(**_INNER)
def _group_dots(S, A, b, h, X, bx, hx, i0, n_rows, ip, indices, start, n_shared):
    """S[r, t] = A[b, i0+r, h] · X[bx, indices[ip[i0+r] + t], hx] for every entry t of the
    rows i0 … i0+n_rows-1 of one group. S (G, width); A (B, T, H, D); X (B', T', H', D)
    (the kernels pass a slab copy of one head's keys: X[bx, :, hx] contiguous rows).

    Fast path: the shared run (n_shared keys at offsets start[r] …) with G rows at once;
    general path: the rest of each row.
    """
    D = A.shape[3]
    zero = A.dtype.type(0)
    if n_shared > 0:  # here n_rows == G == 4
        a0, a1, a2, a3 = A[b, i0, h], A[b, i0 + 1, h], A[b, i0 + 2, h], A[b, i0 + 3, h]  # (D,)
        o0 = start[0] - ip[i0]  # where the run sits in each scratch row
        o1 = start[1] - ip[i0 + 1]
        o2 = start[2] - ip[i0 + 2]
        o3 = start[3] - ip[i0 + 3]
        s = start[0]
        t = 0
        while t + 2 <= n_shared:  # two keys per pass: each row's a[d] loaded once for both
            x = X[bx, indices[s + t], hx]  # (D,) loaded once for the four rows
            z = X[bx, indices[s + t + 1], hx]
            d0 = zero
            d1 = zero
            d2 = zero
            d3 = zero
            e0 = zero
            e1 = zero
            e2 = zero
            e3 = zero
            for d in range(D):
                xd = x[d]
                zd = z[d]
                d0 += a0[d] * xd
                d1 += a1[d] * xd
                d2 += a2[d] * xd
                d3 += a3[d] * xd
                e0 += a0[d] * zd
                e1 += a1[d] * zd
                e2 += a2[d] * zd
                e3 += a3[d] * zd
            S[0, o0 + t] = d0
            S[1, o1 + t] = d1
            S[2, o2 + t] = d2
            S[3, o3 + t] = d3
            S[0, o0 + t + 1] = e0
            S[1, o1 + t + 1] = e1
            S[2, o2 + t + 1] = e2
            S[3, o3 + t + 1] = e3
            t += 2
        if t < n_shared:  # an odd last key
            x = X[bx, indices[s + t], hx]
            d0 = zero
            d1 = zero
            d2 = zero
            d3 = zero
            for d in range(D):
                xd = x[d]
                d0 += a0[d] * xd
                d1 += a1[d] * xd
                d2 += a2[d] * xd
                d3 += a3[d] * xd
            S[0, o0 + t] = d0
            S[1, o1 + t] = d1
            S[2, o2 + t] = d2
            S[3, o3 + t] = d3
    for r in range(n_rows):
        i = i0 + r
        e0, e1 = ip[i], ip[i + 1]
        c0 = start[r]
        c1 = c0 + n_shared
        a = A[b, i, h]  # (D,)
        sr = S[r]
        for part in range(2):  # the entries before the shared run, then after it
            p0, p1 = (e0, c0) if part == 0 else (c1, e1)
            for e in range(p0, p1):
                x = X[bx, indices[e], hx]  # (D,)
                acc = zero
                for d in range(D):
                    acc += a[d] * x[d]
                sr[e - e0] = acc


@numba.njit(**_INNER)
def _group_accumulate(O, b, h, W, X, bx, hx, i0, n_rows, ip, indices, start, n_shared):
    """O[b, i0+r, h] += Σ_t W[r, t] · X[bx, indices[ip[i0+r] + t], hx] for the rows of one
    group. O (B, T, H, Dv) written; W (G, width); X (B', T', H', Dv) (a slab copy, as above).

    Fast path: the shared run adds into the G rows in one loop over d per key;
    general path: the rest of each row.
    """
    Dv = X.shape[3]
    if n_shared > 0:
        y0, y1, y2, y3 = O[b, i0, h], O[b, i0 + 1, h], O[b, i0 + 2, h], O[b, i0 + 3, h]  # (Dv,)
        o0 = start[0] - ip[i0]
        o1 = start[1] - ip[i0 + 1]
        o2 = start[2] - ip[i0 + 2]
        o3 = start[3] - ip[i0 + 3]
        s = start[0]
        t = 0
        while t + 2 <= n_shared:  # two keys per pass: half the loads and stores of y
            x = X[bx, indices[s + t], hx]  # (Dv,)
            z = X[bx, indices[s + t + 1], hx]
            w0, u0 = W[0, o0 + t], W[0, o0 + t + 1]
            w1, u1 = W[1, o1 + t], W[1, o1 + t + 1]
            w2, u2 = W[2, o2 + t], W[2, o2 + t + 1]
            w3, u3 = W[3, o3 + t], W[3, o3 + t + 1]
            for d in range(Dv):
                xd = x[d]
                zd = z[d]
                y0[d] += w0 * xd + u0 * zd
                y1[d] += w1 * xd + u1 * zd
                y2[d] += w2 * xd + u2 * zd
                y3[d] += w3 * xd + u3 * zd
            t += 2
        if t < n_shared:  # an odd last key
            x = X[bx, indices[s + t], hx]
            w0, w1, w2, w3 = W[0, o0 + t], W[1, o1 + t], W[2, o2 + t], W[3, o3 + t]
            for d in range(Dv):
                xd = x[d]
                y0[d] += w0 * xd
                y1[d] += w1 * xd
                y2[d] += w2 * xd
                y3[d] += w3 * xd
    for r in range(n_rows):
        i = i0 + r
        e0, e1 = ip[i], ip[i + 1]
        c0 = start[r]
        c1 = c0 + n_shared
        y = O[b, i, h]  # (Dv,)
        wr = W[r]
        for part in range(2):  # the entries before the shared run, then after it
            p0, p1 = (e0, c0) if part == 0 else (c1, e1)
            for e in range(p0, p1):
                x = X[bx, indices[e], hx]  # (Dv,)
                w = wr[e - e0]
                for d in range(Dv):
                    y[d] += w * x[d]


TB = 64  # rows per task of the slab copies (_copy_slab_rows)


@numba.njit(**_INNER)
def _copy_slab_rows(x, y, s0, tt, NTB, H, xs, ys):
    """Task tt of a slab copy: rows t0 … t1-1 (a block of TB) of head s0 + tt // NTB of
    x and of y (B, T, H, ·) into the contiguous rows of xs, ys (SH, T, 1, ·) at that head's
    place in the slab. NTB = ceil(T / TB) tasks per head."""
    bh = s0 + tt // NTB
    b, h = bh // H, bh % H
    t0 = (tt % NTB) * TB
    t1 = min(x.shape[1], t0 + TB)
    for t in range(t0, t1):
        src, dst = x[b, t, h], xs[tt // NTB, t, 0]  # (D,)
        for d in range(src.size):
            dst[d] = src[d]
        src, dst = y[b, t, h], ys[tt // NTB, t, 0]  # (Dv,)
        for d in range(src.size):
            dst[d] = src[d]


@numba.njit(**_INNER)
def _fwd_group(q, ks, vs, sl, indptr, indices, seg_start, seg_len, scale, out, lse, S, b, h, g):
    """The forward of query group g of head (b, h): scores into S (G, width), softmax of
    each row in place, then the out rows. ks, vs: the slab copies, head (b, h) at [sl]."""
    Tq = q.shape[1]
    Dv = vs.shape[3]
    PB, PH = indptr.shape[0], indptr.shape[1]
    zero = q.dtype.type(0)
    one = q.dtype.type(1)
    neg_inf = q.dtype.type(-np.inf)  # typed: a float64 −∞ would turn the row max and exp to float64
    pb = b if PB > 1 else 0
    ph = h if PH > 1 else 0
    ip = indptr[pb, ph]  # (Tq+1,)
    i0 = g * G
    n_rows = min(G, Tq - i0)
    start = seg_start[pb, ph, g]  # (G,)
    n_shared = seg_len[pb, ph, g]
    # 1. scores (unscaled dot products)
    _group_dots(S, q, b, h, ks, sl, 0, i0, n_rows, ip, indices, start, n_shared)
    # 2. softmax of each row, in place
    for r in range(n_rows):
        i = i0 + r
        n = ip[i + 1] - ip[i]
        o = out[b, i, h]  # (Dv,)
        for d in range(Dv):
            o[d] = zero
        if n == 0:
            lse[b, h, i] = neg_inf
            continue
        sr = S[r]
        m = neg_inf
        for t in range(n):
            sr[t] *= scale
            m = max(m, sr[t])
        l = zero
        for t in range(n):
            p = exp_softmax(sr[t] - m)
            sr[t] = p
            l += p
        inv = one / l
        for t in range(n):
            sr[t] *= inv
        lse[b, h, i] = m + np.log(l)
    # 3. out_i = Σ_j p_ij v_j
    _group_accumulate(out, b, h, S, vs, sl, 0, i0, n_rows, ip, indices, start, n_shared)


@numba.njit(**_FLAGS)
def sparse_attention_fwd(q, k, v, indptr, indices, seg_start, seg_len, scale, out, lse, work, ks, vs):
    """Forward over the pattern's entries only; writes ``out`` and ``lse``.

    For each (b, h, i), over the stored keys j of row i:
    s_j = q_i · k_j · scale, m = max_j s_j, l = Σ_j exp(s_j − m),
    p_j = exp(s_j − m) / l, out_i = Σ_j p_j v_j, lse_i = m + log l.
    An empty row gives out_i = 0 and lse_i = −∞.

    Heads go SH = ks.shape[0] at a time (a *slab*): their keys and values are first copied
    into ks, vs (SH, Tk, 1, D|Dv), one head's rows contiguous — in the (B, T, H, D) layout
    a head's consecutive keys are H·D numbers apart, and at H·D·itemsize = 2 KB (8 heads of
    64, float32) that stride maps a window's keys onto a few cache sets, which evicts them
    before the next group reuses them. Then parallel over (head of the slab, group of G query
    rows); per group: 1. the scores of its rows into a scratch row each (work[thread, 0],
    (G, width)), 2. softmax of each row in place, 3. out rows = Σ p_j v_j.
    ``scale`` must be a scalar of q's dtype. Complexity O(nnz · (D + Dv)) per (b, h).
    """
    B, H, Tk = q.shape[0], q.shape[2], k.shape[1]
    NG = seg_len.shape[2]  # groups of G query rows
    SH = ks.shape[0]
    NTB = (Tk + TB - 1) // TB
    for s0 in range(0, B * H, SH):  # one slab of heads
        nh = min(SH, B * H - s0)
        for tt in numba.prange(nh * NTB):
            _copy_slab_rows(k, v, s0, tt, NTB, H, ks, vs)
        for task in numba.prange(nh * NG):
            sl = task // NG
            S = work[numba.get_thread_id(), 0]  # (G, width) scores, then probabilities
            _fwd_group(q, ks, vs, sl, indptr, indices, seg_start, seg_len, scale, out, lse, S,
                       (s0 + sl) // H, (s0 + sl) % H, task % NG)


@numba.njit(**_INNER)
def _dq_group(q, ks, vs, sl, out, dout, lse, indptr, indices, seg_start, seg_len, scale, dq, delta,
              S, dS, b, h, g):
    """dQ (and delta) of query group g of head (b, h); S, dS (G, width) scratch."""
    Tq, D = q.shape[1], q.shape[3]
    Dv = vs.shape[3]
    PB, PH = indptr.shape[0], indptr.shape[1]
    zero = q.dtype.type(0)
    pb = b if PB > 1 else 0
    ph = h if PH > 1 else 0
    ip = indptr[pb, ph]  # (Tq+1,)
    i0 = g * G
    n_rows = min(G, Tq - i0)
    start = seg_start[pb, ph, g]
    n_shared = seg_len[pb, ph, g]
    _group_dots(S, q, b, h, ks, sl, 0, i0, n_rows, ip, indices, start, n_shared)
    _group_dots(dS, dout, b, h, vs, sl, 0, i0, n_rows, ip, indices, start, n_shared)
    for r in range(n_rows):
        i = i0 + r
        doi = dout[b, i, h]  # (Dv,)
        oi = out[b, i, h]
        dl = zero
        for d in range(Dv):
            dl += doi[d] * oi[d]
        delta[b, h, i] = dl
        dqi = dq[b, i, h]  # (D,)
        for d in range(D):
            dqi[d] = zero
        L = lse[b, h, i]
        sr = S[r]
        dsr = dS[r]
        for t in range(ip[i + 1] - ip[i]):
            p = exp_softmax(sr[t] * scale - L)
            dsr[t] = scale * p * (dsr[t] - dl)  # scale · ds_ij, so dq needs no rescaling
    _group_accumulate(dq, b, h, dS, ks, sl, 0, i0, n_rows, ip, indices, start, n_shared)


@numba.njit(**_FLAGS)
def sparse_attention_bwd_dq(q, k, v, out, dout, lse, indptr, indices, seg_start, seg_len, scale,
                            dq, delta, work, ks, vs):
    """dQ, parallel over (head of a slab, group of G query rows); also writes
    delta_i = dO_i · O_i for the dK/dV pass.

    With p_ij = exp(q_i · k_j · scale − lse_i) recomputed per stored entry:
    dp_ij = dO_i · v_j, ds_ij = p_ij (dp_ij − delta_i), dq_i = scale · Σ_j ds_ij k_j
    (delta_i = Σ_j p_ij dp_ij = dO_i · O_i: docs/sparse-attention.md, Backward).
    Slabs of SH = ks.shape[0] heads, their keys and values copied into ks, vs as in the forward.
    """
    B, H, Tk = q.shape[0], q.shape[2], k.shape[1]
    NG = seg_len.shape[2]
    SH = ks.shape[0]
    NTB = (Tk + TB - 1) // TB
    for s0 in range(0, B * H, SH):
        nh = min(SH, B * H - s0)
        for tt in numba.prange(nh * NTB):
            _copy_slab_rows(k, v, s0, tt, NTB, H, ks, vs)
        for task in numba.prange(nh * NG):
            sl = task // NG
            S = work[numba.get_thread_id(), 0]  # (G, width) scores, then p
            dS = work[numba.get_thread_id(), 1]  # (G, width) dp, then scale · ds
            _dq_group(q, ks, vs, sl, out, dout, lse, indptr, indices, seg_start, seg_len, scale, dq, delta,
                      S, dS, (s0 + sl) // H, (s0 + sl) % H, task % NG)


@numba.njit(**_INNER)
def _dkv_group(k, v, qs, dos, sl, lse, delta, t_indptr, t_indices, t_seg_start, t_seg_len, scale,
               dk, dv, P, dS, b, h, g):
    """dK and dV of key group g of head (b, h); P, dS (G, width) scratch."""
    Tk, D = k.shape[1], k.shape[3]
    Dv = v.shape[3]
    PB, PH = t_indptr.shape[0], t_indptr.shape[1]
    zero = k.dtype.type(0)
    pb = b if PB > 1 else 0
    ph = h if PH > 1 else 0
    ip = t_indptr[pb, ph]  # (Tk+1,) column j lists the queries that attend to key j
    j0 = g * G
    n_rows = min(G, Tk - j0)
    start = t_seg_start[pb, ph, g]
    n_shared = t_seg_len[pb, ph, g]
    _group_dots(P, k, b, h, qs, sl, 0, j0, n_rows, ip, t_indices, start, n_shared)
    _group_dots(dS, v, b, h, dos, sl, 0, j0, n_rows, ip, t_indices, start, n_shared)
    for r in range(n_rows):
        j = j0 + r
        dkj = dk[b, j, h]  # (D,)
        dvj = dv[b, j, h]  # (Dv,)
        for d in range(D):
            dkj[d] = zero
        for d in range(Dv):
            dvj[d] = zero
        e0 = ip[j]
        pr = P[r]
        dsr = dS[r]
        for t in range(ip[j + 1] - e0):
            i = t_indices[e0 + t]
            p = exp_softmax(pr[t] * scale - lse[b, h, i])
            pr[t] = p
            dsr[t] = scale * p * (dsr[t] - delta[b, h, i])
    _group_accumulate(dv, b, h, P, dos, sl, 0, j0, n_rows, ip, t_indices, start, n_shared)
    _group_accumulate(dk, b, h, dS, qs, sl, 0, j0, n_rows, ip, t_indices, start, n_shared)


@numba.njit(**_FLAGS)
def sparse_attention_bwd_dkv(q, k, v, dout, lse, delta, t_indptr, t_indices, t_seg_start, t_seg_len,
                             scale, dk, dv, work, qs, dos):
    """dK and dV, parallel over (head of a slab, group of G keys) through the transposed
    pattern.

    For each key j and each query i that may attend to it:
    dv_j += p_ij dO_i,   dk_j += scale · p_ij (dO_i · v_j − delta_i) q_i.
    A key no query attends to gets zero gradients. Slabs of SH = qs.shape[0] heads, their
    queries and output gradients copied into qs, dos (SH, Tq, 1, D|Dv).
    """
    B, Tq, H = q.shape[0], q.shape[1], q.shape[2]
    NG = t_seg_len.shape[2]  # groups of G keys
    SH = qs.shape[0]
    NTB = (Tq + TB - 1) // TB
    for s0 in range(0, B * H, SH):
        nh = min(SH, B * H - s0)
        for tt in numba.prange(nh * NTB):
            _copy_slab_rows(q, dout, s0, tt, NTB, H, qs, dos)
        for task in numba.prange(nh * NG):
            sl = task // NG
            P = work[numba.get_thread_id(), 0]  # (G, width) scores, then p
            dS = work[numba.get_thread_id(), 1]  # (G, width) dp, then scale · ds
            _dkv_group(k, v, qs, dos, sl, lse, delta, t_indptr, t_indices, t_seg_start, t_seg_len, scale,
                       dk, dv, P, dS, (s0 + sl) // H, (s0 + sl) % H, task % NG)


def new_work(width, dtype):
    """The kernels' per-thread scratch: (n_threads, 2, G, width) — two score rows per row of
    a group, width ≥ the longest row (or column, for the dK/dV kernel) of the pattern."""
    return np.empty((numba.config.NUMBA_NUM_THREADS, 2, G, max(int(width), 1)), dtype=dtype)


SLAB_BYTES = 16 << 20  # the most one slab of head copies may take


def new_slabs(n_heads, length, widths, dtype):
    """Scratch for one slab of heads: an (SH, length, 1, w) array per w in ``widths``, with
    SH the most heads whose copies all fit in SLAB_BYTES (at least 1, at most n_heads).
    The kernels work one slab at a time, so this — not a copy of every head — is what the
    copies add to memory: O(T·D), never O(T²), never growing with B·H (at T = 16384,
    D = Dv = 64, float32: 2 heads of 4 MB + 4 MB, 1.6% of one T × T float32 matrix)."""
    per_head = max(sum(int(w) for w in widths) * int(length) * np.dtype(dtype).itemsize, 1)
    sh = int(max(1, min(n_heads, SLAB_BYTES // per_head)))
    return tuple(np.empty((sh, int(length), 1, int(w)), dtype=dtype) for w in widths)
