"""Stages 2-3: scale by D, groupwise min/max, round and pack -- one pass over W.

Grid: one task per ``BLOCK_N`` rows.  For each row and group, one strict loop reads
the group's weights once (``w' = W * D``, kept in a g-float buffer in L1) and finds
min, max, max |w'| and finiteness; a second loop over the buffer rounds to codes
into a row of bytes, which is then packed into the canonical planes (spec §3).
Bytes moved per row: ``K * 4`` read (fp32 W; bf16/fp16 W are widened first) and
``K * b / 8`` + ``8 * G`` written.

Rounding follows `reference.quantize` operation for operation in fp32 (same
expressions, same order, true division, round-half-to-even via `np.rint`), and the
kernel is compiled *without* fastmath, so codes match the reference bit for bit up
to the compiler's fp32 arithmetic (which is IEEE, as torch's), non-finite groups
included: they get the reference's codes, offsets and a nan scale.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from ...format import PackedWeight, num_groups, packed_bytes
from ...quant import Form, QuantFormat
from .. import cpu_layouts
from . import config
from ._common import STRICT, STRICT_INLINE, as_f32
from .gemv_words import centre

FORM_FLOAT, FORM_INT, FORM_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)  # plain ints for numba
INT32_MIN = np.int32(-2147483648)


@numba.njit(**STRICT_INLINE)
def _clamp_code(q, lo, hi):  # pragma: no cover - compiled
    """torch's clamp (nan stays nan) followed by nan_to_num: nan -> 0 (selects, no branches)."""
    # selects, not min()/max(): numba's builtins carry their own nan logic and stay scalar
    q = lo if q < lo else q  # noqa: FURB136
    q = hi if q > hi else q  # noqa: FURB136
    return q if q == q else np.float32(0.0)  # noqa: PLR0124 (nan test)


@numba.njit(**STRICT_INLINE)
def _codes_float(buf, n, mn, s, levels, out):  # pragma: no cover - compiled
    """out[k] = clamp(round((w - mn) / s), 0, levels): the reference's expression."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint((buf[k] - mn) / s), np.float32(0.0), levels))


@numba.njit(**STRICT_INLINE)
def _codes_int(buf, n, s, z, levels, out):  # pragma: no cover - compiled
    """out[k] = clamp(round(w / s) + z, 0, levels)."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint(buf[k] / s) + z, np.float32(0.0), levels))


