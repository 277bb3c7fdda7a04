"""Helpers on the structure of a CSR matrix: the row of each entry, its position in its
row, and the transposed structure with its map back.

A CSR structure of shape (n_rows, n_cols) is two integer arrays (scipy's names):

    indptr   (n_rows + 1,)   row r holds entries indptr[r] … indptr[r+1]-1
    indices  (nnz,)          the column of each entry, sorted within a row, no duplicates

The helpers here read only those arrays, never values, so they serve attention patterns
(`refsparse.patterns`) and sparse weights (`refsparse.kernels.spmm`) alike.
They import NumPy only. Each is O(nnz) (the transpose O(nnz log nnz): one stable sort).
"""

from __future__ import annotations

import numpy as np

__all__ = ["entry_positions", "entry_rows", "transpose_structure"]


def entry_rows(indptr):
    """The row of every entry, int64 (nnz,): ``entry_rows(indptr)[e] = r`` for
    indptr[r] <= e < indptr[r+1]."""
    indptr = np.asarray(indptr)
    return np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))


def entry_positions(indptr):
    """The position of every entry within its row, int64 (nnz,): e − indptr[row of e]
    (0 for each row's first entry)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    return np.arange(indptr[-1] - indptr[0], dtype=np.int64) + indptr[0] - np.repeat(indptr[:-1], np.diff(indptr))


def transpose_structure(indptr, indices, n_cols):
    """The CSR structure of the transpose, and where each of its entries came from.

    Returns ``(indptr_t (n_cols + 1,), indices_t (nnz,), perm (nnz,))``, all in
    ``indices``' dtype: row j of the transpose lists the rows r that hold column j, in
    increasing order, and ``perm[e_t]`` is the position in ``indices`` (and in any array
    aligned with it, such as a weight's values) of the same entry. So for values ``x``
    aligned with the matrix, ``x[perm]`` is aligned with its transpose. Only indices are
    built. Unchecked: the structure must be canonical (sorted indices, no duplicates).
    """
    indices = np.asarray(indices)
    dt = indices.dtype
    # a stable sort by column keeps the row-major order, i.e. increasing rows, within a column
    perm = np.argsort(indices, kind="stable")  # (nnz,)
    indices_t = entry_rows(indptr)[perm]  # (nnz,) the row of each transposed entry
    indptr_t = np.zeros(int(n_cols) + 1, dtype=np.int64)  # (n_cols + 1,)
    np.cumsum(np.bincount(indices, minlength=int(n_cols)), out=indptr_t[1:])
    return indptr_t.astype(dt), indices_t.astype(dt), perm.astype(dt)
