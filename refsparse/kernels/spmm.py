"""Products of a CSR weight with row-major activations: SpMM (forward, dX) and SDDMM (dW).

These are the hot loops of :class:`refsparse.nn.sparse.SparseLinear`, ``y = x Wᵀ + b``.

Layout legend (all dense arrays C-contiguous, one dtype, float32 or float64):

    N      rows of the activations (all leading axes flattened: batch × time)
    C_in   input features, C_out output features
    x      (N, C_in)        activations, row-major, as the layer before produced them
    y, dy  (N, C_out)
    dx     (N, C_in)

The weight W (C_out, C_in) is a canonical CSR matrix (scipy's names):

    Ap[C_out+1]   row pointers: row o holds entries Ap[o] .. Ap[o+1]-1
    Aj[nnz]       column ids, sorted within each row, no duplicates
    Ax[nnz]       values (a stored entry may hold 0.0: it stays stored)

**Why batch tiles.** A stored entry (o, j) couples *column* j of x with *column* o of y.
With row-major activations a column is strided, and a sparse loop over strided data
does not vectorize. So every kernel walks the batch in tiles of TN rows (TN = the
scratch buffers' last axis, chosen by the caller) and first copies the tile, transposed,
into a small per-thread buffer: ``xt[j, t] = x[n0 + t, j]``. Row j of ``xt`` is then a
contiguous vector of TN numbers, and each stored entry costs one length-TN vector
operation (8 float32 per AVX2 instruction):

    forward   yt[o, :] += Ax[e] * xt[j, :]          (gather over the entries of row o)
    dX        dxt[j, :] += Ax[e] * gt[o, :]         (scatter, gt[o, t] = dy[n0 + t, o])
    dW        dW[e]     += gt[o, :] · xt[j, :]      (a dot product per stored entry)

:func:`spmm_gather` can read W's values through an index array P (entry k's value is
Ax[P[k]]), so the same gather also computes dX = dy (Wᵀ)ᵀ over the rows of Wᵀ —
:func:`refsparse.patterns.transpose_structure` gives Wᵀ's pattern and P once per
pattern; W's values are never copied. The caller uses it for very sparse weights, where the scatter's fill and
write-back of a whole (C_in, TN) tile of accumulators costs more than its few entries.

Each entry of W is read once per tile and reused for TN rows; each element of the
activations is transposed once per tile and reused by every stored entry of its column.
The transposes are tile-sized, in cache, never whole-activation copies (measured here,
``np.ascontiguousarray(x.T)`` of a large activation costs more than the dense GEMM), and
move K × K blocks through registers (:func:`refsparse.kernels.simd.vtranspose`).
The dW kernels never build a dense (C_out, C_in) array: their output is aligned with
``Ax``, one number per stored entry.

**Parallelism.** Tiles are independent: ``prange`` over tiles. Thread ``tid =
numba.get_thread_id()`` works in its own scratch slices ``buf[tid]``, so the scratch
buffers have a leading axis T = numba.get_num_threads(). Forward and dX write disjoint
rows of ``y`` / ``dx``. dW and db sum over all tiles: each thread adds into its own row
of ``dw_part`` (T, nnz) and ``db_part`` (T, C_out), which the caller zeroes before and
sums after (an O(T · nnz) reduction, no atomics). With numba's static schedule the
tiles a thread gets — hence the summation order — depend only on N, TN and T.

**Column blocks (backward).** dX scatters into, and dW reads, rows of dxt and xt at
random. The backward kernels therefore walk W one block of columns at a time (row
segments from :func:`column_blocks`), so that the block's rows of xt/dxt stay in cache
while gt streams by; with C_in small enough there is a single block.

**What the inner loops cost, measured on these machines (AVX2).** Plain Numba code gives
no way to keep a vector accumulator in registers across the entries of a row (LLVM's SLP
vectorizer does not combine scalar accumulators carried around a loop; the vectors of
:mod:`refsparse.kernels.simd` now can, and the attention kernels use them — these loops do
not yet), so the forward
accumulator row lives in L1 and is loaded and stored once per *four* entries; the dW dots
share one pass over gt[o] between four entries. Rows are taken as slices indexed from
``range`` and column ids as unsigned integers, which removes Numba's negative-index
tests from the hot loops. Per core this runs at roughly 10–20 GFLOP/s in float32 (dense
BLAS: 60–75): the kernels win from about 85 % sparsity on. At 99 % the tile transposes of
the wide activations and writing the output dominate: they are memory-bound, as dense
BLAS's own reads and writes of the same arrays are.

**Tail tile.** The last tile may hold m < TN rows; its transposed buffers are zero-padded
to TN so that the vector loops always run over TN lanes (padding contributes 0 to the dot
products and is never written back).

NumPy twin: :func:`refsparse.functional.linear.linear_forward` / ``linear_backward`` with
the dense masked weight ``W.toarray()`` — the tests hold every kernel here to it.

Cost, per product: 2 · nnz · N flops, plus O(N · (C_in + C_out)) for the transposes.
Memory besides inputs and outputs: the scratch buffers, T · TN · (C_in + C_out) (and
T · TN · C_in more for the fused backward), plus ``dw_part`` (T, nnz).
"""

