"""Products of a CSR weight with row-major activations: SpMM (forward, dX) and SDDMM (dW).

These are the hot loops of [`refsparse.nn.sparse.SparseLinear`][refsparse.nn.sparse.SparseLinear], ``y = x Wᵀ + b``.

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

and the backward walks Wᵀ (C_in, C_out), whose pattern Tp, Tj and the map ``perm`` from
its entries to W's (entry k of Wᵀ is entry perm[k] of W) are built once per pattern by
`refsparse.csr.transpose_structure`; its values are At = Ax[perm].

**Why batch tiles.** A stored entry (o, j) couples *column* j of x with *column* o of y.
With row-major activations a column is strided, and a sparse loop over strided data
does not vectorize. So every kernel walks the batch in tiles of TN rows (TN = the
scratch buffers' last axis, chosen by the caller, a multiple of the vector length L)
and first copies the tile, transposed, into a small per-thread buffer:
``xt[j, t] = x[n0 + t, j]``. Row j of ``xt`` is then a contiguous run of TN numbers, and
each stored entry costs one vector operation per L of them
([`refsparse.kernels.simd`][refsparse.kernels.simd]: L = 64 float32 with AVX-512, 16 with AVX2):

    forward   yt[o, :] = b[o] + Σ_{j in row o of W}  Ax · xt[j, :]     (gathers)
    dX        dxt[j, :] =       Σ_{o in row j of Wᵀ} At · gt[o, :]     (gathers, gt = dyᵀ)
    dW        dW[e]    += gt[o, :] · xt[j, :]    for each entry e = (o, j)

**Only gathers.** Every sum is taken along a row of W (forward) or of Wᵀ (backward), so
its accumulator stays in registers from the first entry to the last and is stored once;
the only operand read at random is one side's transposed tile (xt in the forward, gt in
the backward), which the kernel keeps in cache for the whole tile. A scatter form of dX
along W's rows (``dxt[j] += Ax · gt[o]``) loads and stores a row of accumulators per entry
instead, and an earlier version of these kernels that did so, with dW's dots in the same
pass, was 1.1–1.6× slower on every shape and sparsity of ``bench/sparse_linear.py``
(measured side by side on a 2-core AVX-512 Xeon, float32).

Each entry of W is read once per tile and reused for TN rows; each element of the
activations is transposed once per tile and reused by every stored entry of its column.
The transposes are tile-sized, in cache, never whole-activation copies (measured here,
``np.ascontiguousarray(x.T)`` of a large activation costs more than the dense GEMM), and
move K × K blocks through registers ([`refsparse.kernels.simd.vtranspose`][refsparse.kernels.simd.vtranspose]).
The dW sums never build a dense (C_out, C_in) array: their output is one number per
stored entry.

**Four vectors at a time.** A sum held in a register waits for its previous FMA (4 cycles
of latency on the CPUs measured here), and a core starts two FMAs a cycle, so a loop needs
about 8 independent register sums to keep them busy. With AVX2 one vector of L = 16
float32 is two registers, and a 64-row tile is four vectors: the forward and the backward's
dX sums take the four at once (eight register sums), where one vector at a time left them
two and waiting. Measured on the 2-core AVX2 AMD EPYC (float32, N = 4096, 90%, the two
versions alternating in one process, medians over 9 rounds of each call's best of 5): the
forward 0.58× the time at 512 × 512, 0.79× at 2048 × 512, 0.68× at 512 × 2048 (0.75, 0.88
and 0.86× in an earlier run of 5 rounds); the whole backward 0.94–0.97× (its loads from the
cache, not the FMAs' latency, bound it there). With AVX-512 a tile row of 64 float32 is one
vector of four registers and the loops run as before, a vector (the forward) or two (the
backward) at a time.

**What bounds them.** ``bench/spmm_locality.py`` runs these kernels on patterns whose ids
are drawn from the first 64 columns only, so that every read at random hits the L1 cache,
against ids drawn from all, with the same entries in every row. On the 2-core AVX2 AMD EPYC
(float32, N = 4096, 10% density, the time less that of a one-entry-per-row pattern), the
confined forward took 0.6–0.7× the time of the random one and the backward 0.8–1.0×. That
is the most any order or blocking of a random pattern's entries could buy; the rest is the
entries' own work. Two things that looked like bounds and measured as not: on AVX2 the
backward's four-vector loop keeps one of its sums on the stack, 16 registers being too few,
and a version that takes pairs instead and keeps all in registers took the same time; and
dW's lane sums folded 16 entries at a time in registers (the same additions in the same
order, a third of the instructions) left dW alone no faster and spilled the fused loop.

**Parallelism.** Tiles are independent: ``prange`` over tiles. Thread ``tid =
numba.get_thread_id()`` works in its own scratch slices ``buf[tid]``, so the scratch
buffers have a leading axis T = numba.get_num_threads(). Forward and dX write disjoint
rows of ``y`` / ``dx``. dW and db sum over all tiles: each thread adds into its own row
of ``dw_part`` (T, nnz) and ``db_part`` (T, C_out), which the caller zeroes before and
sums after (an O(T · nnz) reduction, no atomics). With numba's static schedule the
tiles a thread gets — hence the summation order — depend only on N, TN and T.

**Chunks and blocks.** The side that is not read at random streams through in chunks:
the forward finishes OB outputs at a time (ot, then stored transposed into y), the
backward CB input columns at a time (xt and dxt), so that the chunk and the cached tile
share the cache. The forward also reads its tile xt in column blocks that fit the L1
cache, each row of W split at the block edges (``Bp``), and the backward its tile gt in
output blocks, each row of Wᵀ split likewise; see [`spmm_forward`][refsparse.kernels.spmm.spmm_forward] and
[`spmm_backward`][refsparse.kernels.spmm.spmm_backward].

**Tail tile.** The last tile may hold m < TN rows; its transposed buffers are zero-padded
to TN so that the vector loops always run over TN lanes (padding contributes 0 to the dot
products and is never written back).

**Driver.** `forward` and `backward` at the end of this file are what
`refsparse.functional.sparse_linear` calls: each asks
`refsparse.kernels.switch.current` and runs the reference
(`refsparse.kernels.reference.spmm`, plain loops, the definition) or the kernels
here, for which it picks the tiles (`tile_rows`), chunks, blocks, scratch, alignment
and non-temporal stores, and keeps what it derives from W's pattern (Wᵀ's structure, block
pointers) in a cache of its own keyed by the identity of W's index arrays.

Reference: `refsparse.kernels.reference.spmm`; the tests hold every kernel here to
it, and both to the NumPy twin `refsparse.functional.linear.linear_forward` /
``linear_backward`` with the dense masked weight ``W.toarray()``.

Cost, per product: 2 · nnz · N flops, plus O(N · (C_in + C_out)) for the transposes.
Memory besides inputs and outputs: the scratch buffers, T · TN · (C_in + OB) forward and
T · TN · (C_out + 2 CB) backward, plus ``dw_part`` (T, nnz) and the block pointers,
(C_out, NB+1) forward and (C_in, NB+1) backward.
"""

