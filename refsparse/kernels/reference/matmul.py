"""Matrix products: the reference path, plain NumPy ``@`` (one BLAS call each, on the
threads BLAS itself chooses).

The definitions the products of [`kernels.parallel`][refsparse.kernels.parallel] (split
over threads)
are tested equal to:

    matmul(a, b, bias)       C = A B (+ bias on every row)     A (M, K), B (K, N)
    matmul_tn(a, b, colsum)  C = Aᵀ B (and Σ_rows A)           A (K, M), B (K, N)
    matmul_each(a, b, out)   out[j] = a[j] @ b[j] for every index j of the leading axes
"""

from __future__ import annotations

import numpy as np

__all__ = ["matmul", "matmul_each", "matmul_tn"]


def matmul(a, b, bias=None):
    """C = A B (+ bias): (M, K) @ (K, N) -> (M, N)."""
    c = a @ b
    if bias is not None:
        c += bias
    return c


def matmul_tn(a, b, colsum=False):
    """C = Aᵀ B: (K, M)ᵀ @ (K, N) -> (M, N); with ``colsum`` also Σ_rows A (M,)."""
    c = a.T @ b
    return (c, a.sum(axis=0)) if colsum else c


def matmul_each(a, b, out):
    """out = a @ b over the leading axes: (..., M, K) @ (..., K, N) -> out (..., M, N)."""
    np.matmul(a, b, out=out)
    return out
