"""Stage 1 on the GPU: ``D_k = (c_k + lam * mean(c))^alpha``, ``c_k = ||x[:, k]||_p^2``.

Two launches: column sums of ``|x|^p`` over the tokens (`_colpow_kernel`, the
bulk of the traffic), then one program that needs every column -- the mean of
c -- and writes D (`_scale_kernel`).  Powers are ``exp2(p * log2|x|)``, with exact
fast paths for p = 1, 2 and inf; ``alpha`` in {0, 1} is exact too.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import config

# constexpr codes of p
P_GENERIC, P_ONE, P_TWO, P_INF = 0, 1, 2, 3


@triton.jit
def _pow0(a, e):
    """``a^e`` for ``a >= 0`` (or nan) and ``e > 0``, as ``exp2(e * log2 a)``; exactly 0 at a = 0."""
    return tl.where(a == 0, 0.0, tl.exp2(e * tl.log2(tl.where(a == 0, 1.0, a))))


@triton.jit
def _colpow_kernel(
    x_ptr,
    S_ptr,
    T,
    K,
    T_PER_SPLIT,
    p,
    P_MODE: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``S[k] = sum_t |x[t, k]|^p`` (max for p = inf), fp32 ``[K]``.

    Grid ``(cdiv(K, BLOCK_K), SPLIT)``: program (i, s) owns BLOCK_K columns and the
    s-th slice of tokens (T_PER_SPLIT rows, a multiple of BLOCK_T), walking it in
    ``[BLOCK_T, BLOCK_K]`` tiles.  Traffic: x read once (T*K elements), 4 B written
    per column (fp32 atomic adds into a zeroed S when SPLIT > 1; never for p = inf).
    """
    pid_k = tl.program_id(0)
    pid_t = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    nan_seen = tl.zeros([BLOCK_K], dtype=tl.int32)
    t_lo = pid_t * T_PER_SPLIT
    t_hi = tl.minimum(t_lo + T_PER_SPLIT, T)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = (ts < t_hi)[:, None] & kmask[None, :]
        a = tl.abs(tl.load(x_ptr + ts[:, None].to(tl.int64) * K + ks[None, :], mask=mask, other=0.0).to(tl.float32))
        if P_MODE == 3:
            # max drops nan on some targets: remember it separately
            nan_seen = tl.maximum(nan_seen, tl.max((a != a).to(tl.int32), axis=0))
            acc = tl.maximum(acc, tl.max(a, axis=0))
        else:
            if P_MODE == 2:
                v = a * a
            elif P_MODE == 1:
                v = a
            else:
                v = _pow0(a, p)
            acc += tl.sum(v, axis=0)
    if P_MODE == 3:
        acc = tl.where(nan_seen > 0, float("nan"), acc)
    if SPLIT == 1:
        tl.store(S_ptr + ks, acc, mask=kmask)
    else:
        tl.atomic_add(S_ptr + ks, acc, mask=kmask)


@triton.jit
def _c_from_sum(S, p, P_MODE: tl.constexpr):
    """``c = n^2`` from ``S = sum |x|^p``: ``S^(2/p)``."""
    if P_MODE == 2:
        c = S
    elif P_MODE == 1 or P_MODE == 3:
        c = S * S
    else:
        c = _pow0(S, 2.0 / p)
    return c


@triton.jit
def _scale_kernel(
    S_ptr,
    D_ptr,
    K,
    p,
    lam,
    alpha,
    P_MODE: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``D = clamp(c + lam * mean(c), tiny, max)^alpha`` from the column sums S.

    Grid ``(1,)``: the mean needs every column, so one program walks S twice in
    ``[BLOCK_K]`` tiles (sum of c, then D).  Traffic: 8 B read and 4 B written per
    column -- negligible next to x.  ``mean(c) == 0`` (all-zero x) gives D = 1; nan
    stays nan (comparisons with nan are false, so the clamp keeps it).
    ALPHA_MODE: 0 -> D = 1 (``pow(base, 0)``, even for nan), 1 -> D = base, 2 -> general.
    """
    total = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        S = tl.load(S_ptr + ks, mask=ks < K, other=0.0)
        total += _c_from_sum(S, p, P_MODE)
    mean = tl.sum(total, axis=0) / K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        c = _c_from_sum(tl.load(S_ptr + ks, mask=kmask, other=0.0), p, P_MODE)
        base = c + lam * mean
        # clamp to [fp32 tiny, fp32 max] (spec: D never 0 or inf)
        base = tl.where(base < 1.1754943508222875e-38, 1.1754943508222875e-38, base)
        base = tl.where(base > 3.4028234663852886e38, 3.4028234663852886e38, base)
        if ALPHA_MODE == 0:
            D = tl.full([BLOCK_K], 1.0, tl.float32)
        elif ALPHA_MODE == 1:
            D = base
        else:
            D = tl.exp2(alpha * tl.log2(base))
        D = tl.where(mean == 0, 1.0, D)
        tl.store(D_ptr + ks, D, mask=kmask)


def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float, interpret: bool) -> torch.Tensor:
    """``D`` fp32 ``[K]`` for x ``[T, K]`` (contiguous, fp32/fp16/bf16, T >= 1)."""
    T, K = x.shape
    if math.isinf(p):
        p_mode = P_INF
    else:
        p_mode = {1.0: P_ONE, 2.0: P_TWO}.get(float(p), P_GENERIC)
    cfg = config.params("act_scale", x.device, interpret, T=T, K=K)
    BT = min(cfg["BLOCK_T"], config.triton_next_pow2(T))
    BK = min(cfg["BLOCK_K"], config.triton_next_pow2(K))
    col_blocks = triton.cdiv(K, BK)
    # p = inf reduces with max, which has no portable float atomic: never split
    split = 1 if p_mode == P_INF else config.auto_split(cfg["SPLIT_T"], col_blocks, triton.cdiv(T, BT), x.device)
    t_per = triton.cdiv(triton.cdiv(T, split), BT) * BT
    split = triton.cdiv(T, t_per)
    S = (torch.zeros if split > 1 else torch.empty)(K, dtype=torch.float32, device=x.device)
    p_arg = 1.0 if p_mode == P_INF else float(p)
    _colpow_kernel[(col_blocks, split)](
        x,
        S,
        T,
        K,
        t_per,
        p_arg,
        P_MODE=p_mode,
        SPLIT=split,
        BLOCK_T=BT,
        BLOCK_K=BK,
        num_warps=cfg["num_warps"],
        enable_fp_fusion=False,
    )
    D = torch.empty(K, dtype=torch.float32, device=x.device)
    alpha_mode = 0 if alpha == 0 else (1 if alpha == 1 else 2)
    _scale_kernel[(1,)](
        S,
        D,
        K,
        p_arg,
        float(lam),
        float(alpha),
        P_MODE=p_mode,
        ALPHA_MODE=alpha_mode,
        BLOCK_K=min(1024, config.triton_next_pow2(K)),
        num_warps=4,
        enable_fp_fusion=False,
    )  # fmt: skip  (no FMA contraction: c + lam * mean rounds as in the reference)
    return D