from __future__ import annotations

import numba
import numpy as np

from ..csr import entry_rows, transpose_structure
from .buffers import aligned_empty
from .pattern_cache import PatternCache
from .reference import spmm as reference
from .simd import (
    CACHE_LINE,
    TRANSPOSE_BYTES,
    VECTOR_BYTES,
    tlanes,
    vfence,
    vfma,
    vlanes,
    vload,
    vsplat,
    vstore,
    vsum,
    vtranspose,
    vtranspose_nt,
)
from .switch import current

__all__ = ["backward", "forward"]

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
    the rows n0 … n0+m-1, transposed. Works in K × K blocks (K = tlanes: one vector register),
    each moved through registers by [`vtranspose`][refsparse.kernels.simd.vtranspose]: K vector
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
def store_tile_t(at, n0, m, c0, nc, a, stream):
    """a[n0 + t, c0 + c] = at[c, t] for c < nc and t < m: the inverse of
    `_load_tile_t`, also in K × K blocks through registers. (The attention kernels'
    slab copies use it too, for their transposed rows.)

    With ``stream`` the whole blocks are stored with non-temporal stores
    ([`vtranspose_nt`][refsparse.kernels.simd.vtranspose_nt]) where every row of them starts on a
    K-number boundary (a's start, its row length C and c0 all multiples of K), then
    fenced; elsewhere, and for the ragged edges, with plain stores. A non-temporal store
    of a whole line writes it to memory without first reading the line into the cache
    (which a plain store must do), and leaves the cache to the tiles; it is for outputs
    too large to be read back from the cache anyway (the caller decides)."""
    TN = at.shape[1]
    C = a.shape[1]
    K = tlanes(a)
    src = at.reshape(-1)  # (rows·TN,)
    dst = a.reshape(-1)  # (N·C,)
    nK = nc - nc % K
    mK = m - m % K
    nt = stream and C % K == 0 and c0 % K == 0 and a.ctypes.data % (K * a.itemsize) == 0
    for t0 in range(0, mK, K):
        if nt:
            for b0 in range(0, nK, K):
                vtranspose_nt(src, b0 * TN + t0, TN, dst, (n0 + t0) * C + c0 + b0, C)
        else:
            for b0 in range(0, nK, K):
                vtranspose(src, b0 * TN + t0, TN, dst, (n0 + t0) * C + c0 + b0, C)
        for t in range(K):
            for c in range(nK, nc):
                a[n0 + t0 + t, c0 + c] = at[c, t0 + t]
    for t in range(mK, m):
        for c in range(nc):
            a[n0 + t, c0 + c] = at[c, t]
    if nt:
        vfence()


