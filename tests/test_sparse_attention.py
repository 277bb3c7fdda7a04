"""Sparse attention kernels against their NumPy twin (dense masked attention), gradcheck, torch.

The twin is refsparse.functional.attention_forward/backward with the pattern as a dense
boolean mask; in float64 the kernels must agree with it to 1e-12 relative (relative to
each tensor's largest entry), on drawn shapes and patterns that include empty rows,
single-entry rows, full rows, per-head and per-batch patterns, and T_q != T_k.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse import patterns as P
from refsparse.functional.sparse_attention import (
    prepare_pattern,
    sparse_attention_backward,
    sparse_attention_forward,
)
from refsparse.gradcheck import check_op
from refsparse.kernels.simd import CACHE_LINE, VECTOR_BYTES, vlanes
from refsparse import kernels
from refsparse.kernels.sparse_attention import new_slabs, new_work, segments


def runs(pp):
    """The fast kernels' shared runs of a prepared pattern, rows then keys:
    (seg_start, seg_len, t_seg_start, t_seg_len)."""
    return segments(pp.indptr, pp.indices) + segments(pp.t_indptr, pp.t_indices)


def lanes(dtype):
    """L, the numbers in one register-tile vector of dtype (refsparse.kernels.simd)."""
    return vlanes(np.zeros(1, dtype))


def rel_err(mine, theirs):
    # relative to the tensor's largest entry; inputs are O(1), so a tensor whose true value is
    # 0 (dk when every row has a single key: p = 1, ds = 0) is measured against 1, not
    # against its own rounding noise
    scale = max(np.abs(theirs).max(initial=0.0), np.abs(mine).max(initial=0.0), 1.0)
    err = np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64)).max(initial=0.0)
    return err / scale if scale > 0 else err


def assert_close(name, mine, theirs, tol):
    e = rel_err(mine, theirs)
    assert e <= tol, (
        f"{name}: shape {np.shape(theirs)}, max abs err "
        f"{np.abs(np.asarray(mine, np.float64) - theirs).max():.3e}, max rel err {e:.3e} > {tol:g}\n"
        f"mine:   {np.ravel(mine)[:6]}\ntheirs: {np.ravel(theirs)[:6]}"
    )


def random_pattern(rng, t_q, t_k, density):
    """A random CSR pattern with an empty row, a single-entry row and a full row forced in."""
    dense = rng.random((t_q, t_k)) < density
    if t_q >= 3:
        dense[0] = False  # empty row
        dense[1] = False
        dense[1, rng.integers(t_k)] = True  # single entry
        dense[2] = True  # full row
    return sp.csr_array(dense)


def dense_mask(pattern, B, H):
    """The (B or 1, H or 1, Tq, Tk) boolean mask of a pattern argument."""
    if sp.issparse(pattern):
        return pattern.toarray()[None, None]
    if sp.issparse(pattern[0]):
        return np.stack([p.toarray() for p in pattern])[None]
    return np.stack([np.stack([p.toarray() for p in row]) for row in pattern])


@st.composite
def cases(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 4))
    t_q = draw(st.integers(1, 12))
    t_k = draw(st.sampled_from([t_q, draw(st.integers(1, 12))]))
    D = draw(st.integers(1, 9))
    Dv = draw(st.sampled_from([D, draw(st.integers(1, 9)), lanes(np.float64)]))  # the sums' register tile
    grouping = draw(st.sampled_from(["shared", "per_head", "per_batch", "per_batch_head"]))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, t_q, t_k, D, Dv, grouping, density, seed


def make_case(B, H, t_q, t_k, D, Dv, grouping, density, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, t_q, D)).astype(dtype)
    k = rng.standard_normal((B, H, t_k, D)).astype(dtype)
    v = rng.standard_normal((B, H, t_k, Dv)).astype(dtype)
    new = lambda: random_pattern(rng, t_q, t_k, density)  # noqa: E731
    if grouping == "shared":
        pattern = new()
    elif grouping == "per_head":
        pattern = [new() for _ in range(H)]
    elif grouping == "per_batch":
        pattern = [[new()] for _ in range(B)]
    else:
        pattern = [[new() for _ in range(H)] for _ in range(B)]
    return q, k, v, pattern, rng


@given(cases())
def test_kernels_equal_dense_twin_float64(case):
    q, k, v, pattern, rng = make_case(*case)
    B, H = q.shape[:2]
    out, cache = sparse_attention_forward(q, k, v, pattern)
    out_d, cache_d = F.attention_forward(q, k, v, dense_mask(pattern, B, H))
    assert_close("out", out, out_d, 1e-12)
    dout = rng.standard_normal(out.shape)
    for name, mine, theirs in zip(("dq", "dk", "dv"), sparse_attention_backward(dout, cache),
                                  F.attention_backward(dout, cache_d)):
        assert mine.shape == theirs.shape
        assert_close(name, mine, theirs, 1e-12)


@given(cases())
def test_float32_in_float32_out_and_close(case):
    q, k, v, pattern, rng = make_case(*case, dtype=np.float32)
    B, H = q.shape[:2]
    out, cache = sparse_attention_forward(q, k, v, pattern)
    assert out.dtype == np.float32
    out_d, cache_d = F.attention_forward(q, k, v, dense_mask(pattern, B, H))
    assert_close("out", out, out_d, 1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for name, mine, theirs in zip(("dq", "dk", "dv"), sparse_attention_backward(dout, cache),
                                  F.attention_backward(dout, cache_d)):
        assert mine.dtype == np.float32, name
        assert_close(name, mine, theirs, 1e-5)


def _pad(p, t_q, t_k):
    """Pattern p in the top-left corner of a (t_q, t_k) pattern; the other rows are empty."""
    n_q, n_k = p.shape
    return sp.csr_array(sp.block_diag([p, sp.csr_array((t_q - n_q, t_k - n_k), dtype=bool)]).astype(bool))


def _structured_patterns(t_q, t_k):
    """Patterns whose groups of 4 rows share long key runs (the kernels' fast path), with
    short last groups (T not a multiple of 4) and, for T_q != T_k, empty rows or unseen keys."""
    t = min(t_q, t_k)
    pats = {
        "local": P.local(t, 5),
        "local_both_sides": P.local(t, 4, causal=False),
        "strided": P.strided(t, 4),
        "fixed": P.fixed(t, 4, 2),  # summary columns of earlier blocks: shared runs of scattered keys
        "bigbird": P.bigbird(t - t % 3, 3, seed=1),
        "full": P.full(t),
    }
    return {n: _pad(p, t_q, t_k) for n, p in pats.items()}


def _run_kinds(indices, seg_start, seg_len):
    """How many shared runs have consecutive keys (register tiles) and how many do not."""
    runs = [(s, n) for s, n in zip(seg_start[..., 0].ravel(), seg_len.ravel()) if n > 0]
    consecutive = sum(indices[s + n - 1] - indices[s] == n - 1 for s, n in runs)
    return consecutive, len(runs) - consecutive


@pytest.mark.parametrize("t_q,t_k", [(23, 23), (17, 26), (30, 13)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("D,Dv", [(8, 5), (5, "L")])  # L: the sums' register tile, one vector wide
def test_fast_path_and_general_path_equal_dense_twin(t_q, t_k, dtype, tol, D, Dv):
    """Structured patterns take the shared-run fast path for most entries; one head with a
    random pattern and a group with an empty row take the general path."""
    Dv = lanes(dtype) if Dv == "L" else Dv
    rng = np.random.default_rng(11)
    B, H = 2, 3
    q = rng.standard_normal((B, H, t_q, D)).astype(dtype)
    k = rng.standard_normal((B, H, t_k, D)).astype(dtype)
    v = rng.standard_normal((B, H, t_k, Dv)).astype(dtype)
    for name, pat in _structured_patterns(t_q, t_k).items():
        rand = random_pattern(rng, t_q, t_k, 0.3)  # rows 0-2: empty, single entry, full
        holed = pat.tolil()
        holed[5] = False  # an empty row inside a group: that group has no shared run
        pattern = [pat, rand, sp.csr_array(holed)]
        pp = prepare_pattern(pattern)
        seg_start, seg_len, _, t_seg_len = runs(pp)
        assert seg_len[0, 0].sum() > 0 and t_seg_len[0, 0].sum() > 0, name  # fast path used
        assert seg_len[0, 2, 1] == 0, name  # the group with the empty row 5
        if name in ("local", "fixed"):  # consecutive runs take the tile; fixed's scattered columns do not
            tiles, pairs = _run_kinds(pp.indices, seg_start[0, 0], seg_len[0, 0])
            assert tiles > 0 and (pairs > 0) == (name == "fixed"), (name, tiles, pairs)
        out, cache = sparse_attention_forward(q, k, v, pp)
        out_d, cache_d = F.attention_forward(q, k, v, dense_mask(pattern, B, H))
        assert_close(f"{name} out", out, out_d, tol)
        dout = rng.standard_normal(out.shape).astype(dtype)
        for g, mine, theirs in zip(("dq", "dk", "dv"), sparse_attention_backward(dout, cache),
                                   F.attention_backward(dout, cache_d)):
            assert_close(f"{name} {g}", mine, theirs, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("D,Dv", [(7, "L"), ("L", 7)])  # L: the sums' tile (Dv) and the dQ terms' tile (D)
def test_long_runs_take_several_register_tiles(dtype, tol, D, Dv):
    """Windows wider than two vectors: runs of up to 2L + 5 keys take several tiles of L
    keys (L = vlanes: e.g. 16 float32 on AVX2, 64 with AVX-512) and a partial last one, the
    groups of a block have runs of different lengths (the first rows of a causal window are
    short), and the last block of groups is partial (T = 4L + 6: L + 2 groups of 4 rows,
    blocks of KB = 8 groups)."""
    from refsparse import patterns as P
    from refsparse.kernels.sparse_attention import KB, G

    L = lanes(dtype)
    D, Dv = (L if D == "L" else D), (L if Dv == "L" else Dv)
    rng = np.random.default_rng(5)
    B, H, T = 1, 2, 4 * L + 6
    q = rng.standard_normal((B, H, T, D)).astype(dtype)
    k = rng.standard_normal((B, H, T, D)).astype(dtype)
    v = rng.standard_normal((B, H, T, Dv)).astype(dtype)
    pattern = [P.local(T, 2 * L + 8), P.local(T, 2 * L + 1, causal=False)]
    pp = prepare_pattern(pattern)
    assert runs(pp)[1].max() > 2 * L
    assert (T + G - 1) // G % KB != 0  # a partial last block of groups
    out, cache = sparse_attention_forward(q, k, v, pp)
    out_d, cache_d = F.attention_forward(q, k, v, dense_mask([pattern], B, H))
    assert_close("out", out, out_d, tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for g, mine, theirs in zip(("dq", "dk", "dv"), sparse_attention_backward(dout, cache),
                               F.attention_backward(dout, cache_d)):
        assert_close(g, mine, theirs, tol)


# A compile target without AVX-512, for the test below: Numba then compiles 64-byte vectors.
HASWELL = {"NUMBA_CPU_NAME": "haswell",
           "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+cx16,+movbe,+lzcnt"}


@pytest.mark.skipif(VECTOR_BYTES != 256, reason="this host compiles 64-byte vectors: the tests above check them")
def test_register_tiles_of_64_byte_vectors_too():
    """On an AVX-512 host the tests above check the 256-byte register tiles; this runs the
    tile tests, the vector tests of test_simd.py and the sparse-weight kernels' twin tests
    again in a process whose Numba compiles for AVX2 (Haswell), so that the 64-byte
    vectors and 32-byte transpose blocks every AVX2 CPU runs are checked here too. Numba
    keys its cache by the compile target, so the two never share compiled kernels."""
    tests = os.path.dirname(__file__)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            os.path.join(tests, "test_sparse_attention.py"), os.path.join(tests, "test_simd.py"),
            os.path.join(tests, "test_sparse_linear.py"),
            "-k", "fast_path or long_runs or test_simd or twin"]
    env = dict(os.environ, **HASWELL, REFSPARSE_KERNELS="fast")  # the vectors are the fast path's
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("NC", [1, 2, 3, 7])
def test_chunks_of_equal_work(NC):
    """The tasks of a slab go to NC contiguous chunks whose work (entries + rows of their
    tasks) differs from total/NC by at most one task's work — for a causal strided pattern,
    whose later rows hold more entries, an even split of the tasks would not be."""
    from refsparse import patterns as P
    from refsparse.kernels.sparse_attention import KB, G, _balanced_chunks

    T, H = 509, 2
    pp = prepare_pattern([P.strided(T, 16), P.local(T, 40)])
    NB = (runs(pp)[1].shape[2] + KB - 1) // KB
    work = []  # per task, as the docstring defines it
    for h in range(H):
        ip = pp.indptr[0, h]
        for blk in range(NB):
            r0, r1 = min(T, blk * KB * G), min(T, (blk + 1) * KB * G)
            work.append(int(ip[r1] - ip[r0]) + (r1 - r0))
    bounds = _balanced_chunks(pp.indptr, 0, H, H, NB, NC)
    assert bounds[0] == 0 and bounds[-1] == H * NB and np.all(np.diff(bounds) >= 0)
    total = sum(work)
    for c in range(NC):
        mine = sum(work[bounds[c]:bounds[c + 1]])
        assert abs(mine - total / NC) <= max(work), (c, mine, total / NC)


def test_same_numbers_on_one_thread_and_on_all():
    """The backward cuts each slab's tasks into a fixed number of chunks (one partial dQ
    each), so every sum has the same order whichever thread runs a chunk and however many
    threads there are: the bits do not depend on the thread count. Three heads of two blocks
    of keys each, in one slab, and chunks of equal work that split a head's tasks between two
    chunks (checked)."""
    import numba

    from refsparse import patterns as P
    from refsparse.kernels.sparse_attention import KB, _balanced_chunks

    rng = np.random.default_rng(8)
    B, H, T, D = 1, 3, 37, 16
    q, k, v, dout = (rng.standard_normal((B, H, T, D)) for _ in range(4))
    pattern = [P.local(T, 9), random_pattern(rng, T, T, 0.3), P.strided(T, 6)]
    pp = prepare_pattern(pattern)
    NB = (runs(pp)[3].shape[2] + KB - 1) // KB  # blocks of keys per head
    bounds = _balanced_chunks(pp.t_indptr, 0, H, H, NB, 2)  # with 2 chunks (the 2-thread case)
    assert any(b % NB for b in bounds[1:-1]), (bounds, NB)  # a cut inside a head

    def run():
        out, cache = sparse_attention_forward(q, k, v, pattern)
        return (out,) + sparse_attention_backward(dout, cache)

    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(n)
    for name, a, b in zip(("out", "dq", "dk", "dv"), one, run()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.sampled_from(["random", "mixed"]))
def test_shared_segments_kernel_equals_its_numpy_twin(t_q, t_k, seed, kind):
    """The kernel's G-way merge against the twin's intersections, on patterns with long shared
    runs (windows, blocks), broken runs (a random key between them) and none (random rows),
    per head and per batch element, and their transposes (the backward's)."""
    from refsparse import patterns as P
    from refsparse.kernels.sparse_attention import shared_segments_numpy

    rng = np.random.default_rng(seed)
    grid = []
    for _ in range(2):
        row = []
        for _ in range(2):
            dense = rng.random((t_q, t_k)) < rng.uniform(0.05, 0.5)
            if kind == "mixed":
                w = int(rng.integers(1, 12))
                i, j = np.arange(t_q)[:, None], np.arange(t_k)[None, :]
                dense |= (j <= i) & (i - j < w)  # a window: long runs shared by groups of rows
                dense[:, rng.integers(0, t_k, 2)] = rng.random((t_q, 2)) < 0.5  # runs broken here and there
            row.append(P.as_pattern(dense))
        grid.append(row)
    pp = prepare_pattern(grid)
    seg_start, seg_len, t_seg_start, t_seg_len = runs(pp)
    for ip, idx, start, length in [(pp.indptr, pp.indices, seg_start, seg_len),
                                   (pp.t_indptr, pp.t_indices, t_seg_start, t_seg_len)]:
        twin_start, twin_length = shared_segments_numpy(ip, idx)
        np.testing.assert_array_equal(length, twin_length)
        np.testing.assert_array_equal(start, twin_start)


def test_shared_segments_of_a_causal_window():
    from refsparse import patterns as P
    from refsparse.kernels.sparse_attention import shared_segments

    w, t = 6, 22
    pp = prepare_pattern(P.local(t, w))
    seg_start, seg_len = runs(pp)[:2]
    start, length = seg_start[0, 0], seg_len[0, 0]  # (6, 4), (6,)
    assert length.shape == (6,)  # ceil(22 / 4) groups; the last has 2 rows
    for g in range(5):
        i0 = 4 * g
        lo, hi = max(0, i0 + 3 - w + 1), i0 + 1  # keys all four rows hold
        assert length[g] == hi - lo
        for r in range(4):
            row = pp.indices[pp.indptr[0, 0, i0 + r]:pp.indptr[0, 0, i0 + r + 1]]
            assert list(pp.indices[start[g, r]:start[g, r] + length[g]]) == list(range(lo, hi))
            assert row[start[g, r] - pp.indptr[0, 0, i0 + r]] == lo
    assert length[5] == 0  # short last group: general path
    # rows that share keys at non-consecutive positions: the longest consecutive run counts
    dense = np.zeros((4, 10), bool)
    dense[:, [0, 1, 2, 5, 6, 7, 8]] = True
    dense[1, 4] = True  # row 1 has key 4 between 2 and 5: the runs are 0-2 and 5-8
    s_, l_ = shared_segments(*prepare_pattern(sp.csr_array(dense))[1:3])
    assert l_[0, 0, 0] == 4 and list(s_[0, 0, 0]) == [3, 11, 18, 25]  # key 5 in each row


def test_empty_rows_give_zero_output_and_zero_gradients():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 5, 3)) for _ in range(3))
    dense = np.tril(np.ones((5, 5), bool))
    dense[2] = False  # query 2 sees nothing
    dense[:, 4] = False  # key 4 is seen by nobody
    out, cache = sparse_attention_forward(q, k, v, sp.csr_array(dense))
    assert np.all(out[:, :, 2] == 0)
    assert np.all(cache.lse[:, :, 2] == -np.inf)
    dq, dk, dv = sparse_attention_backward(rng.standard_normal(out.shape), cache)
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(g))
    assert np.all(dq[:, :, 2] == 0)
    assert np.all(dk[:, :, 4] == 0) and np.all(dv[:, :, 4] == 0)


