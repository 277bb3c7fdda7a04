"""Selection: the k largest scores, as ascending positions; per-group top-n masks.

Every pruning criterion reduces to "keep the entries with the largest scores". These
kernels do that selection, with one tie rule everywhere: **on equal scores the lower
(flat, row-major) index wins**. With it the chosen set is a function of the scores alone,
so the kernel and its NumPy twin agree exactly, not just up to ties.

Arrays (one dtype, float32 or float64):

    scores  (n,)       the scores of n candidates, finite (no NaN: the callers check)
    groups  (G, m)     G groups of m candidates each (N:M: the groups of m consecutive
                       inputs of every row, W.reshape(-1, m))

Outputs are int64 positions sorted ascending — CSR order, ready to build a canonical CSR
pattern — or bool masks.

NumPy twins: [`topk_indices_numpy`][refsparse.kernels.select.topk_indices_numpy] and [`group_topn_mask_numpy`][refsparse.kernels.select.group_topn_mask_numpy], in this file:
a stable sort of the negated scores (stable, so equal scores keep index order and the
lower index comes first), then the first k. The tests hold each kernel to its twin
exactly, ties included.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["group_topn_mask", "group_topn_mask_numpy", "topk_indices", "topk_indices_numpy"]


@numba.njit(cache=True)
def topk_indices(scores, k):
    """The positions of the k largest entries of ``scores``, sorted ascending.

    Arguments::

        scores  (n,)   float32 or float64, finite; read only
        k              0 <= k <= n (a ValueError otherwise)
        returns (k,)   int64, strictly ascending

    Ties: among equal scores the lower position is taken first, i.e. the result is the
    first k positions of the order "score descending, then position ascending".

    Algorithm, O(n) on average (no full sort):

    1. t = the k-th largest score: ``np.partition`` (introselect) of a copy, at ascending
       rank n − k;
    2. every score > t is kept: that is g < k positions;
    3. of the scores == t (at least k − g of them, t itself among them), the k − g
       lowest positions are kept;

    one pass in position order does 2 and 3 and writes the result already sorted.

    Memory: one copy of ``scores`` (the partition) and the output.
    NumPy twin: [`topk_indices_numpy`][refsparse.kernels.select.topk_indices_numpy].
    """
    n = scores.size
    if k < 0 or k > n:
        raise ValueError("k: expected 0 <= k <= scores.size")
    out = np.empty(k, dtype=np.int64)
    if k == 0:
        return out
    if k == n:
        for i in range(n):
            out[i] = i
        return out
    t = np.partition(scores, n - k)[n - k]  # the k-th largest score
    greater = 0
    for i in range(n):
        if scores[i] > t:
            greater += 1
    ties_left = k - greater  # >= 1: how many scores equal to t are kept, lowest first
    j = 0
    for i in range(n):
        s = scores[i]
        if s > t:
            out[j] = i
            j += 1
        elif s == t and ties_left > 0:
            out[j] = i
            j += 1
            ties_left -= 1
    return out


def topk_indices_numpy(scores, k):
    """NumPy twin of [`topk_indices`][refsparse.kernels.select.topk_indices]: a stable argsort of −scores, the first k, sorted.

    A stable sort keeps equal scores in position order, so the lower position wins a tie.
    O(n log n).
    """
    scores = np.asarray(scores)
    if not 0 <= k <= scores.size:
        raise ValueError(f"k: expected 0 <= k <= scores.size = {scores.size}, got {k}")
    order = np.argsort(-scores, kind="stable")  # (n,) best first; ties by position
    return np.sort(order[:k]).astype(np.int64)


@numba.njit(parallel=True, cache=True)
def group_topn_mask(groups, n):
    """In every row of ``groups``, mark the n largest entries (ties → the lower column).

    Arguments::

        groups  (G, m)     float32 or float64, finite; read only
        n                  0 <= n <= m (a ValueError otherwise)
        returns (G, m)     bool: exactly n True in every row

    Entry (g, i) is kept ⇔ its rank r(g, i) = #{i' : s[g, i'] > s[g, i], or
    s[g, i'] = s[g, i] and i' < i} is below n — the rank in the order "score descending,
    then column ascending". Counting the rank takes O(m) per entry (stopped early once it
    reaches n), so O(G · m · min(m, …)) ≤ O(G · m²) in all: meant for the small m of N:M
    sparsity (2:4, 4:8, 8:16). Rows are independent: ``prange`` over G.

    NumPy twin: [`group_topn_mask_numpy`][refsparse.kernels.select.group_topn_mask_numpy].
    """
    G, m = groups.shape
    if n < 0 or n > m:
        raise ValueError("n: expected 0 <= n <= m (groups.shape[1])")
    keep = np.zeros((G, m), dtype=np.bool_)
    for g in numba.prange(G):
        row = groups[g]  # (m,)
        for i in range(m):
            s = row[i]
            rank = 0
            for i2 in range(m):
                s2 = row[i2]
                if s2 > s or (s2 == s and i2 < i):
                    rank += 1
                    if rank >= n:
                        break
            keep[g, i] = rank < n
    return keep


def group_topn_mask_numpy(groups, n):
    """NumPy twin of [`group_topn_mask`][refsparse.kernels.select.group_topn_mask]: per row, a stable argsort of −scores, first n."""
    groups = np.asarray(groups)
    G, m = groups.shape
    if not 0 <= n <= m:
        raise ValueError(f"n: expected 0 <= n <= m = {m}, got {n}")
    order = np.argsort(-groups, axis=1, kind="stable")[:, :n]  # (G, n) the kept columns
    keep = np.zeros((G, m), dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
