"""GELU forward and backward: the driver, and the fast kernels (parallel Numba loops over
the elements); and the softmaxes' exponential, ``exp_softmax``.

The driver, called by [`functional.activations`][refsparse.functional.activations]:

    y, gate = gelu_forward(x, approximate)          x, y, gate: any one shape
    dx = gelu_backward(dy, x, gate, approximate)

runs the path that is switched on ([`kernels.current`][refsparse.kernels.current]): the
reference, [`kernels.reference.activations`][refsparse.kernels.reference.activations]
(whole-array NumPy and scipy's erfc, the definition), or the fast kernels below — which
also run the reference on small problems (fewer than ``KERNEL_MIN_SIZE`` elements), where
starting the threads costs more than they save. The tests hold the two paths together. The
kernels exist for speed: the reference makes ~8 passes over memory and scipy's erfc runs
on one core, these make one pass on all cores.

Arrays of the kernels: x, y, gate, dy, dx flat (n,) C-contiguous, one dtype (float32 or float64).

    exact ("none"):  gate = ½ erfc(−x/√2) = Φ(x),   y = x · gate
                     dx = dy · (gate + x · φ(x)),  φ(x) = exp(−x²/2)/√(2π)
    tanh:            gate = σ(2u) = 1 / (1 + exp(−2u)),  u = √(2/π)(x + 0.044715 x³)
                     dx = dy · (gate + x · 2 gate (1 − gate) √(2/π)(1 + 3·0.044715 x²))

No reductions here, so no fastmath flags at all: every element is computed exactly as
the formula says, in the input's dtype.

float32 has kernels of its own (``*_f32``), because Numba has no vectorised ``erfc`` or
``exp`` here (no SVML): libm's scalar ``erfcf``/``expf`` cost ~13 and ~5.5 ns an element,
most of a GELU layer's time. The ``_f32`` kernels evaluate the same formulas in float64
arithmetic with functions that vectorise (AVX2), and round once to float32:

    erfc(z) = t · exp(−z² − 1.26551223 + t·P(t)),  t = 1 / (1 + |z|/2),  z ≥ 0
              (Numerical Recipes' ``erfcc``, a Chebyshev fit: relative error < 1.2e-7
              for every z ≥ 0), and erfc(z) = 2 − erfc(−z) for z < 0;
    exp(a)  = exp(a/256)^256 for −110 ≤ a ≤ 0: a degree-10 Taylor polynomial at
              |a/256| ≤ 0.43 (truncation < 3e-12), squared 8 times (relative error ×256:
              < 1e-9); 0 below −110.

These kernels allow ``contract`` (fused multiply-adds in the polynomials), which rounds
less, not more. The float64 kernels and the reference keep the correctly rounded functions.

Maximum error, over the whole float32 input range (every float32 x but NaN, which stays
NaN), in float32 ulps against the exact function (float64 libm, rounded once) — asserted
by tests/test_kernels_approximations.py on every 97th float32 bit pattern (44 million x):

    exact gate Φ(x) = ½ erfc(−x/√2)         2 ulps
    tanh gate σ(2u)                          1 ulp
    x φ(x) in the exact backward             1 ulp
    (the tanh backward has no exp: the plain kernel serves float32)

End-to-end gain, measured: one AdamW training step of a small float32 DecoderLM (4
layers, d_model 128, d_ff 512, T 128, batch 16, GELU "none", dense attention) took 1.08×
the CPU time (1.09× the wall time) with libm's ``erfcf``/``expf`` kernels instead of these
— medians over 60 paired rounds, the variants interleaved step by step in one process, on
a shared 2-core machine (load ~9–12: the wall times are noisy, the CPU times less so; an
earlier run of 40 rounds gave 1.20× wall, and 1.14× with local attention, window 32).
Kept.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from .buffers import aligned_empty
from .reference import activations as ref
from .switch import current

__all__ = ["KERNEL_MIN_SIZE", "exp_softmax", "gelu_backward", "gelu_forward"]

# below this many elements the reference runs on the fast path too: as fast there, and it
# keeps small problems (tests, golden vectors) on the reference code
KERNEL_MIN_SIZE = 16384

_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_BETA = math.sqrt(2.0 / math.pi)
_TANH_KAPPA = 0.044715
# Numerical Recipes' erfcc: erfc(z) = t·exp(−z² + Σ_k c_k t^k), t = 1/(1 + z/2), z >= 0
_ERFCC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
          -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def gelu_forward(x, approximate):
    """GELU of x (any shape): returns y and the gate (Φ(x) or σ(2u)), x's shape and dtype.

    ``approximate`` is "none" (erf) or "tanh". A non-contiguous x is copied once.
    """
    if current() == "reference" or x.size < KERNEL_MIN_SIZE:
        return ref.gelu_forward(x, approximate)
    x = np.ascontiguousarray(x)
    y = aligned_empty(x.shape, x.dtype)  # fresh outputs each step: large ones are recycled
    gate = aligned_empty(x.shape, x.dtype)
    if x.dtype == np.float32:  # vectorised erfc/exp in float64 arithmetic, rounded once
        kernel = gelu_exact_fwd_f32 if approximate == "none" else gelu_tanh_fwd_f32
    else:
        kernel = gelu_exact_fwd if approximate == "none" else gelu_tanh_fwd
    kernel(x.reshape(-1), y.reshape(-1), gate.reshape(-1))
    return y, gate


def gelu_backward(dy, x, gate, approximate):
    """dx of GELU, x's shape and dtype, from dy, the input x and the forward's gate."""
    if current() == "reference" or x.size < KERNEL_MIN_SIZE:
        return ref.gelu_backward(dy, x, gate, approximate)
    x = np.ascontiguousarray(x)
    gate = np.ascontiguousarray(gate)
    dy = np.ascontiguousarray(dy)
    dx = aligned_empty(x.shape, x.dtype)
    if approximate == "none":
        kernel = gelu_exact_bwd_f32 if x.dtype == np.float32 else gelu_exact_bwd
    else:
        kernel = gelu_tanh_bwd  # no exp: as fast in float32
    kernel(x.reshape(-1), gate.reshape(-1), dy.reshape(-1), dx.reshape(-1))
    return dx


@numba.njit(parallel=True, cache=True)
def gelu_exact_fwd(x, y, gate):
    """y = x Φ(x) with Φ(x) = ½ erfc(−x/√2); also writes gate = Φ(x). O(n)."""
    c = x.dtype.type(-_SQRT1_2)
    half = x.dtype.type(0.5)
    for i in numba.prange(x.size):
        g = half * math.erfc(x[i] * c)
        gate[i] = g
        y[i] = x[i] * g


@numba.njit(parallel=True, cache=True)
def gelu_exact_bwd(x, gate, dy, dx):
    """dx = dy (Φ(x) + x φ(x)), φ(x) = exp(−x²/2)/√(2π). O(n)."""
    k = x.dtype.type(_INV_SQRT_2PI)
    mhalf = x.dtype.type(-0.5)
    for i in numba.prange(x.size):
        xi = x[i]
        dx[i] = dy[i] * (gate[i] + xi * (k * np.exp(mhalf * xi * xi)))


@numba.njit(parallel=True, cache=True)
def gelu_tanh_fwd(x, y, gate):
    """y = x σ(2u), u = √(2/π)(x + 0.044715 x³); also writes gate = σ(2u). O(n)."""
    m2b = x.dtype.type(-2.0 * _TANH_BETA)
    kap = x.dtype.type(_TANH_KAPPA)
    one = x.dtype.type(1.0)
    for i in numba.prange(x.size):
        xi = x[i]
        g = one / (one + np.exp(m2b * (xi + kap * xi * xi * xi)))  # exp → inf gives g = 0
        gate[i] = g
        y[i] = xi * g


@numba.njit(parallel=True, cache=True)
def gelu_tanh_bwd(x, gate, dy, dx):
    """dx = dy (σ + x · 2σ(1 − σ) √(2/π)(1 + 3·0.044715 x²)), σ = gate. O(n)."""
    b = x.dtype.type(_TANH_BETA)
    k3 = x.dtype.type(3.0 * _TANH_KAPPA)
    one = x.dtype.type(1.0)
    two = x.dtype.type(2.0)
    for i in numba.prange(x.size):
        xi = x[i]
        g = gate[i]
        du = b * (one + k3 * xi * xi)
        dx[i] = dy[i] * (g + xi * (two * g * (one - g) * du))


# ----------------------------------------------------------------------------------------
# float32: vectorisable exp and erfc, evaluated in float64


@numba.njit(inline="always")
def _exp_nonpositive(a):
    """exp(a) for a float64 a <= 0 (or a hair above), to < 1e-9 relative; 0 below −110.

    exp(a) = exp(a/256)^256: e^r by its Taylor polynomial of degree 10 at |r| <= 110/256
    (truncation < 3e-12), then 8 squarings (relative error ×256). Below a = −110 it
    returns 0: every float32 result built from it is 0 there (e^−110 ≈ 2e−48, and
    x e^−x²/2 < 1e−47 for x² > 220), where the clamped value times a large x would not be.
    Only arithmetic and selects, so the loops that call it vectorise.
    """
    r = max(a, -110.0) * (1.0 / 256.0)
    p = 1.0 / 3628800.0  # 1/10!
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0  # e^r
    for _ in range(8):
        p = p * p  # e^(2r), e^(4r), …, e^(256 r) = e^a
    return 0.0 if a < -110.0 else p  # (a NaN stays NaN)


# ----------------------------------------------------------------------------------------
# float32: the softmax's exp in float32 arithmetic (eight lanes per AVX2 register)

_LOG2E = 1.4426950408889634
# ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with 16 significant bits, so that n · _LN2_HI is exact in
# float32 for |n| < 2^8 (Cody & Waite's two-part reduction)
_LN2_HI = 45426.0 / 65536.0  # 0.693145751953125
_LN2_LO = 0.6931471805599453 - _LN2_HI  # 1.4286068e-06


@intrinsic
def _float32_from_bits(typingctx, i):
    """The float32 whose bit pattern is the int32 i (a bitcast: no conversion)."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(cache=True, fastmath={"contract"})
