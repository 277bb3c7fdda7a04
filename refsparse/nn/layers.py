"""The basic layers: Linear, Embedding, positional encodings, LayerNorm, Dropout, activations.

Each module keeps the cache of its functional pair between ``forward`` and ``backward``
and accumulates its parameters' gradients with ``+=``.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import check_dtype_name, check_float, check_same_dtype
from ..functional.dropout import check_probability
from .module import Module, Parameter


def _default_rng(rng):
    """Modules draw their initial weights (and dropout masks) from ``rng``; seed 0 if none."""
    if rng is None:
        return np.random.default_rng(0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


class Linear(Module):
    """``y = x @ W.T + b`` with ``W`` of shape (out_features, in_features), PyTorch's layout.

    Initialised as PyTorch's ``nn.Linear``: W, b ~ U(−1/√in, 1/√in).
    """

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype="float64"):
        super().__init__()
        in_features = _check_positive_int("in_features", in_features)
        out_features = _check_positive_int("out_features", out_features)
        dtype = check_dtype_name("dtype", dtype)
        rng = _default_rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype)) if bias else None
        self._cache = None

    def forward(self, x):
        """x (…, in_features) -> x @ W.T + b (…, out_features); keeps the cache."""
        check_float("x", x, min_ndim=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got shape {x.shape}")
        check_same_dtype(weight=self.weight.value, x=x)  # the parameters' dtype decides
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
        num_embeddings = _check_positive_int("num_embeddings", num_embeddings)
        dim = _check_positive_int("dim", dim)
        dtype = check_dtype_name("dtype", dtype)
        rng = _default_rng(rng)
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


def _check_positional_input(x, dim, **table):
    """x must be (B, T, dim) with the table's dtype: errors name ``x``, not the table."""
    check_float("x", x, ndim=3)
    if x.shape[-1] != dim:
        raise ValueError(f"x: expected last dimension {dim}, got shape {x.shape}")
    check_same_dtype(**table, x=x)


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed table of Vaswani et al. §3.5: ``y = x + PE[:T]`` (no parameters)."""

    def __init__(self, max_len, dim, *, dtype="float64"):
        super().__init__()
        self.max_len = _check_positive_int("max_len", max_len)
        self.dim = _check_positive_int("dim", dim)
        self.table = F.sinusoidal_encoding(self.max_len, self.dim, dtype=check_dtype_name("dtype", dtype))
        self._cache = None

    def forward(self, x):
        """x (B, T, dim) -> x + PE[:T]."""
        _check_positional_input(x, self.dim, table=self.table)
        y, self._cache = F.positional_forward(x, self.table)
        return y

    def backward(self, dy):
        """dx = dy (the table is fixed)."""
        dx, _ = F.positional_backward(dy, self._cache_or_raise())
        return dx


class LearnedPositionalEmbedding(Module):
    """Adds a learned table: ``y = x + P[:T]``, P of shape (max_len, dim), P ~ N(0, std²)."""

    def __init__(self, max_len, dim, *, std=0.02, rng=None, dtype="float64"):
        super().__init__()
        self.max_len = _check_positive_int("max_len", max_len)
        self.dim = _check_positive_int("dim", dim)
        rng = _default_rng(rng)
        dtype = check_dtype_name("dtype", dtype)
        self.weight = Parameter((std * rng.standard_normal((self.max_len, self.dim))).astype(dtype))
        self._cache = None

    def forward(self, x):
        """x (B, T, dim) -> x + P[:T]."""
        _check_positional_input(x, self.dim, weight=self.weight.value)
        y, self._cache = F.positional_forward(x, self.weight.value)
        return y

    def backward(self, dy):
        """Accumulate the table's gradient into weight.grad; return dx = dy."""
        dx, dtable = F.positional_backward(dy, self._cache_or_raise())
        self.weight.grad += dtable
        return dx


class LayerNorm(Module):
    """``y = (x − mean) / √(var + eps) · weight + bias`` over the last axis (biased variance)."""

    def __init__(self, dim, eps=1e-5, *, dtype="float64"):
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        if not 0 < eps < np.inf:  # an infinite eps would make every output beta
            raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
        self.eps = float(eps)
        dtype = check_dtype_name("dtype", dtype)
        self.weight = Parameter(np.ones(self.dim, dtype=dtype))
        self.bias = Parameter(np.zeros(self.dim, dtype=dtype))
        self._cache = None

    def forward(self, x):
        """Normalise x (…, dim) over its last axis; keeps mean and rstd for backward."""
        check_float("x", x, min_ndim=1)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x: expected last dimension {self.dim}, got shape {x.shape}")
        check_same_dtype(weight=self.weight.value, x=x)  # the parameters' dtype decides
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
        self.rng = _default_rng(rng)
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
