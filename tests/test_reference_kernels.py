"""The reference kernels of sparse attention and SpMM/SDDMM (refsparse/kernels/reference/)
against the dense masked NumPy twins, and the fast kernels against the references.

Expected values come from elsewhere: the twins are refsparse.functional's dense attention
with the pattern as a boolean mask, and dense products with ``W.toarray()``; the fast path
is held to the reference. Upstream gradients are random. Tolerances are relative to each
tensor's largest entry (inputs are O(1)).
"""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse import kernels
from refsparse import patterns as P
from refsparse.functional.sparse_attention import (
    prepare_pattern,
    sparse_attention_backward,
    sparse_attention_forward,
)
from refsparse.functional.sparse_linear import sparse_linear_backward, sparse_linear_forward
from refsparse.kernels.reference import sparse_attention as ref_attention
from refsparse.kernels.reference import spmm as ref_spmm


def rel_err(mine, theirs):
    scale = max(np.abs(theirs).max(initial=0.0), 1.0)
    return np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64)).max(initial=0.0) / scale


def assert_close(name, mine, theirs, tol):
    assert np.shape(mine) == np.shape(theirs), (name, np.shape(mine), np.shape(theirs))
    e = rel_err(mine, theirs)
    assert e <= tol, f"{name}: max rel err {e:.3e} > {tol:g}\nmine:   {np.ravel(mine)[:6]}\ntheirs: {np.ravel(theirs)[:6]}"


# ----------------------------------------------------------------------------------
# sparse attention
def random_pattern(rng, t_q, t_k, density):
    """A random CSR bool pattern with an empty row, a single-entry row and a full row."""
    dense = rng.random((t_q, t_k)) < density
    if t_q >= 3:
        dense[0] = False
        dense[1] = False
        dense[1, rng.integers(t_k)] = True
        dense[2] = True
    return sp.csr_array(dense)


@st.composite
def attention_cases(draw):
    B, H = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    t_q = draw(st.integers(1, 11))
    t_k = draw(st.sampled_from([t_q, draw(st.integers(1, 11))]))
    D, Dv = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    grouping = draw(st.sampled_from(["shared", "per_head", "per_batch", "per_batch_head"]))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    return B, H, t_q, t_k, D, Dv, grouping, density, draw(st.integers(0, 2**31 - 1))


def make_attention(B, H, t_q, t_k, D, Dv, grouping, density, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, t_q, D)).astype(dtype)
    k = rng.standard_normal((B, H, t_k, D)).astype(dtype)
    v = rng.standard_normal((B, H, t_k, Dv)).astype(dtype)
    dout = rng.standard_normal((B, H, t_q, Dv)).astype(dtype)
    new = lambda: random_pattern(rng, t_q, t_k, density)  # noqa: E731
    grid = {"shared": lambda: new(), "per_head": lambda: [new() for _ in range(H)],
            "per_batch": lambda: [[new()] for _ in range(B)],
            "per_batch_head": lambda: [[new() for _ in range(H)] for _ in range(B)]}[grouping]()
    return q, k, v, dout, grid


def dense_mask(pattern):
    """The (B or 1, H or 1, Tq, Tk) boolean mask of a pattern argument."""
    if sp.issparse(pattern):
        return pattern.toarray()[None, None]
    if sp.issparse(pattern[0]):
        return np.stack([p.toarray() for p in pattern])[None]
    return np.stack([np.stack([p.toarray() for p in row]) for row in pattern])


def run_attention(path, q, k, v, dout, pattern):
    with kernels.use(path):
        out, cache = sparse_attention_forward(q, k, v, pattern)
        return (out, cache.lse) + sparse_attention_backward(dout, cache)


