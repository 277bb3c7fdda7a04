"""The basic layers: Linear, Embedding, positional encodings, LayerNorm, Dropout, activations.

Each module keeps the cache of its functional pair between ``forward`` and ``backward``
and accumulates its parameters' gradients with ``+=``.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import (
    check_dtype_name,
    check_features,
    check_positions,
    check_positive_int,
    check_rng,
)
from ..functional.dropout import check_probability
from .module import Module, Parameter


class Linear(Module):
    """``y = x @ W.T + b`` with ``W`` of shape (out_features, in_features), PyTorch's layout.

    Initialised as PyTorch's ``nn.Linear``: W, b ~ U(−1/√in, 1/√in).
    """

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype="float64"):
        super().__init__()
        in_features = check_positive_int("in_features", in_features)
        out_features = check_positive_int("out_features", out_features)
        dtype = check_dtype_name("dtype", dtype)
        rng = check_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None
        self._cache = None

    def check_inputs(self, x):
        """x: a float array (…, in_features) of the weight's dtype."""
        check_features("x", x, self.in_features, self.weight.value)

    def compute(self, x):
        """x (…, in_features) -> x @ W.T + b (…, out_features); keeps the cache."""
        b = None if self.bias is None else self.bias.value
        y, self._cache = F.linear_forward(x, self.weight.value, b)
        return y

    def backward(self, dy):
        """Accumulate dW, db into the parameters' .grad; return dx (…, in_features)."""
        dx, dw, db = F.linear_backward(dy, self._cache_or_raise())
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class Embedding(Module):
    """A lookup table: ``y[..., :] = W[ids[...], :]``, W of shape (num_embeddings, dim).

    Initialised N(0, std²) (std = 1 as PyTorch's ``nn.Embedding`` unless given).
    ``backward`` returns None (the ids have no gradient) and scatter-adds into W.grad.
    """

    def __init__(self, num_embeddings, dim, *, std=1.0, rng=None, dtype="float64"):
        super().__init__()
        num_embeddings = check_positive_int("num_embeddings", num_embeddings)
        dim = check_positive_int("dim", dim)
        dtype = check_dtype_name("dtype", dtype)
        rng = check_rng(rng)
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = Parameter((std * rng.standard_normal((num_embeddings, dim))).astype(dtype))
        self._cache = None

    def forward(self, ids):
        """ids (…) -> the table's rows (…, dim)."""
        y, self._cache = F.embedding_forward(ids, self.weight.value)
        return y

    def backward(self, dy):
        """Scatter-add dy (…, dim) into weight.grad at the ids' rows; returns None."""
        self.weight.grad += F.embedding_backward(dy, self._cache_or_raise())
        return None

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.dim})"


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed table of Vaswani et al. §3.5: ``y = x + PE[:T]`` (no parameters).

    With ``positions`` (B, T) ids: ``y[b, t] = x[b, t] + PE[positions[b, t]]`` (left-padded
    batches, whose real tokens start at position 0 after the padding).
    """

    def __init__(self, max_len, dim, *, dtype="float64"):
        super().__init__()
        self.max_len = check_positive_int("max_len", max_len)
        self.dim = check_positive_int("dim", dim)
        self.table = F.sinusoidal_encoding(self.max_len, self.dim, dtype=check_dtype_name("dtype", dtype))
        self._cache = None

    def check_inputs(self, x, positions=None):
        """x (B, T, dim) of the table's dtype; positions int (B, T) or (T,) in [0, max_len)."""
        check_features("x", x, self.dim, self.table, ndim=3)
        if positions is not None:
            check_positions("positions", positions, x.shape[0], x.shape[1], self.max_len)

    def compute(self, x, positions=None):
        """x (B, T, dim) -> x + PE[:T], or x + PE[positions]."""
        if positions is None:
            y, self._cache = F.positional_forward(x, self.table)
            return y
        positions = np.broadcast_to(positions, x.shape[:2])
        self._cache = "positions"  # the table is fixed: backward needs nothing but the mark
        return x + self.table[positions]  # (B, T, dim)

    def backward(self, dy):
        """dx = dy (the table is fixed)."""
        cache = self._cache_or_raise()
        if isinstance(cache, str):
            return dy
        dx, _ = F.positional_backward(dy, cache)
        return dx


