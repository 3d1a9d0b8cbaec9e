"""Portable decode GEMVs on the canonical planes read as machine words (plain Numba, any CPU).

These run where the AVX-512 kernels do not (`isa.current() == "portable"`, or a bit
width / group size outside the blocked and lut layouts): 2- and 3-bit codes on
AVX2 or ARM, and group sizes that are whole words but not whole chunks.

All kernels compute, per output row n and token t (spec stage 4),

    y[t, n] = sum_j s[n, j] * (sum_{k in j} x~[t, k] u[n, k]) + sum_j m[n, j] * X~[t, j]
              + (x A^T)[t] . B[n] + bias[n]

with ``x~ = x / D`` made once per call by `prologue.prologue` (with the per-group
sums X~, shared by every row) and the low-rank / bias epilogue fused per row.

Layout (`_common.Plane`, group = whole words in every plane).  The prologue
stores ``x~`` *permuted and pre-scaled* per plane (`prologue.permute`): entry
``(c * nf + i) * nw + w`` of a token's plane block is
``x~[w * cpw + c * nf + i] * factor * 2^(-b * i)``, so that for a fixed field the
codes of consecutive words meet consecutive activations.  A field costs one AND,
one int->fp32 convert and one FMA per code; the group scale is applied once per
word (``se[w]``, the word's group scale), not per code.

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
from ._common import REASSOC, REASSOC_INLINE, STRICT_INLINE

OFF_MINS, OFF_ZEROS, OFF_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)  # plain ints for numba


@numba.njit(**STRICT_INLINE)
def _offset(scales, zp_f, zp_i, off_mode, half, n, j):  # pragma: no cover - compiled
    """m[n, j] of ``w = s * u + m`` (`PackedWeight.offsets`)."""
    if off_mode == OFF_MINS:
        return zp_f[n, j]
    if off_mode == OFF_ZEROS:
        return -scales[n, j] * np.float32(zp_i[n, j])
    return -scales[n, j] * half


@numba.njit(**REASSOC_INLINE)
def _row_tail(n, t, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias):  # pragma: no cover - compiled
    """Offsets term ``sum_j m[n, j] X~[t, j]`` plus the low-rank and bias epilogue."""
    xg = Xg[t]
    s = scales[n]
    acc = np.float32(0.0)
    if off_mode == OFF_MINS:
        m = zp_f[n]
        for j in range(xg.shape[0]):
            acc += m[j] * xg[j]
    elif off_mode == OFF_ZEROS:
        z = zp_i[n]
        for j in range(xg.shape[0]):
            acc += (-s[j] * np.float32(z[j])) * xg[j]
    else:
        for j in range(xg.shape[0]):
            acc += (-s[j] * half) * xg[j]
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
    """se[w] = s[n, group of word w]: the scale applied once per word.

    Runs once per row, so it matters: LLVM leaves these short runs (Wg, e.g. 16) as
    scalar stores, so when 4 divides Wg the scale is written four at a time through
    the complex128 (16-byte) view ``se128`` of ``se`` -- a quarter of the stores.
    """
    s = scales[n]
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
def _se_buffers(w1, w2):  # pragma: no cover - compiled
    """Per-word scale buffers of both planes, each with its 16-byte (complex128) view for `_fill_se`."""
    se1_c = np.empty((w1.shape[1] + 3) // 4, np.complex128)
    se2_c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
    return se1_c.view(np.float32), se1_c, se2_c.view(np.float32), se2_c


def _make_row_helpers(sh: int):
    """`rowdot` and `unpack_row` for words of ``2 * sh`` bits (halves split by ``>> sh``).

    The half shift is a compile-time constant (a closure constant, cached with the
    function): with a run-time shift numba widens the lanes to 64 bits.
    """

    @numba.njit(**REASSOC_INLINE)
    def rowdot(wrow, xs, se, masks):  # pragma: no cover - compiled
        """``sum_w se[w] * sum_fields x_perm * code`` over one plane of one row.

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
            p = np.float32(0.0)
            for i in range(nf):
                # np.int32(...) again: numba widens int32 & int32 to int64, and int64 ->
                # fp32 has no AVX2 vector instruction (the loop would stay scalar)
                p += xs[i * nw + w] * np.float32(np.int32(lo & masks[i]))
                p += xs[(nf + i) * nw + w] * np.float32(np.int32(hi & masks[i]))
            acc += se[w] * p
        return acc

    @numba.njit(**REASSOC_INLINE)
    def rowdot2(wrow, x0, x1, se, masks):  # pragma: no cover - compiled
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
            p0 = p1 = np.float32(0.0)
            for i in range(nf):
                cl = np.float32(np.int32(lo & masks[i]))
                ch = np.float32(np.int32(hi & masks[i]))
                il = i * nw + w
                ih = (nf + i) * nw + w
                p0 += x0[il] * cl + x0[ih] * ch
                p1 += x1[il] * cl + x1[ih] * ch
            s = se[w]
            a0 += s * p0
            a1 += s * p1
        return a0, a1

    @numba.njit(**STRICT_INLINE)
    def unpack_row(wrow, se, masks, buf):  # pragma: no cover - compiled
        """buf[(c * nf + i) * nw + w] = se[w] * field(c, i) of word w (the permuted order)."""
        nw = wrow.shape[0]
        nf = len(masks)
        for i in range(nf):
            m = masks[i]
            b_lo = buf[i * nw : (i + 1) * nw]
            b_hi = buf[(nf + i) * nw : (nf + i + 1) * nw]
            for w in range(nw):
                b_lo[w] = se[w] * np.float32(np.int32(np.int32(wrow[w]) & m))
            for w in range(nw):
                b_hi[w] = se[w] * np.float32(np.int32(np.int32(wrow[w] >> sh) & m))

    return rowdot, rowdot2, unpack_row


