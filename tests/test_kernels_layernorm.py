"""The LayerNorm driver's fast path against the reference kernel (forward and backward,
both dtypes), and the functional op on both paths."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse import kernels
from refsparse.kernels import layernorm as K
from refsparse.kernels.reference import layernorm as ref


@given(n=st.integers(1, 300), c=st.integers(1, 300), shift=st.sampled_from([0.0, 3.0, 1e3]),
       seed=st.integers(0, 2**31 - 1))
def test_layernorm_fast_equals_reference_float64(n, c, shift, seed):
    rng = np.random.default_rng(seed)
    rows = max(n, -(-K.KERNEL_MIN_SIZE // c))  # enough rows for the Numba kernels
    x = shift + rng.standard_normal((rows, c))
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    dy = rng.standard_normal(x.shape)
    with kernels.use("fast"):
        y, mean, rstd = K.forward(x, gamma, beta, 1e-5)
        grads = K.backward(dy, x, gamma, mean, rstd)
    y_r, mean_r, rstd_r = ref.forward(x, gamma, beta, 1e-5)
    # reassociated sums: a few ulps of the terms summed
    np.testing.assert_allclose(y, y_r, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mean, mean_r, rtol=1e-13, atol=1e-13 * (1 + shift))
    np.testing.assert_allclose(rstd, rstd_r, rtol=1e-10)
    for name, mine, theirs in zip(("dx", "dgamma", "dbeta"), grads, ref.backward(dy, x, gamma, mean_r, rstd_r)):
        scale = max(np.abs(theirs).max(), 1.0)
        assert np.abs(mine - theirs).max() <= 1e-10 * scale, name


@pytest.mark.parametrize("shape", [(16, 64, 256), (3, 7000, 5)])
def test_layernorm_fast_float32_and_views(shape):
    rng = np.random.default_rng(0)
    x = (2 + rng.standard_normal(shape)).astype(np.float32)
    xt = np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)  # the same values, another layout
    gamma, beta = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    with kernels.use("fast"):
        y, cache = F.layernorm_forward(xt, gamma, beta)
        dx, dg, db = F.layernorm_backward(dy, cache)
    assert y.dtype == np.float32 and y.shape == shape
    C = shape[-1]
    y_r, mean_r, rstd_r = ref.forward(x.reshape(-1, C), gamma, beta, 1e-5)
    np.testing.assert_allclose(y, y_r.reshape(shape), rtol=1e-4, atol=1e-5)
    dx_r, dg_r, db_r = ref.backward(dy.reshape(-1, C), x.reshape(-1, C), gamma, mean_r, rstd_r)
    assert dx.dtype == dg.dtype == db.dtype == np.float32
    np.testing.assert_allclose(dx, dx_r.reshape(shape), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dg, dg_r, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(db, db_r, rtol=1e-3, atol=1e-2)


def test_layernorm_reference_against_its_formula():
    # the reference against the definition written out row by row with math.fsum-free loops
    rng = np.random.default_rng(3)
    x, gamma, beta = rng.standard_normal((5, 7)), rng.standard_normal(7), rng.standard_normal(7)
    y, mean, rstd = ref.forward(x, gamma, beta, 1e-5)
    for n in range(5):
        mu = sum(x[n]) / 7
        var = sum((v - mu) ** 2 for v in x[n]) / 7
        r = 1 / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(y[n], (x[n] - mu) * r * gamma + beta, rtol=1e-13, atol=1e-13)
        assert mean[n] == pytest.approx(mu, rel=1e-14) and rstd[n] == pytest.approx(r, rel=1e-14)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_layernorm_functional_runs_the_switched_path(path, monkeypatch):
    calls = []
    kernel = K.layernorm_fwd
    monkeypatch.setattr(K, "layernorm_fwd", lambda *a: (calls.append("fwd"), kernel(*a))[1])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 512))  # above the kernels' threshold
    with kernels.use(path):
        y, _ = F.layernorm_forward(x, np.ones(512), np.zeros(512))
    assert calls == (["fwd"] if path == "fast" else [])
    np.testing.assert_allclose(y, ref.forward(x, np.ones(512), np.zeros(512), 1e-5)[0], rtol=1e-10, atol=1e-10)
