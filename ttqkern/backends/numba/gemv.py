"""Stage 4-5 kernels on the packed weight: prologue, fused GEMV, buffered GEMM, generic.

All kernels compute, per output row n and token t (spec stage 4),

    y[t, n] = sum_j s[n, j] * (sum_{k in j} x~[t, k] (u[n, k] - c[n, j])) + sum_j m0[n, j] * X~[t, j]
              + (x A^T)[t] . B[n] + bias[n]

with ``x~ = x / D`` made once per call by `prologue` (with the per-group sums X~,
shared by every row) and the low-rank / bias epilogue fused per row.  The codes
are centred on their group's zero code c (`_centre`: z, ``2^(b-1)`` or the code
nearest to 0; ``m0 = s * c + m``, 0 for the integer and symmetric forms) as exact
integers before any product: summing ``x~ * u`` and adding ``m * X~`` afterwards
cancels catastrophically when D or a group minimum is extreme (docs/numerics.md).

Fast layout (`_common.Plane`, group = whole words in every plane).  The prologue
stores ``x~`` *permuted and pre-scaled* per plane: entry ``(c * nf + i) * nw + w``
of a token's plane block is ``x~[w * cpw + c * nf + i] * factor * 2^(-b * i)``, so
that for a fixed field the codes of consecutive words meet consecutive activations:
the inner loops run over words, contiguous for both operands, and LLVM vectorises
them 8 words wide.  A field costs one AND, one int->fp32 convert, the centring
subtraction ``- ce[w] * 2^(b*i)`` (exact) and one FMA per code; the group scale is
applied once per word (``se[w]``, the word's group scale), not per code.

- `fused` (decode, ``T <= FUSED_MAX_T``): grid = row blocks of ``BLOCK_N``; per row
  one pass over the row's words per token (T = 1) or per pair of tokens, codes
  unpacked in registers.  Bytes per row: ``K * b / 8`` of codes + ``8 * G`` of
  scales/offsets; x~ stays in L1/L2.
- `fused3`: the decode GEMV for 3-bit codes, merging the two planes into nibble
  words in registers (`_rowdot3`) instead of reading each plane separately.
- `buffered` (``FUSED_MAX_T < T < DEQUANT_MIN_T``): per row, unpack once into an
  L1-resident fp32 row ``s * (code - c)`` (permuted), then one dot per token: the
  unpack is paid once for all T tokens.
- `generic` (group sizes that do not fill whole words, e.g. g = 37): codes are
  extracted one by one from the bytes into a per-group fp32 buffer; correct for every
  canonical weight, used only where the fast layout does not apply.
- `unpack_rows` (``T >= DEQUANT_MIN_T``, fast layout): every row's ``s * (u - c)`` in
  the permuted order as fp32 ``[N, L]`` for a BLAS matmul with the permuted
  activations (the offsets term is a small ``X~ m0^T`` GEMM); `dequantize` does the
  same in natural order, ``Wq' = s * (u - c) + m0``, for the generic layouts and for
  tokens whose x~ is outside ``[SAFE_MIN, SAFE_MAX]`` (see `__init__.qmatmul`).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...quant import Form
from ._common import REASSOC, STRICT

OFF_MINS, OFF_ZEROS, OFF_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)  # plain ints for numba


# --- prologue -----------------------------------------------------------------------


@numba.njit(**REASSOC)
def _group_sums(xp, g, Xg):  # pragma: no cover - compiled
    T, G = Xg.shape
    for t in range(T):
        for j in range(G):
            acc = np.float32(0.0)
            for k in range(j * g, (j + 1) * g):
                acc += xp[t, k]
            Xg[t, j] = acc


# A token whose largest |x~| lies outside [2^-60, 2^60] goes to the dequantize + BLAS
# path: the fast kernels pre-scale x~ by up to 2^-14 (`permute`: subnormal x~ would lose
# bits) and sum x~ times codes before the scale (huge x~ could overflow there).
SAFE_MIN, SAFE_MAX = 2.0**-60, 2.0**60


@numba.njit(**STRICT)
def prologue(x, D, has_D, g, xp, Xg):  # pragma: no cover - compiled
    """x fp32 ``[T, K]``, D fp32 ``[K]`` -> xp = x / D zero-padded ``[T, Kp]``, Xg ``[T, G]``.

    Returns True when some token's largest finite nonzero |x~| is outside
    ``[SAFE_MIN, SAFE_MAX]`` (see there).
    """
    T, K = x.shape
    Kp = xp.shape[1]
    extreme = False
    for t in range(T):
        if has_D:
            for k in range(K):
                xp[t, k] = x[t, k] / D[k]  # true division, as the reference's x / D
        else:
            for k in range(K):
                xp[t, k] = x[t, k]
        for k in range(K, Kp):
            xp[t, k] = 0.0
        big = np.float32(0.0)
        for k in range(K):
            a = abs(xp[t, k])
            if a > big and a < np.inf:
                big = a
        if big > 0 and (big < SAFE_MIN or big > SAFE_MAX):
            extreme = True
    _group_sums(xp, g, Xg)
    return extreme


@numba.njit(**REASSOC)
def lowrank_left(x, A, u):  # pragma: no cover - compiled
    """u = x A^T: x fp32 ``[T, K]`` (unscaled, spec stage 5), A fp32 ``[r, K]`` -> u ``[T, r]``.

    Serial and tiny (T * r dot products of length K); done here rather than by
    ``torch.matmul`` so a decode step never wakes torch's thread pool between two
    Numba parallel regions (two OpenMP pools spinning on 2 cores slow each other).
    """
    for t in range(x.shape[0]):
        xt = x[t]
        for r in range(A.shape[0]):
            a = A[r]
            acc = np.float32(0.0)
            for k in range(xt.shape[0]):
                acc += xt[k] * a[k]
            u[t, r] = acc


@numba.njit(**STRICT)
def permute(xp, xs, off, nw, nf, b, factor):  # pragma: no cover - compiled
    """One plane's block of the permuted, pre-scaled activations (see module doc)."""
    T = xp.shape[0]
    cpw = 2 * nf
    for t in range(T):
        for c in range(2):
            for i in range(nf):
                sc = np.float32(factor * 2.0 ** (-b * i))  # exact: a power of two (times 4 for 3-bit hi)
                base = off + (c * nf + i) * nw
                src = c * nf + i
                for w in range(nw):
                    xs[t, base + w] = xp[t, w * cpw + src] * sc


