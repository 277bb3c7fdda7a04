"""The LayerNorm kernels against their NumPy twin (forward and backward, both dtypes)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse.functional import layernorm as L


@given(n=st.integers(1, 300), c=st.integers(1, 300), shift=st.sampled_from([0.0, 3.0, 1e3]),
       seed=st.integers(0, 2**31 - 1))
def test_layernorm_kernels_equal_numpy_twin_float64(n, c, shift, seed):
    rng = np.random.default_rng(seed)
    rows = max(n, -(-L._KERNEL_MIN_SIZE // c))  # enough rows for the kernel path
    x = shift + rng.standard_normal((rows, c))
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    dy = rng.standard_normal(x.shape)
    y, cache = L.layernorm_forward(x, gamma, beta, 1e-5)
    y_t, cache_t = L._layernorm_forward_numpy(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cache.rstd, cache_t.rstd, rtol=1e-10)
    for name, mine, twin in zip(("dx", "dgamma", "dbeta"), L.layernorm_backward(dy, cache),
                                L._layernorm_backward_numpy(dy, cache_t)):
        scale = max(np.abs(twin).max(), 1.0)
        assert np.abs(mine - twin).max() <= 1e-10 * scale, name


@pytest.mark.parametrize("shape", [(16, 64, 256), (3, 7000, 5)])
def test_layernorm_kernels_float32_and_views(shape):
    rng = np.random.default_rng(0)
    x = (2 + rng.standard_normal(shape)).astype(np.float32)
    xt = np.ascontiguousarray(x.swapaxes(0, 1)).swapaxes(0, 1)  # the same values, another layout
    gamma, beta = rng.standard_normal(shape[-1]).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = L.layernorm_forward(xt, gamma, beta)
    assert y.dtype == np.float32 and y.shape == shape
    y_t, cache_t = L._layernorm_forward_numpy(x, gamma, beta, 1e-5)
    np.testing.assert_allclose(y, y_t, rtol=1e-4, atol=1e-5)
    dx, dg, db = L.layernorm_backward(dy, cache)
    dx_t, dg_t, db_t = L._layernorm_backward_numpy(dy, cache_t)
    assert dx.dtype == dg.dtype == db.dtype == np.float32
    np.testing.assert_allclose(dx, dx_t, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dg, dg_t, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(db, db_t, rtol=1e-3, atol=1e-2)
