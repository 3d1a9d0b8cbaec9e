"""Stage 1 on the GPU: ``D_k = (c_k + lam * mean(c))^alpha``, ``c_k = ||x[:, k]||_p^2``.

Two launches: column norms over the tokens as (column max, sum of ``(|x| / max)^p``)
partials per token slice (`_colpow_kernel`, the bulk of the traffic), then one
program that needs every column -- the mean of c -- and writes D (`_scale_kernel`).
Powers are ``exp2(p * log2 v)`` of values ``v <= 1`` (no overflow for any p), with
exact fast paths for p = 1, 2 and inf; ``alpha`` in {0, 1} is exact too.
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
def _pow_p(v, p, P_MODE: tl.constexpr):
    """``v^p`` for ``0 <= v <= 1``: exact for p = 1 and 2."""
    if P_MODE == 2:
        r = v * v
    elif P_MODE == 1:
        r = v
    else:
        r = _pow0(v, p)
    return r


@triton.jit
def _colpow_kernel(
    x_ptr,
    M_ptr,
    S_ptr,
    F_ptr,
    T,
    K,
    T_PER_SPLIT,
    p,
    P_MODE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per column and token slice: ``M = max |x|`` over finite values, ``S = sum (|x| / M)^p``
    and flags (1: an inf seen, 2: a nan seen); fp32 / int32 ``[SPLIT, K]`` partials.

    Grid ``(cdiv(K, BLOCK_K), SPLIT)``: program (i, s) owns BLOCK_K columns and the
    s-th slice of tokens (T_PER_SPLIT rows, a multiple of BLOCK_T), walking it in
    ``[BLOCK_T, BLOCK_K]`` tiles.  The sum is kept relative to the running column
    max (rescaled by ``(M_old / M_new)^p`` when a tile raises it), so no power
    ``|x|^p`` is ever formed: for p = 100, or p = 2 and |x| > 1.8e19, it would
    overflow fp32 (docs/numerics.md).  Traffic: x read once (T*K elements), 12 B
    written per column and slice; no atomics (`_scale_kernel` merges the slices).
    """
    pid_k = tl.program_id(0)
    pid_t = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    m = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    flags = tl.zeros([BLOCK_K], dtype=tl.int32)
    t_lo = pid_t * T_PER_SPLIT
    t_hi = tl.minimum(t_lo + T_PER_SPLIT, T)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = (ts < t_hi)[:, None] & kmask[None, :]
        a = tl.abs(tl.load(x_ptr + ts[:, None].to(tl.int64) * K + ks[None, :], mask=mask, other=0.0).to(tl.float32))
        nan = a != a
        inf = a == float("inf")
        # max drops nan on some targets, and inf would zero every scaled term: flag both
        flags = flags | tl.max(inf.to(tl.int32), axis=0) | (2 * tl.max(nan.to(tl.int32), axis=0))
        a = tl.where(nan | inf, 0.0, a)
        m_new = tl.maximum(m, tl.max(a, axis=0))
        if P_MODE != 3:
            inv = tl.where(m_new > 0, 1.0 / tl.where(m_new > 0, m_new, 1.0), 0.0)
            # rescale only when the max grew (m * (1 / m) need not round to exactly 1)
            acc = tl.where(m_new == m, acc, acc * _pow_p(m * inv, p, P_MODE))
            acc += tl.sum(_pow_p(a * inv[None, :], p, P_MODE), axis=0)
        m = m_new
    out = pid_t * K + ks
    tl.store(M_ptr + out, m, mask=kmask)
    tl.store(S_ptr + out, acc, mask=kmask)
    tl.store(F_ptr + out, flags, mask=kmask)