from __future__ import annotations

import numba
import numpy as np

from .simd import tlanes, vtranspose

_FLAGS = dict(parallel=True, cache=True, fastmath={"reassoc", "contract"})
_SERIAL = dict(cache=True, fastmath={"reassoc", "contract"})


@numba.njit(cache=True)
def _u(j):
    """A column id as an unsigned integer: Numba then skips the negative-index wraparound
    test on every ``xt[j]`` (column ids are never negative)."""
    return np.uint64(j)


# ----------------------------------------------------------------------------------
# tile transposes (called from inside the parallel loops; inlined by LLVM)
# ----------------------------------------------------------------------------------
@numba.njit(**_SERIAL)
def _load_tile_t(a, n0, m, c0, nc, at):
    """at[c, t] = a[n0 + t, c0 + c] for c < nc and t < m, and 0 for m <= t < TN.

    a (N, C) row-major; at (>= nc, TN) a scratch slice: the columns c0 … c0+nc-1 of
    the rows n0 … n0+m-1, transposed. Works in K × K blocks (K = 8 float32, 4 float64),
    each moved through registers by :func:`~refsparse.kernels.simd.vtranspose`: K vector
    loads from K rows of a, K vector stores into K rows of at. Number by number, the
    same move ran 2.4× slower at C = 2048 (and an earlier row-by-row version slower still).
    """
    TN = at.shape[1]
    C = a.shape[1]
    K = tlanes(a)
    src = a.reshape(-1)  # (N·C,) views of the same memory, for vtranspose's offsets
    dst = at.reshape(-1)  # (rows·TN,)
    nK = nc - nc % K
    mK = m - m % K
    for t0 in range(0, mK, K):
        for b0 in range(0, nK, K):
            vtranspose(src, (n0 + t0) * C + c0 + b0, C, dst, b0 * TN + t0, TN)
        for c in range(nK, nc):
            for t in range(K):
                at[c, t0 + t] = a[n0 + t0 + t, c0 + c]
    for t in range(mK, m):
        for c in range(nc):
            at[c, t] = a[n0 + t, c0 + c]
    if m < TN:
        zero = at.dtype.type(0)
        for c in range(nc):
            for t in range(m, TN):
                at[c, t] = zero


