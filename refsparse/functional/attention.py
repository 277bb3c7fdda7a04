"""Dense scaled dot-product attention (Vaswani et al. 2017, §3.2), and head splitting.

This is the dense twin that sparse attention is held to: the same masking semantics, the
same empty-row behaviour, the same dropout.

Legend: B batch, H heads, Tq query positions, Tk key positions, D width of a query/key
head, Dv width of a value head, C = H·D model width. Attention itself accepts any leading
axes ("..."), usually (B, H).

Mask convention (torch SDPA's boolean ``attn_mask``, and refsparse.patterns): ``True``
means the query MAY attend to the key. A query row with no allowed key gets zero
probabilities, a zero output and zero gradients — never NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import check_bool, check_float, check_same_dtype, check_shape
from ._common import check_upstream
from .dropout import DropoutCache, _dropout, _dropout_grad, check_probability

__all__ = [
    "AttentionCache",
    "attention_backward",
    "attention_forward",
    "causal_mask",
    "merge_heads_backward",
    "merge_heads_forward",
    "split_heads_backward",
    "split_heads_forward",
]


def _check_count(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)


def _bmm(a, b):
    """Batched matrix product over the leading axes: (..., M, K) @ (..., K, N) -> (..., M, N).

    The same as ``a @ b``, computed as one 2-D BLAS call (``np.dot``) per leading index.
    NumPy's stacked matmul (and 2-D ``np.matmul`` with ``out=``) took a slow non-BLAS path
    here for the transposed and strided views attention feeds it (kᵀ, and the heads of a
    (B, T, C) array): measured ~1.5 s against ~60 ms for (16, 4, 256, 64) @ (16, 4, 64, 256)
    float32.
    """
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    a = np.broadcast_to(a, lead + a.shape[-2:])
    b = np.broadcast_to(b, lead + b.shape[-2:])
    for idx in np.ndindex(*lead):
        np.dot(a[idx], b[idx], out=out[idx])
    return out


def causal_mask(t_q, t_k=None):
    """The causal mask: query i may attend to key j iff j <= i.

        mask[i, j] = (j <= i),   shape (t_q, t_k), t_k = t_q by default

    Aligned at the top-left corner when t_q != t_k, as torch's ``is_causal=True``.
    """
    t_q = _check_count("t_q", t_q, 0)
    t_k = t_q if t_k is None else _check_count("t_k", t_k, 0)
    return np.tri(t_q, t_k, dtype=bool)  # (Tq, Tk), True on and below the diagonal


# ----------------------------------------------------------------------------------------
# scaled dot-product attention


class AttentionCache(NamedTuple):
    """What attention_backward needs: the inputs, the probabilities and the dropout mask."""
    q: np.ndarray  # (..., Tq, D)
    k: np.ndarray  # (..., Tk, D)
    v: np.ndarray  # (..., Tk, Dv)
    p: np.ndarray  # (..., Tq, Tk) softmax probabilities, before dropout (0 where masked)
    dropout: DropoutCache  # the dropout mask applied to p
    scale: float  # 1 / sqrt(D)


def attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True):
    """Scaled dot-product attention with an optional boolean mask and dropout.

        1. s = q kᵀ / √D                                   (..., Tq, Tk)
        2. s[i, j] = −∞ where mask[i, j] is False
        3. p[i, :] = softmax(s[i, :]) over the allowed keys;
           p[i, :] = 0 when row i has no allowed key
        4. p̃ = dropout(p, dropout_p)    (training only; torch SDPA's semantics)
        5. out = p̃ v                                       (..., Tq, Dv)

    Parameters
    ----------
    q : ndarray (..., Tq, D), float32 or float64
    k : ndarray (..., Tk, D), same leading axes and dtype
    v : ndarray (..., Tk, Dv), same leading axes and dtype
    mask : bool ndarray broadcastable to (..., Tq, Tk), or None (every key allowed).
        True = may attend.
    dropout_p : float in [0, 1], dropout on the attention probabilities
    rng : numpy.random.Generator, needed when training and 0 < dropout_p < 1
    training : bool

    Returns
    -------
    out : ndarray (..., Tq, Dv)
    cache : AttentionCache
    """
    check_float("q", q, min_ndim=2)
    check_float("k", k, min_ndim=2)
    check_float("v", v, min_ndim=2)
    lead, Tq, D = q.shape[:-2], q.shape[-2], q.shape[-1]
    check_shape("k", k, lead + (None, D))
    Tk = k.shape[-2]
    check_shape("v", v, lead + (Tk, None))
    check_same_dtype(q=q, k=k, v=v)
    if mask is not None:
        check_bool("mask", mask)
        full = lead + (Tq, Tk)
        try:
            ok = mask.ndim <= len(full) and np.broadcast_shapes(mask.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"mask: expected a shape broadcastable to {full}, got {mask.shape}")
    dropout_p = check_probability("dropout_p", dropout_p)

    scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    # 1. scores
    s = _bmm(q, k.swapaxes(-1, -2))  # (..., Tq, D) @ (..., D, Tk) -> (..., Tq, Tk)
    s *= scale
    # 2. masked entries leave the softmax: exp(−∞) = 0
    if mask is not None:
        np.copyto(s, -np.inf, where=~mask)
    # 3. softmax over the allowed keys, stable: subtract the row max
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)  # (..., Tq, 1); −∞ for an empty row
    np.copyto(m, 0, where=m == -np.inf)  # an empty row: exp(−∞ − 0) = 0, no NaN from −∞ − (−∞)
    s -= m
    p = np.exp(s, out=s)  # (..., Tq, Tk), the row max gives exp(0) = 1
    denom = p.sum(axis=-1, keepdims=True)  # (..., Tq, 1); >= 1, or 0 for an empty row
    np.copyto(denom, 1, where=denom == 0)  # an empty row stays 0 / 1 = 0
    p /= denom
    # 4. dropout on the probabilities
    p_drop, dcache = _dropout(p, dropout_p, rng, bool(training))  # (..., Tq, Tk)
    # 5. weighted sum of the values
    out = _bmm(p_drop, v)  # (..., Tq, Tk) @ (..., Tk, Dv) -> (..., Tq, Dv)
    return out, AttentionCache(q, k, v, p, dcache, scale)


def attention_backward(dout, cache):
    """Gradients of out = dropout(softmax(q kᵀ/√D, masked)) v, walking the forward in reverse.

        5. dv = p̃ᵀ dout                       dp̃ = dout vᵀ
        4. dp = dp̃ ⊙ keep / (1 − dropout_p)
        3. ds = p ⊙ (dp − Σ_j dp_j p_j)       (softmax backward, row by row)
        2. masked entries have p = 0, hence ds = 0: no gradient flows through them
        1. dq = ds k / √D                     dk = dsᵀ q / √D

    A row with no allowed key has p = 0, so its dq row is 0 and it adds nothing to dk, dv.

    Derivation: docs/backprop.md, section Attention.

    Returns
    -------
    (dq, dk, dv) : shapes of q, k, v
    """
    q, k, v, p, dcache, scale = cache
    check_upstream("dout", dout, q.shape[:-1] + (v.shape[-1],), q.dtype)

    # 5. out = p̃ v
    p_drop = _dropout_grad(p, dcache)  # p̃ again: dropout is elementwise, the same mask
    dv = _bmm(p_drop.swapaxes(-1, -2), dout)  # (..., Tk, Tq) @ (..., Tq, Dv) -> (..., Tk, Dv)
    dp = _bmm(dout, v.swapaxes(-1, -2))  # (..., Tq, Dv) @ (..., Dv, Tk) -> (..., Tq, Tk)
    # 4. p̃ = dropout(p)
    dp = _dropout_grad(dp, dcache)
    # 3. p = softmax(s): ds = p ⊙ (dp − Σ_j dp_j p_j); 2. masked entries: p = 0 ⇒ ds = 0
    row = np.sum(dp * p, axis=-1, keepdims=True)  # (..., Tq, 1)
    ds = dp  # reuse the (..., Tq, Tk) buffer
    ds -= row
    ds *= p
    # 1. s = q kᵀ · scale
    ds *= scale
    dq = _bmm(ds, k)  # (..., Tq, Tk) @ (..., Tk, D) -> (..., Tq, D)
    dk = _bmm(ds.swapaxes(-1, -2), q)  # (..., Tk, Tq) @ (..., Tq, D) -> (..., Tk, D)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# heads


def split_heads_forward(x, n_heads):
    """Split the channels into heads: (B, T, C) -> (B, H, T, D), D = C / H.

        y[b, h, t, d] = x[b, t, h·D + d]

    ``y`` is a view of ``x`` (no copy); matmul reads it as it is. The cache is ``n_heads``.

    Returns
    -------
    y : ndarray (B, H, T, D)
    cache : int, n_heads
    """
    check_float("x", x, ndim=3)
    H = _check_count("n_heads", n_heads, 1)
    B, T, C = x.shape
    if C % H != 0:
        raise ValueError(f"n_heads: expected a divisor of the width C={C} of x, got {H}")
    y = x.reshape(B, T, H, C // H)  # (B, T, H, D)
    y = y.transpose(0, 2, 1, 3)  # (B, H, T, D)
    return y, H


def split_heads_backward(dy, cache):
    """Gradient of split_heads: the inverse permutation, (B, H, T, D) -> (B, T, H·D).

    Derivation: a permutation of entries; its gradient is the inverse permutation.
    """
    H = cache
    check_float("dy", dy, ndim=4)
    check_shape("dy", dy, (None, H, None, None))
    B, _, T, D = dy.shape
    return dy.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H, D) -> (B, T, C)


def merge_heads_forward(x):
    """Concatenate the heads: (B, H, T, D) -> (B, T, H·D).

        y[b, t, h·D + d] = x[b, h, t, d]

    Returns
    -------
    y : ndarray (B, T, H·D)
    cache : int, the number of heads H (what merge_heads_backward needs)
    """
    check_float("x", x, ndim=4)
    B, H, T, D = x.shape
    y = x.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H, D) -> (B, T, C)
    return y, H


def merge_heads_backward(dy, cache):
    """Gradient of merge_heads: split again, (B, T, H·D) -> (B, H, T, D); cache = n_heads.

    Derivation: a permutation of entries; its gradient is the inverse permutation.
    """
    H = _check_count("cache", cache, 1)
    check_float("dy", dy, ndim=3)
    B, T, C = dy.shape
    if C % H != 0:
        raise ValueError(f"dy: expected a width divisible by n_heads={H}, got shape {dy.shape}")
    return dy.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # (B, T, H, D) -> (B, H, T, D)
