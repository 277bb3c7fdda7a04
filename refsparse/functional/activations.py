"""Element-wise activations: ReLU and GELU (exact and tanh forms, as PyTorch).

Shapes: any; the output and every gradient have the shape and dtype of the input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erfc, expit

from .._checks import check_float
from ._common import check_upstream

__all__ = [
    "ReluCache",
    "GeluCache",
    "relu_forward",
    "relu_backward",
    "gelu_forward",
    "gelu_backward",
]

_SQRT1_2 = math.sqrt(0.5)  # 1/√2
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # 1/√(2π), the normal density's constant
_TANH_BETA = math.sqrt(2.0 / math.pi)  # √(2/π)
_TANH_KAPPA = 0.044715


# ----------------------------------------------------------------------------------------
# ReLU


class ReluCache(NamedTuple):
    positive: np.ndarray  # bool, x > 0 (one byte per entry instead of the whole x)


def relu_forward(x):
    """Rectified linear unit.

        y = max(x, 0)

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : ReluCache
    """
    check_float("x", x)
    positive = x > 0
    y = np.where(positive, x, 0)  # 0 is a Python int: keeps x's dtype
    return y, ReluCache(positive)


def relu_backward(dy, cache):
    """dx = dy ⊙ [x > 0]   (the derivative at x = 0 is taken as 0, as in PyTorch).

    Derivation: docs/backprop.md, section GELU (ReLU is treated there too).
    """
    (positive,) = cache
    check_float("dy", dy)
    check_upstream("dy", dy, positive.shape, dy.dtype)
    return np.where(positive, dy, 0)


# ----------------------------------------------------------------------------------------
# GELU (Hendrycks & Gimpel 2016)


class GeluCache(NamedTuple):
    x: np.ndarray  # the input; backward recomputes Φ(x) (or the tanh) from it, as PyTorch does
    approximate: str  # "none" | "tanh"


def _two_u(x):
    """2u = 2 √(2/π) (x + 0.044715 x³), the argument of σ in the tanh form."""
    u = x * x
    u *= x
    u *= _TANH_KAPPA
    u += x
    u *= 2.0 * _TANH_BETA
    return u


def gelu_forward(x, approximate="none"):
    """Gaussian error linear unit, exactly torch.nn.functional.gelu's two forms.

        "none":  y = x Φ(x),   Φ(x) = ½ (1 + erf(x / √2))      (the normal CDF)
        "tanh":  y = ½ x (1 + tanh(u)),   u = √(2/π) (x + 0.044715 x³)

    Both are evaluated in forms free of cancellation for x ≪ 0, where 1 + erf(…) and
    1 + tanh(…) subtract two numbers close to 1 and lose digits:

        Φ(x) = ½ erfc(−x / √2),     ½ (1 + tanh u) = σ(2u),  σ(z) = 1 / (1 + e^(−z))

    The functions are the same; only the rounding improves.

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : GeluCache
    """
    check_float("x", x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    if approximate == "none":
        cdf = erfc(x * -_SQRT1_2)  # scipy's erfc keeps float32 as float32
        cdf *= 0.5  # Φ(x) = ½ (1 + erf(x/√2)) = ½ erfc(−x/√2)
        y = x * cdf
    else:
        s = expit(_two_u(x))  # σ(2u) = ½ (1 + tanh u)
        s *= x  # ½ x (1 + tanh u)
        y = s
    return y, GeluCache(x, approximate)


def gelu_backward(dy, cache):
    """Derivative of GELU.

        "none":  dx = dy ⊙ ( Φ(x) + x φ(x) ),   φ(x) = exp(−x²/2) / √(2π)
        "tanh":  dx = dy ⊙ ( ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²) ),
                 t = tanh(√(2/π) (x + 0.044715 x³))

    evaluated (as the forward) with ½ (1 + t) = σ(2u) and ½ (1 − t²) = 2 σ(2u) σ(−2u).

    Derivation: docs/backprop.md, section GELU.
    """
    x, approximate = cache
    check_upstream("dy", dy, x.shape, x.dtype)
    if approximate == "none":
        cdf = erfc(x * -_SQRT1_2)
        cdf *= 0.5  # Φ(x)
        pdf = np.exp(-0.5 * x * x)
        pdf *= _INV_SQRT_2PI  # φ(x)
        pdf *= x
        pdf += cdf  # Φ(x) + x φ(x)
        grad = pdf
    else:
        # d/dx [x σ(2u)] = σ(2u) + x · 2 σ(2u) σ(−2u) · du/dx,   du/dx = √(2/π) (1 + 3κ x²)
        two_u = _two_u(x)
        s_pos = expit(two_u)  # σ(2u) = ½ (1 + t)
        s_neg = expit(np.negative(two_u, out=two_u))  # σ(−2u) = ½ (1 − t)
        du = x * x
        du *= 3.0 * _TANH_KAPPA
        du += 1.0
        du *= 2.0 * _TANH_BETA  # 2 du/dx
        du *= x
        du *= s_neg
        du += 1.0
        du *= s_pos  # σ(2u) (1 + 2x σ(−2u) du/dx)
        grad = du
    grad *= dy
    return grad
