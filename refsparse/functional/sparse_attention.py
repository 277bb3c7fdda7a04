"""Scaled dot-product attention computed only at a sparse pattern's entries.

The same function as [`refsparse.functional.attention_forward`][refsparse.functional.attention.attention_forward] with the dense
boolean mask ``pattern.toarray()`` — that dense op is this one's NumPy twin, and the
tests hold the two together — but its cost and memory are O(nnz), never O(T²):

    1. s_ij = q_i · k_j / √D                    only for stored (i, j)
    2. p_ij = exp(s_ij − lse_i),  lse_i = log Σ_{j ∈ row i} exp(s_ij)
    3. out_i = Σ_{j ∈ row i} p_ij v_j          (a row with no entry: out_i = 0)

The cache keeps the per-row log-sum-exp ``lse`` (B, H, Tq) instead of the probabilities;
backward recomputes p_ij from it (FlashAttention's trade of flops for memory):

    dv_j = Σ_i p_ij dO_i,  ds_ij = p_ij (dO_i · v_j − dO_i · O_i),
    dq_i = Σ_j ds_ij k_j / √D,  dk_j = Σ_i ds_ij q_i / √D.

Derivation: [docs/sparse-attention.md](../sparse-attention.md). Reference kernel (these steps as plain loops over
each CSR row, and the backward over the transposed pattern, one screen):
refsparse/kernels/reference/sparse_attention.py. Fast kernels and the driver that picks
the path, scratch and slabs: refsparse/kernels/sparse_attention.py.

A *pattern* is a ``scipy.sparse`` CSR boolean array (Tq, Tk) shared by every (batch, head);
or a list of H of them (one per head); or a list of B lists of 1 or H (per batch element,
e.g. with key padding); or a [`PreparedPattern`][refsparse.functional.sparse_attention.PreparedPattern] made once by
[`prepare_pattern`][refsparse.functional.sparse_attention.prepare_pattern] and reused (modules do this, so the transpose is built once).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels import sparse_attention as kernel
from ..patterns import check_pattern
from ._common import check_upstream

__all__ = ["PreparedPattern", "SparseAttentionCache", "prepare_pattern",
           "sparse_attention_forward", "sparse_attention_backward"]


class PreparedPattern(NamedTuple):
    """A pattern in the kernels' layout, with its transpose; build with prepare_pattern.
    (What the fast kernels derive from it once, the shared key runs of each group of rows,
    their driver keeps: refsparse/kernels/sparse_attention.py.)
    """

    shape: tuple  # (Tq, Tk)
    indptr: np.ndarray  # (PB, PH, Tq+1) int64, absolute offsets into indices
    indices: np.ndarray  # (nnz_all,) int32 key ids
    t_indptr: np.ndarray  # (PB, PH, Tk+1) int64, the transposed patterns
    t_indices: np.ndarray  # (nnz_all,) int32 query ids
    width: int  # the longest row or column

    @property
    def groups(self):
        """(PB, PH): how many batch and head groups have their own pattern."""
        return self.indptr.shape[0], self.indptr.shape[1]

    @property
    def nnz(self):
        return int(self.indices.size)


def _as_grid(pattern):
    """Normalise a pattern argument to a (PB, PH) list of lists of CSR arrays."""
    if sp.issparse(pattern):
        return [[pattern]]
    if isinstance(pattern, (list, tuple)) and pattern:
        if all(sp.issparse(p) for p in pattern):
            return [list(pattern)]  # per head
        if all(isinstance(row, (list, tuple)) and row and all(sp.issparse(p) for p in row)
               for row in pattern):
            widths = {len(row) for row in pattern}
            if len(widths) != 1:
                raise ValueError("pattern: every batch element needs the same number of head patterns, "
                                 f"got {sorted(widths)}")
            return [list(row) for row in pattern]
    raise TypeError(
        "pattern: expected a scipy.sparse CSR boolean array, a list of them (one per head), "
        f"a list of such lists (one per batch element) or a PreparedPattern, got {type(pattern).__name__}"
    )


def prepare_pattern(pattern):
    """Turn a pattern (CSR, per-head list, per-batch list of lists) into the kernels' layout.

    Builds each pattern's transpose once (for the backward: dK and dV are sums over a
    key's column). O(nnz) time and memory.
    Every pattern must be a bool sparse array with every stored value True — stored ⇔
    allowed, as the dense twin reads it; a float array (whose stored 0.0 the kernels would
    attend) raises TypeError and a stored False ValueError (refsparse.patterns.as_pattern
    converts both).
    """
    if isinstance(pattern, PreparedPattern):
        return pattern
    grid = _as_grid(pattern)
    shape = tuple(grid[0][0].shape)
    if len(shape) != 2:
        raise ValueError(f"pattern: expected 2-D patterns, got shape {shape}")
    PB, PH = len(grid), len(grid[0])
    Tq, Tk = shape
    indptr = np.empty((PB, PH, Tq + 1), dtype=np.int64)
    t_indptr = np.empty((PB, PH, Tk + 1), dtype=np.int64)
    parts, t_parts = [], []
    offset = 0
    for b, row in enumerate(grid):
        for h, p in enumerate(row):
            where = "pattern" if PB == PH == 1 else f"pattern[{b}][{h}]"
            if tuple(p.shape) != shape:
                raise ValueError(f"{where}: expected shape {shape}, got {tuple(p.shape)}")
            if p.dtype != np.bool_:  # a stored 0.0 would still be attended: refuse, do not guess
                raise TypeError(f"{where}: expected a bool sparse array (stored ⇔ allowed; "
                                f"refsparse.patterns.as_pattern converts other inputs), got dtype {p.dtype}")
            csr = sp.csr_array(p)
            csr.sum_duplicates()  # canonical: sorted indices, no duplicates
            check_pattern(where, csr)  # and no stored False
            csc = csr.tocsc()  # column j's rows are the queries attending to key j
            csc.sort_indices()
            n = csr.indices.size
            indptr[b, h] = csr.indptr + offset
            t_indptr[b, h] = csc.indptr + offset
            parts.append(csr.indices.astype(np.int32))
            t_parts.append(csc.indices.astype(np.int32))
            offset += n
    indices = np.concatenate(parts) if parts else np.empty(0, np.int32)
    t_indices = np.concatenate(t_parts) if t_parts else np.empty(0, np.int32)
    width = max(int(np.diff(indptr, axis=2).max(initial=0)), int(np.diff(t_indptr, axis=2).max(initial=0)))
    return PreparedPattern(shape, indptr, indices, t_indptr, t_indices, width)


class SparseAttentionCache(NamedTuple):
    """What sparse_attention_backward needs: the inputs and output in the kernels' layout, the per-row
    log-sum-exp and the prepared pattern.
    """
    q: np.ndarray  # (B, Tq, H, D) the kernels' layout
    k: np.ndarray  # (B, Tk, H, D)
    v: np.ndarray  # (B, Tk, H, Dv)
    out: np.ndarray  # (B, Tq, H, Dv)
    lse: np.ndarray  # (B, H, Tq) per-row log-sum-exp, −∞ for an empty row
    pattern: PreparedPattern
    scale: float


def _to_kernel_layout(x):
    """(B, H, T, D) -> (B, T, H, D) C-contiguous; free when x is a view of that layout."""
    y = x.transpose(0, 2, 1, 3)
    return y if y.flags.c_contiguous else np.ascontiguousarray(y)


def sparse_attention_forward(q, k, v, pattern):
    """Attention at the pattern's entries only.

    Parameters
    ----------
    q : ndarray (B, H, Tq, D), float32 or float64 (a transposed view of (B, Tq, H, D)
        memory — what split_heads returns — is used without a copy)
    k : ndarray (B, H, Tk, D), same dtype
    v : ndarray (B, H, Tk, Dv), same dtype
    pattern : CSR bool (Tq, Tk), per-head list, per-batch list of lists, or PreparedPattern

    Returns
    -------
    out : ndarray (B, H, Tq, Dv) — a view of (B, Tq, H, Dv) memory, so merging the heads
        afterwards costs no copy
    cache : SparseAttentionCache
    """
    check_float("q", q, ndim=4)
    check_float("k", k, ndim=4)
    check_float("v", v, ndim=4)
    B, H, Tq, D = q.shape
    check_shape("k", k, (B, H, None, D))
    Tk = k.shape[2]
    check_shape("v", v, (B, H, Tk, None))
    check_same_dtype(q=q, k=k, v=v)
    pp = prepare_pattern(pattern)
    if pp.shape != (Tq, Tk):
        raise ValueError(f"pattern: expected shape ({Tq}, {Tk}) (queries, keys), got {pp.shape}")
    PB, PH = pp.groups
    if PB not in (1, B):
        raise ValueError(f"pattern: expected 1 or B={B} batch patterns, got {PB}")
    if PH not in (1, H):
        raise ValueError(f"pattern: expected 1 or H={H} head patterns, got {PH}")

    dtype = q.dtype
    scale = dtype.type(1.0 / math.sqrt(D)) if D > 0 else dtype.type(1.0)
    qt, kt, vt = _to_kernel_layout(q), _to_kernel_layout(k), _to_kernel_layout(v)  # (B, T, H, D)
    out, lse = kernel.forward(qt, kt, vt, pp, scale)  # (B, Tq, H, Dv), (B, H, Tq)
    cache = SparseAttentionCache(qt, kt, vt, out, lse, pp, scale)
    return out.transpose(0, 2, 1, 3), cache  # (B, H, Tq, Dv) view


def sparse_attention_backward(dout, cache):
    """Gradients (dq, dk, dv) of sparse attention, each shaped like its input (B, H, T, ·).

    p_ij is recomputed from lse; dv_j and dk_j are sums over key j's column, so they are
    taken over the transposed pattern, and dq_i over row i. A query row with no entry has
    zero dq and contributes nothing to dk and dv.

    Derivation: [docs/sparse-attention.md](../sparse-attention.md) (and [docs/backprop.md, section Attention](../backprop.md#attention)).
    """
    q, k, v, out, lse, pp, scale = cache
    B, Tq, H, D = q.shape
    check_upstream("dout", dout, (B, H, Tq, v.shape[3]), q.dtype)
    dO = _to_kernel_layout(dout)  # (B, Tq, H, Dv)
    dq, dk, dv = kernel.backward(dO, q, k, v, out, lse, pp, scale)  # (B, T, H, D|Dv) each
    t = (0, 2, 1, 3)
    return dq.transpose(t), dk.transpose(t), dv.transpose(t)
