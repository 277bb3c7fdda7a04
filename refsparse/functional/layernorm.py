"""Layer normalization over the last axis (Ba, Kiros & Hinton 2016), PyTorch's conventions.

Legend: C channels (the normalized axis); "..." any leading axes (B, T, …), each row of
C numbers is normalized on its own.

Conventions (as torch.nn.LayerNorm): biased variance (divide by C, not C − 1) and eps
inside the square root.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels import layernorm as K
from ._common import check_upstream

__all__ = ["LayerNormCache", "layernorm_backward", "layernorm_forward"]

# below this many entries the NumPy twin runs: as fast there, and it keeps small problems
# (tests, golden vectors) on the reference code
_KERNEL_MIN_SIZE = 16384
# the backward kernel sums dγ and dβ over this many chunks of rows (then over the chunks)
_CHUNKS = 64


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs: x, γ and the per-row mean and rstd."""
    x: np.ndarray  # (..., C) the input
    gamma: np.ndarray  # (C,)
    mean: np.ndarray  # (..., 1) per-row mean
    rstd: np.ndarray  # (..., 1) per-row 1 / sqrt(var + eps)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Normalize each row to zero mean and unit variance, then scale and shift.

        μ     = (1/C) Σ_c x_c
        σ²    = (1/C) Σ_c (x_c − μ)²            (biased)
        rstd  = 1 / sqrt(σ² + ε)
        x̂_c   = (x_c − μ) · rstd
        y_c   = γ_c x̂_c + β_c

    The cache keeps x, γ, μ and rstd, and backward recomputes x̂ from them: two numbers
    per row instead of a second (..., C) array (the trade llm.c makes).

    Parameters
    ----------
    x : ndarray (..., C), float32 or float64
    gamma, beta : ndarray (C,), same dtype
    eps : float > 0

    Returns
    -------
    y : ndarray (..., C)
    cache : LayerNormCache
    """
    check_float("x", x, min_ndim=1)
    C = x.shape[-1]
    check_float("gamma", gamma)
    check_shape("gamma", gamma, (C,))
    check_float("beta", beta)
    check_shape("beta", beta, (C,))
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    if not isinstance(eps, (float, int, np.floating)) or isinstance(eps, bool) or not 0 < eps < np.inf:
        raise ValueError(f"eps: expected a positive finite float, got {eps!r}")
    eps = float(eps)  # a Python float: never upcasts a float32 x
    if x.size < _KERNEL_MIN_SIZE or C == 0:
        return _layernorm_forward_numpy(x, gamma, beta, eps)
    # the Numba kernel (refsparse/kernels/layernorm.py): one pass per row, all cores
    xc = np.ascontiguousarray(x)
    x2 = xc.reshape(-1, C)  # (N, C)
    y = np.empty_like(x2)  # (N, C)
    mean = np.empty(x2.shape[0], dtype=x.dtype)  # (N,)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)  # (N,)
    K.layernorm_fwd(x2, gamma, beta, eps, y, mean, rstd)
    stats = x.shape[:-1] + (1,)
    return y.reshape(x.shape), LayerNormCache(xc, gamma, mean.reshape(stats), rstd.reshape(stats))


def _layernorm_forward_numpy(x, gamma, beta, eps):
    """The NumPy twin of the kernel ``layernorm_fwd``: whole-array passes."""
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C) centred
    var = np.mean(np.square(xc), axis=-1, keepdims=True)  # (..., 1) biased
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    y = xc  # reuse the buffer: y = (x − μ) · rstd · γ + β
    y *= rstd  # x̂
    y *= gamma
    y += beta
    return y, LayerNormCache(x, gamma, mean, rstd)


def layernorm_backward(dy, cache):
    """Gradients of y = γ x̂ + β with x̂ = (x − μ) · rstd.

        dβ = Σ_rows dy
        dγ = Σ_rows dy ⊙ x̂
        with g = dy ⊙ γ  (the gradient reaching x̂):
        dx = rstd · ( g − mean_c(g) − x̂ · mean_c(g ⊙ x̂) )

    The two means come from the dependence of μ and σ² on every x_c of the row.

    Derivation: docs/backprop.md, section LayerNorm.

    Returns
    -------
    (dx, dgamma, dbeta) : (..., C), (C,), (C,)
    """
    x, gamma, mean, rstd = cache
    check_upstream("dy", dy, x.shape, x.dtype)
    C = x.shape[-1]
    if x.size < _KERNEL_MIN_SIZE or C == 0:
        return _layernorm_backward_numpy(dy, cache)
    # the Numba kernel (refsparse/kernels/layernorm.py): one pass per row, all cores
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)  # (N, C)
    N = x2.shape[0]
    P = min(N, _CHUNKS)
    dx = np.empty_like(x2)  # (N, C)
    dgamma_part = np.empty((P, C), dtype=x.dtype)  # (P, C)
    dbeta_part = np.empty((P, C), dtype=x.dtype)  # (P, C)
    K.layernorm_bwd(dy2, x2, gamma, mean.reshape(N), rstd.reshape(N), dx, dgamma_part, dbeta_part)
    return dx.reshape(x.shape), dgamma_part.sum(axis=0), dbeta_part.sum(axis=0)


def _layernorm_backward_numpy(dy, cache):
    """The NumPy twin of the kernel ``layernorm_bwd``: whole-array passes."""
    x, gamma, mean, rstd = cache
    rows = tuple(range(x.ndim - 1))  # every axis but the last

    xhat = x - mean  # (..., C); in the forward pass this was (x − μ) · rstd
    xhat *= rstd
    dbeta = dy.sum(axis=rows)  # (C,)
    dgamma = (dy * xhat).sum(axis=rows)  # (C,)

    g = dy * gamma  # (..., C) gradient reaching x̂
    g_mean = g.mean(axis=-1, keepdims=True)  # (..., 1)
    gx_mean = np.mean(g * xhat, axis=-1, keepdims=True)  # (..., 1)
    dx = g  # reuse the buffer
    dx -= g_mean
    xhat *= gx_mean
    dx -= xhat
    dx *= rstd
    return dx, dgamma, dbeta
