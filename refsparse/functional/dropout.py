"""Inverted dropout (Srivastava et al. 2014), with PyTorch's scaling at training time.

Shapes: any; the output has the shape and dtype of the input. Randomness comes only from
the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_float
from ._common import check_upstream

__all__ = ["DropoutCache", "check_probability", "dropout_backward", "dropout_forward"]


class DropoutCache(NamedTuple):
    """What dropout_backward needs: the mask (or None), the scale, and the input's shape
    and dtype (which dy must have)."""
    keep: np.ndarray | None  # bool, True = kept; None when nothing was drawn
    scale: float  # 1/(1−p) with a mask; 1.0 = identity; 0.0 = everything dropped (p = 1)
    shape: tuple  # the input's shape
    dtype: np.dtype  # the input's dtype


def check_probability(name, p):
    """A dropout probability: a real number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float in [0, 1], got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
    return float(p)


def dropout_forward(x, p, rng, training=True):
    """Zero each entry with probability p and scale the survivors by 1/(1−p).

        keep = (u >= p),  u ~ Uniform[0, 1) drawn as ``rng.random(x.shape)``
        y    = x ⊙ keep / (1 − p)

    so that E[y] = x. With ``training=False`` or p = 0 it is the identity (``y`` is ``x``
    itself and ``rng`` is not used, may be None); with p = 1 every entry is dropped
    (``y = 0``, ``rng`` not used). Otherwise ``rng`` draws exactly one float64 uniform per
    entry, so the mask is reproducible from the generator's state.

    Parameters
    ----------
    x : ndarray, float32 or float64
    p : float in [0, 1]
    rng : numpy.random.Generator (or None when it is not used)
    training : bool

    Returns
    -------
    y : ndarray, x's shape and dtype
    cache : DropoutCache
    """
    check_float("x", x)
    p = check_probability("p", p)
    if not training or p == 0.0:
        return x, DropoutCache(None, 1.0, x.shape, x.dtype)  # identity, rng untouched
    if p == 1.0:
        return np.zeros_like(x), DropoutCache(None, 0.0, x.shape, x.dtype)  # all dropped, rng untouched
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng: expected a numpy.random.Generator (dropout with p={p} at training time), "
            f"got {type(rng).__name__}"
        )
    keep = rng.random(x.shape) >= p  # bool, P(keep) = 1 − p
    scale = 1.0 / (1.0 - p)
    y = x * keep  # a bool factor keeps x's dtype
    y *= scale
    return y, DropoutCache(keep, scale, x.shape, x.dtype)


def dropout_backward(dy, cache):
    """dx = dy ⊙ keep / (1 − p)   (the same mask and scale as the forward pass).

    Derivation: [docs/backprop.md, section Dropout](../backprop.md#dropout).
    """
    check_upstream("dy", dy, cache.shape, cache.dtype)
    keep, scale = cache.keep, cache.scale
    if keep is None:
        return dy if scale == 1.0 else np.zeros_like(dy)
    dx = dy * keep
    dx *= scale
    return dx
