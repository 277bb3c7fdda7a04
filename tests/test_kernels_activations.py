"""The GELU driver's fast path against the reference kernel (both forms, both dtypes,
forward and backward)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refsparse import functional as F
from refsparse import kernels
from refsparse.kernels import activations as K
from refsparse.kernels.reference import activations as ref


def fast_gelu(x, approximate, dy):
    with kernels.use("fast"):
        y, gate = K.gelu_forward(x, approximate)
        return y, gate, K.gelu_backward(dy, x, gate, approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(n=st.integers(K.KERNEL_MIN_SIZE, 3 * K.KERNEL_MIN_SIZE), scale=st.sampled_from([0.1, 1.0, 5.0, 40.0]),
       seed=st.integers(0, 2**31 - 1))
def test_gelu_fast_equals_reference_float64(approximate, n, scale, seed):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal(n)
    dy = rng.standard_normal(n)
    y, gate, dx = fast_gelu(x, approximate, dy)  # the Numba kernels (n >= the threshold)
    y_r, gate_r = ref.gelu_forward(x, approximate)
    # libm (kernels) and scipy/numpy (reference) erfc and exp differ by a few ulps; in the far
    # tails (|y| ~ 1e-270) exp of an argument of ~600, rounded in a different order, by ~1e-13
    np.testing.assert_allclose(y, y_r, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(gate, gate_r, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(dx, ref.gelu_backward(dy, x, gate_r, approximate), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_fast_float32(approximate):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((64, 512))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, gate, dx = fast_gelu(x, approximate, dy)
    assert y.dtype == gate.dtype == dx.dtype == np.float32
    y_r, gate_r = ref.gelu_forward(x, approximate)
    np.testing.assert_allclose(y, y_r, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(dx, ref.gelu_backward(dy, x, gate_r, approximate), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_gelu_extremes_are_finite(path):
    x = np.array([-1e4, -50.0, -10.0, 0.0, 10.0, 1e4] * 4000)
    with kernels.use(path):
        for approximate in ("none", "tanh"):
            y, cache = F.gelu_forward(x, approximate)
            assert np.all(np.isfinite(y))
            assert np.all(np.isfinite(F.gelu_backward(np.ones_like(x), cache)))


def test_gelu_fast_accepts_non_contiguous_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 200)).T  # a transposed view
    with kernels.use("fast"):
        y, cache = F.gelu_forward(x)
        dx = F.gelu_backward(np.ones_like(x), cache)
    y_r, gate_r = ref.gelu_forward(np.ascontiguousarray(x), "none")
    np.testing.assert_allclose(y, y_r, rtol=1e-14)
    np.testing.assert_allclose(dx, ref.gelu_backward(np.ones_like(x), x, gate_r, "none"), rtol=1e-13, atol=1e-15)


def test_gelu_reference_against_math_erf_and_tanh():
    # the reference's cancellation-free forms against the textbook ones (math.erf, np.tanh),
    # where the textbook ones are accurate (x not far below 0)
    import math
    x = np.linspace(-3, 5, 81)
    y, gate = ref.gelu_forward(x, "none")
    np.testing.assert_allclose(gate, [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x], rtol=1e-14)
    y, gate = ref.gelu_forward(x, "tanh")
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    np.testing.assert_allclose(y, 0.5 * x * (1 + np.tanh(u)), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_gelu_float32_propagates_nan(path):
    x = np.full(K.KERNEL_MIN_SIZE, np.nan, dtype=np.float32)
    with kernels.use(path):
        for approximate in ("none", "tanh"):
            y, cache = F.gelu_forward(x, approximate)
            assert np.all(np.isnan(y))
            assert np.all(np.isnan(F.gelu_backward(np.ones_like(x), cache)))