@given(attention_cases())
def test_reference_attention_equals_dense_masked_twin(case):
    q, k, v, dout, pattern = make_attention(*case)
    out, lse, dq, dk, dv = run_attention("reference", q, k, v, dout, pattern)
    out_d, cache_d = F.attention_forward(q, k, v, dense_mask(pattern))
    assert_close("out", out, out_d, 1e-12)
    for name, mine, theirs in zip(("dq", "dk", "dv"), (dq, dk, dv), F.attention_backward(dout, cache_d)):
        assert_close(name, mine, theirs, 1e-12)
    # lse_i = log Σ_{j in row i} exp(s_ij), −∞ for an empty row: from the dense scores
    mask = np.broadcast_to(dense_mask(pattern), out.shape[:2] + dense_mask(pattern).shape[2:])
    s = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[3]), -np.inf)
    with np.errstate(divide="ignore"):
        lse_d = np.log(np.exp(s).sum(axis=-1))
    np.testing.assert_allclose(lse, lse_d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@given(case=attention_cases())
def test_fast_attention_equals_reference(dtype, tol, case):
    q, k, v, dout, pattern = make_attention(*case, dtype=dtype)
    fast = run_attention("fast", q, k, v, dout, pattern)
    ref = run_attention("reference", q, k, v, dout, pattern)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), fast, ref):
        assert a.dtype == b.dtype == dtype, name
        if name == "lse":
            np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
            a, b = np.where(np.isneginf(a), 0, a), np.where(np.isneginf(b), 0, b)
        assert_close(name, a, b, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_fast_attention_equals_reference_on_long_windows(dtype, tol):
    """The fast kernels' register tiles (windows longer than a vector), against the reference."""
    rng = np.random.default_rng(3)
    B, H, T, D = 2, 2, 150, 16
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(4))
    pattern = [P.local(T, 70), P.union(P.strided(T, 9), P.local(T, 5))]
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), run_attention("fast", q, k, v, dout, pattern),
                          run_attention("reference", q, k, v, dout, pattern)):
        assert_close(name, a, b, tol)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_attention_empty_rows_and_unseen_keys(path):
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((2, 2, 6, 3)) for _ in range(4))
    dense = np.tril(np.ones((6, 6), bool))
    dense[2] = False  # query 2 sees nothing
    dense[:, 5] = False  # key 5 is seen by nobody
    out, lse, dq, dk, dv = run_attention(path, q, k, v, dout, sp.csr_array(dense))
    assert np.all(out[:, :, 2] == 0) and np.all(lse[:, :, 2] == -np.inf)
    for g in (out, dq, dk, dv):
        assert np.all(np.isfinite(g))
    assert np.all(dq[:, :, 2] == 0) and np.all(dk[:, :, 5] == 0) and np.all(dv[:, :, 5] == 0)
    out, lse, dq, dk, dv = run_attention(path, q, k, v, dout, sp.csr_array((6, 6), dtype=bool))  # all empty
    assert all(np.all(g == 0) for g in (out, dq, dk, dv)) and np.all(lse == -np.inf)


def test_attention_driver_runs_the_reference_when_switched(monkeypatch):
    calls = []
    for name in ("forward", "backward"):
        real = getattr(ref_attention, name)
        monkeypatch.setattr(ref_attention, name, lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 5, 2))
    run_attention("fast", q, q, q, q, P.local(5, 2))
    assert calls == []
    run_attention("reference", q, q, q, q, P.local(5, 2))
    assert calls == ["forward", "backward"]


def test_reference_attention_memory_is_linear_in_the_entries():
    """T = 16384, a causal window of 32: forward + backward on the reference path (the
    pattern prepared inside the measurement too) peak under 5% of one T × T float64
    matrix. The reference's compiled loops allocate nothing, so tracemalloc (which sees
    NumPy's allocations) sees all the memory it takes."""
    T, D = 16384, 8
    rng = np.random.default_rng(2)
    q, k, v, dout = (rng.standard_normal((1, 1, T, D)) for _ in range(4))
    pattern = P.local(T, 32)
    run_attention("reference", q[:, :, :64], k[:, :, :64], v[:, :, :64], dout[:, :, :64], P.local(64, 32))  # compile
    tracemalloc.start()
    try:
        out, lse, dq, dk, dv = run_attention("reference", q, k, v, dout, pattern)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = T * T * 8
    assert peak < 0.05 * dense_bytes, f"peak {peak / 2**20:.1f} MiB, T × T float64 is {dense_bytes / 2**20:.0f} MiB"
    # and the numbers are attention's: row T-1 against its 32 keys, directly
    s = k[0, 0, T - 32:] @ q[0, 0, T - 1] / np.sqrt(D)
    p = np.exp(s - s.max())
    np.testing.assert_allclose(out[0, 0, T - 1], p @ v[0, 0, T - 32:] / p.sum(), rtol=1e-12)


# ----------------------------------------------------------------------------------
# SpMM / SDDMM
@st.composite
def linear_cases(draw):
    n = draw(st.integers(1, 40))
    c_in, c_out = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return n, c_in, c_out, density, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


