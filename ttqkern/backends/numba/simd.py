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

Tuple forms (``*_n`` functions) act on ``UniTuple(f32x16, n)`` values element by
element, with ``n`` known at compile time from the tuple's type: a kernel written
once over tuples is compiled into straight-line code for each row / token count
it is called with (a register tile), without Python code generation.

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


@intrinsic
def ibcast(typingctx, x):
    """``x`` (an integer, truncated to 32 bits) in all 16 lanes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int32)
        return _splat(builder, v, VI)

    return i32x16(x), codegen


@intrinsic
def iota(typingctx):
    """f32x16 ``[0, 1, ..., 15]``."""

    def codegen(context, builder, sig, args):
        return ir.Constant(VF, [float(i) for i in range(16)])

    return f32x16(), codegen


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
def load_w(typingctx, arr, idx):
    """16 32-bit words starting at element ``idx`` of a uint8 / uint32 / int32 array.

    For a uint8 array ``idx`` is a byte offset (64 bytes are read); for 32-bit arrays
    an element offset.  Unaligned, unchecked.
    """
    if not _check_array(arr, (types.uint8, types.uint32, types.int32)):
        return None

    def codegen(context, builder, sig, args):
        i = _idx(context, builder, sig.args[1], args[1])
        return builder.load(_ptr(context, builder, sig.args[0], args[0], i, VI), align=1)

    return i32x16(arr, idx), codegen


@intrinsic
def load_u8_zext(typingctx, arr, idx):
    """16 bytes at byte ``idx`` of a uint8 array, zero-extended to i32x16 (``vpmovzxbd``)."""
    if not _check_array(arr, (types.uint8,)):
        return None

    def codegen(context, builder, sig, args):
        i = _idx(context, builder, sig.args[1], args[1])
        v = builder.load(_ptr(context, builder, sig.args[0], args[0], i, ir.VectorType(_I8, 16)), align=1)
        return builder.zext(v, VI)

    return i32x16(arr, idx), codegen


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
fsub = intrinsic(_binop("fsub"))
iand = intrinsic(_binop("and_"))
ior = intrinsic(_binop("or_"))


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` per lane, one rounding (``vfmadd``)."""
    if not (a == b == c == f32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.call(_fn(builder, "llvm.fma.v16f32", VF, [VF, VF, VF]), args)

    return f32x16(a, b, c), codegen


@intrinsic
def srl(typingctx, v, n):
    """Logical right shift of every lane by ``n`` bits (``vpsrld``; ``n`` in [0, 31])."""
    if v != i32x16 or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        s = _splat(builder, context.cast(builder, args[1], sig.args[1], types.int32), VI)
        return builder.lshr(args[0], s)

    return i32x16(v, n), codegen


@intrinsic
def cvt(typingctx, v):
    """i32x16 -> f32x16 (``vcvtdq2ps``; exact for |v| < 2^24)."""
    if v != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], VF)

    return f32x16(v), codegen


@intrinsic
def permps(typingctx, table, idx):
    """``table[idx & 15]`` per lane (``vpermps``: reads the low 4 bits of each index only)."""
    if table != f32x16 or idx != i32x16:
        return None

    def codegen(context, builder, sig, args):
        fn = _fn(builder, "llvm.x86.avx512.permvar.sf.512", VF, [VF, VI])
        return builder.call(fn, [args[0], args[1]])

    return f32x16(table, idx), codegen


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


@intrinsic
def lane(typingctx, v, i):
    """Lane ``i`` of an f32x16 as a float32."""
    if v != f32x16 or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.int32))

    return types.float32(v, i), codegen


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
def zeros_n(typingctx, tag):
    """Zeros as a ``UniTuple(f32x16, len(tag))``."""
    n = _tuple_of(tag, None)
    if n is None:
        return None
    out = types.UniTuple(f32x16, n)

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, out, [ir.Constant(VF, [0.0] * 16)] * n)

    return out(tag), codegen