_rowdot32, _rowdot32x2, _unpack32 = _make_row_helpers(16)  # uint32 words: planes of 2, 4, 8 bits
_rowdot16, _rowdot16x2, _unpack16 = _make_row_helpers(8)  # uint16 words: the 1-bit hi plane of 3-bit codes


@numba.njit(**REASSOC_INLINE)
def _rowdot3(wlo, whi, xe, xo, se, masks):  # pragma: no cover - compiled
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
        p = np.float32(0.0)
        for i in range(4):
            m = masks[i]
            p += xe[i * nw + w] * np.float32(np.int32(e_lo & m))
            p += xe[(4 + i) * nw + w] * np.float32(np.int32(e_hi & m))
            p += xo[i * nw + w] * np.float32(np.int32(o_lo & m))
            p += xo[(4 + i) * nw + w] * np.float32(np.int32(o_hi & m))
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
def fused(w1, m1, Wg1, w2, m2, Wg2, xs, off2, Xg, scales, zp_f, zp_i, off_mode, half,
          u, B, bias, block_n, y):  # pragma: no cover - compiled  # fmt: skip
    """Decode GEMV over one or two planes (``w2.shape[1] == 0``: one plane); y fp32 ``[T, N]``.

    One token: `rowdot`.  Several: pairs of tokens through `rowdot2` (xs has its rows
    padded to an even count with zeros; a padded output is dropped).
    """
    N = scales.shape[0]
    T = y.shape[0]
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1, se1_c, se2, se2_c = _se_buffers(w1, w2)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg1, se1, se1_c)
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
            if T == 1:
                acc = _rowdot32(w1[n], xs[0, :off2], se1, m1)
                if two:
                    acc += _rowdot16(w2[n], xs[0, off2:], se2, m2)
                y[0, n] = acc + _row_tail(n, 0, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias)
                continue
            for t0 in range(0, T, 2):
                a0, a1 = _rowdot32x2(w1[n], xs[t0, :off2], xs[t0 + 1, :off2], se1, m1)
                if two:
                    b0, b1 = _rowdot16x2(w2[n], xs[t0, off2:], xs[t0 + 1, off2:], se2, m2)
                    a0 += b0
                    a1 += b1
                y[t0, n] = a0 + _row_tail(n, t0, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias)
                if t0 + 1 < T:
                    y[t0 + 1, n] = a1 + _row_tail(n, t0 + 1, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias)


@numba.njit(parallel=True, **REASSOC)
def fused3(wlo, whi, masks, Wg, xs, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias, block_n, y):  # pragma: no cover
    """Decode GEMV for 3-bit codes through `_rowdot3` (xs from `permute3`); y fp32 ``[T, N]``."""
    N = scales.shape[0]
    T = y.shape[0]
    split = 8 * wlo.shape[1]  # where a token's O block starts
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se_c = np.empty((wlo.shape[1] + 3) // 4, np.complex128)
        se = se_c.view(np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg, se, se_c)
            for t in range(T):
                acc = _rowdot3(wlo[n], whi[n], xs[t, :split], xs[t, split:], se, masks)
                y[t, n] = acc + _row_tail(n, t, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias)
