"""Softmax along one axis, stable for large logits.

Shapes: any; the output has the shape and dtype of the input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_float
from ._common import check_upstream

__all__ = ["SoftmaxCache", "softmax_backward", "softmax_forward"]


class SoftmaxCache(NamedTuple):
    """What softmax_backward needs: the output and the axis."""
    y: np.ndarray  # the output probabilities (backward needs only these)
    axis: int  # normalized to be non-negative


def _check_axis(axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: expected an int in [{-ndim}, {ndim}), got {axis}")
    return int(axis) % ndim


def softmax_forward(x, axis=-1):
    """Normalized exponentials along ``axis``.

        y_i = exp(x_i − m) / Σ_j exp(x_j − m),   m = max_j x_j

    Subtracting the maximum changes nothing mathematically and keeps every exponent
    <= 0, so logits of ±1e4 give finite results. Each slice along ``axis`` must hold at
    least one finite value (a row of −inf only is attention's business: see
    [`refsparse.functional.attention_forward`][refsparse.functional.attention.attention_forward]).

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : SoftmaxCache
    """
    check_float("x", x, min_ndim=1)
    axis = _check_axis(axis, x.ndim)
    y = x - x.max(axis=axis, keepdims=True)  # every entry <= 0
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dy, cache):
    """Vector–Jacobian product of softmax, without forming the Jacobian.

        ∂y_i/∂x_j = y_i (δ_ij − y_j)   ⇒   dx = y ⊙ (dy − Σ_j dy_j y_j)

    Derivation: [docs/backprop.md, section Softmax](../backprop.md#softmax).
    """
    y, axis = cache
    check_upstream("dy", dy, y.shape, y.dtype)
    dx = dy * y
    dx -= y * dx.sum(axis=axis, keepdims=True)  # y ⊙ dy − y ⊙ Σ(dy ⊙ y)
    return dx