def _exp_f32(a):
    """exp(a) for a float32 a in the softmax's range, a <= 0 (or a hair above), in float32
    arithmetic — within one ulp of the correctly rounded value (checked for every float32 a
    in [−104, 0.01]); 0 below a = −104 (e^−104 ≈ 7e−46 is below float32's smallest number).

        n = round(a · log2 e),  r = a − n ln 2 = (a − n·ln2_hi) − n·ln2_lo,  |r| <= ½ ln 2,
        e^a = 2^n · e^r,  e^r by its Taylor polynomial of degree 7
        (truncation < r^8/8! < 6e−9 relative, a tenth of a float32 ulp).

    a − n·ln2_hi is exact (Sterbenz; n · ln2_hi has at most 24 bits), so r carries only the
    rounding of the last subtraction. 2^n is built from its bits as 2^(n+64) · 2^−64, so that
    n down to −150 (subnormal results) needs no special case. Only arithmetic, a floor, an
    int conversion and a bitcast: the loops that call it vectorise.

    Compiled with ``contract`` only and called, not inlined by Numba, so a caller's
    ``reassoc`` cannot refold (a − n·ln2_hi) − n·ln2_lo into a − n·ln 2.
    """
    x = min(max(a, np.float32(-104.0)), np.float32(40.0))
    n = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))  # nearest integer, as float32
    r = x - n * np.float32(_LN2_HI)
    r = r - n * np.float32(_LN2_LO)
    p = np.float32(1.0 / 5040.0)  # 1/7!
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)  # e^r
    # 2^(n+64): biased exponent n + 64 + 127 (in 41 … 249) in bits 23 …, built in float32 (exact:
    # an integer times 2^23, below 2^31) and converted once — no int64 on the way, which AVX2 lacks
    two_n64 = _float32_from_bits(np.int32((n + np.float32(127 + 64)) * np.float32(2.0 ** 23)))
    return p * two_n64 * np.float32(2.0 ** -64)