@numba.njit(**_SERIAL)
def store_tile_t(at, n0, m, c0, nc, a):
    """a[n0 + t, c0 + c] = at[c, t] for c < nc and t < m: the inverse of
    :func:`_load_tile_t`, also in K × K blocks through registers. (The attention kernels'
    slab copies use it too, for their transposed rows.)"""
    TN = at.shape[1]
    C = a.shape[1]
    K = tlanes(a)
    src = at.reshape(-1)  # (rows·TN,)
    dst = a.reshape(-1)  # (N·C,)
    nK = nc - nc % K
    mK = m - m % K
    for t0 in range(0, mK, K):
        for b0 in range(0, nK, K):
            vtranspose(src, b0 * TN + t0, TN, dst, (n0 + t0) * C + c0 + b0, C)
        for t in range(K):
            for c in range(nK, nc):
                a[n0 + t0 + t, c0 + c] = at[c, t0 + t]
    for t in range(mK, m):
        for c in range(nc):
            a[n0 + t, c0 + c] = at[c, t]


@numba.njit(cache=True)
def column_blocks(Ap, Aj, block, Bp):
    """Split every row of W at multiples of ``block`` columns.

    Arguments::

        Ap [C_out+1], Aj [nnz]   W's pattern, canonical CSR (sorted indices)
        block                    columns per block, >= 1
        Bp (C_out, nb+1)         output, nb = ceil(C_in / block): the entries of row o
                                 with column in [k·block, (k+1)·block) are
                                 Bp[o, k] .. Bp[o, k+1]-1; Bp[o, 0] = Ap[o], Bp[o, nb] = Ap[o+1]

    The backward kernels walk W block by block, so that the rows of the transposed
    tiles they touch at random (xt[j], dxt[j]) stay in cache. O(nnz + C_out · nb).
    """
    C_out = Bp.shape[0]
    nb = Bp.shape[1] - 1
    for o in range(C_out):
        e = Ap[o]
        e1 = Ap[o + 1]
        for k in range(nb):
            Bp[o, k] = e
            end = (k + 1) * block
            while e < e1 and Aj[e] < end:
                e += 1
        Bp[o, nb] = e1


@numba.njit(**_SERIAL)
def _value(Ax, P, k):
    """Entry k's value: Ax[k], or Ax[P[k]] when values are read through a map P. With P
    None the test is settled when Numba compiles (a None argument has its own type), so
    the forward pays nothing for the map."""
    if P is None:
        return Ax[_u(k)]
    return Ax[_u(P[_u(k)])]


