"""SpMM and SDDMM, the reference: y = x Wᵀ + b and its gradients, over W's stored entries
only. O(nnz · N) time, nothing (C_out, C_in) dense.

Layout: x (N, C_in), y and dy (N, C_out), dx (N, C_in). The weight W (C_out, C_in) is a
canonical CSR array (scipy's names): row o holds the entries e = Ap[o] … Ap[o+1]-1, at
columns Aj[e], with values Ax[e] (a stored 0.0 stays an entry). The compiled loops allocate
nothing: every array comes from the Python wrappers.
"""

import numba
import numpy as np


def forward(x, weight, bias):
    """y = x Wᵀ + b (N, C_out); ``bias`` None for no bias."""
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)  # (N, C_out)
    b = np.zeros(weight.shape[0], x.dtype) if bias is None else bias
    _forward(x, weight.indptr, weight.indices, weight.data, b, y)
    return y


@numba.njit(cache=True)
def _forward(x, Ap, Aj, Ax, b, y):
    for n in range(x.shape[0]):
        for o in range(Ap.size - 1):
            total = b[o]  # y[n, o] = b[o] + Σ_{e in row o} x[n, Aj[e]] Ax[e]
            for e in range(Ap[o], Ap[o + 1]):
                total += x[n, Aj[e]] * Ax[e]
            y[n, o] = total


def backward(dy, x, weight, need_dx=True, need_dw=True, need_db=True):
    """(dx (N, C_in), dw (nnz,) aligned with weight.data, db (C_out,)); None where not needed."""
    dx = np.zeros_like(x)  # (N, C_in)
    dw = np.zeros(weight.data.size, dy.dtype)  # (nnz,)
    _backward(dy, x, weight.indptr, weight.indices, weight.data, dx, dw)
    db = dy.sum(axis=0)  # (C_out,) db = Σ_n dy[n, :]
    return (dx if need_dx else None), (dw if need_dw else None), (db if need_db else None)


@numba.njit(cache=True)
def _backward(dy, x, Ap, Aj, Ax, dx, dw):
    for o in range(Ap.size - 1):
        for e in range(Ap[o], Ap[o + 1]):  # each stored entry e = (o, j) …
            j = Aj[e]
            for n in range(dy.shape[0]):
                dx[n, j] += dy[n, o] * Ax[e]  # … adds to dx = dy W̃ (SpMM)
                dw[e] += dy[n, o] * x[n, j]  # … and takes dW_e = Σ_n dy[n, o] x[n, j] (SDDMM)