def exp_softmax(a):
    """exp(a) for the softmax's a = s − max <= 0 (or a hair above, from rounding).

    float64: ``np.exp``. float32: `refsparse.kernels.activations._exp_f32`, in float32
    arithmetic — plain arithmetic, so the loops that call it vectorise (8 lanes per AVX2
    register), where ``np.exp`` is a libm call per entry (measured: 0.8 against 1.3 ns an
    entry for the earlier float64 polynomial, in a loop over 4096 arguments; libm's took a
    third of sparse attention's forward at T = 4096, window 128).

    Maximum error over its whole input range, every float32 a <= 0.01 (−inf included,
    giving 0): 1 ulp from the correctly rounded exp(a) — asserted on every 97th float32 bit
    pattern (32 million a) by tests/test_kernels_approximations.py, and at every one of the
    2.1e9 float32 a in [−104, 0.01] by scripts/check_exp_f32.py.

    End-to-end gain, measured on AdamW training steps of small float32 DecoderLMs with
    ``np.exp`` in its place (medians over paired rounds, the variants interleaved step by
    step in one process, on a shared 2-core machine under load ~9–12; CPU time, which the
    load disturbs less than wall time): 2 layers, d_model 128, T 512, batch 4, local
    attention window 128: 1.088× the CPU time (1.072× wall), 30 rounds — the sparse
    kernels spend most of their exps here; 4 layers, d_model 128, T 128, batch 16: 1.025×
    (dense attention) and 1.028× (window 32), 60 and 80 rounds — below the 5% bar at this
    short length. Kept for the longer sequences, where sparse attention's share grows.
    Reference: ``np.exp``.
    """
    return np.exp(a)