@triton.jit
def _column_norm(M_ptr, S_ptr, F_ptr, ks, kmask, K, SPLIT, p, P_MODE: tl.constexpr, BLOCK_K: tl.constexpr):
    """``n_k = ||x[:, k]||_p`` from the slices' partials: ``M * (sum_s S_s (M_s / M)^p)^(1/p)``.

    inf in a column gives inf, nan gives nan (as the reference's norm).
    """
    M = tl.zeros([BLOCK_K], dtype=tl.float32)
    flags = tl.zeros([BLOCK_K], dtype=tl.int32)
    for s in range(0, SPLIT):
        M = tl.maximum(M, tl.load(M_ptr + s * K + ks, mask=kmask, other=0.0))
        flags = flags | tl.load(F_ptr + s * K + ks, mask=kmask, other=0)
    if P_MODE == 3:
        n = M
    else:
        inv = tl.where(M > 0, 1.0 / tl.where(M > 0, M, 1.0), 0.0)
        S = tl.zeros([BLOCK_K], dtype=tl.float32)
        for s in range(0, SPLIT):
            Ms = tl.load(M_ptr + s * K + ks, mask=kmask, other=0.0)
            Ss = tl.load(S_ptr + s * K + ks, mask=kmask, other=0.0)
            S += tl.where(Ms == M, Ss, Ss * _pow_p(Ms * inv, p, P_MODE))
        if P_MODE == 2:
            n = M * tl.sqrt_rn(S)
        elif P_MODE == 1:
            n = M * S
        else:
            n = M * _pow0(S, 1.0 / p)
    n = tl.where((flags & 1) != 0, float("inf"), n)
    return tl.where((flags & 2) != 0, float("nan"), n)


@triton.jit
def _scale_kernel(
    M_ptr,
    S_ptr,
    F_ptr,
    D_ptr,
    K,
    SPLIT,
    p,
    lam,
    alpha,
    P_MODE: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``D = clamp(c + lam * mean(c), tiny, max)^alpha``, ``c = n^2``, from the partials.

    Grid ``(1,)``: the mean needs every column, so one program walks the columns
    twice in ``[BLOCK_K]`` tiles (sum of c, then D), merging the SPLIT token slices
    each time.  Traffic: 12 * SPLIT B read and 4 B written per column -- negligible
    next to x.  ``mean(c) == 0`` (all-zero x) gives D = 1; nan stays nan
    (comparisons with nan are false, so the clamp keeps it).
    ALPHA_MODE: 0 -> D = 1 (``pow(base, 0)``, even for nan), 1 -> D = base, 2 -> general.
    """
    total = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        n = _column_norm(M_ptr, S_ptr, F_ptr, ks, ks < K, K, SPLIT, p, P_MODE, BLOCK_K)
        total += tl.where(ks < K, n * n, 0.0)
    mean = tl.sum(total, axis=0) / K
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        n = _column_norm(M_ptr, S_ptr, F_ptr, ks, kmask, K, SPLIT, p, P_MODE, BLOCK_K)
        base = n * n + lam * mean
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
    # token slices write partials that `_scale_kernel` merges: no atomics, any p (inf too)
    split = config.auto_split(cfg["SPLIT_T"], col_blocks, triton.cdiv(T, BT), x.device)
    t_per = triton.cdiv(triton.cdiv(T, split), BT) * BT
    split = triton.cdiv(T, t_per)
    p_arg = 1.0 if p_mode == P_INF else float(p)
    M = torch.empty(split, K, dtype=torch.float32, device=x.device)
    S = torch.empty(split, K, dtype=torch.float32, device=x.device)
    F = torch.empty(split, K, dtype=torch.int32, device=x.device)
    _colpow_kernel[(col_blocks, split)](
        x, M, S, F, T, K, t_per, p_arg,
        P_MODE=p_mode, BLOCK_T=BT, BLOCK_K=BK, num_warps=cfg["num_warps"], enable_fp_fusion=False,
    )  # fmt: skip
    D = torch.empty(K, dtype=torch.float32, device=x.device)
    alpha_mode = 0 if alpha == 0 else (1 if alpha == 1 else 2)
    _scale_kernel[(1,)](
        M,
        S,
        F,
        D,
        K,
        split,
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
