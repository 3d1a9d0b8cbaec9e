"""Decode qmatmul (T <= 16 tokens): ``y = (x / D) Wq'^T + (x A^T) B^T + b``, split-K GEMV.

Decode is memory-bound: the kernel's job is to stream the packed weight once at
full bandwidth.  x (a few KB) is loaded once per program and K-tile, divided by
D on the fly (the TTQ prologue, never materialised), codes are multiplied in
registers, and each output tile gets its groups' scales and offsets through the
per-group sums of ``x / D``.  When N is small, split-K gives every SM work: each
K slice adds its partial sums to a zeroed fp32 output with atomic adds.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import lowrank_bias_epilogue, qmm_accumulate, round_to


@triton.jit
def _gemv_kernel(
    x_ptr,
    D_ptr,
    qw_ptr,
    qhi_ptr,
    s_ptr,
    zp_ptr,
    xa_ptr,
    B_ptr,
    bias_ptr,
    y_ptr,
    T,
    N,
    K,
    G,
    g,
    R,
    stride_qw,
    stride_qhi,
    K_PER_SPLIT,
    BITS: tl.constexpr,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_LR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ALIGNED: tl.constexpr,
    USE_DOT: tl.constexpr,
    ROUND_DT: tl.constexpr,
    DOT_DT: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Packed GEMV / skinny GEMM with the TTQ prologue and epilogue fused.

    Grid ``(cdiv(N, BLOCK_N), SPLIT, cdiv(T, BLOCK_T))``: program (i, s, j) owns
    output rows ``[i*BLOCK_N, +BLOCK_N)`` for tokens ``[j*BLOCK_T, +BLOCK_T)`` (one
    token block for decode) and the s-th K slice (K_PER_SPLIT, a multiple of
    BLOCK_K).  Tiles per step: x ``[BLOCK_T, BLOCK_K]`` (divided by D), codes
    ``[BLOCK_K, BLOCK_N]`` unpacked from bytes, one scale + offset per row and
    group, fp32 accumulator ``[BLOCK_T, BLOCK_N]``; the K-slice-0 programs add
    ``xa B^T + bias``.  Traffic: packed weight read once (``N*K*b/8`` B plus 8 B
    per group), x and D once per N tile (from L2 after the first), y written once
    (``T*N`` values, fp32 atomic adds into a zeroed buffer when SPLIT > 1).
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_t = tl.program_id(2)
    ts = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = qmm_accumulate(
        acc, x_ptr, D_ptr, qw_ptr, qhi_ptr, s_ptr, zp_ptr, ts, rows, k_lo, k_hi, T, N, K, G, g,
        stride_qw, stride_qhi, BITS, MODE, HAS_D, ALIGNED, USE_DOT, ROUND_DT, DOT_DT, BLOCK_K, BLOCK_N,
    )  # fmt: skip
    if pid_k == 0:
        acc = lowrank_bias_epilogue(acc, xa_ptr, B_ptr, bias_ptr, ts, rows, T, N, R, HAS_LR, HAS_BIAS, USE_DOT, BLOCK_R)
    out = y_ptr + ts[:, None].to(tl.int64) * N + rows[None, :]
    omask = (ts < T)[:, None] & (rows < N)[None, :]
    if SPLIT == 1:
        tl.store(out, round_to(acc, y_ptr.dtype.element_ty), mask=omask)
    else:
        tl.atomic_add(out, acc, mask=omask)