@overload(exp_softmax)
def _exp_softmax_impl(a):
    if a == numba.types.float32:
        return lambda a: _exp_f32(a)
    return lambda a: np.exp(a)


@numba.njit(inline="always")
def _half_erfc(z):
    """½ erfc(z) for a float64 z, to < 1.3e-7 relative (Numerical Recipes' erfcc)."""
    az = abs(z)
    t = 1.0 / (1.0 + 0.5 * az)
    c = _ERFCC
    poly = c[9]
    poly = poly * t + c[8]
    poly = poly * t + c[7]
    poly = poly * t + c[6]
    poly = poly * t + c[5]
    poly = poly * t + c[4]
    poly = poly * t + c[3]
    poly = poly * t + c[2]
    poly = poly * t + c[1]
    poly = poly * t + c[0]
    h = 0.5 * t * _exp_nonpositive(poly - az * az)  # ½ erfc(|z|)
    return h if z >= 0.0 else 1.0 - h  # erfc(z) = 2 − erfc(−z)


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def gelu_exact_fwd_f32(x, y, gate):
    """float32 x: y = x Φ(x), gate = Φ(x) = ½ erfc(−x/√2), in float64 arithmetic. O(n)."""
    for i in numba.prange(x.size):
        g = np.float32(_half_erfc(np.float64(x[i]) * -_SQRT1_2))
        gate[i] = g
        y[i] = x[i] * g


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def gelu_exact_bwd_f32(x, gate, dy, dx):
    """float32: dx = dy (Φ(x) + x φ(x)), x φ(x) = x exp(−x²/2)/√(2π) in float64 arithmetic,
    rounded once. O(n)."""
    for i in numba.prange(x.size):
        xi = np.float64(x[i])
        phi = _INV_SQRT_2PI * _exp_nonpositive(-0.5 * xi * xi)
        dx[i] = dy[i] * (gate[i] + np.float32(xi * phi))  # x φ(x) rounded once


@numba.njit(parallel=True, cache=True, fastmath={"contract"})
def gelu_tanh_fwd_f32(x, y, gate):
    """float32 x: y = x σ(2u), gate = σ(2u), u = √(2/π)(x + 0.044715 x³), float64 arithmetic. O(n).

    With e = exp(−|2u|) <= 1 (no overflow): σ(2u) = 1/(1 + e) for u >= 0, e/(1 + e) for u < 0.
    """
    for i in numba.prange(x.size):
        xi = np.float64(x[i])
        two_u = 2.0 * _TANH_BETA * (xi + _TANH_KAPPA * xi * xi * xi)
        e = _exp_nonpositive(-abs(two_u))
        g = np.float32(1.0 / (1.0 + e) if two_u >= 0.0 else e / (1.0 + e))
        gate[i] = g
        y[i] = x[i] * g
