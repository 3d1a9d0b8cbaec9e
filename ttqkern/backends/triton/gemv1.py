"""Decode qmatmul for one token: ``y = (x / D) Wq'^T + (x A^T) B^T + b`` as a split-K GEMV.

One token is the common decode step and purely memory-bound, so this kernel is
laid out for the weight stream alone: each program reads a ``[BLOCK_N, bytes]``
tile of one packed plane with the bytes of a row contiguous (coalesced, vector
loads), and never rearranges codes.  Instead of unpacking a byte's ``8 / NB``
fields into K order (a register shuffle through shared memory), field ``i`` of
every byte is multiplied with the activations at positions ``j * 8/NB + i`` --
a strided read of x, which is a few KB and stays in L1.  3-bit codes are
``lo + 4 * hi``, so their dot product is the 2-bit plane's plus four times the
1-bit plane's.  The general GEMV (`gemv.py`) handles T > 1 and group sizes that
are not a multiple of the K tile.
"""

from __future__ import annotations

import triton  # noqa: F401  (triton.jit)
import triton.language as tl

from .tiles import group_offsets, round_to


@triton.jit
def _plane_dot(plane_ptr, stride, rows, rmask, x_ptr, D_ptr, k0, K, HAS_D: tl.constexpr, NB: tl.constexpr,
               BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """``sum_k (x/D)[k] * u[row, k]`` over ``[k0, k0 + BLOCK_K)`` for one NB-bit plane: fp32 ``[BLOCK_N]``.

    Loads the rows' ``BLOCK_K * NB / 8`` bytes once; byte j holds positions
    ``k0 + j * PER + i`` in bits ``[i * NB, (i + 1) * NB)``, PER = 8 / NB.
    """
    PER: tl.constexpr = 8 // NB
    j = tl.arange(0, BLOCK_K // PER)
    bidx = k0 // PER + j
    ptrs = plane_ptr + rows[:, None].to(tl.int64) * stride + bidx[None, :]
    b = tl.load(ptrs, mask=rmask[:, None] & (bidx * PER < K)[None, :], other=0).to(tl.int32)
    part = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in tl.static_range(PER):
        ks = k0 + j * PER + i
        km = ks < K
        xv = tl.load(x_ptr + ks, mask=km, other=0.0).to(tl.float32)
        if HAS_D:
            xv = xv / tl.load(D_ptr + ks, mask=km, other=1.0)
        u = ((b >> (i * NB)) & ((1 << NB) - 1)).to(tl.float32)
        part += tl.sum(u * xv[None, :], axis=1)
    return part


@triton.jit
def _gemv1_kernel(
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
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Packed GEMV for one token with the TTQ prologue and epilogue fused.

    Grid ``(cdiv(N, BLOCK_N), SPLIT)``: program (i, s) owns output rows
    ``[i*BLOCK_N, +BLOCK_N)`` and the K slice ``[s*K_PER_SPLIT, +K_PER_SPLIT)``
    (a multiple of BLOCK_K, and the group size a multiple of BLOCK_K, so each
    K tile has one scale and offset per row).  Per tile: codes ``[BLOCK_N,
    BLOCK_K * b/8 bytes]`` per plane, x / D ``[BLOCK_K]`` (read as PER strided
    slices), fp32 accumulator ``[BLOCK_N]``; ``acc += s * (x~ . u) + m * sum(x~)``.
    The K-slice-0 programs add ``xa . B[row] + bias``.  Traffic: the packed
    weight read once (``N*K*b/8`` B plus the group scales / offsets), x and D
    from L2 once per row block, y written once (fp32 atomic adds into a zeroed
    buffer when SPLIT > 1).
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if BITS == 3:
            part = _plane_dot(qw_ptr, stride_qw, rows, rmask, x_ptr, D_ptr, k0, K, HAS_D, 2, BLOCK_K, BLOCK_N)
            part += 4.0 * _plane_dot(qhi_ptr, stride_qhi, rows, rmask, x_ptr, D_ptr, k0, K, HAS_D, 1, BLOCK_K, BLOCK_N)
        else:
            part = _plane_dot(qw_ptr, stride_qw, rows, rmask, x_ptr, D_ptr, k0, K, HAS_D, BITS, BLOCK_K, BLOCK_N)
        ks = k0 + tl.arange(0, BLOCK_K)
        km = ks < K
        xt = tl.load(x_ptr + ks, mask=km, other=0.0).to(tl.float32)
        if HAS_D:
            xt = xt / tl.load(D_ptr + ks, mask=km, other=1.0)
        idx = rows * G + k0 // g
        s = tl.load(s_ptr + idx, mask=rmask, other=0.0)
        acc += part * s + tl.sum(xt, axis=0) * group_offsets(s, zp_ptr, idx, rmask, BITS, MODE)
    if pid_k == 0:
        if HAS_LR:
            for r0 in range(0, R, BLOCK_R):
                rs = r0 + tl.arange(0, BLOCK_R)
                rm = rs < R
                xa = tl.load(xa_ptr + rs, mask=rm, other=0.0)
                bt = tl.load(B_ptr + rows[:, None] * R + rs[None, :], mask=rmask[:, None] & rm[None, :], other=0.0)
                acc += tl.sum(bt.to(tl.float32) * xa[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    if SPLIT == 1:
        tl.store(y_ptr + rows, round_to(acc, y_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.atomic_add(y_ptr + rows, acc, mask=rmask)

