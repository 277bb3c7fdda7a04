"""Attention over a sparse pattern: forward, and the backward in one pass over the keys.

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
backward kernel, which is then parallel over keys: no two threads write one row of dK
or dV, and each *chunk* of tasks (one per thread) adds its dQ terms into partial rows of
its own.

Slabs of heads
--------------
The rows a group streams through — keys and values in the forward, queries and dO in
the backward — are first copied, a slab of SH heads at a time, into
scratch of shape (SH, T, D) where one head's rows are contiguous, and transposed into
scratch of shape (SH, D, T+L) for the register tiles of the scores:

    ks[sl, j] = k[b, j, h]        (b, h) = divmod(s0 + sl, H), for the slab s0 … s0+SH-1
    ks_t[sl, d, j] = k[b, j, h, d]            (columns T … T+L-1: zeros, read by a tile
                                               that runs past the last key)

In (B, T, H, D) memory a head's consecutive rows are H·D numbers apart — 2 KB for 8 heads
of 64 in float32 — and a power-of-two stride puts a window's 128 keys on a few cache sets,
which evicts them before the next group of rows reuses them. Measured here at T = 4096,
window 128: forward + backward 1.2× faster with the copies, their cost included. SH is set
by [`new_slabs`][refsparse.kernels.sparse_attention.new_slabs] so that a slab stays under SLAB_BYTES whatever B·H is.

Row groups and their shared keys
--------------------------------
The kernels work on groups of G = 4 consecutive rows (queries; keys in the backward
kernel). Neighbouring rows of local, strided, block and BigBird patterns mostly attend to
the same keys: in a causal window of 128, rows i … i+3 share 125 keys. For each group,
[`shared_segments`][refsparse.kernels.sparse_attention.shared_segments] finds once per pattern the longest run of keys that all G rows
hold at consecutive positions of their CSR rows:

    seg_start (PB, PH, n_groups, G) int64   absolute offset in ``indices`` where the run
                                            starts in each row of the group
    seg_len   (PB, PH, n_groups) int64      its length (0: no shared run, or a group of
                                            fewer than G rows at the end)

Every entry is still computed exactly once:

- **shared run (fast path)**, the G rows at once, in *register tiles* written with the
  vectors of [`refsparse.kernels.simd`][refsparse.kernels.simd] (L numbers: 64 float32 or 32 float64 on an
  AVX-512 CPU, 16 or 8 elsewhere — the tile of 4 rows takes half the vector registers):
  - scores: when the run's keys are consecutive (windows, blocks), a tile is G rows × L
    keys, summed over d with the keys transposed (XT[d, j] = k_j[d], so L keys at one d
    are one vector): 4 vector accumulators that stay in registers for the whole loop over
    d. Otherwise (scattered keys) two keys per pass with G × 2 scalar accumulators;
  - weighted sums: a tile is G output rows × L numbers, kept in registers over the whole
    run: y_r[c:c+L] += w_rj · v_j[c:c+L] for each key j (when L divides Dv; else one
    loop over d per key);
- **the rest of each row (general path)**: entry by entry, one row at a time — for a
  pattern with no shared keys (random patterns) this is the whole computation.

The order of the terms of each sum changes (shared run first), not the terms.

A task is a block of KB = 8 groups (32 rows), and their tiles go in lockstep: tile k of
every group, then tile k+1. The runs of neighbouring groups are nearly the same keys, so
one group's tile finds the lines it reads in L1, where the previous group's tile just
brought them.

Per block the kernels first fill a scratch row of scores per row (``work``: (n_threads,
2, KB·G, width + L) with width ≥ the longest row), then softmax each row in place, then
accumulate — three short loops instead of an online softmax, so the exp calls run in a
tight loop and no rescaling is needed.

Measured at T = 4096, window 128, 8 heads of 64, float32, forward + backward on 2 threads
(in one process, 30 alternating runs): minimum 107 ms, median 127 ms with the tiles,
against 124 and 155 ms with the scalar loops of the previous version. See
[docs/sparse-attention.md, "Where the time goes"](../sparse-attention.md#where-the-time-goes).

**Driver.** `forward` and `backward` at the end of this file are what
`refsparse.functional.sparse_attention` calls: each asks
`refsparse.kernels.switch.current` and runs the reference
(`refsparse.kernels.reference.sparse_attention`: the three steps over each CSR row,
the backward over the transposed pattern — the definition) or the kernels here, for which
it allocates the outputs, the scratch rows and the slabs, and finds each pattern's shared
runs once (`segments`, kept in a cache of its own keyed by the identity of the
pattern's index arrays).

Reference: `refsparse.kernels.reference.sparse_attention`; the tests hold these
kernels to it, and both to the NumPy twin ``refsparse.functional.attention_forward`` /
``attention_backward`` with the dense boolean mask ``pattern.toarray()``.

Cost: forward 2·nnz·D multiply-adds and one exp per entry; backward 5·nnz·D multiply-adds
and one exp per entry (scores recomputed from ``lse``, as FlashAttention does), plus a copy
of two (B, T, H, D) arrays per kernel, as rows and transposed, and in the backward the sum
of the chunks' partial dQ. Memory besides inputs and outputs: O(B·H·T) (lse, delta), the
pattern, one slab (at most SLAB_BYTES, or one head: its copies and NC = n_threads partial
dQ rows of T × D) and 2·KB·G·(width + L) numbers per thread — never O(T²).
"""

from __future__ import annotations

import numba
import numpy as np

from .activations import exp_softmax
from .buffers import aligned_empty
from .pattern_cache import PatternCache
from .reference import sparse_attention as reference
from .simd import CACHE_LINE, VECTOR_BYTES, vfma, vlanes, vload, vsplat, vstore
from .spmm import store_tile_t
from .switch import current

__all__ = ["backward", "forward", "segments"]

G = 4  # rows per group (the fast path's register blocking)
KB = 8  # groups per task, their tiles in lockstep (see _block_dots)

_FLAGS = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})
_INNER = dict(cache=True, fastmath={"reassoc", "contract"})