@numba.njit(**STRICT_INLINE)
def _codes_sym(buf, n, s, qpos, half_range, out):  # pragma: no cover - compiled
    """out[k] = clamp(round(w / s), -qpos, qpos) + 2^(b-1) (the stored unsigned code)."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint(buf[k] / s), -qpos, qpos) + half_range)


@numba.njit(**STRICT_INLINE)
def _pack_row(codes, bits, out):  # pragma: no cover - compiled
    """Pack codes as ``bits``-bit fields, little-endian in each byte (spec §3).

    bits 8 / 4: the codes; 2: their low two bits (the ``lo`` plane of 3-bit codes is
    ``q & 3``); 1: bit 2 (the ``hi`` plane, ``q >> 2``).  One loop per width with
    constant strides and shifts, so LLVM vectorises each.
    """
    n = out.shape[0]
    if bits == 8:
        for i in range(n):
            out[i] = codes[i]
    elif bits == 4:
        for i in range(n):
            out[i] = (codes[2 * i] & 15) | ((codes[2 * i + 1] & 15) << 4)
    elif bits == 2:
        for i in range(n):
            j = 4 * i
            out[i] = (codes[j] & 3) | ((codes[j + 1] & 3) << 2) | ((codes[j + 2] & 3) << 4) | ((codes[j + 3] & 3) << 6)
    else:
        for i in range(n):
            j = 8 * i
            out[i] = (
                ((codes[j] >> 2) & 1)
                | (((codes[j + 1] >> 2) & 1) << 1)
                | (((codes[j + 2] >> 2) & 1) << 2)
                | (((codes[j + 3] >> 2) & 1) << 3)
                | (((codes[j + 4] >> 2) & 1) << 4)
                | (((codes[j + 5] >> 2) & 1) << 5)
                | (((codes[j + 6] >> 2) & 1) << 6)
                | (((codes[j + 7] >> 2) & 1) << 7)
            )


DEST_CANONICAL, DEST_BLOCKED, DEST_LUT = 0, 1, 2  # what the kernel writes (see `quantize`)


@numba.njit(**STRICT_INLINE)
def _write_blocked(codes, bits, nb, nrows, qb, qb32):  # pragma: no cover - compiled
    """Rows ``8 nb ... 8 nb + nrows - 1`` (their codes in ``codes [8, Lq]``) into the blocked
    layout ``qb [NB, C, 8, CB]`` (`cpu_layouts` module doc), unit by unit in memory order.

    4-bit: 32-bit word l of a row-chunk is ``sum_f code(16 f + l) << 4 f`` (nibble f of
    word l is code 16 f + l), built for the 16 words at once from 8 contiguous runs of
    codes so the lane loop vectorises; ``qb32`` is ``qb`` viewed as uint32 words
    ``[NB, C, 8, 16]`` (int32 arithmetic: numba widens unsigned shifts to 64 bits).  8-bit: the codes in order.  Writing a whole block at once keeps
    the output one sequential stream (row by row it would be 8 interleaved streams,
    whose write misses the prefetchers do not cover).
    """
    for c in range(qb.shape[1]):
        for r in range(nrows):
            src = codes[r, c * 128 : (c + 1) * 128]
            if bits == 4:
                dst = qb32[nb, c, r]
                for lane in range(16):
                    w = np.int32(src[lane])
                    for f in range(1, 8):
                        w = np.int32(w | np.int32(np.int32(src[16 * f + lane]) << np.int32(4 * f)))
                    dst[lane] = w
            else:
                dst = qb[nb, c, r]
                for k in range(128):
                    dst[k] = src[k]


@numba.njit(**STRICT_INLINE)
def _write_lut(codes, b, nb, nrows, row, plane):  # pragma: no cover - compiled
    """Rows ``16 nb ...`` (codes in ``codes [16, Lq]``) as b-bit planes into the lut layout ``plane [NB16, W, 16]``.

    Each row is packed canonically into ``row`` ``[16, 4 W]`` (bytes), then the words are
    written column by column (64 contiguous bytes per word index: one sequential stream).
    """
    for r in range(nrows):
        _pack_row(codes[r], b, row[r])
    words = row.view(np.int32)  # [16, W]
    for w in range(plane.shape[1]):
        for r in range(nrows):
            plane[nb, w, r] = words[r, w]


@numba.njit(**STRICT_INLINE)
def _write_sm(scales, mins, zeros, form, half, n0, nrows, sm):  # pragma: no cover - compiled
    """Rows ``n0 ... n0 + nrows - 1``: scales and the centres (c, m0) of `gemv_words.centre` into
    ``sm [NB, GQ, 3, R]`` (blocked: s, c, m0) or ``[NB, G, 2, R]`` (lut: s, m0), block ``n0 // R``."""
    R = sm.shape[3]
    nb = n0 // R
    with_c = sm.shape[2] == 3
    for j in range(scales.shape[1]):
        for r in range(nrows):
            s = scales[n0 + r, j]
            mn = mins[n0 + r, j] if form == FORM_FLOAT else np.float32(0.0)
            z = zeros[n0 + r, j] if form == FORM_INT else np.int32(0)
            c, m0 = centre(s, mn, z, form, half)
            sm[nb, j, 0, r] = s
            if with_c:
                sm[nb, j, 1, r] = np.float32(c)
            sm[nb, j, sm.shape[2] - 1, r] = m0


