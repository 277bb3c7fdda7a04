"""Linear layer with a sparse weight: y = x Wᵀ + b, computed only at W's stored entries.

Legend: N = number of rows (all leading axes of x flattened), C_in input features,
C_out output features, nnz stored entries of W.

The weight is a ``scipy.sparse`` CSR array of shape (C_out, C_in) in canonical form
(sorted indices, no duplicates). Its *pattern* — ``indptr`` and ``indices`` — says which
connections exist; its ``data`` holds their values, and a stored entry may hold 0.0
(a connection that exists but is currently zero, as RigL grows them). Nothing here ever
drops a stored zero or rebuilds the pattern.

The math, with M the 0/1 mask of stored entries and W̃ = the dense weight (zero off the
pattern):

    forward    y = x W̃ᵀ + b               y[n, o] = Σ_{j : (o, j) stored} x[n, j] W[o, j] + b[o]
    backward   dx = dy W̃                  dx[n, j] = Σ_{o : (o, j) stored} dy[n, o] W[o, j]
               dW = (dyᵀ x) ⊙ M           kept only at stored entries: dW_e = Σ_n dy[n, o] x[n, j]
               db = Σ_n dy[n, :]

The dense gradient dyᵀ x of the masked twin is the gradient of the loss with respect to
*every* entry of W̃; the sparse layer keeps the entries of the pattern (RigL reads the
others, in blocks, elsewhere). Derivation: docs/backprop.md, section Linear — the mask
only selects entries.

**NumPy twin**: :func:`refsparse.functional.linear.linear_forward` /
:func:`~refsparse.functional.linear.linear_backward` called with ``W.toarray()``, with
the dense dW read at the stored entries. The tests hold the two together.

Kernels: refsparse/kernels/spmm.py (SpMM for y; SpMM for dx and SDDMM for dW fused in one
backward, along the rows of Wᵀ).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels.buffers import aligned_empty
from ..kernels.simd import CACHE_LINE, TRANSPOSE_BYTES, VECTOR_BYTES
from ..kernels.spmm import spmm_backward, spmm_forward, sum_parts_into
from ..patterns import _entry_rows, transpose_structure
from ._common import check_upstream

__all__ = [
    "SparseLinearCache",
    "backward_tile_rows",
    "check_sparse_weight",
    "column_blocks",
    "output_blocks",
    "row_block_pointers",
    "sparse_linear_backward",
    "sparse_linear_dw",
    "sparse_linear_dx",
    "sparse_linear_forward",
    "tile_rows",
    "transposed_block_pointers",
]


class SparseLinearCache(NamedTuple):
    x: np.ndarray  # (N, C_in) the input, C-contiguous, needed for dW
    weight: object  # the CSR weight (C_out, C_in), needed for dx; shares its arrays
    x_shape: tuple  # (..., C_in) the input's shape, to give dx the same shape
    has_bias: bool


def check_sparse_weight(name, weight):
    """Check a sparse weight: a canonical float32/float64 CSR array of 2 dimensions.

    Raises TypeError (not sparse, not CSR, not float) or ValueError (not 2-D, not
    canonical) naming ``name``. Returns ``weight`` unchanged: it is never copied or fixed
    here, since that would silently detach it from its Parameter.
    """
    if not sp.issparse(weight):
        raise TypeError(f"{name}: expected a scipy.sparse CSR array, got {type(weight).__name__}")
    if weight.format != "csr":
        raise TypeError(f"{name}: expected a CSR sparse array, got format {weight.format!r} "
                        "(convert it with .tocsr())")
    if weight.ndim != 2:
        raise ValueError(f"{name}: expected 2 dimensions, got shape {weight.shape}")
    if weight.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected dtype float32 or float64, got {weight.dtype}")
    if not weight.has_canonical_format:
        raise ValueError(f"{name}: expected a canonical CSR array (sorted indices, no duplicates); "
                         "call .sum_duplicates() first (it keeps stored zeros)")
    return weight


# Bytes per row of a transposed tile: 256 (64 float32, 32 float64), a whole number of
# vectors; measured best for the forward on both machines these kernels were tuned on.
ROW_BYTES = 256


def tile_rows(n_rows, dtype, vectors=1):
    """Rows per batch tile of the kernels (the scratch buffers' last axis).

    At least ROW_BYTES per row of a transposed tile, and always a multiple of
    ``vectors`` · L, L the numbers in one vector
    (:data:`refsparse.kernels.simd.VECTOR_BYTES`), since the kernels' loops run over
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
    """TN for the backward: :func:`tile_rows` with pairs of vectors where W has at least
    PAIR_MIN_ENTRIES · (C_in + C_out) entries, else single vectors."""
    c_out, c_in = weight.shape
    pairs = weight.nnz >= PAIR_MIN_ENTRIES * (c_in + c_out)
    return tile_rows(n_rows, dtype, vectors=2 if pairs else 1)


def _cached(weight, name, build):
    """``build(weight)``, cached on the weight object under ``name`` for its pattern.

    The cache is keyed on the identity of the ``indptr`` and ``indices`` arrays: pattern
    changes (pruning, SET, RigL, loading) build a new CSR array, so a new pattern is never
    served an old result, while an optimizer step (which writes ``data`` only) keeps it.
    """
    entry = getattr(weight, name, None)
    if entry is not None and entry[0] is weight.indptr and entry[1] is weight.indices:
        return entry[2]
    value = build(weight)
    setattr(weight, name, (weight.indptr, weight.indices, value))
    return value


def _transpose(weight):
    """Wᵀ's pattern and its map into W's values, ``(t_indptr, t_indices, perm)``: indices
    only — the backward gathers the values, ``weight.data[perm]`` (O(nnz)), on each call,
    so this is built once per pattern (O(nnz log nnz)), never per step."""
    return _cached(weight, "_refsparse_transpose", transpose_structure)


# Bytes of the chunk that streams through the kernels beside the cached tile: OB finished
# outputs in the forward, CB columns of x and of dx in the backward (:mod:`spmm`). A chunk
# is stored to (or loaded from) each of the tile's TN rows as one run of OB or CB numbers,
# and longer runs stream better: at TN = 128 float32, 64 KB is 128 numbers (512 bytes) per
# row. Measured against 32 KB on the AVX-512 Xeon (float32, N = 4096, paired medians of 21
# alternating runs): the whole backward 1.05–1.08× faster on 512 × 2048 at 80–99%, the rest
# 0.97–1.11×; 128 KB did no better and was 0.94× on some shapes.
CHUNK_BYTES = 64 * 1024


def chunk_rows(rows, tn, dtype):
    """Rows per chunk (OB or CB, at most ``rows``): the kernels' (chunk, TN) scratch."""
    return max(1, min(int(rows), max(8, CHUNK_BYTES // (tn * np.dtype(dtype).itemsize))))


# Outputs of at least STREAM_BYTES are stored with non-temporal stores, which write whole
# cache lines to memory without reading them first (:func:`refsparse.kernels.spmm.store_tile_t`);
# smaller ones may still be in the cache when the next layer reads them, and keep plain
# stores. Measured on the AVX-512 Xeon (float32, N = 4096, 2 threads, alternating in one
# process, outputs from the recycler of :mod:`refsparse.kernels.buffers`): dX of
# 512 × 2048 at 99% 4.4 ms against 5.1 with plain stores, at 90% 13.1 against 16.5; the
# forward of 2048 × 512 at 99% 3.3 against 4.3. Only where a vtranspose row is a whole
# line (TRANSPOSE_BYTES = 64, AVX-512): half lines would not write whole lines.
STREAM_BYTES = 4 << 20


def _streamed(out):
    """Whether the kernels store ``out`` with non-temporal stores (see STREAM_BYTES)."""
    return out.nbytes >= STREAM_BYTES and TRANSPOSE_BYTES == CACHE_LINE


def _scratch(rows, tn, dtype):
    """One (rows, tn) scratch slice per Numba thread; every kernel writes before reading.
    Cache-line aligned (:func:`~refsparse.kernels.buffers.aligned_empty`): every row of a
    slice is then whole lines, as the kernels' vector loads and stores assume for speed."""
    return aligned_empty((numba.get_num_threads(), rows, tn), dtype)


# The forward's column blocks (:func:`refsparse.kernels.spmm.spmm_forward`): XB rows of
# the transposed input tile, at most BLOCK_BYTES, stay in the L1 cache (48 KB on the
# Xeon, 32 KB on the AMD machine these kernels were tuned on) while the sums read them,
# and a row of W is split into blocks only while its blocks average at least
# MIN_BLOCK_ENTRIES entries, since each block costs one more load and store of the row's
# sum.
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
    """NB for the backward, :func:`column_blocks` turned around: enough output blocks that
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
    rows = _entry_rows(indptr)  # (nnz,) the row of each entry
    counts = np.bincount(rows * nb + indices // cb, minlength=n_rows * nb).reshape(n_rows, nb)
    bp = np.empty((n_rows, nb + 1), dtype=np.int64)  # (rows, NB+1)
    bp[:, 0] = indptr[:-1]
    np.cumsum(counts, axis=1, out=bp[:, 1:])
    bp[:, 1:] += indptr[:-1, None]
    return bp


def row_block_pointers(weight, nb):
    """(C_out, NB+1) row pointers of W split at NB column blocks of XB = ⌈C_in / NB⌉:
    ``Bp[o, b]`` is the first entry of row o with column >= XB·b (so Bp[:, 0] = Ap[:-1]
    and Bp[:, NB] = Ap[1:]). O(nnz), built once per pattern and block count, and cached
    on the weight as the transpose is."""
    return _cached(weight, f"_refsparse_blocks_{nb}",
                   lambda w: _split_rows(w.indptr, w.indices, w.shape[1], nb).astype(w.indptr.dtype))


def transposed_block_pointers(weight, nb):
    """(C_in, NB+1) row pointers of Wᵀ (:func:`refsparse.patterns.transpose_structure`)
    split at NB output blocks of OB = ⌈C_out / NB⌉: ``Bp[j, b]`` is the first entry of
    row j of Wᵀ with output id >= OB·b — the backward's :func:`row_block_pointers`.
    Cached on the weight."""
    def build(w):
        t_indptr, t_indices, _ = _transpose(w)
        return _split_rows(t_indptr, t_indices, w.shape[0], nb)

    return _cached(weight, f"_refsparse_t_blocks_{nb}", build)


def _check_forward_inputs(x, weight, bias):
    check_float("x", x, min_ndim=1)
    check_sparse_weight("weight", weight)
    c_out, c_in = weight.shape
    check_shape("x", x, (None,) * (x.ndim - 1) + (c_in,))
    if bias is not None:
        check_float("bias", bias)
        check_shape("bias", bias, (c_out,))
    check_same_dtype(x=x, weight=weight, bias=bias)


def sparse_linear_forward(x, weight, bias=None):
    """Affine map with a sparse weight, over the last axis.

        y = x Wᵀ + b,   y[..., o] = Σ_{j : (o, j) stored} x[..., j] W[o, j] + b[o]

    Parameters
    ----------
    x : ndarray (..., C_in), float32 or float64
    weight : scipy.sparse CSR array (C_out, C_in), same dtype, canonical (sorted
        indices, no duplicates); stored zeros are allowed and stay stored
    bias : ndarray (C_out,) or None, same dtype

    Returns
    -------
    y : ndarray (..., C_out), x's dtype
    cache : SparseLinearCache

    NumPy twin: ``linear_forward(x, weight.toarray(), bias)``. Cost 2 · nnz · N flops.
    """
    _check_forward_inputs(x, weight, bias)
    c_out, c_in = weight.shape
    x2 = np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), c_in))  # (N, C_in); a view when x is contiguous
    n = x2.shape[0]
    b = bias if bias is not None else np.zeros(c_out, dtype=x.dtype)
    tn = tile_rows(n, x.dtype)
    y2 = aligned_empty((n, c_out), x.dtype)  # (N, C_out), rows stored from tiles
    bp = row_block_pointers(weight, column_blocks(weight, tn, x.dtype))  # (C_out, NB+1)
    spmm_forward(x2, bp, weight.indices, weight.data, np.ascontiguousarray(b), y2,
                 _scratch(c_in, tn, x.dtype), _scratch(chunk_rows(c_out, tn, x.dtype), tn, x.dtype), _streamed(y2))
    y = y2.reshape(*x.shape[:-1], c_out)  # (..., C_out)
    return y, SparseLinearCache(x2, weight, x.shape, bias is not None)


def _unpack(dy, cache):
    x2, weight, x_shape, has_bias = cache
    c_out = weight.shape[0]
    check_upstream("dy", dy, tuple(x_shape[:-1]) + (c_out,), x2.dtype)
    dy2 = np.ascontiguousarray(dy.reshape(math.prod(dy.shape[:-1]), c_out))  # (N, C_out)
    return x2, weight, x_shape, has_bias, dy2


def _backward(dy, cache, want_dx, want_dw, want_db):
    """The kernel call behind the three backward functions: (dx2, dweight, dbias), each
    None when not wanted. dW comes out in Wᵀ's order and is put back in W's here."""
    x2, weight, _, has_bias, dy2 = _unpack(dy, cache)
    c_out, c_in = weight.shape
    n, dtype = x2.shape[0], x2.dtype
    _, t_indices, perm = _transpose(weight)
    tn = backward_tile_rows(n, weight, dtype)
    bp = transposed_block_pointers(weight, output_blocks(weight, tn, dtype))  # (C_in, NB+1)
    threads = numba.get_num_threads()
    cb = chunk_rows(c_in, tn, dtype)
    dx2 = aligned_empty((n, c_in), dtype) if want_dx else None  # (N, C_in), rows stored from tiles
    dw_part = np.zeros((threads, weight.nnz), dtype=dtype) if want_dw else None  # (T, nnz), Wᵀ's order
    db_part = np.zeros((threads, c_out), dtype=dtype) if want_db and has_bias else None  # (T, C_out)
    at = weight.data[perm] if want_dx else weight.data[:0]  # (nnz,) W's values in Wᵀ's order, for dX only
    spmm_backward(dy2, x2 if want_dw else None, bp, t_indices, at, dx2, dw_part,
                  db_part, _scratch(c_out, tn, dtype), _scratch(cb, tn, dtype), _scratch(cb, tn, dtype),
                  want_dx and _streamed(dx2))
    dweight = None
    if want_dw:
        dweight = np.empty(weight.nnz, dtype=dtype)  # (nnz,) aligned with weight.data
        sum_parts_into(dw_part, perm, dweight)  # dweight[perm] = dw_part.sum(axis=0)
    dbias = db_part.sum(axis=0) if db_part is not None else None  # (C_out,)
    return dx2, dweight, dbias


def sparse_linear_backward(dy, cache):
    """Gradients of y = x Wᵀ + b, with dW only at W's stored entries.

        dx = dy W                      (..., C_in)      — W's values, read along Wᵀ
        dW_e = Σ_n dy[n, o] x[n, j]    (nnz,)           for each stored e = (o, j),
                                                         aligned with weight.data
        db = Σ_n dy[n, :]              (C_out,), or None when the forward had no bias

    These are linear_backward's dx, its dW = dyᵀ x read at the stored entries, and its
    db — never a dense (C_out, C_in) array. One fused kernel pass reads dy and x once,
    along the rows of Wᵀ, whose pattern is built once per pattern and kept with the
    weight (an optimizer step changes values only).

    Returns
    -------
    (dx, dweight_data, dbias)
    """
    dx2, dweight, dbias = _backward(dy, cache, True, True, True)
    return dx2.reshape(cache.x_shape), dweight, dbias


def sparse_linear_dx(dy, cache):
    """dx = dy W alone (the first part of :func:`sparse_linear_backward`), shaped like x."""
    return _backward(dy, cache, True, False, False)[0].reshape(cache.x_shape)


def sparse_linear_dw(dy, cache):
    """dW at the stored entries alone (SDDMM, the second part of the backward): (nnz,)."""
    return _backward(dy, cache, False, True, False)[1]
