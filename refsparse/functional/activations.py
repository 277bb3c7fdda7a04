"""Element-wise activations: ReLU and GELU (exact and tanh forms, as PyTorch).

Shapes: any; the output and every gradient have the shape and dtype of the input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import erfc

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

_SQRT1_2 = math.sqrt(0.5)  # 1/√2
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # 1/√(2π), the normal density's constant
_TANH_BETA = math.sqrt(2.0 / math.pi)  # √(2/π)
_TANH_KAPPA = 0.044715
# below this many elements the NumPy twin is as fast as starting the parallel kernel
_KERNEL_MIN_SIZE = 16384


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

    Derivation: docs/backprop.md, section GELU (ReLU is treated there too).
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


def _tanh_du_dx(x):
    """du/dx = √(2/π) (1 + 3·0.044715 x²), u = √(2/π) (x + 0.044715 x³)."""
    du = x * x
    du *= 3.0 * _TANH_KAPPA
    du += 1.0
    du *= _TANH_BETA
    return du


def gelu_forward(x, approximate="none"):
    """Gaussian error linear unit, exactly torch.nn.functional.gelu's two forms.

        "none":  y = x Φ(x),   Φ(x) = ½ (1 + erf(x / √2))      (the normal CDF)
        "tanh":  y = ½ x (1 + tanh(u)),   u = √(2/π) (x + 0.044715 x³)

    Both are evaluated in forms free of cancellation for x ≪ 0, where 1 + erf(…) and
    1 + tanh(…) subtract two numbers close to 1 and lose digits:

        Φ(x) = ½ erfc(−x / √2),     ½ (1 + tanh u) = σ(2u),  σ(z) = 1 / (1 + e^(−z))

    The functions are the same; only the rounding improves. Either way y = x · gate(x).

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : GeluCache
    """
    check_float("x", x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    if x.size < _KERNEL_MIN_SIZE:
        return _gelu_forward_numpy(x, approximate)
    # the Numba kernels (refsparse/kernels/activations.py): one parallel pass, same formulas
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    gate = np.empty_like(xc)
    if xc.dtype == np.float32:  # vectorised erfc/exp in float64 arithmetic, rounded once
        kernel = K.gelu_exact_fwd_f32 if approximate == "none" else K.gelu_tanh_fwd_f32
    else:
        kernel = K.gelu_exact_fwd if approximate == "none" else K.gelu_tanh_fwd
    kernel(xc.reshape(-1), y.reshape(-1), gate.reshape(-1))
    return y, GeluCache(xc, gate, approximate)


def _gelu_forward_numpy(x, approximate="none"):
    """The NumPy twin of the GELU kernels: whole-array operations, scipy's erfc."""
    if approximate == "none":
        gate = erfc(x * -_SQRT1_2)  # scipy's erfc keeps float32 as float32
        gate *= 0.5  # Φ(x) = ½ (1 + erf(x/√2)) = ½ erfc(−x/√2)
    else:
        u = x * x
        u *= x
        u *= _TANH_KAPPA
        u += x
        u *= -2.0 * _TANH_BETA  # −2u = −2 √(2/π) (x + 0.044715 x³)
        with np.errstate(over="ignore"):  # exp(−2u) = inf for x ≪ 0 gives σ = 1/inf = 0
            gate = np.exp(u, out=u)
        gate += 1.0
        np.reciprocal(gate, out=gate)  # σ(2u) = 1 / (1 + e^(−2u)) = ½ (1 + tanh u)
    y = x * gate
    return y, GeluCache(x, gate, approximate)


def gelu_backward(dy, cache):
    """Derivative of GELU, y = x · gate(x):  dx = dy ⊙ (gate + x · gate′).

        "none":  gate = Φ(x),   gate′ = φ(x) = exp(−x²/2) / √(2π)
        "tanh":  gate = ½ (1 + t),  gate′ = ½ (1 − t²) √(2/π) (1 + 3·0.044715 x²),
                 t = tanh(√(2/π) (x + 0.044715 x³))

    with, in the tanh form, ½ (1 + t) = σ(2u) and ½ (1 − t²) = 2 σ(2u) (1 − σ(2u)).

    Derivation: docs/backprop.md, section GELU.
    """
    x, gate, approximate = cache
    check_upstream("dy", dy, x.shape, x.dtype)
    if x.size < _KERNEL_MIN_SIZE:
        return _gelu_backward_numpy(dy, cache)
    dyc = np.ascontiguousarray(dy)
    dx = np.empty_like(x)
    if approximate == "none":
        kernel = K.gelu_exact_bwd_f32 if x.dtype == np.float32 else K.gelu_exact_bwd
    else:
        kernel = K.gelu_tanh_bwd  # no exp: as fast in float32
    kernel(x.reshape(-1), gate.reshape(-1), dyc.reshape(-1), dx.reshape(-1))
    return dx


def _gelu_backward_numpy(dy, cache):
    """The NumPy twin of the GELU backward kernels."""
    x, gate, approximate = cache
    if approximate == "none":
        d_gate = x * x
        d_gate *= -0.5
        np.exp(d_gate, out=d_gate)
        d_gate *= _INV_SQRT_2PI  # φ(x)
    else:
        d_gate = _tanh_du_dx(x)
        d_gate *= 2.0
        d_gate *= gate
        d_gate *= 1.0 - gate  # 2 σ(2u) σ(−2u) du/dx
    d_gate *= x
    d_gate += gate  # gate + x · gate′
    d_gate *= dy
    return d_gate
