"""Portable decode GEMVs on the canonical planes read as machine words (plain Numba, any CPU).

These run where the AVX-512 kernels do not (`isa.current() == "portable"`, or a bit
width / group size / form outside the blocked and lut layouts): 2- and 3-bit codes
on AVX2 or ARM and in the asymmetric forms, and group sizes that are whole words
but not whole chunks.

All kernels compute, per output row n and token t (spec stage 4),

    y[t, n] = sum_j s[n, j] * (sum_{k in j} x~[t, k] (u[n, k] - c[n, j])) + sum_j m0[n, j] * X~[t, j]
              + (x A^T)[t] . B[n] + bias[n]

with ``x~ = x / D`` made once per call by `prologue.prologue` (with the per-group
sums X~, shared by every row) and the low-rank / bias epilogue fused per row.  The
codes are centred on their group's zero code c (`centres`: z, ``2^(b-1)`` or the
code nearest to 0; ``m0 = s * c + m``, 0 for the integer and symmetric forms) as
exact integers before any product: summing ``x~ * u`` and adding ``m * X~``
afterwards cancels catastrophically when D or a group minimum is extreme
(docs/numerics.md, rule Q1).

Layout (`_common.Plane`, group = whole words in every plane).  The prologue
stores ``x~`` *permuted and pre-scaled* per plane (`prologue.permute`): entry
``(c * nf + i) * nw + w`` of a token's plane block is
``x~[w * cpw + c * nf + i] * factor * 2^(-b * i)``, so that for a fixed field the
codes of consecutive words meet consecutive activations.  A field costs one AND,
one int->fp32 convert, the centring subtraction ``- ce[w] * 2^(b*i)`` (exact) and
one FMA per code; the group scale is applied once per word (``se[w]``), not per code.

- `fused` (decode, ``T <= FUSED_MAX_T``): grid = row blocks of ``BLOCK_N``; per row
  one pass over the row's words per token (T = 1) or per pair of tokens, codes
  unpacked in registers.  Bytes per row: ``K * b / 8`` of codes + ``8 * G`` of
  scales/offsets; x~ stays in L1/L2.
- `fused3`: the decode GEMV for 3-bit codes, merging the two planes into nibble
  words in registers (`_rowdot3`) instead of reading each plane separately.

The per-row helpers here are shared with `gemm` (buffered small-T GEMM, unpack for
prefill) and `generic`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...quant import Form
from ._common import REASSOC, REASSOC_INLINE, STRICT, STRICT_INLINE

OFF_MINS, OFF_ZEROS, OFF_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)  # plain ints for numba


# --- shared per-row helpers -----------------------------------------------------------


@numba.njit(**STRICT_INLINE)
def centre(s, mn, z, off_mode, half):  # pragma: no cover - compiled
    """One group's ``(c, m0)`` of ``w = s * (u - c) + m0`` (`PackedWeight.centred`, the same operations).

    c: the symmetric centre 2^(b-1); z clamped to the codes (``m0 = s * (c - z)``: 0
    when z is in range); for the float-min form ``clamp(round(-mn / s), 0, 2^b - 1)``
    (0 when s is 0 or not finite: any c is exact, the nearest one bounds the
    rounding) with ``m0 = mn + s * c`` rounded once (fp64).  ``mn`` is read for the
    float-min form only, ``z`` for the integer form only.
    """
    top = 2.0 * half - 1.0
    if off_mode == OFF_SYM:
        return np.int32(half), np.float32(0.0)
    if off_mode == OFF_ZEROS:
        cj = min(max(z, np.int32(0)), np.int32(top))
        return cj, np.float32(np.float64(s) * (np.float64(cj) - np.float64(z)))
    v = -mn / s
    v = v if abs(v) < np.float32(1e30) else np.float32(0.0)  # s = 0, nan or inf: c = 0
    cj = np.int32(min(max(v, np.float32(0.0)), np.float32(top)) + np.float32(0.5))
    return cj, np.float32(np.float64(mn) + np.float64(s) * np.float64(cj))  # one rounding


@numba.njit(parallel=True, **STRICT)
def centres(scales, zp_f, zp_i, off_mode, half, c, m0):  # pragma: no cover - compiled
    """Every group's zero code c (int32 ``[N, G]``) and the value of that code m0 (fp32 ``[N, G]``): `centre`.

    The kernels multiply x~ by the exact integers ``u - c``, so no sum cancels when D
    or a group minimum is extreme (docs/numerics.md).  One pass over ``[N, G]`` per call.
    """
    N, G = scales.shape
    for n in prange(N):
        s = scales[n]
        cr = c[n]
        mr = m0[n]
        for j in range(G):
            mn = zp_f[n, j] if off_mode == OFF_MINS else np.float32(0.0)
            z = zp_i[n, j] if off_mode == OFF_ZEROS else np.int32(0)
            cr[j], mr[j] = centre(s[j], mn, z, off_mode, half)


@numba.njit(**STRICT_INLINE)
def _fill_centre(c, n, Wg1, rep1, ce1, ce1c, Wg2, rep2, ce2, ce2c, cg):  # pragma: no cover - compiled
    """Per row n: ce1[w] (ce2[w]) = word w's group zero code in plane 1 (2), *replicated into every
    field of a half word* (times ``rep = sum_i 2^(b*i)``), from `centres`.

    ``ce & mask_i`` is then ``c << (b*i)``: one AND per field pair, no multiply.  Exact in
    fp32 (at most 16 bits).  With two planes (3-bit lo / hi) the centre splits as the code
    does: ``c = (c & 3) + 4 * (c >> 2)``.  ``ce1c`` / ``ce2c``: complex128 views for
    `_fill_words`; ``cg``: fp32 ``[2, G]`` scratch.
    """
    two = ce2.shape[0] > 0
    cr = c[n]
    for j in range(cr.shape[0]):
        cj = cr[j]
        cg[0, j] = np.float32((cj & 3) * rep1) if two else np.float32(cj * rep1)
        cg[1, j] = np.float32((cj >> 2) * rep2)
    _fill_words(cg[0], Wg1, ce1, ce1c)
    if two:
        _fill_words(cg[1], Wg2, ce2, ce2c)


@numba.njit(**REASSOC_INLINE)
def _row_tail(t, Xg, m0, has_m0, u, B, bias, n):  # pragma: no cover - compiled
    """Offsets term ``sum_j m0[j] X~[t, j]`` (float-min form only) plus the low-rank and bias epilogue."""
    xg = Xg[t]
    acc = np.float32(0.0)
    if has_m0:
        for j in range(xg.shape[0]):
            acc += m0[j] * xg[j]
    if B.shape[1] > 0:
        ut = u[t]
        b = B[n]
        for r in range(b.shape[0]):
            acc += ut[r] * b[r]
    if bias.shape[0] > 0:
        acc += bias[n]
    return acc


@numba.njit(**STRICT_INLINE)
def _fill_se(scales, n, Wg, se, se128):  # pragma: no cover - compiled
    """se[w] = s[n, group of word w]: the scale applied once per word."""
    _fill_words(scales[n], Wg, se, se128)


@numba.njit(**STRICT_INLINE)
def _fill_words(s, Wg, se, se128):  # pragma: no cover - compiled
    """se[w] = s[group of word w] for a per-group row ``s`` (Wg words per group).

    Runs once per row, so it matters: LLVM leaves these short runs (Wg, e.g. 16) as
    scalar stores, so when 4 divides Wg the value is written four at a time through
    the complex128 (16-byte) view ``se128`` of ``se`` -- a quarter of the stores.
    """
    G = s.shape[0]
    if Wg % 4 == 0:
        h = Wg // 4
        for j in range(G):
            b = np.uint64(np.float32(s[j]).view(np.uint32))
            f = np.uint64(b | (b << np.uint64(32))).view(np.float64)  # two copies of the fp32 bits
            c = complex(f, f)  # four copies
            seg = se128[j * h : (j + 1) * h]
            for w in range(h):
                seg[w] = c
    else:
        for j in range(G):
            seg = se[j * Wg : (j + 1) * Wg]  # a view: its index never needs wraparound
            v = s[j]
            for w in range(seg.shape[0]):
                seg[w] = v


@numba.njit(**STRICT_INLINE)
def _word_buffers(w1, w2):  # pragma: no cover - compiled
    """Per-word buffers of both planes (scales or centres), each with its 16-byte (complex128) view for `_fill_words`."""
    a = np.empty((w1.shape[1] + 3) // 4, np.complex128)
    b = np.empty((w2.shape[1] + 3) // 4, np.complex128)
    return a.view(np.float32), a, b.view(np.float32), b


def _make_row_helpers(sh: int):
    """`rowdot` and `unpack_row` for words of ``2 * sh`` bits (halves split by ``>> sh``).

    The half shift is a compile-time constant (a closure constant, cached with the
    function): with a run-time shift numba widens the lanes to 64 bits.
    """

    @numba.njit(**REASSOC_INLINE)
    def rowdot(wrow, xs, se, ce, masks):  # pragma: no cover - compiled
        """``sum_w se[w] * sum_fields x_perm * (code - c_w)`` over one plane of one row.

        ``xs`` is this plane's block of one token's permuted activations, passed as
        its own view: an index ``off + ...`` of unknown sign would make numba emit
        the negative-index wraparound, which turns the vector loads into gathers.
        """
        nw = wrow.shape[0]
        nf = len(masks)
        acc = np.float32(0.0)
        for w in range(nw):
            wd = wrow[w]
            lo = np.int32(wd)
            hi = np.int32(wd >> sh)
            cp = np.int32(ce[w])  # the zero code in every field (`_fill_centre`)
            p = np.float32(0.0)
            for i in range(nf):
                # np.int32(...) again: numba widens int32 & int32 to int64, and int64 ->
                # fp32 has no AVX2 vector instruction (the loop would stay scalar).
                # field - (c << b*i): the centred code (times 2^(b*i)), exact in int32
                cz = np.int32(cp & masks[i])
                p += xs[i * nw + w] * np.float32(np.int32(np.int32(lo & masks[i]) - cz))
                p += xs[(nf + i) * nw + w] * np.float32(np.int32(np.int32(hi & masks[i]) - cz))
            acc += se[w] * p
        return acc

    @numba.njit(**REASSOC_INLINE)
    def rowdot2(wrow, x0, x1, se, ce, masks):  # pragma: no cover - compiled
        """`rowdot` for 2 tokens at once (x0, x1: their plane blocks, each a contiguous
        1-D view -- a 2-D slice would lose the unit stride and the vectorisation): each
        field is unpacked and converted once, then feeds 2 FMAs.  (4 tokens spill.)"""
        nw = wrow.shape[0]
        nf = len(masks)
        a0 = a1 = np.float32(0.0)
        for w in range(nw):
            wd = wrow[w]
            lo = np.int32(wd)
            hi = np.int32(wd >> sh)
            cp = np.int32(ce[w])
            p0 = p1 = np.float32(0.0)
            for i in range(nf):
                cz = np.int32(cp & masks[i])
                cl = np.float32(np.int32(np.int32(lo & masks[i]) - cz))
                ch = np.float32(np.int32(np.int32(hi & masks[i]) - cz))
                il = i * nw + w
                ih = (nf + i) * nw + w
                p0 += x0[il] * cl + x0[ih] * ch
                p1 += x1[il] * cl + x1[ih] * ch
            s = se[w]
            a0 += s * p0
            a1 += s * p1
        return a0, a1

    @numba.njit(**STRICT_INLINE)
    def unpack_row(wrow, se, ce, masks, buf):  # pragma: no cover - compiled
        """buf[(c * nf + i) * nw + w] = se[w] * (field(c, i) - (c_w << b*i)) of word w (permuted order)."""
        nw = wrow.shape[0]
        nf = len(masks)
        for i in range(nf):
            m = masks[i]
            b_lo = buf[i * nw : (i + 1) * nw]
            b_hi = buf[(nf + i) * nw : (nf + i + 1) * nw]
            for w in range(nw):
                cz = np.int32(np.int32(ce[w]) & m)
                b_lo[w] = se[w] * np.float32(np.int32(np.int32(np.int32(wrow[w]) & m) - cz))
            for w in range(nw):
                cz = np.int32(np.int32(ce[w]) & m)
                b_hi[w] = se[w] * np.float32(np.int32(np.int32(np.int32(wrow[w] >> sh) & m) - cz))

    return rowdot, rowdot2, unpack_row


_rowdot32, _rowdot32x2, _unpack32 = _make_row_helpers(16)  # uint32 words: planes of 2, 4, 8 bits


_unpack16 = _make_row_helpers(8)[2]  # uint16 words: the 1-bit hi plane of 3-bit codes (prefill, buffered GEMM)


@numba.njit(**REASSOC_INLINE)
def _rowdot3(wlo, whi, xe, xo, se, ce, masks):  # pragma: no cover - compiled
    """One row of 3-bit codes, the two planes merged into nibble words on the fly.

    For 2-bit word ``lo`` and the 1-bit word ``hi`` of the same 16 codes, ``hi``'s bits
    are spread to even bit positions (4 shift/or/and steps), then
    ``E = (lo & 0x33333333) | ((spread & 0x11111111) << 2)`` holds the even codes as
    nibbles and ``O = ((lo >> 2) & 0x33333333) | (spread & 0x44444444)`` the odd ones:
    two int4 words, read like `rowdot` reads a 4-bit plane.  About 2/3 of the work
    of treating the planes separately.  ``np.uint32(...)`` around every step keeps
    the lanes 32 bits wide (numba widens integer arithmetic to 64 bits).  ``xe`` /
    ``xo``: the token's E and O blocks of `permute3`, as separate contiguous views.
    """
    nw = wlo.shape[0]
    acc = np.float32(0.0)
    for w in range(nw):
        lo = wlo[w]
        x = np.uint32(whi[w])
        x = np.uint32(np.uint32(x | np.uint32(x << 8)) & np.uint32(0x00FF00FF))
        x = np.uint32(np.uint32(x | np.uint32(x << 4)) & np.uint32(0x0F0F0F0F))
        x = np.uint32(np.uint32(x | np.uint32(x << 2)) & np.uint32(0x33333333))
        x = np.uint32(np.uint32(x | np.uint32(x << 1)) & np.uint32(0x55555555))
        e = np.uint32(np.uint32(lo & np.uint32(0x33333333)) | np.uint32(np.uint32(x & np.uint32(0x11111111)) << 2))
        o = np.uint32(np.uint32(np.uint32(lo >> 2) & np.uint32(0x33333333)) | np.uint32(x & np.uint32(0x44444444)))
        e_lo = np.int32(e)
        e_hi = np.int32(e >> 16)
        o_lo = np.int32(o)
        o_hi = np.int32(o >> 16)
        cp = np.int32(ce[w])  # the zero code in every nibble
        p = np.float32(0.0)
        for i in range(4):
            m = masks[i]
            cz = np.int32(cp & m)  # c << 4i: the nibbles' centred codes are exact int32
            p += xe[i * nw + w] * np.float32(np.int32(np.int32(e_lo & m) - cz))
            p += xe[(4 + i) * nw + w] * np.float32(np.int32(np.int32(e_hi & m) - cz))
            p += xo[i * nw + w] * np.float32(np.int32(np.int32(o_lo & m) - cz))
            p += xo[(4 + i) * nw + w] * np.float32(np.int32(np.int32(o_hi & m) - cz))
        acc += se[w] * p
    return acc


@numba.njit(**REASSOC_INLINE)
def _dot(a, b):  # pragma: no cover - compiled
    acc = np.float32(0.0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


# --- the kernels ----------------------------------------------------------------------


@numba.njit(parallel=True, **REASSOC)
def fused(w, masks, rep, Wg, xs, Xg, scales, c, m0, has_m0, u, B, bias, block_n, y):  # pragma: no cover - compiled
    """Decode GEMV over the one plane of 2-, 4- or 8-bit codes (3-bit: `fused3`); y fp32 ``[T, N]``.

    One token: `rowdot`.  Several: pairs of tokens through `rowdot2` (xs has its rows
    padded to an even count with zeros; a padded output is dropped).  c / m0: the
    groups' centres (`centres`); ``rep``: the plane's field replication factor
    (`_common.Plane.rep`).  One plane only, so each specialization compiles the two
    row dots it runs (a two-plane form compiled twice as much code that never ran).
    """
    N, G = scales.shape
    T = y.shape[0]
    nblk = (N + block_n - 1) // block_n
    none = np.empty(0, np.float32)
    nonec = np.empty(0, np.complex128)
    for blk in prange(nblk):
        se, se_c, ce, cec = _word_buffers(w, w)  # per-word scales and centres, with their 16-byte views
        cg = np.empty((2, G), np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg, se, se_c)
            _fill_centre(c, n, Wg, rep, ce, cec, 1, 0, none, nonec, cg)
            if T == 1:
                y[0, n] = _rowdot32(w[n], xs[0], se, ce, masks) + _row_tail(0, Xg, m0[n], has_m0, u, B, bias, n)
                continue
            for t0 in range(0, T, 2):
                a0, a1 = _rowdot32x2(w[n], xs[t0], xs[t0 + 1], se, ce, masks)
                y[t0, n] = a0 + _row_tail(t0, Xg, m0[n], has_m0, u, B, bias, n)
                if t0 + 1 < T:
                    y[t0 + 1, n] = a1 + _row_tail(t0 + 1, Xg, m0[n], has_m0, u, B, bias, n)


@numba.njit(parallel=True, **REASSOC)
def fused3(wlo, whi, masks, rep, Wg, xs, Xg, scales, c, m0, has_m0, u, B, bias, block_n, y):  # pragma: no cover
    """Decode GEMV for 3-bit codes through `_rowdot3` (xs from `permute3`); y fp32 ``[T, N]``."""
    N, G = scales.shape
    T = y.shape[0]
    split = 8 * wlo.shape[1]  # where a token's O block starts
    nblk = (N + block_n - 1) // block_n
    none = np.empty(0, np.float32)
    nonec = np.empty(0, np.complex128)
    for blk in prange(nblk):
        se_c = np.empty((wlo.shape[1] + 3) // 4, np.complex128)
        se = se_c.view(np.float32)
        cec = np.empty((wlo.shape[1] + 3) // 4, np.complex128)  # ce and its 16-byte view
        ce = cec.view(np.float32)
        cg = np.empty((2, G), np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg, se, se_c)
            _fill_centre(c, n, Wg, rep, ce, cec, 1, 0, none, nonec, cg)  # whole 3-bit codes
            for t in range(T):
                acc = _rowdot3(wlo[n], whi[n], xs[t, :split], xs[t, split:], se, ce, masks)
                y[t, n] = acc + _row_tail(t, Xg, m0[n], has_m0, u, B, bias, n)