@numba.njit(**STRICT)
def permute3(xp, xs):  # pragma: no cover - compiled
    """The activations for `fused3` (3-bit codes as even / odd nibble words, see there).

    Per token: block E then block O, each ``8 * nw`` long (nw = 2-bit words per row);
    entry ``(c * 4 + i) * nw + w`` of E is ``x~[16 w + 8 c + 2 i] * 2^(-4 i)``, of O the
    next code ``16 w + 8 c + 2 i + 1``.
    """
    T, Kp = xp.shape
    nw = Kp // 16
    half = 8 * nw
    for t in range(T):
        for c in range(2):
            for i in range(4):
                sc = np.float32(2.0 ** (-4 * i))
                base = (c * 4 + i) * nw
                src = 8 * c + 2 * i
                for w in range(nw):
                    xs[t, base + w] = xp[t, 16 * w + src] * sc
                    xs[t, half + base + w] = xp[t, 16 * w + src + 1] * sc


# --- shared per-row helpers -----------------------------------------------------------


@numba.njit(parallel=True, **STRICT)
def centres(scales, zp_f, zp_i, off_mode, half, c, m0):  # pragma: no cover - compiled
    """Every group's zero code c (int32 ``[N, G]``) and the value of that code m0 (fp32 ``[N, G]``).

    ``w = s * (u - c) + m0`` (`PackedWeight.centred`); the kernels multiply x~ by the exact
    integers ``u - c``, so no sum cancels when D or a group minimum is extreme
    (docs/numerics.md).  c: the symmetric centre 2^(b-1); z clamped to the codes
    (``m0 = s * (c - z)``: 0 when z is in range); for the float-min form
    ``clamp(round(-mn / s), 0, 2^b - 1)`` (0 when s is 0 or not finite: any c is exact,
    the nearest one bounds the rounding) with ``m0 = mn + s * c`` rounded once (fp64).
    One pass over ``[N, G]`` per call, branch-free per form so that LLVM vectorises it.
    """
    N, G = scales.shape
    top = 2.0 * half - 1.0
    for n in prange(N):
        s = scales[n]
        cr = c[n]
        mr = m0[n]
        if off_mode == OFF_SYM:
            for j in range(G):
                cr[j] = np.int32(half)
                mr[j] = 0.0
        elif off_mode == OFF_ZEROS:
            z = zp_i[n]
            for j in range(G):
                cj = min(max(z[j], np.int32(0)), np.int32(top))
                cr[j] = cj
                mr[j] = np.float32(np.float64(s[j]) * (np.float64(cj) - np.float64(z[j])))
        else:
            mn = zp_f[n]
            for j in range(G):
                v = -mn[j] / s[j]
                v = v if abs(v) < np.float32(1e30) else np.float32(0.0)  # s = 0, nan or inf: c = 0
                cj = np.int32(min(max(v, np.float32(0.0)), np.float32(top)) + np.float32(0.5))
                cr[j] = cj
                mr[j] = np.float32(np.float64(mn[j]) + np.float64(s[j]) * np.float64(cj))  # one rounding


