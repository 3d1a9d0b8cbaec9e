"""Decode kernels for 4- and 8-bit codes in the blocked kind of the ``numba_cpu`` layout (`cpu_layouts`).

What is computed, per output row n and token t (spec stages 4-5)::

    y[t, n] = sum_k (s[n, g(k)] * (u[n, k] - c[n, g(k)]) + m0[n, g(k)]) * x~[t, k] + (x A^T)[t] . B[n] + bias[n]

with ``x~ = x / D`` zero-padded to whole chunks.  Each code is dequantized
*including* its offset, centred on its group's zero code c (``u - c`` exact,
``m0 = s c + m``: `PackedWeight.centred`, docs/numerics.md rule Q1), so the
per-group sums of x~ are never needed and nothing cancels; the sum is accumulated
in fp32.  Dequantizing before the dot also meets rule Q2 without a special path:
no partial sum of x~ times codes is formed, and x~ is never rescaled.

Why it is fast (4-bit): per row and group a 16-entry table ``s * (i - c) + m0`` is
made with one subtraction and one FMA (``(iota - c) * s + m0``); then for each of the 8 fields of a row-chunk (the
16 words' nibble f = 16 consecutive codes, see the layout) one shift, one
``vpermps`` (a table lookup that reads only the low 4 bits of each lane, so no
mask) and one FMA against 16 activations.  No gathers, no int->float converts, no
horizontal work in the loop.  8-bit: per field a ``vpmovzxbd`` load, a convert,
the centring subtraction, one FMA to dequantize and one FMA to accumulate.

Grid / tiles: a parallel task owns ``BPT`` consecutive row blocks (of ``BR``
rows); `gemv` walks all of K per register tile, `gemv_ktiled` walks K in tiles
(config ``K_TILE``), and both have a serial form for small layers.  Within a
task, per row block and per chunk of tokens (``TP`` at a time) a register tile of ``R`` rows x ``TP`` tokens x ``NA`` partial sums walks every
chunk of K; ``R`` divides ``BR`` (half blocks for wide token tiles).  For one
token the 8 fields' activations stay in registers and are shared by the R rows;
NA = 2 partial sums per row halve the FMA dependency chain.  The weight is read
in memory order, so one software prefetch per 64-byte line ``PF`` bytes ahead
keeps the stream in flight (x86 prefetches never fault, so they are not clamped).

Bytes moved per output row: ``K * b / 8`` of codes + ``8 * G`` of scales/offsets
(read once per row block, whatever T), plus x (L1/L2 resident).

Buffer assumptions (checked once on the host, `check_buffers`, before any launch):
codes ``[NB, C, BR, CB]`` uint8 and sm ``[NB, GQ, 3, BR]`` fp32 (s, c, m0) C-contiguous with
the shapes of `cpu_layouts.blocked_shapes`; x fp32 ``[T, K]``; y fp32 ``[T, N]``;
A ``[r, K]`` / B ``[N, r]`` (r may be 0), bias ``[N]`` or ``[0]``.  The loads in the
micro-kernels are unchecked; every index they use is below those shapes.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ..cpu_layouts import BLOCK_ROWS, CHUNK, blocked_shapes
from . import simd as S
from ._common import REASSOC, REASSOC_INLINE
from .prologue import lowrank_column, scale_pad

# --- micro-kernels: one chunk of 128 codes for an R x TP tile -------------------------


# Which micro-kernel a call runs, told (like the tile sizes) by the length of a tuple argument, a
# compile-time constant.  Kernels take it as an argument rather than being made per kind in a closure:
# Numba's cache key pickles closure cells, and a captured dispatcher or intrinsic pickles with a
# per-process UUID, so such kernels were recompiled in every process (numba issue #6264).
LOOKUP4, PORTABLE4, WIDE8 = (0,), (0, 0), (0, 0, 0)
_KINDS = {len(LOOKUP4): (4, True), len(PORTABLE4): (4, False), len(WIDE8): (8, True)}


def kind_tag(bits: int, portable: bool) -> tuple:
    """The ``ktag`` argument of the kernels (`gemv`, `gemv_ktiled` and their serial forms) for ``bits``-bit codes."""
    return WIDE8 if bits == 8 else PORTABLE4 if portable else LOOKUP4


@numba.njit(**REASSOC_INLINE)
def _chunk_bytes(ktag):  # pragma: no cover - inlined into the kernels, a constant there
    """Bytes of codes per row and chunk of 128 codes for micro-kernel ``ktag``."""
    return CHUNK * (8 if len(ktag) == len(WIDE8) else 4) // 8


@intrinsic
def _step(typingctx, ktag, accs, codes, cbase, sm, sbase, mstride, gstride, xp, xoffs, gtag):
    """One chunk of 128 codes for an R x TP tile, by the micro-kernel ``ktag`` names (`_step_typer`)."""
    kind = S.tuple_len(ktag)
    if kind not in _KINDS:
        return None
    typed = _step_typer(*_KINDS[kind])(typingctx, accs, codes, cbase, sm, sbase, mstride, gstride, xp, xoffs, gtag)
    if typed is None:
        return None
    inner, codegen = typed

    def codegen_kind(context, builder, sig, args):
        return codegen(context, builder, inner, args[1:])

    return inner.return_type(ktag, *inner.args), codegen_kind


def _step_typer(bits: int, lookup: bool = True):
    """The micro-kernel for ``bits``; ``lookup=False`` (4-bit only): the portable form, no x86 intrinsic.

    The portable 4-bit step dequantizes each field with ``(w >> 4 f) & 15``, a
    convert, ``- c`` and an FMA ``s * (u - c) + m0`` (target-independent LLVM vector IR: lowered to
    two AVX2 ymm ops, or four NEON q ops, per 16 lanes) instead of the ``vpermps``
    table lookup.
    """
    CB = CHUNK * bits // 8

    def typer(typingctx, accs, codes, cbase, sm, sbase, mstride, gstride, xp, xoffs, gtag):
        """accs: UniTuple(UniTuple(f32x16, TP * NA), R); xoffs: UniTuple(intp, TP) flat x offsets."""
        if not isinstance(accs, types.UniTuple):
            return None
        R = accs.count
        L = S.tuple_len(accs.dtype, S.f32x16)
        TP = S.tuple_len(xoffs, types.intp)
        GPC = S.tuple_len(gtag)
        if L is None or TP is None or GPC is None or L % TP or 8 % GPC:
            return None
        NA = L // TP
        if 8 % NA or not S.is_c_array(codes, (types.uint8,)) or not S.is_c_array(sm, (types.float32,)):
            return None
        if not S.is_c_array(xp, (types.float32,), 2):
            return None
        FPG = 8 // GPC  # fields per group

        def codegen(context, builder, sig, args):
            a_accs, a_codes, _, a_sm, _, _, _, a_xp, a_xo, _ = args
            ix = lambda i: S.ir_index(context, builder, sig.args[i], args[i])  # noqa: E731
            cb, sb, ms, gs = ix(2), ix(4), ix(5), ix(6)
            c = lambda v: S.ir_const(cb, v)  # noqa: E731
            xo = S.ir_unpack(builder, a_xo, TP)
            xs = [[S.ir_load(context, builder, sig.args[7], a_xp, builder.add(xo[t], c(16 * f)), S.V16F, 4)
                   for f in range(8)] for t in range(TP)]  # fmt: skip
            io = S.ir_vconst(range(16))
            rows = [S.ir_unpack(builder, r, L) for r in S.ir_unpack(builder, a_accs, R)]

            def params(r):  # per group of the chunk: (s, c, m0) splats of row r
                out = []
                for q in range(GPC):
                    si = builder.add(builder.add(sb, builder.mul(gs, c(q))), c(r))
                    vals = [S.ir_load(context, builder, sig.args[3], a_sm, builder.add(si, builder.mul(ms, c(i))),
                                      ir.FloatType(), 4) for i in range(3)]  # fmt: skip
                    out.append(tuple(S.ir_splat(builder, v) for v in vals))
                return out

            cache: dict = {}  # per row, made on first use so that each row's loads follow the previous barrier

            def row_state(r):
                if r not in cache:
                    if bits == 4:
                        w = S.ir_load(context, builder, sig.args[1], a_codes, builder.add(cb, c(r * CB)), S.V16I)
                        if lookup:  # table s * (i - c) + m0: i - c exact
                            cache[r] = ([S.ir_fma(builder, builder.fsub(io, cz), s, m) for s, cz, m in params(r)], w)
                        else:
                            cache[r] = (params(r), w)
                    else:
                        cache[r] = params(r)
                return cache[r]

            def value(r, f):
                if bits == 4 and lookup:
                    tabs, w = row_state(r)
                    return S.ir_permps(builder, tabs[f // FPG], S.ir_srl(builder, w, 4 * f))
                if bits == 4:
                    sm_r, w = row_state(r)
                    s, cz, m = sm_r[f // FPG]
                    q = builder.and_(S.ir_srl(builder, w, 4 * f), ir.Constant(S.V16I, [15] * 16))
                    return S.ir_fma(builder, builder.fsub(builder.sitofp(q, S.V16F), cz), s, m)
                at = builder.add(cb, c(r * CB + 16 * f))
                q8 = S.ir_load(context, builder, sig.args[1], a_codes, at, S.V16B)
                s, cz, m = row_state(r)[f // FPG]
                return S.ir_fma(builder, builder.fsub(builder.sitofp(builder.zext(q8, S.V16I), S.V16F), cz), s, m)

            def accumulate(r, f):
                v = value(r, f)
                for t in range(TP):
                    a = t * NA + f % NA
                    rows[r][a] = S.ir_fma(builder, v, xs[t][f], rows[r][a])

            if TP == 1:  # rows outer: one row's table and words live at a time, x in registers
                for r in range(R):
                    for f in range(8):
                        accumulate(r, f)
                    S.ir_barrier(builder)
            else:  # fields outer: each x vector is used by all R rows while it is loaded
                for f in range(8):
                    for r in range(R):
                        accumulate(r, f)
            inner = accs.dtype
            return context.make_tuple(builder, accs, [context.make_tuple(builder, inner, rw) for rw in rows])

        return accs(accs, codes, cbase, sm, sbase, mstride, gstride, xp, xoffs, gtag), codegen

    return typer


@numba.njit(**REASSOC_INLINE)
def lowrank_bias(u, Bm, bias, y, n0, n1):  # pragma: no cover - compiled
    """``y[:, n0:n1] += u B[n0:n1]^T + bias[n0:n1]`` (stage 5; B ``[N, r]``, bias ``[N]`` or ``[0]``).

    Rows in order, so B streams once in memory order (a transposed B read row-segment
    by row-segment was 11 % slower at 11008 x 4096); each row's rank-r dot product is
    one vector FMA and a reduction (views indexed from 0, so the loops vectorise).
    """
    m = n1 - n0
    r = Bm.shape[1]
    for t in range(y.shape[0]):
        yt = y[t, n0:n1]
        ut = u[t]
        if bias.shape[0]:
            bs = bias[n0:n1]
            for i in range(m):
                yt[i] += bs[i]
        if r:
            for i in range(m):
                bn = Bm[n0 + i]
                acc = np.float32(0.0)
                for k in range(r):
                    acc += ut[k] * bn[k]
                yt[i] += acc


# --- host-callable kernels ------------------------------------------------------------


@numba.njit(**REASSOC_INLINE)
def _tile(ktag, codes, sm, xp, T, y, rb, h, t0, c0, c1, C, GQ, BR, g, rtag, ttag, atag, gtag, pfb, pfs, scratch,
          srow):  # pragma: no cover  # fmt: skip
    """Rows ``rb * BR + h ... + R``, tokens ``t0 ... t0 + TP``, chunks ``c0 <= c < c1`` (module doc).

    The partial sums start at zero when ``c0 == 0`` and are otherwise loaded from
    ``scratch`` rows ``srow ...``; unless ``c1 == C`` they are stored back there,
    else reduced and written to y (the low-rank and bias terms follow per task).
    """
    CB = _chunk_bytes(ktag)
    lines = CB // 64  # cache lines per row-chunk
    R = len(rtag)
    TP = len(ttag)
    N = y.shape[1]
    Kq = xp.shape[1]
    GPC = len(gtag)
    CPG = max(1, g // CHUNK)  # chunks per group (g >= 128)
    accs = S.zeros_tile(rtag, atag) if c0 == 0 else S.load_tile(scratch, srow, rtag, atag)
    # first group of chunk c: groups advance by GPC per chunk, or 1 per CPG chunks (no division in the loop)
    q0 = c0 * GPC if GPC > 1 else c0 // CPG
    cq = 0 if GPC > 1 else c0 % CPG
    for c in range(c0, c1):
        sbase = (rb * GQ + q0) * 3 * BR + h
        cbase = ((rb * C + c) * BR + h) * CB
        if t0 == 0:
            for ln in range(R * lines):
                S.prefetch(codes, cbase + pfb + 64 * ln)
            S.prefetch(sm, sbase + pfs)
        xo = S.offsets(c * CHUNK, Kq, t0, T - 1, ttag)
        accs = _step(ktag, accs, codes, cbase, sm, sbase, BR, 3 * BR, xp, xo, gtag)
        cq += 1
        if cq == CPG:
            cq = 0
            q0 += GPC
    if c1 < C:
        S.store_tile(scratch, srow, accs)
        return
    sums = S.tile_sums(accs, ttag)
    for r in range(R):
        n = rb * BR + h + r
        if n >= N:
            break
        for t in range(TP):
            tt = t0 + t
            if tt >= T:
                break
            y[tt, n] = sums[r * TP + t]


@numba.njit(**REASSOC_INLINE)
def _prologue(x, D, has_D, A, codes, sm, ktag, pfb):  # pragma: no cover - inlined into the kernels
    """The per-call set-up of the blocked kernels: ``(T, C, GQ, x~, u, pfs)``.

    x~ = x / D zero-padded to the layout's ``C`` chunks (fp32 ``[T, C * 128]``), u = x A^T
    (``[T, r]``; inlined, so in a parallel kernel the r columns of A are split over the
    threads, a parallel region of its own: A is read once), and ``pfs``, the prefetch
    distance ``pfb`` (bytes of codes) in the scales/offsets stream (floats).
    """
    T = x.shape[0]
    C = codes.shape[1]
    GQ = sm.shape[1]
    xp = np.empty((T, C * CHUNK), np.float32)
    scale_pad(x, D, has_D, xp)
    u = np.zeros((T, A.shape[0]), np.float32)
    for j in prange(A.shape[0]):
        lowrank_column(x, A, u, j)
    return T, C, GQ, xp, u, 3 * pfb * GQ // (C * _chunk_bytes(ktag))


def _make(parallel: bool):
    """``(gemv, gemv_ktiled)`` on a thread team (``parallel``) or on the calling thread.

    Two kernels rather than one with a run-time branch: each inlines the register tile
    (`_tile`, the unrolled micro-kernel) once, so a specialization compiles in about two
    thirds of the time, and the untiled walk keeps its constant chunk range (``0 .. C``).
    """
    loop = prange if parallel else range  # the only closure cell: range / prange pickle by name

    @numba.njit(parallel=parallel, **REASSOC)
    def gemv(x, D, has_D, A, Bm, bias, ktag, codes, sm, g, rtag, ttag, atag, gtag, bpt, pfb, y):  # pragma: no cover
        """y fp32 ``[T, N]`` for x fp32 ``[T, K]`` (prologue ``x / D`` and ``x A^T``, epilogue ``u B^T + bias``).

        ``ktag``: the micro-kernel (`kind_tag`: 4-bit vpermps, 4-bit portable, or 8-bit).
        Each register tile walks all of K in memory order (one sequential stream per
        row tile: best for one token, and the default for several).
        """
        NB, _, BR, _ = codes.shape
        T, C, GQ, xp, u, pfs = _prologue(x, D, has_D, A, codes, sm, ktag, pfb)
        R = len(rtag)
        TP = len(ttag)
        ntask = (NB + bpt - 1) // bpt
        for task in loop(ntask):
            rb0 = task * bpt
            rb1 = min(NB, rb0 + bpt)
            dummy = np.empty((0, 16), np.float32)
            for rb in range(rb0, rb1):
                for h in range(0, BR, R):
                    for t0 in range(0, T, TP):
                        _tile(ktag, codes, sm, xp, T, y, rb, h, t0, 0, C, C, GQ, BR, g, rtag, ttag, atag, gtag, pfb, pfs,
                              dummy, 0)  # fmt: skip
            lowrank_bias(u, Bm, bias, y, rb0 * BR, min(y.shape[1], rb1 * BR))

    @numba.njit(parallel=parallel, **REASSOC)
    def gemv_ktiled(x, D, has_D, A, Bm, bias, ktag, codes, sm, g, rtag, ttag, atag, gtag, bpt, kt, pfb,
                    y):  # pragma: no cover  # fmt: skip
        """`gemv` walking K in tiles of ``kt`` chunks (``0 < kt < C``; for several tokens).

        A task walks K tile by tile and, per tile, all its row blocks, so the tile's x
        (``TP * kt * 128`` floats) stays in L1 while every row of the task uses it;
        partial sums wait in a small scratch between tiles.
        """
        NB, _, BR, _ = codes.shape
        T, C, GQ, xp, u, pfs = _prologue(x, D, has_D, A, codes, sm, ktag, pfb)
        R = len(rtag)
        TP = len(ttag)
        L = len(atag)
        ntask = (NB + bpt - 1) // bpt
        halves = BR // R
        for task in loop(ntask):
            rb0 = task * bpt
            rb1 = min(NB, rb0 + bpt)
            scratch = np.empty(((rb1 - rb0) * halves * R * L, 16), np.float32)
            for t0 in range(0, T, TP):
                for c0 in range(0, C, kt):
                    c1 = min(C, c0 + kt)
                    for rb in range(rb0, rb1):
                        for hi in range(halves):
                            srow = ((rb - rb0) * halves + hi) * R * L
                            _tile(ktag, codes, sm, xp, T, y, rb, hi * R, t0, c0, c1, C, GQ, BR, g, rtag, ttag, atag, gtag,
                                  pfb, pfs, scratch, srow)  # fmt: skip
            lowrank_bias(u, Bm, bias, y, rb0 * BR, min(y.shape[1], rb1 * BR))

    return gemv, gemv_ktiled


gemv, gemv_ktiled = _make(parallel=True)
gemv_serial, gemv_ktiled_serial = _make(parallel=False)


def check_buffers(codes, sm, x, A, Bm, bias, y, N: int, K: int, bits: int, g: int, R: int) -> None:
    """The one place the blocked kernels' buffer assumptions are asserted (raises RuntimeError).

    Called by the host code before a launch (once per prepared layer for the
    weight, per call for x and y, which it allocates itself).
    """
    want = blocked_shapes(N, K, bits, g)
    ok = (
        codes.dtype == np.uint8 and sm.dtype == np.float32 and codes.flags.c_contiguous and sm.flags.c_contiguous
        and codes.shape == want["qweight"] and sm.shape == want["scales"] and BLOCK_ROWS % R == 0
        and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == K and x.flags.c_contiguous
        and y.dtype == np.float32 and y.shape == (x.shape[0], N) and y.flags.c_contiguous
        and A.dtype == np.float32 and A.ndim == 2 and A.shape[1] == K and A.flags.c_contiguous
        and Bm.dtype == np.float32 and Bm.shape == (N, A.shape[0]) and Bm.flags.c_contiguous
        and bias.dtype == np.float32 and bias.shape in ((0,), (N,))
        and (g % CHUNK == 0 or CHUNK % g == 0) and g % 16 == 0
    )  # fmt: skip
    if not ok:
        raise RuntimeError(f"ttqkern numba: blocked {bits}-bit kernel buffers do not match N={N}, K={K}, g={g}")
