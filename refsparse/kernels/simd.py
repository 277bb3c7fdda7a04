"""Vectors of one cache line of numbers, for the register tiles of the attention kernels.

A *vector* here is ``L`` consecutive numbers held as one value, L = 64 bytes / itemsize:
16 float32 or 8 float64 — one cache line, two AVX2 registers. Five operations:

    vlanes(a)          L for a's dtype (a an array)
    vload(a, i)        a[i : i+L]                      a 1-D C-contiguous, i + L <= a.size
    vstore(a, i, x)    a[i : i+L] = x
    vsplat(s)          [s, s, …, s]  (L copies of the scalar s)
    vfma(x, y, z)      x * y + z, lane by lane (fused where the CPU has FMA)

Why they exist. A register tile — say 4 rows × L columns of a product, accumulated over
d = 0 … D−1 — keeps its 4 accumulators in registers for the whole loop and touches memory
only to load the operands. Written with NumPy arrays or scalars, LLVM does not keep such a
tile in registers: arrays are memory it cannot prove unaliased, and 64 scalar accumulators
do not vectorise. Written with these vectors, each accumulator is an SSA value that LLVM
maps onto registers. Measured on one thread here (T = 4096, window 128, D = 64, float32):
the weighted sums Σ_t w_rt v_t went from 37 to 74 GFLOP/s, the dot products from 42 to
66 GFLOP/s.

NumPy twin: the functions below *are* the twin — plain NumPy that runs when they are
called from Python (and everywhere under ``NUMBA_DISABLE_JIT=1``). Inside Numba code each
call compiles to a few LLVM instructions (``@overload`` over an ``@intrinsic``), and
tests/test_simd.py holds the two together.

Numbers are never reordered: lane k of vfma(x, y, z) is x[k]·y[k] + z[k], rounded once
when LLVM fuses it (``llvm.fmuladd``), twice otherwise.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

LINE_BYTES = 64  # one cache line: a vector's size in bytes


def vlanes(a):
    """L, the numbers in one vector of a's dtype: 16 for float32, 8 for float64."""
    return LINE_BYTES // np.dtype(a.dtype).itemsize


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
    return Vec(dtype, LINE_BYTES // (dtype.bitwidth // 8))


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
