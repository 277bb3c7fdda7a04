"""Pruning criteria: which entries of a dense weight to keep, as a boolean mask.

Every function here takes dense 2-D arrays of shape (out, in) — weights, or scores such
as |W| — and returns a bool mask of the same shape: True = keep (store) the entry. The
masks feed [`refsparse.nn.SparseLinear.from_dense`][refsparse.nn.sparse.SparseLinear.from_dense].

Two rules hold everywhere:

- **Counting.** A sparsity s ∈ [0, 1) on a group of ``total`` cells keeps exactly

      n_keep(total, s) = round(total · (1 − s))

  entries, with Python's ``round`` (half to even: 2.5 → 2, 3.5 → 4). "Exactly" is a
  promise: a mask never holds one entry more or less than this count.
- **Ties.** The score of an entry is |W| for magnitude criteria. On equal scores the
  entry with the lower flat (row-major) index wins, so every mask is a deterministic
  function of its inputs ([`refsparse.kernels.select`][refsparse.kernels.select]).

=====================  ===============================================================
[`magnitude_mask`][refsparse.prune.criteria.magnitude_mask]  the n_keep(out · in, s) largest |W| of one layer (Han et al. 2015)
[`global_magnitude_masks`][refsparse.prune.criteria.global_magnitude_masks]  the n_keep(Σ sizes, s) largest |W| over several layers:
                        one threshold (Frankle & Carbin 2019, global variant)
[`random_mask`][refsparse.prune.criteria.random_mask]     n_keep positions uniformly at random
[`nm_mask`][refsparse.prune.criteria.nm_mask]         N:M — in every group of M consecutive inputs of a row, the N
                        largest |W| (Mishra et al. 2021; Zhou et al. 2021)
[`block_mask`][refsparse.prune.criteria.block_mask]      whole (bh × bw) blocks with the largest Σ|W| (Narang et al. 2017)
[`scores_mask`][refsparse.prune.criteria.scores_mask]     the general one: the k largest entries of any score array
=====================  ===============================================================

Scores must be finite: a NaN (a diverged weight) is an error, never silently kept or
dropped.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_bool, check_finite, check_float, is_int
from ..kernels.select import group_topn_mask, topk_indices

__all__ = [
    "block_mask",
    "global_magnitude_masks",
    "is_nm",
    "magnitude_mask",
    "n_keep",
    "nm_mask",
    "random_mask",
    "scores_mask",
]


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------
def check_sparsity(name, sparsity):
    """Return ``sparsity`` as a float in [0, 1), or raise naming ``name``.

    1 is excluded: a layer with no entry at all is no layer. TypeError for a non-number
    (bools included), ValueError for a number outside [0, 1) (NaN included).
    """
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(
            sparsity, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_count(name, value, low=0, high=None):
    if not is_int(value):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        shown = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer in {shown}, got {value!r}")
    return int(value)


def _check_weight(name, weight):
    """A 2-D float ndarray with finite entries."""
    check_float(name, weight, ndim=2)
    check_finite(name, weight)
    return weight


# ----------------------------------------------------------------------------------------
# counting and the general selection
# ----------------------------------------------------------------------------------------
def n_keep(total, sparsity) -> int:
    """The number of entries a sparsity keeps: ``round(total · (1 − sparsity))``.

    Python's ``round`` rounds half to even (banker's rounding): n_keep(10, 0.75) = 2,
    n_keep(14, 0.75) = 4 (3.5 → 4). ``total`` is a non-negative integer, ``sparsity`` a
    number in [0, 1). The result lies in [0, total].
    """
    total = _check_count("total", total)
    s = check_sparsity("sparsity", sparsity)
    return min(total, max(0, round(total * (1.0 - s))))


def scores_mask(scores, n_keep):
    """Keep the ``n_keep`` largest entries of ``scores``: a bool mask of its shape.

    ``scores`` is a float32/float64 array of any shape, finite; the order among entries is
    score descending, then flat (row-major) index ascending — on equal scores the lower
    index is kept. Exactly ``n_keep`` entries are True (0 <= n_keep <= scores.size).
    """
    check_float("scores", scores)
    check_finite("scores", scores)
    k = _check_count("n_keep", n_keep, 0, scores.size)
    flat = np.ascontiguousarray(scores).reshape(-1)  # (size,) row-major
    mask = np.zeros(scores.size, dtype=bool)
    mask[topk_indices(flat, k)] = True
    return mask.reshape(scores.shape)


# ----------------------------------------------------------------------------------------
# the criteria
# ----------------------------------------------------------------------------------------
def magnitude_mask(weight, sparsity):
    """Keep the n_keep(out · in, s) entries of largest |W| (ties → lower flat index).

    The kept set K satisfies min_{K} |W| ≥ max_{not K} |W| (Han et al. 2015, one layer).
    ``weight`` (out, in) float, finite; returns bool (out, in).
    """
    _check_weight("weight", weight)
    return scores_mask(np.abs(weight), n_keep(weight.size, sparsity))


def random_mask(shape, sparsity, rng):
    """Exactly n_keep(∏ shape, s) True entries at positions drawn uniformly at random.

    The positions are a uniform random subset of the cells (``rng.choice`` without
    replacement), drawn from the ``numpy.random.Generator`` ``rng``; nothing else is
    drawn. ``shape`` is a tuple of non-negative integers, e.g. (out, in).
    """
    if not isinstance(shape, tuple) or not all(is_int(d) and d >= 0 for d in shape):
        raise TypeError(f"shape: expected a tuple of non-negative integers, got {shape!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    total = int(np.prod(shape, dtype=np.int64))
    k = n_keep(total, sparsity)
    mask = np.zeros(total, dtype=bool)
    mask[rng.choice(total, size=k, replace=False)] = True
    return mask.reshape(shape)


def global_magnitude_masks(weights, sparsity):
    """One magnitude threshold across layers: keep the K largest |W| of all of them.

    ``weights`` maps a name to a 2-D float array; K = n_keep(Σ_l size_l, s) exactly.
    All the entries are ranked together by |W| descending, ties broken by (the layer's
    position in the dict, then the flat index) — i.e. by position in the concatenation
    of the flattened weights in dict order. Layers then keep different fractions: those
    with larger weights keep more. Returns {name: bool mask of that weight's shape}, in
    the same order.
    """
    if not isinstance(weights, dict):
        raise TypeError(f"weights: expected a dict name -> ndarray, got {type(weights).__name__}")
    for name, w in weights.items():
        _check_weight(f"weights[{name!r}]", w)
    if not weights:
        check_sparsity("sparsity", sparsity)
        return {}
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])  # (Σ size,)
    keep = np.zeros(flat.size, dtype=bool)
    keep[topk_indices(flat, n_keep(flat.size, sparsity))] = True
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.size].reshape(w.shape)
        start += w.size
    return masks


def _check_nm(n, m):
    m = _check_count("m", m, 1)
    if not is_int(n):
        raise TypeError(f"n: expected an integer, got {n!r}")
    if not 0 <= n <= m:
        raise ValueError(f"n: expected an integer in [0, m={m}], got {n!r}")
    return int(n), m


def nm_mask(weight, n, m):
    """N:M sparsity along the input dimension: in every group of m consecutive entries
    of a row, keep the n of largest |W| (ties → the lower column).

    Groups are W[o, g·m : (g+1)·m] for g = 0 … in/m − 1, so ``in_features`` must be a
    multiple of m. Every group keeps exactly n, so the density is exactly n/m (2:4 is
    NVIDIA's sparse tensor core format: 50 %). Returns bool (out, in); see [`is_nm`][refsparse.prune.criteria.is_nm].
    """
    _check_weight("weight", weight)
    n, m = _check_nm(n, m)
    out, inp = weight.shape
    if inp % m:
        raise ValueError(f"weight: expected in_features (the last axis) divisible by m={m}, "
                         f"got shape {weight.shape}")
    groups = np.ascontiguousarray(np.abs(weight)).reshape(-1, m)  # (out · in/m, m)
    return group_topn_mask(groups, n).reshape(out, inp)


def is_nm(mask, n, m) -> bool:
    """True ⇔ ``mask`` (out, in) is N:M along its last axis: in % m == 0 and every group
    of m consecutive entries of a row holds *exactly* n True.

    "Exactly", not "at most": the N:M masks of [`nm_mask`][refsparse.prune.criteria.nm_mask] store n entries per
    group, stored zeros included. A shape whose last axis is not a multiple of m is not
    N:M (False, not an error).
    """
    check_bool("mask", mask, ndim=2)
    n, m = _check_nm(n, m)
    if mask.shape[1] % m:
        return False
    return bool((mask.reshape(-1, m).sum(axis=1) == n).all())


def block_mask(weight, sparsity, block=(1, 4)):
    """Keep whole (bh × bw) blocks: the n_keep(n_blocks, s) blocks of largest Σ|W|.

    The weight (out, in) is tiled by blocks B_{r,c} = W[r·bh:(r+1)·bh, c·bw:(c+1)·bw]
    (out % bh == 0 and in % bw == 0 required); a block's score is the sum of |W| over its
    bh · bw entries; n_blocks = (out/bh)(in/bw). Ties go to the lower block index in
    row-major order over the block grid. Every kept block is kept whole, so the kept
    count is n_keep(n_blocks, s) · bh · bw — which may differ from n_keep(out · in, s).
    Returns bool (out, in).
    """
    _check_weight("weight", weight)
    if not (isinstance(block, tuple) and len(block) == 2 and all(is_int(b) and b >= 1 for b in block)):
        raise TypeError(f"block: expected a tuple (bh, bw) of two positive integers, got {block!r}")
    bh, bw = int(block[0]), int(block[1])
    out, inp = weight.shape
    if out % bh or inp % bw:
        raise ValueError(f"weight: expected a shape divisible by block {(bh, bw)}, got {weight.shape}")
    rb, cb = out // bh, inp // bw
    scores = np.abs(weight).reshape(rb, bh, cb, bw).sum(axis=(1, 3))  # (rb, cb) Σ|W| per block
    keep = scores_mask(scores, n_keep(rb * cb, sparsity))  # (rb, cb)
    return np.repeat(np.repeat(keep, bh, axis=0), bw, axis=1)  # (out, in)
