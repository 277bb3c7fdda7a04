"""GELU, both of PyTorch's forms: the reference path, whole-array NumPy.

The definition the fast kernels of [`kernels.activations`][refsparse.kernels.activations]
are tested equal
to. With Φ the normal CDF and φ its density:

    "none":  gate = Φ(x) = ½ erfc(−x/√2),          y = x · gate
             dx = dy · (gate + x φ(x)),             φ(x) = exp(−x²/2) / √(2π)
    "tanh":  gate = ½ (1 + tanh u) = σ(2u),         u = √(2/π) (x + 0.044715 x³)
             dx = dy · (gate + x · 2 gate (1 − gate) · √(2/π) (1 + 3·0.044715 x²))

σ(z) = 1 / (1 + e^(−z)). The forms ½ erfc(−x/√2) and σ(2u) are the same functions as
½ (1 + erf(x/√2)) and ½ (1 + tanh u), written without the cancellation those suffer for
x ≪ 0. The math functions are the correctly rounded ones (to within an ulp or so):
``scipy.special.erfc`` (which keeps float32 as float32) and ``np.exp``.

Arrays: x, gate, y, dy, dx of any one shape and one dtype, float32 or float64.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erfc

__all__ = ["gelu_backward", "gelu_forward"]


def gelu_forward(x, approximate):
    """y = x · gate(x), and the gate (Φ(x) or σ(2u)). O(n)."""
    if approximate == "none":
        gate = erfc(x * -math.sqrt(0.5))  # erfc(−x/√2)
        gate *= 0.5  # Φ(x)
    else:
        u = x * x
        u *= x
        u *= 0.044715
        u += x
        u *= -2.0 * math.sqrt(2.0 / math.pi)  # −2u = −2 √(2/π) (x + 0.044715 x³)
        with np.errstate(over="ignore"):  # exp(−2u) = inf for x ≪ 0 gives σ = 1/inf = 0
            gate = np.exp(u, out=u)
        gate += 1.0
        np.reciprocal(gate, out=gate)  # σ(2u) = 1 / (1 + e^(−2u))
    return x * gate, gate


def gelu_backward(dy, x, gate, approximate):
    """dx = dy · (gate + x · gate′(x)). O(n)."""
    if approximate == "none":
        d_gate = x * x
        d_gate *= -0.5
        np.exp(d_gate, out=d_gate)
        d_gate *= 1.0 / math.sqrt(2.0 * math.pi)  # φ(x)
    else:
        d_gate = x * x
        d_gate *= 3.0 * 0.044715
        d_gate += 1.0
        d_gate *= math.sqrt(2.0 / math.pi)  # du/dx
        d_gate *= 2.0
        d_gate *= gate
        d_gate *= 1.0 - gate  # 2 σ(2u) σ(−2u) du/dx
    d_gate *= x
    d_gate += gate  # gate + x · gate′
    d_gate *= dy
    return d_gate