@numba.njit(**_FLAGS)
def spmm_forward(x, Bp, Aj, Ax, bias, y, xt_buf, ot_buf, stream):
    """y = x Wᵀ + bias, row by row of W (each output column gathers its inputs).

    Arguments::

        x       (N, C_in)        input, read
        Bp      (C_out, NB+1)    W's row pointers split at NB column blocks of XB inputs:
                                 row o's entries with XB·b <= j < XB·(b+1) are
                                 Bp[o, b] … Bp[o, b+1]-1, so Bp[:, 0] = Ap[:-1] and
                                 Bp[:, NB] = Ap[1:]; built by
                                 `row_block_pointers`)
        Aj [nnz], Ax [nnz]       W (C_out, C_in), canonical CSR
        bias    (C_out,)         added to every row (zeros for none)
        y       (N, C_out)       output, every element written
        xt_buf  (T, C_in, TN)    scratch, T >= numba.get_num_threads(); TN a multiple of L
        ot_buf  (T, OB, TN)      scratch: OB outputs at a time, 1 <= OB
        stream  bool             store y with non-temporal stores ([`store_tile_t`][refsparse.kernels.spmm.store_tile_t])

    Per tile of TN rows: xt = x[tile]ᵀ; then for each chunk of OB outputs o, each column
    block b and each vector slice v of the tile,
    ``ot[o, v] (+)= Σ_{k in row o, block b} Ax[k] · xt[Aj[k], v]`` (a sum held in
    registers, started from bias[o] in block 0), and y[tile, chunk] = otᵀ. The slices go
    four at a time while four are left (see "Four vectors at a time" above), then one at a
    time; each sum is over the same entries in the same order either way.

    Why column blocks: the sums read rows of xt at random, and all of xt (C_in × TN) is
    more than the L1 cache holds once C_in > 128 (float32, TN = 64). Block b's XB rows of
    xt do fit, and every output of the chunk reads them before the next block's come in;
    the price is one load and store of ot[o] per block, so the caller splits rows into
    blocks only where each (row, block) holds several entries. With NB = 1 this is the
    plain row-by-row gather.

    Assumes: shapes as above, canonical CSR (duplicates would be summed, which is still
    correct; unsorted indices would break the column blocks). Guarantees: y[n, o] =
    Σ_k x[n, Aj[k]] Ax[k] + bias[o] over the entries k of row o, in a reordered
    (vectorized) order; an empty row o gives y[:, o] = bias[o].

    Complexity: 2 · nnz · N flops; O(N · (C_in + C_out · NB)) loads and stores.
    NumPy twin: ``linear_forward(x, W.toarray(), bias)``.
    """
    N = x.shape[0]
    C_in = x.shape[1]
    C_out = Bp.shape[0]
    NB = Bp.shape[1] - 1
    TN = xt_buf.shape[2]
    OB = ot_buf.shape[1]
    L = vlanes(xt_buf)  # TN is a multiple of L
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        xt = xt_buf[tid]  # (C_in, TN)
        ot = ot_buf[tid]  # (OB, TN)
        n0 = tile * TN
        m = min(TN, N - n0)
        _load_tile_t(x, n0, m, 0, C_in, xt)
        for c0 in range(0, C_out, OB):
            nc = min(OB, C_out - c0)
            for b in range(NB):
                for q in range(nc):
                    e0 = Bp[c0 + q, b]
                    aj = Aj[e0:Bp[c0 + q, b + 1]]  # the block's column ids as a slice: indices from
                    v = 0  # range() are provably >= 0, which keeps the loop lean
                    while v + 4 * L <= TN:  # four vector slices at a time: four independent sums
                        if b == 0:
                            acc0 = vsplat(bias[c0 + q])  # (L,) y[n0+v : n0+v+L, c0+q], in registers
                            acc1 = acc0  # (L,) rows v+L … v+2L-1, and so on
                            acc2 = acc0
                            acc3 = acc0
                        else:
                            acc0 = vload(ot[q], v)
                            acc1 = vload(ot[q], v + L)
                            acc2 = vload(ot[q], v + 2 * L)
                            acc3 = vload(ot[q], v + 3 * L)
                        for k in range(aj.size):
                            a = vsplat(Ax[_u(e0 + k)])
                            xr = xt[_u(aj[k])]  # (TN,) the tile's x at input j
                            acc0 = vfma(a, vload(xr, v), acc0)
                            acc1 = vfma(a, vload(xr, v + L), acc1)
                            acc2 = vfma(a, vload(xr, v + 2 * L), acc2)
                            acc3 = vfma(a, vload(xr, v + 3 * L), acc3)
                        vstore(ot[q], v, acc0)
                        vstore(ot[q], v + L, acc1)
                        vstore(ot[q], v + 2 * L, acc2)
                        vstore(ot[q], v + 3 * L, acc3)
                        v += 4 * L
                    while v < TN:  # the slices left over (TN < 4L with AVX-512), one at a time
                        if b == 0:
                            acc = vsplat(bias[c0 + q])
                        else:
                            acc = vload(ot[q], v)
                        for k in range(aj.size):
                            acc = vfma(vsplat(Ax[_u(e0 + k)]), vload(xt[_u(aj[k])], v), acc)
                        vstore(ot[q], v, acc)
                        v += L
            store_tile_t(ot, n0, m, c0, nc, y, stream)


