"""Attention patterns: which keys each query may see, as CSR boolean matrices.

A **pattern** is a ``scipy.sparse.csr_array`` of dtype bool and shape (Tq, Tk) in canonical
format (indices sorted within each row, no duplicates), every stored value True:

    entry (i, j) stored  ⇔  query i may attend to key j.

A row with no stored entry is allowed: attention gives it a zero output and zero gradients.

**Per-head patterns** are a Python ``list`` (or ``tuple``) of patterns of one shape, one per head.
[`is_per_head`][refsparse.patterns.is_per_head] tells the two apart and [`heads`][refsparse.patterns.heads] turns either into a list of ``n_heads``
patterns (a single pattern is shared by every head; a list of k patterns, k dividing n_heads, is
cycled: head h takes ``p[h % k]``, the alternating heads of Child et al. 2019, §4).

Nothing here builds a dense T × T array: every pattern is written straight into ``indptr`` and
``indices`` with vectorised NumPy, from the number of keys in each row and a formula for the key at
each position of the row (`_from_row_formula`). Building ``local(16384, 128)`` takes a few
tens of milliseconds. The index arrays are int32 unless a dimension or the number of entries needs
int64 (scipy's own rule); ``indptr`` and ``indices`` always share one dtype.

Legend: T sequence length (Tq queries, Tk keys), i a query, j a key, l a stride or block length,
c summary columns per block (Child et al.'s "fixed"), b a block size, nb = T / b blocks.

The patterns and their papers (formulas in each docstring and in [docs/patterns.md](../patterns.md)):

- [`full`][refsparse.patterns.full], [`causal`][refsparse.patterns.causal];
- [`local`][refsparse.patterns.local], [`dilated`][refsparse.patterns.dilated] — sliding windows (Beltagy et al. 2020, Longformer);
- [`strided`][refsparse.patterns.strided], [`fixed`][refsparse.patterns.fixed] — Child et al. 2019, "Generating Long Sequences with Sparse
  Transformers", §4;
- [`global_tokens`][refsparse.patterns.global_tokens], [`random`][refsparse.patterns.random] — global and random attention (Longformer; BigBird);
- [`bigbird`][refsparse.patterns.bigbird] — window + global + random at block granularity (Zaheer et al. 2020);
- [`block_sparse`][refsparse.patterns.block_sparse] — a block layout (Gray, Radford & Kingma 2017, block-sparse GPU kernels);
- [`union`][refsparse.patterns.union], [`intersect`][refsparse.patterns.intersect], [`causal_only`][refsparse.patterns.causal_only], [`with_padding`][refsparse.patterns.with_padding] — composition;
- [`parse`][refsparse.patterns.parse] — the text spec (``"local:window=64+global:indices=0"``) used by the CLI and configs;
- [`stats`][refsparse.patterns.stats], [`reach`][refsparse.patterns.reach], [`to_text`][refsparse.patterns.to_text] — looking at a pattern;
- [`transpose_with_map`][refsparse.patterns.transpose_with_map] — the transposed structure, for kernels that run over keys
  ([`transpose_structure`][refsparse.patterns.transpose_structure], the same for any canonical CSR array, e.g. a sparse weight).
"""

from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp

from . import csr

__all__ = [
    "full",
    "causal",
    "local",
    "dilated",
    "strided",
    "fixed",
    "global_tokens",
    "random",
    "bigbird",
    "block_sparse",
    "union",
    "intersect",
    "causal_only",
    "with_padding",
    "mask_keys",
    "as_pattern",
    "check_pattern",
    "is_per_head",
    "heads",
    "parse",
    "parse_spec",
    "format_spec",
    "spec_names",
    "stats",
    "reach",
    "to_text",
    "transpose_structure",
    "transpose_with_map",
]

_INT32_MAX = np.iinfo(np.int32).max
_INT_MAX = 2**62  # the largest int argument the builders take: their int64 arithmetic stays exact


# ----------------------------------------------------------------------------------------
# argument checks (each error names the argument, what was expected and what came)


