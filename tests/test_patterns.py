"""Attention patterns (refsparse.patterns): each one entry by entry against its paper's definition,
written below as a dense formula over the index grids i (queries) and j (keys) at small T;
composition, per-head patterns, the text spec, stats, reach (Child et al.'s two-step argument),
the transposed structure for kernels, input checks, and one large build with no dense array."""

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import refsparse.patterns as P

SIZES = [1, 2, 3, 5, 8, 16, 17, 31, 64]  # includes lengths that no stride or block divides


def grid(t_q, t_k=None):
    """Index grids: i (Tq, 1) the query, j (1, Tk) the key."""
    t_k = t_q if t_k is None else t_k
    return np.arange(t_q)[:, None], np.arange(t_k)[None, :]


def assert_pattern(p, shape=None):
    """The contract: bool csr_array, canonical, every stored value True, one index dtype."""
    assert isinstance(p, sp.csr_array), type(p)
    assert p.dtype == np.bool_
    if shape is not None:
        assert p.shape == tuple(shape)
    t_q, t_k = p.shape
    assert p.indptr.dtype == p.indices.dtype and p.indices.dtype in (np.int32, np.int64)
    assert p.indptr.shape == (t_q + 1,) and p.indptr[0] == 0 and np.all(np.diff(p.indptr) >= 0)
    assert p.indptr[-1] == p.nnz == p.indices.size == p.data.size
    assert p.data.all(), "a stored False"
    if p.nnz:
        assert p.indices.min() >= 0 and p.indices.max() < t_k
        rows = np.repeat(np.arange(t_q), np.diff(p.indptr))
        same_row = rows[1:] == rows[:-1]
        assert np.all(np.diff(p.indices.astype(np.int64))[same_row] > 0), "unsorted or duplicate"
    fresh = sp.csr_array((p.data, p.indices, p.indptr), shape=p.shape)  # scipy checks it afresh
    assert fresh.has_canonical_format
    assert p.has_canonical_format


def assert_matches(p, expected):
    """Pattern ``p`` equals the dense formula ``expected`` entry by entry."""
    expected = np.broadcast_to(expected, np.broadcast_shapes(np.shape(expected)))
    assert_pattern(p, expected.shape)
    got = p.toarray()
    bad = np.argwhere(got != expected)
    assert bad.size == 0, f"{len(bad)} entries differ, first (i, j) = {bad[:5].tolist()}"


def per_row(p):
    return np.diff(p.indptr)


# ----------------------------------------------------------------------------------------
# full, causal


@pytest.mark.parametrize("t_q,t_k", [(1, 1), (5, 5), (17, 17), (4, 9), (9, 4), (1, 7), (7, 1)])
def test_full_and_causal(t_q, t_k):
    i, j = grid(t_q, t_k)
    assert_matches(P.full(t_q, t_k), np.ones((t_q, t_k), bool))
    assert_matches(P.causal(t_q, t_k), np.broadcast_to(j <= i, (t_q, t_k)))  # top-left aligned
    if t_q == t_k:
        assert_matches(P.causal(t_q), np.broadcast_to(j <= i, (t_q, t_k)))
        assert_matches(P.full(t_q), np.ones((t_q, t_q), bool))


# ----------------------------------------------------------------------------------------
# local and dilated (Longformer)


@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize("window", [1, 2, 3, 5, 16, 100])
def test_local(t, window):
    i, j = grid(t)
    causal_ = P.local(t, window)  # causal by default
    assert_matches(causal_, (j <= i) & (i - j < window))
    both = P.local(t, window, causal=False)
    assert_matches(both, np.abs(i - j) < window)
    assert_matches(P.causal_only(both), causal_.toarray())
    assert np.array_equal(per_row(causal_), np.minimum(np.arange(t) + 1, window))


