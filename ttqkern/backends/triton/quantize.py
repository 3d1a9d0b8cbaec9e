"""Stages 2-3 on the GPU: scale W by D, groupwise min/max, round, pack -- one kernel.

A program owns a ``[BLOCK_N, C * g]`` chunk of W: C whole groups, with C the
smallest count that makes the chunk a whole number of bytes in every plane
(``C * g % 8 == 0``, so C = 1 for the usual g = 32, 64, 128, -1 on real shapes).
It computes each group's statistics, then the codes, and writes finished bytes of
the canonical layout (`ttqkern.format`) itself: no intermediate code tensor.

The math mirrors `ttqkern.reference.quantize` operation by operation (same
expressions, IEEE division, no FMA contraction, round-half-to-even), so the codes
agree except where fp reassociation moves a value across a .5 boundary.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...format import PackedWeight, num_groups, packed_bytes
from ...quant import QuantFormat
from . import config
from .forms import MODE_FLOAT, MODE_INT

ROUND_MAGIC = 8388608.0  # 2^23: fp32 values at or above it are integers


@triton.jit
def rint(v):
    """Round half to even, like ``torch.round``, for fp32 -- portably.

    For ``0 <= a < 2^23``, ``a + 2^23`` lands where the fp32 spacing is 1, so the
    addition itself rounds to the nearest integer with ties to even; subtracting
    2^23 again is exact.  No libdevice ``rint`` (not available to the interpreter
    or every target).  inf / nan pass through.
    """
    a = tl.abs(v)
    r = (a + 8388608.0) - 8388608.0
    r = tl.where(a >= 8388608.0, a, r)
    return tl.where(v < 0, -r, r)


@triton.jit
def _load_scaled(W_ptr, D_ptr, rows, rmask, pos, valid, K, HAS_D: tl.constexpr):
    """``W'[rows, pos] = W * D`` as fp32 ``[BLOCK_N, BLOCK_K]`` (0 where masked)."""
    w = tl.load(W_ptr + rows[:, None].to(tl.int64) * K + pos[None, :], mask=rmask[:, None] & valid[None, :], other=0.0)
    w = w.to(tl.float32)
    if HAS_D:
        w = w * tl.load(D_ptr + pos, mask=valid, other=1.0)[None, :]
    return w


@triton.jit
def _tile_stats(w, sel):
    """Per-group min, max, max|w|, any-nan, any-non-finite of ``w [BN, BK]`` -> ``[BN, C]`` each.

    ``sel [1, C, BK]`` marks the columns of each group.  ``tl.min``/``tl.max`` may
    drop nan on some targets, so nan and inf are detected with comparisons.
    """
    w3 = w[:, None, :]
    mn = tl.min(tl.where(sel, w3, float("inf")), axis=2)
    mx = tl.max(tl.where(sel, w3, float("-inf")), axis=2)
    amax = tl.max(tl.where(sel, tl.abs(w3), 0.0), axis=2)
    has_nan = tl.max(tl.where(sel & (w3 != w3), 1, 0), axis=2)
    nonfinite = tl.max(tl.where(sel & ~(tl.abs(w3) < float("inf")), 1, 0), axis=2)
    return mn, mx, amax, has_nan, nonfinite


@triton.jit
def _expand(v, onehot, C: tl.constexpr):
    """Per-group ``v [BN, C]`` -> per-column ``[BN, BK]`` (``onehot [1, C, BK]``)."""
    if C == 1:
        return v
    else:
        return tl.sum(tl.where(onehot, v[:, :, None], 0.0), axis=1)