@numba.njit(**_FLAGS)
def spmm_backward(dy, x, Bp, Tj, At, dx, dw_part, db_part, gt_buf, xt_buf, dxt_buf, stream):
    """dX, dW (on the pattern) and db in one pass, along the rows of Wᵀ (gathers only).

    Arguments::

        dy       (N, C_out)       upstream gradient, read once
        x        (N, C_in)        the forward's input, read once (None with dw_part None)
        Bp       (C_in, NB+1)     Wᵀ's row pointers split at NB output blocks of OB =
                                  ⌈C_out / NB⌉: row j of Wᵀ holds entries Bp[j, 0] ..
                                  Bp[j, NB]-1, those of block b from Bp[j, b]
                                  (`transposed_block_pointers`)
        Tj       [nnz]            Wᵀ's column ids (`refsparse.csr.transpose_structure`):
                                  row j of Wᵀ lists the o with (o, j) stored in W, sorted
        At       [nnz]            W's values in Wᵀ's order (weight.data[perm])
        dx       (N, C_in)        output, every element written; None: no dX
        dw_part  (T, nnz)         per-thread partial dW in Wᵀ's order, zeroed by the caller
                                  (dW[perm] = dw_part.sum(axis=0)); None: no dW
        db_part  (T, C_out)       per-thread partial db = Σ_n dy[n, :], zeroed by the
                                  caller; None: no db
        gt_buf   (T, C_out, TN)   scratch: the whole tile of dy, transposed
        xt_buf, dxt_buf (T, CB, TN)   scratch: CB columns of x and of dx at a time
        stream   bool             store dx with non-temporal stores ([`store_tile_t`][refsparse.kernels.spmm.store_tile_t])

    Per tile of TN rows: gt = dy[tile]ᵀ, kept in cache for the whole tile; then for each
    chunk of CB input columns (xt = x[tile, chunk]ᵀ), for each output block b, for each
    column j of the chunk and each pair of vector slices v, v' = v + L of the tile, over
    the entries k of row j of Wᵀ in block b (o = Tj[k]):

        dxt[j, v]  = Σ_k At[k] · gt[o, v]         (sums held in registers, and the
        dxt[j, v'] = Σ_k At[k] · gt[o, v']          same for v')
        dw[k]     += vsum(gt[o, v] · xt[j, v] + gt[o, v'] · xt[j, v'])
                                                  (x's two slices held in registers)

    and dx[tile, chunk] = dxtᵀ. While four slices are left they go four at a time, the
    same sums over v … v + 3L with one vsum of the four slices' products per entry (see
    "Four vectors at a time" above); a tile of an odd number of vectors ends with a single
    slice, the same sums over v alone. Both products read gt[o] once per entry; nothing
    is scattered, so each entry costs its vector loads from the cached gt besides its
    FMAs, and one lane sum (vsum) per pair (or four). The price: gt holds all C_out rows of a
    tile (at C_out = 2048, TN = 128 float32: 1 MB, in L2), and an entry reads its row of gt at
    random. The output blocks keep those reads in L1: within block b the chunk's entries
    read only the OB rows of gt in that block (at OB = 64: 32 KB), the way the forward's
    column blocks keep its reads of xt in L1. A row of Wᵀ then takes NB passes, its dx
    sums stored in dxt after each and loaded again by the next: the same additions in the
    same order, so the numbers do not depend on NB. The caller picks TN
    (`backward_tile_rows`): a single vector
    where W is too sparse for the lane sums to matter. A None output is not computed
    (Numba compiles the call without its branch), so the same kernel gives dX alone and
    dW alone.

    Complexity: 4 · nnz · N flops. NumPy twin: ``linear_backward`` with W.toarray(), its
    dW read at the stored entries.
    """
    N = dy.shape[0]
    C_out = dy.shape[1]
    C_in, NB = Bp.shape[0], Bp.shape[1] - 1
    TN = gt_buf.shape[2]
    CB = xt_buf.shape[1]
    L = vlanes(gt_buf)  # TN is a multiple of L
    zero = vsplat(dy.dtype.type(0))
    one = vsplat(dy.dtype.type(1))
    for tile in numba.prange((N + TN - 1) // TN):
        tid = numba.get_thread_id()
        gt = gt_buf[tid]  # (C_out, TN)
        xt = xt_buf[tid]  # (CB, TN)
        dxt = dxt_buf[tid]  # (CB, TN)
        n0 = tile * TN
        m = min(TN, N - n0)
        _load_tile_t(dy, n0, m, 0, C_out, gt)
        if db_part is not None:  # the tile's column sums, in vector lanes (padding adds 0)
            dbp = db_part[tid]
            for o in range(C_out):
                s = zero
                for v in range(0, TN, L):
                    s = vfma(one, vload(gt[o], v), s)  # s + gt[o, v:v+L], exactly
                dbp[o] += vsum(s)
        for c0 in range(0, C_in, CB):
            nc = min(CB, C_in - c0)
            if dw_part is not None:
                _load_tile_t(x, n0, m, c0, nc, xt)
            for b in range(NB):
                for q in range(nc):
                    _backward_segment(gt, xt, dxt, q, Bp[c0 + q, b], Bp[c0 + q, b + 1], b == 0, Tj, At, dx,
                                      dw_part, tid, TN, L, zero)
            if dx is not None:
                store_tile_t(dxt, n0, m, c0, nc, dx, stream)


@numba.njit(inline="always", **_SERIAL)
def _backward_segment(gt, xt, dxt, q, k0, k1, first, Tj, At, dx, dw_part, tid, TN, L, zero):
    """Entries k0 … k1-1 of row q of the chunk (one output block of a row of Wᵀ): their dW
    terms, and their dX terms added to the row's sums in dxt[q] (started at 0 when
    ``first``, the row's first block, else loaded from dxt[q]).

    Inlined into spmm_backward (``inline="always"``): it runs once per column and block,
    often for a dozen entries, and as a call it made the backward take 1.06–1.4× the time, even
    where W's rows were not split (measured on the benchmark's shapes at 80–99%)."""
    if k1 == k0 and not (first and dx is not None):
        return  # nothing to add (a row's first block still writes its zero sums)
    oj = Tj[k0:k1]  # (entries,) output ids o
    v = 0
    while v + 4 * L <= TN:  # four vector slices at a time (AVX2: eight registers of sums)
        acc0 = zero  # (L,) dx sums of the tile's rows v … v+L-1 for this column, in registers
        acc1 = zero  # (L,) rows v+L … v+2L-1, and so on
        acc2 = zero
        acc3 = zero
        if dx is not None and not first:
            acc0 = vload(dxt[q], v)
            acc1 = vload(dxt[q], v + L)
            acc2 = vload(dxt[q], v + 2 * L)
            acc3 = vload(dxt[q], v + 3 * L)
        xr = xt[q]  # (TN,) x of the tile's rows for this column
        for k in range(oj.size):
            go = gt[_u(oj[k])]  # (TN,) dy of the tile's rows at output o
            gv0 = vload(go, v)
            gv1 = vload(go, v + L)
            gv2 = vload(go, v + 2 * L)
            gv3 = vload(go, v + 3 * L)
            if dx is not None:
                a = vsplat(At[_u(k0 + k)])
                acc0 = vfma(a, gv0, acc0)
                acc1 = vfma(a, gv1, acc1)
                acc2 = vfma(a, gv2, acc2)
                acc3 = vfma(a, gv3, acc3)
            if dw_part is not None:
                d = vfma(gv3, vload(xr, v + 3 * L), vfma(gv2, vload(xr, v + 2 * L), zero))
                d = vfma(gv1, vload(xr, v + L), d)
                dw_part[tid, _u(k0 + k)] += vsum(vfma(gv0, vload(xr, v), d))
        if dx is not None:
            vstore(dxt[q], v, acc0)
            vstore(dxt[q], v + L, acc1)
            vstore(dxt[q], v + 2 * L, acc2)
            vstore(dxt[q], v + 3 * L, acc3)
        v += 4 * L
    while v + 2 * L <= TN:  # two vector slices at a time: one lane sum per 2L rows
        acc0 = zero  # (L,) dx sums of the tile's rows v … v+L-1 for this column, in registers
        acc1 = zero  # (L,) rows v+L … v+2L-1
        if dx is not None and not first:
            acc0 = vload(dxt[q], v)
            acc1 = vload(dxt[q], v + L)
        xv0 = zero  # (L,) x of the tile's rows v … v+L-1 for this column, in registers
        xv1 = zero  # (L,) rows v+L … v+2L-1
        if dw_part is not None:
            xv0 = vload(xt[q], v)
            xv1 = vload(xt[q], v + L)
        for k in range(oj.size):
            go = gt[_u(oj[k])]  # (TN,) dy of the tile's rows at output o
            gv0 = vload(go, v)
            gv1 = vload(go, v + L)
            if dx is not None:
                a = vsplat(At[_u(k0 + k)])
                acc0 = vfma(a, gv0, acc0)
                acc1 = vfma(a, gv1, acc1)
            if dw_part is not None:
                dw_part[tid, _u(k0 + k)] += vsum(vfma(gv1, xv1, vfma(gv0, xv0, zero)))
        if dx is not None:
            vstore(dxt[q], v, acc0)
            vstore(dxt[q], v + L, acc1)
        v += 2 * L
    if v < TN:  # one slice left (TN an odd number of vectors): the same, single
        acc0 = zero
        if dx is not None and not first:
            acc0 = vload(dxt[q], v)
        xv0 = zero
        if dw_part is not None:
            xv0 = vload(xt[q], v)
        for k in range(oj.size):
            gv0 = vload(gt[_u(oj[k])], v)
            if dx is not None:
                acc0 = vfma(vsplat(At[_u(k0 + k)]), gv0, acc0)
            if dw_part is not None:
                dw_part[tid, _u(k0 + k)] += vsum(vfma(gv0, xv0, zero))
        if dx is not None:
            vstore(dxt[q], v, acc0)


@numba.njit(**_FLAGS)
def sum_parts_into(parts, perm, out):
    """out[perm[k]] = parts[0, k] + parts[1, k] + … + parts[T-1, k], summed in that order.

    parts (T, nnz) the backward's per-thread partial dW in Wᵀ's order; perm (nnz,) int,
    a permutation (Wᵀ's entry k is W's entry perm[k]); out (nnz,) written, in W's order.
    One parallel pass instead of NumPy's two (``parts.sum(axis=0)``, then the scatter,
    1.2 ms at 80% of 2048 × 512 float32). NumPy twin: ``out[perm] = parts.sum(axis=0)``.
    """
    T, nnz = parts.shape
    for k in numba.prange(nnz):
        s = parts[0, k]
        for t in range(1, T):
            s += parts[t, k]
        out[perm[k]] = s


# ----------------------------------------------------------------------------------
# the driver: path, tiles, scratch and per-pattern data
# ----------------------------------------------------------------------------------
def forward(x, weight, bias):
    """y = x Wᵀ + b, on the current path (`refsparse.kernels.switch.current`).

    x (N, C_in) C-contiguous; weight a canonical CSR array (C_out, C_in) of x's dtype (its
    ``indptr``, ``indices``, ``data``, ``shape`` are read); bias (C_out,) or None.
    Returns y (N, C_out), a new array (on the fast path, cache-line aligned).
    """
    if current() == "reference":
        return reference.forward(x, weight, bias)
    n, c_out = x.shape[0], weight.shape[0]
    dtype = x.dtype
    b = np.ascontiguousarray(bias) if bias is not None else np.zeros(c_out, dtype=dtype)
    tn = tile_rows(n, dtype)
    y = aligned_empty((n, c_out), dtype)  # (N, C_out), rows stored from tiles
    bp = row_block_pointers(weight, column_blocks(weight, tn, dtype))  # (C_out, NB+1)
    spmm_forward(x, bp, weight.indices, weight.data, b, y, _scratch(weight.shape[1], tn, dtype),
                 _scratch(chunk_rows(c_out, tn, dtype), tn, dtype), _streamed(y))
    return y


def backward(dy, x, weight, need_dx=True, need_dw=True, need_db=True):
    """(dx, dw, db) of y = x Wᵀ + b on the current path, each None when not needed.

    dy (N, C_out) and x (N, C_in) C-contiguous; weight as for `forward`.
    dx (N, C_in) = dy W̃; dw (nnz,) aligned with weight.data, dw_e = Σ_n dy[n, o] x[n, j];
    db (C_out,) = Σ_n dy[n, :]. The fast path runs one fused pass along the rows of Wᵀ
    (`spmm_backward`); dW comes out in Wᵀ's order and is put back in W's here.
    """
    if current() == "reference":
        return reference.backward(dy, x, weight, need_dx, need_dw, need_db)
    c_out, c_in = weight.shape
    n, dtype = x.shape[0], x.dtype
    _, t_indices, perm = _transpose(weight)
    tn = backward_tile_rows(n, weight, dtype)
    bp = transposed_block_pointers(weight, output_blocks(weight, tn, dtype))  # (C_in, NB+1)
    threads = numba.get_num_threads()
    cb = chunk_rows(c_in, tn, dtype)
    dx = aligned_empty((n, c_in), dtype) if need_dx else None  # (N, C_in), rows stored from tiles
    dw_part = np.zeros((threads, weight.nnz), dtype=dtype) if need_dw else None  # (T, nnz), Wᵀ's order
    db_part = np.zeros((threads, c_out), dtype=dtype) if need_db else None  # (T, C_out)
    at = weight.data[perm] if need_dx else weight.data[:0]  # (nnz,) W's values in Wᵀ's order, for dX only
    spmm_backward(dy, x if need_dw else None, bp, t_indices, at, dx, dw_part, db_part,
                  _scratch(c_out, tn, dtype), _scratch(cb, tn, dtype), _scratch(cb, tn, dtype),
                  need_dx and _streamed(dx))
    dw = None
    if need_dw:
        dw = np.empty(weight.nnz, dtype=dtype)  # (nnz,) aligned with weight.data
        sum_parts_into(dw_part, perm, dw)  # dw[perm] = dw_part.sum(axis=0)
    db = db_part.sum(axis=0) if need_db else None  # (C_out,)
    return dx, dw, db


# Bytes per row of a transposed tile: 256 (64 float32, 32 float64), a whole number of
# vectors; measured best for the forward on both machines these kernels were tuned on.
ROW_BYTES = 256


def tile_rows(n_rows, dtype, vectors=1):
    """Rows per batch tile of the kernels (the scratch buffers' last axis).

    At least ROW_BYTES per row of a transposed tile, and always a multiple of
    ``vectors`` · L, L the numbers in one vector
    (`refsparse.kernels.simd.VECTOR_BYTES`), since the kernels' loops run over
    whole vectors (the backward's over pairs of them where it can); small batches get
    smaller tiles (enough for every thread to get one), down to ``vectors`` vectors.
    """
    unit = vectors * (VECTOR_BYTES // np.dtype(dtype).itemsize)  # vectors · L
    full = unit * max(1, -(-ROW_BYTES // (vectors * VECTOR_BYTES)))
    threads = numba.get_num_threads()
    per_thread = -(-max(int(n_rows), 1) // threads)  # ceil
    return int(min(full, unit * -(-per_thread // unit)))


# The backward walks its tile two vectors at a time, so that each stored entry's dW gets
# one lane sum (vsum) per 2L rows instead of per L: with 256-byte vectors (AVX-512) that
# doubles its tile to 128 float32 rows. It pays where W has at least PAIR_MIN_ENTRIES
# entries per input and output feature; below that the tile's copies, not the entries,
# take the time, and the wider tile measured 1.1–1.2× slower (99% sparsity, both shapes
# of bench/sparse_linear.py).
PAIR_MIN_ENTRIES = 8


def backward_tile_rows(n_rows, weight, dtype):
    """TN for the backward: `tile_rows` with pairs of vectors where W has at least
    PAIR_MIN_ENTRIES · (C_in + C_out) entries, else single vectors."""
    c_out, c_in = weight.shape
    pairs = weight.nnz >= PAIR_MIN_ENTRIES * (c_in + c_out)
    return tile_rows(n_rows, dtype, vectors=2 if pairs else 1)


# What the fast path derives from a weight's pattern, kept per pattern (see pattern_cache).
_patterns = PatternCache()


def _transpose(weight):
    """Wᵀ's pattern and its map into W's values, ``(t_indptr, t_indices, perm)``: indices
    only — the backward gathers the values, ``weight.data[perm]`` (O(nnz)), on each call,
    so this is built once per pattern (O(nnz log nnz)), never per step."""
    return _patterns.get((weight.indptr, weight.indices), ("transpose", weight.shape[1]),
                         lambda: transpose_structure(weight.indptr, weight.indices, weight.shape[1]))


# Bytes of the chunk that streams through the kernels beside the cached tile: OB finished
# outputs in the forward, CB columns of x and of dx in the backward. A chunk is stored to
# (or loaded from) each of the tile's TN rows as one run of OB or CB numbers, and longer
# runs stream better: at TN = 128 float32, 64 KB is 128 numbers (512 bytes) per row.
# Measured against 32 KB on the AVX-512 Xeon (float32, N = 4096, paired medians of 21
# alternating runs): the whole backward 1.05–1.08× faster on 512 × 2048 at 80–99%, the rest
# 0.97–1.11×; 128 KB did no better and was 0.94× on some shapes.
CHUNK_BYTES = 64 * 1024


def chunk_rows(rows, tn, dtype):
    """Rows per chunk (OB or CB, at most ``rows``): the kernels' (chunk, TN) scratch."""
    return max(1, min(int(rows), max(8, CHUNK_BYTES // (tn * np.dtype(dtype).itemsize))))


# Outputs of at least STREAM_BYTES are stored with non-temporal stores, which write whole
# cache lines to memory without reading them first (`store_tile_t`); smaller ones
# may still be in the cache when the next layer reads them, and keep plain stores.
# Measured on the AVX-512 Xeon (float32, N = 4096, 2 threads, alternating in one process,
# outputs from the recycler of `refsparse.kernels.buffers`): dX of 512 × 2048 at 99%
# 4.4 ms against 5.1 with plain stores, at 90% 13.1 against 16.5; the forward of
# 2048 × 512 at 99% 3.3 against 4.3. Only where a vtranspose row is a whole line
# (TRANSPOSE_BYTES = 64, AVX-512): half lines would not write whole lines.
STREAM_BYTES = 4 << 20


def _streamed(out):
    """Whether the kernels store ``out`` with non-temporal stores (see STREAM_BYTES)."""
    return out.nbytes >= STREAM_BYTES and TRANSPOSE_BYTES == CACHE_LINE


def _scratch(rows, tn, dtype):
    """One (rows, tn) scratch slice per Numba thread; every kernel writes before reading.
    Cache-line aligned (`refsparse.kernels.buffers.aligned_empty`): every row of a
    slice is then whole lines, as the kernels' vector loads and stores assume for speed."""
    return aligned_empty((numba.get_num_threads(), rows, tn), dtype)


# The forward's column blocks (`spmm_forward`): XB rows of the transposed input
# tile, at most BLOCK_BYTES, stay in the L1 cache (48 KB on the Xeon, 32 KB on the AMD
# machine these kernels were tuned on) while the sums read them, and a row of W is split
# into blocks only while its blocks average at least MIN_BLOCK_ENTRIES entries, since each
# block costs one more load and store of the row's sum.
BLOCK_BYTES = 32 * 1024
MIN_BLOCK_ENTRIES = 16


def column_blocks(weight, tn, dtype):
    """NB, the number of column blocks for the forward: enough that XB = ⌈C_in / NB⌉
    rows of the (C_in, TN) tile take at most BLOCK_BYTES, but no more than leave
    MIN_BLOCK_ENTRIES entries per row and block on average; at least 1."""
    c_out, c_in = weight.shape
    tile_bytes = c_in * tn * np.dtype(dtype).itemsize
    wanted = -(-tile_bytes // BLOCK_BYTES)  # ceil
    affordable = weight.nnz // max(c_out * MIN_BLOCK_ENTRIES, 1)
    return int(max(1, min(wanted, affordable, c_in)))


def output_blocks(weight, tn, dtype):
    """NB for the backward, `column_blocks` turned around: enough output blocks that
    OB = ⌈C_out / NB⌉ rows of its (C_out, TN) tile of dyᵀ take at most BLOCK_BYTES, but no
    more than leave MIN_BLOCK_ENTRIES entries per row of Wᵀ and block on average; at
    least 1."""
    c_out, c_in = weight.shape
    tile_bytes = c_out * tn * np.dtype(dtype).itemsize
    wanted = -(-tile_bytes // BLOCK_BYTES)  # ceil
    affordable = weight.nnz // max(c_in * MIN_BLOCK_ENTRIES, 1)
    return int(max(1, min(wanted, affordable, c_out)))


def _split_rows(indptr, indices, n_cols, nb):
    """(rows, NB+1) pointers of a CSR pattern's rows split at NB column blocks of
    CB = ⌈n_cols / NB⌉: entry [r, b] is the first entry of row r with column >= CB·b."""
    n_rows = indptr.size - 1
    cb = max(1, -(-n_cols // nb))
    rows = entry_rows(indptr)  # (nnz,) the row of each entry
    counts = np.bincount(rows * nb + indices // cb, minlength=n_rows * nb).reshape(n_rows, nb)
    bp = np.empty((n_rows, nb + 1), dtype=np.int64)  # (rows, NB+1)
    bp[:, 0] = indptr[:-1]
    np.cumsum(counts, axis=1, out=bp[:, 1:])
    bp[:, 1:] += indptr[:-1, None]
    return bp


def row_block_pointers(weight, nb):
    """(C_out, NB+1) row pointers of W split at NB column blocks of XB = ⌈C_in / NB⌉:
    ``Bp[o, b]`` is the first entry of row o with column >= XB·b (so Bp[:, 0] = Ap[:-1]
    and Bp[:, NB] = Ap[1:]). O(nnz), built once per pattern and block count (kept in the
    driver's cache, as the transpose is)."""
    return _patterns.get((weight.indptr, weight.indices), ("blocks", weight.shape[1], nb),
                         lambda: _split_rows(weight.indptr, weight.indices, weight.shape[1],
                                             nb).astype(weight.indptr.dtype))


def transposed_block_pointers(weight, nb):
    """(C_in, NB+1) row pointers of Wᵀ (`refsparse.csr.transpose_structure`) split at
    NB output blocks of OB = ⌈C_out / NB⌉: ``Bp[j, b]`` is the first entry of row j of Wᵀ
    with output id >= OB·b — the backward's `row_block_pointers`. Cached likewise."""
    def build():
        t_indptr, t_indices, _ = _transpose(weight)
        return _split_rows(t_indptr, t_indices, weight.shape[0], nb)

    return _patterns.get((weight.indptr, weight.indices), ("t_blocks", weight.shape, nb), build)