def test_all_rows_empty():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in range(3))
    out, cache = sparse_attention_forward(q, k, v, sp.csr_array((4, 4), dtype=bool))
    assert np.all(out == 0)
    grads = sparse_attention_backward(np.ones_like(out), cache)
    assert all(np.all(g == 0) for g in grads)


@pytest.mark.parametrize("grouping", ["shared", "per_head", "per_batch_head"])
def test_gradcheck(grouping):
    rng = np.random.default_rng(3)
    B, H, Tq, Tk, D = 2, 2, 5, 6, 3
    q, k, v, pattern, _ = make_case(B, H, Tq, Tk, D, 4, grouping, 0.5, 7)
    pp = prepare_pattern(pattern)
    report = check_op(
        lambda q, k, v: sparse_attention_forward(q, k, v, pp),
        sparse_attention_backward,
        {"q": q, "k": k, "v": v},
        rng=rng,
    )
    report.raise_if_failed()


def test_views_of_split_heads_are_used_without_copy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 8))
    q, _ = F.split_heads_forward(x, 2)  # (B, H, T, D) view of (B, T, H, D) memory
    out, cache = sparse_attention_forward(q, q, q, sp.csr_array(np.tril(np.ones((6, 6), bool))))
    assert np.shares_memory(cache.q, x)
    merged = out.transpose(0, 2, 1, 3).reshape(2, 6, 8)
    assert np.shares_memory(merged, cache.out)  # merging heads costs no copy


