"""Element-wise activations: ReLU and GELU (exact and tanh forms, as PyTorch).

Shapes: any; the output and every gradient have the shape and dtype of the input.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_float
from ..kernels import activations as K
from ._common import check_upstream

__all__ = [
    "GeluCache",
    "ReluCache",
    "gelu_backward",
    "gelu_forward",
    "relu_backward",
    "relu_forward",
]


# ----------------------------------------------------------------------------------------
# ReLU


class ReluCache(NamedTuple):
    """What relu_backward needs: where x > 0, and x's dtype (which dy must have)."""
    positive: np.ndarray  # bool, x > 0 (one byte per entry instead of the whole x)
    dtype: np.dtype  # x's dtype


def relu_forward(x):
    """Rectified linear unit.

        y = max(x, 0)

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : ReluCache
    """
    check_float("x", x)
    y = np.maximum(x, 0)  # 0 is a Python int: keeps x's dtype
    return y, ReluCache(x > 0, x.dtype)


def relu_backward(dy, cache):
    """dx = dy ⊙ [x > 0]   (the derivative at x = 0 is taken as 0, as in PyTorch).

    Derivation: [docs/backprop.md, section GELU](../backprop.md#gelu) (ReLU is treated there too).
    """
    positive, dtype = cache
    check_upstream("dy", dy, positive.shape, dtype)
    return dy * positive  # a bool factor keeps dy's dtype (and is ~15× faster than np.where)


# ----------------------------------------------------------------------------------------
# GELU (Hendrycks & Gimpel 2016)


class GeluCache(NamedTuple):
    """What gelu_backward needs: the input, its gate Φ(x) or σ(2u), and the form."""
    x: np.ndarray  # the input
    gate: np.ndarray  # Φ(x) ("none") or σ(2u) ("tanh"): y = x · gate; kept so that backward
    #                   does not evaluate erfc again (the most expensive step)
    approximate: str  # "none" | "tanh"


def gelu_forward(x, approximate="none"):
    """Gaussian error linear unit, exactly torch.nn.functional.gelu's two forms.

        "none":  y = x Φ(x),   Φ(x) = ½ (1 + erf(x / √2))      (the normal CDF)
        "tanh":  y = ½ x (1 + tanh(u)),   u = √(2/π) (x + 0.044715 x³)

    Both are evaluated in forms free of cancellation for x ≪ 0, where 1 + erf(…) and
    1 + tanh(…) subtract two numbers close to 1 and lose digits:

        Φ(x) = ½ erfc(−x / √2),     ½ (1 + tanh u) = σ(2u),  σ(z) = 1 / (1 + e^(−z))

    The functions are the same; only the rounding improves. Either way y = x · gate(x).

    Reference kernel: [`gelu_forward`][refsparse.kernels.reference.activations.gelu_forward];
    the fast one is in [`refsparse.kernels.activations`][refsparse.kernels.activations].

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : GeluCache
    """
    check_float("x", x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    y, gate = K.gelu_forward(x, approximate)  # x's shape
    return y, GeluCache(x, gate, approximate)


def gelu_backward(dy, cache):
    """Derivative of GELU, y = x · gate(x):  dx = dy ⊙ (gate + x · gate′).

        "none":  gate = Φ(x),   gate′ = φ(x) = exp(−x²/2) / √(2π)
        "tanh":  gate = ½ (1 + t),  gate′ = ½ (1 − t²) √(2/π) (1 + 3·0.044715 x²),
                 t = tanh(√(2/π) (x + 0.044715 x³))

    with, in the tanh form, ½ (1 + t) = σ(2u) and ½ (1 − t²) = 2 σ(2u) (1 − σ(2u)).

    Derivation: [docs/backprop.md, section GELU](../backprop.md#gelu).
    Reference kernel: [`gelu_backward`][refsparse.kernels.reference.activations.gelu_backward].
    """
    x, gate, approximate = cache
    check_upstream("dy", dy, x.shape, x.dtype)
    return K.gelu_backward(dy, x, gate, approximate)  # x's shape
