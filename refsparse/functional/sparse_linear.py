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
others, in blocks, elsewhere). Derivation: [docs/backprop.md, section Linear](../backprop.md#linear) — the mask
only selects entries.

**NumPy twin**: [`refsparse.functional.linear.linear_forward`][refsparse.functional.linear.linear_forward] /
[`linear_backward`][refsparse.functional.linear.linear_backward] called with ``W.toarray()``, with
the dense dW read at the stored entries. The tests hold the two together.

Reference kernel (the same sums as plain loops over W's entries, one screen):
refsparse/kernels/reference/spmm.py. Fast kernels and the driver that picks the path,
tiles and scratch: refsparse/kernels/spmm.py (SpMM for y; SpMM for dx and SDDMM for dW
fused in one backward, along the rows of Wᵀ).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels import spmm
from ._common import check_upstream

__all__ = [
    "SparseLinearCache",
    "check_sparse_weight",
    "sparse_linear_backward",
    "sparse_linear_dw",
    "sparse_linear_dx",
    "sparse_linear_forward",
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
    y2 = spmm.forward(x2, weight, bias)  # (N, C_out)
    y = y2.reshape(*x.shape[:-1], c_out)  # (..., C_out)
    return y, SparseLinearCache(x2, weight, x.shape, bias is not None)


def _unpack(dy, cache):
    x2, weight, x_shape, has_bias = cache
    c_out = weight.shape[0]
    check_upstream("dy", dy, tuple(x_shape[:-1]) + (c_out,), x2.dtype)
    dy2 = np.ascontiguousarray(dy.reshape(math.prod(dy.shape[:-1]), c_out))  # (N, C_out)
    return x2, weight, x_shape, has_bias, dy2


def _backward(dy, cache, want_dx, want_dw, want_db):
    """The driver call behind the three backward functions: (dx2, dweight, dbias), each
    None when not wanted."""
    x2, weight, _, has_bias, dy2 = _unpack(dy, cache)
    # dx2 (N, C_in), dweight (nnz,) aligned with weight.data, dbias (C_out,)
    return spmm.backward(dy2, x2, weight, need_dx=want_dx, need_dw=want_dw, need_db=want_db and has_bias)


def sparse_linear_backward(dy, cache):
    """Gradients of y = x Wᵀ + b, with dW only at W's stored entries.

        dx = dy W                      (..., C_in)      — W's values, read along Wᵀ
        dW_e = Σ_n dy[n, o] x[n, j]    (nnz,)           for each stored e = (o, j),
                                                         aligned with weight.data
        db = Σ_n dy[n, :]              (C_out,), or None when the forward had no bias

    These are linear_backward's dx, its dW = dyᵀ x read at the stored entries, and its
    db — never a dense (C_out, C_in) array. The fast path runs one fused kernel pass that
    reads dy and x once, along the rows of Wᵀ (refsparse/kernels/spmm.py).

    Returns
    -------
    (dx, dweight_data, dbias)
    """
    dx2, dweight, dbias = _backward(dy, cache, True, True, True)
    return dx2.reshape(cache.x_shape), dweight, dbias


def sparse_linear_dx(dy, cache):
    """dx = dy W alone (the first part of [`sparse_linear_backward`][refsparse.functional.sparse_linear.sparse_linear_backward]), shaped like x."""
    return _backward(dy, cache, True, False, False)[0].reshape(cache.x_shape)


def sparse_linear_dw(dy, cache):
    """dW at the stored entries alone (SDDMM, the second part of the backward): (nnz,)."""
    return _backward(dy, cache, False, True, False)[1]
