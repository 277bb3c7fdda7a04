"""Linear (fully connected) layer: y = x Wᵀ + b.

Legend: N = number of rows (all leading axes of x flattened), C_in input features,
C_out output features. The weight is stored (C_out, C_in), as in PyTorch, so that
state_dicts map one to one.

Kernels: the products are the driver [`refsparse.kernels.parallel`][refsparse.kernels.parallel]'s
``matmul`` (C = A B) and ``matmul_tn`` (C = Aᵀ B); their reference kernels,
[`refsparse.kernels.reference.matmul`][refsparse.kernels.reference.matmul], are plain ``@``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels import parallel as K
from ._common import check_upstream

__all__ = ["LinearCache", "linear_backward", "linear_forward"]


class LinearCache(NamedTuple):
    """What linear_backward needs: the input, the weight and whether there was a bias."""
    x: np.ndarray  # (..., C_in) the input, needed for dW
    weight: np.ndarray  # (C_out, C_in), needed for dx
    has_bias: bool


def linear_forward(x, weight, bias=None):
    """Affine map over the last axis.

        y = x Wᵀ + b,   y[..., o] = Σ_i x[..., i] W[o, i] + b[o]

    Parameters
    ----------
    x : ndarray (..., C_in), float32 or float64
    weight : ndarray (C_out, C_in), same dtype
    bias : ndarray (C_out,) or None, same dtype

    Returns
    -------
    y : ndarray (..., C_out)
    cache : LinearCache
    """
    check_float("x", x, min_ndim=1)
    check_float("weight", weight, ndim=2)
    c_out, c_in = weight.shape
    check_shape("x", x, (None,) * (x.ndim - 1) + (c_in,))
    if bias is not None:
        check_float("bias", bias)
        check_shape("bias", bias, (c_out,))
    check_same_dtype(x=x, weight=weight, bias=bias)

    x2 = x.reshape(math.prod(x.shape[:-1]), c_in)  # (N, C_in); a view when x is contiguous
    y2 = K.matmul(x2, weight.T, bias)  # y = x @ Wᵀ + b: (N, C_in) @ (C_in, C_out), Wᵀ a view
    y = y2.reshape(*x.shape[:-1], c_out)  # (..., C_out)
    return y, LinearCache(x, weight, bias is not None)


def linear_backward(dy, cache):
    """Gradients of y = x Wᵀ + b.

        dx = dy @ W              (..., C_in)
        dW = dyᵀ @ x             (C_out, C_in), summed over all N rows
        db = Σ_rows dy           (C_out,), or None when the forward had no bias

    Derivation: [docs/backprop.md, section Linear](../backprop.md#linear).

    Returns
    -------
    (dx, dweight, dbias)
    """
    x, weight, has_bias = cache
    c_out, c_in = weight.shape
    check_upstream("dy", dy, x.shape[:-1] + (c_out,), x.dtype)

    dy2 = dy.reshape(math.prod(dy.shape[:-1]), c_out)  # (N, C_out)
    x2 = x.reshape(math.prod(x.shape[:-1]), c_in)  # (N, C_in)
    dx = K.matmul(dy2, weight).reshape(x.shape)  # dx = dy @ W: (N, C_out) @ (C_out, C_in)
    if has_bias:  # dW = dyᵀ @ x: (C_out, N) @ (N, C_in); db = Σ_rows dy (C_out,), in one pass
        dweight, dbias = K.matmul_tn(dy2, x2, colsum=True)
    else:
        dweight, dbias = K.matmul_tn(dy2, x2), None  # dW = dyᵀ @ x (C_out, C_in)
    return dx, dweight, dbias
