"""refsparse.kernels.simd: the compiled vector operations against their NumPy twin (the same
functions called from Python), in float32 and float64."""

import numba
import numpy as np
import pytest
from numba.core.codegen import get_host_cpu_features
from numba.core.errors import TypingError

from refsparse.kernels.buffers import aligned_empty
from refsparse.kernels.simd import (
    VECTOR_BYTES,
    tlanes,
    vector_bytes,
    vfence,
    vfma,
    vlanes,
    vload,
    vsplat,
    vstore,
    vsum,
    vtranspose,
    vtranspose_nt,
)


def tile(a, x, y):
    """y[c:c+L] += Σ_t a[t] · x[t, c:c+L] for each vector c of y: the shape of the kernels'
    register tiles. a (n,), x (n, m), y (m,) with L | m."""
    L = vlanes(y)
    for c in range(0, y.size, L):
        acc = vload(y, c)  # (L,)
        for t in range(a.size):
            acc = vfma(vsplat(a[t]), vload(x[t], c), acc)
        vstore(y, c, acc)


tile_jit = numba.njit(cache=True)(tile)


@numba.njit(cache=True)
def lanes_jit(a):
    return vlanes(a)


@numba.njit(cache=True)
def load_store_jit(a, i, out, j):
    vstore(out, j, vload(a, i))


@numba.njit(cache=True)
def splat_jit(s, out):
    vstore(out, 0, vsplat(s))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lanes_follow_the_compile_target(dtype):
    """256-byte vectors where Numba compiles for AVX-512, else 64 (one cache line), in
    Python and in compiled code alike."""
    a = np.zeros(3, dtype)
    features = numba.config.CPU_FEATURES  # what Numba compiles for: NUMBA_CPU_FEATURES, else the host's
    if features is None:
        features = get_host_cpu_features()
    want = (256 if "+avx512f" in features.split(",") else 64) // a.itemsize
    assert VECTOR_BYTES // a.itemsize == vlanes(a) == lanes_jit(a) == want


def test_vector_bytes_of_a_feature_list():
    assert vector_bytes("+avx,+avx2,+fma,-avx512f") == 64
    assert vector_bytes("+avx,+avx2,+fma,+avx512f,+avx512bw") == 256
    assert vector_bytes("") == 64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_store_at_unaligned_offsets(dtype):
    L = vlanes(np.zeros(1, dtype))
    a = np.arange(3 * L, dtype=dtype) + 0.25
    for i in (0, 1, 3, L + 5, 2 * L):
        out = np.full(2 * L + 3, -1.0, dtype)
        load_store_jit(a, i, out, 3)
        want = np.full_like(out, -1.0)
        want[3 : 3 + L] = a[i : i + L]  # the twin
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_splat(dtype):
    out = np.zeros(vlanes(np.zeros(1, dtype)), dtype)
    splat_jit(dtype(-2.5), out)
    np.testing.assert_array_equal(out, vsplat(dtype(-2.5)))
    assert vsplat(dtype(1)).dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_equals_its_numpy_twin(dtype):
    """The compiled tile against the same function run as NumPy, and both against a @ x."""
    rng = np.random.default_rng(0)
    L = vlanes(np.zeros(1, dtype))
    a = rng.standard_normal(37).astype(dtype)
    x = rng.standard_normal((37, 3 * L)).astype(dtype)
    y0 = rng.standard_normal(3 * L).astype(dtype)
    y_twin, y_jit = y0.copy(), y0.copy()
    tile(a, x, y_twin)
    tile_jit(a, x, y_jit)
    # the same sums in the same order; a fused multiply-add rounds once where the twin rounds twice
    eps = np.finfo(dtype).eps
    bound = 4 * 37 * eps * (np.abs(a) @ np.abs(x) + np.abs(y0))
    assert np.all(np.abs(y_jit - y_twin) <= bound)
    want = y0.astype(np.float64) + a.astype(np.float64) @ x.astype(np.float64)
    assert np.all(np.abs(y_jit - want) <= bound)


