"""Vectors of numbers held in registers, for the register tiles of the attention kernels.

A *vector* here is ``L`` consecutive numbers held as one value, L = VECTOR_BYTES / itemsize,
where VECTOR_BYTES is a quarter of the vector register file of the CPU Numba compiles for
(see [`vector_bytes`][refsparse.kernels.simd.vector_bytes]): 256 bytes with AVX-512 — 64 float32 or 32 float64, four
512-bit registers — and 64 bytes otherwise — 16 float32 or 8 float64, one cache line, two
AVX2 registers. A tile of four vectors (the kernels' 4 rows) then holds half the register
file, and the other half is left for the operands. Six operations:

    vlanes(a)          L for a's dtype (a an array)
    vload(a, i)        a[i : i+L]                      a 1-D C-contiguous, i + L <= a.size
    vstore(a, i, x)    a[i : i+L] = x
    vsplat(s)          [s, s, …, s]  (L copies of the scalar s)
    vfma(x, y, z)      x * y + z, lane by lane (fused where the CPU has FMA)
    vsum(x)            x's L lanes added in halves: x[:L/2] + x[L/2:], again, … to one number

and one that moves a square block of numbers, transposed, through registers:

    tlanes(a)          K for a's dtype: TRANSPOSE_BYTES / itemsize, one vector register:
                       16 float32 or 8 float64 with AVX-512, else 8 or 4
    vtranspose(src, i, si, dst, j, sj)
                       dst[j + c·sj + t] = src[i + t·si + c]  for t, c < K
    vtranspose_nt(…)   the same, with non-temporal stores (each row one aligned cache
                       line, written without being read first), and vfence() after them

(The kernels' scratch and outputs start on a cache line, so that their rows' vectors do
not straddle two lines: [`refsparse.kernels.buffers.aligned_empty`][refsparse.kernels.buffers.aligned_empty].)

Why they exist. A register tile — say 4 rows × L columns of a product, accumulated over
d = 0 … D−1 — keeps its 4 accumulators in registers for the whole loop and touches memory
only to load the operands. Written with NumPy arrays or scalars, LLVM does not keep such a
tile in registers: arrays are memory it cannot prove unaliased, and 64 scalar accumulators
do not vectorise. Written with these vectors, each accumulator is an SSA value that LLVM
maps onto registers. Measured on one thread here (T = 4096, window 128, D = 64, float32):
the weighted sums Σ_t w_rt v_t went from 37 to 74 GFLOP/s, the dot products from 42 to
66 GFLOP/s (AVX2, L = 16 float32).

Why the width follows the CPU. A 4-row tile of one 16-number vector per row holds 4
accumulators on an AVX-512 CPU, one 512-bit register each; with 2 FMA units and 4 cycles
of FMA latency it needs 8 to keep them busy, so those tiles ran at most at half speed.
Measured on a 2-core AVX-512 Xeon (T = 4096, causal window 128, 8 heads of 64, float32,
forward + backward, alternating in one process): 128-byte vectors 13% faster than 64,
256-byte vectors another 7% faster than 128. On AVX2 a 128-byte vector is four of its 16
registers, and four rows of it would take them all.

NumPy twin: the functions below *are* the twin — plain NumPy that runs when they are
called from Python (and everywhere under ``NUMBA_DISABLE_JIT=1``). Inside Numba code each
call compiles to a few LLVM instructions (``@overload`` over an ``@intrinsic``), and
tests/test_simd.py holds the two together.

Why the transpose. The sparse-weight kernels (refsparse/kernels/spmm.py) move every
activation through a transposed tile. Done number by number, a K × K block costs K² loads
and K² stores; here it costs K vector loads, K·log2(K) shuffles in registers and K vector
stores. Measured here (4096 × 2048 float32 read into tiles of 64 rows, 2 threads): 4.2 ms
number by number, 1.7 ms with vtranspose — the speed of memory.

Numbers are never reordered: lane k of vfma(x, y, z) is x[k]·y[k] + z[k], rounded once
when LLVM fuses it (``llvm.fmuladd``), twice otherwise.

What it gives end to end: not measured on a whole training step. The fast attention and
sparse-weight kernels are written in these vectors, and no version of them without the
vectors exists to time against; the kernel-level gains above (the weighted sums 2×, the
dot products 1.6×, the transposes 2.5×) are what is known. It relies on ``numba.core``
(``cgutils``, ``config``, ``get_host_cpu_features``) and ``numba.extending``; a Numba
release that changes them breaks this module (tests/test_simd.py checks it).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, overload, register_model


def vector_bytes(features=None):
    """Bytes in one vector: 256 where ``features`` (LLVM's comma-separated CPU features;
    default: those Numba compiles for — ``NUMBA_CPU_FEATURES`` if set, else the host's)
    include AVX-512 (``+avx512f``), else 64.

    Numba's on-disk cache keys every compiled function by the CPU name and features, so
    kernels compiled for one width are never loaded for the other.
    """
    if features is None:
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return 256 if "+avx512f" in features.split(",") else 64


VECTOR_BYTES = vector_bytes()  # a vector's size in bytes, for this process's compile target


def vlanes(a):
    """L, the numbers in one vector of a's dtype: VECTOR_BYTES / itemsize (64 or 16 for
    float32, 32 or 8 for float64)."""
    return VECTOR_BYTES // np.dtype(a.dtype).itemsize


def vload(a, i):
    """a[i : i+L] as a vector; a is 1-D C-contiguous and i + L <= a.size."""
    return a[i : i + vlanes(a)].copy()


def vstore(a, i, x):
    """a[i : i+L] = x."""
    a[i : i + vlanes(a)] = x


def vsplat(s):
    """L copies of the scalar s."""
    s = np.asarray(s)
    return np.full(vlanes(s), s, dtype=s.dtype)


def vfma(x, y, z):
    """x * y + z, lane by lane."""
    return x * y + z


def vsum(x):
    """The sum of x's L lanes, in halves: x[:L/2] + x[L/2:] lane by lane, again on the
    result, … until one number is left (a fixed order: the same bits on every CPU of
    one vector width)."""
    x = np.asarray(x)
    while x.size > 1:
        h = x.size // 2
        x = x[:h] + x[h:]
    return x[0]


# A row of a vtranspose block: one vector register of the compile target, 64 bytes with
# AVX-512 and 32 otherwise. Measured on the AVX-512 Xeon (4096 × 2048 float32 stored from
# tiles of 64 rows in chunks of 128 columns, 2 threads): 5.4 ms in 8 × 8 blocks, 2.3 ms in
# 16 × 16 blocks, whose every store is one whole cache line.
TRANSPOSE_BYTES = 64 if VECTOR_BYTES == 256 else 32


def tlanes(a):
    """K, the side of a vtranspose block for a's dtype: 16 float32, 8 float64 with
    AVX-512; 8 and 4 otherwise."""
    return TRANSPOSE_BYTES // np.dtype(a.dtype).itemsize


def vtranspose(src, i, si, dst, j, sj):
    """dst[j + c·sj + t] = src[i + t·si + c] for t, c < K (K = tlanes(src)).

    src and dst are 1-D C-contiguous arrays of one dtype (flattened 2-D arrays: si and sj
    are their row lengths); the block's K rows of K numbers must lie inside both arrays
    (the compiled version does not check). The K × K block at src[i] lands transposed at
    dst[j]; numbers are copied, not computed.
    """
    K = tlanes(src)
    r = np.arange(K)
    block = src[i + r[:, None] * si + r[None, :]]  # (K, K): block[t, c] = src[i + t·si + c]
    dst[j + r[:, None] * sj + r[None, :]] = block.T


def vtranspose_nt(src, i, si, dst, j, sj):
    """[`vtranspose`][refsparse.kernels.simd.vtranspose] with non-temporal stores: the K rows written go to memory
    without first being read into the cache, and do not stay in it.

    Every destination row ``dst[j + c·sj]`` must start on a cache line (the compiled
    version stores whole aligned lines, and faults otherwise); each is then exactly one
    line, K · itemsize = 64 bytes with AVX-512. Call [`vfence`][refsparse.kernels.simd.vfence] before another thread
    may read what was stored. The numbers are those of [`vtranspose`][refsparse.kernels.simd.vtranspose].
    """
    vtranspose(src, i, si, dst, j, sj)


def vfence():
    """Orders this thread's earlier stores, non-temporal ones included, before its later
    loads and stores (LLVM ``fence seq_cst``: MFENCE on x86). Nothing to do in NumPy."""


CACHE_LINE = 64  # bytes


# ---------------------------------------------------------------------------------------
# Numba side: a type for the vector, and each function as LLVM instructions


class Vec(types.Type):
    """Numba type of a vector: ``lanes`` numbers of ``dtype`` (an LLVM <lanes x dtype>)."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vec({dtype} x {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be_type = ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.lanes)
        super().__init__(dmm, fe_type, be_type)


