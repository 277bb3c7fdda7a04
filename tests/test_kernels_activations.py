"""The GELU kernels against their NumPy twin (both forms, both dtypes, forward and backward)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse.functional import activations as A


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(n=st.integers(A._KERNEL_MIN_SIZE, 3 * A._KERNEL_MIN_SIZE), scale=st.sampled_from([0.1, 1.0, 5.0, 40.0]),
       seed=st.integers(0, 2**31 - 1))
def test_gelu_kernels_equal_numpy_twin_float64(approximate, n, scale, seed):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal(n)
    dy = rng.standard_normal(n)
    y, cache = A.gelu_forward(x, approximate)  # kernel path (n >= the threshold)
    y_t, cache_t = A._gelu_forward_numpy(x, approximate)
    # libm (kernels) and scipy/numpy (twin) erfc and exp differ by a few ulps; in the far tails
    # (|y| ~ 1e-270) exp of an argument of ~600, rounded in a different order, differs by ~1e-13
    np.testing.assert_allclose(y, y_t, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(cache.gate, cache_t.gate, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(A.gelu_backward(dy, cache), A._gelu_backward_numpy(dy, cache_t),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_kernels_float32(approximate):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((64, 512))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, cache = A.gelu_forward(x, approximate)
    assert y.dtype == np.float32 and cache.gate.dtype == np.float32
    y_t, cache_t = A._gelu_forward_numpy(x, approximate)
    np.testing.assert_allclose(y, y_t, rtol=2e-6, atol=1e-7)
    dx = A.gelu_backward(dy, cache)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, A._gelu_backward_numpy(dy, cache_t), rtol=2e-5, atol=1e-6)


def test_gelu_kernel_extremes_are_finite():
    x = np.array([-1e4, -50.0, -10.0, 0.0, 10.0, 1e4] * 4000)
    for approximate in ("none", "tanh"):
        y, cache = A.gelu_forward(x, approximate)
        assert np.all(np.isfinite(y))
        assert np.all(np.isfinite(A.gelu_backward(np.ones_like(x), cache)))


def test_gelu_kernel_accepts_non_contiguous_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 200)).T  # a transposed view
    y, cache = A.gelu_forward(x)
    np.testing.assert_allclose(y, A._gelu_forward_numpy(np.ascontiguousarray(x))[0], rtol=1e-14)


def test_gelu_float32_kernels_within_a_few_ulps_of_libm():
    # the float32 kernels evaluate erfc/exp with their own vectorisable formulas (in float64
    # arithmetic): hold them to the correctly rounded float64 functions on a dense grid
    from scipy.special import erfc

    x = np.concatenate([np.linspace(-12, 12, 240001), [-1e4, -100.0, -0.0, 0.0, 100.0, 1e4]]).astype(np.float32)
    x = np.tile(x, 1 + A._KERNEL_MIN_SIZE // x.size)
    x64 = x.astype(np.float64)
    y, cache = A.gelu_forward(x, "none")
    gate64 = 0.5 * erfc(-x64 / np.sqrt(2.0))
    ulp = np.spacing(np.abs(gate64).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(cache.gate - gate64) <= 4 * np.maximum(ulp, 1e-45))
    dy = np.ones_like(x)
    dx = A.gelu_backward(dy, cache)
    dx64 = gate64 + x64 * np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi)
    # what float32 rounding of gate and x · φ(x) can cost, plus a few ulps
    np.testing.assert_allclose(dx, dx64, rtol=1e-6, atol=2e-7)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))

    y, cache = A.gelu_forward(x, "tanh")
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    with np.errstate(over="ignore"):
        gate64 = 1.0 / (1.0 + np.exp(-2.0 * u))
    ulp = np.spacing(gate64.astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(cache.gate - gate64) <= 4 * np.maximum(ulp, 1e-45))
    assert np.all(np.isfinite(A.gelu_backward(dy, cache)))


def test_gelu_float32_kernels_propagate_nan():
    x = np.full(A._KERNEL_MIN_SIZE, np.nan, dtype=np.float32)
    for approximate in ("none", "tanh"):
        y, cache = A.gelu_forward(x, approximate)
        assert np.all(np.isnan(y))
        assert np.all(np.isnan(A.gelu_backward(np.ones_like(x), cache)))
