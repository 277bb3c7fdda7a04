"""GELU forward and backward as parallel Numba loops over the elements.

NumPy twin: ``refsparse.functional.activations._gelu_forward_numpy`` and
``_gelu_backward_numpy`` — the same formulas written with whole-array NumPy operations
(scipy's erfc); the tests hold the two together. The kernels exist for speed: the twin
makes ~8 passes over memory and scipy's erfc runs on one core, these make one pass on
all cores.

Arrays: x, y, gate, dy, dx flat (n,) C-contiguous, one dtype (float32 or float64).

    exact ("none"):  gate = ½ erfc(−x/√2) = Φ(x),   y = x · gate
                     dx = dy · (gate + x · φ(x)),  φ(x) = exp(−x²/2)/√(2π)
    tanh:            gate = σ(2u) = 1 / (1 + exp(−2u)),  u = √(2/π)(x + 0.044715 x³)
                     dx = dy · (gate + x · 2 gate (1 − gate) √(2/π)(1 + 3·0.044715 x²))

No reductions here, so no fastmath flags at all: every element is computed exactly as
the formula says, in the input's dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_BETA = math.sqrt(2.0 / math.pi)
_TANH_KAPPA = 0.044715


@numba.njit(parallel=True, cache=True)
def gelu_exact_fwd(x, y, gate):
    """y = x Φ(x) with Φ(x) = ½ erfc(−x/√2); also writes gate = Φ(x). O(n)."""
    c = x.dtype.type(-_SQRT1_2)
    half = x.dtype.type(0.5)
    for i in numba.prange(x.size):
        g = half * math.erfc(x[i] * c)
        gate[i] = g
        y[i] = x[i] * g


@numba.njit(parallel=True, cache=True)
def gelu_exact_bwd(x, gate, dy, dx):
    """dx = dy (Φ(x) + x φ(x)), φ(x) = exp(−x²/2)/√(2π). O(n)."""
    k = x.dtype.type(_INV_SQRT_2PI)
    mhalf = x.dtype.type(-0.5)
    for i in numba.prange(x.size):
        xi = x[i]
        dx[i] = dy[i] * (gate[i] + xi * (k * np.exp(mhalf * xi * xi)))


@numba.njit(parallel=True, cache=True)
def gelu_tanh_fwd(x, y, gate):
    """y = x σ(2u), u = √(2/π)(x + 0.044715 x³); also writes gate = σ(2u). O(n)."""
    m2b = x.dtype.type(-2.0 * _TANH_BETA)
    kap = x.dtype.type(_TANH_KAPPA)
    one = x.dtype.type(1.0)
    for i in numba.prange(x.size):
        xi = x[i]
        g = one / (one + np.exp(m2b * (xi + kap * xi * xi * xi)))  # exp → inf gives g = 0
        gate[i] = g
        y[i] = xi * g


@numba.njit(parallel=True, cache=True)
def gelu_tanh_bwd(x, gate, dy, dx):
    """dx = dy (σ + x · 2σ(1 − σ) √(2/π)(1 + 3·0.044715 x²)), σ = gate. O(n)."""
    b = x.dtype.type(_TANH_BETA)
    k3 = x.dtype.type(3.0 * _TANH_KAPPA)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    for i in numba.prange(x.size):
        xi = x[i]
        g = gate[i]
        du = b * (one + k3 * xi * xi)
        dx[i] = dy[i] * (g + xi * (two * g * (one - g) * du))
