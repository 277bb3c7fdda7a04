"""Cross-entropy of logits against integer targets, exactly torch.nn.functional.cross_entropy.

Legend: V classes (vocabulary), N positions (all leading axes flattened). The class axis
is the LAST one, (..., V) — unlike torch, whose class axis is 1; reshape to (N, V) to
compare.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_float, check_int, check_shape
from ._common import check_upstream
from .dropout import check_probability

__all__ = ["CrossEntropyCache", "cross_entropy_backward", "cross_entropy_forward"]

_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyCache(NamedTuple):
    """What cross_entropy_backward needs: the probabilities, the targets and the reduction."""
    p: np.ndarray  # (N, V) softmax probabilities
    targets: np.ndarray  # (N,) targets, ignored positions replaced by 0
    valid: np.ndarray  # (N,) bool, False where the target was ignore_index
    label_smoothing: float
    reduction: str
    n_valid: int  # number of non-ignored targets
    shape: tuple  # the logits' shape (..., V)


def cross_entropy_forward(logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy with optional label smoothing and ignored targets.

    With ε = label_smoothing, log p = log-softmax(logits) computed through log-sum-exp,

        log p[i, c] = z[i, c] − m_i − log Σ_c' exp(z[i, c'] − m_i),   m_i = max_c z[i, c]
        loss_i      = (1 − ε) · (−log p[i, y_i]) + (ε / V) · Σ_c (−log p[i, c])

    i.e. the cross-entropy against the target distribution q_i = (1 − ε) onehot(y_i) + ε/V.
    Positions with y_i = ignore_index contribute nothing.

    reduction: "mean" → Σ_i loss_i / (number of non-ignored targets); if every target is
    ignored the mean is 0.0 with a zero gradient (torch returns NaN: a deliberate
    difference). "sum" → Σ_i loss_i. "none" → the loss_i, shape (...), 0 where ignored.

    Parameters
    ----------
    logits : ndarray (..., V), float32 or float64
    targets : integer ndarray (...), values in [0, V) or ignore_index
    ignore_index : int
    label_smoothing : float in [0, 1]
    reduction : "mean" | "sum" | "none"

    Returns
    -------
    loss : 0-d ndarray ("mean", "sum") or ndarray (...) ("none"), the logits' dtype
    cache : CrossEntropyCache
    """
    check_float("logits", logits, min_ndim=1)
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"logits: expected at least one class on the last axis, got shape {logits.shape}")
    check_int("targets", targets)
    check_shape("targets", targets, logits.shape[:-1])
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    eps = check_probability("label_smoothing", label_smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")

    t = targets.reshape(-1)  # (N,)
    valid = t != ignore_index  # (N,)
    bad = valid & ((t < 0) | (t >= V))
    if bad.any():
        raise ValueError(
            f"targets: expected values in [0, {V}) or ignore_index={ignore_index}, got {t[bad][0]}"
        )
    t = np.where(valid, t, 0)  # (N,) a safe index for ignored rows
    z = logits.reshape(-1, V)  # (N, V)
    N = z.shape[0]
    rows = np.arange(N)

    shifted = z - z.max(axis=1, keepdims=True)  # (N, V), every entry <= 0
    target_shifted = shifted[rows, t]  # (N,) z[i, y_i] − m_i
    if eps > 0:
        sum_shifted = shifted.sum(axis=1)  # (N,) Σ_c (z[i, c] − m_i)
    e = np.exp(shifted, out=shifted)  # (N, V)
    sumexp = e.sum(axis=1)  # (N,) >= 1
    lse = np.log(sumexp)  # (N,) log Σ_c exp(z[i, c] − m_i)

    loss = lse - target_shifted  # (N,) −log p[i, y_i]
    if eps > 0:
        smooth = V * lse - sum_shifted  # (N,) Σ_c −log p[i, c]
        loss *= 1.0 - eps
        loss += (eps / V) * smooth
    loss[~valid] = 0

    n_valid = int(valid.sum())
    if reduction == "none":
        out = loss.reshape(targets.shape)  # (...)
    elif reduction == "sum":
        out = np.asarray(loss.sum(), dtype=z.dtype)  # 0-d
    else:
        out = np.asarray(loss.sum() / n_valid if n_valid else 0.0, dtype=z.dtype)  # 0-d

    p = e
    p /= sumexp[:, None]  # (N, V) softmax, kept for backward
    return out, CrossEntropyCache(p, t, valid, eps, reduction, n_valid, logits.shape)


def cross_entropy_backward(dloss, cache):
    """Gradient of the cross-entropy with respect to the logits.

        dlogits[i, :] = w_i · (p[i, :] − q_i),   q_i = (1 − ε) onehot(y_i) + ε/V

    with w_i = dloss / n_valid ("mean"), dloss ("sum") or dloss[i] ("none"), and w_i = 0
    for an ignored position. ``dloss`` is usually 1.0 (a Python float or a 0-d array) for
    "mean"/"sum", and an array of the targets' shape for "none". Note the order:
    ``cross_entropy_backward(dloss, cache)``.

    Derivation: [docs/backprop.md, section Cross-entropy](../backprop.md#cross-entropy).

    Returns
    -------
    dlogits : ndarray (..., V), the logits' dtype
    """
    p, t, valid, eps, reduction, n_valid, shape = cache
    N, V = p.shape
    if reduction == "none":
        check_upstream("dloss", dloss, shape[:-1], p.dtype)
        w = np.where(valid, dloss.reshape(-1), 0)  # (N,), 0 at ignored positions
    else:
        if isinstance(dloss, np.ndarray):
            if dloss.size != 1 or not np.issubdtype(dloss.dtype, np.floating):
                raise ValueError(
                    f"dloss: expected a scalar for reduction={reduction!r}, "
                    f"got an array of shape {dloss.shape} and dtype {dloss.dtype}"
                )
            dloss = dloss.item()
        if isinstance(dloss, bool) or not isinstance(dloss, (int, float, np.integer, np.floating)):
            raise TypeError(f"dloss: expected a float, got {type(dloss).__name__}")
        scale = float(dloss) / n_valid if reduction == "mean" and n_valid else float(dloss)
        w = valid.astype(p.dtype)  # (N,)
        w *= scale  # 0 everywhere when every target is ignored

    # p − q, with q's two constants rounded in the logits' dtype so that for V = 1
    # (p = 1, q = 1) the difference is exactly 0, as the true gradient
    eps_d = p.dtype.type(eps)
    on_target = p.dtype.type(1) - eps_d  # 1 − ε
    if eps > 0:
        dlogits = p - eps_d / V  # (N, V) p − ε/V
    else:
        dlogits = p.copy()  # (N, V)
    dlogits[np.arange(N), t] -= on_target  # − (1 − ε) onehot(y_i)
    dlogits *= w[:, None]  # (N, V) w_i (p − q_i)
    return dlogits.reshape(shape)