@intrinsic
def row_ids(typingctx, n0, nmax, tag):
    """``(min(n0 + r, nmax) for r in range(len(tag)))`` as a UniTuple of intp."""
    n = _tuple_of(tag, None)
    if n is None or not isinstance(n0, types.Integer) or not isinstance(nmax, types.Integer):
        return None
    out = types.UniTuple(types.intp, n)

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.intp)
        m = context.cast(builder, args[1], sig.args[1], types.intp)
        vals = []
        for r in range(n):
            v = builder.add(a, ir.Constant(a.type, r))
            vals.append(builder.select(builder.icmp_signed("<", v, m), v, m))
        return context.make_tuple(builder, out, vals)

    return out(n0, nmax, tag), codegen


def _row_ptr(context, builder, aryty, ary, row, col, elem):
    """Pointer to ``ary[row, col]`` of a C-contiguous 2-D array (unchecked), cast to ``elem*``."""
    a = context.make_array(aryty)(context, builder, ary)
    ncols = cgutils.unpack_tuple(builder, a.shape, 2)[1]
    flat = builder.add(builder.mul(row, ncols), col)
    return builder.bitcast(builder.gep(a.data, [flat], inbounds=False), elem.as_pointer())


def _is2d(arr, dtypes):
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C" and arr.dtype in dtypes


@intrinsic
def bcast_rows(typingctx, arr, rows, col):
    """``(fbcast(arr[rows[r], col]) for r)``: arr a C-contiguous 2-D float32 array."""
    n = _tuple_of(rows, types.intp)
    if n is None or not _is2d(arr, (types.float32,)):
        return None
    out = types.UniTuple(f32x16, n)

    def codegen(context, builder, sig, args):
        c = _idx(context, builder, sig.args[2], args[2])
        rs = cgutils.unpack_tuple(builder, args[1], n)
        vals = [_splat(builder, builder.load(_row_ptr(context, builder, sig.args[0], args[0], r, c, _F32)), VF)
                for r in rs]  # fmt: skip
        return context.make_tuple(builder, out, vals)

    return out(arr, rows, col), codegen


@intrinsic
def words_rows(typingctx, arr, rows, col):
    """``(load_w(arr[rows[r]], col) for r)``: 16 words at column ``col`` of each row.

    arr: C-contiguous 2-D uint8 (``col`` a byte offset) or uint32/int32 array.
    """
    n = _tuple_of(rows, types.intp)
    if n is None or not _is2d(arr, (types.uint8, types.uint32, types.int32)):
        return None
    out = types.UniTuple(i32x16, n)

    def codegen(context, builder, sig, args):
        c = _idx(context, builder, sig.args[2], args[2])
        rs = cgutils.unpack_tuple(builder, args[1], n)
        vals = [builder.load(_row_ptr(context, builder, sig.args[0], args[0], r, c, VI), align=1) for r in rs]
        return context.make_tuple(builder, out, vals)

    return out(arr, rows, col), codegen


