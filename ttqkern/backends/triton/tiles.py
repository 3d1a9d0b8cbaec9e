"""Device-side building blocks shared by the GEMV and GEMM kernels.

Everything here is a ``@triton.jit`` helper inlined into the kernels of `gemv.py`
and `gemm.py`: reading a ``[BLOCK_K, BLOCK_N]`` tile of codes from the canonical
packed layout (`ttqkern.format`), the per-group scale / offset of each code, the
K-loop that accumulates ``(x / D) Wq'^T`` and the low-rank + bias epilogue.

Only portable Triton is used (no inline assembly, no ``tl.extra`` libdevice), so
the same source runs on NVIDIA, AMD and the CPU interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...quant import Form

# Quantization forms, as constexpr codes: every form is ``w = s * u + m`` (format.py).
MODE_FLOAT, MODE_INT, MODE_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)


@triton.jit
def _unpack_plane(
    plane_ptr, rows, rmask, k0, K, stride, NB: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Codes of positions ``[k0, k0 + BLOCK_K)`` of one NB-bit plane: int32 ``[BLOCK_K, BLOCK_N]``.

    Loads the ``[BLOCK_K * NB / 8, BLOCK_N]`` bytes once (contiguous along K, so
    the loads vectorize), then splits each byte into its ``8 / NB`` fields and
    folds them back along K (element i of byte j is position ``j * 8/NB + i``).
    ``k0`` is a multiple of ``8 / NB``; bytes wholly past K are not read.
    """
    PER: tl.constexpr = 8 // NB
    bidx = k0 // PER + tl.arange(0, BLOCK_K // PER)
    ptrs = plane_ptr + rows[None, :].to(tl.int64) * stride + bidx[:, None]
    b = tl.load(ptrs, mask=(bidx * PER < K)[:, None] & rmask[None, :], other=0).to(tl.int32)
    if PER == 1:
        return b
    else:
        fields = (b[:, None, :] >> (tl.arange(0, PER) * NB)[None, :, None]) & ((1 << NB) - 1)
        return tl.reshape(fields, [BLOCK_K, BLOCK_N])


