"""Dense attention's softmax kernels and causal blocks against their NumPy twins.

- ``softmax_rows`` against ``_masked_softmax``, and
  ``softmax_grad`` against ``_softmax_grad``, in float64 (1e-13 relative) and float32;
- ``attention_forward(..., causal=True)`` on large problems (the kernel's causal cut)
  against the path with the mask ``mask & causal_mask``: values,
  probabilities and all three gradients, with extra masks, empty rows and T_q != T_k;
- the batch slices run on threads (``refsparse.kernels.parallel``): the same numbers.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse.functional import attention as A
from refsparse.kernels import dense_attention as K
from refsparse.kernels import parallel


def rel_err(mine, theirs):
    scale = max(np.abs(theirs).max(initial=0.0), 1.0)
    return np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64)).max(initial=0.0) / scale


@given(m=st.integers(1, 3), tq=st.integers(1, 40), tk=st.integers(1, 40), q0=st.integers(0, 45),
       masked=st.sampled_from(["none", "shared", "per_matrix"]), seed=st.integers(0, 2**31 - 1))
def test_softmax_kernels_equal_numpy_twin_float64(m, tq, tk, q0, masked, seed):
    rng = np.random.default_rng(seed)
    s = 4 * rng.standard_normal((m, tq, tk))
    blocked = None
    if masked != "none":
        blocked = rng.random((1 if masked == "shared" else m, tq, tk)) < 0.4
        blocked[..., 0, :] = True  # an empty row (unless the causal cut already empties it)
    scale = 0.3
    # the twin: scale, then the causal cut j > q0 + i and the mask as one "blocked" array
    cut = np.arange(tk)[None, :] > (q0 + np.arange(tq))[:, None]  # (tq, tk)
    twin = s * scale
    A._masked_softmax(twin, cut if blocked is None else (blocked | cut))
    mine = s.copy()
    K.softmax_rows(mine, blocked, scale, q0)
    assert rel_err(mine, twin) <= 1e-13
    assert np.all(mine[np.broadcast_to(cut, mine.shape)] == 0)

    dp = rng.standard_normal(s.shape)
    mine_ds = dp.copy()
    K.softmax_grad(mine_ds, twin, scale)
    twin_ds = dp.copy()
    A._softmax_grad(twin_ds, twin, scale)
    assert rel_err(mine_ds, twin_ds) <= 1e-13


def test_softmax_kernels_float32_and_empty_rows():
    rng = np.random.default_rng(0)
    s = (3 * rng.standard_normal((2, 30, 50))).astype(np.float32)
    blocked = np.zeros((1, 30, 50), dtype=bool)
    blocked[0, 5] = True  # row 5 sees nothing: zero probabilities, no NaN
    mine = s.copy()
    K.softmax_rows(mine, blocked, np.float32(0.5), 50)
    twin = s * np.float32(0.5)
    A._masked_softmax(twin, blocked)
    assert mine.dtype == np.float32
    np.testing.assert_allclose(mine, twin, rtol=1e-5, atol=1e-7)
    assert np.all(mine[:, 5] == 0) and np.all(np.isfinite(mine))


@pytest.fixture
def cut_calls(monkeypatch):
    """Records the causal cut of every softmax_rows call (Tk or more: no cut)."""
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
@pytest.mark.parametrize("lead,tq,tk", [((2, 3), 300, 300), ((2, 2), 200, 130), ((3,), 100, 260), ((), 260, 260)])
@pytest.mark.parametrize("extra", ["none", "padding", "random"])
def test_causal_cut_equals_the_causal_mask(cut_calls, dtype, tol, lead, tq, tk, extra):
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, lead, tq, tk, 8, dtype)
    mask = None
    if extra == "padding" and lead:
        mask = (rng.random(lead[:1] + (1,) * (len(lead) - 1) + (1, tk)) > 0.3)  # (B, 1, 1, Tk)
    elif extra == "random":
        mask = rng.random((tq, tk)) > 0.2
        mask[3] = False  # an empty row
    out, cache = F.attention_forward(q, k, v, mask=mask, causal=True)
    assert cut_calls and all(q0 == 0 for q0, _ in cut_calls)  # the kernel path, cut at j > i
    ref_mask = F.causal_mask(tq, tk) if mask is None else (mask & F.causal_mask(tq, tk))
    n_calls = len(cut_calls)
    ref, ref_cache = F.attention_forward(q, k, v, mask=ref_mask)
    assert all(q0 >= t for q0, t in cut_calls[n_calls:])  # the reference: the mask, no cut
    assert rel_err(out, ref) <= tol
    assert rel_err(cache.p, ref_cache.p) <= tol
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, r in zip("qkv", F.attention_backward(dout, cache), F.attention_backward(dout, ref_cache)):
        assert g.dtype == dtype
        assert rel_err(g, r) <= tol, f"d{name}"


def test_causal_small_problem_uses_the_reference_path(cut_calls):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, (2,), 6, 6, 4, np.float64)
    out, _ = F.attention_forward(q, k, v, causal=True)
    ref, _ = F.attention_forward(q, k, v, mask=F.causal_mask(6))
    assert not cut_calls
    np.testing.assert_array_equal(out, ref)  # the same code, bit for bit


def test_causal_with_dropout_draws_like_the_mask_path(cut_calls):
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, (2, 2), 130, 130, 4, np.float64)
    out, _ = F.attention_forward(q, k, v, causal=True, dropout_p=0.3, rng=np.random.default_rng(5))
    ref, _ = F.attention_forward(q, k, v, mask=F.causal_mask(130), dropout_p=0.3, rng=np.random.default_rng(5))
    assert cut_calls  # the kernel's cut, and the dropout mask drawn the same
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


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
    for causal in (False, True):
        out, cache = F.attention_forward(q, k, v, mask=mask, causal=causal)
        dout = rng.standard_normal(out.shape)
        grads = F.attention_backward(dout, cache)
        for i in range(4):  # each batch element on its own
            o1, c1 = F.attention_forward(q[i], k[i], v[i], mask=mask, causal=causal)
            np.testing.assert_allclose(out[i], o1, rtol=1e-14, atol=1e-15)
            for g, g1 in zip(grads, F.attention_backward(dout[i], c1)):
                np.testing.assert_allclose(g[i], g1, rtol=1e-13, atol=1e-14)
