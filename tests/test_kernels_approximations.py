"""The float32 approximations of math functions in refsparse.kernels.activations, swept
over their whole input range against the exact functions (float64 libm, rounded once to
float32), in ulps (steps between neighbouring float32 numbers).

The sample is every 97th float32 bit pattern of the range (97 is odd, so the sample runs
through every exponent and every low-bit residue): ~32 million arguments of the softmax's
exp, ~44 million of GELU. The errors stated in the module's docstring are the maxima
these tests assert.
"""

import math

import numba
import numpy as np
import pytest

from refsparse.kernels import activations as K
from refsparse.kernels.activations import exp_softmax

STEP = 97
CHUNK = 1 << 22


def float32_sample(lo, hi):
    """Every STEP-th float32 whose bit pattern (as uint32) lies in [lo, hi], in chunks."""
    for start in range(lo, hi + 1, STEP * CHUNK):
        stop = min(start + STEP * CHUNK, hi + 1)
        yield np.arange(start, stop, STEP, dtype=np.int64).astype(np.uint32).view(np.float32)


@numba.njit(cache=True)
def max_ulps(got, want):
    """max over i of the distance in ulps between float32 got[i] and want[i] (NaN = NaN)."""
    worst = 0
    where = 0
    g = got.view(np.int32)
    w = want.view(np.int32)
    for i in range(got.size):
        if np.isnan(got[i]) or np.isnan(want[i]):
            d = 0 if np.isnan(got[i]) and np.isnan(want[i]) else 1 << 40
        else:  # sign-magnitude bits to a monotone integer line (−0 and +0 both at 0)
            a = np.int64(g[i]) if g[i] >= 0 else -np.int64(g[i] & 0x7FFFFFFF)
            b = np.int64(w[i]) if w[i] >= 0 else -np.int64(w[i] & 0x7FFFFFFF)
            d = abs(a - b)
        if d > worst:
            worst = d
            where = i
    return worst, where


@numba.njit(fastmath={"reassoc", "contract"})
def exp_softmax_all(a, out):
    """exp_softmax compiled as the attention kernels compile it."""
    for i in range(a.size):
        out[i] = exp_softmax(a[i])


@numba.njit(cache=True)
def exact_exp(a, out):
    for i in range(a.size):
        out[i] = np.float32(math.exp(np.float64(a[i])))


@numba.njit(cache=True)
def exact_gelu(x, what, out):
    """In float64 libm, each rounded once: what = 0: Φ(x) = ½ erfc(−x/√2); 1: σ(2u),
    u = √(2/π)(x + 0.044715 x³); 2: x φ(x) = x exp(−x²/2)/√(2π)."""
    for i in range(x.size):
        v = np.float64(x[i])
        if what == 0:
            out[i] = np.float32(0.5 * math.erfc(-v * math.sqrt(0.5)))
        elif what == 1:
            two_u = 2.0 * math.sqrt(2.0 / math.pi) * (v + 0.044715 * v * v * v)
            out[i] = np.float32(1.0 / (1.0 + math.exp(-two_u)) if two_u >= 0 else
                                math.exp(two_u) / (1.0 + math.exp(two_u)))
        else:
            out[i] = np.float32(v * (math.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)))


def test_exp_softmax_float32_within_one_ulp_on_its_whole_range():
    # the softmax's argument a = s − max: every float32 a <= 0 (down to −inf), and a hair
    # above 0 from rounding: up to 0.01
    ranges = [(0, int(np.float32(0.01).view(np.uint32))),  # +0 … 0.01
              (0x80000000, int(np.float32(-np.inf).view(np.uint32)))]  # −0 … −inf
    worst = 0
    for lo, hi in ranges:
        for a in float32_sample(lo, hi):
            got, want = np.empty_like(a), np.empty_like(a)
            exp_softmax_all(a, got)
            exact_exp(a, want)
            d, i = max_ulps(got, want)
            assert d <= 1, f"exp_softmax({a[i]!r}) = {got[i]!r}, exp = {want[i]!r}: {d} ulps"
            worst = max(worst, d)
    assert worst == 1  # the stated maximum is reached (a test that can fail both ways)
    one = np.array([0.0, -np.inf, -200.0], dtype=np.float32)
    out = np.empty_like(one)
    exp_softmax_all(one, out)
    assert list(out) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("what,bound", [("erf gate", 2), ("tanh gate", 1), ("x phi", 1)])
def test_gelu_float32_kernels_on_every_float32_sample(what, bound):
    # every float32 x, NaN patterns aside (NaN propagation is tested in test_kernels_activations)
    worst = 0
    for x in float32_sample(0, 2**32 - 1):
        x = x[~np.isnan(x)]
        y, got, want = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        if what == "erf gate":
            K.gelu_exact_fwd_f32(x, y, got)
            exact_gelu(x, 0, want)
        elif what == "tanh gate":
            K.gelu_tanh_fwd_f32(x, y, got)
            exact_gelu(x, 1, want)
        else:  # the backward's x φ(x): dy = 1 and a zero gate leave dx = x φ(x)
            K.gelu_exact_bwd_f32(x, np.zeros_like(x), np.ones_like(x), got)
            exact_gelu(x, 2, want)
        d, i = max_ulps(got, want)
        assert d <= bound, f"{what} at x = {x[i]!r}: {got[i]!r} against {want[i]!r}, {d} ulps"
        worst = max(worst, d)
    assert worst == bound