def test_outputs_and_scratch_start_on_a_cache_line():
    """The arrays the kernels write with vector stores start on a cache line, and the
    scratch rows are whole lines, for any T and pattern width."""
    rng = np.random.default_rng(6)
    for dtype, T in ((np.float32, 37), (np.float64, 50)):
        q, k, v = (rng.standard_normal((1, 2, T, 8)).astype(dtype) for _ in range(3))
        with kernels.use("fast"):
            out, cache = sparse_attention_forward(q, k, v, P.local(T, 5))
            grads = sparse_attention_backward(np.ones_like(out), cache)
        for a in (cache.out, cache.lse) + tuple(g.transpose(0, 2, 1, 3) for g in grads):
            assert a.ctypes.data % CACHE_LINE == 0
        line = CACHE_LINE // np.dtype(dtype).itemsize
        work = new_work(13, dtype)
        assert work.ctypes.data % CACHE_LINE == 0 and work.shape[-1] % line == 0 and work.shape[-1] >= 13 + vlanes(work)
        for a in new_slabs(2, T, (8, 8), dtype, transposed=(True, True), partials=8):
            assert a.ctypes.data % CACHE_LINE == 0
            assert a.shape[-1] == 8 or (a.shape[-1] % line == 0 and a.shape[-1] >= T + vlanes(a))


