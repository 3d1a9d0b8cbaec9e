"""Prefill qmatmul (T > 16 tokens): tiled GEMM with ``tl.dot`` on packed-weight tiles.

Large T is compute-bound: each weight tile, unpacked once into registers, serves
BLOCK_T tokens on the tensor cores, with fp32 accumulation.  The TTQ prologue
(``x / D``) is applied to the x tile as it is loaded, and the low-rank and bias
terms are added to the accumulator before the single store.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import lowrank_bias_epilogue, qmm_accumulate, round_to


@triton.jit
def _gemm_kernel(
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
    BITS: tl.constexpr,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_LR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ALIGNED: tl.constexpr,
    ROUND_DT: tl.constexpr,
    DOT_DT: tl.constexpr,
    GROUP_T: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Packed GEMM with the TTQ prologue and epilogue fused.

    Grid ``(cdiv(T, BLOCK_T) * cdiv(N, BLOCK_N),)``, ordered in bands of GROUP_T
    token tiles so that consecutive programs share weight tiles in L2.  Program p
    owns output tile ``[BLOCK_T, BLOCK_N]`` and walks all of K in BLOCK_K steps:
    x tile ``[BLOCK_T, BLOCK_K]`` divided by D and rounded to the activation dtype,
    codes ``[BLOCK_K, BLOCK_N]`` as exact small integers in that dtype, one
    ``tl.dot`` per step, then ``* scale + offset * sum(x~)`` per row (or a
    dequantized tile when a tile spans groups), fp32 accumulator; epilogue
    ``+ xa B^T + bias``, one store in x's dtype.  Traffic: x read
    ``cdiv(N, BLOCK_N)`` times, the packed weight ``cdiv(T, BLOCK_T)`` times
    (mostly from L2), y written once; ``2*T*N*K`` flops.
    """
    pid = tl.program_id(0)
    n_t = tl.cdiv(T, BLOCK_T)
    n_n = tl.cdiv(N, BLOCK_N)
    per_band = GROUP_T * n_n
    band = pid // per_band
    first_t = band * GROUP_T
    band_t = tl.minimum(n_t - first_t, GROUP_T)
    pid_t = first_t + (pid % per_band) % band_t
    pid_n = (pid % per_band) // band_t
    ts = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    acc = qmm_accumulate(
        acc, x_ptr, D_ptr, qw_ptr, qhi_ptr, s_ptr, zp_ptr, ts, rows, 0, K, T, N, K, G, g,
        stride_qw, stride_qhi, BITS, MODE, HAS_D, ALIGNED, True, ROUND_DT, DOT_DT, BLOCK_K, BLOCK_N,
    )  # fmt: skip
    acc = lowrank_bias_epilogue(acc, xa_ptr, B_ptr, bias_ptr, ts, rows, T, N, R, HAS_LR, HAS_BIAS, True, BLOCK_R)
    out = y_ptr + ts[:, None].to(tl.int64) * N + rows[None, :]
    tl.store(out, round_to(acc, y_ptr.dtype.element_ty), mask=(ts < T)[:, None] & (rows < N)[None, :])