def _vec_of(dtype):
    return Vec(dtype, VECTOR_BYTES // (dtype.bitwidth // 8))


def _is_float_line(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and isinstance(a.dtype, types.Float)


def _address(context, builder, aryty, ary, i):
    """Pointer to a[i] (a 1-D C-contiguous array)."""
    return builder.gep(context.make_array(aryty)(context, builder, ary).data, [i])


@intrinsic
def _lanes(typingctx, a):
    if not isinstance(a, types.Array):
        return None
    n = _vec_of(a.dtype).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)

    return types.intp(a), codegen


@intrinsic
def _load(typingctx, a, i):
    if not (_is_float_line(a) and isinstance(i, types.Integer)):
        return None
    vec = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _address(context, builder, sig.args[0], args[0], i)
        vptr = builder.bitcast(ptr, context.get_value_type(vec).as_pointer())
        return builder.load(vptr, align=a.dtype.bitwidth // 8)  # unaligned: any i

    return vec(a, i), codegen


@intrinsic
def _store(typingctx, a, i, x):
    if not (_is_float_line(a) and isinstance(i, types.Integer) and x == _vec_of(a.dtype)):
        return None

    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _address(context, builder, sig.args[0], args[0], i)
        builder.store(args[2], builder.bitcast(ptr, args[2].type.as_pointer()), align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(a, i, x), codegen


@intrinsic
def _splat(typingctx, s):
    if not isinstance(s, types.Float):
        return None
    vec = _vec_of(s)

    def codegen(context, builder, sig, args):
        ltype = context.get_value_type(vec)
        undef = ir.Constant(ltype, ir.Undefined)
        one = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vec.lanes), [0] * vec.lanes)
        return builder.shuffle_vector(one, undef, mask)

    return vec(s), codegen


@intrinsic
def _fma(typingctx, x, y, z):
    if not (isinstance(x, Vec) and x == y == z):
        return None

    def codegen(context, builder, sig, args):
        ltype = args[0].type
        name = f"llvm.fmuladd.v{x.lanes}f{x.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ltype, [ltype] * 3), name)
        return builder.call(fn, list(args))

    return x(x, y, z), codegen


@intrinsic
def _sum(typingctx, x):
    if not isinstance(x, Vec):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        n = x.lanes
        while n > 1:  # v[:n/2] + v[n/2:], as vsum's twin does; plain fadd, never reordered
            h = n // 2
            low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h))))
            high = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h, n))))
            v = builder.fadd(low, high)
            n = h
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))

    return x.dtype(x), codegen


