"""Dense attention's masked softmax and its gradient: the reference path, whole-array NumPy.

The definitions the fast kernels of
[`kernels.dense_attention`][refsparse.kernels.dense_attention] are tested equal to. On s
(..., Tq, Tk), the raw scores q kᵀ, row by row:

    masked_softmax:       s ← s · scale;  s_ij ← −∞ where blocked[i, j] (or, with causal,
                          where j > i);  p_i = exp(s_i − max_j s_ij) / Σ_j exp(s_ij − max_j s_ij)
                          — a row with no allowed key is all 0 (never NaN)
    masked_softmax_grad:  ds = ((dp − Σ_j dp_j p_j) ⊙ p) · scale      (softmax's vector–
                          Jacobian product, attention's scale folded in)

Both work in place. blocked: bool, broadcastable to s, True = may NOT attend; or None.
"""

from __future__ import annotations

import numpy as np

__all__ = ["masked_softmax", "masked_softmax_grad"]


def masked_softmax(s, blocked, scale, causal):
    """In place on s (..., Tq, Tk): each row ← softmax(row · scale) over its allowed keys."""
    s *= scale
    if causal:  # the causal cut as a mask: key j > query i is blocked
        cut = ~np.tri(s.shape[-2], s.shape[-1], dtype=bool)  # (Tq, Tk)
        blocked = cut if blocked is None else (blocked | cut)
    # masked entries leave the softmax: exp(−∞) = 0
    if blocked is not None:
        np.copyto(s, -np.inf, where=blocked)
    # softmax over the allowed keys, stable: subtract the row max
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)  # (..., Tq, 1); −∞ for an empty row
    np.copyto(m, 0, where=m == -np.inf)  # an empty row: exp(−∞ − 0) = 0, no NaN from −∞ − (−∞)
    s -= m
    np.exp(s, out=s)  # (..., Tq, Tk), the row max gives exp(0) = 1
    denom = s.sum(axis=-1, keepdims=True)  # (..., Tq, 1); >= 1, or 0 for an empty row
    np.copyto(denom, 1, where=denom == 0)  # an empty row stays 0 / 1 = 0
    s /= denom


def masked_softmax_grad(dp, p, scale):
    """In place on dp (..., Tq, Tk): dp ← ((dp − Σ_j dp_j p_j) ⊙ p) · scale."""
    row = np.sum(dp * p, axis=-1, keepdims=True)  # (..., Tq, 1)
    dp -= row
    dp *= p
    dp *= scale
