"""Low-rank pre-pass ``xa = x A^T`` (spec stage 5): r values per token.

The GEMV / GEMM epilogue adds ``xa B^T``; computing ``xa`` once here instead of
in every output tile keeps A (``r x K``) from being re-read once per N tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import config
from .tiles import tile_matmul


@triton.jit
def _xa_kernel(
    x_ptr,
    A_ptr,
    xa_ptr,
    T,
    K,
    R,
    K_PER_SPLIT,
    SPLIT: tl.constexpr,
    USE_DOT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``xa[T, R] (fp32) = x[T, K] @ A[R, K]^T``.

    Grid ``(cdiv(T, BLOCK_T), cdiv(R, BLOCK_R), SPLIT)``: program (i, j, s) owns the
    ``[BLOCK_T, BLOCK_R]`` output tile and the s-th slice of K (K_PER_SPLIT, a
    multiple of BLOCK_K).  Tiles: x ``[BLOCK_T, BLOCK_K]``, A ``[BLOCK_K, BLOCK_R]``,
    fp32 accumulator.  Traffic: x read ``cdiv(R, BLOCK_R)`` times and A
    ``cdiv(T, BLOCK_T)`` times (once each for decode); 4 B written per output, with
    fp32 atomic adds into a zeroed ``xa`` when SPLIT > 1.
    """
    pid_t = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_k = tl.program_id(2)
    ts = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rs = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    tmask = ts < T
    rmask = rs < R
    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        x = tl.load(x_ptr + ts[:, None].to(tl.int64) * K + ks[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        a = tl.load(A_ptr + rs[None, :] * K + ks[:, None], mask=kmask[:, None] & rmask[None, :], other=0.0)
        acc += tile_matmul(x.to(tl.float32), a.to(tl.float32), USE_DOT, tl.float32, tl.float32)
    out = xa_ptr + ts[:, None] * R + rs[None, :]
    omask = tmask[:, None] & rmask[None, :]
    if SPLIT == 1:
        tl.store(out, acc, mask=omask)
    else:
        tl.atomic_add(out, acc, mask=omask)


def x_at(x: torch.Tensor, A: torch.Tensor, interpret: bool) -> torch.Tensor:
    """``x A^T`` in fp32: x ``[T, K]`` and A ``[r, K]`` (contiguous, any float dtype) -> ``[T, r]``."""
    T, K = x.shape
    R = A.shape[0]
    cfg = config.params("lowrank", x.device, interpret, T=T, K=K)
    use_dot = bool(cfg["USE_DOT"])
    lo = config.DOT_MIN if use_dot else 1
    BT = max(min(cfg["BLOCK_T"], config.triton_next_pow2(T)), lo)
    BR = max(min(cfg["BLOCK_R"], config.triton_next_pow2(R)), lo)
    BK = max(min(cfg["BLOCK_K"], config.triton_next_pow2(K)), lo)
    programs = triton.cdiv(T, BT) * triton.cdiv(R, BR)
    split = config.auto_split(cfg["SPLIT_K"], programs, triton.cdiv(K, BK), x.device)
    k_per = triton.cdiv(triton.cdiv(K, split), BK) * BK
    split = triton.cdiv(K, k_per)
    xa = (torch.zeros if split > 1 else torch.empty)(T, R, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(T, BT), triton.cdiv(R, BR), split)
    _xa_kernel[grid](
        x, A, xa, T, K, R, k_per,
        SPLIT=split, USE_DOT=use_dot, BLOCK_T=BT, BLOCK_R=BR, BLOCK_K=BK, num_warps=cfg["num_warps"],
        enable_fp_fusion=True,
    )  # fmt: skip
    return xa
