"""Checks shared by the backward passes of [`refsparse.functional`][refsparse.functional].

A backward pass receives an upstream gradient whose shape and dtype are fixed by its
forward; a wrong one would otherwise fail deep inside a matmul with a message that does
not name it.
"""

from __future__ import annotations

from .._checks import check_float, check_shape


def check_upstream(name, g, shape, dtype):
    """Check an upstream gradient: a float ndarray of exactly ``shape`` and ``dtype``."""
    check_float(name, g)
    check_shape(name, g, tuple(shape))
    if g.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the forward pass's dtype), got {g.dtype}")
    return g