@triton.jit
def load_codes(
    qw_ptr,
    qhi_ptr,
    rows,
    rmask,
    k0,
    K,
    stride_qw,
    stride_qhi,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Unsigned codes ``u[k, n]`` of the K tile at ``k0``: int32 ``[BLOCK_K, BLOCK_N]`` (for ``x @ u``).

    3 bits: 2-bit ``lo`` plane | 1-bit ``hi`` plane << 2.  BLOCK_K is a multiple of
    8, so every tile starts on a byte in every plane.  (Row offsets into W-sized
    tensors are formed in int64 throughout the backend: ``N * K`` exceeds 2^31
    for vocabulary-sized layers.)
    """
    if BITS == 3:
        lo = _unpack_plane(qw_ptr, rows, rmask, k0, K, stride_qw, 2, BLOCK_K, BLOCK_N)
        hi = _unpack_plane(qhi_ptr, rows, rmask, k0, K, stride_qhi, 1, BLOCK_K, BLOCK_N)
        u = lo | (hi << 2)
    else:
        u = _unpack_plane(qw_ptr, rows, rmask, k0, K, stride_qw, BITS, BLOCK_K, BLOCK_N)
    return u


@triton.jit
def group_centre(s, zp_ptr, idx, mask, BITS: tl.constexpr, MODE: tl.constexpr):
    """``(c, m0)`` (fp32, shape of ``s``): the group's zero code and the value of that code.

    ``w = s * (u - c) + m0`` is ``s * u + m`` written so that nothing cancels
    (docs/numerics.md): c is z (integer form), ``2^(b-1)`` (symmetric) or the code
    nearest to 0, ``clamp(floor(-mn / s + 1/2), 0, 2^b - 1)`` (float-min form, any
    non-finite or zero scale: 0), with ``m0 = fma(s, c, mn)`` rounded once
    (|m0| <= s / 2 when 0 lies in the group); m0 = 0 for the other forms.
    ``idx``/``mask`` address the ``[N, G]`` mins (float form) or int32 zeros (int form).
    """
    if MODE == 0:
        mn = tl.load(zp_ptr + idx, mask=mask, other=0.0)
        ok = (tl.abs(s) < float("inf")) & (s != 0) & (tl.abs(mn) < float("inf"))  # false for nan too
        c = tl.floor(-mn / tl.where(ok, s, 1.0) + 0.5)
        c = tl.where(ok, tl.minimum(tl.maximum(c, 0.0), (1 << BITS) - 1.0), 0.0)
        m0 = tl.fma(s, c, mn)
    elif MODE == 1:
        c = tl.load(zp_ptr + idx, mask=mask, other=0).to(tl.float32)
        m0 = tl.zeros_like(s)
    else:
        c = tl.zeros_like(s) + (1 << (BITS - 1))
        m0 = tl.zeros_like(s)
    return c, m0


@triton.jit
def round_to(v, DT: tl.constexpr):
    """fp32 ``v`` rounded to nearest, ties to even, in DT (fp32 / fp16 / bf16); returned as DT.

    bf16 is rounded with integer ops on the fp32 bits (then the cast is exact):
    Triton 3.9's interpreter truncates fp32 -> bf16 casts, and its explicit "rtne"
    mode loses the carry into the exponent; GPUs give the same answer either way.
    """
    if DT == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        r = tl.where(v == v, bits.to(tl.float32, bitcast=True), v)  # keep nan a nan
        return r.to(tl.bfloat16)
    else:
        return v.to(DT)


@triton.jit
def tile_matmul(a, b, USE_DOT: tl.constexpr, ROUND_DT: tl.constexpr, DOT_DT: tl.constexpr):
    """``a [M, K] @ b [K, N]`` in fp32 (``a``, ``b`` fp32).

    USE_DOT: ``tl.dot`` on operands rounded to ROUND_DT (the activation dtype, so
    fp16/bf16 run on tensor cores; fp32 uses IEEE precision, not tf32) and held as
    DOT_DT (= ROUND_DT, except bf16 under the interpreter, whose ``tl.dot`` in
    Triton 3.9 multiplies the raw uint16 storage; there the rounded values are
    multiplied in fp32).  Otherwise a broadcast multiply and reduction in fp32 on
    the vector units, which needs no M >= 16 padding (decode with one token).
    """
    if USE_DOT:
        return tl.dot(round_to(a, ROUND_DT).to(DOT_DT), round_to(b, ROUND_DT).to(DOT_DT), input_precision="ieee")
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def qmm_accumulate(
    acc,
    x_ptr,
    D_ptr,
    qw_ptr,
    qhi_ptr,
    s_ptr,
    zp_ptr,
    ts,
    rows,
    k_lo,
    k_hi,
    T,
    N,
    K,
    G,
    g,
    stride_qw,
    stride_qhi,
    BITS: tl.constexpr,
    MODE: tl.constexpr,
    HAS_D: tl.constexpr,
    ALIGNED: tl.constexpr,
    USE_DOT: tl.constexpr,
    ROUND_DT: tl.constexpr,
    DOT_DT: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``acc [BLOCK_T, BLOCK_N] += (x / D)[ts, k_lo:k_hi] @ (s * u + m)[rows, k_lo:k_hi]^T``.

    Tile roles per step: x ``[BLOCK_T, BLOCK_K]`` (loaded once, divided by D: the
    prologue), codes ``[BLOCK_K, BLOCK_N]``, fp32 accumulator ``[BLOCK_T, BLOCK_N]``.
    Codes are centred on their group's zero code (`group_centre`): the tile's weights
    are ``s * (u - c) + m0``, which no cancellation spoils when D or the group minimum
    is extreme (docs/numerics.md).  ALIGNED (the group size is a multiple of BLOCK_K,
    so one tile lies in one group): one scale and centre per row and tile; with
    fp16 / bf16 tensor cores the dot runs on the exact small integers ``u - c`` and
    ``s * (x~ . (u - c)) + m0 * sum(x~)`` follows; in fp32 the tile is dequantized
    first.  Otherwise each column has its own group: gathered scales and centres.
    ``k_lo`` is a multiple of BLOCK_K.
    """
    tmask = ts < T
    rmask = rows < N
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        x = tl.load(x_ptr + ts[:, None].to(tl.int64) * K + ks[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        x = x.to(tl.float32)
        if HAS_D:
            x = x / tl.load(D_ptr + ks, mask=kmask, other=1.0)[None, :]
        cmask = kmask[:, None] & rmask[None, :]
        u = load_codes(qw_ptr, qhi_ptr, rows, rmask, k0, K, stride_qw, stride_qhi, BITS, BLOCK_K, BLOCK_N).to(
            tl.float32
        )
        if ALIGNED:
            idx = rows * G + k0 // g
            s = tl.load(s_ptr + idx, mask=rmask, other=0.0)
            c, m0 = group_centre(s, zp_ptr, idx, rmask, BITS, MODE)
            if USE_DOT and ROUND_DT != tl.float32:
                # fp16 / bf16 tensor cores: exact small integers u - c in the dot, the per-group
                # sums from the same rounded x~ (m0 = 0 except for the float-min form)
                x = round_to(x, ROUND_DT).to(tl.float32)
                part = tile_matmul(x, u - c[None, :], USE_DOT, ROUND_DT, DOT_DT)
                acc += part * s[None, :] + tl.sum(x, axis=1)[:, None] * m0[None, :]
            else:
                # fp32: dequantize the tile first, so no partial sum of x~ * code can overflow
                # before the scale is applied (|x~| up to FLT_MAX / sum|Wq'|; docs/numerics.md)
                w = tl.where(kmask[:, None], (u - c[None, :]) * s[None, :] + m0[None, :], 0.0)
                acc += tile_matmul(x, w, USE_DOT, ROUND_DT, DOT_DT)
        else:
            idx = rows[None, :] * G + (ks // g)[:, None]
            s = tl.load(s_ptr + idx, mask=cmask, other=0.0)
            c, m0 = group_centre(s, zp_ptr, idx, cmask, BITS, MODE)
            w = tl.where(kmask[:, None], (u - c) * s + m0, 0.0)
            acc += tile_matmul(x, w, USE_DOT, ROUND_DT, DOT_DT)
    return acc


@triton.jit
def lowrank_bias_epilogue(
    acc,
    xa_ptr,
    B_ptr,
    bias_ptr,
    ts,
    rows,
    T,
    N,
    R,
    HAS_LR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """``acc += xa[ts] @ B[rows]^T + bias[rows]`` in fp32 (spec stage 5).

    xa: fp32 ``[T, R]`` = ``x A^T`` from the `lowrank` pre-pass (unscaled x);
    B ``[N, R]``, bias ``[N]`` in any float dtype.  Reads R + 1 values per row.
    """
    tmask = ts < T
    rmask = rows < N
    if HAS_LR:
        for r0 in range(0, R, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            rm = rs < R
            xa = tl.load(xa_ptr + ts[:, None] * R + rs[None, :], mask=tmask[:, None] & rm[None, :], other=0.0)
            b = tl.load(B_ptr + rows[None, :] * R + rs[:, None], mask=rm[:, None] & rmask[None, :], other=0.0)
            acc += tile_matmul(xa, b.to(tl.float32), USE_DOT, tl.float32, tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[None, :]
    return acc