def test_bad_input_is_named():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 2, 4, 3))
    pat = sp.csr_array(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="pattern"):
        sparse_attention_forward(q, q, q, sp.csr_array(np.ones((4, 5), bool)))
    with pytest.raises(ValueError, match="pattern"):
        sparse_attention_forward(q, q, q, [pat, pat, pat])  # 3 head patterns for 2 heads
    with pytest.raises(TypeError, match="pattern"):
        sparse_attention_forward(q, q, q, np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="k"):
        sparse_attention_forward(q, q.astype(np.float32), q, pat)
    with pytest.raises(ValueError, match="k"):
        sparse_attention_forward(q, q[:, :, :, :2], q, pat)
    with pytest.raises(TypeError, match="q"):
        sparse_attention_forward(q.astype(np.int64), q, q, pat)
    out, cache = sparse_attention_forward(q, q, q, pat)
    with pytest.raises(ValueError, match="dout"):
        sparse_attention_backward(out[:, :, :2], cache)


def test_stored_false_or_a_float_pattern_is_refused_not_attended():
    """Stored ⇔ allowed: the kernels read only the structure, so a stored False (or a float
    pattern's stored 0.0) would be attended where the dense twin, reading the values, masks
    it. Both are refused; as_pattern gives the pattern the twin reads."""
    rng = np.random.default_rng(12)
    q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in range(3))
    allowed = np.tri(4, dtype=bool)
    stored_false = sp.csr_array(np.ones((4, 4), bool))
    stored_false.data[:] = allowed.ravel()  # 16 stored, 10 of them True
    with pytest.raises(ValueError, match=r"pattern: .*6 stored False"):
        sparse_attention_forward(q, k, v, stored_false)
    with pytest.raises(ValueError, match=r"pattern\[0\]\[1\]: .*stored False"):
        prepare_pattern([[sp.csr_array(allowed), stored_false]])
    with pytest.raises(TypeError, match="pattern: expected a bool sparse array.*float64"):
        sparse_attention_forward(q, k, v, sp.csr_array(np.where(allowed, 0.5, 0.0)))
    out, _ = sparse_attention_forward(q, k, v, P.as_pattern(stored_false))
    out_d, _ = F.attention_forward(q, k, v, stored_false.toarray())
    np.testing.assert_allclose(out, out_d, rtol=1e-12, atol=1e-14)


