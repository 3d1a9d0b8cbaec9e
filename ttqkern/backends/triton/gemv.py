"""Decode with one token: ``y = x~ Wq'^T + (x A^T) B^T + b`` on the vector units, at memory speed.

Why it looks the way it does (the diagnosis is in docs/triton-kernels.md):

- Weights are read as 16-byte vectors (`LDG.E.128`): every thread owns 4 words
  (or 2 of the 3-bit hi plane) of one chunk of one row; masks touch only chunks,
  with the same value across a vector.
- Tile ``[ROWS, NW, 32, WCH]``: ROWS rows per thread, one row per warp, 32 chunk
  lanes, WCH words.  With exactly 32 chunk lanes and one warp per row slot,
  Triton gives the weights, the x~ slices (``[1, NW, 32, WCH]``, broadcast over
  ROWS) and the per-(row, chunk) scales ``[ROWS, NW, 32]`` layouts that agree:
  no layout conversion, hence no barrier or shuffle, in the loop.
- A code becomes a float with one LOP3 and one FADD: OR-ed into the mantissa of
  2^23 it is ``2^23 + u * 2^Q`` exactly, and subtracting ``2^23 + c * 2^Q`` (a
  register per (row, chunk) and bit offset) leaves the *centred* code
  ``(u - c) * 2^Q`` exactly, c the group's zero code (docs/numerics.md, rule Q1: no
  cancellation whatever D or the group minimum).  An FFMA multiplies it by x~,
  which the prologue already permuted to the code's position and scaled by
  ``2^-Q``.  The group scale is applied once per chunk and row, the centre's value
  ``m0`` once per chunk and row through the chunk sums of x~.
- One reduction after the K loop; the epilogue adds ``B . (x A^T)`` (summing the
  prologue's partials) and the bias and stores in x's dtype.
- The next step's weights are loaded before the current step is computed
  (PREFETCH), so two steps of every warp are in flight.

Grid ``(cdiv(N, ROWS * NW),)``; program i owns rows ``i*ROWS*NW + r*NW + w``.
Traffic per output: the row's packed planes once (``K * b / 8`` bytes), one scale
and one offset per chunk (from L1: 4 chunks share them at g = 128), x~ from L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .forms import centre
from .unpack import load_magic, round_to

CHUNK_LANES = 32  # chunk lanes per step: one per thread of a warp (see the module docstring)


@triton.jit
def _centred_field(w, wh, magic, c, i: tl.constexpr, B: tl.constexpr):
    """Field i of words ``w`` minus the centre c, as fp32 ``(u - c) * 2^Q`` exactly (Q = `unpack.field_shift`)."""
    if i * B + B <= 23:
        Q: tl.constexpr = i * B
        v = (w & (((1 << B) - 1) << Q)) | magic
    else:
        Q: tl.constexpr = i * B - 12
        v = (wh & (((1 << B) - 1) << Q)) | magic
    return v.to(tl.float32, bitcast=True) - (c * (1 << Q) + 8388608.0)[:, :, :, None]


@triton.jit
def _plane_dot(w, xp, magic, c, B: tl.constexpr):
    """``sum_i (field_i(w) - c) * x~_i`` over the words of each (row, chunk): ``[ROWS, NW, 32]`` fp32."""
    CPW: tl.constexpr = 32 // B
    WCH: tl.constexpr = w.shape[3]
    wh = w >> 12
    part = _centred_field(w, wh, magic, c, 0, B) * tl.load(xp)
    for i in tl.static_range(1, CPW):
        part += _centred_field(w, wh, magic, c, i, B) * tl.load(xp + i * WCH)
    return tl.sum(part, axis=3)


@triton.jit
def _lowrank_bias(y, rows, xa_ptr, B_ptr, bias_ptr, R, P, HAS_LR: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_R: tl.constexpr):  # fmt: skip
    """``y[rows] += B[rows] . sum_p xa[p] + bias[rows]`` for rows ``[ROWS, NW]`` (in range)."""
    if HAS_LR:
        rs = tl.arange(0, BLOCK_R)
        rm = rs < R
        xa = tl.zeros([BLOCK_R], tl.float32)
        for p in range(0, P):
            xa += tl.load(xa_ptr + p * R + rs, mask=rm, other=0.0)
        b = tl.load(B_ptr + rows[:, :, None].to(tl.int64) * R + rs[None, None, :], mask=rm[None, None, :], other=0.0)
        y += tl.sum(b.to(tl.float32) * xa[None, None, :], axis=2)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows).to(tl.float32)
    return y


@triton.jit
def _gemv_kernel(
    magic_ptr, q0_ptr, q1_ptr, s_ptr, cq_ptr, m0_ptr, xp0_ptr, xp1_ptr, S_ptr, xa_ptr, B_ptr, bias_ptr, y_ptr,
    N, G, G4, NCH, R, P,
    BITS: tl.constexpr, MODE: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, WCH0: tl.constexpr,
    WCH1: tl.constexpr, CPG: tl.constexpr, HAS_LR: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr, NW: tl.constexpr, BLOCK_R: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """One-token packed GEMV (see the module docstring); y ``[N]`` in its own dtype.

    q0 / q1: int32 word planes ``[N, NCH * WCH0]`` / ``[N, NCH * WCH1]`` (B1 = 0:
    one plane); s, (cq, m0): scales and centres (`forms.centre`); xp0 / xp1: the
    prologue's x~ ``[NCHP, 32/B, WCH]``; S ``[NCHP]``
    chunk sums; xa ``[P, 1, R]`` partials of ``x A^T``.  NCHP is NCH rounded up to
    whole steps, and the prologue zeroed x~ and S there, so only the weight loads
    need a mask.
    """
    CS: tl.constexpr = 32
    magic = load_magic(magic_ptr)
    pid = tl.program_id(0)
    rows = pid * (ROWS * NW) + tl.arange(0, ROWS)[:, None] * NW + tl.arange(0, NW)[None, :]
    out_mask = rows < N
    rows = tl.minimum(rows, N - 1)  # rows past N re-read row N-1 (never stored): no mask in the loop
    cs = tl.arange(0, CS)
    nw0 = tl.zeros([NW], tl.int32)[None, :, None, None]  # x~ is the same for every warp: a broadcast index
    w0p = q0_ptr + (rows.to(tl.int64) * NCH * WCH0)[:, :, None, None] + (cs * WCH0)[None, None, :, None]
    w0p += tl.arange(0, WCH0)[None, None, None, :]
    x0p = xp0_ptr + (cs * ((32 // B0) * WCH0))[None, None, :, None] + tl.arange(0, WCH0)[None, None, None, :] + nw0
    if B1 > 0:
        w1p = q1_ptr + (rows.to(tl.int64) * NCH * WCH1)[:, :, None, None] + (cs * WCH1)[None, None, :, None]
        w1p += tl.arange(0, WCH1)[None, None, None, :]
        x1p = xp1_ptr + (cs * ((32 // B1) * WCH1))[None, None, :, None] + tl.arange(0, WCH1)[None, None, None, :]
        x1p += nw0
    Sp = S_ptr + cs[None, None, :] + tl.zeros([NW], tl.int32)[None, :, None]
    rows3 = rows[:, :, None]
    acc = tl.zeros([ROWS, NW, CS], tl.float32)
    if PREFETCH:
        w0n = tl.load(w0p, mask=(cs < NCH)[None, None, :, None])
        if B1 > 0:
            w1n = tl.load(w1p, mask=(cs < NCH)[None, None, :, None])
    for c0 in range(0, NCH, CS):
        c = c0 + cs
        if PREFETCH:
            w0 = w0n
            w0n = tl.load(w0p + CS * WCH0, mask=(c + CS < NCH)[None, None, :, None])
            if B1 > 0:
                w1 = w1n
                w1n = tl.load(w1p + CS * WCH1, mask=(c + CS < NCH)[None, None, :, None])
        else:
            w0 = tl.load(w0p, mask=(c < NCH)[None, None, :, None])
            if B1 > 0:
                w1 = tl.load(w1p, mask=(c < NCH)[None, None, :, None])
        grp = tl.minimum(c // CPG, G - 1)[None, None, :]  # chunk lanes past NCH: any valid group
        s = tl.load(s_ptr + rows3 * G + grp)
        cz, m0 = centre(s, cq_ptr, m0_ptr, rows3, grp, G, G4, magic, MODE, BITS)
        if B1 > 0:  # 3 bits: lo + 4 hi, each plane centred on its part of c
            c_hi = tl.floor(cz * 0.25)
            part = _plane_dot(w0, x0p, magic, cz - 4.0 * c_hi, B0) + _plane_dot(w1, x1p, magic, c_hi, B1)
        else:
            part = _plane_dot(w0, x0p, magic, cz, B0)
        acc += part * s + m0 * tl.load(Sp)
        w0p += CS * WCH0
        x0p += CS * (32 // B0) * WCH0
        if B1 > 0:
            w1p += CS * WCH1
            x1p += CS * (32 // B1) * WCH1
        Sp += CS
    y = tl.sum(acc, axis=2)
    y = _lowrank_bias(y, rows, xa_ptr, B_ptr, bias_ptr, R, P, HAS_LR, HAS_BIAS, BLOCK_R)
    tl.store(y_ptr + rows, round_to(y, y_ptr.dtype.element_ty), mask=out_mask)
