"""Host side of ``qmatmul``: pick the decode (`gemv`) or prefill (`gemm`) kernel and launch it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...format import PackedWeight
from . import config
from .gemm import _gemm_kernel
from .gemv import _gemv_kernel
from .lowrank import x_at

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None,
    A: torch.Tensor | None,
    B: torch.Tensor | None,
    bias: torch.Tensor | None,
    interpret: bool,
) -> torch.Tensor:
    """``y = (x / D) Wq'^T + (x A^T) B^T + bias``: x ``[T, K]`` -> ``[T, N]`` in x.dtype.

    Inputs are contiguous (validated by `ttqkern.ops`); D fp32 ``[K]``, A ``[r, K]``,
    B ``[N, r]``, bias ``[N]`` or None.  T <= ``config.DECODE_MAX_T`` runs the
    split-K GEMV, larger T the tiled GEMM; ``x A^T`` is a pre-pass (`lowrank`).
    """
    T, K = x.shape
    N = pw.N
    g, G = pw.group_size, pw.num_groups
    R = 0 if A is None else A.shape[0]
    xa = x_at(x, A, interpret) if R else None
    round_dt = _TL_DTYPES[x.dtype]
    # Triton 3.9's interpreter multiplies bf16 dot operands as raw uint16: keep them in fp32 there
    dot_dt = tl.float32 if (interpret and x.dtype == torch.bfloat16) else round_dt
    # a PackedWeight built by hand may hold views: the kernels index its planes densely
    qw = pw.qweight.contiguous()
    qhi = pw.qweight_hi.contiguous() if pw.qweight_hi is not None else qw
    scales = pw.scales.contiguous()
    zp = pw.mins if pw.mins is not None else pw.zeros if pw.zeros is not None else scales
    args = (
        x,
        D if D is not None else scales,
        qw,
        qhi,
        scales,
        zp.contiguous(),
        xa if xa is not None else scales,
        B if B is not None else scales,
        bias if bias is not None else scales,
    )  # fmt: skip  (unused pointer arguments get any tensor: their flags are off)
    strides = (qw.stride(0), qhi.stride(0))
    flags = dict(BITS=pw.bits, MODE=int(pw.form), HAS_D=D is not None, HAS_LR=xa is not None,
                 HAS_BIAS=bias is not None, ROUND_DT=round_dt, DOT_DT=dot_dt)  # fmt: skip
    shape = dict(bits=pw.bits, group=g, T=T, N=N, K=K)

    if T <= config.DECODE_MAX_T:
        cfg = config.params("gemv", x.device, interpret, **shape)
        use_dot = bool(cfg["USE_DOT"])
        lo = config.DOT_MIN if use_dot else 1
        BT = max(config.triton_next_pow2(T), lo)
        BN = max(min(cfg["BLOCK_N"], config.triton_next_pow2(N)), lo)
        BK, aligned = config.fit_block_k(cfg["BLOCK_K"], g, K, lo)
        BR = max(min(cfg["BLOCK_R"], config.triton_next_pow2(max(R, 1))), lo)
        n_tiles = triton.cdiv(N, BN) * triton.cdiv(T, BT)
        split = config.auto_split(cfg["SPLIT_K"], n_tiles, triton.cdiv(K, BK), x.device)
        k_per = triton.cdiv(triton.cdiv(K, split), BK) * BK
        split = triton.cdiv(K, k_per)
        y = torch.zeros(T, N, dtype=torch.float32, device=x.device) if split > 1 else x.new_empty(T, N)
        grid = (triton.cdiv(N, BN), split, triton.cdiv(T, BT))
        _gemv_kernel[grid](
            *args, y, T, N, K, G, g, R, *strides, k_per, **flags, ALIGNED=aligned, USE_DOT=use_dot, SPLIT=split,
            BLOCK_T=BT, BLOCK_N=BN, BLOCK_K=BK, BLOCK_R=BR, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            enable_fp_fusion=True,
        )  # fmt: skip
        return y.to(x.dtype)

    cfg = config.params("gemm", x.device, interpret, **shape)
    lo = config.DOT_MIN
    BT = max(min(cfg["BLOCK_T"], config.triton_next_pow2(T)), lo)
    BN = max(min(cfg["BLOCK_N"], config.triton_next_pow2(N)), lo)
    BK, aligned = config.fit_block_k(cfg["BLOCK_K"], g, K, lo)
    BR = max(min(cfg["BLOCK_R"], config.triton_next_pow2(max(R, 1))), lo)
    y = x.new_empty(T, N)
    grid = (triton.cdiv(T, BT) * triton.cdiv(N, BN),)
    _gemm_kernel[grid](
        *args, y, T, N, K, G, g, R, *strides, **flags, ALIGNED=aligned, GROUP_T=cfg["GROUP_T"],
        BLOCK_T=BT, BLOCK_N=BN, BLOCK_K=BK, BLOCK_R=BR, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        enable_fp_fusion=True,
    )  # fmt: skip
    return y