@numba.njit(cache=True)
def shared_segments(indptr, indices):
    """For each group of G consecutive rows, the longest run of keys the G rows share at
    consecutive positions.

    indptr (PB, PH, T+1) int64, indices (nnz_all,) int32, rows sorted.
    Returns seg_start (PB, PH, n_groups, G) int64, seg_len (PB, PH, n_groups) int64, with
    n_groups = ceil(T / G). Where seg_len is 0, seg_start holds each row's first offset.

    A G-way merge of the sorted rows: O(nnz) per pattern, run once per pattern by `segments`.
    Ties go to the first (lowest-key) longest run. NumPy twin: [`shared_segments_numpy`][refsparse.kernels.sparse_attention.shared_segments_numpy].
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


def shared_segments_numpy(indptr, indices):
    """[`shared_segments`][refsparse.kernels.sparse_attention.shared_segments] in plain NumPy, for reading and for the tests.

    Per full group of G rows: the keys all G rows hold (``np.intersect1d``), each one's
    position in every row, and the runs of shared keys whose positions advance by exactly 1
    in every row from one shared key to the next; the first longest run wins.
    """
    PB, PH, T1 = indptr.shape
    T = T1 - 1
    n_groups = (T + G - 1) // G
    seg_start = np.zeros((PB, PH, n_groups, G), dtype=np.int64)
    seg_len = np.zeros((PB, PH, n_groups), dtype=np.int64)
    for pb in range(PB):
        for ph in range(PH):
            ip = indptr[pb, ph]  # (T+1,)
            for g in range(n_groups):
                i0 = g * G
                seg_start[pb, ph, g] = ip[np.minimum(np.arange(i0, i0 + G), T)]  # each row's first offset
                if i0 + G > T:
                    continue  # a short last group: general path only
                rows = [indices[ip[i0 + r]:ip[i0 + r + 1]] for r in range(G)]
                common = rows[0]
                for row in rows[1:]:
                    common = np.intersect1d(common, row)  # (n,) sorted keys all rows hold
                if common.size == 0:
                    continue
                pos = np.stack([ip[i0 + r] + np.searchsorted(rows[r], common) for r in range(G)])  # (G, n)
                goes_on = np.all(np.diff(pos, axis=1) == 1, axis=0)  # (n-1,) key k+1 continues k's run
                best, best_at, run_at = 0, 0, 0
                for k in range(common.size):
                    if k > 0 and not goes_on[k - 1]:
                        run_at = k
                    if k - run_at + 1 > best:
                        best, best_at = k - run_at + 1, run_at
                seg_len[pb, ph, g] = best
                seg_start[pb, ph, g] = pos[:, best_at]
    return seg_start, seg_len


@numba.njit(**_INNER)
def _consecutive(indices, s, n):
    """Whether indices[s : s+n] (sorted, distinct) are n consecutive ids."""
    return n > 0 and indices[s + n - 1] - indices[s] == n - 1


@numba.njit(**_INNER)
def _tile_dots(S, A, b, h, XT, i0, ip, indices, start, t):
    """One register tile of a group's shared run (its keys consecutive): for the 4 rows
    i0 … i0+3 and the run's keys t … t+L-1 (L = vlanes, e.g. 16 or 64 float32),
    S[r, o_r + u] = A[b, i0+r, h] · x_{j0+t+u}, o_r where the run sits in row r's scratch.

    S (G, width + L); A (B, T, H, D); XT (D, T'+L) the keys transposed (XT[d, j] = x_j[d]),
    so L consecutive keys at one d are one vector. The 4 × L sums stay in registers over
    d and each is summed in order of d. A tile at the run's end reads up to L−1 keys past
    it (other keys, or XT's zero padding) and writes their lanes into S past the run:
    those positions are the row's later entries, which the general path writes after, or
    scratch padding — no number from them is used.
    """
    D = XT.shape[0]
    a0, a1, a2, a3 = A[b, i0, h], A[b, i0 + 1, h], A[b, i0 + 2, h], A[b, i0 + 3, h]  # (D,)
    j = indices[start[0]] + t  # the tile's first key
    c0 = c1 = c2 = c3 = vsplat(XT.dtype.type(0))  # (L,) S[r, o_r+t : o_r+t+L], in registers
    for d in range(D):
        x = vload(XT[d], j)  # (L,) keys j … j+L-1 at dimension d
        c0 = vfma(vsplat(a0[d]), x, c0)
        c1 = vfma(vsplat(a1[d]), x, c1)
        c2 = vfma(vsplat(a2[d]), x, c2)
        c3 = vfma(vsplat(a3[d]), x, c3)
    vstore(S[0], start[0] - ip[i0] + t, c0)
    vstore(S[1], start[1] - ip[i0 + 1] + t, c1)
    vstore(S[2], start[2] - ip[i0 + 2] + t, c2)
    vstore(S[3], start[3] - ip[i0 + 3] + t, c3)


@numba.njit(**_INNER)
def _pair_dots(S, A, b, h, X, i0, ip, indices, start, n_shared):
    """A group's shared run when its keys are not consecutive: two keys per pass, the
    4 rows' 8 dot products in 8 accumulators (each row's a[d] loaded once for both keys).
    X (T', D) one head's keys as contiguous rows."""
    D = A.shape[3]
    zero = A.dtype.type(0)
    a0, a1, a2, a3 = A[b, i0, h], A[b, i0 + 1, h], A[b, i0 + 2, h], A[b, i0 + 3, h]  # (D,)
    o0 = start[0] - ip[i0]  # where the run sits in each scratch row
    o1 = start[1] - ip[i0 + 1]
    o2 = start[2] - ip[i0 + 2]
    o3 = start[3] - ip[i0 + 3]
    s = start[0]
    for t in range(0, n_shared, 2):
        x = X[indices[s + t]]  # (D,) loaded once for the four rows
        z = X[indices[s + t + 1]] if t + 1 < n_shared else x  # an odd last key: z unused
        d0 = d1 = d2 = d3 = e0 = e1 = e2 = e3 = zero
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
        if t + 1 < n_shared:
            S[0, o0 + t + 1] = e0
            S[1, o1 + t + 1] = e1
            S[2, o2 + t + 1] = e2
            S[3, o3 + t + 1] = e3


@numba.njit(**_INNER)
def _rest_dots(S, A, b, h, X, i0, n_rows, ip, indices, start, n_shared, slack):
    """The general path: every entry of rows i0 … i0+n_rows-1 outside the shared run,
    one dot product each — except, after the run, the first ``slack`` entries whose keys
    continue it (j_last + 1, j_last + 2, …): the run's last register tile computed those
    lanes already, into exactly these positions (a window's row goes on past the keys its
    group shares; measured: the general path was a fifth of the scores' time)."""
    D = A.shape[3]
    zero = A.dtype.type(0)
    for r in range(n_rows):
        i = i0 + r
        e0, e1 = ip[i], ip[i + 1]
        c0 = start[r]
        c1 = c0 + n_shared
        done = min(e1, c1 + slack)  # entries the last tile may have computed
        while c1 < done and indices[c1] == indices[c1 - 1] + 1:
            c1 += 1
        a = A[b, i, h]  # (D,)
        sr = S[r]
        for part in range(2):  # the entries before the shared run, then after it
            p0, p1 = (e0, c0) if part == 0 else (c1, e1)
            for e in range(p0, p1):
                x = X[indices[e]]  # (D,)
                acc = zero
                for d in range(D):
                    acc += a[d] * x[d]
                sr[e - e0] = acc


@numba.njit(**_INNER)
def _block_dots(S, A, b, h, X, XT, g0, g1, T, ip, indices, seg_start, seg_len):
    """S[G·(g−g0) + r, t] = A[b, G·g+r, h] · X[indices[ip[G·g+r] + t]] for every entry t of
    the rows of groups g0 … g1-1. S (KB·G, width + L); A (B, T, H, D); X (T', D) one head's
    keys as contiguous rows (its slab copy) and XT (D, T'+L) the same keys transposed;
    seg_start (NG, G), seg_len (NG,) the pattern's shared runs.

    Fast path, each group's shared run with its 4 rows at once: register tiles over XT
    when the run's keys are consecutive (windows, blocks), else two keys per pass. The
    groups' tiles go in lockstep — tile k of every group, then tile k+1 — because the
    runs of neighbouring groups are nearly the same keys: tile k of the next group reads
    XT lines that tile k of this one just brought into L1. General path: the rest of
    each row, but for the entries that continue the run inside its last tile's lanes.
    """
    L = vlanes(XT)
    n_tiles = 0
    for g in range(g0, g1):
        if _consecutive(indices, seg_start[g, 0], seg_len[g]):
            n_tiles = max(n_tiles, (seg_len[g] + L - 1) // L)
    for k in range(n_tiles):
        for g in range(g0, g1):
            if k * L < seg_len[g] and _consecutive(indices, seg_start[g, 0], seg_len[g]):
                _tile_dots(S[G * (g - g0) :], A, b, h, XT, G * g, ip, indices, seg_start[g], k * L)
    for g in range(g0, g1):
        Sg = S[G * (g - g0) :]  # (…, width + L) the group's rows first
        slack = 0  # lanes the run's last tile computed past its end
        if _consecutive(indices, seg_start[g, 0], seg_len[g]):
            slack = (seg_len[g] + L - 1) // L * L - seg_len[g]
        elif seg_len[g] > 0:
            _pair_dots(Sg, A, b, h, X, G * g, ip, indices, seg_start[g], seg_len[g])
        _rest_dots(Sg, A, b, h, X, G * g, min(G, T - G * g), ip, indices, seg_start[g], seg_len[g], slack)


@numba.njit(**_INNER)
def _tile_accumulate(O, b, h, W, X, i0, ip, indices, start, n_shared, c):
    """Numbers c … c+L-1 of a group's 4 output rows, from its shared run:
    O[b, i0+r, h, c:c+L] += Σ_u W[r, o_r + u] · X[j_u, c:c+L], a register tile of 4 × L
    kept over the run's keys j_u (read at j0 + u when consecutive — through ``indices``
    the same loop ran at half the speed)."""
    y0, y1, y2, y3 = O[b, i0, h], O[b, i0 + 1, h], O[b, i0 + 2, h], O[b, i0 + 3, h]  # (Dv,)
    w0 = W[0, start[0] - ip[i0] :]  # the run's weights in each row
    w1 = W[1, start[1] - ip[i0 + 1] :]
    w2 = W[2, start[2] - ip[i0 + 2] :]
    w3 = W[3, start[3] - ip[i0 + 3] :]
    s = start[0]
    j0 = indices[s]
    c0, c1, c2, c3 = vload(y0, c), vload(y1, c), vload(y2, c), vload(y3, c)  # (L,) in registers
    if _consecutive(indices, s, n_shared):
        for u in range(n_shared):
            x = vload(X[j0 + u], c)  # (L,) of the run's key u
            c0 = vfma(vsplat(w0[u]), x, c0)
            c1 = vfma(vsplat(w1[u]), x, c1)
            c2 = vfma(vsplat(w2[u]), x, c2)
            c3 = vfma(vsplat(w3[u]), x, c3)
    else:
        for u in range(n_shared):
            x = vload(X[indices[s + u]], c)
            c0 = vfma(vsplat(w0[u]), x, c0)
            c1 = vfma(vsplat(w1[u]), x, c1)
            c2 = vfma(vsplat(w2[u]), x, c2)
            c3 = vfma(vsplat(w3[u]), x, c3)
    vstore(y0, c, c0)
    vstore(y1, c, c1)
    vstore(y2, c, c2)
    vstore(y3, c, c3)


@numba.njit(**_INNER)
def _pair_accumulate(O, b, h, W, X, i0, ip, indices, start, n_shared):
    """A group's shared run when L does not divide Dv: one loop over d per key, into the
    4 rows."""
    Dv = X.shape[1]
    y0, y1, y2, y3 = O[b, i0, h], O[b, i0 + 1, h], O[b, i0 + 2, h], O[b, i0 + 3, h]  # (Dv,)
    w0 = W[0, start[0] - ip[i0] :]
    w1 = W[1, start[1] - ip[i0 + 1] :]
    w2 = W[2, start[2] - ip[i0 + 2] :]
    w3 = W[3, start[3] - ip[i0 + 3] :]
    s = start[0]
    for u in range(n_shared):
        x = X[indices[s + u]]  # (Dv,)
        for d in range(Dv):
            xd = x[d]
            y0[d] += w0[u] * xd
            y1[d] += w1[u] * xd
            y2[d] += w2[u] * xd
            y3[d] += w3[u] * xd


@numba.njit(**_INNER)
def _rest_accumulate(O, b, h, W, X, i0, n_rows, ip, indices, start, n_shared):
    """The general path: every entry of rows i0 … i0+n_rows-1 outside the shared run."""
    Dv = X.shape[1]
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
                x = X[indices[e]]  # (Dv,)
                w = wr[e - e0]
                for d in range(Dv):
                    y[d] += w * x[d]


@numba.njit(**_INNER)
def _block_accumulate(O, b, h, W, X, g0, g1, T, ip, indices, seg_start, seg_len):
    """O[b, i, h] += Σ_t W[G·(g−g0) + r, t] · X[indices[ip[i] + t]] for the rows i = G·g + r
    of groups g0 … g1-1. O (B, T, H, Dv) written; W (KB·G, width + L); X (T', Dv) one
    head's rows (a slab copy).

    Fast path, each group's shared run: register tiles of 4 rows × L numbers when L divides
    Dv — numbers c … c+L-1 of every group in turn, then the next L, so that the next
    group's run (nearly the same keys) finds those rows' lines in L1 — else one loop over
    d per key. General path: the rest of each row.
    """
    Dv = X.shape[1]
    L = vlanes(X)
    if Dv % L == 0:
        for c in range(0, Dv, L):
            for g in range(g0, g1):
                if seg_len[g] > 0:
                    _tile_accumulate(O, b, h, W[G * (g - g0) :], X, G * g, ip, indices, seg_start[g], seg_len[g], c)
    else:
        for g in range(g0, g1):
            if seg_len[g] > 0:
                _pair_accumulate(O, b, h, W[G * (g - g0) :], X, G * g, ip, indices, seg_start[g], seg_len[g])
    for g in range(g0, g1):
        _rest_accumulate(O, b, h, W[G * (g - g0) :], X, G * g, min(G, T - G * g), ip, indices, seg_start[g],
                         seg_len[g])


@numba.njit(**_INNER)
def _tile_scatter(Y, b, h, Wt, K, j0, ip, indices, start, n_shared, c):
    """Numbers c … c+L-1 of the dQ rows that a key group's shared run reaches:
    Y[i_u, c:c+L] += Σ_r Wt[r, o_r + u] · K[b, j0+r, h, c:c+L] for each query i_u of the run,
    the 4 keys' vectors held in registers (the transposed form of _tile_accumulate)."""
    k0, k1, k2, k3 = vload(K[b, j0, h], c), vload(K[b, j0 + 1, h], c), vload(K[b, j0 + 2, h], c), vload(K[b, j0 + 3, h], c)
    w0 = Wt[0, start[0] - ip[j0] :]  # the run's weights in each key's row
    w1 = Wt[1, start[1] - ip[j0 + 1] :]
    w2 = Wt[2, start[2] - ip[j0 + 2] :]
    w3 = Wt[3, start[3] - ip[j0 + 3] :]
    s = start[0]
    i0 = indices[s]
    if _consecutive(indices, s, n_shared):
        for u in range(n_shared):
            y = Y[i0 + u]  # (D,) the dQ row of the run's query u
            acc = vload(y, c)
            acc = vfma(vsplat(w0[u]), k0, acc)
            acc = vfma(vsplat(w1[u]), k1, acc)
            acc = vfma(vsplat(w2[u]), k2, acc)
            acc = vfma(vsplat(w3[u]), k3, acc)
            vstore(y, c, acc)
    else:
        for u in range(n_shared):
            y = Y[indices[s + u]]
            acc = vload(y, c)
            acc = vfma(vsplat(w0[u]), k0, acc)
            acc = vfma(vsplat(w1[u]), k1, acc)
            acc = vfma(vsplat(w2[u]), k2, acc)
            acc = vfma(vsplat(w3[u]), k3, acc)
            vstore(y, c, acc)


@numba.njit(**_INNER)
def _block_scatter(Y, b, h, Wt, K, g0, g1, Tk, ip, indices, seg_start, seg_len):
    """Y[i] += Σ_j Wt[G·(g−g0) + r, t] · K[b, j, h] over the entries (j = G·g + r, query
    i = indices[ip[j] + t]) of key groups g0 … g1-1: the dQ terms of these keys, added into
    one chunk's partial dQ rows Y (Tq, D). Wt (KB·G, width + L) holds scale · ds per
    entry of each key's column.

    Fast path, each group's shared run: its 4 keys' vectors in registers, L numbers of each
    dQ row of the run at a time (when L divides D), groups in lockstep as in
    _block_accumulate; general path: entry by entry."""
    D = K.shape[3]
    L = vlanes(K)
    if D % L == 0:
        for c in range(0, D, L):
            for g in range(g0, g1):
                if seg_len[g] > 0:
                    _tile_scatter(Y, b, h, Wt[G * (g - g0) :], K, G * g, ip, indices, seg_start[g], seg_len[g], c)
    for g in range(g0, g1):
        W = Wt[G * (g - g0) :]
        n_shared = seg_len[g]
        for r in range(min(G, Tk - G * g)):
            j = G * g + r
            kj = K[b, j, h]  # (D,)
            e0, e1 = ip[j], ip[j + 1]
            c0 = seg_start[g, r]
            c1 = c0 + n_shared
            if D % L != 0:
                c1 = c0  # no tile ran: the shared run goes this way too
            wr = W[r]
            for part in range(2):  # the entries before the shared run (or tile), then after it
                p0, p1 = (e0, c0) if part == 0 else (c1, e1)
                for e in range(p0, p1):
                    y = Y[indices[e]]  # (D,)
                    w = wr[e - e0]
                    for d in range(D):
                        y[d] += w * kj[d]


TB = 64  # rows per task of the slab copies (_copy_slab_rows)


@numba.njit(**_INNER)
def _copy_slab_rows(x, y, s0, tt, NTB, H, xs, ys, xts, yts):
    """Task tt of a slab copy: rows t0 … t1-1 (a block of TB) of head s0 + tt // NTB of
    x and of y (B, T, H, ·) into the contiguous rows of xs, ys (SH, T, ·) at that head's
    place in the slab, then the same block transposed into xts, yts (SH, ·, T+L):
    xts[sl, d, t] = x[b, t, h, d] — read from the rows just written, which are contiguous.
    A transposed slab of shape (SH, 0, ·) is not wanted and gets nothing. NTB = ceil(T / TB)
    tasks per head."""
    bh = s0 + tt // NTB
    sl = tt // NTB
    b, h = bh // H, bh % H
    t0 = (tt % NTB) * TB
    t1 = min(x.shape[1], t0 + TB)
    for t in range(t0, t1):
        src, dst = x[b, t, h], xs[sl, t]  # (D,)
        for d in range(src.size):
            dst[d] = src[d]
        src, dst = y[b, t, h], ys[sl, t]  # (Dv,)
        for d in range(src.size):
            dst[d] = src[d]
    # xts[sl, d, t] = xs[sl, t, d] for t0 <= t < t1: K × K blocks through registers
    store_tile_t(xs[sl, t0:t1], 0, xts.shape[1], t0, t1 - t0, xts[sl], False)
    store_tile_t(ys[sl, t0:t1], 0, yts.shape[1], t0, t1 - t0, yts[sl], False)


@numba.njit(**_INNER)
def _row_max(s, n):
    """max(s[0], …, s[n-1]), n >= 1, in 8 running maxima: one running maximum is a chain of
    n dependent instructions (measured: a fifth of the forward at T = 4096, window 128)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = s[0]
    n8 = n - n % 8
    for t in range(0, n8, 8):
        m0 = max(m0, s[t])
        m1 = max(m1, s[t + 1])
        m2 = max(m2, s[t + 2])
        m3 = max(m3, s[t + 3])
        m4 = max(m4, s[t + 4])
        m5 = max(m5, s[t + 5])
        m6 = max(m6, s[t + 6])
        m7 = max(m7, s[t + 7])
    for t in range(n8, n):
        m0 = max(m0, s[t])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@numba.njit(**_INNER)
def _fwd_block(q, ks, vs, ks_t, sl, indptr, indices, seg_start, seg_len, scale, out, lse, S, R, b, h, g0, g1):
    """The forward of query groups g0 … g1-1 of head (b, h): scores into S (KB·G,
    width + L), their exponentials e_ij = exp(s_ij − max) in place, then the out rows,
    divided by their row sums (kept in R[·, 0]). ks, vs, ks_t: the slab copies, head (b, h)
    at [sl]."""
    Tq = q.shape[1]
    Dv = vs.shape[2]
    PB, PH = indptr.shape[0], indptr.shape[1]
    zero = q.dtype.type(0)
    one = q.dtype.type(1)
    neg_inf = q.dtype.type(-np.inf)  # typed: a float64 −∞ would turn the row max and exp to float64
    pb = b if PB > 1 else 0
    ph = h if PH > 1 else 0
    ip = indptr[pb, ph]  # (Tq+1,)
    # 1. scores (unscaled dot products)
    _block_dots(S, q, b, h, ks[sl], ks_t[sl], g0, g1, Tq, ip, indices, seg_start[pb, ph], seg_len[pb, ph])
    # 2. softmax of each row, in place, all but the division by the row sum
    for i in range(G * g0, min(Tq, G * g1)):
        n = ip[i + 1] - ip[i]
        o = out[b, i, h]  # (Dv,)
        for d in range(Dv):
            o[d] = zero
        if n == 0:
            lse[b, h, i] = neg_inf
            continue
        sr = S[i - G * g0]
        m = _row_max(sr, n)  # the row's largest unscaled score: scale > 0, so scale·m is the scaled max
        l = zero
        for t in range(n):
            e = exp_softmax((sr[t] - m) * scale)  # e_ij = exp(s_ij − max), p_ij = e_ij / l
            sr[t] = e
            l += e
        R[i - G * g0, 0] = one / l
        lse[b, h, i] = m * scale + np.log(l)
    # 3. out_i = (Σ_j e_ij v_j) / l: the division once per output number, not per entry
    _block_accumulate(out, b, h, S, vs[sl], g0, g1, Tq, ip, indices, seg_start[pb, ph], seg_len[pb, ph])
    for i in range(G * g0, min(Tq, G * g1)):
        if ip[i + 1] > ip[i]:
            inv = R[i - G * g0, 0]
            o = out[b, i, h]  # (Dv,)
            for d in range(Dv):
                o[d] *= inv


@numba.njit(**_INNER)
def _balanced_chunks(indptr, s0, nh, H, NB, NC):
    """Where the NC chunks of a slab's tasks start: chunk c runs tasks bounds[c] …
    bounds[c+1]-1, contiguous, cut where the running work — entries plus one per row, of
    the pattern rows (or, in the backward, key columns) of each task's KB groups — crosses
    c/NC of the slab's total. A causal strided or fixed row holds more entries the later it
    is, so an even split of the tasks left one thread with most of the work (measured: 1.2x
    the time at T = 4096 with one head per slab). Depends only on the pattern and NC, so
    the chunks — and the order of the backward's dQ sums — do not depend on the threads."""
    PB, PH = indptr.shape[0], indptr.shape[1]
    T = indptr.shape[2] - 1
    n_tasks = nh * NB
    cum = np.zeros(n_tasks + 1, dtype=np.int64)  # work of tasks 0 … t-1
    for t in range(n_tasks):
        bh = s0 + t // NB
        b, h = bh // H, bh % H
        ip = indptr[b if PB > 1 else 0, h if PH > 1 else 0]  # (T+1,)
        r0 = min(T, (t % NB) * KB * G)
        r1 = min(T, r0 + KB * G)
        cum[t + 1] = cum[t] + ip[r1] - ip[r0] + (r1 - r0)
    bounds = np.empty(NC + 1, dtype=np.int64)
    t = 0
    for c in range(NC):
        while t < n_tasks and cum[t] * NC < c * cum[n_tasks]:
            t += 1
        bounds[c] = t
    bounds[NC] = n_tasks
    return bounds


@numba.njit(**_FLAGS)
def sparse_attention_fwd(q, k, v, indptr, indices, seg_start, seg_len, scale, out, lse, work, ks, vs, ks_t,
                         vs_t):
    """Forward over the pattern's entries only; writes ``out`` and ``lse``.

    For each (b, h, i), over the stored keys j of row i:
    s_j = q_i · k_j · scale, m = max_j s_j, l = Σ_j exp(s_j − m),
    p_j = exp(s_j − m) / l, out_i = Σ_j p_j v_j, lse_i = m + log l.
    An empty row gives out_i = 0 and lse_i = −∞.

    Heads go SH = ks.shape[0] at a time (a *slab*): their keys and values are first copied
    into ks, vs (SH, Tk, D|Dv), one head's rows contiguous — in the (B, T, H, D) layout
    a head's consecutive keys are H·D numbers apart, and at H·D·itemsize = 2 KB (8 heads of
    64, float32) that stride maps a window's keys onto a few cache sets, which evicts them
    before the next group reuses them — and the keys also transposed into ks_t (SH, D, Tk+L)
    for the register tile of the scores (vs_t is (SH, 0, ·): the forward needs no transposed
    values). Then the slab's tasks — blocks of KB groups of G query rows, of each head — in
    NC = work.shape[0] contiguous chunks of equal work (`_balanced_chunks`), one per
    thread, run in parallel; per block: 1. the scores of its rows into a scratch row each
    (work[thread, 0], (KB·G, width + L)), 2. e_j = exp(s_j − m) of each row in place and
    l = Σ_j e_j, 3. out rows = (Σ_j e_j v_j) / l.
    ``scale`` must be a scalar of q's dtype. Complexity O(nnz · (D + Dv)) per (b, h).
    """
    B, H, Tk = q.shape[0], q.shape[2], k.shape[1]
    NG = seg_len.shape[2]  # groups of G query rows
    SH = ks.shape[0]
    NTB = (Tk + TB - 1) // TB
    NC = work.shape[0]  # chunks of tasks, one per thread
    for s0 in range(0, B * H, SH):  # one slab of heads
        nh = min(SH, B * H - s0)
        for tt in numba.prange(nh * NTB):
            _copy_slab_rows(k, v, s0, tt, NTB, H, ks, vs, ks_t, vs_t)
        NB = (NG + KB - 1) // KB  # blocks of KB groups per head
        bounds = _balanced_chunks(indptr, s0, nh, H, NB, NC)
        for c in numba.prange(NC):
            S = work[numba.get_thread_id(), 0]  # (KB·G, width + L) scores, then exponentials
            R = work[numba.get_thread_id(), 1]  # R[r, 0] = 1 / row sum
            for task in range(bounds[c], bounds[c + 1]):
                sl = task // NB
                g0 = (task % NB) * KB
                _fwd_block(q, ks, vs, ks_t, sl, indptr, indices, seg_start, seg_len, scale, out, lse, S, R,
                           (s0 + sl) // H, (s0 + sl) % H, g0, min(NG, g0 + KB))


@numba.njit(**_INNER)
def _dkv_block(k, v, qs, dos, qs_t, dos_t, sl, lse, delta, t_indptr, t_indices, t_seg_start, t_seg_len, scale,
               dk, dv, Y, P, dS, b, h, g0, g1):
    """dK and dV of key groups g0 … g1-1 of head (b, h), and their terms of dQ added into
    Y (Tq, D), this chunk's partial dQ of the head; P, dS (KB·G, width + L) scratch."""
    Tk, D = k.shape[1], k.shape[3]
    Dv = v.shape[3]
    PB, PH = t_indptr.shape[0], t_indptr.shape[1]
    zero = k.dtype.type(0)
    pb = b if PB > 1 else 0
    ph = h if PH > 1 else 0
    ip = t_indptr[pb, ph]  # (Tk+1,) column j lists the queries that attend to key j
    starts, lens = t_seg_start[pb, ph], t_seg_len[pb, ph]
    _block_dots(P, k, b, h, qs[sl], qs_t[sl], g0, g1, Tk, ip, t_indices, starts, lens)  # k_j · q_i
    _block_dots(dS, v, b, h, dos[sl], dos_t[sl], g0, g1, Tk, ip, t_indices, starts, lens)  # dp_ij = v_j · dO_i
    lse_h = lse[b, h]  # (Tq,)
    delta_h = delta[b, h]
    for j in range(G * g0, min(Tk, G * g1)):
        dkj = dk[b, j, h]  # (D,)
        dvj = dv[b, j, h]  # (Dv,)
        for d in range(D):
            dkj[d] = zero
        for d in range(Dv):
            dvj[d] = zero
        e0 = ip[j]
        n = ip[j + 1] - e0
        pr = P[j - G * g0]
        dsr = dS[j - G * g0]
        if _consecutive(t_indices, e0, n):
            # consecutive queries (windows, blocks): lse and delta read in order — this
            # loop vectorises, where the gather below costs ~4x as much per entry
            i_first = t_indices[e0]
            for t in range(n):
                p = exp_softmax(pr[t] * scale - lse_h[i_first + t])
                pr[t] = p
                dsr[t] = scale * p * (dsr[t] - delta_h[i_first + t])
        else:
            for t in range(n):
                i = t_indices[e0 + t]
                p = exp_softmax(pr[t] * scale - lse_h[i])
                pr[t] = p
                dsr[t] = scale * p * (dsr[t] - delta_h[i])
    _block_accumulate(dv, b, h, P, dos[sl], g0, g1, Tk, ip, t_indices, starts, lens)  # dv_j = Σ_i p_ij dO_i
    _block_accumulate(dk, b, h, dS, qs[sl], g0, g1, Tk, ip, t_indices, starts, lens)  # dk_j = scale Σ_i ds_ij q_i
    _block_scatter(Y, b, h, dS, k, g0, g1, Tk, ip, t_indices, starts, lens)  # dq_i += scale · ds_ij k_j


@numba.njit(**_INNER)
def _delta_rows(out, dout, delta, s0, tt, NTB, H):
    """Task tt of the backward's copies (a block of TB rows of head s0 + tt // NTB):
    delta[b, h, i] = dO_i · O_i for those rows — the dO rows were just read by the copy."""
    bh = s0 + tt // NTB
    b, h = bh // H, bh % H
    t0 = (tt % NTB) * TB
    t1 = min(out.shape[1], t0 + TB)
    for i in range(t0, t1):
        doi = dout[b, i, h]  # (Dv,)
        oi = out[b, i, h]
        dl = out.dtype.type(0)
        for d in range(doi.size):
            dl += doi[d] * oi[d]
        delta[b, h, i] = dl


@numba.njit(**_INNER)
def _start_partials(Pc, rc, t0, t1, NB, s0, H, t_indptr, t_indices):
    """Before chunk c runs tasks t0 … t1-1 of a slab: for each head sl of the slab, the
    query rows [lo, hi) its key groups reach (rc[sl] = (lo, hi); (0, 0) for a head it has no
    task in), and those rows of its partial dQ Pc (SH, Tq, D) zeroed — only those: the rest
    of Pc is never read. O(keys + rows zeroed)."""
    SH, Tq, D = Pc.shape
    Tk = t_indptr.shape[2] - 1
    PB, PH = t_indptr.shape[0], t_indptr.shape[1]
    for sl in range(SH):
        rc[sl, 0] = 0
        rc[sl, 1] = 0
    if t1 <= t0:
        return
    for sl in range(t0 // NB, (t1 - 1) // NB + 1):
        bh = s0 + sl
        b, h = bh // H, bh % H
        ip = t_indptr[b if PB > 1 else 0, h if PH > 1 else 0]  # (Tk+1,)
        j0 = (max(t0, sl * NB) - sl * NB) * KB * G  # the chunk's first and last key of this head
        j1 = min(Tk, (min(t1, (sl + 1) * NB) - sl * NB) * KB * G)
        lo, hi = Tq, 0
        for j in range(j0, j1):
            if ip[j + 1] > ip[j]:  # its queries, sorted: the first and the last
                lo = min(lo, t_indices[ip[j]])
                hi = max(hi, t_indices[ip[j + 1] - 1] + 1)
        if hi > lo:
            rc[sl, 0] = lo
            rc[sl, 1] = hi
            for i in range(lo, hi):
                row = Pc[sl, i]  # (D,)
                for d in range(D):
                    row[d] = 0


@numba.njit(**_INNER)
def _sum_partials(P, ranges, sl, tt, NTB, dq, H, s0):
    """Task tt after a slab's chunks: dq[b, i, h] = Σ_c P[c, sl, i] over the chunks c whose
    rows [lo, hi) hold i (in order of c), for a block of TB rows of head s0 + sl; 0 where no
    chunk reached row i. P (NC, SH, Tq, D), ranges (NC, SH, 2)."""
    bh = s0 + sl
    b, h = bh // H, bh % H
    t0 = (tt % NTB) * TB
    t1 = min(P.shape[2], t0 + TB)
    for i in range(t0, t1):
        y = dq[b, i, h]  # (D,)
        first = True
        for c in range(P.shape[0]):
            if ranges[c, sl, 0] <= i < ranges[c, sl, 1]:
                row = P[c, sl, i]  # (D,)
                if first:
                    for d in range(y.size):
                        y[d] = row[d]
                    first = False
                else:
                    for d in range(y.size):
                        y[d] += row[d]
        if first:
            for d in range(y.size):
                y[d] = 0


@numba.njit(**_FLAGS)
def sparse_attention_bwd(q, k, v, out, dout, lse, t_indptr, t_indices, t_seg_start, t_seg_len, scale,
                         dq, dk, dv, delta, work, qs, dos, qs_t, dos_t, dqp):
    """dQ, dK and dV in one pass, parallel over (head of a slab, block of KB groups of G
    keys) through the transposed pattern.

    With p_ij = exp(q_i · k_j · scale − lse_i) recomputed per stored entry (i a query that
    may attend to key j), dp_ij = dO_i · v_j, delta_i = dO_i · O_i and
    ds_ij = p_ij (dp_ij − delta_i) ([docs/sparse-attention.md, Backward](../sparse-attention.md#backward)):

        dv_j = Σ_i p_ij dO_i,   dk_j = scale · Σ_i ds_ij q_i,   dq_i = scale · Σ_j ds_ij k_j.

    dv_j and dk_j are sums over key j's column: one task writes them. dq_i gathers terms
    from the columns of many keys. So a slab's tasks are cut into NC = dqp.shape[0]
    contiguous *chunks* of equal work (`_balanced_chunks`; one per thread, run in
    parallel), and each chunk adds its terms into partial rows of its own, dqp[c] (NC, SH,
    Tq, D) — only the query rows its keys reach, [lo, hi) per head, are zeroed and used —
    and dq is their sum over the chunks, taken after the slab's chunks (no atomics). The
    order of every sum depends only on the pattern, the shapes and NC, not on which thread
    runs a chunk or how many threads there are.

    Per slab of SH = qs.shape[0] heads: the queries and output gradients copied into qs,
    dos (SH, Tq, D|Dv) and transposed into qs_t, dos_t (SH, D|Dv, Tq+L), and delta_i of
    their rows; the chunks; dq = Σ partials.
    A key no query attends to gets zero gradients, a query with no key zero dq.
    """
    B, Tq, H = q.shape[0], q.shape[1], q.shape[2]
    NG = t_seg_len.shape[2]  # groups of G keys
    SH = qs.shape[0]
    NC = dqp.shape[0]
    NTB = (Tq + TB - 1) // TB
    ranges = np.zeros((NC, SH, 2), dtype=np.int64)  # per chunk and head: dQ rows [lo, hi) in use
    for s0 in range(0, B * H, SH):
        nh = min(SH, B * H - s0)
        for tt in numba.prange(nh * NTB):
            _copy_slab_rows(q, dout, s0, tt, NTB, H, qs, dos, qs_t, dos_t)
            _delta_rows(out, dout, delta, s0, tt, NTB, H)
        NB = (NG + KB - 1) // KB  # blocks of KB key groups per head
        bounds = _balanced_chunks(t_indptr, s0, nh, H, NB, NC)
        for c in numba.prange(NC):
            t0, t1 = bounds[c], bounds[c + 1]
            _start_partials(dqp[c], ranges[c], t0, t1, NB, s0, H, t_indptr, t_indices)
            tid = numba.get_thread_id()
            P = work[tid, 0]  # (KB·G, width + L) scores, then p
            dS = work[tid, 1]  # (KB·G, width + L) dp, then scale · ds
            for task in range(t0, t1):
                sl = task // NB
                g0 = (task % NB) * KB
                _dkv_block(k, v, qs, dos, qs_t, dos_t, sl, lse, delta, t_indptr, t_indices, t_seg_start, t_seg_len,
                           scale, dk, dv, dqp[c, sl], P, dS, (s0 + sl) // H, (s0 + sl) % H, g0, min(NG, g0 + KB))
        for tt in numba.prange(nh * NTB):
            _sum_partials(dqp, ranges, tt // NTB, tt, NTB, dq, H, s0)


def new_work(width, dtype):
    """The kernels' per-thread scratch: (n_threads, 2, KB·G, width + L) — two score rows per
    row of a block, width ≥ the longest row (or column, for the backward) of the
    pattern, plus L = VECTOR_BYTES of numbers for the lanes a register tile writes past a
    row; rounded up to whole cache lines and cache-line aligned, so every row starts on
    a line ([`aligned_empty`][refsparse.kernels.buffers.aligned_empty])."""
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    return aligned_empty((numba.config.NUMBA_NUM_THREADS, 2, KB * G, _whole_lines(max(int(width), 1) + lanes, dtype)),
                         dtype)


def _whole_lines(n, dtype):
    """n numbers of dtype rounded up to whole cache lines (a row length that keeps every
    row of an aligned array on line boundaries)."""
    line = CACHE_LINE // np.dtype(dtype).itemsize
    return -(-int(n) // line) * line


SLAB_BYTES = 1 << 20  # the most one slab of head copies may take (in effect one head above T ≈ 700)


def new_slabs(n_heads, length, widths, dtype, transposed, partials=0):
    """Scratch for one slab of heads: for each w in ``widths`` an (SH, length, w) array of
    rows, then for each an (SH, w, length + L) array of the same rows transposed (L =
    VECTOR_BYTES of numbers of zero padding, which a register tile may read past the last
    row; the row rounded up to whole cache lines), or (SH, 0, length + L) where
    ``transposed`` says False; with ``partials`` = D > 0, last, the backward's partial dQ
    rows (NC, SH, length, D), one per chunk of its tasks, NC = NUMBA_NUM_THREADS (the
    configured count, not the current one: the chunks, and so the numbers, stay the same
    under numba.set_num_threads).
    SH is the most heads whose scratch all fits in SLAB_BYTES (at least 1, at most n_heads).
    The kernels work one slab at a time, so this — not a copy of every head — is what the
    copies add to memory: O(T·D), never O(T²), never growing with B·H (at T = 16384,
    D = Dv = 64, float32, 2 threads, the backward's rows, transposed rows and partials: one
    head of 24 MB, 2.3% of one T × T float32 matrix)."""
    itemsize = np.dtype(dtype).itemsize
    lanes = VECTOR_BYTES // itemsize
    n_threads = numba.config.NUMBA_NUM_THREADS
    widths_t = [int(w) if t else 0 for w, t in zip(widths, transposed)]
    padded = _whole_lines(int(length) + lanes, dtype)  # a transposed row: length + L, whole lines
    per_head = (sum(int(w) * int(length) for w in widths) + sum(w * padded for w in widths_t)
                + n_threads * int(length) * int(partials))
    sh = int(max(1, min(n_heads, SLAB_BYTES // max(per_head * itemsize, 1))))
    rows = tuple(aligned_empty((sh, int(length), int(w)), dtype) for w in widths)
    cols = tuple(aligned_empty((sh, w, padded), dtype) for w in widths_t)
    for c in cols:
        c[:, :, int(length):] = 0  # the padding a tile reads past the last row
    if partials:
        return rows + cols + (aligned_empty((n_threads, sh, int(length), int(partials)), dtype),)
    return rows + cols


# ----------------------------------------------------------------------------------
# the driver: path, outputs, scratch and per-pattern data
# ----------------------------------------------------------------------------------
_patterns = PatternCache()


def segments(indptr, indices):
    """`shared_segments` of a pattern, ``(seg_start, seg_len)``, built once per
    pattern: kept in the driver's cache, keyed by the identity of the two arrays."""
    return _patterns.get((indptr, indices), "segments", lambda: shared_segments(indptr, indices))


def forward(q, k, v, pattern, scale):
    """Sparse attention's forward on the current path (`refsparse.kernels.switch.current`).

    q (B, Tq, H, D), k (B, Tk, H, D), v (B, Tk, H, Dv): C-contiguous, one dtype.
    ``pattern``: the pattern arrays of this module's legend, read as attributes
    ``indptr``, ``indices``, ``t_indptr``, ``t_indices`` and ``width`` (the longest row or
    column), as `refsparse.functional.sparse_attention.PreparedPattern` holds them.
    ``scale``: a scalar of q's dtype. Returns out (B, Tq, H, Dv) and lse (B, H, Tq), new
    arrays (on the fast path, cache-line aligned).
    """
    if current() == "reference":
        return reference.forward(q, k, v, pattern, scale)
    B, Tq, H, _ = q.shape
    Tk, Dv, dtype = k.shape[1], v.shape[3], q.dtype
    seg_start, seg_len = segments(pattern.indptr, pattern.indices)
    out = aligned_empty((B, Tq, H, Dv), dtype)  # (B, Tq, H, Dv)
    lse = aligned_empty((B, H, Tq), dtype)
    work = new_work(pattern.width, dtype)  # (n_threads, 2, KB·G, width + L) scratch rows of scores
    # one slab of heads' keys and values, and the keys transposed
    ks, vs, ks_t, vs_t = new_slabs(B * H, Tk, (q.shape[3], Dv), dtype, transposed=(True, False))
    sparse_attention_fwd(q, k, v, pattern.indptr, pattern.indices, seg_start, seg_len, scale, out, lse, work,
                         ks, vs, ks_t, vs_t)
    return out, lse


def backward(dout, q, k, v, out, lse, pattern, scale):
    """(dq, dk, dv) of sparse attention on the current path, in q's, k's and v's layout.

    dout (B, Tq, H, Dv) C-contiguous; q, k, v, pattern, scale as given to `forward`;
    out and lse as it returned them. The fast path is one kernel over the transposed
    pattern (`sparse_attention_bwd`).
    """
    if current() == "reference":
        return reference.backward(dout, q, k, v, out, lse, pattern, scale)
    B, Tq, H, D = q.shape
    Dv, dtype = v.shape[3], q.dtype
    t_seg_start, t_seg_len = segments(pattern.t_indptr, pattern.t_indices)
    dq = aligned_empty(q.shape, dtype)  # (B, Tq, H, D)
    dk = aligned_empty(k.shape, dtype)
    dv = aligned_empty(v.shape, dtype)
    delta = aligned_empty((B, H, Tq), dtype)
    work = new_work(pattern.width, dtype)  # (n_threads, 2, KB·G, width + L) scratch rows
    # one slab of heads' queries and output gradients, as rows and transposed, and the
    # chunks' partial dQ rows
    qs, dos, qs_t, dos_t, dqp = new_slabs(B * H, Tq, (D, Dv), dtype, transposed=(True, True), partials=D)
    sparse_attention_bwd(q, k, v, out, dout, lse, pattern.t_indptr, pattern.t_indices, t_seg_start, t_seg_len,
                         scale, dq, dk, dv, delta, work, qs, dos, qs_t, dos_t, dqp)
    return dq, dk, dv