@numba.njit(**_FLAGS)
def spmm_gather(a, Ap, Aj, Ax, P, bias, out, at_buf, ot_buf):
    """out = a Mᵀ + bias, row by row of M (each output column gathers its inputs).

    Arguments::

        a       (N, C_src)       input, read
        Ap      [R+1], Aj [nnz]  M's pattern (R, C_src), canonical CSR
        Ax      [nnz]            values; P None: entry k of M is Ax[k]
        P       [nnz] or None    with a map P: entry k of M is Ax[P[k]]
        bias    (R,)             added to every row (zeros for none)
        out     (N, R)           output, every element written
        at_buf  (T, C_src, TN)   scratch, T >= numba.get_num_threads()
        ot_buf  (T, OB, TN)      scratch: OB rows of M (outputs) at a time, 1 <= OB

    Used two ways. Forward, M = W and P None: ``y = x Wᵀ + b``. dX of a very sparse W,
    M = Wᵀ (:func:`refsparse.patterns.transpose_structure`) with W's values read through P
    and zero bias: ``dx = dy W = dy (Wᵀ)ᵀ`` — there it beats :func:`spmm_dx`'s scatter,
    which must fill and write back a whole tile of accumulators for few entries.

    Per tile of TN rows: at = a[tile]ᵀ; then for each chunk of OB rows r of M,
    ``ot[r, :] = bias[r] + Σ_{k in row r} M_k · at[Aj[k], :]`` (the sum unrolled by four
    entries, so the accumulator row is loaded and stored once per four entries), and
    out[tile, chunk] = otᵀ. The chunk keeps the accumulators in cache: a whole (R, TN)
    tile of out would be 512 KB at R = 2048, more than L2.

    Assumes: shapes as above, canonical CSR (duplicates would be summed, which is still
    correct; unsorted indices only cost locality). Guarantees: out[n, r] =
    Σ_k a[n, Aj[k]] M_k + bias[r] over the entries k of row r, in a reordered
    (vectorized) order; an empty row r gives out[:, r] = bias[r].

    Complexity: 2 · nnz · N flops; O(N · (C_src + R)) transposes.
    NumPy twin: ``linear_forward(a, M.toarray(), bias)``.
    """
    N = a.shape[0]
    C_src = a.shape[1]
    R = Ap.size - 1
    TN = at_buf.shape[2]
    OB = ot_buf.shape[1]
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        at = at_buf[tid]  # (C_src, TN)
        ot = ot_buf[tid]  # (OB, TN)
        n0 = tile * TN
        m = min(TN, N - n0)
        _load_tile_t(a, n0, m, 0, C_src, at)
        for c0 in range(0, R, OB):
            nc = min(OB, R - c0)
            for q in range(nc):
                r = c0 + q
                acc = ot[q]  # (TN,) the accumulator, then out[n0:n0+m, r]
                br = bias[r]
                for t in range(TN):
                    acc[t] = br
                e0 = Ap[r]
                aj = Aj[e0:Ap[r + 1]]  # the row's column ids as a slice: indices from range()
                n = aj.size  # are provably >= 0, which keeps the loops lean
                for g in range(n // 4):
                    k = 4 * g
                    w0, w1 = _value(Ax, P, e0 + k), _value(Ax, P, e0 + k + 1)
                    w2, w3 = _value(Ax, P, e0 + k + 2), _value(Ax, P, e0 + k + 3)
                    x0, x1 = at[_u(aj[k])], at[_u(aj[k + 1])]
                    x2, x3 = at[_u(aj[k + 2])], at[_u(aj[k + 3])]
                    for t in range(TN):
                        acc[t] += w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]
                for k in range(n - n % 4, n):
                    w0 = _value(Ax, P, e0 + k)
                    x0 = at[_u(aj[k])]
                    for t in range(TN):
                        acc[t] += w0 * x0[t]
            store_tile_t(ot, n0, m, c0, nc, out)