@pytest.mark.torch
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_equals_torch_sdpa_with_the_same_mask(dtype, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    B, H, Tq, Tk, D = 2, 3, 9, 11, 8
    dense = rng.random((H, Tq, Tk)) < 0.4
    dense[:, np.arange(Tq), np.arange(Tq) % Tk] = True  # no empty row
    pattern = [sp.csr_array(d) for d in dense]
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, H, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, H, Tk, D)).astype(dtype)
    dout = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    out, cache = sparse_attention_forward(q, k, v, pattern)
    grads = sparse_attention_backward(dout, cache)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(dense))
    tout.backward(torch.from_numpy(dout))
    assert_close("out", out, tout.detach().numpy(), tol)
    for name, mine, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close(name, mine, t.grad.numpy(), tol)


# -- modules and models with a pattern ---------------------------------------------------


def test_mha_pattern_path_equals_dense_mask_path():
    from refsparse import patterns as P
    from refsparse.nn import MultiHeadAttention

    rng = np.random.default_rng(8)
    mha = MultiHeadAttention(12, 3, rng=rng)
    x = rng.standard_normal((2, 9, 12))
    kpm = np.zeros((2, 9), bool)
    kpm[1, 6:] = True
    pat = P.local(9, 4, causal=False)
    g = rng.standard_normal((2, 9, 12))
    # dense path: the same set of allowed keys as an attn_mask (True = allowed)
    y_dense = mha.forward(x, causal=True, key_padding_mask=kpm, attn_mask=pat.toarray())
    mha.zero_grad()
    dx_dense = mha.backward(g)
    grads_dense = {n: p.grad.copy() for n, p in mha.parameters()}
    y_sparse = mha.forward(x, causal=True, key_padding_mask=kpm, pattern=pat)
    mha.zero_grad()
    dx_sparse = mha.backward(g)
    assert_close("y", y_sparse, y_dense, 1e-12)
    assert_close("dx", dx_sparse, dx_dense, 1e-12)
    for n, p in mha.parameters():
        assert_close(n, p.grad, grads_dense[n], 1e-12)


