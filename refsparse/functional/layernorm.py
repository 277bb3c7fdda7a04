"""Layer normalization over the last axis (Ba, Kiros & Hinton 2016), PyTorch's conventions.

Legend: C channels (the normalized axis); "..." any leading axes (B, T, …), each row of
C numbers is normalized on its own.

Conventions (as torch.nn.LayerNorm): biased variance (divide by C, not C − 1) and eps
inside the square root.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import check_float, check_same_dtype, check_shape
from ..kernels import layernorm as K
from ._common import check_upstream

__all__ = ["LayerNormCache", "layernorm_backward", "layernorm_forward"]


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs: x, γ and the per-row mean and rstd."""
    x: np.ndarray  # (..., C) the input
    gamma: np.ndarray  # (C,)
    mean: np.ndarray  # (N,) per-row mean, N = the number of rows (all leading axes)
    rstd: np.ndarray  # (N,) per-row 1 / sqrt(var + eps)


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Normalize each row to zero mean and unit variance, then scale and shift.

        μ     = (1/C) Σ_c x_c
        σ²    = (1/C) Σ_c (x_c − μ)²            (biased)
        rstd  = 1 / sqrt(σ² + ε)
        x̂_c   = (x_c − μ) · rstd
        y_c   = γ_c x̂_c + β_c

    The cache keeps x, γ, μ and rstd, and backward recomputes x̂ from them: two numbers
    per row instead of a second (..., C) array (the trade llm.c makes).

    Reference kernel: [`forward`][refsparse.kernels.reference.layernorm.forward]; the fast
    one is [`refsparse.kernels.layernorm`][refsparse.kernels.layernorm].

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
    N = math.prod(x.shape[:-1])  # the number of rows: all leading axes
    x2 = x.reshape(N, C)  # (N, C), a view when x is contiguous
    y2, mean, rstd = K.forward(x2, gamma, beta, eps)  # (N, C), (N,), (N,)
    return y2.reshape(x.shape), LayerNormCache(x, gamma, mean, rstd)


def layernorm_backward(dy, cache):
    """Gradients of y = γ x̂ + β with x̂ = (x − μ) · rstd.

        dβ = Σ_rows dy
        dγ = Σ_rows dy ⊙ x̂
        with g = dy ⊙ γ  (the gradient reaching x̂):
        dx = rstd · ( g − mean_c(g) − x̂ · mean_c(g ⊙ x̂) )

    The two means come from the dependence of μ and σ² on every x_c of the row.

    Derivation: [docs/backprop.md, section LayerNorm](../backprop.md#layernorm).
    Reference kernel: [`backward`][refsparse.kernels.reference.layernorm.backward].

    Returns
    -------
    (dx, dgamma, dbeta) : (..., C), (C,), (C,)
    """
    x, gamma, mean, rstd = cache
    check_upstream("dy", dy, x.shape, x.dtype)
    C = x.shape[-1]
    N = mean.shape[0]
    x2, dy2 = x.reshape(N, C), dy.reshape(N, C)  # (N, C)
    dx2, dgamma, dbeta = K.backward(dy2, x2, gamma, mean, rstd)  # (N, C), (C,), (C,)
    return dx2.reshape(x.shape), dgamma, dbeta
