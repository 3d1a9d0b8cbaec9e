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
from . import config
from ._common import STRICT, as_f32

FORM_FLOAT, FORM_INT, FORM_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)  # plain ints for numba
INT32_MIN = np.int32(-2147483648)


@numba.njit(**STRICT)
def _clamp_code(q, lo, hi):  # pragma: no cover - compiled
    """torch's clamp (nan stays nan) followed by nan_to_num: nan -> 0 (selects, no branches)."""
    # selects, not min()/max(): numba's builtins carry their own nan logic and stay scalar
    q = lo if q < lo else q  # noqa: FURB136
    q = hi if q > hi else q  # noqa: FURB136
    return q if q == q else np.float32(0.0)  # noqa: PLR0124 (nan test)


@numba.njit(**STRICT)
def _codes_float(buf, n, mn, s, levels, out):  # pragma: no cover - compiled
    """out[k] = clamp(round((w - mn) / s), 0, levels): the reference's expression."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint((buf[k] - mn) / s), np.float32(0.0), levels))


@numba.njit(**STRICT)
def _codes_int(buf, n, s, z, levels, out):  # pragma: no cover - compiled
    """out[k] = clamp(round(w / s) + z, 0, levels)."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint(buf[k] / s) + z, np.float32(0.0), levels))


@numba.njit(**STRICT)
def _codes_sym(buf, n, s, qpos, half_range, out):  # pragma: no cover - compiled
    """out[k] = clamp(round(w / s), -qpos, qpos) + 2^(b-1) (the stored unsigned code)."""
    for k in range(n):
        out[k] = np.uint8(_clamp_code(np.rint(buf[k] / s), -qpos, qpos) + half_range)


@numba.njit(**STRICT)
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


@numba.njit(**STRICT)
def _key(v):  # pragma: no cover - compiled
    """An int32 ordered like the fp32 ``v`` (finite values): sign-magnitude -> two's complement."""
    b = np.float32(v).view(np.int32)
    return np.int32(b ^ np.int32(np.int32(b >> 31) & np.int32(0x7FFFFFFF)))


@numba.njit(**STRICT)
def _unkey(k):  # pragma: no cover - compiled
    """Inverse of `_key` (the map is an involution)."""
    return np.int32(k ^ np.int32(np.int32(k >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _scale_into(w, d, has_D, buf):  # pragma: no cover - compiled
    """buf = w * d (w' = W_res * D; a copy of w without D).  Returns (nonfinite, min, max).

    Non-finite check: ``sum(v * 0) != 0`` (0 exactly for finite v, nan otherwise).
    Min / max on integer keys ordered like the floats (`_key`): integer min/max
    reductions vectorise without fastmath; they are exact for finite values and
    only used when the group is finite.  Only ``reassoc`` (for the sum): each
    ``w * d`` is still one IEEE multiply, and without ``nnan``/``ninf`` LLVM may not
    fold ``v * 0`` to 0.
    """
    acc = np.float32(0.0)
    zero = np.float32(0.0)
    kmin = np.int32(0x7FFFFFFF)
    kmax = np.int32(-0x80000000)
    for k in range(w.shape[0]):
        v = w[k] * d[k] if has_D else w[k]
        buf[k] = v
        acc += v * zero
        key = _key(v)
        kmin = key if key < kmin else kmin  # noqa: FURB136 (a select: vectorises)
        kmax = key if key > kmax else kmax  # noqa: FURB136
    return acc != zero, _unkey(kmin), _unkey(kmax)


@numba.njit(parallel=True, **STRICT)
def _quantize_kernel(W, D, has_D, bits, g, form, beta, block_n, qw, qhi, scales, mins, zeros):  # pragma: no cover
    """W fp32 ``[N, K]``, D fp32 ``[K]`` -> qw (+ qhi for 3 bits), scales, mins | zeros."""
    N, K = W.shape
    G = scales.shape[1]
    levels = np.float32((1 << bits) - 1)
    qpos = np.float32((1 << (bits - 1)) - 1)
    half_range = np.int32(1 << (bits - 1))
    two = np.float32(2.0)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    beta32 = np.float32(beta)
    Lq = (G * g + 15) // 8 * 8 + 8  # codes row, long enough for every plane's packing
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        buf = np.empty(g, np.float32)
        codes = np.zeros(Lq, np.uint8)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
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
            if bits == 3:
                _pack_row(codes, 2, qw[n])
                _pack_row(codes, 1, qhi[n])
            else:
                _pack_row(codes, bits, qw[n])
    return 0


def quantize(
    W: torch.Tensor, D: torch.Tensor | None, bits: int, group_size: int, sym: bool, zero: str, beta: float
) -> PackedWeight:
    """W ``[N, K]`` fp32/fp16/bf16, D fp32 ``[K]`` | None -> canonical `PackedWeight` (fp32 scales).

    ``group_size`` is the resolved positive length; the ragged last group is handled
    in place (never read past K).  ``zero`` ``"float"`` gives fp32 mins, ``"int"``
    int32 zero-points; ``sym`` stores ``q + 2^(b-1)``.
    """
    N, K = W.shape
    g = group_size
    G = num_groups(K, g)
    Kp = G * g
    fmt = QuantFormat(bits, g, sym, zero)
    form = int(fmt.form)
    qw = np.empty((N, packed_bytes(Kp, 2 if bits == 3 else bits)), np.uint8)
    qhi = np.empty((N, packed_bytes(Kp, 1)) if bits == 3 else (0, 0), np.uint8)
    scales = np.empty((N, G), np.float32)
    mins = np.empty((N, G) if form == FORM_FLOAT else (0, 0), np.float32)
    zeros = np.empty((N, G) if form == FORM_INT else (0, 0), np.int32)
    cfg = config.params("quantize", bits=bits, group=g, N=N, K=K)
    Dn = as_f32(D) if D is not None else np.empty(0, np.float32)
    with config.threads_for(N * K, cfg):
        _quantize_kernel(as_f32(W), Dn, D is not None, bits, g, form, float(beta), cfg["BLOCK_N"],
                         qw, qhi, scales, mins, zeros)  # fmt: skip
    t = torch.from_numpy
    offsets = t(mins) if form == FORM_FLOAT else t(zeros) if form == FORM_INT else None
    return PackedWeight.build(fmt, (N, K), qweight=t(qw), qweight_hi=t(qhi), scales=t(scales), offsets=offsets)
