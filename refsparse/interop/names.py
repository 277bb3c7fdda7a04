"""Name maps: how another library's tensors are made of refsparse's parameters.

One entry says how one foreign tensor is built from refsparse parameters:

    MapEntry(key, names, axis=0, transpose=False)

    theirs[key] = concatenate([ours[n].T if transpose else ours[n] for n in names], axis)

so every layout met so far is one line:

=====================================  ====================================================
layout                                 entry
=====================================  ====================================================
the same tensor                        ``MapEntry("ln_f.weight", ["norm_f.weight"])``
torch's packed ``in_proj_weight``      ``MapEntry("in_proj_weight", [q, k, v])`` — stacked
(3C, C)                                along the output axis (0)
GPT-2's ``Conv1D`` weight (in, out)    ``MapEntry("mlp.c_fc.weight", ["ff.linear1.weight"],
                                       transpose=True)``
GPT-2's fused ``c_attn`` (C, 3C)       ``MapEntry("attn.c_attn.weight", [q, k, v], axis=1,
                                       transpose=True)`` — q, k, v side by side in columns
=====================================  ====================================================

[`to_theirs`][refsparse.interop.names.to_theirs] builds the foreign tensors (weights or
gradients) from refsparse's arrays, [`from_theirs`][refsparse.interop.names.from_theirs]
splits them back; the two are exact inverses (slicing and transposing move no bits). Plain
NumPy: no foreign library is imported here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MapEntry", "from_theirs", "to_theirs"]


class MapEntry(NamedTuple):
    """``theirs[key] = concatenate([ours[n].T if transpose else ours[n] for n in names], axis)``."""

    key: str  # the foreign tensor's name
    names: tuple  # refsparse parameter names, in the order they are concatenated
    axis: int = 0  # the axis of the foreign tensor along which the parts sit
    transpose: bool = False  # each part is stored transposed (a (in, out) weight)


def _part(value, transpose):
    return value.T if transpose else value


def to_theirs(entries, ours):
    """Foreign tensors (dict key → ndarray) from refsparse's arrays (dict name → ndarray).

    ``ours`` holds dense arrays: parameter values, or their gradients. Every entry's names
    must be in ``ours``. The results are new arrays (C-contiguous), never views of ``ours``.
    """
    out = {}
    for e in entries:
        missing = [n for n in e.names if n not in ours]
        if missing:
            raise ValueError(f"ours: has no {missing} (needed for {e.key!r})")
        parts = [_part(np.asarray(ours[n]), e.transpose) for n in e.names]
        # always a new array: the result never aliases a parameter that an optimizer updates
        out[e.key] = np.array(parts[0], order="C") if len(parts) == 1 else np.concatenate(parts, axis=e.axis)
    return out


def from_theirs(entries, theirs, shapes, *, what="theirs"):
    """refsparse arrays (dict name → ndarray) split out of foreign tensors.

    ``shapes`` maps each refsparse name to its shape (the parameter's); the foreign tensor
    must be exactly the concatenation those shapes make, or ValueError names the key.
    """
    out = {}
    for e in entries:
        if e.key not in theirs:
            raise ValueError(f"{what}: has no tensor {e.key!r}")
        t = np.asarray(theirs[e.key])
        # the shape of each part as it sits in the foreign tensor
        stored = [tuple(reversed(shapes[n])) if e.transpose else tuple(shapes[n]) for n in e.names]
        expected = list(stored[0])
        expected[e.axis] = sum(s[e.axis] for s in stored)
        if t.shape != tuple(expected):
            raise ValueError(f"{what}: {e.key} has shape {t.shape}, expected {tuple(expected)}")
        offsets = np.cumsum([s[e.axis] for s in stored])[:-1]
        for n, part in zip(e.names, np.split(t, offsets, axis=e.axis)):
            out[n] = np.ascontiguousarray(_part(part, e.transpose))
    return out
