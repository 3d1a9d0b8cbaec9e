"""Packed GEMM on tensor cores for 2 <= T tokens: decode (T <= 16) and prefill.

``y = x~ Wq'^T + (x A^T) B^T + b`` with the spec's decomposition per chunk c of
CCD codes inside one group:  ``y += s_c * (x~_c . u_c) + m_c * S_c``.  The codes u
are small integers, exact in fp16 / bf16, so the tensor cores multiply them with
the x~ the prologue rounded to the activation dtype; the group scale s and the
offset m (times the chunk sums S of the same rounded x~) are applied to the fp32
accumulator once per chunk, not per code.

Per chunk: the packed words of BLOCK_N rows ``[BLOCK_N, CCD * b / 32]`` (16-byte
loads), unpacked by `unpack.pair_codes_tile` (fp16 / bf16 activations: a shift,
a LOP3 and a HADD2 per two codes, in the prologue's pair order) or
`unpack.codes_tile` (fp32, 8-bit bf16, 3 bits as ``lo + 4 * hi``: a LOP3 and an
FADD per code); never I2F.  x~ ``[BLOCK_T, CCD]`` from the prologue's dot layout,
one ``tl.dot``.  SWAP computes ``u @ x~^T`` (BLOCK_N is
the MMA's M: on Hopper a warpgroup MMA with the dequantized tile as the register
operand) instead of ``x~ @ u^T``.  The dequantized tile still passes through
shared memory on its way to the MMA operand layout (Triton converts it there).

Grid ``(cdiv(T, BLOCK_T) * cdiv(N, BLOCK_N), SPLIT)`` with tiles in bands of
GROUP_T token tiles (consecutive programs share weight tiles in L2).  SPLIT > 1
(decode with few row tiles) splits the chunks into SPLIT ranges; each program
stores its fp32 partial tile, and the last of a tile's programs to arrive
(a per-tile counter, `semaphore`, which it resets to 0) sums the partials in
split order -- deterministic, no zeroed buffer, no extra launch.  Traffic: the packed weight read
``cdiv(T, BLOCK_T)`` times (once for decode), x~ ``cdiv(N, BLOCK_N)`` times (L2),
y written once in x's dtype; ``2 * T * N * K`` flops.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .forms import centre
from .unpack import codes_tile, load_magic, pair_codes_tile, round_to


@triton.jit
def chunk_codes(q0_ptr, q1_ptr, rows, c, NCH, magic, mag16, cz, B0: tl.constexpr, B1: tl.constexpr,
                WPC0: tl.constexpr, WPC1: tl.constexpr, PAIR: tl.constexpr, OFF: tl.constexpr,
                DOT_DT: tl.constexpr):  # fmt: skip
    """Centred codes ``u - cz`` of chunk c of ``rows``: ``[BLOCK_N, CCD]`` in DOT_DT, exact.

    cz ``[BLOCK_N]`` fp32: each row's zero code for this chunk's group; pair order if PAIR
    (OFF: the 16-bit magic's value); 3 bits: ``lo + 4 * hi``.
    """
    w0 = tl.load(q0_ptr + (rows.to(tl.int64) * NCH * WPC0 + c * WPC0)[:, None] + tl.arange(0, WPC0)[None, :])
    if B1 > 0:
        w1 = tl.load(q1_ptr + (rows.to(tl.int64) * NCH * WPC1 + c * WPC1)[:, None] + tl.arange(0, WPC1)[None, :])
        u = codes_tile(w0, magic, B0, tl.float32) + 4.0 * codes_tile(w1, magic, B1, tl.float32)
        return (u - cz[:, None]).to(DOT_DT)
    elif PAIR:
        return pair_codes_tile(w0, mag16, (cz + OFF).to(DOT_DT)[:, None], B0, DOT_DT)
    else:
        return (codes_tile(w0, magic, B0, tl.float32) - cz[:, None]).to(DOT_DT)


@triton.jit
def _add_lowrank(acc, ts, rows, xa_ptr, B_ptr, T, R, P, TRANSPOSED: tl.constexpr, DOT_DT: tl.constexpr,
                 IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """``acc += xa B^T`` on the tensor cores, in acc's own orientation (TRANSPOSED: acc is
    ``[BLOCK_N, BLOCK_T]``), so the MMA accumulates into it without a layout change.

    xa is the sum of the prologue's partials of ``x A^T``; with 16-bit activations xa and
    B are rounded to DOT_DT for the MMA (an fp32 MMA of a 128 x 128 tile spills).
    """
    rs = tl.arange(0, BLOCK_R)
    rm = rs < R
    xa = tl.zeros([BLOCK_T, BLOCK_R], tl.float32)
    for p in range(0, P):
        xa += tl.load(xa_ptr + (p * T + ts)[:, None] * R + rs[None, :], mask=rm[None, :], other=0.0)
    b = tl.load(B_ptr + rows[:, None].to(tl.int64) * R + rs[None, :], mask=rm[None, :], other=0.0)
    if IEEE:
        if TRANSPOSED:
            acc = tl.dot(b.to(tl.float32), tl.trans(xa), acc, input_precision="ieee")
        else:
            acc = tl.dot(xa, tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
    else:
        if TRANSPOSED:
            acc = tl.dot(b.to(DOT_DT), tl.trans(xa.to(DOT_DT)), acc)
        else:
            acc = tl.dot(xa.to(DOT_DT), tl.trans(b.to(DOT_DT)), acc)
    return acc


@triton.jit
def _store(acc, ts, rows, tmask, rmask, bias_ptr, y_ptr, N, HAS_BIAS: tl.constexpr):
    """``y[ts, rows] = acc + bias`` in y's dtype (acc ``[BLOCK_T, BLOCK_N]`` fp32)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows).to(tl.float32)[None, :]
    dst = y_ptr + ts[:, None].to(tl.int64) * N + rows[None, :]
    tl.store(dst, round_to(acc, y_ptr.dtype.element_ty), mask=tmask[:, None] & rmask[None, :])


