"""AVX-512 decode kernels that look activations up by code (the lut kind of ``numba_cpu``: bits 2, 3, 4).

What is computed, per output row n and token t (spec stage 4, then stage 5)::

    y[t, n] = sum_j s[n, j] * sum_{k in j} x~[t, k] (u[n, k] - c) + (x A^T)[t] . B[n] + bias[n]

for symmetric weights (the layout's lut kind): c = 2^(b-1) for every row and
group, m0 = 0 (docs/numerics.md rule Q1).  The centre is folded into the tables
below, which every row shares -- which is why asymmetric weights, whose zero code
differs per row, do not use these kernels.

Why it is fast: vector lanes are 16 *rows*, not 16 positions of K.  A 32-bit word
of a row holds 8 four-bit fields; for 2-bit codes a field is a *pair* of codes
(k, k + 1), for the 1-bit ``hi`` plane of 3-bit codes a quad of bits, for 4-bit
codes one code.  For each field position the prologue builds, per token, the 16
possible partial dot products of that field with x~ (T-MAC style)::

    2-bit pair:  T[i] = x~[k] * ((i & 3) - c) + x~[k + 1] * ((i >> 2) - c)
    1-bit quad:  T[i] = 4 * sum_b (bit_b(i) - c) * x~[k + b]        (the hi plane's weight 4)
    4-bit:       T[i] = x~[k] * (i - c)

with each plane's part of the centre (3-bit: ``4 = 0 + 4 * 1``: lo plane 0, hi 1);
`basis` gives the multipliers.

and the main loop does, per field and 16 rows, one shift, one ``vpermps`` of that
table (it reads only the low 4 bits of each lane, so no mask) and one add: two
codes per lane-operation for 2-bit codes instead of one.  Per group the sum is
scaled once (``y += s * acc + m0 * X~``, m0 = 0 here), with s, m0, X~ as 16-row vectors and a
broadcast: no horizontal reductions anywhere, rows come out in lanes.

Grid / tiles: a parallel task owns ``BPT`` consecutive 16-row blocks.  Loop order
in a task: group j -> token chunk (``TP`` tokens) -> tile of ``RB`` row blocks ->
the group's words, so the tables of group j (a few KB per token) stay in L1
while every row block of the task uses them.  The register tile is RB x TP x NA
partial sums (NA > 1 splits the add chain); per-row-block outputs of a task live
in a small scratch between groups.  One software prefetch per 64-byte line of
each row block's stream, ``PFJ`` groups ahead.

Bytes moved per output row: ``K * b / 8`` of codes + ``8 * G`` of scales/offsets;
tables: ``T * Kp * 4 * 16 / (codes per field)`` bytes, built once per call and
shared by all rows (L2-resident for the shapes here).

The sums ``x~ (u - c)`` are formed before the scale, so a call whose x~ is outside
``[SAFE_MIN, SAFE_MAX]`` returns False without computing (`prologue.extreme`); the
host then takes the dequantize + BLAS path (rule Q2).

Buffer assumptions (checked on the host by `check_buffers`): each plane int32
``[NB, Kp * b / 32, 16]`` and sm fp32 ``[NB, G, 2, 16]`` C-contiguous
(`cpu_layouts.lut_arrays`), x fp32 ``[T, K]``, y fp32 ``[T, N]``, A ``[r, K]``,
B ``[N, r]``, bias ``[N]`` or ``[0]``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ..cpu_layouts import LUT_ROWS
from . import simd as S
from ._common import REASSOC, REASSOC_INLINE
from .gemv_blocked import lowrank_bias
from .prologue import extreme, group_sums, lowrank_column, scale_pad

KIND_PAIR2, KIND_QUAD1, KIND_SINGLE4 = 0, 1, 2  # what one 4-bit field of a plane covers


def basis(kind: int, centre: int) -> np.ndarray:
    """fp32 ``[codes per field, 16]``: ``T[i] = sum_b x~[k + b] * basis[b, i]`` for one field (module doc)."""
    i = np.arange(16)
    if kind == KIND_PAIR2:
        rows = [(i & 3) - centre, (i >> 2) - centre]
    elif kind == KIND_QUAD1:
        rows = [4 * (((i >> b) & 1) - centre) for b in range(4)]  # x4: the hi plane's weight
    else:
        rows = [i - centre]
    return np.ascontiguousarray(np.stack(rows).astype(np.float32))


# --- prologue: x~, group sums, tables -------------------------------------------------


@numba.njit(**REASSOC_INLINE)
def _tables(xp, basis, out, p0, p1):  # pragma: no cover - compiled
    """out[t, 16 p : 16 p + 16] for fields p0 <= p < p1: the 16 partial dot products of field p (module doc)."""
    T = xp.shape[0]
    cpf = basis.shape[0]  # codes per field
    for t in range(T):
        for p in range(p0, p1):
            k = p * cpf
            v = S.fmul(S.fbcast(xp[t, k]), S.load_f(basis[0], 0))
            for b in range(1, cpf):
                v = S.fma(S.fbcast(xp[t, k + b]), S.load_f(basis[b], 0), v)
            S.store_f(out[t], p * 16, v)


# --- micro-kernels ----------------------------------------------------------------------


def _tile_dims(accs, per_token, per_block):
    """``(RB, L, TP, NA)`` of a register tile typed ``UniTuple(UniTuple(f32x16, TP * NA), RB)`` whose
    per-token and per-row-block offset tuples match it, or None (the intrinsic then does not type)."""
    if not isinstance(accs, types.UniTuple):
        return None
    RB = accs.count
    L = S.tuple_len(accs.dtype, S.f32x16)
    TP = S.tuple_len(per_token, types.intp)
    if L is None or TP is None or L % TP or S.tuple_len(per_block, types.intp) != RB:
        return None
    return RB, L, TP, L // TP


@intrinsic
def _lut_word(typingctx, accs, plane, wflat, tab, toffs):
    """One word column (8 fields) of RB row blocks for TP tokens: ``acc += vpermps(table, word >> 4 f)``.

    accs: UniTuple(UniTuple(f32x16, TP * NA), RB); wflat: UniTuple(intp, RB) flat
    int32 offsets of the RB words; toffs: UniTuple(intp, TP) flat offsets of field
    0's table per token in ``tab`` (fields follow at +16 floats).
    """
    dims = _tile_dims(accs, toffs, wflat)
    if dims is None:
        return None
    RB, L, TP, NA = dims
    if 8 % NA or not S.is_c_array(plane, (types.int32,)) or not S.is_c_array(tab, (types.float32,)):
        return None

    def codegen(context, builder, sig, args):
        a_accs, a_pl, a_wf, a_tab, a_to = args
        wf = S.ir_unpack(builder, a_wf, RB)
        to = S.ir_unpack(builder, a_to, TP)
        rows = [S.ir_unpack(builder, r, L) for r in S.ir_unpack(builder, a_accs, RB)]
        words = [S.ir_load(context, builder, sig.args[1], a_pl, w, S.V16I, 4) for w in wf]
        for f in range(8):
            idx = [S.ir_srl(builder, w, 4 * f) for w in words]
            for t in range(TP):
                at = builder.add(to[t], S.ir_const(to[t], 16 * f))
                table = S.ir_load(context, builder, sig.args[3], a_tab, at, S.V16F, 4)
                a = t * NA + f % NA
                for r in range(RB):
                    rows[r][a] = builder.fadd(rows[r][a], S.ir_permps(builder, table, idx[r]))
        inner = accs.dtype
        return context.make_tuple(builder, accs, [context.make_tuple(builder, inner, rw) for rw in rows])

    return accs(accs, plane, wflat, tab, toffs), codegen


@intrinsic
def _lut_apply(typingctx, accs, ys, ybase, sm, sflat, xg, xgoffs):
    """``y[rb][t] += s * sum(acc[rb][t]) + m * X~[t, j]`` for the tile; y kept in a [*, 16] scratch.

    ys: fp32 2-D scratch; row ``ybase + rb * TP + t`` holds y of (row block rb, token t).
    sflat: UniTuple(intp, RB) flat offset of the group's 16 scales (offsets follow at +16).
    xgoffs: UniTuple(intp, TP) flat offsets of X~[t, j] in ``xg``.
    """
    dims = _tile_dims(accs, xgoffs, sflat)
    if dims is None:
        return None
    RB, L, TP, NA = dims

    def codegen(context, builder, sig, args):
        a_accs, a_ys, a_yb, a_sm, a_sf, a_xg, a_xo = args
        yb = S.ir_index(context, builder, sig.args[2], a_yb)
        sf = S.ir_unpack(builder, a_sf, RB)
        xo = S.ir_unpack(builder, a_xo, TP)
        xgs = [S.ir_splat(builder, S.ir_load(context, builder, sig.args[5], a_xg, o, ir.FloatType(), 4)) for o in xo]
        for r, row in enumerate(S.ir_unpack(builder, a_accs, RB)):
            acc = S.ir_unpack(builder, row, L)
            s = S.ir_load(context, builder, sig.args[3], a_sm, sf[r], S.V16F, 4)
            m = S.ir_load(context, builder, sig.args[3], a_sm, builder.add(sf[r], S.ir_const(sf[r], 16)), S.V16F, 4)
            for t in range(TP):
                v = acc[t * NA]
                for a in range(1, NA):
                    v = builder.fadd(v, acc[t * NA + a])
                at = builder.mul(builder.add(yb, S.ir_const(yb, r * TP + t)), S.ir_const(yb, 16))
                y = S.ir_load(context, builder, sig.args[1], a_ys, at, S.V16F, 4)
                y = S.ir_fma(builder, m, xgs[t], y)
                y = S.ir_fma(builder, s, v, y)
                builder.store(y, S.ir_ptr(context, builder, sig.args[1], a_ys, at, S.V16F), align=4)
        return context.get_dummy_value()

    return types.void(accs, ys, ybase, sm, sflat, xg, xgoffs), codegen


# --- host-callable kernels ----------------------------------------------------------------


@numba.njit(**REASSOC_INLINE)
def _plane_group(accs, plane, wpg, tab, nt, j, t0, T, rb_first, rb_last, rtag, ttag, pfj):  # pragma: no cover
    """Add one plane's words of group j (``wpg`` per row block) for row blocks ``rb_first ...`` of the tile
    (clamped at ``rb_last``: a ragged tile repeats the last block, whose results are not stored).

    The first token chunk also prefetches each block's stream ``pfj`` groups ahead.
    """
    W = plane.shape[1]
    for w in range(wpg):
        col = j * wpg + w
        wf = S.offsets(col * 16, W * 16, rb_first, rb_last, rtag)
        if t0 == 0:
            for r in range(len(rtag)):
                S.prefetch(plane, wf[r] + pfj * wpg * 16)
        accs = _lut_word(accs, plane, wf, tab, S.offsets(col * 8 * 16, nt * 16, t0, T - 1, ttag))
    return accs


# The number of code planes a call reads (1: 2-bit pairs or 4-bit codes; 2: 3-bit lo + hi), told by the
# length of a tuple argument like the tile sizes.  Kernels take it as an argument rather than being made
# per plane count in a closure: Numba's cache key pickles closure cells, and a captured dispatcher
# pickles with a per-process UUID, so such kernels were recompiled in every process (numba issue #6264).
ONE_PLANE, TWO_PLANES = (0,), (0, 0)


@numba.njit(**REASSOC_INLINE)
def _task(ptag, p1, p2, wpg1, wpg2, tab1, tab2, sm, xg, y, rb0, rb1, rtag, ttag, atag, pfj, ys):  # pragma: no cover
    """Row blocks [rb0, rb1) of the output, every token (loop order in the module doc)."""
    T, N = y.shape
    G = sm.shape[1]
    RB = len(rtag)
    TP = len(ttag)
    nt1 = tab1.shape[1] // 16  # tables (fields) per token and plane
    nt2 = tab2.shape[1] // 16
    nrb = rb1 - rb0
    nrbp = (nrb + RB - 1) // RB * RB  # scratch rows per token chunk: a ragged tile's clamped blocks land in padding
    ys[:] = 0.0
    for j in range(G):
        for t0 in range(0, T, TP):
            for r0 in range(0, nrb, RB):
                last = nrb - 1
                accs = S.zeros_tile(rtag, atag)
                accs = _plane_group(accs, p1, wpg1, tab1, nt1, j, t0, T, rb0 + r0, rb0 + last, rtag, ttag, pfj)
                if len(ptag) == 2:
                    accs = _plane_group(accs, p2, wpg2, tab2, nt2, j, t0, T, rb0 + r0, rb0 + last, rtag, ttag, pfj)
                sf = S.offsets(j * 32, G * 32, rb0 + r0, rb0 + last, rtag)
                _lut_apply(accs, ys, ((t0 // TP) * nrbp + r0) * TP, sm, sf, xg,
                           S.offsets(j, G, t0, T - 1, ttag))  # fmt: skip
    for rb in range(nrb):
        for t0 in range(0, T, TP):
            for t in range(TP):
                tt = t0 + t
                if tt >= T:
                    break
                srow = ((t0 // TP) * nrbp + rb) * TP + t
                for lane in range(LUT_ROWS):
                    n = (rb0 + rb) * LUT_ROWS + lane
                    if n >= N:
                        break
                    y[tt, n] = ys[srow, lane]


def _make(parallel: bool):
    loop = prange if parallel else range  # the only closure cell: range / prange pickle by name

    @numba.njit(parallel=parallel, **REASSOC)
    def gemv(
        x, D, has_D, A, Bm, bias, ptag, p1, p2, basis1, basis2, sm, g, rtag, ttag, atag, bpt, pfj, y
    ):  # pragma: no cover
        """y fp32 ``[T, N]`` for x fp32 ``[T, K]`` (prologue: x / D, group sums, tables, x A^T).

        ptag: `ONE_PLANE` (p2 unused) or `TWO_PLANES` (3-bit codes: p1 the 2-bit lo, p2 the 1-bit hi plane).

        basis1 / basis2: each plane's table multipliers (`basis`).  Returns False, with y
        unwritten, when x~ is outside the range these sums keep exact (`prologue.extreme`).
        """
        T = x.shape[0]
        NB, G = sm.shape[0], sm.shape[1]
        Kp = G * g
        xp = np.empty((T, Kp), np.float32)
        scale_pad(x, D, has_D, xp)
        if extreme(xp, x.shape[1]):
            return False
        xg = np.empty((T, G), np.float32)
        group_sums(xp, g, xg)
        tab1 = np.empty((T, Kp // basis1.shape[0] * 16), np.float32)
        tab2 = np.empty((T, Kp // 4 * 16) if len(ptag) == 2 else (1, 16), np.float32)
        n1 = tab1.shape[1] // 16
        n2 = tab2.shape[1] // 16 if len(ptag) == 2 else 0
        for c in loop(8):  # the tables, split over the threads (a parallel region of its own)
            _tables(xp, basis1, tab1, c * n1 // 8, (c + 1) * n1 // 8)
            if len(ptag) == 2:
                _tables(xp, basis2, tab2, c * n2 // 8, (c + 1) * n2 // 8)
        wpg1 = p1.shape[1] // G  # words per group and row block
        wpg2 = p2.shape[1] // G if len(ptag) == 2 else 0
        r_lr = A.shape[0]
        u = np.zeros((T, r_lr), np.float32)
        for jr in loop(r_lr):  # x A^T: A is read once, split over the threads (a parallel region of its own)
            lowrank_column(x, A, u, jr)
        TP = len(ttag)
        nch = (T + TP - 1) // TP
        ntask = (NB + bpt - 1) // bpt
        for task in loop(ntask):
            rb0 = task * bpt
            rb1 = min(NB, rb0 + bpt)
            nrbp = (rb1 - rb0 + len(rtag) - 1) // len(rtag) * len(rtag)
            ys = np.empty((nch * nrbp * TP, 16), np.float32)
            _task(ptag, p1, p2, wpg1, wpg2, tab1, tab2, sm, xg, y, rb0, rb1, rtag, ttag, atag, pfj, ys)
            lowrank_bias(u, Bm, bias, y, rb0 * LUT_ROWS, min(y.shape[1], rb1 * LUT_ROWS))
        return True

    return gemv


gemv = _make(parallel=True)
gemv_serial = _make(parallel=False)


def check_buffers(planes, bases, sm, x, A, Bm, bias, y, N: int, K: int, bits: int, g: int) -> None:
    """The one place the lut kernels' buffer assumptions are asserted (raises RuntimeError).

    bases: each plane's `basis`, whose row count (codes per 4-bit field) sizes the tables.
    """
    G = -(-K // g)
    Kp = G * g
    NB = -(-N // LUT_ROWS)
    widths = {2: (2,), 3: (2, 1), 4: (4,)}[bits]
    ok = len(planes) == len(widths) == len(bases) and all(
        p.dtype == np.int32
        and p.flags.c_contiguous
        and p.shape == (NB, Kp * b // 32, LUT_ROWS)
        and q.dtype == np.float32
        and q.flags.c_contiguous
        and q.shape == (4 // b, 16)
        for p, q, b in zip(planes, bases, widths, strict=True)
    )
    ok = ok and (
        sm.dtype == np.float32 and sm.flags.c_contiguous and sm.shape == (NB, G, 2, LUT_ROWS)
        and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == K and x.flags.c_contiguous
        and y.dtype == np.float32 and y.shape == (x.shape[0], N) and y.flags.c_contiguous
        and A.dtype == np.float32 and A.ndim == 2 and A.shape[1] == K and A.flags.c_contiguous
        and Bm.dtype == np.float32 and Bm.shape == (N, A.shape[0]) and Bm.flags.c_contiguous
        and bias.dtype == np.float32 and bias.shape in ((0,), (N,))
        and all(g * b % 32 == 0 for b in widths)
    )  # fmt: skip
    if not ok:
        raise RuntimeError(f"ttqkern numba: lut {bits}-bit kernel buffers do not match N={N}, K={K}, g={g}")