@numba.njit(**STRICT)
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


@numba.njit(**REASSOC)
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


@numba.njit(**STRICT)
def _fill_se(scales, n, Wg, se, se128):  # pragma: no cover - compiled
    """se[w] = s[n, group of word w]: the scale applied once per word."""
    _fill_words(scales[n], Wg, se, se128)


@numba.njit(**STRICT)
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


def _make_row_helpers(sh: int):
    """`rowdot` and `unpack_row` for words of ``2 * sh`` bits (halves split by ``>> sh``).

    The half shift is a compile-time constant (a closure constant, cached with the
    function): with a run-time shift numba widens the lanes to 64 bits.
    """

    @numba.njit(**REASSOC)
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

    @numba.njit(**REASSOC)
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

    @numba.njit(**STRICT)
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
_rowdot16, _rowdot16x2, _unpack16 = _make_row_helpers(8)  # uint16 words: the 1-bit hi plane of 3-bit codes


@numba.njit(**REASSOC)
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


@numba.njit(**REASSOC)
def _dot(a, b):  # pragma: no cover - compiled
    acc = np.float32(0.0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


# --- the kernels ----------------------------------------------------------------------


@numba.njit(parallel=True, **REASSOC)
def fused(w1, m1, r1, Wg1, w2, m2, r2, Wg2, xs, off2, Xg, scales, c, m0, has_m0,
          u, B, bias, block_n, y):  # pragma: no cover - compiled  # fmt: skip
    """Decode GEMV over one or two planes (``w2.shape[1] == 0``: one plane); y fp32 ``[T, N]``.

    One token: `rowdot`.  Several: pairs of tokens through `rowdot2` (xs has its rows
    padded to an even count with zeros; a padded output is dropped).  c / m0: the
    groups' centres (`centres`); ``r1`` / ``r2``: the planes' field replication factors
    (`_common.Plane.rep`).
    """
    N, G = scales.shape
    T = y.shape[0]
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1_c = np.empty((w1.shape[1] + 3) // 4, np.complex128)  # se1 and its 16-byte view for `_fill_se`
        se2_c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        se1 = se1_c.view(np.float32)
        se2 = se2_c.view(np.float32)
        ce1c = np.empty((w1.shape[1] + 3) // 4, np.complex128)  # the same for the centres
        ce2c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        ce1 = ce1c.view(np.float32)
        ce2 = ce2c.view(np.float32)
        cg = np.empty((2, G), np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg1, se1, se1_c)
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
            _fill_centre(c, n, Wg1, r1, ce1, ce1c, Wg2, r2, ce2, ce2c, cg)
            if T == 1:
                acc = _rowdot32(w1[n], xs[0, :off2], se1, ce1, m1)
                if two:
                    acc += _rowdot16(w2[n], xs[0, off2:], se2, ce2, m2)
                y[0, n] = acc + _row_tail(0, Xg, m0[n], has_m0, u, B, bias, n)
                continue
            for t0 in range(0, T, 2):
                a0, a1 = _rowdot32x2(w1[n], xs[t0, :off2], xs[t0 + 1, :off2], se1, ce1, m1)
                if two:
                    b0, b1 = _rowdot16x2(w2[n], xs[t0, off2:], xs[t0 + 1, off2:], se2, ce2, m2)
                    a0 += b0
                    a1 += b1
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


@numba.njit(parallel=True, **REASSOC)
def buffered(w1, m1, r1, Wg1, w2, m2, r2, Wg2, xs, off2, Xg, scales, c, m0, has_m0,
             u, B, bias, block_n, y):  # pragma: no cover - compiled  # fmt: skip
    """Small-T GEMM: each row unpacked once into fp32 (scales applied), then a dot per token."""
    N, G = scales.shape
    T = Xg.shape[0]
    L = xs.shape[1]
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1_c = np.empty((w1.shape[1] + 3) // 4, np.complex128)  # se1 and its 16-byte view for `_fill_se`
        se2_c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        se1 = se1_c.view(np.float32)
        se2 = se2_c.view(np.float32)
        ce1c = np.empty((w1.shape[1] + 3) // 4, np.complex128)
        ce2c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        ce1 = ce1c.view(np.float32)
        ce2 = ce2c.view(np.float32)
        cg = np.empty((2, G), np.float32)
        buf = np.empty(L, np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg1, se1, se1_c)
            _fill_centre(c, n, Wg1, r1, ce1, ce1c, Wg2, r2, ce2, ce2c, cg)
            _unpack32(w1[n], se1, ce1, m1, buf[:off2])
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
                _unpack16(w2[n], se2, ce2, m2, buf[off2:])
            for t in range(T):
                y[t, n] = _dot(xs[t], buf) + _row_tail(t, Xg, m0[n], has_m0, u, B, bias, n)


@numba.njit(parallel=True, **STRICT)
def unpack_rows(w1, m1, r1, Wg1, w2, m2, r2, Wg2, off2, scales, c, block_n, out):  # pragma: no cover - compiled
    """out fp32 ``[N, L]``: every row's ``s * (code - c)`` in the permuted order of `buffered`.

    Multiplied by the permuted, pre-scaled activations this is ``x~ (s * (u - c))^T``
    -- the prefill path hands it to BLAS and adds ``X~ m0^T`` (`centres`).
    """
    N, G = scales.shape
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1_c = np.empty((w1.shape[1] + 3) // 4, np.complex128)  # se1 and its 16-byte view for `_fill_se`
        se2_c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        se1 = se1_c.view(np.float32)
        se2 = se2_c.view(np.float32)
        ce1c = np.empty((w1.shape[1] + 3) // 4, np.complex128)
        ce2c = np.empty((w2.shape[1] + 3) // 4, np.complex128)
        ce1 = ce1c.view(np.float32)
        ce2 = ce2c.view(np.float32)
        cg = np.empty((2, G), np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            row = out[n]
            _fill_se(scales, n, Wg1, se1, se1_c)
            _fill_centre(c, n, Wg1, r1, ce1, ce1c, Wg2, r2, ce2, ce2c, cg)
            _unpack32(w1[n], se1, ce1, m1, row[:off2])
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
                _unpack16(w2[n], se2, ce2, m2, row[off2:])


@numba.njit(**STRICT)
def _code(qw, qhi, bits, n, k):  # pragma: no cover - compiled
    """The stored code u[n, k] read from the canonical bytes."""
    if bits == 3:
        lo = (qw[n, k >> 2] >> ((k & 3) * 2)) & 3
        hi = (qhi[n, k >> 3] >> (k & 7)) & 1
        return np.int32(lo) | (np.int32(hi) << 2)
    per = 8 // bits
    return np.int32((qw[n, k // per] >> ((k % per) * bits)) & ((1 << bits) - 1))


@numba.njit(parallel=True, **REASSOC)
def generic(qw, qhi, bits, g, xp, Xg, scales, c, m0, has_m0, u, B, bias, block_n, y):  # pragma: no cover
    """Any canonical layout: centred codes extracted one by one into a per-group fp32 buffer."""
    N, G = scales.shape
    T = Xg.shape[0]
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        cb = np.empty(g, np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            for t in range(T):
                y[t, n] = _row_tail(t, Xg, m0[n], has_m0, u, B, bias, n)
            for j in range(G):
                cj = c[n, j]
                for k in range(g):
                    cb[k] = np.float32(_code(qw, qhi, bits, n, j * g + k) - cj)
                s = scales[n, j]
                for t in range(T):
                    y[t, n] += s * _dot(xp[t, j * g : (j + 1) * g], cb)


@numba.njit(parallel=True, **STRICT)
def dequantize(qw, qhi, bits, g, K, scales, c, m0, block_n, out):  # pragma: no cover
    """out fp32 ``[N, K]`` = ``s * (u - c) + m0`` (the scaled weight Wq', not divided by D; `centres`)."""
    N, G = scales.shape
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            for j in range(G):
                s = scales[n, j]
                cj = c[n, j]
                m = m0[n, j]
                for k in range(j * g, min(K, (j + 1) * g)):
                    out[n, k] = s * np.float32(_code(qw, qhi, bits, n, k) - cj) + m