@triton.jit
def _qdot_kernel(
    magic_ptr, q0_ptr, q1_ptr, s_ptr, cq_ptr, m0_ptr, xt_ptr, S_ptr, xa_ptr, B_ptr, bias_ptr, y_ptr, part_ptr,
    sem_ptr, T, N, G, G4, NCH, NCHP, R, P, CH_PER_SPLIT,
    BITS: tl.constexpr, MODE: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, WPC0: tl.constexpr,
    WPC1: tl.constexpr, CPG: tl.constexpr, CCD: tl.constexpr, HAS_LR: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_DT: tl.constexpr, IEEE: tl.constexpr, PAIR: tl.constexpr, MAG16: tl.constexpr, OFF: tl.constexpr,
    SWAP: tl.constexpr,
    DEQ_TILE: tl.constexpr, SPLIT: tl.constexpr, GROUP_T: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Tensor-core packed GEMM (see the module docstring); y ``[T, N]`` in its own dtype.

    q0 / q1: word planes ``[N, NCH * WPC]``; xt: x~ ``[T, NCHP * CCD]`` (DOT_DT
    storage); S ``[T, NCHP]``; xa ``[P, T, R]`` partials of ``x A^T``; part: fp32
    ``[SPLIT, T, N]`` partial tiles and sem: int32 per-tile counters (all 0 between
    calls), used when SPLIT > 1.  MAG16: index of the 16-bit magic in the constant
    buffer (1: fp16, 2: bf16).  DEQ_TILE (prefill, 16-bit activations): the tile is
    dequantized in registers, ``w = u * s + m`` in DOT_DT, and accumulated by the MMA
    across chunks -- no per-chunk rescaling of a large accumulator (which would
    cost more issue slots than the MMAs save) and no chunk sums; the weights are
    rounded to the activation dtype, as the dequantize + cuBLAS fallback does.
    """
    magic = load_magic(magic_ptr)
    mag16 = tl.load(magic_ptr + MAG16)
    pid = tl.program_id(0)
    sk = tl.program_id(1)
    n_t = tl.cdiv(T, BLOCK_T)
    n_n = tl.cdiv(N, BLOCK_N)
    per_band = GROUP_T * n_n
    band = pid // per_band
    first_t = band * GROUP_T
    band_t = tl.minimum(n_t - first_t, GROUP_T)
    pid_t = first_t + (pid % per_band) % band_t
    pid_n = (pid % per_band) // band_t
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ts = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < N
    tmask = ts < T
    rows = tl.minimum(rows, N - 1)
    ts = tl.minimum(ts, T - 1)  # tokens past T re-read token T-1 (never stored)
    xp = xt_ptr + (ts.to(tl.int64) * NCHP * CCD)[:, None] + tl.arange(0, CCD)[None, :]
    Sp = S_ptr + ts.to(tl.int64) * NCHP
    srow = rows * G
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_T], tl.float32)
    else:
        acc = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
    c_lo = sk * CH_PER_SPLIT
    c_hi = tl.minimum(c_lo + CH_PER_SPLIT, NCH)
    for c in range(c_lo, c_hi):
        grp = c // CPG
        s = tl.load(s_ptr + srow + grp)
        cz, m0 = centre(s, cq_ptr, m0_ptr, rows, grp, G, G4, magic, MODE, BITS)
        u = chunk_codes(q0_ptr, q1_ptr, rows, c, NCH, magic, mag16, cz, B0, B1, WPC0, WPC1, PAIR, OFF, DOT_DT)
        x = tl.load(xp + c * CCD).to(DOT_DT)
        if DEQ_TILE:  # centred: s * (u - c) + m0 (docs/numerics.md Q1)
            w = u * s.to(DOT_DT)[:, None] + m0.to(DOT_DT)[:, None]
            if SWAP:
                acc = tl.dot(w, tl.trans(x), acc)
            else:
                acc = tl.dot(x, tl.trans(w), acc)
        else:
            S = tl.load(Sp + c)
            if SWAP:
                if IEEE:
                    part = tl.dot(u, tl.trans(x), input_precision="ieee")
                else:
                    part = tl.dot(u, tl.trans(x))
                acc += part * s[:, None] + m0[:, None] * S[None, :]
            else:
                if IEEE:
                    part = tl.dot(x, tl.trans(u), input_precision="ieee")
                else:
                    part = tl.dot(x, tl.trans(u))
                acc += part * s[None, :] + S[:, None] * m0[None, :]
    if SPLIT == 1:
        if HAS_LR:
            acc = _add_lowrank(acc, ts, rows, xa_ptr, B_ptr, T, R, P, SWAP, DOT_DT, IEEE, BLOCK_T, BLOCK_R)
        if SWAP:
            _store(tl.trans(acc), ts, rows, tmask, rmask, bias_ptr, y_ptr, N, HAS_BIAS)
        else:
            _store(acc, ts, rows, tmask, rmask, bias_ptr, y_ptr, N, HAS_BIAS)
    else:
        if SWAP:
            out = tl.trans(acc)
        else:
            out = acc
        omask = tmask[:, None] & rmask[None, :]
        cell = ts[:, None].to(tl.int64) * N + rows[None, :]
        tl.store(part_ptr + sk * T * N + cell, out, mask=omask)
        tl.debug_barrier()  # every thread's partial is written before the counter is released
        arrived = tl.atomic_add(sem_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:  # the last program of this tile: sum the partials in split order
            tot = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
            for i in range(0, SPLIT):
                tot += tl.load(part_ptr + i * T * N + cell, mask=omask, other=0.0, cache_modifier=".cg")
            if HAS_LR:
                tot = _add_lowrank(tot, ts, rows, xa_ptr, B_ptr, T, R, P, False, DOT_DT, IEEE, BLOCK_T, BLOCK_R)
            _store(tot, ts, rows, tmask, rmask, bias_ptr, y_ptr, N, HAS_BIAS)
            tl.atomic_xchg(sem_ptr + pid, 0, sem="relaxed", scope="gpu")  # ready for the next call