@intrinsic
def _tlanes(typingctx, a):
    if not isinstance(a, types.Array):
        return None
    n = TRANSPOSE_BYTES // (a.dtype.bitwidth // 8)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)

    return types.intp(a), codegen


def _butterfly(builder, rows):
    """Transpose K vectors of K lanes (K a power of two) in log2(K) stages of shuffles.

    Stage b (b = 1, 2, 4, …) swaps, in every 2b × 2b block, the two off-diagonal b × b
    blocks: rows i and i + b (i & b = 0) exchange their lanes c with c & b set against the
    other row's lanes c − b. After the last stage row c holds the old column c.
    """
    K = len(rows)

    def mask(lanes):
        return ir.Constant(ir.VectorType(ir.IntType(32), K), lanes)

    b = 1
    while b < K:
        out = list(rows)
        for i in range(K):
            if i & b:
                continue
            # lanes 0..K-1 name rows[i], K..2K-1 name rows[i + b]
            low = [c if not c & b else K + c - b for c in range(K)]
            high = [c + b if not c & b else K + c for c in range(K)]
            out[i] = builder.shuffle_vector(rows[i], rows[i + b], mask(low))
            out[i + b] = builder.shuffle_vector(rows[i], rows[i + b], mask(high))
        rows = out
        b *= 2
    return rows