def make_linear(n, c_in, c_out, density, has_bias, seed, dtype=np.float64):
    """x (n, c_in), a canonical CSR weight with an empty row, an empty column and a stored
    zero where the shape allows, bias or None, dy."""
    rng = np.random.default_rng(seed)
    mask = rng.random((c_out, c_in)) < density
    if c_out >= 2 and c_in >= 2:
        mask[0] = False  # an output with no input
        mask[:, 1] = False  # an input feeding no output
        mask[1, 0] = True  # an entry that holds 0.0
    values = np.where(mask, rng.standard_normal((c_out, c_in)), 0.0).astype(dtype)
    rows, cols = np.nonzero(mask)
    w = sp.csr_array((values[rows, cols], (rows, cols)), shape=(c_out, c_in))
    w.sum_duplicates()
    if c_out >= 2 and c_in >= 2:
        w.data[w.indptr[1]] = 0.0  # entry (1, 0): row 1's first, stored, now 0.0
    x = rng.standard_normal((n, c_in)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if has_bias else None
    dy = rng.standard_normal((n, c_out)).astype(dtype)
    return x, w, bias, dy


def run_linear(path, x, w, bias, dy):
    with kernels.use(path):
        y, cache = sparse_linear_forward(x, w, bias)
        return (y,) + sparse_linear_backward(dy, cache)


@given(linear_cases())
def test_reference_spmm_equals_dense_masked_twin(case):
    x, w, bias, dy = make_linear(*case)
    y, dx, dw, db = run_linear("reference", x, w, bias, dy)
    wd = w.toarray()
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    assert_close("y", y, x @ wd.T + (0 if bias is None else bias), 1e-12)
    assert_close("dx", dx, dy @ wd, 1e-12)
    assert_close("dw", dw, (dy.T @ x)[rows, w.indices], 1e-12)  # the dense gradient at the stored entries
    if bias is None:
        assert db is None
    else:
        assert_close("db", db, dy.sum(axis=0), 1e-12)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@given(case=linear_cases())
def test_fast_spmm_equals_reference(dtype, tol, case):
    x, w, bias, dy = make_linear(*case, dtype=dtype)
    for name, a, b in zip(("y", "dx", "dw", "db"), run_linear("fast", x, w, bias, dy),
                          run_linear("reference", x, w, bias, dy)):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype == dtype, name
        assert_close(name, a, b, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_fast_spmm_equals_reference_on_a_layer_sized_weight(dtype, tol):
    """Tiles, chunks and column / output blocks of the fast kernels (N = 300 rows, several
    tiles and a tail; 200 × 700 at 80%), against the reference."""
    x, w, bias, dy = make_linear(300, 700, 200, 0.2, True, 5, dtype)
    for name, a, b in zip(("y", "dx", "dw", "db"), run_linear("fast", x, w, bias, dy),
                          run_linear("reference", x, w, bias, dy)):
        assert_close(name, a, b, tol)


def test_reference_spmm_direct_call_wants_only_what_is_asked():
    x, w, bias, dy = make_linear(7, 5, 4, 0.6, True, 1)
    dx, dw, db = ref_spmm.backward(dy, x, w, need_dx=False, need_dw=True, need_db=False)
    assert dx is None and db is None and dw.shape == (w.nnz,)
    assert_close("y", ref_spmm.forward(x, w, None), x @ w.toarray().T, 1e-12)


def test_prepare_pattern_holds_the_transpose():
    pp = prepare_pattern(P.local(9, 3))
    t = P.local(9, 3).T.tocsr()
    np.testing.assert_array_equal(pp.t_indptr[0, 0], t.indptr)
    np.testing.assert_array_equal(pp.t_indices, t.indices)


def test_pattern_cache_keys_on_identity_and_lets_go():
    import gc

    from refsparse.kernels.pattern_cache import PatternCache

    cache, built = PatternCache(), []
    a, b = np.arange(5), np.arange(5)  # equal values, two arrays
    build = lambda tag: lambda: built.append(tag) or tag  # noqa: E731
    assert cache.get((a,), 1, build("a")) == "a"
    assert cache.get((a,), 1, build("again")) == "a"  # the same array: built once
    assert cache.get((b,), 1, build("b")) == "b"  # equal values are not the same pattern
    assert cache.get((a,), 2, build("a2")) == "a2"  # another extra key
    assert built == ["a", "b", "a2"] and len(cache) == 3
    del a
    gc.collect()
    assert len(cache) == 1  # a's entries left with it
    small = PatternCache(size=1)
    small.get((b,), 1, build("x"))
    small.get((b,), 2, build("y"))
    assert len(small) == 1 and small.get((b,), 2, build("z")) == "y"