@intrinsic
def prefetch_rows(typingctx, arr, rows, drow, col):
    """Prefetch ``arr[rows[r] + drow, col]`` for every r (addresses may be past the end)."""
    n = _tuple_of(rows, types.intp)
    if n is None or not _is2d(arr, (types.uint8, types.uint32, types.int32, types.float32)):
        return None

    def codegen(context, builder, sig, args):
        d = _idx(context, builder, sig.args[2], args[2])
        c = _idx(context, builder, sig.args[3], args[3])
        fn = _fn(builder, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
        for r in cgutils.unpack_tuple(builder, args[1], n):
            p = _row_ptr(context, builder, sig.args[0], args[0], builder.add(r, d), c, _I8)
            builder.call(fn, [p, _c32(0), _c32(3), _c32(1)])
        return context.get_dummy_value()

    return types.void(arr, rows, drow, col), codegen


@intrinsic
def tables_rows(typingctx, s, m):
    """``(fma(iota, s[r], m[r]) for r)``: per row the 16-entry table ``s * i + m``."""
    n = _tuple_of(s, f32x16)
    if n is None or s != m:
        return None

    def codegen(context, builder, sig, args):
        fn = _fn(builder, "llvm.fma.v16f32", VF, [VF, VF, VF])
        io = ir.Constant(VF, [float(i) for i in range(16)])
        ss = cgutils.unpack_tuple(builder, args[0], n)
        ms = cgutils.unpack_tuple(builder, args[1], n)
        return context.make_tuple(builder, s, [builder.call(fn, [io, a, b]) for a, b in zip(ss, ms, strict=True)])

    return s(s, m), codegen


@intrinsic
def lookup_rows(typingctx, tabs, words, shift):
    """``(permps(tabs[r], srl(words[r], shift)) for r)``: one 4-bit field of every row's words."""
    n = _tuple_of(tabs, f32x16)
    if n is None or _tuple_of(words, i32x16) != n or not isinstance(shift, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        fn = _fn(builder, "llvm.x86.avx512.permvar.sf.512", VF, [VF, VI])
        sh = _splat(builder, context.cast(builder, args[2], sig.args[2], types.int32), VI)
        ts = cgutils.unpack_tuple(builder, args[0], n)
        ws = cgutils.unpack_tuple(builder, args[1], n)
        vals = [builder.call(fn, [t, builder.lshr(w, sh)]) for t, w in zip(ts, ws, strict=True)]
        return context.make_tuple(builder, tabs, vals)

    return tabs(tabs, words, shift), codegen


@intrinsic
def load_cols(typingctx, arr, trows, col):
    """``(load_f(arr[t], col) for t in range(len(trows)))`` from a C-contiguous 2-D float32 array.

    trows: a tuple whose length is the number of token rows read (rows 0, 1, ...,
    offset by ``trows[0]``: pass e.g. ``(t0, t0 + 1, t0 + 2, t0 + 3)``).
    """
    n = _tuple_of(trows, types.intp)
    if n is None or not _is2d(arr, (types.float32,)):
        return None
    out = types.UniTuple(f32x16, n)

    def codegen(context, builder, sig, args):
        c = _idx(context, builder, sig.args[2], args[2])
        rs = cgutils.unpack_tuple(builder, args[1], n)
        vals = [builder.load(_row_ptr(context, builder, sig.args[0], args[0], r, c, VF), align=4) for r in rs]
        return context.make_tuple(builder, out, vals)

    return out(arr, trows, col), codegen


@intrinsic
def outer_fma(typingctx, accs, ws, xs):
    """``accs[r][t] += ws[r] * xs[t]`` for the whole R x TP tile."""
    R, TP = _tuple_of(ws, f32x16), _tuple_of(xs, f32x16)
    if R is None or TP is None or accs != types.UniTuple(types.UniTuple(f32x16, TP), R):
        return None

    def codegen(context, builder, sig, args):
        fn = _fn(builder, "llvm.fma.v16f32", VF, [VF, VF, VF])
        inner = types.UniTuple(f32x16, TP)
        rows = cgutils.unpack_tuple(builder, args[0], R)
        wv = cgutils.unpack_tuple(builder, args[1], R)
        xv = cgutils.unpack_tuple(builder, args[2], TP)
        out = []
        for r in range(R):
            acc = cgutils.unpack_tuple(builder, rows[r], TP)
            out.append(
                context.make_tuple(builder, inner, [builder.call(fn, [wv[r], xv[t], acc[t]]) for t in range(TP)])
            )
        return context.make_tuple(builder, accs, out)

    return accs(accs, ws, xs), codegen


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


def ir_prefetch(context, builder, aryty, ary, flat) -> None:
    """``prefetcht0`` at element ``flat`` (any address: never faults)."""
    p = _ptr(context, builder, aryty, ary, flat, _I8)
    fn = _fn(builder, "llvm.prefetch.p0", ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32])
    builder.call(fn, [p, _c32(0), _c32(3), _c32(1)])


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


def tile_type(R: int, L: int):
    return types.UniTuple(types.UniTuple(f32x16, L), R)


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
