"""Token embeddings and positional encodings.

Legend: V vocabulary size, C channels (d_model), B batch, T time (sequence length),
T_max rows of a positional table, N number of token positions (all axes of ids).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .._checks import check_dtype_name, check_float, check_int, check_same_dtype, check_shape
from ._common import check_upstream

__all__ = [
    "EmbeddingCache",
    "PositionalCache",
    "embedding_backward",
    "embedding_forward",
    "positional_backward",
    "positional_forward",
    "sinusoidal_encoding",
]


# ----------------------------------------------------------------------------------------
# token embedding


class EmbeddingCache(NamedTuple):
    """What embedding_backward needs: the ids and the table's shape and dtype."""
    ids: np.ndarray  # (...) integer token ids
    weight_shape: tuple  # (V, C)
    dtype: np.dtype  # the weight's dtype (that of the gradient)


def embedding_forward(ids, weight):
    """Look up one row of the table per token.

        y[..., :] = W[ids[...], :]

    Parameters
    ----------
    ids : integer ndarray (...), every value in [0, V)
    weight : ndarray (V, C), float32 or float64

    Returns
    -------
    y : ndarray (..., C), weight's dtype
    cache : EmbeddingCache
    """
    check_float("weight", weight, ndim=2)
    check_int("ids", ids, low=0, high=weight.shape[0])
    y = np.take(weight, ids, axis=0)  # (..., C)
    return y, EmbeddingCache(ids, weight.shape, weight.dtype)


def embedding_backward(dy, cache):
    """Scatter-add of the upstream rows into the table's gradient.

        dW[v, :] = Σ_{n : ids[n] = v} dy[n, :]

    A token that appears k times contributes k rows; rows of ids never seen stay 0.

    The sum is computed as a product with the sparse (V, N) one-hot matrix
    ``S[v, n] = [ids[n] = v]``: dW = S dy. This is exact (each entry of S is 0 or 1, and
    each row of dy is added in token order) and much faster than ``np.add.at``.

    Derivation: [docs/backprop.md, section Embedding](../backprop.md#embedding).

    Returns
    -------
    dweight : ndarray (V, C)
    """
    ids, (V, C), dtype = cache
    check_upstream("dy", dy, ids.shape + (C,), dtype)
    flat = ids.reshape(-1)  # (N,)
    N = flat.size
    dy2 = dy.reshape(N, C)  # (N, C)

    # CSR of S: row v holds the positions n with ids[n] == v, in increasing n.
    order = np.argsort(flat, kind="stable")  # (N,) positions grouped by id
    indptr = np.zeros(V + 1, dtype=np.int64)  # (V+1,)
    np.cumsum(np.bincount(flat, minlength=V), out=indptr[1:])
    S = sp.csr_array((np.ones(N, dtype=dtype), order, indptr), shape=(V, N))
    dweight = np.asarray(S @ dy2, dtype=dtype)  # (V, N) @ (N, C) -> (V, C)
    return dweight


# ----------------------------------------------------------------------------------------
# positional encodings


def sinusoidal_encoding(length, d_model, dtype=np.float64):
    """The fixed sinusoidal table of Vaswani et al. (2017), §3.5.

        PE[pos, 2i]   = sin(pos / 10000^(2i / d_model))
        PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model))

    For odd d_model the last column (index d_model − 1, even) is a sin. Computed in
    float64 and rounded once to ``dtype``.

    Returns
    -------
    ndarray (length, d_model)
    """
    for name, value, low in (("length", length, 0), ("d_model", d_model, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    dtype = check_dtype_name("dtype", dtype)

    pos = np.arange(length, dtype=np.float64)[:, None]  # (length, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float64)  # (ceil(d_model/2),) = 0, 2, 4, …
    angle = pos / np.power(10000.0, two_i / d_model)  # (length, ceil(d_model/2))
    pe = np.empty((length, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : d_model // 2])
    return pe.astype(dtype, copy=False)


class PositionalCache(NamedTuple):
    """What positional_backward needs: T and the table's shape and dtype."""
    T: int  # rows of the table that were used
    table_shape: tuple  # (T_max, C)
    dtype: np.dtype


def positional_forward(x, table):
    """Add the first T rows of a positional table to every sequence.

        y[b, t, :] = x[b, t, :] + table[t, :]

    Parameters
    ----------
    x : ndarray (B, T, C)
    table : ndarray (T_max, C), T <= T_max, same dtype
        A fixed table ([`sinusoidal_encoding`][refsparse.functional.embedding.sinusoidal_encoding]) or a learned positional embedding.

    Returns
    -------
    y : ndarray (B, T, C)
    cache : PositionalCache
    """
    check_float("x", x, ndim=3)
    check_float("table", table, ndim=2)
    _, T, C = x.shape  # (B, T, C)
    check_shape("table", table, (None, C))
    check_same_dtype(x=x, table=table)
    if T > table.shape[0]:
        raise ValueError(
            f"x: sequence length {T} exceeds the positional table's {table.shape[0]} rows "
            f"(x has shape {x.shape})"
        )
    y = x + table[:T]  # (B, T, C) + (T, C) broadcast over B
    return y, PositionalCache(T, table.shape, x.dtype)


def positional_backward(dy, cache):
    """Gradients of y = x + table[:T].

        dx = dy                                     (B, T, C)
        dtable[t] = Σ_b dy[b, t]  for t < T,  0 for t >= T     (T_max, C)

    A fixed sinusoidal table ignores dtable; for a learned positional embedding it is the
    weight's gradient. ``dx`` is ``dy`` itself (not a copy).

    Derivation: [docs/backprop.md, section Embedding](../backprop.md#embedding).

    Returns
    -------
    (dx, dtable)
    """
    T, (T_max, C), dtype = cache
    check_float("dy", dy, ndim=3)
    check_upstream("dy", dy, (dy.shape[0], T, C), dtype)
    dtable = np.zeros((T_max, C), dtype=dtype)  # (T_max, C)
    dy.sum(axis=0, out=dtable[:T])  # (T, C)
    return dy, dtable
