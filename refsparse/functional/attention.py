"""Dense scaled dot-product attention (Vaswani et al. 2017, §3.2), and head splitting.

This is the dense twin that sparse attention is held to: the same masking semantics, the
same empty-row behaviour, the same dropout.

Legend: B batch, H heads, Tq query positions, Tk key positions, D width of a query/key
head, Dv width of a value head, C = H·D model width. Attention itself accepts any leading
axes ("..."), usually (B, H).

Mask convention (torch SDPA's boolean ``attn_mask``, and refsparse.patterns): ``True``
means the query MAY attend to the key. A query row with no allowed key gets zero
probabilities, a zero output and zero gradients — never NaN.

Kernels (one driver call each, either path): the products are
[`matmul_each`][refsparse.kernels.parallel.matmul_each] (reference: ``np.matmul``), the
softmax passes [`masked_softmax`][refsparse.kernels.dense_attention.masked_softmax] and
[`masked_softmax_grad`][refsparse.kernels.dense_attention.masked_softmax_grad] (reference:
[`refsparse.kernels.reference.softmax`][refsparse.kernels.reference.softmax]), and the
batch elements are independent tasks of
[`for_each_slice`][refsparse.kernels.dense_attention.for_each_slice] (threads on the fast
path, where ``causal=True`` is a cut inside the softmax kernel: no (Tq, Tk) mask array,
no exp of the keys past it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._checks import check_bool, check_float, check_same_dtype, check_shape
from ..kernels import dense_attention as K
from ..kernels import parallel
from ._common import check_upstream
from .dropout import DropoutCache, check_probability, dropout_backward, dropout_forward

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


def attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True, causal=False):
    """Scaled dot-product attention with an optional boolean mask and dropout.

        1. s = q kᵀ / √D                                   (..., Tq, Tk)
        2. s[i, j] = −∞ where mask[i, j] is False (or, with causal, where j > i)
        3. p[i, :] = softmax(s[i, :]) over the allowed keys;
           p[i, :] = 0 when row i has no allowed key
        4. p̃ = dropout(p, dropout_p)    (training only; torch SDPA's semantics)
        5. out = p̃ v                                       (..., Tq, Dv)

    Reference kernel of steps 2–3:
    [`masked_softmax`][refsparse.kernels.reference.softmax.masked_softmax].

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
    causal : bool
        Also mask every key after the query: the same as ``mask & causal_mask(Tq, Tk)``
        (torch SDPA's ``is_causal``); the fast path cuts those keys inside the softmax
        kernel instead of reading a mask. (The products still compute whole (Tq, Tk)
        score matrices: measured here, one BLAS call per matrix beat blocks of rows
        below the diagonal, whose many small calls cost more than the 3/8 of the
        flops they save at T = 256.)

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
    training = bool(training)
    dropping = training and dropout_p > 0  # step 4 is not the identity
    blocked = None if mask is None else np.broadcast_to(~mask, lead + (Tq, Tk))  # True = masked
    p = np.empty(lead + (Tq, Tk), dtype=q.dtype)  # (..., Tq, Tk)
    out = np.empty(lead + (Tq, v.shape[-1]), dtype=q.dtype)  # (..., Tq, Dv)

    def attend(i):
        """Steps 1–3 (and 5 without dropout) for the matrices q[i], k[i], v[i]."""
        s = p[i]  # (…, Tq, Tk), filled in place: scores, then probabilities
        # 1. scores
        parallel.matmul_each(q[i], k[i].swapaxes(-1, -2), s)  # (…, Tq, D) @ (…, D, Tk)
        # 2.–3. masked softmax of the scaled scores
        K.masked_softmax(s, None if blocked is None else blocked[i], scale, causal)
        # 5. weighted sum of the values (when step 4 changes nothing)
        if not dropping:
            parallel.matmul_each(s, v[i], out[i])  # (…, Tq, Tk) @ (…, Tk, Dv)

    # each index of the first leading axis (the batch) is one task (on threads: fast path)
    K.for_each_slice(attend, lead)
    # 4. dropout on the probabilities: the whole array at once, so the rng draws in one order
    p_drop, dcache = dropout_forward(p, dropout_p, rng, training)  # (..., Tq, Tk)
    if dropping:
        # 5. weighted sum of the values
        K.for_each_slice(lambda i: parallel.matmul_each(p_drop[i], v[i], out[i]), lead)
    return out, AttentionCache(q, k, v, p, dcache, scale)


def _dropout_part(dcache, i):
    """The dropout cache of the slice [i] of the first leading axis (the mask's slice)."""
    keep, scale, shape, dtype = dcache
    return DropoutCache(None if keep is None else keep[i], scale, shape[1:], dtype)


def attention_backward(dout, cache):
    """Gradients of out = dropout(softmax(q kᵀ/√D, masked)) v, walking the forward in reverse.

        5. dv = p̃ᵀ dout                       dp̃ = dout vᵀ
        4. dp = dp̃ ⊙ keep / (1 − dropout_p)
        3. ds = p ⊙ (dp − Σ_j dp_j p_j)       (softmax backward, row by row)
        2. masked entries have p = 0, hence ds = 0: no gradient flows through them
        1. dq = ds k / √D                     dk = dsᵀ q / √D

    A row with no allowed key has p = 0, so its dq row is 0 and it adds nothing to dk, dv.
    The same holds for the entries a causal forward skipped: p = 0 there, so ds = 0 (the
    backward runs over whole matrices: measured here, blocks of rows were slower).

    Derivation: [docs/backprop.md, section Attention](../backprop.md#attention). Reference kernel of step 3:
    [`masked_softmax_grad`][refsparse.kernels.reference.softmax.masked_softmax_grad].

    Returns
    -------
    (dq, dk, dv) : shapes of q, k, v
    """
    q, k, v, p, dcache, scale = cache
    check_upstream("dout", dout, q.shape[:-1] + (v.shape[-1],), q.dtype)
    lead = q.shape[:-2]
    dq = np.empty(q.shape, dtype=q.dtype)  # (..., Tq, D)
    dk = np.empty(k.shape, dtype=q.dtype)  # (..., Tk, D)
    dv = np.empty(v.shape, dtype=q.dtype)  # (..., Tk, Dv)
    ds_all = np.empty(p.shape, dtype=q.dtype)  # (..., Tq, Tk)

    def attend_backward(i):
        """All five steps for the matrices of slice [i] of the first leading axis."""
        d = dcache if not lead else _dropout_part(dcache, i)
        # 5. out = p̃ v
        p_drop = dropout_backward(p[i], d)  # p̃ again: dropout is elementwise, the same mask
        parallel.matmul_each(p_drop.swapaxes(-1, -2), dout[i], dv[i])  # (…, Tk, Tq) @ (…, Tq, Dv)
        dp = ds_all[i]
        parallel.matmul_each(dout[i], v[i].swapaxes(-1, -2), dp)  # (…, Tq, Dv) @ (…, Dv, Tk)
        # 4. p̃ = dropout(p)
        dp = dropout_backward(dp, d)
        # 3. p = softmax(s): ds = p ⊙ (dp − Σ_j dp_j p_j); 2. masked entries: p = 0 ⇒ ds = 0
        # 1. s = q kᵀ · scale: the scale goes into ds
        K.masked_softmax_grad(dp, p[i], scale)
        ds = dp
        parallel.matmul_each(ds, k[i], dq[i])  # (…, Tq, Tk) @ (…, Tk, D)
        parallel.matmul_each(ds.swapaxes(-1, -2), q[i], dk[i])  # (…, Tk, Tq) @ (…, Tq, D)

    K.for_each_slice(attend_backward, lead)
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
