"""SparseLinear: the Numba SpMM/SDDMM kernels against their NumPy twin, gradcheck, torch.

The twin is the dense Linear (refsparse.functional.linear) with the masked weight
``W.toarray()``: the sparse layer must give the same y, the same dx, and the dense dW
read at the stored entries, to <= 1e-12 in float64 (relative to the tensor's largest
entry, as gradcheck measures). Patterns are drawn by hypothesis and include empty rows and
empty columns, N = 1, in = 1, out = 1, density 0 and 1, and stored zeros; batches span
several tiles with a short last one, and the kernels are run with tiny chunks so that
outputs and inputs stream through in many.

Properties: stored zeros stay stored through forward, backward and an AdamW step (the
pattern, indptr and indices, is unchanged); the weight gradient is one number per stored
entry, never a dense (out, in) array; input errors name their argument.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import refsparse.kernels.spmm as SL  # the fast path's driver: its tiles, chunks, blocks and caches
from refsparse import kernels
from refsparse.functional.linear import linear_backward, linear_forward
from refsparse.functional.sparse_linear import (
    check_sparse_weight,
    sparse_linear_backward,
    sparse_linear_dw,
    sparse_linear_dx,
    sparse_linear_forward,
)
from refsparse.gradcheck import check_module, check_op
from refsparse.kernels.simd import CACHE_LINE, VECTOR_BYTES
from refsparse.nn.layers import Linear
from refsparse.nn.sparse import SparseLinear, random_pattern
from refsparse.optim import AdamW

RTOL = {np.float64: 1e-12, np.float32: 1e-5}


# ----------------------------------------------------------------------------------------
# helpers
def rel_err(mine, ref, mag=None):
    """max |mine − ref| / max |mag| (0 when both are exactly zero or empty).

    ``mag`` is the same sum as ``ref`` taken over the terms' absolute values (|x| |W|ᵀ
    for y = x Wᵀ, …): the scale of a summation's rounding error, so that a sum that
    cancels down to nearly 0 is not held to more digits than its terms carry. Default
    ``ref`` itself.
    """
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, f"shape {mine.shape} vs {ref.shape}"
    if ref.size == 0:
        return 0.0
    err = float(np.max(np.abs(mine - ref)))
    scale = float(np.max(np.abs(ref if mag is None else mag)))
    return err / scale if scale > 0 else err


def assert_close(name, mine, ref, rtol, mag=None):
    err = rel_err(mine, ref, mag)
    if not err <= rtol:
        i = np.unravel_index(np.argmax(np.abs(np.asarray(mine, float) - ref)), np.shape(ref))
        raise AssertionError(f"{name}: max rel err {err:.3e} > {rtol:g}; at {i} mine "
                             f"{np.asarray(mine)[i]!r} vs twin {np.asarray(ref)[i]!r}")


def csr_from_mask(mask, values):
    """A canonical CSR with an entry at every True of ``mask`` (values may be 0.0)."""
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=mask.shape[0]), out=indptr[1:])
    return sp.csr_array((values[rows, cols], cols.astype(np.int32), indptr), shape=mask.shape)


def stored_rows(w):
    return np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))


@st.composite
def problems(draw, max_n=150, max_features=40):
    """(x, W, b, dy) with a random pattern: density 0, 1 or in between; empty rows and
    columns forced at random; a fraction of the stored values set to exactly 0.0."""
    lead = draw(st.sampled_from([(), (1,), (2,), (3, 1)]))
    n = draw(st.integers(1, max_n))
    c_out = draw(st.integers(1, max_features))
    c_in = draw(st.integers(1, max_features))
    density = draw(st.sampled_from([0.0, 1.0, 0.05, 0.3, 0.7]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((c_out, c_in)) < density
    if density not in (0.0, 1.0):
        mask[rng.random(c_out) < 0.2, :] = False  # empty rows
        mask[:, rng.random(c_in) < 0.2] = False  # empty columns
    values = rng.standard_normal((c_out, c_in))
    values[rng.random((c_out, c_in)) < 0.2] = 0.0  # stored zeros
    w = csr_from_mask(mask, values)
    x = rng.standard_normal((*lead, n, c_in))
    b = rng.standard_normal(c_out) if draw(st.booleans()) else None
    dy = rng.standard_normal((*lead, n, c_out))
    return x, w, b, dy


def check_against_twin(x, w, b, dy, dtype):
    x, dy = x.astype(dtype), dy.astype(dtype)
    w = w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    rtol = RTOL[dtype]
    y, cache = sparse_linear_forward(x, w, b)
    dx, dw, db = sparse_linear_backward(dy, cache)
    y_ref, cache_ref = linear_forward(x, w.toarray(), b)
    dx_ref, dw_dense, db_ref = linear_backward(dy, cache_ref)
    dw_ref = dw_dense[stored_rows(w), w.indices]  # the dense dW at the stored entries
    for name, a in (("y", y), ("dx", dx), ("dW", dw)):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
    assert y.shape == x.shape[:-1] + (w.shape[0],) and dx.shape == x.shape
    assert dw.shape == (w.nnz,)
    # float64 is held to max |ref|; float32 to the same sums over absolute values (the
    # scale of its rounding error: a sum that cancels keeps fewer of float32's 7 digits)
    mag = dict.fromkeys(("y", "dx", "dW", "db"))
    if dtype == np.float32:
        ax, ady, aw = (np.abs(a.astype(np.float64)) for a in (x, dy, w.toarray()))
        ax2, ady2 = ax.reshape(-1, ax.shape[-1]), ady.reshape(-1, ady.shape[-1])
        mag = {"y": ax @ aw.T + (0 if b is None else np.abs(b.astype(np.float64))),
               "dx": ady @ aw, "dW": (ady2.T @ ax2)[stored_rows(w), w.indices],
               "db": ady2.sum(axis=0)}
    assert_close("y", y, y_ref, rtol, mag["y"])
    assert_close("dx", dx, dx_ref, rtol, mag["dx"])
    assert_close("dW", dw, dw_ref, rtol, mag["dW"])
    if b is None:
        assert db is None
    else:
        assert db.dtype == dtype
        assert_close("db", db, db_ref, rtol, mag["db"])
    # the two halves of the backward, as separate kernels
    assert_close("dx alone", sparse_linear_dx(dy, cache), dx_ref, rtol, mag["dx"])
    assert_close("dW alone", sparse_linear_dw(dy, cache), dw_ref, rtol, mag["dW"])


# ----------------------------------------------------------------------------------------
# kernels against the twin
@given(problems())
def test_float64_equals_masked_dense_twin(problem):
    check_against_twin(*problem, np.float64)


@given(problems())
def test_float32_close_to_twin_and_stays_float32(problem):
    check_against_twin(*problem, np.float32)


@given(problems(max_n=200, max_features=70))
def test_chunked_rows_of_w_equal_twin(problem):
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "CHUNK_BYTES", 1)  # the minimum chunk, 8 rows: up to 9 chunks of outputs / inputs
        check_against_twin(*problem, np.float64)


@pytest.mark.parametrize("pair_min", [0, 10**9])
@given(problem=problems(max_n=200, max_features=70))
def test_backward_by_pairs_of_vectors_or_single_ones_equals_twin(pair_min, problem):
    """The backward's tile walked two vectors at a time (with a single one left over in
    small tiles of an odd number of vectors) or one at a time: both are the twin."""
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "PAIR_MIN_ENTRIES", pair_min)
        check_against_twin(*problem, np.float64)


@pytest.mark.parametrize("pair_min", [0, 10**9])
@given(problem=problems(max_n=600, max_features=70))
def test_tiles_of_four_vectors_and_more_equal_twin(pair_min, problem):
    """Tiles of up to eight vectors, so that the forward's and the backward's loops take
    four slices at a time (twice, in the widest) and then the pairs and single ones left
    over, on any vector width — with AVX-512 the default tiles hold one or two vectors."""
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "ROW_BYTES", 8 * VECTOR_BYTES)
        mp.setattr(SL, "PAIR_MIN_ENTRIES", pair_min)
        check_against_twin(*problem, np.float64)


def test_backward_tiles_take_pairs_where_w_has_the_entries():
    rng = np.random.default_rng(7)
    lanes = VECTOR_BYTES // 4
    dense = csr_from_mask(rng.random((64, 96)) < 0.5, rng.standard_normal((64, 96)))  # ~3072 ≥ 8 · 160
    thin = csr_from_mask(rng.random((64, 96)) < 0.05, rng.standard_normal((64, 96)))  # ~307 < 8 · 160
    for n in [1, 100, 4096]:
        assert SL.backward_tile_rows(n, dense, np.float32) % (2 * lanes) == 0
        assert SL.backward_tile_rows(n, thin, np.float32) == SL.tile_rows(n, np.float32)


@given(problems(max_n=200, max_features=70))
def test_blocked_forward_and_backward_equal_twin(problem):
    """The forward with W's rows split at every column block it can get, and the backward
    with Wᵀ's rows split at every output block (blocks of as few as one feature, empty
    blocks and empty rows included), are still the twin."""
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "BLOCK_BYTES", 1)  # as many blocks as columns …
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 0)  # … whatever the rows hold
        mp.setattr(SL, "CHUNK_BYTES", 1)
        check_against_twin(*problem, np.float64)


def test_column_blocks_follow_the_tile_and_the_rows():
    rng = np.random.default_rng(5)
    w = csr_from_mask(rng.random((64, 512)) < 0.5, rng.standard_normal((64, 512)))  # ~256 per row
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "BLOCK_BYTES", 32 * 1024)
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 16)
        assert SL.column_blocks(w, 64, np.float32) == 4  # 512 · 64 · 4 bytes = 4 blocks of 32 KB
        assert SL.column_blocks(w, 64, np.float64) == 8
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 100)  # 256 per row affords only 2 blocks of 100
        assert SL.column_blocks(w, 64, np.float32) == 2
    empty = csr_from_mask(np.zeros((4, 512), bool), np.zeros((4, 512)))
    assert SL.column_blocks(empty, 64, np.float32) == 1


def test_output_blocks_follow_the_tile_and_the_columns():
    rng = np.random.default_rng(5)
    w = csr_from_mask(rng.random((512, 64)) < 0.5, rng.standard_normal((512, 64)))  # ~256 per column
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "BLOCK_BYTES", 32 * 1024)
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 16)
        assert SL.output_blocks(w, 64, np.float32) == 4  # 512 outputs · 64 · 4 bytes = 4 blocks of 32 KB
        assert SL.output_blocks(w, 64, np.float64) == 8
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 100)  # ~256 per column affords only 2 blocks of 100
        assert SL.output_blocks(w, 64, np.float32) == 2
    empty = csr_from_mask(np.zeros((512, 4), bool), np.zeros((512, 4)))
    assert SL.output_blocks(empty, 64, np.float32) == 1


@pytest.mark.parametrize("nb", [1, 2, 3, 7])
def test_transposed_block_pointers_split_each_column_at_the_block_edges(nb):
    rng = np.random.default_rng(8)
    mask = rng.random((20, 11)) < 0.4
    mask[:, 3] = False
    w = csr_from_mask(mask, rng.standard_normal((20, 11)))
    bp = SL.transposed_block_pointers(w, nb)
    t_indptr = SL._transpose(w)[0]
    ob = -(-20 // nb)
    assert bp.shape == (11, nb + 1)
    for j in range(11):
        outputs = np.flatnonzero(mask[:, j])  # by definition: row j of Wᵀ, its outputs in order
        for b in range(nb + 1):
            assert bp[j, b] == t_indptr[j] + np.count_nonzero(outputs < ob * b)
    assert SL.transposed_block_pointers(w, nb) is bp  # built once per pattern and block count


def test_backward_numbers_do_not_depend_on_the_output_blocks():
    """A row of Wᵀ in NB blocks carries its dX sums through memory from block to block:
    the same additions in the same order, so the same bits as in one pass."""
    rng = np.random.default_rng(9)
    w = csr_from_mask(rng.random((300, 70)) < 0.3, rng.standard_normal((300, 70)).astype(np.float32))
    x = rng.standard_normal((200, 70)).astype(np.float32)
    dy = rng.standard_normal((200, 300)).astype(np.float32)
    with kernels.use("fast"):
        _, cache = sparse_linear_forward(x, w, None)
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "BLOCK_BYTES", 1 << 40)  # one block
        one = sparse_linear_backward(dy, cache)
        mp.setattr(SL, "BLOCK_BYTES", 1)  # as many as the columns afford
        mp.setattr(SL, "MIN_BLOCK_ENTRIES", 1)
        assert SL.output_blocks(w, SL.backward_tile_rows(200, w, np.float32), np.float32) > 10
        many = sparse_linear_backward(dy, cache)
    for a, b in zip(one[:2], many[:2]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_sum_parts_into_is_its_numpy_twin(threads):
    from refsparse.kernels.spmm import sum_parts_into

    rng = np.random.default_rng(threads)
    parts = rng.standard_normal((threads, 1000))
    perm = rng.permutation(1000)
    out = np.empty(1000)
    sum_parts_into(parts, perm, out)
    expected = np.empty(1000)
    expected[perm] = parts.sum(axis=0)  # NumPy adds the rows one after another, as the kernel does
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("nb", [1, 2, 3, 7])
def test_row_block_pointers_split_each_row_at_the_block_edges(nb):
    rng = np.random.default_rng(6)
    mask = rng.random((11, 20)) < 0.4
    mask[3] = False
    w = csr_from_mask(mask, rng.standard_normal((11, 20)))
    bp = SL.row_block_pointers(w, nb)
    xb = -(-20 // nb)
    assert bp.shape == (11, nb + 1)
    for o in range(11):
        for b in range(nb + 1):  # by definition: the first entry of row o with column >= xb · b
            cols = w.indices[w.indptr[o]:w.indptr[o + 1]]
            assert bp[o, b] == w.indptr[o] + np.count_nonzero(cols < xb * b)
    assert SL.row_block_pointers(w, nb) is bp  # built once per pattern and block count


def test_transpose_structure_is_scipys_transpose_with_a_map_into_w():
    rng = np.random.default_rng(3)
    mask = rng.random((9, 13)) < 0.3
    mask[4] = False
    mask[:, 7] = False
    w = csr_from_mask(mask, rng.standard_normal((9, 13)))
    t_indptr, t_indices, perm = SL._transpose(w)
    wt = w.T.tocsr()
    wt.sort_indices()
    np.testing.assert_array_equal(t_indptr, wt.indptr)
    np.testing.assert_array_equal(t_indices, wt.indices)
    np.testing.assert_array_equal(w.data[perm], wt.data)  # exact: only indices moved
    assert SL._transpose(w)[0] is t_indptr  # built once per pattern


def test_the_driver_sets_nothing_on_the_weight():
    """What the fast path derives from W's pattern (transpose, block pointers) is kept in
    the driver's own cache, keyed by the index arrays: nothing is set on the caller's CSR
    array, and the cache lets go of a pattern whose arrays are gone."""
    import gc

    rng = np.random.default_rng(12)
    w = csr_from_mask(rng.random((30, 40)) < 0.2, rng.standard_normal((30, 40)))
    before = dict(vars(w))
    with kernels.use("fast"):
        _, cache = sparse_linear_forward(rng.standard_normal((5, 40)), w)
        sparse_linear_backward(rng.standard_normal((5, 30)), cache)
    added = set(vars(w)) - set(before)
    assert all(k in ("_has_sorted_indices", "_has_canonical_format") for k in added), added  # scipy's own flags
    assert all(vars(w)[k] is before[k] for k in before)
    key = (id(w.indptr), id(w.indices))
    assert sum(k[:2] == key for k in list(SL._patterns._entries)) == 3  # transpose, blocks, blocks of Wᵀ
    del w, cache, before
    gc.collect()
    assert not any(k[:2] == key for k in list(SL._patterns._entries))


def test_a_new_pattern_gets_a_new_transpose():
    """The cached transpose belongs to the pattern arrays: when the same CSR object is
    given new indptr/indices, the dX that follows uses the new pattern."""
    rng = np.random.default_rng(4)
    w = csr_from_mask(rng.random((30, 40)) < 0.01, rng.standard_normal((30, 40)))
    x, dy = rng.standard_normal((5, 40)), rng.standard_normal((5, 30))
    _, cache = sparse_linear_forward(x, w)
    assert_close("dx", sparse_linear_dx(dy, cache), dy @ w.toarray(), 1e-12)  # caches it
    other = csr_from_mask(rng.random((30, 40)) < 0.02, rng.standard_normal((30, 40)))
    w.indptr, w.indices, w.data = other.indptr, other.indices, other.data
    _, cache = sparse_linear_forward(x, w)
    assert_close("dx", sparse_linear_dx(dy, cache), dy @ other.toarray(), 1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (1, 9, 1), (9, 1, 1), (300, 5, 3)])
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_degenerate_shapes(shape, density):
    n, c_out, c_in = shape
    rng = np.random.default_rng(0)
    mask = np.full((c_out, c_in), density == 1.0)
    w = csr_from_mask(mask, rng.standard_normal((c_out, c_in)))
    check_against_twin(rng.standard_normal((n, c_in)), w, rng.standard_normal(c_out),
                       rng.standard_normal((n, c_out)), np.float64)


def test_empty_batch():
    w = csr_from_mask(np.ones((3, 4), bool), np.ones((3, 4)))
    y, cache = sparse_linear_forward(np.zeros((0, 4)), w, np.ones(3))
    dx, dw, db = sparse_linear_backward(np.zeros((0, 3)), cache)
    assert y.shape == (0, 3) and dx.shape == (0, 4)
    assert np.all(dw == 0) and dw.shape == (12,) and np.all(db == 0)


def test_outputs_start_on_a_cache_line():
    """y and dx are stored from transposed tiles in whole lines: both start on one."""
    rng = np.random.default_rng(5)
    w = csr_from_mask(rng.random((24, 40)) < 0.3, rng.standard_normal((24, 40)))
    for dtype in (np.float32, np.float64):
        with kernels.use("fast"):
            y, cache = sparse_linear_forward(rng.standard_normal((70, 40)).astype(dtype), w.astype(dtype), None)
            dx, _, _ = sparse_linear_backward(rng.standard_normal((70, 24)).astype(dtype), cache)
        assert y.ctypes.data % CACHE_LINE == 0 and dx.ctypes.data % CACHE_LINE == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, c_out, c_in", [(130, 48, 64), (1, 16, 32), (70, 37, 64), (64, 64, 40), (300, 96, 128)])
def test_streamed_outputs_equal_twin(dtype, n, c_out, c_in):
    """With every output streamed (non-temporal stores, STREAM_BYTES = 0): feature counts
    that are whole lines take the streamed stores, the others the plain ones, and
    batches that end in a ragged tile store their last rows plainly; all are the twin."""
    rng = np.random.default_rng(n + c_out + c_in)
    w = csr_from_mask(rng.random((c_out, c_in)) < 0.3, rng.standard_normal((c_out, c_in)))
    x, dy = rng.standard_normal((n, c_in)), rng.standard_normal((n, c_out))
    with pytest.MonkeyPatch.context() as mp, kernels.use("fast"):
        mp.setattr(SL, "STREAM_BYTES", 0)
        check_against_twin(x, w, rng.standard_normal(c_out), dy, dtype)


def test_outputs_kept_by_the_caller_survive_later_calls():
    """Outputs large enough to be recycled (4 MiB and up, refsparse.kernels.buffers) are
    never written again while the caller holds them, and recycled memory gives the same
    numbers as fresh memory."""
    rng = np.random.default_rng(11)
    n, c_out, c_in = 2048, 512, 512  # y and dx: 4 MiB of float32 each
    w = csr_from_mask(rng.random((c_out, c_in)) < 0.1, rng.standard_normal((c_out, c_in))).astype(np.float32)
    x1, x2 = (rng.standard_normal((n, c_in)).astype(np.float32) for _ in range(2))
    dy1, dy2 = (rng.standard_normal((n, c_out)).astype(np.float32) for _ in range(2))
    y1, cache1 = sparse_linear_forward(x1, w)
    dx1, dw1, _ = sparse_linear_backward(dy1, cache1)
    kept = [a.copy() for a in (y1, dx1, dw1)]
    y2, cache2 = sparse_linear_forward(x2, w)
    dx2, _, _ = sparse_linear_backward(dy2, cache2)
    for a, b in zip((y1, dx1, dw1), kept):
        np.testing.assert_array_equal(a, b)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    del y1, dx1, y2, dx2
    y3, cache3 = sparse_linear_forward(x1, w)  # from recycled memory
    dx3, dw3, _ = sparse_linear_backward(dy1, cache3)
    for a, b in zip((y3, dx3, dw3), kept):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------
# gradcheck
@given(problems(max_n=6, max_features=6))
def test_gradcheck_functional(problem):
    x, w, b, _ = problem
    if w.nnz == 0:  # gradcheck differences arrays in place: give it one entry to perturb
        w = csr_from_mask(np.eye(*w.shape, dtype=bool)[:, :], np.ones(w.shape))
    indptr, indices, shape = w.indptr, w.indices, w.shape

    def forward(x, wdata, bias=None):
        weight = sp.csr_array((wdata, indices, indptr), shape=shape)
        return sparse_linear_forward(x, weight, bias)

    inputs = {"x": x, "wdata": w.data.copy()}
    if b is not None:
        inputs["bias"] = b
    report = check_op(forward, sparse_linear_backward if b is not None
                      else (lambda dy, c: sparse_linear_backward(dy, c)[:2]), inputs, rtol=1e-7)
    report.raise_if_failed()


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_module(bias):
    rng = np.random.default_rng(3)
    layer = SparseLinear(7, 5, bias=bias, density=0.4, rng=rng)
    layer.weight.value.data[:3] = 0.0  # stored zeros have gradients too
    report = check_module(layer, rng.standard_normal((2, 3, 7)), rng=rng)
    report.raise_if_failed()
    assert report["weight"].shape == (layer.nnz,)


# ----------------------------------------------------------------------------------------
# torch autograd on the masked dense weight
@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_matches_torch_autograd(dtype, density):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    layer = SparseLinear(37, 29, density=density, rng=rng, dtype=np.dtype(dtype).name)
    layer.weight.value.data[::5] = 0.0
    x = rng.standard_normal((3, 41, 37)).astype(dtype)
    dy = rng.standard_normal((3, 41, 29)).astype(dtype)
    y = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dy)

    w = layer.weight.value
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w.toarray(), requires_grad=True)
    tb = torch.tensor(layer.bias.value, requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    assert_close("y", y, ty.detach().numpy(), rtol)
    assert_close("dx", dx, tx.grad.numpy(), rtol)
    assert_close("dW", layer.weight.grad, tw.grad.numpy()[stored_rows(w), w.indices], rtol)
    assert_close("db", layer.bias.grad, tb.grad.numpy(), rtol)


# ----------------------------------------------------------------------------------------
# the pattern is the parameter's structure: stored zeros stay, no dense gradient
def test_stored_zeros_survive_forward_backward_and_adamw():
    rng = np.random.default_rng(11)
    mask = rng.random((12, 9)) < 0.5
    values = rng.standard_normal((12, 9))
    values[mask & (rng.random((12, 9)) < 0.4)] = 0.0
    layer = SparseLinear(9, 12, weight=csr_from_mask(mask, values), rng=rng)
    w = layer.weight.value
    n_zero = int(np.sum(w.data == 0))
    assert n_zero > 0 and layer.nnz == int(mask.sum())
    indptr, indices = w.indptr.copy(), w.indices.copy()
    opt = AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        layer.zero_grad()
        y = layer.forward(rng.standard_normal((4, 9)))
        layer.backward(rng.standard_normal(y.shape))
        assert layer.weight.grad.shape == (layer.nnz,)  # never (out, in)
        opt.step()
    assert layer.weight.value is w  # updated in place
    np.testing.assert_array_equal(w.indptr, indptr)
    np.testing.assert_array_equal(w.indices, indices)
    assert w.nnz == int(mask.sum())


def test_weight_gradient_is_aligned_with_data_never_dense():
    rng = np.random.default_rng(5)
    layer = SparseLinear(50, 40, density=0.1, rng=rng)
    x = rng.standard_normal((8, 50))
    dy = rng.standard_normal((8, 40))
    layer.forward(x)
    layer.backward(dy)
    w = layer.weight.value
    assert layer.weight.grad.shape == w.data.shape == (layer.nnz,)
    dense = dy.T @ x
    assert_close("dW", layer.weight.grad, dense[stored_rows(w), w.indices], 1e-12)
    # accumulation: a second backward adds
    g = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(dy)
    assert_close("2 dW", layer.weight.grad, 2 * g, 1e-15)


def test_pattern_change_between_forward_and_backward_is_refused():
    rng = np.random.default_rng(0)
    layer = SparseLinear(6, 4, density=0.5, rng=rng)
    layer.forward(rng.standard_normal((2, 6)))
    layer.weight.value = sp.csr_array(np.ones((4, 6)))
    layer.weight.grad = np.zeros(24)
    with pytest.raises(RuntimeError, match="changed between forward and backward"):
        layer.backward(rng.standard_normal((2, 4)))


def test_load_state_dict_keeps_stored_zeros():
    rng = np.random.default_rng(2)
    layer = SparseLinear(6, 5, density=0.5, rng=rng)
    layer.weight.value.data[:4] = 0.0
    state = layer.state_dict()
    other = SparseLinear(6, 5, density=0.5, rng=np.random.default_rng(9))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.weight.value.indices, layer.weight.value.indices)
    np.testing.assert_array_equal(other.weight.value.data, layer.weight.value.data)


# ----------------------------------------------------------------------------------------
# construction
@pytest.mark.parametrize("density", [0.0, 0.013, 0.5, 1.0])
def test_random_pattern_has_exact_count_and_is_canonical(density):
    rng = np.random.default_rng(1)
    layer = SparseLinear(33, 17, density=density, rng=rng)
    w = layer.weight.value
    assert w.nnz == round(density * 33 * 17) == layer.nnz
    assert w.has_canonical_format
    check_sparse_weight("weight", sp.csr_array((w.data, w.indices, w.indptr), shape=w.shape))
    bound = 1 / np.sqrt(33)
    assert np.all(np.abs(w.data) <= bound) and np.all(np.abs(layer.bias.value) <= bound)
    indptr, indices = random_pattern(17, 33, density, np.random.default_rng(1))
    np.testing.assert_array_equal(indptr, w.indptr)
    np.testing.assert_array_equal(indices, w.indices)


def test_same_rng_same_layer_and_dtype():
    a = SparseLinear(10, 8, density=0.3, rng=np.random.default_rng(4), dtype="float32")
    b = SparseLinear(10, 8, density=0.3, rng=np.random.default_rng(4), dtype="float32")
    assert a.weight.dtype == np.float32 and a.bias.value.dtype == np.float32
    np.testing.assert_array_equal(a.weight.value.data, b.weight.value.data)
    np.testing.assert_array_equal(a.weight.value.indices, b.weight.value.indices)


def test_given_weight_is_copied_and_canonicalised():
    # unsorted indices, a duplicate (0, 1) twice, a stored zero at (1, 2)
    w = sp.csr_array((np.array([2.0, 1.0, 0.5, 0.0]), np.array([3, 1, 1, 2]), np.array([0, 3, 4])),
                     shape=(2, 4))
    layer = SparseLinear(4, 2, weight=w, bias=False)
    v = layer.weight.value
    np.testing.assert_array_equal(v.indices, [1, 3, 2])
    np.testing.assert_array_equal(v.data, [1.5, 2.0, 0.0])
    assert v.has_canonical_format and layer.bias is None
    w.data[:] = 7.0
    assert v.data[0] == 1.5  # not shared


def test_from_dense_keeps_masked_zeros_and_to_dense_round_trips():
    rng = np.random.default_rng(8)
    lin = Linear(6, 5, rng=rng)
    lin.weight.value[1, :] = 0.0
    mask = rng.random((5, 6)) < 0.5
    mask[1, :] = True  # six stored zeros
    layer = SparseLinear.from_dense(lin, mask)
    assert layer.nnz == int(mask.sum())
    assert int(np.sum(layer.weight.value.data == 0)) >= 6
    x = rng.standard_normal((3, 6))
    masked = Linear(6, 5, rng=rng)
    masked.weight.value[...] = np.where(mask, lin.weight.value, 0.0)
    masked.bias.value[...] = lin.bias.value
    assert_close("y", layer.forward(x), masked.forward(x), 1e-13)
    back = layer.to_dense()
    np.testing.assert_array_equal(back.weight.value, masked.weight.value)
    np.testing.assert_array_equal(back.bias.value, lin.bias.value)
    assert back.weight.value is not lin.weight.value


# ----------------------------------------------------------------------------------------
# errors name their argument
def test_functional_input_errors():
    w = sp.csr_array(np.eye(3, 4))
    x = np.ones((2, 4))
    with pytest.raises(TypeError, match="weight: expected a CSR"):
        sparse_linear_forward(x, w.tocoo(), None)
    with pytest.raises(TypeError, match="weight: expected a scipy.sparse"):
        sparse_linear_forward(x, np.eye(3, 4), None)
    unsorted = sp.csr_array((np.ones(2), np.array([2, 0]), np.array([0, 2, 2, 2])), shape=(3, 4))
    with pytest.raises(ValueError, match="weight: expected a canonical"):
        sparse_linear_forward(x, unsorted, None)
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        sparse_linear_forward(x.astype(np.float32), w, None)  # float32 x, float64 weight
    with pytest.raises(ValueError, match="x: expected shape"):
        sparse_linear_forward(np.ones((2, 3)), w, None)
    with pytest.raises(ValueError, match="bias: expected shape"):
        sparse_linear_forward(x, w, np.ones(4))
    with pytest.raises(TypeError, match="bias: expected dtype"):
        sparse_linear_forward(x, w, np.ones(3, np.float32))
    _, cache = sparse_linear_forward(x, w, None)
    with pytest.raises(ValueError, match="dy: expected shape"):
        sparse_linear_backward(np.ones((2, 4)), cache)
    with pytest.raises(TypeError, match="dy: expected dtype"):
        sparse_linear_backward(np.ones((2, 3), np.float32), cache)


def test_module_input_errors():
    with pytest.raises(ValueError, match="density, weight: expected exactly one"):
        SparseLinear(3, 2)
    with pytest.raises(ValueError, match="density, weight: expected exactly one"):
        SparseLinear(3, 2, density=0.5, weight=sp.csr_array(np.ones((2, 3))))
    with pytest.raises(ValueError, match="density: expected a number in"):
        SparseLinear(3, 2, density=1.5)
    with pytest.raises(ValueError, match="weight: expected shape"):
        SparseLinear(3, 2, weight=sp.csr_array(np.ones((3, 2))))
    with pytest.raises(TypeError, match="weight: expected a scipy.sparse CSR"):
        SparseLinear(3, 2, weight=sp.coo_array(np.ones((2, 3))))
    with pytest.raises(TypeError, match="weight: expected dtype float32"):
        SparseLinear(3, 2, weight=sp.csr_array(np.ones((2, 3))), dtype="float32")
    with pytest.raises(ValueError, match="in_features"):
        SparseLinear(0, 2, density=0.5)
    layer = SparseLinear(3, 2, density=0.5)
    with pytest.raises(ValueError, match="x: expected last dimension 3"):
        layer.forward(np.ones((2, 4)))
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="mask: expected dtype bool"):
        SparseLinear.from_dense(Linear(3, 2), np.ones((2, 3)))
    with pytest.raises(ValueError, match="mask: expected shape"):
        SparseLinear.from_dense(Linear(3, 2), np.ones((3, 2), bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_out, c_in, n", [(3, 0, 5), (0, 4, 5), (3, 4, 0), (0, 0, 2)])
def test_empty_layers_and_batches(dtype, c_out, c_in, n):
    """No inputs, no outputs or no rows: y is the bias (or empty), dx zeros, dW empty,
    db the row count — as the masked dense twin gives."""
    w = sp.csr_array((c_out, c_in), dtype=dtype)
    x = np.ones((2, n, c_in), dtype)
    b = np.arange(c_out, dtype=dtype)
    y, cache = sparse_linear_forward(x, w, b)
    y_ref, _ = linear_forward(x, w.toarray(), b)
    np.testing.assert_array_equal(y, y_ref)
    dx, dw, db = sparse_linear_backward(np.ones((2, n, c_out), dtype), cache)
    assert dx.shape == x.shape and dx.dtype == dtype and not dx.any()
    assert dw.shape == (0,)
    np.testing.assert_array_equal(db, np.full(c_out, 2 * n, dtype))
