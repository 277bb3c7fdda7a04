"""Selection kernels and pruning criteria, each against an independent formula.

The kernels of refsparse/kernels/select.py are held to their NumPy twins *exactly*, ties
included: weights are drawn from a few small integers so that equal scores are common.
Each criterion is checked against its definition written here, not against the code:

- "the k largest with ties to the lower index" ⇔ for every kept i and dropped j,
  s_i > s_j or (s_i = s_j and i < j), and exactly k kept;
- magnitude: that, on |W| with k = round(size · (1 − s)) (so min kept |W| ≥ max dropped);
- global: that, on the concatenation of all layers (one threshold);
- N:M: every group of m consecutive inputs keeps exactly n, and those are its largest;
- block: every block is kept whole or dropped whole, and the kept blocks are those of
  largest Σ|W| (sums of small integers are exact, so ties are exact too).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse.kernels.select import (
    group_topn_mask,
    group_topn_mask_numpy,
    topk_indices,
    topk_indices_numpy,
)
from refsparse.prune.criteria import (
    block_mask,
    global_magnitude_masks,
    is_nm,
    magnitude_mask,
    n_keep,
    nm_mask,
    random_mask,
    scores_mask,
)

DTYPES = [np.float64, np.float32]


# ----------------------------------------------------------------------------------------
# helpers: the definitions
def assert_top_k(scores, kept, k):
    """``kept`` (bool, flat) is the k largest of ``scores`` (flat), ties to the lower index."""
    scores, kept = np.asarray(scores, np.float64).reshape(-1), np.asarray(kept).reshape(-1)
    assert kept.sum() == k, f"kept {kept.sum()} entries, expected {k}"
    i = np.flatnonzero(kept)[:, None]  # (k, 1)
    j = np.flatnonzero(~kept)[None, :]  # (1, n − k)
    si, sj = scores[i], scores[j]
    ok = (si > sj) | ((si == sj) & (i < j))  # (k, n − k): kept i beats dropped j
    if not ok.all():
        a, b = np.argwhere(~ok)[0]
        raise AssertionError(f"kept index {i[a, 0]} (score {si[a, 0]}) does not beat dropped "
                             f"index {j[0, b]} (score {sj[0, b]})")


@st.composite
def score_arrays(draw, max_n=60):
    """1-D scores with many ties: small integers (signed zeros and infinities mixed in), or
    continuous values."""
    n = draw(st.integers(0, max_n))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["ties", "continuous", "special"]))
    if kind == "ties":
        s = rng.integers(-2, 3, n).astype(dtype)
    elif kind == "continuous":
        s = rng.standard_normal(n).astype(dtype)
    else:
        s = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf]), n).astype(dtype)
    k = draw(st.integers(0, n))
    return s, k


@st.composite
def int_weights(draw, max_out=8, max_in=8, out_mult=1, in_mult=1):
    """A 2-D weight of small integers (many exact ties in |W|), float32 or float64."""
    out = out_mult * draw(st.integers(1, max_out))
    inp = in_mult * draw(st.integers(1, max_in))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    return rng.integers(-3, 4, (out, inp)).astype(dtype)


sparsities = st.one_of(st.sampled_from([0.0, 0.5, 0.75, 0.9, 0.99]), st.floats(0.0, 0.999))


# ----------------------------------------------------------------------------------------
# kernels against their twins
@given(score_arrays())
def test_topk_kernel_equals_twin_exactly(problem):
    s, k = problem
    got = topk_indices(s, k)
    want = topk_indices_numpy(s, k)
    assert got.dtype == np.int64 and want.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert np.all(np.diff(got) > 0), "not strictly ascending"
    kept = np.zeros(s.size, bool)
    kept[got] = True
    assert_top_k(s, kept, k)


def test_topk_edge_cases():
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    np.testing.assert_array_equal(topk_indices(s, 0), np.empty(0, np.int64))
    np.testing.assert_array_equal(topk_indices(s, 5), np.arange(5))
    np.testing.assert_array_equal(topk_indices(s, 2), [1, 2])  # three 3.0s: the two lowest
    np.testing.assert_array_equal(topk_indices(s, 4), [1, 2, 3, 4])
    np.testing.assert_array_equal(topk_indices(np.zeros(0), 0), np.empty(0, np.int64))
    np.testing.assert_array_equal(topk_indices(np.full(7, 2.0, np.float32), 3), [0, 1, 2])
    strided = np.arange(20.0)[::-2]  # non-contiguous view: 19, 17, …, 1
    np.testing.assert_array_equal(topk_indices(strided, 3), [0, 1, 2])
    for k in (-1, 6):
        with pytest.raises(ValueError, match="k"):
            topk_indices(s, k)
        with pytest.raises(ValueError, match="k"):
            topk_indices_numpy(s, k)


@given(st.integers(0, 30), st.integers(1, 9), st.data())
def test_group_topn_kernel_equals_twin_exactly(g, m, data):
    n = data.draw(st.integers(0, m))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dtype = data.draw(st.sampled_from(DTYPES))
    groups = rng.integers(0, 3, (g, m)).astype(dtype)
    got = group_topn_mask(groups, n)
    np.testing.assert_array_equal(got, group_topn_mask_numpy(groups, n))
    assert got.dtype == np.bool_ and got.shape == (g, m)
    for row, keep in zip(groups, got):
        assert_top_k(row, keep, n)


def test_group_topn_rejects_bad_n():
    with pytest.raises(ValueError, match="n"):
        group_topn_mask(np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="n"):
        group_topn_mask_numpy(np.zeros((2, 4)), 5)


# ----------------------------------------------------------------------------------------
# counting
def test_n_keep_is_round_half_to_even():
    assert n_keep(10, 0.75) == 2  # 2.5 -> 2
    assert n_keep(14, 0.75) == 4  # 3.5 -> 4
    assert n_keep(100, 0.9) == 10
    assert n_keep(7, 0.0) == 7
    assert n_keep(0, 0.5) == 0
    assert n_keep(3, 0.999) == 0
    for total in range(50):
        for s in (0.0, 0.1, 0.25, 0.5, 0.8, 0.95):
            assert n_keep(total, s) == round(total * (1 - s))
    assert isinstance(n_keep(np.int64(10), np.float32(0.5)), int)


# ----------------------------------------------------------------------------------------
# the criteria
@given(int_weights(), sparsities)
def test_magnitude_keeps_exactly_the_largest(w, s):
    mask = magnitude_mask(w, s)
    assert mask.dtype == np.bool_ and mask.shape == w.shape
    k = round(w.size * (1 - s))
    assert_top_k(np.abs(w), mask, k)
    if 0 < k < w.size:
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()


def test_magnitude_continuous_example():
    w = np.array([[0.1, -5.0, 0.3], [2.0, -0.2, 0.0]])
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [[False, True, True], [True, False, False]])


@given(st.integers(0, 4), st.integers(0, 4), st.data())
def test_scores_mask_any_shape(a, b, data):
    shape = (a, b, 2)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    scores = rng.integers(0, 3, shape).astype(np.float64)
    k = data.draw(st.integers(0, scores.size))
    mask = scores_mask(scores, k)
    assert mask.shape == shape
    assert_top_k(scores, mask, k)


@given(st.integers(1, 9), st.integers(1, 9), sparsities, st.integers(0, 2**32 - 1))
def test_random_mask_exact_count_and_reproducible(out, inp, s, seed):
    mask = random_mask((out, inp), s, np.random.default_rng(seed))
    assert mask.shape == (out, inp) and mask.dtype == np.bool_
    assert mask.sum() == n_keep(out * inp, s)
    np.testing.assert_array_equal(mask, random_mask((out, inp), s, np.random.default_rng(seed)))


def test_random_mask_is_uniform():
    rng = np.random.default_rng(0)
    draws = 4000
    counts = sum(random_mask((3, 4), 0.75, rng).astype(int) for _ in range(draws))  # 3 of 12 each
    expected = draws * 3 / 12
    # each cell ~ Binomial(4000, 1/4): sd ≈ 27; 6 sd is far outside chance
    assert np.abs(counts - expected).max() < 6 * np.sqrt(draws * 0.25 * 0.75)


@given(st.lists(int_weights(max_out=5, max_in=5), min_size=1, max_size=4), sparsities)
def test_global_is_one_threshold_across_layers(ws, s):
    weights = {f"layer{i}": w.astype(np.float64) for i, w in enumerate(ws)}
    masks = global_magnitude_masks(weights, s)
    assert list(masks) == list(weights)
    total = sum(w.size for w in ws)
    flat_scores = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
    flat_kept = np.concatenate([masks[name].reshape(-1) for name in weights])
    assert_top_k(flat_scores, flat_kept, n_keep(total, s))  # ties by (dict order, flat index)
    for name, w in weights.items():
        assert masks[name].shape == w.shape and masks[name].dtype == np.bool_


def test_global_differs_from_per_layer():
    weights = {"small": np.full((2, 2), 0.1), "large": np.full((2, 2), 5.0)}
    masks = global_magnitude_masks(weights, 0.5)
    assert masks["small"].sum() == 0 and masks["large"].sum() == 4
    assert global_magnitude_masks({}, 0.5) == {}


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.data())
def test_nm_keeps_the_n_largest_of_every_group(out, groups, m, data):
    n = data.draw(st.integers(0, m))
    dtype = data.draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.integers(-3, 4, (out, groups * m)).astype(dtype)
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape
    for o in range(out):
        for g in range(groups):
            sl = slice(g * m, (g + 1) * m)
            assert_top_k(np.abs(w[o, sl]), mask[o, sl], n)
    assert is_nm(mask, n, m)
    assert mask.sum() == out * groups * n  # density exactly n/m


def test_is_nm_validator():
    mask = np.array([[1, 1, 0, 0, 0, 1, 0, 1]], bool)
    assert is_nm(mask, 2, 4)
    assert not is_nm(mask, 1, 4)
    assert not is_nm(mask, 2, 3)  # 8 % 3 != 0: not N:M
    mask[0, 0] = False
    assert not is_nm(mask, 2, 4)  # "exactly n": a group with 1 is not 2:4


@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([(1, 1), (1, 4), (2, 2), (2, 3)]),
       sparsities, st.integers(0, 2**32 - 1))
def test_block_keeps_whole_blocks_of_largest_sum(rb, cb, block, s, seed):
    bh, bw = block
    w = np.random.default_rng(seed).integers(-3, 4, (rb * bh, cb * bw)).astype(np.float64)
    mask = block_mask(w, s, block)
    assert mask.shape == w.shape
    scores = np.empty((rb, cb))  # Σ|W| per block, by loops: exact on small integers
    kept = np.empty((rb, cb), bool)
    for r in range(rb):
        for c in range(cb):
            blk = mask[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw]
            assert blk.all() or not blk.any(), f"block ({r}, {c}) split: {blk}"
            kept[r, c] = blk[0, 0]
            scores[r, c] = sum(abs(float(v)) for v in w[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw].flat)
    assert_top_k(scores, kept, n_keep(rb * cb, s))
    assert mask.sum() == n_keep(rb * cb, s) * bh * bw


def test_block_default_is_1x4():
    w = np.array([[1, 1, 1, 1, 5, 5, 5, 5], [0, 0, 0, 0, 9, 0, 0, 0.0]])  # block sums 4 20 / 0 9
    np.testing.assert_array_equal(block_mask(w, 0.5), np.repeat([[False, True], [False, True]], 4, axis=1))


# ----------------------------------------------------------------------------------------
# errors
def test_bad_inputs_give_clear_errors():
    w = np.ones((4, 8))
    rng = np.random.default_rng(0)
    cases = [
        (lambda: magnitude_mask(w, 1.0), ValueError, "sparsity"),
        (lambda: magnitude_mask(w, -0.1), ValueError, "sparsity"),
        (lambda: magnitude_mask(w, float("nan")), ValueError, "sparsity"),
        (lambda: magnitude_mask(w, True), TypeError, "sparsity"),
        (lambda: magnitude_mask(w, "0.5"), TypeError, "sparsity"),
        (lambda: magnitude_mask(w.tolist(), 0.5), TypeError, "weight"),
        (lambda: magnitude_mask(np.ones(4), 0.5), ValueError, "weight"),
        (lambda: magnitude_mask(np.ones((2, 2), int), 0.5), TypeError, "weight"),
        (lambda: magnitude_mask(np.array([[1.0, np.nan]]), 0.5), ValueError, "finite"),
        (lambda: scores_mask(np.ones(3), 4), ValueError, "n_keep"),
        (lambda: scores_mask(np.ones(3), 1.5), TypeError, "n_keep"),
        (lambda: n_keep(-1, 0.5), ValueError, "total"),
        (lambda: random_mask((2, 2), 0.5, None), TypeError, "rng"),
        (lambda: random_mask([2, 2], 0.5, rng), TypeError, "shape"),
        (lambda: global_magnitude_masks([w], 0.5), TypeError, "weights"),
        (lambda: global_magnitude_masks({"a": np.array([[np.inf]])}, 0.5), ValueError, "weights\\['a'\\]"),
        (lambda: nm_mask(w, 3, 2), ValueError, "n"),
        (lambda: nm_mask(w, 2, 0), ValueError, "m"),
        (lambda: nm_mask(w, 2, 3), ValueError, "divisible by m=3"),
        (lambda: nm_mask(w, 1.0, 2), TypeError, "n"),
        (lambda: is_nm(w, 2, 4), TypeError, "mask"),
        (lambda: block_mask(w, 0.5, (3, 4)), ValueError, "divisible by block"),
        (lambda: block_mask(w, 0.5, (0, 4)), TypeError, "block"),
        (lambda: block_mask(w, 0.5, 4), TypeError, "block"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
