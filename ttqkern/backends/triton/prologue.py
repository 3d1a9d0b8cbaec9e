"""The per-call prologue of qmatmul: x~ = x / D once, laid out for the GEMM that follows.

Every output tile of the packed GEMM needs the same x~, its per-chunk sums and
(with a low-rank part) ``x A^T``.  Computing them in every tile, as a fused
prologue would, costs a division and a reload per tile and program; computing
them once here costs one small launch.  Outputs, in one fp32 workspace:

- FMA layout (decode on the vector units): per plane, x~ ``[T, NCHP, CPW, WCH]``:
  entry ``(t, c, i, j)`` is x~ at the position of field i of word j of chunk c,
  times ``2^-Q_i`` (`unpack.field_shift`; times 4 more for the 3-bit hi plane),
  zero past K, in group padding and in chunks ``NCH <= c < NCHP``.
- dot layout (tensor cores): x~ ``[T, NCHP * CCD]`` in the activation dtype; chunk
  c holds codes ``c * CCD ..`` of the padded row, in code order or, with PAIR_CPW,
  in the pair order of `unpack.pair_codes_tile` for codes of 32 / PAIR_CPW bits.
- S ``[T, NCHP]``: per-chunk sums of x~ (for the offset term; in the dot layout
  the sums of the *rounded* x~, so the offset cancels the codes' mean exactly).
- xa partials ``[P, T, R]``: ``x A^T`` over the K range of each of the P programs
  (summed by the GEMM's epilogue: no atomics, no zeroed buffer).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .unpack import round_to


@triton.jit
def _chunk_k(c, CPG: tl.constexpr, CC: tl.constexpr, g):
    """Position in the row of the first code of chunk c (chunks tile the padded groups in order)."""
    return (c // CPG) * g + tl.minimum((c % CPG) * CC, g)


@triton.jit
def _x_tilde(x_row, D_ptr, k, valid, HAS_D: tl.constexpr):
    xv = tl.load(x_row + k, mask=valid, other=0.0).to(tl.float32)
    if HAS_D:
        xv = xv / tl.load(D_ptr + k, mask=valid, other=1.0)
    return xv


@triton.jit
def _fma_plane(
    x_row, D_ptr, out_ptr, c, cvalid, K, g, t, NCHP,
    B: tl.constexpr, WCH: tl.constexpr, CPG: tl.constexpr, CC: tl.constexpr, HI: tl.constexpr,
    HAS_D: tl.constexpr, CPP: tl.constexpr,
):  # fmt: skip
    """Store plane p's permuted, field-scaled x~ for chunks c ``[CPP]``; return x~ summed per chunk."""
    CPW: tl.constexpr = 32 // B
    i = tl.arange(0, CPW)
    j = tl.arange(0, WCH)
    local = (c % CPG)[:, None, None] * CC + j[None, None, :] * CPW + i[None, :, None]
    k = (c // CPG)[:, None, None] * g + local
    valid = cvalid[:, None, None] & (local < g) & (k < K)
    xv = _x_tilde(x_row, D_ptr, k, valid, HAS_D)
    q = tl.where(i * B + B <= 23, i * B, i * B - 12)
    scale = ((127 - q) << 23).to(tl.float32, bitcast=True)  # 2^-q exactly
    if HI:
        scale = scale * 4.0  # the hi plane's bit is worth 4
    dst = out_ptr + (t.to(tl.int64) * NCHP + c)[:, None, None] * (CPW * WCH) + i[None, :, None] * WCH + j[None, None, :]
    tl.store(dst, xv * scale[None, :, None])
    return tl.sum(tl.sum(xv, axis=2), axis=1)


@triton.jit
def _prologue_kernel(
    x_ptr, D_ptr, A_ptr, xp0_ptr, xp1_ptr, S_ptr, xa_ptr,
    T, K, g, NCH, NCHP, R,
    HAS_D: tl.constexpr, DOT: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, WCH0: tl.constexpr,
    WCH1: tl.constexpr, CPG: tl.constexpr, CC: tl.constexpr, CPP: tl.constexpr, X_DT: tl.constexpr,
    PAIR_CPW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_KA: tl.constexpr,
):  # fmt: skip
    """x~ and its chunk sums for chunks ``[pid0 * CPP, +CPP)`` of token pid1, and that K range's ``x A^T``.

    Grid ``(cdiv(NCHP, CPP), T)``.  Traffic: x and D read once (CPP chunks per
    program), A once per token; x~ written once per plane (fp32 FMA layout, or
    X_DT dot layout), 4 B of S per chunk, R floats of xa per program.
    DOT: dot layout (B0 ignored, CC = codes per chunk); else FMA layout of one
    plane of B0 bits (WCH0 words per chunk) or two (3-bit: B1 = 1, WCH1 words).
    """
    pk = tl.program_id(0)
    t = tl.program_id(1)
    c = pk * CPP + tl.arange(0, CPP)
    cvalid = c < NCH
    x_row = x_ptr + t.to(tl.int64) * K
    if DOT:
        j = tl.arange(0, CC)  # stored position in the chunk
        if PAIR_CPW > 0:  # the code stored at position j (inverse of unpack.pair_position)
            HALF: tl.constexpr = PAIR_CPW // 2
            r = j % PAIR_CPW
            code = (j - r) + r // 2 + (r % 2) * HALF
        else:
            code = j
        local = (c % CPG)[:, None] * CC + code[None, :]
        k = (c // CPG)[:, None] * g + local
        valid = cvalid[:, None] & (local < g) & (k < K)
        xr = round_to(_x_tilde(x_row, D_ptr, k, valid, HAS_D), X_DT)
        tl.store(xp0_ptr + (t.to(tl.int64) * NCHP + c)[:, None] * CC + j[None, :], xr)
        S = tl.sum(xr.to(tl.float32), axis=1)
    else:
        S = _fma_plane(x_row, D_ptr, xp0_ptr, c, cvalid, K, g, t, NCHP, B0, WCH0, CPG, CC, False, HAS_D, CPP)
        if B1 > 0:
            _fma_plane(x_row, D_ptr, xp1_ptr, c, cvalid, K, g, t, NCHP, B1, WCH1, CPG, CC, True, HAS_D, CPP)
    tl.store(S_ptr + t.to(tl.int64) * NCHP + c, S)
    if BLOCK_R > 0:
        # x A^T over this program's K range (the unscaled x: spec stage 5)
        k_lo = tl.minimum(_chunk_k(pk * CPP, CPG, CC, g), K)
        k_hi = tl.minimum(_chunk_k(pk * CPP + CPP, CPG, CC, g), K)
        rs = tl.arange(0, BLOCK_R)
        rm = rs < R
        acc = tl.zeros([BLOCK_R], tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_KA):
            ks = k0 + tl.arange(0, BLOCK_KA)
            km = ks < k_hi
            xv = tl.load(x_row + ks, mask=km, other=0.0).to(tl.float32)
            a = tl.load(A_ptr + rs[:, None].to(tl.int64) * K + ks[None, :], mask=rm[:, None] & km[None, :], other=0.0)
            acc += tl.sum(a.to(tl.float32) * xv[None, :], axis=1)
        tl.store(xa_ptr + (pk * T + t) * R + rs, acc, mask=rm)
