"""SparseLinear: a Linear layer whose weight is a scipy.sparse CSR array.

``y = x @ W.T + b`` with W of shape (out_features, in_features) stored as CSR: only the
stored entries are kept, multiplied and trained (refsparse/kernels/spmm.py). The weight's
*pattern* (``indptr``, ``indices``) is the set of connections; a stored entry may hold
0.0 and stays stored — nothing here calls ``eliminate_zeros()``, and the gradient is one
number per stored entry (``weight.grad`` aligned with ``weight.value.data``), never a
dense (out, in) array.

Its NumPy twin is [`refsparse.nn.Linear`][refsparse.nn.layers.Linear] with the dense weight ``W.toarray()``
(zero off the pattern): same outputs, same input gradient, and the same weight gradient
at the stored entries. [`SparseLinear.from_dense`][refsparse.nn.sparse.SparseLinear.from_dense] and [`SparseLinear.to_dense`][refsparse.nn.sparse.SparseLinear.to_dense]
convert between the two.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .._checks import (
    check_bool,
    check_dtype_name,
    check_features,
    check_positive_int,
    check_rng,
)
from ..functional.sparse_linear import sparse_linear_backward, sparse_linear_forward
from .layers import Linear
from .module import Module, Parameter

__all__ = ["SparseLinear", "random_pattern"]


def random_pattern(out_features, in_features, density, rng):
    """A CSR pattern with exactly ``round(density · out · in)`` entries, uniformly placed.

    The positions are a uniform random subset of the out · in cells (drawn without
    replacement from ``rng``), so rows get Binomial-like counts and some rows or columns
    may be empty; the total is exact, which is what a requested sparsity promises.
    Returns ``(indptr, indices)`` (int32 when they fit, as scipy does), canonical:
    indices sorted within each row, no duplicates.
    """
    total = out_features * in_features
    nnz = round(density * total)
    flat = np.sort(rng.choice(total, size=nnz, replace=False)) if nnz else np.empty(0, np.int64)
    rows, cols = np.divmod(flat, in_features)  # row-major order: rows ascending, then columns
    index_dtype = np.int32 if max(total, in_features) < 2**31 else np.int64
    indptr = np.zeros(out_features + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=out_features), out=indptr[1:])
    return indptr, cols.astype(index_dtype)


def _canonical_copy(weight, dtype):
    """A canonical (sorted, no duplicates) CSR copy of ``weight``; stored zeros are kept."""
    w = sp.csr_array(weight, dtype=dtype, copy=True)
    w.sum_duplicates()  # sorts the indices and adds duplicates; never drops a stored zero
    return w


class SparseLinear(Module):
    """``y = x @ W.T + b`` with W a CSR array (out_features, in_features), b dense.

    Give either ``density`` — a random pattern with exactly ``round(density · out · in)``
    stored entries placed uniformly ([`random_pattern`][refsparse.nn.sparse.random_pattern]), whose values are drawn as
    ``nn.Linear`` draws its weights, U(−1/√in, 1/√in) — or ``weight``, a CSR array of
    shape (out_features, in_features) which is copied and canonicalised (indices sorted,
    duplicates summed, stored zeros kept). The bias is U(−1/√in, 1/√in) as in
    ``nn.Linear``. Draw order from ``rng``: pattern, weight values, bias.

    ``dtype`` defaults to float64, or to the given weight's dtype; a ``dtype`` that
    disagrees with a given weight's is an error (no silent casts).

    Attributes: ``weight`` (a sparse [`Parameter`][refsparse.nn.module.Parameter]: ``.value`` CSR, ``.grad`` of
    shape (nnz,)), ``bias`` (a dense Parameter or None), ``in_features``,
    ``out_features``; properties ``nnz`` and ``density``.
    """

    def __init__(self, in_features, out_features, bias=True, *, density=None, weight=None,
                 rng=None, dtype=None):
        super().__init__()
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        if (density is None) == (weight is None):
            raise ValueError("density, weight: expected exactly one of them, got "
                             f"{'both' if weight is not None else 'neither'}")
        rng = check_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / np.sqrt(in_features)

        if weight is not None:
            if not sp.issparse(weight) or weight.format != "csr":
                got = f"format {weight.format!r}" if sp.issparse(weight) else type(weight).__name__
                raise TypeError(f"weight: expected a scipy.sparse CSR array, got {got}")
            if tuple(weight.shape) != (out_features, in_features):
                raise ValueError(f"weight: expected shape ({out_features}, {in_features}) "
                                 f"(out_features, in_features), got {tuple(weight.shape)}")
            if weight.dtype not in (np.float32, np.float64):
                raise TypeError(f"weight: expected dtype float32 or float64, got {weight.dtype}")
            if dtype is not None and check_dtype_name("dtype", dtype) != weight.dtype:
                raise TypeError(f"weight: expected dtype {np.dtype(dtype)} (the dtype argument), "
                                f"got {weight.dtype}")
            dtype = weight.dtype
            w = _canonical_copy(weight, dtype)
        else:
            dtype = check_dtype_name("dtype", "float64" if dtype is None else dtype)
            if isinstance(density, bool) or not isinstance(density, (int, float, np.integer, np.floating)) \
                    or not 0.0 <= float(density) <= 1.0:
                raise ValueError(f"density: expected a number in [0, 1], got {density!r}")
            indptr, indices = random_pattern(out_features, in_features, float(density), rng)
            values = rng.uniform(-bound, bound, indices.size).astype(dtype)
            w = sp.csr_array((values, indices, indptr), shape=(out_features, in_features))
            w.has_canonical_format = True  # sorted and unique by construction
        self.weight = Parameter(w)
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None
        self._cache = None
        # RigL reads the dense gradient dYᵀX at its update steps: when keep_grad_output is
        # set, backward keeps dY (N, out) in grad_output; last_input is the cached X (N, in).
        self.keep_grad_output = False
        self.grad_output = None

    # -- the contract ---------------------------------------------------------------
    def check_inputs(self, x):
        """x: a float array (..., in) of the weight's dtype."""
        check_features("x", x, self.in_features, self.weight.value)

    def compute(self, x):
        """``y = x Wᵀ + b`` over the stored entries: x (..., in) → y (..., out)."""
        b = None if self.bias is None else self.bias.value
        y, self._cache = sparse_linear_forward(x, self.weight.value, b)
        return y

    def backward(self, dy):
        """dX = dY W; dW at the stored entries only (SDDMM), added to ``weight.grad``; db = Σ dY."""
        if self._cache is None:
            raise RuntimeError("SparseLinear.backward called before forward")
        if self.keep_grad_output:
            self.grad_output = np.ascontiguousarray(dy.reshape(math.prod(dy.shape[:-1]), self.out_features))
        dx, dw, db = sparse_linear_backward(dy, self._cache)
        if self._cache.weight is not self.weight.value or dw.shape != self.weight.grad.shape:
            raise RuntimeError("SparseLinear.backward: the weight (or its pattern) changed between "
                               "forward and backward; run forward again")
        self.weight.grad += dw  # (nnz,), aligned with weight.value.data
        if self.bias is not None:
            self.bias.grad += db
        return dx

    # -- conversions ----------------------------------------------------------------
    @classmethod
    def from_dense(cls, linear, mask):
        """The SparseLinear that keeps ``linear``'s weights where ``mask`` is True.

        ``mask`` is a bool ndarray (out_features, in_features): entry (o, j) is stored ⇔
        ``mask[o, j]``, with value ``linear.weight[o, j]`` — even when that value is 0.0
        (it stays a stored zero). The bias is copied. Nothing is shared with ``linear``.
        """
        if not isinstance(linear, Linear):
            raise TypeError(f"linear: expected a refsparse.nn.Linear, got {type(linear).__name__}")
        check_bool("mask", mask, ndim=2)
        dense = linear.weight.value
        if mask.shape != dense.shape:
            raise ValueError(f"mask: expected shape {dense.shape} (the weight's), got {mask.shape}")
        rows, cols = np.nonzero(mask)  # row-major: canonical order
        index_dtype = np.int32 if dense.size < 2**31 else np.int64
        indptr = np.zeros(mask.shape[0] + 1, dtype=index_dtype)
        np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=indptr[1:])
        w = sp.csr_array((dense[rows, cols].copy(), cols.astype(index_dtype), indptr), shape=dense.shape)
        w.has_canonical_format = True
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, weight=w)
        if linear.bias is not None:
            layer.bias.value[...] = linear.bias.value
        return layer

    def to_dense(self):
        """A dense [`Linear`][refsparse.nn.layers.Linear] with weight ``W.toarray()`` (zeros off the pattern) and the same bias."""
        lin = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                     dtype=self.weight.dtype)
        lin.weight.value[...] = self.weight.value.toarray()
        if self.bias is not None:
            lin.bias.value[...] = self.bias.value
        return lin

    @property
    def last_input(self):
        """The input X (N, in_features) of the last forward, or None."""
        return None if self._cache is None else self._cache.x

    # -- facts ----------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Stored entries of the weight (stored zeros included)."""
        return int(self.weight.value.nnz)

    @property
    def density(self) -> float:
        """nnz / (out_features · in_features)."""
        return self.nnz / (self.out_features * self.in_features)

    def __repr__(self):
        return (f"SparseLinear({self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"nnz={self.nnz}, density={self.density:.4g})")
