"""Dense attention's softmax kernels and the whole op on the fast path against the
reference kernels (refsparse.kernels.reference.softmax, .matmul).

- ``softmax_rows`` (with any causal cut q0) and ``softmax_grad`` against the reference's
  ``masked_softmax`` and ``masked_softmax_grad``, in float64 (1e-13 relative) and float32;
- ``attention_forward``/``attention_backward`` on the fast path (the kernel's causal cut,
  threads) against the reference path: values, probabilities and all three gradients, with
  extra masks, empty rows, T_q != T_k and dropout;
- the batch slices run on threads (``refsparse.kernels.parallel``): the same numbers.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse import kernels
from refsparse.kernels import dense_attention as K
from refsparse.kernels import parallel
from refsparse.kernels.reference import softmax as ref


def rel_err(mine, theirs):
    scale = max(np.abs(theirs).max(initial=0.0), 1.0)
    return np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64)).max(initial=0.0) / scale


@given(m=st.integers(1, 3), tq=st.integers(1, 40), tk=st.integers(1, 40), q0=st.integers(0, 45),
       masked=st.sampled_from(["none", "shared", "per_matrix"]), seed=st.integers(0, 2**31 - 1))
def test_softmax_kernels_equal_reference_float64(m, tq, tk, q0, masked, seed):
    rng = np.random.default_rng(seed)
    s = 4 * rng.standard_normal((m, tq, tk))
    blocked = None
    if masked != "none":
        blocked = rng.random((1 if masked == "shared" else m, tq, tk)) < 0.4
        blocked[..., 0, :] = True  # an empty row (unless the causal cut already empties it)
    scale = 0.3
    # the reference: the causal cut j > q0 + i and the mask as one "blocked" array
    cut = np.arange(tk)[None, :] > (q0 + np.arange(tq))[:, None]  # (tq, tk)
    p_ref = s.copy()
    ref.masked_softmax(p_ref, cut if blocked is None else (blocked | cut), scale, False)
    mine = s.copy()
    K.softmax_rows(mine, blocked, scale, q0)
    assert rel_err(mine, p_ref) <= 1e-13
    assert np.all(mine[np.broadcast_to(cut, mine.shape)] == 0)

    dp = rng.standard_normal(s.shape)
    mine_ds = dp.copy()
    K.softmax_grad(mine_ds, p_ref, scale)
    ref_ds = dp.copy()
    ref.masked_softmax_grad(ref_ds, p_ref, scale)
    assert rel_err(mine_ds, ref_ds) <= 1e-13


@given(lead=st.sampled_from([(), (2,), (2, 3)]), tq=st.integers(1, 30), tk=st.integers(1, 30),
       causal=st.booleans(), masked=st.sampled_from(["none", "shared", "full"]), seed=st.integers(0, 2**31 - 1))
def test_softmax_driver_fast_equals_reference(lead, tq, tk, causal, masked, seed):
    kernel_min_size, K.KERNEL_MIN_SIZE = K.KERNEL_MIN_SIZE, 0  # the kernels at every size
    try:
        _driver_fast_equals_reference(lead, tq, tk, causal, masked, seed)
    finally:
        K.KERNEL_MIN_SIZE = kernel_min_size


def _driver_fast_equals_reference(lead, tq, tk, causal, masked, seed):
    rng = np.random.default_rng(seed)
    s = 3 * rng.standard_normal(lead + (tq, tk))
    blocked = None if masked == "none" else rng.random((tq, tk) if masked == "shared" else s.shape) < 0.3
    mine, theirs = s.copy(), s.copy()
    with kernels.use("fast"):
        K.masked_softmax(mine, blocked, 0.5, causal)
    ref.masked_softmax(theirs, blocked, 0.5, causal)
    assert rel_err(mine, theirs) <= 1e-13
    dp = rng.standard_normal(s.shape)
    mine_ds, ref_ds = dp.copy(), dp.copy()
    with kernels.use("fast"):
        K.masked_softmax_grad(mine_ds, theirs, 0.5)
    ref.masked_softmax_grad(ref_ds, theirs, 0.5)
    assert rel_err(mine_ds, ref_ds) <= 1e-13


def test_softmax_kernels_float32_and_empty_rows():
    rng = np.random.default_rng(0)
    s = (3 * rng.standard_normal((2, 30, 50))).astype(np.float32)
    blocked = np.zeros((1, 30, 50), dtype=bool)
    blocked[0, 5] = True  # row 5 sees nothing: zero probabilities, no NaN
    mine = s.copy()
    K.softmax_rows(mine, blocked, np.float32(0.5), 50)
    theirs = s.copy()
    ref.masked_softmax(theirs, blocked, 0.5, False)
    assert mine.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)
    assert np.all(mine[:, 5] == 0) and np.all(np.isfinite(mine))


def test_reference_softmax_against_its_formula():
    # one row at a time, written out: exp(s − max) / Σ exp(s − max) over the allowed keys
    rng = np.random.default_rng(4)
    s = rng.standard_normal((5, 6))
    blocked = rng.random((5, 6)) < 0.3
    blocked[2] = True
    p = s.copy()
    ref.masked_softmax(p, blocked, 0.7, True)
    for i in range(5):
        allowed = [j for j in range(6) if not blocked[i, j] and j <= i]
        expected = np.zeros(6)
        if allowed:
            e = np.exp(0.7 * s[i, allowed] - max(0.7 * s[i, allowed]))
            expected[allowed] = e / e.sum()
        np.testing.assert_allclose(p[i], expected, rtol=1e-14, atol=0)


@pytest.fixture
def cut_calls(monkeypatch):
    """Records the causal cut of every softmax_rows call (Tk or more: no cut); the fast
    path runs the kernels at every size."""
    monkeypatch.setattr(K, "KERNEL_MIN_SIZE", 0)
    calls = []
    original = K.softmax_rows

    def spy(s, blocked, scale, q0):
        calls.append((q0, s.shape[-1]))
        return original(s, blocked, scale, q0)

    monkeypatch.setattr(K, "softmax_rows", spy)
    return calls


def _qkv(rng, lead, tq, tk, d, dtype):
    return (rng.standard_normal(lead + (tq, d)).astype(dtype), rng.standard_normal(lead + (tk, d)).astype(dtype),
            rng.standard_normal(lead + (tk, d + 1)).astype(dtype))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("lead,tq,tk", [((2, 3), 300, 300), ((2, 2), 200, 130), ((3,), 100, 260), ((), 260, 260),
                                        ((2,), 7, 5)])
@pytest.mark.parametrize("extra", ["none", "padding", "random"])
def test_attention_fast_path_equals_reference_path(cut_calls, dtype, tol, lead, tq, tk, extra):
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, lead, tq, tk, 8, dtype)
    mask = None
    if extra == "padding" and lead:
        mask = (rng.random(lead[:1] + (1,) * (len(lead) - 1) + (1, tk)) > 0.3)  # (B, 1, 1, Tk)
    elif extra == "random":
        mask = rng.random((tq, tk)) > 0.2
        mask[3] = False  # an empty row
    dout = rng.standard_normal(lead + (tq, 9)).astype(dtype)
    for causal in (True, False):
        del cut_calls[:]
        with kernels.use("fast"):
            out, cache = F.attention_forward(q, k, v, mask=mask, causal=causal)
            grads = F.attention_backward(dout, cache)
        assert cut_calls and all(q0 == (0 if causal else t) for q0, t in cut_calls)  # the kernel's cut
        with kernels.use("reference"):
            ref_out, ref_cache = F.attention_forward(q, k, v, mask=mask, causal=causal)
            ref_grads = F.attention_backward(dout, ref_cache)
        assert len(cut_calls) == (1 if not lead else lead[0])  # the reference never calls the kernel
        assert out.dtype == dtype
        assert rel_err(out, ref_out) <= tol
        assert rel_err(cache.p, ref_cache.p) <= tol
        for name, g, r in zip("qkv", grads, ref_grads):
            assert g.dtype == dtype
            assert rel_err(g, r) <= tol, f"d{name}"


def test_small_slices_run_the_reference_on_the_fast_path_bit_for_bit():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, (2, 2), 6, 6, 4, np.float64)
    dout = rng.standard_normal((2, 2, 6, 5))
    outs = []
    for path in ("fast", "reference"):
        with kernels.use(path):
            out, cache = F.attention_forward(q, k, v, causal=True)
            outs.append((out, *F.attention_backward(dout, cache)))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)  # the same code


def test_causal_with_dropout_draws_like_the_reference_path():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, (2, 2), 130, 130, 4, np.float64)
    with kernels.use("fast"):
        out, _ = F.attention_forward(q, k, v, causal=True, dropout_p=0.3, rng=np.random.default_rng(5))
    with kernels.use("reference"):
        ref_out, _ = F.attention_forward(q, k, v, mask=F.causal_mask(130), dropout_p=0.3,
                                         rng=np.random.default_rng(5))
    np.testing.assert_allclose(out, ref_out, rtol=1e-13, atol=1e-13)  # the same dropout mask


@pytest.fixture
def split_products(monkeypatch):
    """Split the work over 2 threads whatever the environment says, down to small products."""
    monkeypatch.setattr(parallel, "_blas_single", True)
    monkeypatch.setattr(parallel, "MIN_FLOPS", 1)
    monkeypatch.setattr(parallel.numba, "get_num_threads", lambda: 2)


def test_threads_give_the_same_attention(split_products):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, (4, 2), 150, 150, 8, np.float64)
    mask = rng.random((150, 150)) > 0.1
    with kernels.use("fast"):
        assert parallel.num_threads() == 2
        for causal in (False, True):
            out, cache = F.attention_forward(q, k, v, mask=mask, causal=causal)
            dout = rng.standard_normal(out.shape)
            grads = F.attention_backward(dout, cache)
            for i in range(4):  # each batch element on its own
                o1, c1 = F.attention_forward(q[i], k[i], v[i], mask=mask, causal=causal)
                np.testing.assert_allclose(out[i], o1, rtol=1e-14, atol=1e-15)
                for g, g1 in zip(grads, F.attention_backward(dout[i], c1)):
                    np.testing.assert_allclose(g[i], g1, rtol=1e-13, atol=1e-14)