@numba.njit(cache=True)
def sum_jit(a):
    return vsum(vload(a, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_lanes_is_its_twins_halving_order_bit_for_bit(dtype):
    """vsum adds the two halves lane by lane until one number is left; the compiled sum
    takes exactly that order (no reassociation), so the bits agree with the twin, and
    the twin agrees with the same halving written out by hand."""
    rng = np.random.default_rng(2)
    L = vlanes(np.zeros(1, dtype))
    for _ in range(20):
        a = (rng.standard_normal(L) * 10.0 ** rng.integers(-8, 8, L)).astype(dtype)
        h = list(a)
        while len(h) > 1:  # by hand: h[i] + h[i + n/2]
            n = len(h) // 2
            h = [dtype(h[i] + h[i + n]) for i in range(n)]
        assert vsum(a) == h[0]
        assert sum_jit(a) == h[0]


def test_wrong_arrays_are_rejected_at_compile_time():
    x = np.zeros((4, 32), np.float32)
    with pytest.raises(TypingError):
        load_store_jit(x[:, 0], 0, np.zeros(32, np.float32), 0)  # not C-contiguous
    with pytest.raises(TypingError):
        load_store_jit(np.zeros(32, np.int64), 0, np.zeros(32, np.int64), 0)  # not float


@numba.njit(cache=True)
def transpose_jit(src, i, si, dst, j, sj):
    vtranspose(src, i, si, dst, j, sj)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_block_equals_its_numpy_twin(dtype):
    """A K × K block from any offset and row length lands transposed at any other; nothing
    outside the block is written. The twin is itself checked against plain indexing. K is
    one vector register of the compile target: 64 bytes with AVX-512, else 32."""
    features = numba.config.CPU_FEATURES or get_host_cpu_features()
    side = (64 if "+avx512f" in features.split(",") else 32) // np.dtype(dtype).itemsize
    assert tlanes(np.zeros(1, dtype)) == tlanes_jit(np.zeros(1, dtype)) == side
    rng = np.random.default_rng(1)
    size = 3 * side * side
    src = rng.standard_normal(size).astype(dtype)
    for i, si, j, sj in [(0, side, 0, side), (3, side + 5, 5, side + 3), (17, 2 * side - 3, 0, 2 * side),
                         (1, side, 2, side + 1)]:
        want = np.full(size, -7.0, dtype)
        for t in range(side):  # plain indexing: dst[j + c·sj + t] = src[i + t·si + c]
            for c in range(side):
                want[j + c * sj + t] = src[i + t * si + c]
        twin = np.full(size, -7.0, dtype)
        vtranspose(src, i, si, twin, j, sj)
        np.testing.assert_array_equal(twin, want)
        out = np.full(size, -7.0, dtype)
        transpose_jit(src, i, si, out, j, sj)
        np.testing.assert_array_equal(out, want)


@numba.njit(cache=True)
def tlanes_jit(a):
    return tlanes(a)


@numba.njit(cache=True)
def transpose_nt_jit(src, i, si, dst, j, sj):
    vtranspose_nt(src, i, si, dst, j, sj)
    vfence()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_transpose_equals_the_plain_one(dtype):
    """vtranspose_nt, whose rows are stored bypassing the cache, writes exactly what
    vtranspose writes (its twin), from any source offset to destination rows that each
    start on a line; vfence after it orders the stores and changes nothing."""
    side = tlanes(np.zeros(1, dtype))
    line = side * np.dtype(dtype).itemsize  # bytes in one row of the block
    rng = np.random.default_rng(2)
    size = 4 * side * side
    src = rng.standard_normal(size).astype(dtype)
    for i, si, j, sj in [(0, side, 0, side), (3, side + 5, side, 2 * side), (11, 3 * side - 1, 2 * side, 3 * side)]:
        want = np.full(size, -7.0, dtype)
        vtranspose(src, i, si, want, j, sj)
        out = aligned_empty(size, dtype, align=line)
        out[:] = -7.0
        transpose_nt_jit(src, i, si, out, j, sj)
        np.testing.assert_array_equal(out, want)
        twin = np.full(size, -7.0, dtype)
        vtranspose_nt(src, i, si, twin, j, sj)
        np.testing.assert_array_equal(twin, want)
