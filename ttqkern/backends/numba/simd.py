"""AVX-512 building blocks for Numba kernels: 16-lane vector types and LLVM intrinsics.

Numba has no vector type, and its auto-vectoriser does not find the instruction
sequences the decode GEMVs need (a 16-entry float table lookup, `vpermps`, fed by a
shifted word of packed codes).  This module adds two Numba types whose LLVM
representation *is* a vector register,

- `f32x16`: ``<16 x float>`` (one zmm of fp32),
- `i32x16`: ``<16 x i32>`` (one zmm of 32-bit integers),

and `numba.extending.intrinsic` functions that emit single LLVM instructions or
intrinsics on them (load, store, broadcast, FMA, shift, ``vpermps``, prefetch, ...).
Values of these types live in SSA registers: LLVM allocates zmm registers for them
and spills only when a kernel keeps more than 32 alive.

Register tiles are nested ``UniTuple``s of vectors (`zeros_tile`, `store_tile`,
`load_tile`, `tile_sums`): their sizes are known at compile time from the tuple
types, so a kernel written once over tuples is compiled into straight-line code
for each row / token count it is called with, without Python code generation.
The kernel modules write their inner step as one intrinsic with the ``ir_*``
helpers below, so the field loop and the tile are unrolled at compile time.

Memory safety: the loads and stores here do **not** check bounds (they read
``16 * itemsize`` bytes at an element offset of a C-contiguous array's data).
Every kernel that uses them states its buffer assumptions in one host-side check
(`ttqkern.backends.numba.host`) before it is launched.  `prefetch` may point
anywhere: x86 ``prefetcht0`` never faults, and the address is computed without
``inbounds`` so LLVM does not treat a past-the-end hint as undefined behaviour.

Only call these on a CPU with AVX-512F (`isa.HAS_AVX512`): LLVM lowers
``llvm.x86.avx512.*`` only for such a target.  The generic operations (fma, add,
shifts, conversions) are target-independent LLVM IR.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "f32x16",
    "i32x16",
]

_I32 = ir.IntType(32)
_I8 = ir.IntType(8)
_F32 = ir.FloatType()
VF = ir.VectorType(_F32, 16)
VI = ir.VectorType(_I32, 16)


class F32x16Type(types.Type):
    """16 fp32 lanes in one register (LLVM ``<16 x float>``)."""

    def __init__(self):
        super().__init__(name="f32x16")


class I32x16Type(types.Type):
    """16 int32 lanes in one register (LLVM ``<16 x i32>``)."""

    def __init__(self):
        super().__init__(name="i32x16")


f32x16 = F32x16Type()
i32x16 = I32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, VF)


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, VI)


def _c32(v: int) -> ir.Constant:
    return ir.Constant(_I32, v)


def _ptr(context, builder, aryty, ary, idx, elem: ir.Type):
    """Pointer to element ``idx`` of a C-contiguous array, cast to ``elem*``.

    Plain (not inbounds) GEP: a prefetch hint past the end is allowed.
    """
    a = context.make_array(aryty)(context, builder, ary)
    p = builder.gep(a.data, [idx], inbounds=False)
    return builder.bitcast(p, elem.as_pointer())


def _idx(context, builder, ty, v):
    return context.cast(builder, v, ty, types.intp)


def _splat(builder, scalar, vty: ir.VectorType):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, _c32(0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _fn(builder, name: str, ret: ir.Type, args: list[ir.Type]):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


# --- construction -------------------------------------------------------------------


@intrinsic
def fzero(typingctx):
    """An f32x16 of zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(VF, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def fbcast(typingctx, x):
    """``x`` (a float) in all 16 lanes."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, v, VF)

    return f32x16(x), codegen


# --- memory -----------------------------------------------------------------------------


def _check_array(arr, dtypes):
    return isinstance(arr, types.Array) and arr.layout == "C" and arr.dtype in dtypes


@intrinsic
def load_f(typingctx, arr, idx):
    """16 fp32 at element ``idx`` of a C-contiguous float32 array (unaligned, unchecked)."""
    if not _check_array(arr, (types.float32,)):
        return None

    def codegen(context, builder, sig, args):
        i = _idx(context, builder, sig.args[1], args[1])
        return builder.load(_ptr(context, builder, sig.args[0], args[0], i, VF), align=4)

    return f32x16(arr, idx), codegen


@intrinsic
def store_f(typingctx, arr, idx, v):
    """Store 16 fp32 at element ``idx`` of a C-contiguous float32 array (unchecked)."""
    if not _check_array(arr, (types.float32,)) or v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        i = _idx(context, builder, sig.args[1], args[1])
        builder.store(args[2], _ptr(context, builder, sig.args[0], args[0], i, VF), align=4)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """``prefetcht0`` of the line holding element ``idx`` of ``arr`` (never faults, may be out of range)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        i = _idx(context, builder, sig.args[1], args[1])
        p = _ptr(context, builder, sig.args[0], args[0], i, _I8)
        fn = _fn(builder, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
        builder.call(fn, [p, _c32(0), _c32(3), _c32(1)])  # read, high locality, data cache
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


# --- arithmetic ---------------------------------------------------------------------------


def _binop(name):
    def typer(typingctx, a, b):
        if a != b or a not in (f32x16, i32x16):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, name)(*args)

        return a(a, b), codegen

    return typer


fadd = intrinsic(_binop("fadd"))
fmul = intrinsic(_binop("fmul"))


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` per lane, one rounding (``vfmadd``)."""
    if not (a == b == c == f32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_fn(builder, "llvm.fma.v16f32", VF, [VF, VF, VF]), args)

    return f32x16(a, b, c), codegen


@intrinsic
def hsum(typingctx, v):
    """Sum of the 16 lanes as a float32 (a shuffle tree: 4 adds)."""
    if v != f32x16:
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        width = 16
        while width > 1:
            width //= 2
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            x = builder.fadd(lo, hi)
        return builder.extract_element(x, _c32(0))

    return types.float32(v), codegen


# --- register tiles: tuples of vectors -------------------------------------------------
#
# A kernel keeps a tile of R rows x TP tokens of accumulators in registers as a
# nested ``UniTuple(UniTuple(f32x16, TP), R)``.  The functions below map one
# operation over such tuples; R and TP come from the tuple types, so the loops
# below run at compile time and emit straight-line code.


def _tuple_of(ty, elem) -> int | None:
    """Length of ``ty`` if it is a UniTuple of ``elem`` (elem None: any), else None."""
    if isinstance(ty, types.UniTuple) and (elem is None or ty.dtype == elem):
        return ty.count
    return None


@intrinsic
def zeros_tile(typingctx, rtag, ttag):
    """Zeros as a ``UniTuple(UniTuple(f32x16, len(ttag)), len(rtag))`` (the tags are any tuples)."""
    R, TP = _tuple_of(rtag, None), _tuple_of(ttag, None)
    if R is None or TP is None:
        return None
    inner = types.UniTuple(f32x16, TP)
    outer = types.UniTuple(inner, R)

    def codegen(context, builder, sig, args):
        z = ir.Constant(VF, [0.0] * 16)
        return context.make_tuple(builder, outer, [context.make_tuple(builder, inner, [z] * TP)] * R)

    return outer(rtag, ttag), codegen


@intrinsic
def offsets(typingctx, base, step, n0, nmax, tag):
    """``(base + min(n0 + i, nmax) * step for i in range(len(tag)))`` as a UniTuple of intp.

    The flat offsets of a tile's rows (or tokens), clamped to the last valid one: a
    ragged tile repeats its last row, whose results are not stored.
    """
    n = _tuple_of(tag, None)
    if n is None:
        return None
    out = types.UniTuple(types.intp, n)

    def codegen(context, builder, sig, args):
        b, st, n0, nm = (_idx(context, builder, sig.args[i], args[i]) for i in range(4))
        vals = []
        for i in range(n):
            v = builder.add(n0, ir.Constant(n0.type, i))
            v = builder.select(builder.icmp_signed("<", v, nm), v, nm)
            vals.append(builder.add(b, builder.mul(v, st)))
        return context.make_tuple(builder, out, vals)

    return out(base, step, n0, nmax, tag), codegen


def _row_ptr(context, builder, aryty, ary, row, col, elem):
    """Pointer to ``ary[row, col]`` of a C-contiguous 2-D array (unchecked), cast to ``elem*``."""
    a = context.make_array(aryty)(context, builder, ary)
    ncols = cgutils.unpack_tuple(builder, a.shape, 2)[1]
    flat = builder.add(builder.mul(row, ncols), col)
    return builder.bitcast(builder.gep(a.data, [flat], inbounds=False), elem.as_pointer())


def _is2d(arr, dtypes):
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C" and arr.dtype in dtypes


@intrinsic
def store_tile(typingctx, arr, row0, accs):
    """``arr[row0 + r * TP + t, :16] = accs[r][t]``: spill a tile to a [*, 16] float32 scratch."""
    if not _is2d(arr, (types.float32,)) or not isinstance(accs, types.UniTuple):
        return None
    R = accs.count
    TP = _tuple_of(accs.dtype, f32x16)
    if TP is None:
        return None

    def codegen(context, builder, sig, args):
        base = _idx(context, builder, sig.args[1], args[1])
        zero = ir.Constant(base.type, 0)
        for r, row in enumerate(cgutils.unpack_tuple(builder, args[2], R)):
            for t, v in enumerate(cgutils.unpack_tuple(builder, row, TP)):
                i = builder.add(base, ir.Constant(base.type, r * TP + t))
                builder.store(v, _row_ptr(context, builder, sig.args[0], args[0], i, zero, VF), align=4)
        return context.get_dummy_value()

    return types.void(arr, row0, accs), codegen


@intrinsic
def load_tile(typingctx, arr, row0, rtag, ttag):
    """Inverse of `store_tile`: a tile of ``len(rtag) x len(ttag)`` vectors from the scratch."""
    R, TP = _tuple_of(rtag, None), _tuple_of(ttag, None)
    if R is None or TP is None or not _is2d(arr, (types.float32,)):
        return None
    inner = types.UniTuple(f32x16, TP)
    outer = types.UniTuple(inner, R)

    def codegen(context, builder, sig, args):
        base = _idx(context, builder, sig.args[1], args[1])
        zero = ir.Constant(base.type, 0)
        rows = []
        for r in range(R):
            vals = []
            for t in range(TP):
                i = builder.add(base, ir.Constant(base.type, r * TP + t))
                vals.append(builder.load(_row_ptr(context, builder, sig.args[0], args[0], i, zero, VF), align=4))
            rows.append(context.make_tuple(builder, inner, vals))
        return context.make_tuple(builder, outer, rows)

    return outer(arr, row0, rtag, ttag), codegen


# --- codegen helpers for the kernel modules' own micro-kernel intrinsics ---------------
#
# A kernel family's inner step (one chunk of codes for a register tile) is written
# as one intrinsic with these helpers, so the field loop and the tile are unrolled
# at compile time and nothing of it is left to the auto-vectoriser.

V16F = VF
V16I = VI
V16B = ir.VectorType(_I8, 16)


def ir_index(context, builder, ty, v):
    """A Numba integer value as an LLVM intp."""
    return _idx(context, builder, ty, v)


def ir_const(builder_or_value, v: int):
    """An intp constant of the same LLVM type as ``builder_or_value`` (an LLVM value)."""
    return ir.Constant(builder_or_value.type, v)


def ir_ptr(context, builder, aryty, ary, flat, elem: ir.Type):
    """``elem*`` to element ``flat`` of a C-contiguous array's data (any ndim; unchecked)."""
    return _ptr(context, builder, aryty, ary, flat, elem)


def ir_load(context, builder, aryty, ary, flat, elem: ir.Type, align: int = 1):
    """Load an ``elem`` (a vector type or scalar) at element ``flat`` of a C-contiguous array."""
    return builder.load(_ptr(context, builder, aryty, ary, flat, elem), align=align)


def ir_splat(builder, scalar):
    """A float / i32 scalar in all 16 lanes."""
    return _splat(builder, scalar, VF if isinstance(scalar.type, ir.FloatType) else VI)


def ir_fma(builder, a, b, c):
    return builder.call(_fn(builder, "llvm.fma.v16f32", VF, [VF, VF, VF]), [a, b, c])


def ir_permps(builder, table, idx):
    return builder.call(_fn(builder, "llvm.x86.avx512.permvar.sf.512", VF, [VF, VI]), [table, idx])


def ir_srl(builder, v, n: int):
    return v if n == 0 else builder.lshr(v, ir.Constant(VI, [n] * 16))


def ir_vconst(values) -> ir.Constant:
    """A constant f32x16."""
    return ir.Constant(VF, [float(v) for v in values])


def ir_unpack(builder, tup, n):
    return cgutils.unpack_tuple(builder, tup, n)


def tuple_len(ty, elem=None):
    return _tuple_of(ty, elem)


def is_c_array(ty, dtypes, ndim=None) -> bool:
    return isinstance(ty, types.Array) and ty.layout == "C" and ty.dtype in dtypes and (ndim is None or ty.ndim == ndim)


@intrinsic
def tile_sums(typingctx, accs, ttag):
    """Per (row, token) the sum of its NA partial accumulators' 16 lanes, as a flat UniTuple of float32.

    accs: ``UniTuple(UniTuple(f32x16, TP * NA), R)``, TP = len(ttag); element
    ``r * TP + t`` of the result is row r, token t.
    """
    if not isinstance(accs, types.UniTuple):
        return None
    R = accs.count
    L = _tuple_of(accs.dtype, f32x16)
    TP = _tuple_of(ttag, None)
    if L is None or TP is None or L % TP:
        return None
    NA = L // TP
    out = types.UniTuple(types.float32, R * TP)

    def codegen(context, builder, sig, args):
        vals = []
        for row in cgutils.unpack_tuple(builder, args[0], R):
            acc = cgutils.unpack_tuple(builder, row, L)
            for t in range(TP):
                v = acc[t * NA]
                for a in range(1, NA):
                    v = builder.fadd(v, acc[t * NA + a])
                width = 16
                while width > 1:
                    width //= 2
                    hi = builder.shuffle_vector(
                        v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width)))
                    )
                    lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
                    v = builder.fadd(lo, hi)
                vals.append(builder.extract_element(v, _c32(0)))
        return context.make_tuple(builder, out, vals)

    return out(accs, ttag), codegen


def ir_barrier(builder) -> None:
    """A compiler-only memory barrier (empty inline asm clobbering memory).

    LLVM may not move loads across it, so a micro-kernel that emits one after each
    row keeps only that row's table and words alive: without it the scheduler
    hoists every row's loads to the top of the step and spills the tile.
    """
    builder.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}", [], side_effect=True)
