"""LayerNorm over the rows of an (N, C) array: the reference path, whole-array NumPy.

The definition the fast kernels of [`kernels.layernorm`][refsparse.kernels.layernorm] are
tested equal to
(biased variance, eps inside the square root, as torch.nn.LayerNorm):

    μ = Σ_c x_c / C,   σ² = Σ_c (x_c − μ)² / C,   rstd = 1 / √(σ² + ε)
    x̂ = (x − μ) · rstd,   y = x̂ ⊙ γ + β

and, with g = dy ⊙ γ (the gradient reaching x̂):

    dβ = Σ_rows dy,   dγ = Σ_rows dy ⊙ x̂,   dx = (g − mean_c g − x̂ · mean_c(g ⊙ x̂)) · rstd

Arrays: x, y, dy, dx (N, C); gamma, beta, dgamma, dbeta (C,); mean, rstd (N,). One
dtype, float32 or float64; every result in it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["backward", "forward"]


def forward(x, gamma, beta, eps):
    """y = LayerNorm(x) row by row, and each row's mean and rstd. O(N·C)."""
    mean = x.mean(axis=1, keepdims=True)  # (N, 1)
    xc = x - mean  # (N, C) centred
    var = np.mean(np.square(xc), axis=1, keepdims=True)  # (N, 1) biased
    rstd = 1.0 / np.sqrt(var + eps)  # (N, 1); eps a Python float: keeps float32
    y = xc * rstd  # (N, C) x̂
    y *= gamma
    y += beta
    return y, mean[:, 0], rstd[:, 0]


def backward(dy, x, gamma, mean, rstd):
    """dx, dγ, dβ of y = x̂ ⊙ γ + β, x̂ = (x − μ) · rstd. O(N·C)."""
    mean, rstd = mean[:, None], rstd[:, None]  # (N, 1)
    xhat = x - mean  # (N, C); in the forward pass this was (x − μ) · rstd
    xhat *= rstd
    dbeta = dy.sum(axis=0)  # (C,)
    dgamma = (dy * xhat).sum(axis=0)  # (C,)
    g = dy * gamma  # (N, C) gradient reaching x̂
    g_mean = g.mean(axis=1, keepdims=True)  # (N, 1)
    gx_mean = np.mean(g * xhat, axis=1, keepdims=True)  # (N, 1)
    dx = g - g_mean - xhat * gx_mean  # (N, C)
    dx *= rstd
    return dx, dgamma, dbeta