class LearnedPositionalEmbedding(Module):
    """Adds a learned table: ``y = x + P[:T]``, P of shape (max_len, dim), P ~ N(0, std²).

    With ``positions`` (B, T) ids: ``y[b, t] = x[b, t] + P[positions[b, t]]``, whose table
    gradient is the embedding's scatter-add.
    """

    def __init__(self, max_len, dim, *, std=0.02, rng=None, dtype="float64"):
        super().__init__()
        self.max_len = check_positive_int("max_len", max_len)
        self.dim = check_positive_int("dim", dim)
        rng = check_rng(rng)
        dtype = check_dtype_name("dtype", dtype)
        self.weight = Parameter((std * rng.standard_normal((self.max_len, self.dim))).astype(dtype))
        self._cache = None

    def check_inputs(self, x, positions=None):
        """x (B, T, dim) of the table's dtype; positions int (B, T) or (T,) in [0, max_len)."""
        check_features("x", x, self.dim, self.weight.value, ndim=3)
        if positions is not None:
            check_positions("positions", positions, x.shape[0], x.shape[1], self.max_len)

    def compute(self, x, positions=None):
        """x (B, T, dim) -> x + P[:T], or x + P[positions]."""
        if positions is None:
            y, self._cache = F.positional_forward(x, self.weight.value)
            return y
        positions = np.ascontiguousarray(np.broadcast_to(positions, x.shape[:2]), dtype=np.int64)
        rows, cache = F.embedding_forward(positions, self.weight.value)  # (B, T, dim)
        self._cache = ("positions", cache)
        return x + rows

    def backward(self, dy):
        """Accumulate the table's gradient into weight.grad; return dx = dy."""
        cache = self._cache_or_raise()
        if isinstance(cache, tuple) and cache[0] == "positions":
            self.weight.grad += F.embedding_backward(dy, cache[1])  # scatter-add at the positions
            return dy
        dx, dtable = F.positional_backward(dy, cache)
        self.weight.grad += dtable
        return dx


class LayerNorm(Module):
    """``y = (x − mean) / √(var + eps) · weight + bias`` over the last axis (biased variance)."""

    def __init__(self, dim, eps=1e-5, *, dtype="float64"):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        if not 0 < eps < np.inf:  # an infinite eps would make every output beta
            raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
        self.eps = float(eps)
        dtype = check_dtype_name("dtype", dtype)
        self.weight = Parameter(np.ones(self.dim, dtype=dtype))
        self.bias = Parameter(np.zeros(self.dim, dtype=dtype))
        self._cache = None

    def check_inputs(self, x):
        """x: a float array (…, dim) of the parameters' dtype."""
        check_features("x", x, self.dim, self.weight.value)

    def compute(self, x):
        """Normalise x (…, dim) over its last axis; keeps mean and rstd for backward."""
        y, self._cache = F.layernorm_forward(x, self.weight.value, self.bias.value, self.eps)
        return y

    def backward(self, dy):
        """Accumulate dγ, dβ into weight.grad and bias.grad; return dx."""
        dx, dgamma, dbeta = F.layernorm_backward(dy, self._cache_or_raise())
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    def __repr__(self):
        return f"LayerNorm({self.dim}, eps={self.eps:g})"


class Dropout(Module):
    """Inverted dropout with probability ``p``, masks drawn from ``rng``; identity in eval mode."""

    def __init__(self, p=0.0, *, rng=None):
        super().__init__()
        self.p = check_probability("p", p)
        self.rng = check_rng(rng)
        self._cache = None

    def forward(self, x):
        """Drop entries of x with probability p (training mode only); keeps the mask."""
        y, self._cache = F.dropout_forward(x, self.p, self.rng, training=self.training)
        return y

    def backward(self, dy):
        """dx = dy ⊙ keep / (1 − p), with the mask of the last forward."""
        return F.dropout_backward(dy, self._cache_or_raise())


class Activation(Module):
    """ReLU or GELU (exact 'gelu' or 'gelu_tanh') as a module."""

    NAMES = ("relu", "gelu", "gelu_tanh")

    def __init__(self, name="relu"):
        super().__init__()
        if name not in self.NAMES:
            raise ValueError(f"activation: expected one of {self.NAMES}, got {name!r}")
        self.name = name
        self._cache = None

    def forward(self, x):
        """The activation of x, any shape; keeps the cache for backward."""
        if self.name == "relu":
            y, self._cache = F.relu_forward(x)
        else:
            approximate = "tanh" if self.name == "gelu_tanh" else "none"
            y, self._cache = F.gelu_forward(x, approximate=approximate)
        return y

    def backward(self, dy):
        """dx = dy ⊙ act′(x), from the cache of the last forward."""
        cache = self._cache_or_raise()
        if self.name == "relu":
            return F.relu_backward(dy, cache)
        return F.gelu_backward(dy, cache)