# ----------------------------------------------------------------------------------
# backward pieces: dX = dY W,  dW = (dYᵀ X) on the pattern,  and both fused
# ----------------------------------------------------------------------------------
@numba.njit(**_SERIAL)
def _dw_row(g, xt, aj, dw):
    """dw[k] += g · xt[aj[k], :] for every k: four dot products per pass over g.

    g (TN,) one row of gt; aj, dw: one row's (or segment's) column ids and dW slots.
    """
    TN = g.size
    zero = g.dtype.type(0)
    n = aj.size
    for q in range(n // 4):
        k = 4 * q
        r0, r1 = xt[_u(aj[k])], xt[_u(aj[k + 1])]
        r2, r3 = xt[_u(aj[k + 2])], xt[_u(aj[k + 3])]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for t in range(TN):
            gv = g[t]
            s0 += gv * r0[t]
            s1 += gv * r1[t]
            s2 += gv * r2[t]
            s3 += gv * r3[t]
        dw[k] += s0
        dw[k + 1] += s1
        dw[k + 2] += s2
        dw[k + 3] += s3
    for k in range(n - n % 4, n):
        r0 = xt[_u(aj[k])]
        s0 = zero
        for t in range(TN):
            s0 += g[t] * r0[t]
        dw[k] += s0


@numba.njit(**_SERIAL)
def _dx_row(g, dxt, aj, ax):
    """dxt[aj[k], :] += ax[k] · g for every k: the scatter of one row (or segment) of W."""
    TN = g.size
    for k in range(aj.size):
        d = dxt[_u(aj[k])]
        w = ax[k]
        for t in range(TN):
            d[t] += w * g[t]


@numba.njit(**_FLAGS)
def spmm_dx(dy, Bp, Aj, Ax, dx, gt_buf, dxt_buf):
    """dx = dy W with the same CSR as the forward (no transposed copy of W).

    Arguments::

        dy       (N, C_out)       upstream gradient, read
        Bp       (C_out, nb+1)    W's rows split into column blocks (:func:`column_blocks`)
        Aj, Ax                    W (C_out, C_in), canonical CSR
        dx       (N, C_in)        output, every element written
        gt_buf   (T, OB, TN)      scratch: OB rows of W at a time
        dxt_buf  (T, C_in, TN)    scratch

    dx[n, j] = Σ_o dy[n, o] W[o, j]. Per tile: dxt = 0; for each chunk of OB rows of W,
    gt = dy[tile, chunk]ᵀ, then for each stored entry e = (o, j) of the chunk:
    ``dxt[j, :] += Ax[e] · gt[o, :]`` (a scatter over the rows of dxt, which belong to
    this thread alone; block by block of columns, so that the rows hit stay in cache);
    dx[tile] = dxtᵀ. A column of W with no entry gives dx[:, j] = 0.

    Complexity: 2 · nnz · N flops. NumPy twin: ``dy @ W.toarray()`` (linear_backward).
    """
    N = dy.shape[0]
    C_out = Bp.shape[0]
    nb = Bp.shape[1] - 1
    C_in = dx.shape[1]
    TN = gt_buf.shape[2]
    OB = gt_buf.shape[1]
    zero = dy.dtype.type(0)
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        gt = gt_buf[tid]  # (OB, TN)
        dxt = dxt_buf[tid]  # (C_in, TN)
        n0 = tile * TN
        m = min(TN, N - n0)
        for j in range(C_in):
            for t in range(TN):
                dxt[j, t] = zero
        for o0 in range(0, C_out, OB):
            nc = min(OB, C_out - o0)
            _load_tile_t(dy, n0, m, o0, nc, gt)
            for k in range(nb):
                for r in range(nc):
                    e0, e1 = Bp[o0 + r, k], Bp[o0 + r, k + 1]
                    if e0 < e1:
                        _dx_row(gt[r], dxt, Aj[e0:e1], Ax[e0:e1])
        store_tile_t(dxt, n0, m, 0, C_in, dx)


@numba.njit(**_FLAGS)
def sddmm_dw(dy, x, Bp, Aj, dw_part, gt_buf, xt_buf):
    """dW on the pattern only (SDDMM): dw_part[tid, e] += Σ_n dy[n, o] x[n, j], e = (o, j).

    Arguments::

        dy       (N, C_out)       upstream gradient, read
        x        (N, C_in)        the forward's input, read
        Bp       (C_out, nb+1)    W's rows split into column blocks (:func:`column_blocks`)
        Aj                        W's column ids (C_out, C_in), canonical CSR
        dw_part  (T, nnz)         per-thread partial sums, zeroed by the caller;
                                  dW = dw_part.sum(axis=0), aligned with Ax
        gt_buf   (T, OB, TN)      scratch: OB rows of W at a time
        xt_buf   (T, C_in, TN)    scratch

    The dense gradient would be dyᵀ x (C_out, C_in); only its values at stored entries
    are computed, one dot product of length TN per entry per tile, four entries of a
    row at a time (one pass over gt[o] feeds four dots).

    Complexity: 2 · nnz · N flops; no (C_out, C_in) temporary.
    NumPy twin: ``(dy.T @ x)[rows, Aj]`` — linear_backward's dW at the stored entries.
    """
    N = dy.shape[0]
    C_out = Bp.shape[0]
    nb = Bp.shape[1] - 1
    C_in = x.shape[1]
    TN = gt_buf.shape[2]
    OB = gt_buf.shape[1]
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        gt = gt_buf[tid]  # (OB, TN)
        xt = xt_buf[tid]  # (C_in, TN)
        dwp = dw_part[tid]  # (nnz,)
        n0 = tile * TN
        m = min(TN, N - n0)
        _load_tile_t(x, n0, m, 0, C_in, xt)
        for o0 in range(0, C_out, OB):
            nc = min(OB, C_out - o0)
            _load_tile_t(dy, n0, m, o0, nc, gt)
            for k in range(nb):
                for r in range(nc):
                    e0, e1 = Bp[o0 + r, k], Bp[o0 + r, k + 1]
                    if e0 < e1:
                        _dw_row(gt[r], xt, Aj[e0:e1], dwp[e0:e1])


@numba.njit(**_FLAGS)
def spmm_backward(dy, x, Bp, Aj, Ax, dx, dw_part, db_part, gt_buf, xt_buf, dxt_buf):
    """dX, dW (on the pattern) and db in one pass over the batch: spmm_dx + sddmm_dw fused.

    Arguments::

        dy       (N, C_out)       upstream gradient, read once
        x        (N, C_in)        the forward's input, read once
        Bp       (C_out, nb+1)    W's rows split into column blocks (:func:`column_blocks`;
                                  nb = 1 and Bp[:, 0] = Ap[:-1], Bp[:, 1] = Ap[1:] for none)
        Aj, Ax                    W (C_out, C_in), canonical CSR
        dx       (N, C_in)        output, every element written
        dw_part  (T, nnz)         per-thread partial dW, zeroed by the caller
        db_part  (T, C_out)       per-thread partial db = Σ_n dy[n, :], zeroed by the caller
        gt_buf   (T, OB, TN), xt_buf (T, C_in, TN), dxt_buf (T, C_in, TN)   scratch;
                                  gt holds OB rows of W at a time

    Sharing the transposed tiles gt and xt between the two products saves one transpose
    of dy and of x per step. Per tile, for each chunk of OB rows of W (gt = dy[tile,
    chunk]ᵀ, kept in cache), for each column block k and each row o of the chunk: the
    dots for dW (read-only on xt), then the scatter into dxt for dX — both touch only
    the rows of xt and dxt inside block k, which stay in cache while gt streams by.

    Complexity: 4 · nnz · N flops. NumPy twin: ``linear_backward`` with W.toarray(), its
    dW read at the stored entries.
    """
    N = dy.shape[0]
    C_out = Bp.shape[0]
    nb = Bp.shape[1] - 1
    C_in = dx.shape[1]
    TN = gt_buf.shape[2]
    OB = gt_buf.shape[1]
    zero = dy.dtype.type(0)
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        gt = gt_buf[tid]  # (OB, TN)
        xt = xt_buf[tid]  # (C_in, TN)
        dxt = dxt_buf[tid]  # (C_in, TN)
        dwp = dw_part[tid]  # (nnz,)
        dbp = db_part[tid]  # (C_out,)
        n0 = tile * TN
        m = min(TN, N - n0)
        _load_tile_t(x, n0, m, 0, C_in, xt)
        for j in range(C_in):
            for t in range(TN):
                dxt[j, t] = zero
        for o0 in range(0, C_out, OB):
            nc = min(OB, C_out - o0)
            _load_tile_t(dy, n0, m, o0, nc, gt)
            for r in range(nc):  # db: the tile's partial sum, in vector lanes (padding adds 0)
                s = zero
                for t in range(TN):
                    s += gt[r, t]
                dbp[o0 + r] += s
            for k in range(nb):
                for r in range(nc):
                    e0 = Bp[o0 + r, k]
                    e1 = Bp[o0 + r, k + 1]
                    if e0 < e1:
                        g = gt[r]  # (TN,) dy[n0:n0+TN, o0 + r]
                        _dw_row(g, xt, Aj[e0:e1], dwp[e0:e1])
                        _dx_row(g, dxt, Aj[e0:e1], Ax[e0:e1])
        store_tile_t(dxt, n0, m, 0, C_in, dx)