def test_mha_pattern_rejects_attn_mask_and_dropout():
    from refsparse import patterns as P
    from refsparse.nn import MultiHeadAttention

    x = np.zeros((1, 4, 4))
    mha = MultiHeadAttention(4, 2, dropout=0.1)
    with pytest.raises(ValueError, match="dropout"):
        mha.forward(x, pattern=P.full(4))
    mha.eval()
    mha.forward(x, pattern=P.full(4))  # eval: no dropout, fine
    with pytest.raises(ValueError, match="attn_mask"):
        mha.forward(x, pattern=P.full(4), attn_mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"pattern: expected shape \(4, 4\), got \(5, 5\)"):
        mha.forward(x, pattern=P.full(5))
    with pytest.raises(TypeError, match="pattern: expected a scipy.sparse.csr_array"):
        mha.forward(x, pattern=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"pattern: expected a per-head list of 2"):
        mha.forward(x, pattern=[P.full(4)] * 3)


def test_mha_sees_a_pattern_swapped_into_its_per_head_list():
    """The module caches the prepared pattern; a list changed in place, or a new pattern
    object, must not be served the old one."""
    from refsparse import patterns as P
    from refsparse.nn import MultiHeadAttention

    mha = MultiHeadAttention(8, 2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 6, 8))
    pats = [P.local(6, 2), P.local(6, 2)]
    y_local = mha.forward(x, pattern=pats)
    prepared = mha._prepared(pats, 1, 6, 6, False, None)
    assert mha._prepared(pats, 1, 6, 6, False, None) is prepared  # the same objects: cached
    pats[1] = P.full(6)
    y_swapped = mha.forward(x, pattern=pats)
    y_fresh = mha.forward(x, pattern=[P.local(6, 2), P.full(6)])
    np.testing.assert_array_equal(y_swapped, y_fresh)
    assert not np.allclose(y_swapped, y_local)


