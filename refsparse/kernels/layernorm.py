"""LayerNorm forward and backward: the driver, and the fast kernels (parallel Numba loops
over the rows).

The driver, called by [`functional.layernorm`][refsparse.functional.layernorm]:

    y, mean, rstd = forward(x, gamma, beta, eps)          x, y (N, C); mean, rstd (N,)
    dx, dgamma, dbeta = backward(dy, x, gamma, mean, rstd)

runs the path that is switched on ([`kernels.current`][refsparse.kernels.current]):
the reference, [`kernels.reference.layernorm`][refsparse.kernels.reference.layernorm]
(whole-array NumPy, the definition), or the fast kernels below — which also run the
reference on small problems (fewer than ``KERNEL_MIN_SIZE`` entries), where starting the
threads costs more than they save. The
tests hold the two paths together. The kernels exist for speed: the reference makes ~7
passes over the (N, C) array on one core (forward) and ~12 (backward); these read each row
once, while it is in cache, on all cores.

Arrays (one dtype, float32 or float64, C-contiguous):

    x, y, dy, dx      (N, C)   N rows (every leading axis), C channels
    gamma             (C,)
    beta              (C,)
    mean, rstd        (N,)     per-row statistics, written by the forward
    dgamma_part,      (P, C)   per-chunk partial sums of the parameter gradients, P chunks
    dbeta_part                 of consecutive rows (the caller sums them over P)

Forward, per row (biased variance, eps inside the root, as torch):

    μ = Σ_c x_c / C,   σ² = Σ_c (x_c − μ)² / C,   rstd = 1 / √(σ² + ε)
    y_c = ((x_c − μ) · rstd) · γ_c + β_c

Backward, per row, with x̂ = (x − μ) · rstd and g = dy ⊙ γ:

    dx = ((g − mean_c g) − x̂ · mean_c(g ⊙ x̂)) · rstd
    dγ += dy ⊙ x̂,   dβ += dy       (summed over the rows of a chunk)

The sums use ``fastmath={"reassoc"}`` (a reduction vectorizes only so); they agree with
NumPy's pairwise sums to a few ulps of the terms, which is all the tests ask. O(N·C).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .reference import layernorm as ref
from .switch import current

__all__ = ["KERNEL_MIN_SIZE", "backward", "forward", "layernorm_bwd", "layernorm_fwd"]

# below this many entries the reference runs on the fast path too: as fast there, and it
# keeps small problems (tests, golden vectors) on the reference code
KERNEL_MIN_SIZE = 16384
# the backward kernel sums dγ and dβ over this many chunks of rows (then over the chunks)
_CHUNKS = 64


def forward(x, gamma, beta, eps):
    """LayerNorm of the rows of x (N, C): returns y (N, C), mean (N,), rstd (N,).

    x may be any (N, C) array (a copy is made if it is not C-contiguous); eps a Python
    float, so that float32 stays float32.
    """
    N, C = x.shape
    if current() == "reference" or x.size < KERNEL_MIN_SIZE or C == 0:
        return ref.forward(x, gamma, beta, eps)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)  # (N, C)
    mean = np.empty(N, dtype=x.dtype)  # (N,)
    rstd = np.empty(N, dtype=x.dtype)  # (N,)
    layernorm_fwd(x, gamma, beta, eps, y, mean, rstd)
    return y, mean, rstd


def backward(dy, x, gamma, mean, rstd):
    """Gradients of LayerNorm: dx (N, C), dgamma (C,), dbeta (C,)."""
    N, C = x.shape
    if current() == "reference" or x.size < KERNEL_MIN_SIZE or C == 0:
        return ref.backward(dy, x, gamma, mean, rstd)
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy)
    P = min(N, _CHUNKS)
    dx = np.empty_like(x)  # (N, C)
    dgamma_part = np.empty((P, C), dtype=x.dtype)  # (P, C)
    dbeta_part = np.empty((P, C), dtype=x.dtype)  # (P, C)
    layernorm_bwd(dy, x, gamma, mean, rstd, dx, dgamma_part, dbeta_part)
    return dx, dgamma_part.sum(axis=0), dbeta_part.sum(axis=0)


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def layernorm_fwd(x, gamma, beta, eps, y, mean, rstd):
    """y = LayerNorm(x) row by row; also writes each row's mean and rstd. O(N·C)."""
    N, C = x.shape
    t = x.dtype.type
    e = t(eps)
    for n in numba.prange(N):
        row = x[n]
        s = t(0)
        for c in range(C):
            s += row[c]
        mu = s / t(C)
        v = t(0)
        for c in range(C):
            d = row[c] - mu
            v += d * d
        r = t(1) / math.sqrt(v / t(C) + e)
        mean[n] = mu
        rstd[n] = r
        out = y[n]
        for c in range(C):
            out[c] = (row[c] - mu) * r * gamma[c] + beta[c]


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def layernorm_bwd(dy, x, gamma, mean, rstd, dx, dgamma_part, dbeta_part):
    """dx row by row, and per-chunk partial sums of dγ and dβ. O(N·C)."""
    N, C = x.shape
    P = dgamma_part.shape[0]
    t = x.dtype.type
    for p in numba.prange(P):
        dg = dgamma_part[p]
        db = dbeta_part[p]
        dg[:] = 0
        db[:] = 0
        for n in range(N * p // P, N * (p + 1) // P):  # the rows of chunk p
            mu = mean[n]
            r = rstd[n]
            g_sum = t(0)
            gx_sum = t(0)
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                g = dy[n, c] * gamma[c]
                g_sum += g
                gx_sum += g * xhat
                dg[c] += dy[n, c] * xhat
                db[c] += dy[n, c]
            g_mean = g_sum / t(C)
            gx_mean = gx_sum / t(C)
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                dx[n, c] = ((dy[n, c] * gamma[c] - g_mean) - xhat * gx_mean) * r