def _check_int(name, value, low=None, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an int <= {high}, got {value}")
    if value > _INT_MAX:  # NumPy's int64 arithmetic would overflow; no pattern needs more
        raise ValueError(f"{name}: expected an int <= 2**62, got {value}")
    return value


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_rng(name, seed):
    """An int seed (>= 0) or a numpy Generator -> a numpy Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"{name}: expected an int seed or a numpy.random.Generator, got {type(seed).__name__}"
        )
    if seed < 0:
        raise ValueError(f"{name}: expected a seed >= 0, got {seed}")
    return np.random.default_rng(int(seed))


def check_pattern(name, p, *, shape=None):
    """Check that ``p`` is a single pattern (see the module docstring); return it.

    Raises TypeError for anything but a bool ``csr_array`` and ValueError for a pattern that is
    not 2-D, not canonical (unsorted indices or duplicates), stores a False value, or whose shape
    differs from ``shape`` (when given). Use [`as_pattern`][refsparse.patterns.as_pattern] to convert other inputs.
    """
    if not isinstance(p, sp.csr_array):
        raise TypeError(
            f"{name}: expected a scipy.sparse.csr_array of dtype bool (refsparse.patterns.as_pattern "
            f"converts other inputs), got {type(p).__name__}"
        )
    if p.dtype != np.bool_:
        raise TypeError(f"{name}: expected a csr_array of dtype bool, got dtype {p.dtype}")
    if p.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D pattern, got {p.ndim} dimensions")
    if shape is not None and tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(p.shape)}")
    if not p.has_canonical_format:
        raise ValueError(
            f"{name}: expected canonical format (sorted indices, no duplicates), got a pattern "
            f"without it; call as_pattern({name}) first"
        )
    if not p.data.all():
        raise ValueError(
            f"{name}: expected every stored value True (stored ⇔ allowed), got "
            f"{int(np.count_nonzero(~p.data))} stored False; call as_pattern({name}) first"
        )
    return p


def _check_any(name, p, *, shape=None):
    """A single pattern or a per-head list of patterns of one shape."""
    if is_per_head(p):
        if len(p) == 0:
            raise ValueError(f"{name}: expected a pattern or a non-empty list of patterns, got []")
        check_pattern(f"{name}[0]", p[0], shape=shape)
        for h, ph in enumerate(p[1:], 1):
            check_pattern(f"{name}[{h}]", ph, shape=p[0].shape)
        return list(p)
    return check_pattern(name, p, shape=shape)


# ----------------------------------------------------------------------------------------
# construction: indptr/indices straight from per-row counts, never a dense T × T array


def _csr(t_q, t_k, indptr, indices):
    """A canonical bool csr_array from int64 ``indptr`` (t_q + 1) and sorted ``indices`` (nnz)."""
    nnz = int(indptr[-1])
    idx = np.int32 if max(t_q, t_k, nnz) <= _INT32_MAX else np.int64
    return sp.csr_array(
        (np.ones(nnz, dtype=bool), indices.astype(idx, copy=False), indptr.astype(idx, copy=False)),
        shape=(t_q, t_k),
    )


def _from_row_formula(t_q, t_k, counts, col_of):
    """Build a pattern from the number of keys in each row and a formula for each key.

    counts : int array (t_q,), keys in row i
    col_of : function (rows, pos) -> cols, all int64 arrays (nnz,): the key at position ``pos``
             (0, 1, ... counts[i] - 1) of row ``rows``; it must be increasing in pos within a row.
    """
    counts = np.asarray(counts, dtype=np.int64)  # (Tq,)
    indptr = np.zeros(t_q + 1, dtype=np.int64)  # (Tq + 1,)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    rows = np.repeat(np.arange(t_q, dtype=np.int64), counts)  # (nnz,) the row of each entry
    pos = np.arange(nnz, dtype=np.int64) - indptr[rows]  # (nnz,) its position in the row
    cols = col_of(rows, pos) if nnz else np.zeros(0, dtype=np.int64)
    return _csr(t_q, t_k, indptr, cols)


def _from_ranges(t_q, t_k, start, stop):
    """Row i holds the keys start[i] <= j < stop[i] (clipped to [0, t_k))."""
    start = np.clip(np.asarray(start, dtype=np.int64), 0, t_k)
    stop = np.clip(np.asarray(stop, dtype=np.int64), 0, t_k)
    counts = np.maximum(stop - start, 0)
    return _from_row_formula(t_q, t_k, counts, lambda r, pos: start[r] + pos)


def _rows_of(p):
    """The row of every stored entry, int64 (nnz,)."""
    return csr.entry_rows(p.indptr)


def _keys(p):
    """Every stored entry as one sorted int64 key i·Tk + j (row-major order is sorted order)."""
    return _rows_of(p) * p.shape[1] + p.indices.astype(np.int64)


def _from_keys(t_q, t_k, keys):
    """A pattern from sorted, unique int64 keys i·Tk + j."""
    rows = keys // t_k if t_k else keys
    indptr = np.zeros(t_q + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=t_q), out=indptr[1:])
    return _csr(t_q, t_k, indptr, keys - rows * t_k)


def _union_keys(a, b):
    """Sorted unique union of two sorted unique int64 arrays (a stable sort merges two runs)."""
    c = np.concatenate([a, b])
    c.sort(kind="stable")  # timsort: two sorted runs merge in linear time
    return c[np.concatenate([[True], c[1:] != c[:-1]])] if c.size else c


def _intersect_keys(a, b):
    """Sorted intersection of two sorted unique int64 arrays."""
    if not a.size or not b.size:
        return a[:0]
    at = np.minimum(np.searchsorted(b, a), b.size - 1)
    return a[b[at] == a]


def _keep(p, keep):
    """The entries of pattern ``p`` where the bool array ``keep`` (nnz,) is True."""
    t_q, t_k = p.shape
    indptr = np.zeros(t_q + 1, dtype=np.int64)
    np.cumsum(np.bincount(_rows_of(p)[keep], minlength=t_q), out=indptr[1:])
    return _csr(t_q, t_k, indptr, p.indices[keep].astype(np.int64))


# ----------------------------------------------------------------------------------------
# full and causal


def full(t_q, t_k=None):
    """Every query sees every key: (i, j) for all i < Tq, j < Tk.  nnz per row: Tk."""
    t_q = _check_int("t_q", t_q, 1)
    t_k = t_q if t_k is None else _check_int("t_k", t_k, 1)
    return _from_ranges(t_q, t_k, np.zeros(t_q, np.int64), np.full(t_q, t_k, np.int64))


def causal(t_q, t_k=None):
    """Query i sees the keys j <= i.  nnz per row: min(i + 1, Tk).

    Aligned at the top-left corner when Tq != Tk, as torch's ``is_causal=True`` (and
    ``refsparse.functional.causal_mask``): with Tq > Tk the last rows are full; with Tq < Tk the
    last keys are seen by no query.
    """
    t_q = _check_int("t_q", t_q, 1)
    t_k = t_q if t_k is None else _check_int("t_k", t_k, 1)
    i = np.arange(t_q, dtype=np.int64)
    return _from_ranges(t_q, t_k, np.zeros(t_q, np.int64), i + 1)


# ----------------------------------------------------------------------------------------
# sliding windows (Beltagy et al. 2020, Longformer §3.1)


def _dilated(t, window, dilation, causal_):
    i = np.arange(t, dtype=np.int64)  # (T,)
    left = np.minimum(window - 1, i // dilation)  # keys i - k·d, k = 1..left, stay >= 0
    if causal_:
        right = np.zeros(t, dtype=np.int64)
    else:
        right = np.minimum(window - 1, (t - 1 - i) // dilation)  # keys i + k·d stay < T
    # position pos of row i holds the key i + (pos − left[i])·d: increasing in pos
    return _from_row_formula(t, t, left + right + 1, lambda r, pos: r + (pos - left[r]) * dilation)


def local(t, window, causal=True):
    """A sliding window of ``window`` keys on each side of the query, the query included.

        causal=True :  i − window < j <= i          nnz per row: min(i + 1, window)
        causal=False:  |i − j| < window             nnz per row: up to 2·window − 1

    So ``window`` is the same radius in both modes and ``local(t, w, True)`` is exactly
    ``causal_only(local(t, w, False))``. (Longformer's "window size w" is w/2 keys on each side
    and the query: its w is our 2·window − 2.) Every row holds at least the query itself.
    """
    t = _check_int("t", t, 1)
    window = _check_int("window", window, 1)
    return _dilated(t, window, 1, _check_flag("causal", causal))


def dilated(t, window, dilation, causal=True):
    """Longformer's dilated sliding window: ``window`` keys a ``dilation`` apart on each side.

        causal=True :  j = i − k·dilation,  k = 0, 1, ..., window − 1, j >= 0
        causal=False:  j = i ± k·dilation,  k = 0, 1, ..., window − 1, 0 <= j < T

    i.e. (i − j) mod dilation = 0 and |i − j| / dilation < window (and j <= i when causal).
    nnz per row: up to window (causal), up to 2·window − 1 (not causal); the receptive field of
    one row spans (window − 1)·dilation + 1 positions on each side. ``dilation=1`` is [`local`][refsparse.patterns.local].
    """
    t = _check_int("t", t, 1)
    window = _check_int("window", window, 1)
    dilation = _check_int("dilation", dilation, 1)
    return _dilated(t, window, dilation, _check_flag("causal", causal))


# ----------------------------------------------------------------------------------------
# Child et al. 2019, "Generating Long Sequences with Sparse Transformers", §4


def strided(t, stride, per_head=False):
    """Child et al.'s strided pattern with stride l (always causal).

        A1(i) = {j <= i : i − j < l}                  the previous l positions (i included)
        A2(i) = {j <= i : (i − j) mod l = 0}          every l-th position back from i
        strided(i) = A1(i) ∪ A2(i)

    nnz per row: min(i + 1, l) + ⌊i / l⌋ for the union (at most l + ⌊(T − 1)/l⌋ < 2l when
    l >= √T, so O(√T) with l ≈ √T); min(i + 1, l) for A1; ⌊i / l⌋ + 1 for A2.

    The paper writes A1(i) = {t, ..., i} with t = max(0, i − l), which also lists i − l; that
    entry is in A2, so the union is the same either way. Here A1 is exactly ``local(t, l)``.

    per_head=False: one pattern, the union (every head sees A1 ∪ A2).
    per_head=True : the two components ``[A1, A2]``; with [`heads`][refsparse.patterns.heads] the heads alternate
                    (head h takes A1 when h is even, A2 when odd), as in the paper.
    Two layers of either form reach every earlier position: see [`reach`][refsparse.patterns.reach].
    """
    t = _check_int("t", t, 1)
    l = _check_int("stride", stride, 1)
    i = np.arange(t, dtype=np.int64)  # (T,)
    if _check_flag("per_head", per_head):
        a1 = _from_ranges(t, t, i - l + 1, i + 1)
        a2 = _from_row_formula(t, t, i // l + 1, lambda r, pos: r % l + pos * l)
        return [a1, a2]
    # row i: the strided keys i mod l + k·l below the window (k < ⌊i/l⌋, all <= i − l), then
    # the window max(0, i − l + 1) .. i — the two parts are disjoint and in increasing order
    n_far = i // l  # (T,)
    lo = np.maximum(0, i - l + 1)  # (T,)

    def col_of(r, pos):
        return np.where(pos < n_far[r], r % l + pos * l, lo[r] + pos - n_far[r])

    return _from_row_formula(t, t, n_far + (i - lo + 1), col_of)


def fixed(t, block, c, per_head=False):
    """Child et al.'s fixed pattern with block length l and c summary columns (always causal).

        A1(i) = {j <= i : ⌊j / l⌋ = ⌊i / l⌋}          the query's own block, up to i
        A2(i) = {j <= i : j mod l >= l − c}            the last c columns of every block
        fixed(i) = A1(i) ∪ A2(i)

    nnz per row (b = ⌊i / l⌋): b·c + (i − b·l + 1) for the union, i − b·l + 1 for A1, and
    b·c + max(0, i − b·l − (l − c) + 1) for A2. The last block may be shorter than l.
    A2 alone has empty rows (the first l − c queries of block 0): zero output for them.

    per_head=False: one pattern, the union; per_head=True: ``[A1, A2]`` (alternating heads).
    """
    t = _check_int("t", t, 1)
    l = _check_int("block", block, 1)
    c = _check_int("c", c, 1, l)
    i = np.arange(t, dtype=np.int64)  # (T,)
    b = i // l  # (T,) the query's block
    n_sum = b * c  # (T,) summary columns of the earlier blocks

    def summary(pos):  # the pos-th summary column of blocks 0, 1, ...: block pos // c
        return (pos // c) * l + (l - c) + pos % c

    if _check_flag("per_head", per_head):
        a1 = _from_ranges(t, t, b * l, i + 1)
        s0 = b * l + (l - c)  # (T,) the first summary column of the query's own block
        n_own = np.maximum(0, i - s0 + 1)

        def col_a2(r, pos):
            return np.where(pos < n_sum[r], summary(pos), s0[r] + pos - n_sum[r])

        return [a1, _from_row_formula(t, t, n_sum + n_own, col_a2)]

    # row i: summary columns of blocks 0 .. b − 1 (all < b·l), then its own block b·l .. i
    def col_of(r, pos):
        return np.where(pos < n_sum[r], summary(pos), b[r] * l + pos - n_sum[r])

    return _from_row_formula(t, t, n_sum + (i - b * l + 1), col_of)


# ----------------------------------------------------------------------------------------
# global and random attention (Longformer §3.1; BigBird §2)


def _check_indices(name, indices, t):
    arr = np.asarray(indices) if not isinstance(indices, np.ndarray) else indices
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of ints, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected ints, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= t):  # before any cast, which could wrap
        bad = arr[(arr < 0) | (arr >= t)][0]
        raise ValueError(f"{name}: expected indices in [0, {t}), got {bad}")
    return np.unique(arr.astype(np.int64))


def global_tokens(t, indices, causal=False):
    """Global tokens: their rows and their columns are full.

        (i, j) stored  ⇔  i ∈ S or j ∈ S                 (S = indices)
        causal=True: additionally j <= i

    nnz per row: T for a global row and |S| for the others (causal: i + 1 and |S ∩ [0, i]|).
    Meant to be combined with a local pattern by [`union`][refsparse.patterns.union], as in Longformer and BigBird-ITC.
    Duplicate indices are allowed and count once; an empty S gives an empty pattern.
    """
    t = _check_int("t", t, 1)
    s = _check_indices("indices", indices, t)  # (|S|,) sorted, unique
    is_global = np.zeros(t, dtype=bool)
    is_global[s] = True
    i = np.arange(t, dtype=np.int64)
    if _check_flag("causal", causal):
        counts = np.where(is_global, i + 1, np.searchsorted(s, i, side="right"))
    else:
        counts = np.where(is_global, t, s.size)
    s_safe = s if s.size else np.zeros(1, np.int64)  # np.where evaluates both branches

    def col_of(r, pos):
        return np.where(is_global[r], pos, s_safe[np.minimum(pos, s_safe.size - 1)])

    return _from_row_formula(t, t, counts, col_of)


def _sample_rows(rng, n, k):
    """For each row r, k[r] distinct ints drawn uniformly from [0, n[r]), sorted.

    Robert Floyd's algorithm, vectorised over the rows: for s = 0 .. k − 1, with
    m = n − k + s, draw x uniform in [0, m]; keep x unless already chosen, else keep m (which
    cannot have been chosen). Every k-subset comes out with probability 1 / C(n, k).
    Returns (counts (R,), values (Σ k,)) row after row, each row sorted.
    """
    k = np.minimum(k, n)  # (R,)
    kmax = int(k.max()) if k.size else 0
    chosen = np.full((n.size, kmax), -1, dtype=np.int64)  # (R, kmax); −1 = nothing
    for s in range(kmax):
        m = n - k + s  # (R,); rows with s >= k draw too (ignored), so the stream is fixed
        x = rng.integers(0, np.maximum(m, 0) + 1)  # (R,) uniform in [0, m]
        seen = (chosen[:, :s] == x[:, None]).any(axis=1)
        chosen[:, s] = np.where(s < k, np.where(seen, m, x), -1)
    chosen.sort(axis=1)  # the −1s first, then the row's keys in increasing order
    return k, chosen[chosen >= 0]


def random(t, per_row, seed=0, causal=False):
    """``per_row`` keys per query drawn uniformly at random, without replacement.

        row i: a uniform random subset of size min(per_row, n_i) of the n_i available keys,
               n_i = T (causal=False) or i + 1 (causal=True, keys j <= i)

    nnz per row: min(per_row, n_i). Deterministic given ``seed`` (an int, or a
    numpy.random.Generator whose state it advances). BigBird's random attention at token level.
    """
    t = _check_int("t", t, 1)
    per_row = _check_int("per_row", per_row, 0)
    rng = _check_rng("seed", seed)
    i = np.arange(t, dtype=np.int64)
    n = i + 1 if _check_flag("causal", causal) else np.full(t, t, dtype=np.int64)
    counts, cols = _sample_rows(rng, n, np.full(t, per_row, dtype=np.int64))
    return _from_row_formula(t, t, counts, lambda r, pos: cols)  # cols: row after row, sorted


# ----------------------------------------------------------------------------------------
# block patterns: block-sparse layouts (Gray et al. 2017) and BigBird (Zaheer et al. 2020)


def block_sparse(layout, block):
    """A block-sparse pattern: each True of ``layout`` is a dense block × block block.

        (i, j) stored  ⇔  layout[⌊i / block⌋, ⌊j / block⌋]

    layout : bool ndarray (nb_q, nb_k); the pattern has shape (nb_q·block, nb_k·block).
    nnz per row: block · (number of True in the row's layout row). The layout is small
    (T / block on a side), so it is a dense array; the pattern itself is never dense.
    """
    if not isinstance(layout, np.ndarray) or isinstance(layout, np.matrix):
        raise TypeError(f"layout: expected a bool numpy.ndarray, got {type(layout).__name__}")
    if layout.dtype != np.bool_:
        raise TypeError(f"layout: expected dtype bool, got {layout.dtype}")
    if layout.ndim != 2 or 0 in layout.shape:
        raise ValueError(f"layout: expected a non-empty 2-D array (nb_q, nb_k), got shape {layout.shape}")
    b = _check_int("block", block, 1)
    nb_q, nb_k = layout.shape
    bptr = np.zeros(nb_q + 1, dtype=np.int64)  # (nb_q + 1,) CSR of the layout
    np.cumsum(layout.sum(axis=1), out=bptr[1:])
    bcols = np.nonzero(layout)[1].astype(np.int64)  # row-major: sorted within each block row
    a = np.arange(nb_q * b, dtype=np.int64) // b  # (Tq,) the block row of each query

    def col_of(r, pos):  # pos // b-th block of the row's block row, offset pos mod b in it
        return bcols[bptr[a[r]] + pos // b] * b + pos % b

    return _from_row_formula(nb_q * b, nb_k * b, b * (bptr[a + 1] - bptr[a]), col_of)


def bigbird(t, block, window_blocks=3, global_blocks=2, random_blocks=3, seed=0, causal=False):
    """BigBird-ITC: window + global + random attention, in blocks.

    Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences", §2 and its blocked
    implementation.

    With nb = T / block blocks, a the query's block and β the key's block, block (a, β) is on when

        window :  |a − β| <= window_blocks // 2          (causal: 0 <= a − β < window_blocks)
        global :  a < global_blocks  or  β < global_blocks
        random :  β is one of random_blocks blocks drawn uniformly, without replacement, for
                  block row a among the blocks not already on (causal: only β < a); clipped to
                  what is available; none for global rows (already full)

    and causal=True keeps only j <= i at token level, so the diagonal blocks are triangular.
    Not causal, window_blocks must be odd (a centred window). Global blocks are the first
    ``global_blocks`` blocks (the reference implementation makes the first and the last global).
    nnz per row (not causal, away from the edges): block · (window_blocks + global_blocks +
    random_blocks), and T for a global row. T must be a multiple of ``block``.
    """
    t = _check_int("t", t, 1)
    b = _check_int("block", block, 1)
    if t % b:
        raise ValueError(f"block: expected a divisor of t={t} (BigBird works in whole blocks), got {b}")
    nb = t // b
    w = _check_int("window_blocks", window_blocks, 1)
    g = _check_int("global_blocks", global_blocks, 0, nb)
    r = _check_int("random_blocks", random_blocks, 0)
    rng = _check_rng("seed", seed)
    causal_ = _check_flag("causal", causal)
    if not causal_ and w % 2 == 0:
        raise ValueError(f"window_blocks: expected an odd int (a centred window) when not causal, got {w}")

    a = np.arange(nb)[:, None]  # (nb, 1) query block
    beta = np.arange(nb)[None, :]  # (1, nb) key block
    if causal_:
        layout = (a - beta >= 0) & (a - beta < w)  # (nb, nb) trailing window
    else:
        layout = np.abs(a - beta) <= w // 2  # (nb, nb) centred window
    layout |= (a < g) | (beta < g)  # global rows and columns
    if causal_:
        layout &= beta <= a
    # random blocks: a uniform subset of the blocks still off (causal: and before a) per row
    avail = ~layout & (beta <= a) if causal_ else ~layout  # (nb, nb)
    key = rng.random((nb, nb))  # (nb, nb) a random order of the candidates, others last
    key[~avail] = np.inf
    rank = np.empty((nb, nb), dtype=np.int64)
    np.put_along_axis(rank, np.argsort(key, axis=1, kind="stable"), np.arange(nb)[None, :], axis=1)
    layout |= avail & (rank < r)
    p = block_sparse(layout, b)
    return causal_only(p) if causal_ else p


# ----------------------------------------------------------------------------------------
# composition


def _broadcast_heads(name, ps):
    """Check patterns (single or per-head) and return (n_heads or None, list of checked)."""
    checked = [_check_any(f"{name}[{k}]", p) for k, p in enumerate(ps)]
    lengths = {len(p) for p in checked if isinstance(p, list)}
    if len(lengths) > 1:
        raise ValueError(f"{name}: expected per-head lists of one length, got lengths {sorted(lengths)}")
    return (lengths.pop() if lengths else None), checked


def _combine(name, ps, op):
    if not ps:
        raise ValueError(f"{name}: expected at least one pattern, got none")
    n_heads, checked = _broadcast_heads(name, ps)
    if n_heads is not None:  # per-head: combine head by head, broadcasting single patterns
        return [
            _combine(name, [p[h] if isinstance(p, list) else p for p in checked], op) for h in range(n_heads)
        ]
    shape = checked[0].shape
    for k, p in enumerate(checked[1:], 1):
        if p.shape != shape:
            raise ValueError(f"{name}[{k}]: expected shape {shape} (the shape of {name}[0]), got {p.shape}")
    keys = _keys(checked[0])
    for p in checked[1:]:
        keys = op(keys, _keys(p))
    return _from_keys(shape[0], shape[1], keys)


def union(*ps):
    """The entries stored in any of the patterns: (i, j) ∈ p1 ∪ p2 ∪ ...

    All of one shape. If some arguments are per-head lists (all of one length H), the union is
    taken head by head, single patterns joining every head, and the result is a list of H.
    """
    return _combine("ps", ps, _union_keys)


def intersect(*ps):
    """The entries stored in all of the patterns: (i, j) ∈ p1 ∩ p2 ∩ ... (per-head as in union).

    To make a large pattern causal use [`causal_only`][refsparse.patterns.causal_only], which does not build ``causal(T)``.
    """
    return _combine("ps", ps, _intersect_keys)


def causal_only(pattern):
    """Keep the entries with j <= i: ``intersect(pattern, causal(Tq, Tk))`` without building causal."""
    p = _check_any("pattern", pattern)
    if isinstance(p, list):
        return [causal_only(ph) for ph in p]
    return _keep(p, p.indices.astype(np.int64) <= _rows_of(p))


def with_padding(pattern, lengths):
    """Key padding: one pattern per batch element b, without the keys j >= lengths[b].

        out[b] = {(i, j) ∈ pattern : j < lengths[b]}

    lengths : ints (B,), each in [0, Tk]. Returns a list of B patterns (of B per-head lists when
    ``pattern`` is per-head). Rows can become empty — a query whose every key is padding; the
    attention output for such a row is zero, with zero gradients, never NaN. Padded *queries*
    keep their rows: their outputs are ignored by a loss that ignores the padding.
    """
    p = _check_any("pattern", pattern)
    t_k = (p[0] if isinstance(p, list) else p).shape[1]
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths: expected a 1-D sequence of ints (B,), got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"lengths: expected ints, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > t_k):
        bad = arr[(arr < 0) | (arr > t_k)][0]
        raise ValueError(f"lengths: expected values in [0, {t_k}] (Tk), got {bad}")

    def pad(ph, n):
        return _keep(ph, ph.indices < n)

    if isinstance(p, list):
        return [[pad(ph, int(n)) for ph in p] for n in arr]
    return [pad(p, int(n)) for n in arr]


def mask_keys(pattern, key_padding_mask):
    """Key padding given as a boolean mask, True = padded (torch ``key_padding_mask``'s convention).

        out[b] = {(i, j) ∈ pattern : not key_padding_mask[b, j]}

    key_padding_mask : bool (B, Tk). Returns a list of B patterns (of B per-head lists when
    ``pattern`` is per-head), like [`with_padding`][refsparse.patterns.with_padding], which takes lengths instead. Rows can
    become empty; their attention output is zero, with zero gradients.
    """
    p = _check_any("pattern", pattern)
    t_k = (p[0] if isinstance(p, list) else p).shape[1]
    m = np.asarray(key_padding_mask)
    if m.dtype != np.bool_:
        raise TypeError(f"key_padding_mask: expected dtype bool, got {m.dtype}")
    if m.ndim != 2 or m.shape[1] != t_k:
        raise ValueError(f"key_padding_mask: expected shape (B, {t_k}), got {m.shape}")

    def drop(ph, padded):
        return _keep(ph, ~padded[ph.indices])

    if isinstance(p, list):
        return [[drop(ph, row) for ph in p] for row in m]
    return [drop(p, row) for row in m]


def as_pattern(x):
    """Any 2-D boolean ndarray or scipy sparse array/matrix -> a canonical pattern.

    The entries are x's nonzero values (True for a bool input); explicit zeros and stored False
    are dropped, duplicates merged. Meant for small, hand-made patterns and tests.
    """
    if isinstance(x, np.ndarray):
        if x.dtype != np.bool_:
            raise TypeError(f"x: expected a bool ndarray or a scipy sparse array, got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"x: expected 2 dimensions, got shape {x.shape}")
        m = sp.csr_array(x)
    elif sp.issparse(x):
        if x.ndim != 2:
            raise ValueError(f"x: expected 2 dimensions, got shape {x.shape}")
        m = sp.csr_array(x, copy=True)
        m.sum_duplicates()
    else:
        raise TypeError(f"x: expected a bool ndarray or a scipy sparse array, got {type(x).__name__}")
    m.sort_indices()
    keep = m.data != 0
    t_q, t_k = m.shape
    rows = np.repeat(np.arange(t_q, dtype=np.int64), np.diff(m.indptr))
    return _from_keys(t_q, t_k, rows[keep] * t_k + m.indices[keep].astype(np.int64))


# ----------------------------------------------------------------------------------------
# per-head patterns


def is_per_head(p):
    """True when ``p`` is a per-head pattern: a list or tuple of patterns, one per head."""
    return isinstance(p, (list, tuple))


def heads(p, n_heads, *, shape=None, name="p"):
    """The pattern of every head: a list of ``n_heads`` patterns.

    A single pattern is shared by all heads (the same object n_heads times). A per-head list of
    n_heads patterns is returned as a list; a list of k patterns with k dividing n_heads is
    cycled, head h taking p[h % k] — the paper's alternating heads (strided/fixed with
    per_head=True give k = 2). Any other length raises ValueError. ``shape``, when given, is the
    expected (Tq, Tk) of every pattern; ``name`` is what error messages call ``p``.
    """
    n_heads = _check_int("n_heads", n_heads, 1)
    p = _check_any(name, p, shape=shape)
    if not isinstance(p, list):
        return [p] * n_heads
    if n_heads % len(p):
        raise ValueError(
            f"{name}: expected a per-head list of {n_heads} patterns (or of a divisor of {n_heads}, "
            f"cycled), got {len(p)}"
        )
    return [p[h % len(p)] for h in range(n_heads)]


# ----------------------------------------------------------------------------------------
# the text spec: "name:key=value,key=value+name:..."

_REQUIRED = object()

# name -> (builder(t, **params), {key: (kind, default)}); kinds: int, bool, ints ('/'-separated)
_SPECS = {
    "full": (lambda t: full(t), {}),
    "causal": (lambda t: causal(t), {}),
    "local": (local, {"window": ("int", _REQUIRED), "causal": ("bool", True)}),
    "dilated": (
        dilated,
        {"window": ("int", _REQUIRED), "dilation": ("int", _REQUIRED), "causal": ("bool", True)},
    ),
    "strided": (strided, {"stride": ("int", _REQUIRED), "per_head": ("bool", False)}),
    "fixed": (fixed, {"block": ("int", _REQUIRED), "c": ("int", _REQUIRED), "per_head": ("bool", False)}),
    "global": (global_tokens, {"indices": ("ints", _REQUIRED), "causal": ("bool", False)}),
    "random": (
        random,
        {"per_row": ("int", _REQUIRED), "seed": ("int", 0), "causal": ("bool", False)},
    ),
    "bigbird": (
        bigbird,
        {
            "block": ("int", _REQUIRED),
            "window_blocks": ("int", 3),
            "global_blocks": ("int", 2),
            "random_blocks": ("int", 3),
            "seed": ("int", 0),
            "causal": ("bool", False),
        },
    ),
}

_INT_RE = re.compile(r"[+-]?\d+\Z")


def spec_names():
    """The pattern names the text spec knows, in a stable order."""
    return tuple(_SPECS)


def _parse_value(name, key, kind, text):
    where = f"spec: {name}:{key}"
    if kind == "int":
        if not _INT_RE.match(text):
            raise ValueError(f"{where}: expected an int, got {text!r}")
        return int(text)
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected true or false, got {text!r}")
    parts = text.split("/")  # ints
    if not all(_INT_RE.match(s) for s in parts):
        raise ValueError(f"{where}: expected ints separated by '/', e.g. 0/64/128, got {text!r}")
    return [int(s) for s in parts]


def parse_spec(spec):
    """Parse a text spec into a list of (name, params) terms, without building anything.

    Grammar:   spec := term ('+' term)*      term := name [':' key '=' value (',' key '=' value)*]

    Values are ints, booleans (true/false) or, for ``global:indices``, ints separated by '/'
    (``global:indices=0/64/128``). Only the keys given appear in params (defaults are the
    functions'). Raises ValueError naming the valid names or keys for anything unknown, a
    missing required key, a repeated key or a malformed value.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec: expected a str, got {type(spec).__name__}")
    terms = []
    for term in spec.split("+"):
        term = term.strip()
        if not term:
            raise ValueError(f"spec: expected 'name[:key=value,...]' terms joined by '+', got {spec!r}")
        name, _, args = term.partition(":")
        name = name.strip()
        if name not in _SPECS:
            raise ValueError(f"spec: unknown pattern {name!r}; expected one of {', '.join(_SPECS)}")
        schema = _SPECS[name][1]
        params = {}
        for item in args.split(",") if args.strip() else []:
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or not key or not value:
                raise ValueError(f"spec: {name}: expected key=value, got {item.strip()!r}")
            if key not in schema:
                valid = ", ".join(schema) if schema else "none"
                raise ValueError(f"spec: {name}: unknown key {key!r}; expected one of: {valid}")
            if key in params:
                raise ValueError(f"spec: {name}: key {key!r} given twice")
            params[key] = _parse_value(name, key, schema[key][0], value)
        missing = [k for k, (_, d) in schema.items() if d is _REQUIRED and k not in params]
        if missing:
            raise ValueError(f"spec: {name}: missing required key(s) {', '.join(missing)}")
        terms.append((name, params))
    return terms


def format_spec(terms):
    """The text spec of a list of (name, params) terms; ``format_spec(parse_spec(s))`` normalises s."""
    out = []
    for name, params in terms:
        if name not in _SPECS:
            raise ValueError(f"terms: unknown pattern {name!r}; expected one of {', '.join(_SPECS)}")
        items = []
        for key, value in params.items():
            if isinstance(value, (bool, np.bool_)):
                text = "true" if value else "false"
            elif isinstance(value, (list, tuple, np.ndarray)):
                text = "/".join(str(int(v)) for v in value)
            else:
                text = str(int(value))
            items.append(f"{key}={text}")
        out.append(name + (":" + ",".join(items) if items else ""))
    spec = "+".join(out)
    # the spec must say what it was given: unknown keys and values that did not survive the
    # conversion (3.7 written as 3) are refused, as parse_spec and the builders refuse them
    for (name, params), (_, parsed) in zip(terms, parse_spec(spec)):
        for key, value in params.items():
            same = (list(map(int, value)) == list(parsed[key]) if isinstance(value, (list, tuple, np.ndarray))
                    else parsed[key] == value)
            if not same:
                raise ValueError(f"terms: {name} {key}={value!r} is not a value its spec can hold")
    return spec


def parse(spec, t):
    """Build the pattern of a text spec for sequence length ``t``.

    Examples: ``"full"``, ``"causal"``, ``"local:window=64"``, ``"local:window=64,causal=false"``,
    ``"dilated:window=8,dilation=2"``, ``"strided:stride=16"``, ``"strided:stride=16,per_head=true"``,
    ``"fixed:block=16,c=2"``, ``"global:indices=0/64"``, ``"random:per_row=8,seed=0"``,
    ``"bigbird:block=16,window_blocks=3,global_blocks=1,random_blocks=2,seed=0"``.
    Terms joined by '+' are united ([`union`][refsparse.patterns.union]): ``"local:window=32+global:indices=0"``.
    The keys are the arguments of the functions of the same name (``global`` is
    [`global_tokens`][refsparse.patterns.global_tokens]). Per-head terms (per_head=true) give a per-head list.
    """
    terms = parse_spec(spec)
    t = _check_int("t", t, 1)
    built = [_SPECS[name][0](t, **params) for name, params in terms]
    return built[0] if len(built) == 1 else union(*built)


# ----------------------------------------------------------------------------------------
# looking at a pattern


def stats(pattern):
    """Summary numbers of a pattern (a list of one dict per head for a per-head pattern).

    Keys: nnz, rows (Tq), cols (Tk), min_per_row, mean_per_row, max_per_row (stored keys per
    query), density = nnz / (Tq·Tk), empty_rows (queries with no key: zero output).
    """
    p = _check_any("pattern", pattern)
    if isinstance(p, list):
        return [stats(ph) for ph in p]
    per_row = np.diff(p.indptr)  # (Tq,)
    t_q, t_k = p.shape
    return {  # a pattern with no rows or no columns: zeros
        "nnz": int(p.nnz),
        "rows": int(t_q),
        "cols": int(t_k),
        "min_per_row": int(per_row.min(initial=t_k)) if t_q else 0,
        "mean_per_row": float(per_row.mean()) if t_q else 0.0,
        "max_per_row": int(per_row.max(initial=0)),
        "density": float(p.nnz / (t_q * t_k)) if t_q * t_k else 0.0,
        "empty_rows": int(np.count_nonzero(per_row == 0)),
    }


def reach(patterns_by_layer, residual=False):
    """Which keys each query can reach through L attention layers.

        R_1 = P_1,    R_l = P_l ∘ R_{l−1}     (boolean product: i reaches j through layer l when
                                               some k has (i, k) ∈ P_l and (k, j) ∈ R_{l−1})

    patterns_by_layer : the patterns of layers 1 .. L, first layer (nearest the input) first;
        a per-head layer counts as the union of its heads (the output projection mixes them).
        Layer l's Tk must equal layer l−1's Tq.
    residual : also let each layer pass its input through (add i → i to every layer), as a
        residual connection does. Needs square patterns.

    Returns the (Tq of layer L, Tk of layer 1) bool pattern. Child et al. 2019 (§4): with
    the strided pattern, i reaches j <= i in two steps through k = j + ((i − j) mod l), since
    k − j < l (k's window holds j) and (i − k) mod l = 0 (i's stride holds k); so
    ``reach([strided(T, l)] * 2) == causal(T)``, for any l, while each row stores only
    O(√T) keys when l ≈ √T. The same holds for strided's factorised heads in separate layers,
    ``reach([A1, A2])`` and ``reach([A2, A1])``. The fixed pattern reaches every earlier
    position in two layers through its summary columns only when each layer holds both of its
    components (the union, or both heads in each layer): its heads in separate layers do not.
    The product is computed sparsely by scipy, re-canonicalised as bool after every layer; it
    can fill up to Tq·Tk entries, so this is a tool for small T.
    """
    if isinstance(patterns_by_layer, sp.csr_array) or not isinstance(patterns_by_layer, (list, tuple)):
        raise TypeError(
            "patterns_by_layer: expected a list of patterns, one per layer, got "
            f"{type(patterns_by_layer).__name__}"
        )
    layers = list(patterns_by_layer)
    if not layers:
        raise ValueError("patterns_by_layer: expected at least one layer, got none")
    residual = _check_flag("residual", residual)
    r = None
    for n, p in enumerate(layers):
        p = _check_any(f"patterns_by_layer[{n}]", p)
        if isinstance(p, list):
            p = union(*p)
        if residual:
            if p.shape[0] != p.shape[1]:
                raise ValueError(
                    f"patterns_by_layer[{n}]: expected a square pattern when residual=True, got {p.shape}"
                )
            i = np.arange(p.shape[0], dtype=np.int64)
            p = union(p, _from_ranges(p.shape[0], p.shape[1], i, i + 1))  # p ∪ identity
        pi = p.astype(np.int64)  # counts of paths, at most Tk: no overflow
        if r is None:
            r = pi
            continue
        if p.shape[1] != r.shape[0]:
            raise ValueError(
                f"patterns_by_layer[{n}]: expected Tk = {r.shape[0]} (the Tq of layer {n - 1}), "
                f"got shape {p.shape}"
            )
        r = pi @ r  # (Tq_n, Tk_0): path counts
        r.sum_duplicates()  # sorts the indices
        r.eliminate_zeros()
        r.data[:] = 1
    return as_pattern(r.astype(bool))


def to_text(pattern, on="#", off="."):
    """A small pattern drawn as text, one line per query; for docs and terminals (Tq, Tk <= 256)."""
    p = check_pattern("pattern", pattern)
    if max(p.shape) > 256:
        raise ValueError(f"pattern: expected at most 256 rows and columns to draw, got shape {p.shape}")
    dense = p.toarray()  # small by the check above
    return "\n".join("".join(on if v else off for v in row) for row in dense)


# ----------------------------------------------------------------------------------------
# for kernels


def transpose_with_map(p):
    """The CSR structure of the transposed pattern, and where each entry came from.

    Returns (indptr_t (Tk + 1,), indices_t (nnz,), perm (nnz,)), all of p's index dtype:
    row j of the transpose lists the queries i that see key j, in increasing order, and
    ``perm[e_t]`` is the position in ``p.indices`` (and in any array aligned with it, such as
    per-entry scores or probabilities) of the same entry (i, j). So for values x aligned with p,
    ``x[perm]`` is aligned with the transpose. Kernels use it to compute dK and dV row-parallel
    over keys. Complexity O(nnz log nnz) (one stable argsort), once per pattern.
    """
    return transpose_structure(check_pattern("p", p))


def transpose_structure(p):
    """[`transpose_with_map`][refsparse.patterns.transpose_with_map] for any canonical CSR array (a pattern or a sparse weight,
    whatever its values): ``(indptr_t, indices_t, perm)`` in p's index dtype. Only indices
    are built; values aligned with p are read through ``perm``. Unchecked: p must be
    canonical (sorted indices, no duplicates). The same as
    `refsparse.csr.transpose_structure` on p's arrays."""
    return csr.transpose_structure(p.indptr, p.indices, p.shape[1])