@pytest.mark.parametrize("attention", ["causal", "local:window=3", ["strided:stride=2", "fixed:block=3,c=1"]])
def test_decoder_lm_with_patterns_gradchecks(attention):
    from refsparse.models import DecoderLM, DecoderLMConfig

    cfg = DecoderLMConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=8,
                          attention=attention)
    model = DecoderLM(cfg, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 11, (2, 8))
    from refsparse.gradcheck import check_module

    check_module(model, ids, max_entries=24).raise_if_failed()


def test_decoder_lm_causal_pattern_equals_dense():
    from refsparse.models import DecoderLM, DecoderLMConfig

    ids = np.random.default_rng(1).integers(0, 11, (2, 8))
    outs = []
    for attention in ("full", "causal"):
        cfg = DecoderLMConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=8,
                              attention=attention)
        outs.append(DecoderLM(cfg, rng=np.random.default_rng(0)).forward(ids))
    assert_close("logits", outs[1], outs[0], 1e-12)


def test_transformer_with_pattern_gradchecks():
    from refsparse.gradcheck import check_module
    from refsparse.models import Transformer, TransformerConfig

    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=9, d_model=8, n_heads=2, n_encoder_layers=1,
                            n_decoder_layers=1, d_ff=16, max_len=8, dropout=0.0, pad_id=0,
                            attention="local:window=2,causal=false")
    model = Transformer(cfg, rng=np.random.default_rng(2))
    rng = np.random.default_rng(3)
    src, tgt = rng.integers(1, 7, (2, 6)), rng.integers(1, 9, (2, 5))
    src[0, 4:] = 0
    check_module(model, src, tgt, max_entries=16).raise_if_failed()