def _transpose_codegen(src, stream):
    """LLVM for vtranspose (``stream`` False) or vtranspose_nt (True: each store aligned
    to its row's whole line and marked ``!nontemporal``)."""
    K = TRANSPOSE_BYTES // (src.dtype.bitwidth // 8)

    def codegen(context, builder, sig, args):
        i, si, j, sj = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2, 4, 5))
        vtype = ir.VectorType(context.get_value_type(src.dtype), K)
        align = src.dtype.bitwidth // 8

        def row(ary, start, stride, k):  # pointer to ary[start + k·stride] as a vector
            at = builder.add(start, builder.mul(stride, ir.Constant(stride.type, k)))
            return builder.bitcast(_address(context, builder, src, ary, at), vtype.as_pointer())

        rows = [builder.load(row(args[0], i, si, t), align=align) for t in range(K)]
        for c, col in enumerate(_butterfly(builder, rows)):
            if stream:
                st = builder.store(col, row(args[3], j, sj, c), align=TRANSPOSE_BYTES)
                st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            else:
                builder.store(col, row(args[3], j, sj, c), align=align)
        return context.get_dummy_value()

    return codegen


def _transpose_args_ok(src, i, si, dst, j, sj):
    return _is_float_line(src) and src == dst and all(isinstance(v, types.Integer) for v in (i, si, j, sj))


@intrinsic
def _transpose(typingctx, src, i, si, dst, j, sj):
    if not _transpose_args_ok(src, i, si, dst, j, sj):
        return None
    return types.none(src, i, si, dst, j, sj), _transpose_codegen(src, stream=False)


@intrinsic
def _transpose_nt(typingctx, src, i, si, dst, j, sj):
    if not _transpose_args_ok(src, i, si, dst, j, sj):
        return None
    return types.none(src, i, si, dst, j, sj), _transpose_codegen(src, stream=True)


@intrinsic
def _fence(typingctx):
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@overload(tlanes)
def _ov_tlanes(a):
    if isinstance(a, types.Array):
        return lambda a: _tlanes(a)


@overload(vtranspose)
def _ov_vtranspose(src, i, si, dst, j, sj):
    if _is_float_line(src) and src == dst:
        return lambda src, i, si, dst, j, sj: _transpose(src, i, si, dst, j, sj)


@overload(vtranspose_nt)
def _ov_vtranspose_nt(src, i, si, dst, j, sj):
    if _is_float_line(src) and src == dst:
        return lambda src, i, si, dst, j, sj: _transpose_nt(src, i, si, dst, j, sj)


@overload(vfence)
def _ov_vfence():
    return lambda: _fence()


@overload(vlanes)
def _ov_vlanes(a):
    if isinstance(a, types.Array):
        return lambda a: _lanes(a)


@overload(vload)
def _ov_vload(a, i):
    if _is_float_line(a):
        return lambda a, i: _load(a, i)


@overload(vstore)
def _ov_vstore(a, i, x):
    if _is_float_line(a) and isinstance(x, Vec):
        return lambda a, i, x: _store(a, i, x)


@overload(vsplat)
def _ov_vsplat(s):
    if isinstance(s, types.Float):
        return lambda s: _splat(s)


@overload(vfma)
def _ov_vfma(x, y, z):
    if isinstance(x, Vec):
        return lambda x, y, z: _fma(x, y, z)


@overload(vsum)
def _ov_vsum(x):
    if isinstance(x, Vec):
        return lambda x: _sum(x)