@triton.jit
def _pack_store(
    u, out_ptr, rows, rmask, first_pos, n_pos, row_bytes, NB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Pack ``u [BN, BK]`` (codes of positions ``first_pos + i``, < 2^NB) into bytes.

    Little-endian inside a byte (element i at bits ``[i*NB, (i+1)*NB)``); a byte is
    written when its first position is among the ``n_pos`` this program owns and
    it lies inside the row.  ``first_pos`` is a multiple of ``8 / NB``.
    """
    PER: tl.constexpr = 8 // NB
    if PER == 1:
        byte = u
    else:
        u3 = tl.reshape(u, [BLOCK_N, BLOCK_K // PER, PER])
        byte = tl.sum(u3 << (tl.arange(0, PER) * NB)[None, None, :], axis=2)
    lb = tl.arange(0, BLOCK_K // PER)
    bidx = first_pos // PER + lb
    bmask = rmask[:, None] & ((lb * PER < n_pos) & (bidx < row_bytes))[None, :]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * row_bytes + bidx[None, :], byte.to(tl.uint8), mask=bmask)


@triton.jit
def _emit(
    w,
    valid,
    onehot,
    s,
    mn,
    z,
    qw_ptr,
    qhi_ptr,
    rows,
    rmask,
    first_pos,
    n_pos,
    row_bytes,
    row_bytes_hi,
    BITS: tl.constexpr,
    MODE: tl.constexpr,
    C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Codes of one ``[BN, BK]`` tile from its groups' parameters, packed and stored."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    QPOS: tl.constexpr = (1 << (BITS - 1)) - 1
    s_c = _expand(s, onehot, C)
    if MODE == 0:
        q = rint(tl.math.div_rn(w - _expand(mn, onehot, C), s_c))
        q = tl.where(q < 0, 0.0, tl.where(q > LEVELS, LEVELS, q))
    elif MODE == 1:
        q = rint(tl.math.div_rn(w, s_c)) + _expand(z, onehot, C)
        q = tl.where(q < 0, 0.0, tl.where(q > LEVELS, LEVELS, q))
    else:
        q = rint(tl.math.div_rn(w, s_c))
        q = tl.where(q < -QPOS, -QPOS, tl.where(q > QPOS, QPOS, q))
    q = tl.where(q == q, q, 0.0)  # nan_to_num, as the reference
    u = q.to(tl.int32)
    if MODE == 2:
        u += 1 << (BITS - 1)
    u = tl.where(valid[None, :], u, 0)  # codes past K are 0
    if BITS == 3:
        _pack_store(u & 3, qw_ptr, rows, rmask, first_pos, n_pos, row_bytes, 2, BLOCK_N, BLOCK_K)
        _pack_store(u >> 2, qhi_ptr, rows, rmask, first_pos, n_pos, row_bytes_hi, 1, BLOCK_N, BLOCK_K)
    else:
        _pack_store(u, qw_ptr, rows, rmask, first_pos, n_pos, row_bytes, BITS, BLOCK_N, BLOCK_K)


@triton.jit
def _quantize_kernel(
    W_ptr,
    D_ptr,
    qw_ptr,
    qhi_ptr,
    s_ptr,
    zp_ptr,
    N,
    K,
    G,
    g,
    row_bytes,
    row_bytes_hi,
    beta,
    BITS: tl.constexpr,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr,
    C: tl.constexpr,
    NUM_SUB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Quantize and pack ``W [N, K] * D`` into the canonical planes, scales and mins/zeros.

    Grid ``(cdiv(N, BLOCK_N), cdiv(G, C))``: program (i, c) owns rows
    ``[i*BLOCK_N, +BLOCK_N)`` and groups ``[c*C, +C)``, i.e. ``L = C*g`` positions
    from ``c*C*g`` (byte aligned).  Tiles: W' ``[BLOCK_N, BLOCK_K]`` (fp32, W times
    D) over the chunk's positions; group statistics ``[BLOCK_N, C]``.  If the chunk
    fits one tile (NUM_SUB == 1) it stays in registers between the statistics and
    the codes; otherwise the chunk is read twice, the second time from cache.
    Traffic: W read once from memory (N*K elements), D once per program (cached),
    ``b/8`` B written per weight plus 8 B per group (scale, min / zero).
    """
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    j0 = pid_c * C
    start = j0 * g
    L = C * g
    cidx = tl.arange(0, C)
    LEVELS: tl.constexpr = (1 << BITS) - 1
    QPOS: tl.constexpr = (1 << (BITS - 1)) - 1

    # pass 1: group statistics
    if NUM_SUB == 1:
        loc = tl.arange(0, BLOCK_K)
        valid = (loc < L) & (start + loc < K)
        onehot = ((loc // g)[None, None, :] == cidx[None, :, None]) & valid[None, None, :]
        w = _load_scaled(W_ptr, D_ptr, rows, rmask, start + loc, valid, K, HAS_D)
        mn, mx, amax, has_nan, nonfinite = _tile_stats(w, onehot)
    else:
        mn = tl.full([BLOCK_N, C], float("inf"), tl.float32)
        mx = tl.full([BLOCK_N, C], float("-inf"), tl.float32)
        amax = tl.zeros([BLOCK_N, C], dtype=tl.float32)
        has_nan = tl.zeros([BLOCK_N, C], dtype=tl.int32)
        nonfinite = tl.zeros([BLOCK_N, C], dtype=tl.int32)
        for sub in range(NUM_SUB):
            loc = sub * BLOCK_K + tl.arange(0, BLOCK_K)
            valid = (loc < L) & (start + loc < K)
            onehot = ((loc // g)[None, None, :] == cidx[None, :, None]) & valid[None, None, :]
            w = _load_scaled(W_ptr, D_ptr, rows, rmask, start + loc, valid, K, HAS_D)
            t_mn, t_mx, t_amax, t_nan, t_bad = _tile_stats(w, onehot)
            mn = tl.minimum(mn, t_mn)
            mx = tl.maximum(mx, t_mx)
            amax = tl.maximum(amax, t_amax)
            has_nan = tl.maximum(has_nan, t_nan)
            nonfinite = tl.maximum(nonfinite, t_bad)

    # group parameters, expression by expression as reference.quantize
    # (torch.amin / amax propagate nan: restore it where min / max may have dropped it)
    z = tl.zeros([BLOCK_N, C], dtype=tl.float32)
    if MODE == 2:
        amax = tl.where(has_nan > 0, float("nan"), amax) * beta
        s = tl.where(amax > 0, tl.math.div_rn(amax, tl.full([BLOCK_N, C], QPOS, tl.float32)), 1.0)
    else:
        mn = tl.where(has_nan > 0, float("nan"), mn)
        mx = tl.where(has_nan > 0, float("nan"), mx)
        centre = (mx + mn) * 0.5  # = / 2 exactly, without relying on the target's division
        half = (mx - mn) * 0.5 * beta
        mn = centre - half
        mx = centre + half
        s = tl.math.div_rn(mx - mn, tl.full([BLOCK_N, C], LEVELS, tl.float32))
        if MODE == 0:
            s = tl.where(s > 0, s, 1.0)  # constant group: q = 0, w = mn exactly
        else:
            s = tl.where(s > 0, s, tl.where(mn != 0, tl.abs(mn), 1.0))
            z = rint(tl.math.div_rn(-mn, s))

    gidx = rows[:, None] * G + (j0 + cidx)[None, :]
    gmask = rmask[:, None] & (j0 + cidx < G)[None, :]
    # a group with a non-finite value gets a nan scale: it can never give a finite output
    tl.store(s_ptr + gidx, tl.where(nonfinite > 0, float("nan"), s), mask=gmask)
    if MODE == 0:
        tl.store(zp_ptr + gidx, mn, mask=gmask)
    elif MODE == 1:
        tl.store(zp_ptr + gidx, tl.where(z == z, z, 0.0).to(tl.int32), mask=gmask)

    # pass 2: codes, packed
    if NUM_SUB == 1:
        _emit(w, valid, onehot, s, mn, z, qw_ptr, qhi_ptr, rows, rmask, start, L,
              row_bytes, row_bytes_hi, BITS, MODE, C, BLOCK_N, BLOCK_K)  # fmt: skip
    else:
        for sub in range(NUM_SUB):
            loc = sub * BLOCK_K + tl.arange(0, BLOCK_K)
            valid = (loc < L) & (start + loc < K)
            onehot = ((loc // g)[None, None, :] == cidx[None, :, None]) & valid[None, None, :]
            w = _load_scaled(W_ptr, D_ptr, rows, rmask, start + loc, valid, K, HAS_D)
            _emit(w, valid, onehot, s, mn, z, qw_ptr, qhi_ptr, rows, rmask, start + sub * BLOCK_K, L - sub * BLOCK_K,
                  row_bytes, row_bytes_hi, BITS, MODE, C, BLOCK_N, BLOCK_K)  # fmt: skip


def quantize(W: torch.Tensor, D: torch.Tensor | None, fmt: QuantFormat, interpret: bool) -> PackedWeight:
    """Canonical `PackedWeight` of ``W [N, K] * D`` (W contiguous float, D fp32 ``[K]`` or None).

    ``fmt`` is resolved (group_size > 0); scales fp32, mins fp32 / zeros int32.
    """
    N, K = W.shape
    bits, g, beta = fmt.bits, fmt.group_size, fmt.beta
    G = num_groups(K, g)
    Kp = G * g
    mode = int(fmt.form)
    C = 8 // math.gcd(g, 8)  # groups per program: a whole number of bytes in every plane
    L = C * g
    cfg = config.params("quantize", W.device, interpret, bits=bits, group=g, N=N, K=K)
    BK = max(8, min(cfg["BLOCK_K"], config.triton_next_pow2(L)))
    BN = min(cfg["BLOCK_N"], config.triton_next_pow2(N))
    dev = W.device
    qweight = torch.empty(N, packed_bytes(Kp, 2 if bits == 3 else bits), dtype=torch.uint8, device=dev)
    hi = torch.empty(N, packed_bytes(Kp, 1), dtype=torch.uint8, device=dev) if bits == 3 else None
    scales = torch.empty(N, G, dtype=torch.float32, device=dev)
    mins = torch.empty(N, G, dtype=torch.float32, device=dev) if mode == MODE_FLOAT else None
    zeros = torch.empty(N, G, dtype=torch.int32, device=dev) if mode == MODE_INT else None
    zp = mins if mins is not None else zeros if zeros is not None else scales  # unused by the symmetric form
    grid = (triton.cdiv(N, BN), triton.cdiv(G, C))
    _quantize_kernel[grid](
        W, D if D is not None else W, qweight, hi if hi is not None else qweight, scales, zp,
        N, K, G, g, qweight.shape[1], hi.shape[1] if hi is not None else 0, float(beta),
        BITS=bits, MODE=mode, HAS_D=D is not None, C=C, NUM_SUB=triton.cdiv(L, BK), BLOCK_N=BN, BLOCK_K=BK,
        num_warps=cfg["num_warps"], enable_fp_fusion=False,
    )  # fmt: skip
    offsets = mins if mins is not None else zeros
    return PackedWeight.build(fmt, (N, K), qweight=qweight, qweight_hi=hi, scales=scales, offsets=offsets)