@numba.njit(**STRICT_INLINE)
def _key(v):  # pragma: no cover - compiled
    """An int32 ordered like the fp32 ``v`` (finite values): sign-magnitude -> two's complement."""
    b = np.float32(v).view(np.int32)
    return np.int32(b ^ np.int32(np.int32(b >> 31) & np.int32(0x7FFFFFFF)))


@numba.njit(**STRICT_INLINE)
def _unkey(k):  # pragma: no cover - compiled
    """Inverse of `_key` (the map is an involution)."""
    return np.int32(k ^ np.int32(np.int32(k >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)


@numba.njit(**STRICT_INLINE)
def _scale_into(w, d, has_D, buf):  # pragma: no cover - compiled
    """buf = w * d (w' = W_res * D; a copy of w without D).  Returns (nonfinite, min, max).

    Everything is integer work on the fp32 bit patterns, so the loop vectorises
    without fastmath (each ``w * d`` stays one IEEE multiply): a value is non-finite
    iff its exponent bits are all ones (max of ``bits & 0x7F800000``); min / max on
    integer keys ordered like the floats (`_key`), exact for finite values and only
    used when the group is finite.
    """
    emax = np.int32(0)
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    expo = np.int32(0x7F800000)
    for k in range(w.shape[0]):
        v = w[k] * d[k] if has_D else w[k]
        buf[k] = v
        e = np.int32(np.float32(v).view(np.int32) & expo)
        emax = e if e > emax else emax  # noqa: FURB136 (a select: vectorises)
        key = _key(v)
        kmin = key if key < kmin else kmin  # noqa: FURB136
        kmax = key if key > kmax else kmax  # noqa: FURB136
    return emax == expo, _unkey(kmin), _unkey(kmax)


@numba.njit(parallel=True, **STRICT)
def _quantize_kernel(W, D, has_D, bits, g, form, beta, block_n, dest, qw, qhi, scales, mins, zeros, qb, qb32, pl,
                     plh, sm):  # pragma: no cover  # fmt: skip
    """W fp32 ``[N, K]``, D fp32 ``[K]`` -> scales, mins | zeros ``[N, G]`` and the codes.

    dest DEST_CANONICAL: qw (+ qhi for 3 bits) canonical; DEST_BLOCKED: qb and sm;
    DEST_LUT: pl (+ plh for 3 bits) and sm (the other outputs are empty arrays).
    """
    N, K = W.shape
    G = scales.shape[1]
    levels = np.float32((1 << bits) - 1)
    qpos = np.float32((1 << (bits - 1)) - 1)
    half_range = np.int32(1 << (bits - 1))
    two = np.float32(2.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    beta32 = np.float32(beta)
    # codes row, long enough for every plane's packing and the blocked layout's whole chunks
    Lq = max((G * g + 15) // 8 * 8 + 8, qb.shape[1] * 128)
    half_f = np.float32(half_range)
    RB = 8 if dest == DEST_BLOCKED else (16 if dest == DEST_LUT else 1)  # rows per layout block
    nblk = (N + block_n - 1) // block_n  # block_n is a multiple of RB: tasks own whole layout blocks
    for blk in prange(nblk):
        buf = np.empty(g, np.float32)
        codes_blk = np.zeros((RB, Lq), np.uint8)  # the codes of a layout block's rows
        row = np.zeros((RB, pl.shape[1] * 4), np.uint8)  # packed lut rows (Kp * b / 8 bytes each)
        row_hi = np.zeros((RB, plh.shape[1] * 4), np.uint8)
        n_end = min(N, (blk + 1) * block_n)
        for n in range(blk * block_n, n_end):
            codes = codes_blk[n % RB]
            for j in range(G):
                k0 = j * g
                k1 = min(K, k0 + g)
                L = k1 - k0
                finite = True
                nonfinite, mn, mx = _scale_into(W[n, k0:k1], D[k0:k1] if has_D else D, has_D, buf)
                if not nonfinite:
                    amax = max(-mn, mx)
                else:  # strict scan: nan-propagating min / max like torch's amin / amax
                    mn = np.float32(np.inf)
                    mx = np.float32(-np.inf)
                    amax = zero
                    finite = False
                    has_nan = False
                    for k in range(L):
                        v = buf[k]
                        if v != v:  # noqa: PLR0124 (nan test)
                            has_nan = True
                        elif v < mn:
                            mn = v
                        if v > mx:  # noqa: PLR1730 (explicit compares: the reference's nan rules)
                            mx = v
                        a = abs(v)
                        if a > amax:  # noqa: PLR1730
                            amax = a
                    if has_nan:
                        mn = mx = amax = np.float32(np.nan)
                if form == FORM_SYM:
                    am = amax * beta32
                    s = am / qpos if am > zero else one
                    _codes_sym(buf, L, s, qpos, np.float32(half_range), codes[k0:k1])
                else:
                    centre = (mx + mn) / two
                    half = (mx - mn) / two * beta32  # range expansion about the centre
                    mn = centre - half
                    mx = centre + half
                    s = (mx - mn) / levels
                    if form == FORM_FLOAT:
                        if not (s > zero):
                            s = one  # constant group: q = 0, w = mn exactly
                        _codes_float(buf, L, mn, s, levels, codes[k0:k1])
                        mins[n, j] = mn
                    else:
                        if not (s > zero):
                            s = abs(mn) if mn != zero else one  # z = -sign(mn), q = 0 rebuilds it
                        z = np.rint(-mn / s)
                        _codes_int(buf, L, s, z, levels, codes[k0:k1])
                        # torch: nan_to_num(z).to(int32); out-of-range -> INT32_MIN as on x86
                        if z != z:  # noqa: PLR0124 (nan test)
                            zeros[n, j] = 0
                        elif z >= np.float32(2147483648.0) or z < np.float32(-2147483648.0):
                            zeros[n, j] = INT32_MIN
                        else:
                            zeros[n, j] = np.int32(z)
                scales[n, j] = s if finite else np.float32(np.nan)
            for k in range(K, Lq):  # padding past K: code 0 (the canonical zero fill)
                codes[k] = 0
            if dest != DEST_CANONICAL:
                if n % RB == RB - 1 or n == n_end - 1:  # a layout block is complete: write it
                    n0 = n - n % RB
                    if dest == DEST_BLOCKED:
                        _write_blocked(codes_blk, bits, n0 // RB, n - n0 + 1, qb, qb32)
                    else:
                        _write_lut(codes_blk, 2, n0 // RB, n - n0 + 1, row, pl)
                        if bits == 3:
                            _write_lut(codes_blk, 1, n0 // RB, n - n0 + 1, row_hi, plh)
                    _write_sm(scales, mins, zeros, form, half_f, n0, n - n0 + 1, sm)
            elif bits == 3:
                _pack_row(codes, 2, qw[n])
                _pack_row(codes, 1, qhi[n])
            else:
                _pack_row(codes, bits, qw[n])
    return 0


def quantize(
    W: torch.Tensor,
    D: torch.Tensor | None,
    bits: int,
    group_size: int,
    sym: bool,
    zero: str,
    beta: float,
    layout: str = cpu_layouts.NUMBA_CPU,
) -> PackedWeight:
    """W ``[N, K]`` fp32/fp16/bf16, D fp32 ``[K]`` | None -> `PackedWeight` in the ``numba_cpu`` layout.

    Written straight into the layout the decode kernels read (`cpu_layouts`: blocked
    for bits 4 / 8, lut for bits 2 / 3, the canonical tensors for other group sizes),
    so a requantization is one pass over W.  ``layout="canonical"`` writes the
    canonical layout instead.  ``group_size`` is the resolved positive length; the
    ragged last group is handled in place (never read past K).  ``zero`` ``"float"``
    gives fp32 mins, ``"int"`` int32 zero-points; ``sym`` stores ``q + 2^(b-1)``.
    """
    N, K = W.shape
    g = group_size
    G = num_groups(K, g)
    Kp = G * g
    fmt = QuantFormat(bits, g, sym, zero)
    form = int(fmt.form)
    kind = cpu_layouts.kind(bits, g, sym) if layout == cpu_layouts.NUMBA_CPU else "plain"
    dest = {"plain": DEST_CANONICAL, "blocked": DEST_BLOCKED, "lut": DEST_LUT}[kind]
    canonical = dest == DEST_CANONICAL
    qw = np.empty((N, packed_bytes(Kp, 2 if bits == 3 else bits)) if canonical else (0, 0), np.uint8)
    qhi = np.empty((N, packed_bytes(Kp, 1)) if bits == 3 and canonical else (0, 0), np.uint8)
    scales = np.empty((N, G), np.float32)
    mins = np.empty((N, G) if form == FORM_FLOAT else (0, 0), np.float32)
    zeros = np.empty((N, G) if form == FORM_INT else (0, 0), np.int32)
    qb = np.zeros((0, 0, 0, 0), np.uint8)
    pl = plh = np.zeros((0, 0, 0), np.int32)
    sm = np.zeros((0, 0, 0, 0), np.float32)
    rows = 1
    if dest == DEST_BLOCKED:
        shp = cpu_layouts.blocked_shapes(N, K, bits, g)
        qb = _zero_padded(shp["qweight"], N, np.uint8)
        sm = np.zeros(shp["scales"], np.float32)  # padding groups and rows: s = m = 0
        rows = cpu_layouts.BLOCK_ROWS
    elif dest == DEST_LUT:
        shp = cpu_layouts.lut_shapes(N, K, bits, g)
        pl = _zero_padded(shp["qweight"], N, np.int32)
        if bits == 3:
            plh = _zero_padded(shp["qweight_hi"], N, np.int32)
        sm = np.zeros(shp["scales"], np.float32)
        rows = cpu_layouts.LUT_ROWS
    cfg = config.params("quantize", bits=bits, group=g, N=N, K=K)
    block_n = -(-cfg["BLOCK_N"] // 16) * 16 if rows > 1 else cfg["BLOCK_N"]  # tasks own whole row blocks
    Dn = as_f32(D) if D is not None else np.empty(0, np.float32)
    with config.threads_for(N * K, cfg):
        qb32 = qb.view(np.int32) if bits == 4 and dest == DEST_BLOCKED else np.zeros((0, 0, 0, 0), np.int32)
        _quantize_kernel(as_f32(W), Dn, D is not None, bits, g, form, float(beta), block_n, dest,
                         qw, qhi, scales, mins, zeros, qb, qb32, pl, plh, sm)  # fmt: skip
    t = torch.from_numpy
    offsets = t(mins) if form == FORM_FLOAT else t(zeros) if form == FORM_INT else None
    if dest == DEST_BLOCKED:
        planes = {"qweight": t(qb), "scales": t(sm)}
    elif dest == DEST_LUT:
        planes = {"qweight": t(pl), "qweight_hi": t(plh) if bits == 3 else None, "scales": t(sm)}
    else:
        planes = {"qweight": t(qw), "qweight_hi": t(qhi), "scales": t(scales)}
    return PackedWeight.build(fmt, (N, K), offsets=offsets, layout=layout, **planes)


def _zero_padded(shape, N: int, dtype) -> np.ndarray:
    """An output array of a layout whose row blocks beyond N rows are zeros (rows the kernel never writes).

    Every element of the first N rows is written by the kernel, so only the padding is
    zeroed (np.empty + fill of the last block, not a full memset).
    """
    a = np.empty(shape, dtype)
    nfull = N // shape[2]  # rows per block: axis 2 of both layouts
    if nfull < shape[0]:
        a[nfull:] = 0
    return a