def test_bad_attention_spec_is_named():
    from refsparse.models import DecoderLM, DecoderLMConfig

    with pytest.raises(ValueError, match="nope"):
        DecoderLM(DecoderLMConfig(attention="nope:x=1"))
    with pytest.raises(ValueError, match="attention"):
        DecoderLM(DecoderLMConfig(n_layers=2, attention=["full"] * 3))


def test_sparse_attention_with_dropout_is_refused_when_the_model_is_built():
    """The sparse kernels have no attention dropout: a config asking for both fails when the
    model is built, not at its first training step."""
    from refsparse.models import DecoderLM, DecoderLMConfig, Transformer, TransformerConfig

    with pytest.raises(ValueError, match=r"dropout: expected 0 with sparse attention \(local:window=2\).*0\.1"):
        Transformer(TransformerConfig(attention="local:window=2", d_model=16, n_heads=2, n_encoder_layers=1,
                                      n_decoder_layers=1, d_ff=32, max_len=16))  # the default dropout 0.1
    with pytest.raises(ValueError, match=r"dropout: .*\(causal, strided:stride=2\)"):
        DecoderLM(DecoderLMConfig(n_layers=3, dropout=0.2, attention=["causal", "strided:stride=2", "full"]))
    DecoderLM(DecoderLMConfig(dropout=0.2, attention="full"))  # dense attention has its dropout
    DecoderLM(DecoderLMConfig(dropout=0.0, attention="local:window=4"))


def test_softmax_exp_matches_numpy_exp():
    """The kernels' exp (vectorisable in float32) against its twin np.exp: float64 is np.exp
    compiled by Numba, which calls the C library's exp — equal to math.exp, and within one
    ulp of NumPy's own np.exp (whose AVX-512 loop differs from the C library's by one ulp at
    about 5% of these arguments); float32 within one ulp over the softmax's range a <= 0
    (and a hair above)."""
    import math

    import numba

    from refsparse.kernels.activations import exp_softmax

    @numba.njit
    def apply(a, out):
        for i in range(a.size):
            out[i] = exp_softmax(a[i])

    rng = np.random.default_rng(0)
    a64 = np.concatenate([-rng.exponential(5.0, 20000), -rng.uniform(0, 110, 5000),
                          [0.0, -0.0, 1e-7, -1e-30, -87.0, -103.9, -104.0, -200.0, -np.inf]])
    out64 = np.empty_like(a64)
    apply(a64, out64)
    np.testing.assert_array_equal(out64, [math.exp(x) for x in a64])
    np.testing.assert_array_max_ulp(out64, np.exp(a64), maxulp=1)
    a32 = a64.astype(np.float32)
    out32 = np.empty_like(a32)
    apply(a32, out32)
    ref = np.exp(a32.astype(np.float64)).astype(np.float32)
    ulps = np.abs(out32.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, f"float32 exp off by {ulps.max()} ulps at a = {a32[np.argmax(ulps)]}"