@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize("window,dilation", [(1, 1), (2, 2), (3, 2), (4, 3), (8, 2), (3, 7)])
def test_dilated(t, window, dilation):
    i, j = grid(t)
    d = np.abs(i - j)
    on = (d % dilation == 0) & (d // dilation < window)  # i ± k·dilation, k < window
    assert_matches(P.dilated(t, window, dilation), on & (j <= i))
    assert_matches(P.dilated(t, window, dilation, causal=False), on)
    if dilation == 1:
        assert_matches(P.dilated(t, window, 1), P.local(t, window).toarray())


# ----------------------------------------------------------------------------------------
# Child et al. 2019, §4: strided and fixed


@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize("l", [1, 2, 3, 4, 5, 8])
def test_strided_matches_paper(t, l):
    i, j = grid(t)
    a1 = (j <= i) & (i - j < l)
    a2 = (j <= i) & ((i - j) % l == 0)
    p = P.strided(t, l)
    assert_matches(p, a1 | a2)
    rows = np.arange(t)
    assert np.array_equal(per_row(p), np.minimum(rows + 1, l) + rows // l)
    heads = P.strided(t, l, per_head=True)
    assert isinstance(heads, list) and len(heads) == 2
    assert_matches(heads[0], a1)
    assert_matches(heads[1], a2)
    assert_matches(heads[0], P.local(t, l).toarray())  # A1 is the causal window of l keys


@pytest.mark.parametrize("n", [16, 100, 1000, 4096, 10000])
def test_strided_sqrt_n_entries_per_row(n):
    l = math.isqrt(n - 1) + 1  # ⌈√n⌉
    s = P.stats(P.strided(n, l))
    assert s["max_per_row"] <= 2 * l - 1  # l in the window + at most l − 1 strided
    assert s["max_per_row"] <= 2 * math.sqrt(n) + 1  # O(√n) per row ...
    assert s["nnz"] <= n * (2 * math.sqrt(n) + 1)  # ... O(n√n) in all
    assert s["empty_rows"] == 0


@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize("l,c", [(1, 1), (2, 1), (4, 1), (4, 2), (4, 4), (5, 2), (8, 3)])
def test_fixed_matches_paper(t, l, c):
    i, j = grid(t)
    a1 = (j <= i) & (j // l == i // l)
    a2 = (j <= i) & (j % l >= l - c)
    p = P.fixed(t, l, c)
    assert_matches(p, a1 | a2)
    b = np.arange(t) // l
    assert np.array_equal(per_row(p), b * c + np.arange(t) - b * l + 1)
    h1, h2 = P.fixed(t, l, c, per_head=True)
    assert_matches(h1, a1)
    assert_matches(h2, a2)
    assert P.stats(h2)["empty_rows"] == min(t, l - c)  # the first l − c queries see no summary


# ----------------------------------------------------------------------------------------
# global, random, block-sparse, BigBird


@pytest.mark.parametrize("t", [1, 5, 16, 17])
@pytest.mark.parametrize("indices", [[0], [0, 3], [4, 2, 2], []])
def test_global_tokens(t, indices):
    idx = [k for k in indices if k < t]
    i, j = grid(t)
    g = np.isin(i, idx) | np.isin(j, idx)
    assert_matches(P.global_tokens(t, idx), g)
    assert_matches(P.global_tokens(t, idx, causal=True), g & (j <= i))
    assert_matches(P.global_tokens(t, np.array(idx, dtype=np.int64)), g)


@pytest.mark.parametrize("t", [1, 7, 16, 33])
@pytest.mark.parametrize("per_row_", [0, 1, 3, 8, 40])
@pytest.mark.parametrize("causal_", [False, True])
def test_random_counts_and_support(t, per_row_, causal_):
    p = P.random(t, per_row_, seed=3, causal=causal_)
    assert_pattern(p, (t, t))
    rows = np.arange(t)
    available = rows + 1 if causal_ else np.full(t, t)
    assert np.array_equal(per_row(p), np.minimum(per_row_, available))  # clipped, no repeats
    if causal_:
        i, j = grid(t)
        assert not (p.toarray() & (j > i)).any()
    again = P.random(t, per_row_, seed=3, causal=causal_)
    assert np.array_equal(p.indices, again.indices) and np.array_equal(p.indptr, again.indptr)
    gen = P.random(t, per_row_, seed=np.random.default_rng(3), causal=causal_)
    assert np.array_equal(gen.indices, p.indices)  # an int seed is default_rng(seed)


def test_random_seeds_differ_and_subsets_are_uniform():
    a, b = P.random(64, 8, seed=0), P.random(64, 8, seed=1)
    assert (a != b).nnz > 0
    # 2-subsets of 5 keys: each of the 10 should come up about 1/10 of the time
    counts = {}
    for seed in range(600):
        p = P.random(5, 2, seed=seed)
        for r in range(5):
            key = tuple(p.indices[p.indptr[r] : p.indptr[r + 1]])
            counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 10
    freq = np.array(list(counts.values())) / 3000
    assert np.all(np.abs(freq - 0.1) < 0.02), counts
    # causal rows: key j of row i is drawn with probability per_row / (i + 1)
    p = P.random(200, 4, seed=5, causal=True)
    rows = np.repeat(np.arange(200), per_row(p))
    rel = (p.indices + 0.5) / (rows + 1)  # position within the available keys, in (0, 1)
    assert abs(rel[rows >= 20].mean() - 0.5) < 0.05


@pytest.mark.parametrize("nb_q,nb_k,block", [(1, 1, 1), (3, 3, 2), (2, 5, 3), (4, 2, 4), (6, 6, 1)])
def test_block_sparse(rng, nb_q, nb_k, block):
    for density in (0.0, 0.4, 1.0):
        layout = rng.random((nb_q, nb_k)) < density
        i, j = grid(nb_q * block, nb_k * block)
        assert_matches(P.block_sparse(layout, block), layout[i // block, j // block])


def _bigbird_parts(t, b, w, g, causal_):
    """BigBird's window and global parts as dense token-level formulas."""
    i, j = grid(t)
    a, beta = i // b, j // b
    window = (a - beta >= 0) & (a - beta < w) if causal_ else np.abs(a - beta) <= w // 2
    glob = (a < g) | (beta < g)
    return window, glob, a, beta, i, j


@pytest.mark.parametrize("t,b", [(8, 1), (16, 2), (24, 4), (64, 4), (60, 5)])
@pytest.mark.parametrize("w,g,r", [(1, 0, 0), (3, 2, 3), (3, 1, 2), (5, 0, 1), (1, 1, 40)])
@pytest.mark.parametrize("causal_", [False, True])
def test_bigbird(t, b, w, g, r, causal_):
    nb = t // b
    p = P.bigbird(t, b, window_blocks=w, global_blocks=min(g, nb), random_blocks=r, seed=7, causal=causal_)
    window, glob, _, _, i, j = _bigbird_parts(t, b, w, min(g, nb), causal_)
    dense = p.toarray()
    assert_pattern(p, (t, t))
    base = window | glob
    if causal_:
        base &= j <= i
        assert not (dense & (j > i)).any()
    assert (dense >= base).all(), "window or global entry missing"
    # the rest is whole random blocks (triangular on the diagonal when causal): per block row,
    # exactly min(r, available) of the blocks that window and global left off
    blocks = dense.reshape(nb, b, nb, b).any(axis=(1, 3))  # (nb, nb) block layout of p
    base_blocks = base.reshape(nb, b, nb, b).any(axis=(1, 3))
    extra = blocks & ~base_blocks
    full_blocks = np.kron(blocks, np.ones((b, b), bool))
    assert np.array_equal(dense, full_blocks & (j <= i) if causal_ else full_blocks)
    ab, bb = np.arange(nb)[:, None], np.arange(nb)[None, :]
    avail = ~base_blocks & (bb <= ab) if causal_ else ~base_blocks
    assert np.array_equal(extra.sum(axis=1), np.minimum(r, avail.sum(axis=1)))
    again = P.bigbird(
        t, b, window_blocks=w, global_blocks=min(g, nb), random_blocks=r, seed=7, causal=causal_
    )
    assert np.array_equal(again.indices, p.indices)


def test_bigbird_rejects_partial_blocks_and_even_centred_windows():
    with pytest.raises(ValueError, match=r"block: expected a divisor of t=10.*got 4"):
        P.bigbird(10, 4)
    with pytest.raises(ValueError, match=r"window_blocks: expected an odd int.*got 2"):
        P.bigbird(16, 4, window_blocks=2)
    P.bigbird(16, 4, window_blocks=2, causal=True)  # a trailing window may be even
    with pytest.raises(ValueError, match=r"global_blocks: expected an int <= 4, got 5"):
        P.bigbird(16, 4, global_blocks=5)


# ----------------------------------------------------------------------------------------
# composition


def _random_pattern(rng, t_q, t_k, density=0.3):
    return P.as_pattern(rng.random((t_q, t_k)) < density)


def test_union_and_intersect(rng):
    for t_q, t_k in [(1, 1), (5, 5), (7, 3), (3, 11)]:
        dense = [rng.random((t_q, t_k)) < d for d in (0.2, 0.5, 0.0)]
        ps = [P.as_pattern(d) for d in dense]
        assert_matches(P.union(*ps), dense[0] | dense[1] | dense[2])
        assert_matches(P.intersect(*ps[:2]), dense[0] & dense[1])
        assert_matches(P.intersect(*ps), np.zeros((t_q, t_k), bool))
        assert_matches(P.union(ps[0]), dense[0])
    i, j = grid(20)
    assert_matches(
        P.union(P.local(20, 3), P.global_tokens(20, [0])), ((j <= i) & (i - j < 3)) | (i == 0) | (j == 0)
    )


def test_union_and_intersect_per_head(rng):
    a1, a2 = P.strided(17, 4, per_head=True)
    g = P.global_tokens(17, [0])
    both = P.union([a1, a2], g)
    assert isinstance(both, list) and len(both) == 2
    assert_matches(both[0], a1.toarray() | g.toarray())
    assert_matches(both[1], a2.toarray() | g.toarray())
    cut = P.intersect((a1, a2), P.local(17, 2))
    assert_matches(cut[1], a2.toarray() & P.local(17, 2).toarray())
    with pytest.raises(ValueError, match=r"ps: expected per-head lists of one length, got lengths \[2, 3\]"):
        P.union([a1, a2], [g, g, g])


def test_union_errors():
    with pytest.raises(ValueError, match=r"ps\[1\]: expected shape \(4, 4\).*got \(4, 5\)"):
        P.union(P.full(4), P.full(4, 5))
    with pytest.raises(ValueError, match="ps: expected at least one pattern"):
        P.intersect()
    with pytest.raises(TypeError, match=r"ps\[1\]: expected a scipy.sparse.csr_array.*got ndarray"):
        P.union(P.full(3), np.ones((3, 3), bool))


def test_causal_only(rng):
    d = rng.random((9, 12)) < 0.5
    i, j = grid(9, 12)
    assert_matches(P.causal_only(P.as_pattern(d)), d & (j <= i))
    assert_matches(P.causal_only(P.full(5, 3)), P.causal(5, 3).toarray())


def test_with_padding(rng):
    p = P.local(10, 4, causal=False)
    out = P.with_padding(p, [10, 6, 1, 0])
    assert len(out) == 4
    _, j = grid(10)
    for n, q in zip([10, 6, 1, 0], out):
        assert_matches(q, p.toarray() & (j < n))
    assert P.stats(out[1])["empty_rows"] == 1  # query 9 sees keys 6..9, all padding
    assert P.stats(out[3])["empty_rows"] == 10
    per_head = P.with_padding(P.strided(8, 3, per_head=True), np.array([5, 8]))
    assert len(per_head) == 2 and all(len(h) == 2 for h in per_head)
    assert_matches(per_head[0][1], P.strided(8, 3, per_head=True)[1].toarray() & (grid(8)[1] < 5))
    cross = P.with_padding(P.full(3, 6), [4])
    assert_matches(cross[0], np.broadcast_to(np.arange(6) < 4, (3, 6)))


def test_with_padding_errors():
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\] \(Tk\), got 6"):
        P.with_padding(P.full(5), [3, 6])
    with pytest.raises(ValueError, match="lengths: expected values in .*got -1"):
        P.with_padding(P.full(5), [-1])
    with pytest.raises(TypeError, match="lengths: expected ints, got dtype float64"):
        P.with_padding(P.full(5), [2.5])
    with pytest.raises(ValueError, match=r"lengths: expected a 1-D sequence.*got shape \(\)"):
        P.with_padding(P.full(5), 3)


@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 2**31 - 1),
)
def test_composition_properties(t_q, t_k, d1, d2, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.random((t_q, t_k)) < d1, rng.random((t_q, t_k)) < d2
    px, py = P.as_pattern(x), P.as_pattern(y)
    assert_matches(px, x)
    assert_matches(P.union(px, py), x | y)
    assert_matches(P.intersect(px, py), x & y)
    n = int(rng.integers(0, t_k + 1))
    assert_matches(P.with_padding(px, [n])[0], x & (np.arange(t_k) < n))
    check_transpose(px)


# ----------------------------------------------------------------------------------------
# per-head patterns


def test_is_per_head_and_heads():
    p = P.causal(6)
    assert not P.is_per_head(p)
    assert P.heads(p, 3) == [p, p, p]
    a = P.strided(6, 2, per_head=True)
    assert P.is_per_head(a) and P.is_per_head(tuple(a))
    assert P.heads(a, 2) == a
    assert P.heads(tuple(a), 6) == [a[0], a[1]] * 3  # the paper's alternating heads
    three = [p, P.full(6), p]
    assert P.heads(three, 3) == three
    with pytest.raises(ValueError, match=r"p: expected a per-head list of 4 patterns.*got 3"):
        P.heads(three, 4)
    with pytest.raises(ValueError, match=r"p: expected shape \(6, 7\), got \(6, 6\)"):
        P.heads(p, 2, shape=(6, 7))
    with pytest.raises(ValueError, match=r"p\[1\]: expected shape \(6, 6\), got \(6, 5\)"):
        P.heads([p, P.full(6, 5)], 2)
    with pytest.raises(ValueError, match="n_heads: expected an int >= 1, got 0"):
        P.heads(p, 0)
    with pytest.raises(ValueError, match="p: expected a pattern or a non-empty list"):
        P.heads([], 2)


# ----------------------------------------------------------------------------------------
# the text spec

SPEC_CASES = [
    ("full", lambda t: P.full(t)),
    ("causal", lambda t: P.causal(t)),
    ("local:window=4", lambda t: P.local(t, 4)),
    ("local:window=4,causal=false", lambda t: P.local(t, 4, causal=False)),
    ("dilated:window=3,dilation=2", lambda t: P.dilated(t, 3, 2)),
    ("strided:stride=4", lambda t: P.strided(t, 4)),
    ("strided:stride=4,per_head=true", lambda t: P.strided(t, 4, per_head=True)),
    ("fixed:block=4,c=2", lambda t: P.fixed(t, 4, 2)),
    ("fixed:block=4,c=1,per_head=true", lambda t: P.fixed(t, 4, 1, per_head=True)),
    ("global:indices=0/5", lambda t: P.global_tokens(t, [0, 5])),
    ("global:indices=3,causal=true", lambda t: P.global_tokens(t, [3], causal=True)),
    ("random:per_row=3,seed=2", lambda t: P.random(t, 3, seed=2)),
    ("random:per_row=3", lambda t: P.random(t, 3, seed=0)),
    (
        "bigbird:block=4,window_blocks=3,global_blocks=1,random_blocks=2,seed=0",
        lambda t: P.bigbird(t, 4, window_blocks=3, global_blocks=1, random_blocks=2, seed=0),
    ),
    ("bigbird:block=4,causal=true", lambda t: P.bigbird(t, 4, causal=True)),
    ("local:window=3+global:indices=0", lambda t: P.union(P.local(t, 3), P.global_tokens(t, [0]))),
    (
        "strided:stride=4,per_head=true+global:indices=0/1",
        lambda t: P.union(P.strided(t, 4, per_head=True), P.global_tokens(t, [0, 1])),
    ),
]


def _same(a, b):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


@pytest.mark.parametrize("spec,build", SPEC_CASES, ids=[s for s, _ in SPEC_CASES])
def test_parse_matches_the_functions_and_round_trips(spec, build):
    for t in (16, 24):
        got = P.parse(spec, t)
        assert _same(got, build(t)), spec
        for q in got if isinstance(got, list) else [got]:
            assert_pattern(q, (t, t))
    assert P.format_spec(P.parse_spec(spec)) == spec
    assert P.parse_spec(P.format_spec(P.parse_spec(spec))) == P.parse_spec(spec)


def test_parse_normalises_whitespace_and_case():
    assert P.format_spec(P.parse_spec(" local : window = 8 , causal = False + full ")) == (
        "local:window=8,causal=false+full"
    )
    assert P.parse_spec("global:indices=0/64/128") == [("global", {"indices": [0, 64, 128]})]
    assert P.spec_names() == (
        "full",
        "causal",
        "local",
        "dilated",
        "strided",
        "fixed",
        "global",
        "random",
        "bigbird",
    )


@pytest.mark.parametrize(
    "spec,message",
    [
        ("lokal:window=3", r"unknown pattern 'lokal'; expected one of full, causal, local, dilated, strided"),
        ("local:width=3", r"local: unknown key 'width'; expected one of: window, causal"),
        ("causal:window=3", r"causal: unknown key 'window'; expected one of: none"),
        ("local", r"local: missing required key\(s\) window"),
        ("fixed:block=4", r"fixed: missing required key\(s\) c"),
        ("local:window=three", r"local:window: expected an int, got 'three'"),
        ("local:window=3,causal=maybe", r"local:causal: expected true or false, got 'maybe'"),
        ("global:indices=0;5", r"global:indices: expected ints separated by '/'"),
        ("local:window=3,window=4", r"local: key 'window' given twice"),
        ("local:window", r"local: expected key=value, got 'window'"),
        ("local:window=3+", r"expected 'name\[:key=value,...\]' terms joined by '\+'"),
        ("", r"expected 'name\[:key=value,...\]' terms"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        P.parse(spec, 16)


def test_parse_passes_value_errors_through_and_checks_t():
    with pytest.raises(ValueError, match="window: expected an int >= 1, got 0"):
        P.parse("local:window=0", 16)
    with pytest.raises(ValueError, match="block: expected a divisor of t=10"):
        P.parse("bigbird:block=4", 10)
    with pytest.raises(ValueError, match="t: expected an int >= 1, got 0"):
        P.parse("full", 0)
    with pytest.raises(TypeError, match="spec: expected a str, got int"):
        P.parse(3, 16)


# ----------------------------------------------------------------------------------------
# stats, reach, to_text


def test_stats():
    s = P.stats(P.local(10, 3))
    assert s == {
        "nnz": 1 + 2 + 3 * 8,
        "rows": 10,
        "cols": 10,
        "min_per_row": 1,
        "mean_per_row": 2.7,
        "max_per_row": 3,
        "density": 27 / 100,
        "empty_rows": 0,
    }
    padded = P.stats(P.with_padding(P.full(4, 6), [0])[0])
    assert padded["nnz"] == 0 and padded["empty_rows"] == 4 and padded["density"] == 0.0
    per_head = P.stats(P.fixed(8, 4, 1, per_head=True))
    assert [h["empty_rows"] for h in per_head] == [0, 3]


def _dense_reach(mats):
    r = mats[0].astype(np.int64)
    for m in mats[1:]:
        r = ((m.astype(np.int64) @ r) > 0).astype(np.int64)
    return r > 0


@pytest.mark.parametrize("n", [2, 9, 16, 30, 64, 100, 256])
def test_two_strided_layers_reach_every_earlier_position(n):
    """Child et al. 2019 §4: i reaches any j <= i through k = j + ((i − j) mod l)."""
    cz = P.causal(n).toarray()
    for l in sorted({math.isqrt(n - 1) + 1, 2, 3, 5}):
        p = P.strided(n, l)
        assert_matches(P.reach([p, p]), cz)
        a1, a2 = P.strided(n, l, per_head=True)
        assert_matches(P.reach([a1, a2]), cz)  # the factorised heads, window first ...
        assert_matches(P.reach([a2, a1]), cz)  # ... or stride first
        assert_matches(P.reach([[a1, a2], [a1, a2]]), cz)  # per-head layers count as their union
        if n > l + 1:  # one layer is not enough: query l + 1 misses key 0
            one = P.reach([p])
            assert one.nnz < cz.sum() and not one[l + 1, 0]
    for l, c in [(4, 1), (5, 2), (math.isqrt(n - 1) + 1, 1)]:
        f = P.fixed(n, l, c)
        assert_matches(P.reach([f, f]), cz)  # the summary columns relay every block


def test_reach_is_the_boolean_product(rng):
    for t in (5, 12):
        mats = [rng.random((t, t)) < 0.2 for _ in range(3)]
        ps = [P.as_pattern(m) for m in mats]
        assert_matches(P.reach(ps), _dense_reach(mats))
        assert_matches(P.reach(ps[:1]), mats[0])
        eye = np.eye(t, dtype=bool)
        assert_matches(P.reach(ps, residual=True), _dense_reach([m | eye for m in mats]))
    # L causal windows of w keys reach L·(w − 1) + 1 keys back
    assert_matches(P.reach([P.local(40, 4)] * 3), P.local(40, 10).toarray())
    # cross shapes: layer 2's Tk is layer 1's Tq
    a, b = rng.random((6, 4)) < 0.5, rng.random((3, 6)) < 0.5
    assert_matches(P.reach([P.as_pattern(a), P.as_pattern(b)]), _dense_reach([a, b]))


def test_reach_errors():
    with pytest.raises(
        ValueError, match=r"patterns_by_layer\[1\]: expected Tk = 4 \(the Tq of layer 0\), got shape \(3, 5\)"
    ):
        P.reach([P.full(4, 5), P.full(3, 5)])
    with pytest.raises(
        TypeError, match="patterns_by_layer: expected a list of patterns, one per layer, got csr_array"
    ):
        P.reach(P.full(3))
    with pytest.raises(ValueError, match="patterns_by_layer: expected at least one layer"):
        P.reach([])
    with pytest.raises(ValueError, match=r"expected a square pattern when residual=True, got \(3, 4\)"):
        P.reach([P.full(3, 4)], residual=True)


def test_to_text():
    assert P.to_text(P.strided(6, 2)).split("\n") == [
        "#.....",
        "##....",
        "###...",
        ".###..",
        "#.###.",
        ".#.###",
    ]
    with pytest.raises(ValueError, match="pattern: expected at most 256 rows and columns"):
        P.to_text(P.local(300, 2))


# ----------------------------------------------------------------------------------------
# the transposed structure, for kernels over keys


def check_transpose(p):
    indptr_t, indices_t, perm = P.transpose_with_map(p)
    t_q, t_k = p.shape
    assert indptr_t.dtype == indices_t.dtype == perm.dtype == p.indices.dtype
    ref = sp.csr_array(p.T)  # scipy's transpose, made canonical
    ref.sort_indices()
    assert np.array_equal(indptr_t, ref.indptr) and np.array_equal(indices_t, ref.indices)
    assert np.array_equal(np.sort(perm), np.arange(p.nnz))  # a permutation of the entries
    rows = np.repeat(np.arange(t_q), np.diff(p.indptr))
    cols_t = np.repeat(np.arange(t_k), np.diff(indptr_t))
    assert np.array_equal(rows[perm], indices_t)  # entry e_t of the transpose is (i, j) of p
    assert np.array_equal(p.indices[perm], cols_t)


def test_transpose_with_map(rng):
    for p in [
        P.strided(17, 4),
        P.full(3, 7),
        P.with_padding(P.local(9, 3), [4])[0],
        P.bigbird(16, 2, seed=1),
    ]:
        check_transpose(p)
    x = rng.standard_normal(P.local(12, 5, causal=False).nnz)  # values aligned with p
    p = P.local(12, 5, causal=False)
    _, _, perm = P.transpose_with_map(p)
    xt = sp.csr_array((x, p.indices, p.indptr), shape=p.shape).T.tocsr()
    xt.sort_indices()
    assert np.array_equal(x[perm], xt.data)


# ----------------------------------------------------------------------------------------
# input checks: each error names the argument, the expectation and what came


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda: P.full(0), ValueError, "t_q: expected an int >= 1, got 0"),
        (lambda: P.causal(4, 2.0), TypeError, "t_k: expected an int, got float"),
        (lambda: P.local(8, 0), ValueError, "window: expected an int >= 1, got 0"),
        (lambda: P.local(8, 2, causal=1), TypeError, "causal: expected a bool, got int"),
        (lambda: P.local(True, 2), TypeError, "t: expected an int, got bool"),
        (lambda: P.dilated(8, 2, 0), ValueError, "dilation: expected an int >= 1, got 0"),
        (lambda: P.strided(8, 0), ValueError, "stride: expected an int >= 1, got 0"),
        (lambda: P.strided(8, 2, per_head="yes"), TypeError, "per_head: expected a bool, got str"),
        (lambda: P.fixed(8, 4, 5), ValueError, "c: expected an int <= 4, got 5"),
        (lambda: P.fixed(8, 4, 0), ValueError, "c: expected an int >= 1, got 0"),
        (lambda: P.global_tokens(8, [8]), ValueError, r"indices: expected indices in \[0, 8\), got 8"),
        (lambda: P.global_tokens(8, [-1]), ValueError, r"indices: expected indices in \[0, 8\), got -1"),
        (lambda: P.global_tokens(8, [1.5]), TypeError, "indices: expected ints, got dtype float64"),
        (
            lambda: P.global_tokens(8, [[1]]),
            ValueError,
            r"indices: expected a 1-D sequence of ints, got shape \(1, 1\)",
        ),
        (lambda: P.random(8, -1), ValueError, "per_row: expected an int >= 0, got -1"),
        (lambda: P.random(8, 2, seed=-3), ValueError, "seed: expected a seed >= 0, got -3"),
        (
            lambda: P.random(8, 2, seed=1.0),
            TypeError,
            "seed: expected an int seed or a numpy.random.Generator",
        ),
        (lambda: P.block_sparse([[True]], 2), TypeError, "layout: expected a bool numpy.ndarray, got list"),
        (lambda: P.block_sparse(np.ones((2, 2)), 2), TypeError, "layout: expected dtype bool, got float64"),
        (
            lambda: P.block_sparse(np.ones(3, bool), 2),
            ValueError,
            r"layout: expected a non-empty 2-D array .*got shape \(3,\)",
        ),
        (lambda: P.block_sparse(np.ones((2, 2), bool), 0), ValueError, "block: expected an int >= 1, got 0"),
        (
            lambda: P.bigbird(16, 4, random_blocks=-1),
            ValueError,
            "random_blocks: expected an int >= 0, got -1",
        ),
        (lambda: P.stats(np.ones((2, 2), bool)), TypeError, "pattern: expected a scipy.sparse.csr_array"),
        (lambda: P.transpose_with_map(sp.csr_matrix(np.eye(2, dtype=bool))), TypeError, "got csr_matrix"),
        (
            lambda: P.causal_only(sp.csr_array(np.eye(2))),
            TypeError,
            "pattern: expected a csr_array of dtype bool, got dtype float64",
        ),
        (
            lambda: P.to_text(sp.csr_array(np.ones(3, bool))),
            ValueError,
            "pattern: expected a 2-D pattern, got 1 dimensions",
        ),
        (
            lambda: P.as_pattern(np.eye(2)),
            TypeError,
            "x: expected a bool ndarray or a scipy sparse array, got dtype float64",
        ),
        (
            lambda: P.as_pattern([[True]]),
            TypeError,
            "x: expected a bool ndarray or a scipy sparse array, got list",
        ),
    ],
)
def test_input_checks(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_check_pattern_rejects_non_canonical_and_stored_false():
    messy = sp.csr_array(
        (np.ones(3, bool), np.array([2, 0, 0]), np.array([0, 3])), shape=(1, 3)
    )  # unsorted, duplicate
    with pytest.raises(ValueError, match="p: expected canonical format"):
        P.check_pattern("p", messy)
    fixed = P.as_pattern(messy)
    assert_matches(fixed, np.array([[True, False, True]]))
    false = sp.csr_array((np.array([True, False]), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    with pytest.raises(ValueError, match="p: expected every stored value True.*got 1 stored False"):
        P.check_pattern("p", false)
    assert_matches(P.as_pattern(false), np.array([[True, False]]))
    assert_matches(
        P.as_pattern(sp.coo_array(np.array([[0.0, 2.0], [0.5, 0.0]]))),
        np.array([[False, True], [True, False]]),
    )
    assert P.check_pattern("p", P.full(2), shape=(2, 2)) is not None


# ----------------------------------------------------------------------------------------
# a long sequence, built without a dense T × T array


def test_long_sequence_without_dense():
    t, w = 16384, 128
    p = P.local(t, w)
    assert_pattern(p, (t, t))
    assert p.nnz == t * w - w * (w - 1) // 2  # rows 0 .. w − 2 are shorter
    assert p.indices.dtype == np.int32
    l = 128  # = √16384
    s = P.strided(t, l)
    assert s.nnz == int(np.sum(np.minimum(np.arange(t) + 1, l) + np.arange(t) // l))
    assert P.stats(s)["max_per_row"] == 2 * l - 1
    u = P.union(p, P.global_tokens(t, [0]))
    assert u.nnz == p.nnz + (t - w) + (t - 1)  # row 0 fills up; column 0 joins rows w .. T − 1
    indptr_t, _, _ = P.transpose_with_map(p)
    assert indptr_t.shape == (t + 1,) and indptr_t[-1] == p.nnz
    pads = P.with_padding(p, [t, t // 2])
    # queries < T/2 keep their windows; queries T/2 + m (m < w − 1) keep w − 1 − m keys below T/2
    assert pads[1].nnz == ((t // 2) * w - w * (w - 1) // 2) + w * (w - 1) // 2


def test_mask_keys_drops_padded_keys_per_batch_element():
    import numpy as np

    from refsparse import patterns as P

    rng = np.random.default_rng(0)
    pat = P.local(9, 4, causal=False)
    kpm = rng.random((3, 9)) < 0.4
    out = P.mask_keys(pat, kpm)
    assert len(out) == 3
    for b in range(3):
        expected = pat.toarray() & ~kpm[b][None, :]
        assert np.array_equal(out[b].toarray(), expected)
        assert out[b].has_canonical_format and out[b].dtype == bool
    per_head = P.mask_keys([pat, P.causal(9)], kpm)
    assert np.array_equal(per_head[1][1].toarray(), P.causal(9).toarray() & ~kpm[1][None, :])
    with pytest.raises(ValueError, match="key_padding_mask"):
        P.mask_keys(pat, kpm[:, :5])
    with pytest.raises(TypeError, match="key_padding_mask"):
        P.mask_keys(pat, kpm.astype(int))


def test_edge_arguments_get_a_result_or_a_named_error():
    """From a review: huge ints, unsigned indices, empty shapes, a spec that cannot say a value."""
    assert (P.local(16, 2**62) != P.causal(16)).nnz == 0  # any window past T is causal(T)
    for build in (lambda: P.local(16, 10**20), lambda: P.strided(16, 2**63), lambda: P.fixed(16, 10**20, 1),
                  lambda: P.random(16, 10**20), lambda: P.parse("local:window=99999999999999999999", 16)):
        with pytest.raises(ValueError, match=r"(window|stride|block|per_row): expected an int <= 2\*\*62"):
            build()
    with pytest.raises(ValueError, match=r"indices: expected indices in \[0, 8\), got 9223372036854775808"):
        P.global_tokens(8, np.array([2**63], np.uint64))
    for shape in [(0, 3), (3, 0), (0, 0)]:
        s = P.stats(P.as_pattern(np.zeros(shape, bool)))
        assert (s["nnz"], s["min_per_row"], s["max_per_row"], s["density"]) == (0, 0, 0, 0.0)
        assert s["empty_rows"] == shape[0]
    with pytest.raises(ValueError, match=r"terms: local window=3\.7"):
        P.format_spec([("local", {"window": 3.7})])
    with pytest.raises(ValueError, match="unknown key 'width'"):
        P.format_spec([("local", {"width": 3})])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy's note on np.matrix
        layout = np.matrix([[True, False], [False, True]])
    with pytest.raises(TypeError, match="layout: expected a bool numpy.ndarray, got matrix"):
        P.block_sparse(layout, 2)
    assert "mask_keys" in P.__all__


def test_longformer_window_size_is_two_windows_minus_two():
    """Longformer's w: w/2 keys on each side and the query (Beltagy et al. 2020, §3.1)."""
    window = 5
    per_row = np.diff(P.local(64, window, causal=False).indptr)
    w = 2 * window - 2
    assert per_row.max() == w + 1 == per_row[32]
