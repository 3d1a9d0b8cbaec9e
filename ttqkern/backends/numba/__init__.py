"""The Numba backend: TTQ's stages as parallel CPU kernels compiled by Numba.

Modules, one job each:

- `act_scale`: column p-norms of x over the tokens (parallel over column blocks).
- `quantize`: scale by D, groupwise min/max, round and pack -- one pass over W,
  straight into the canonical packed layout (spec §3), every bit width and form.
- `gemv`: the packed GEMM with the ``x / D`` prologue and the low-rank + bias
  epilogue: a fused decode GEMV, a buffered small-T GEMM, a generic kernel for odd
  group sizes, and the dequantize kernel feeding BLAS for prefill.
- `config`: block sizes and thresholds (documented defaults, tuned entries from
  `ttqkern.tuning.store`).
- `_common`: jit options (why fastmath is or is not used), array views, plane layout.

Kernels are compiled with ``cache=True``: a second process loads them from Numba's
cache (``__pycache__`` beside the sources, or ``$NUMBA_CACHE_DIR``) instead of
compiling again.  Threads: Numba's pool (``numba.set_num_threads``).
"""

from __future__ import annotations

import numba  # noqa: F401  (an ImportError here is the registry's "why not available" reason)
import numpy as np
import torch

from ...format import PackedWeight
from ..base import Backend
from . import config, gemv
from ._common import as_f32, as_np, planes
from .act_scale import act_scale as _act_scale
from .quantize import quantize as _quantize

_EMPTY_U16 = np.empty((0, 0), np.uint16)
_DUMMY_MASKS = tuple(np.int32(1 << i) for i in range(8))
_INT4_MASKS = tuple(np.int32(15 << (4 * i)) for i in range(4))
_INT4_REP = 0x1111  # a nibble value in each of the 4 nibbles of a half word


def _offset_args(pw: PackedWeight):
    """(zp_f, zp_i, off_mode, half) describing the offsets m of ``w = s * u + m``."""
    f0, i0 = np.empty((0, 0), np.float32), np.empty((0, 0), np.int32)
    half = np.float32(1 << (pw.bits - 1))
    if pw.sym:
        return f0, i0, gemv.OFF_SYM, half
    if pw.zero == "int":
        return f0, as_np(pw.zeros), gemv.OFF_ZEROS, half
    return as_np(pw.mins), i0, gemv.OFF_MINS, half


def _epilogue(y: torch.Tensor, u: np.ndarray, B: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """y += u B^T + bias (fp32, in place) for the BLAS paths."""
    if B.shape[1]:
        y += torch.from_numpy(u) @ torch.from_numpy(B).mT
    if bias.shape[0]:
        y += torch.from_numpy(bias)
    return y


class NumbaBackend(Backend):
    """Parallel CPU kernels compiled by Numba (the ``auto`` choice on CPUs)."""

    name = "numba"
    device_types = ("cpu",)
    preference = 10
    params = config.TABLE

    def act_scale(self, x, scaling):
        return _act_scale(x, scaling.p, scaling.lam, scaling.alpha)

    def quantize(self, W, D, fmt):
        return _quantize(W, D, fmt.bits, fmt.group_size, fmt.sym, fmt.zero, fmt.beta)

    def qmatmul(self, x, pw, D, A, B, bias) -> torch.Tensor:
        """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + b``.

        x ``[T, K]`` fp32/fp16/bf16, pw a canonical `PackedWeight` ``[N, K]``, D fp32
        ``[K]`` | None, A ``[r, K]`` / B ``[N, r]`` | None, bias ``[N]`` | None.
        Returns ``[T, N]`` in x.dtype, accumulated in fp32.
        """
        T, K = x.shape
        cfg = config.params("qmatmul", bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=K)
        with config.threads_for(pw.N * K, cfg):
            return _qmatmul(x, pw, D, A, B, bias, cfg)


def _qmatmul(x, pw, D, A, B, bias, cfg) -> torch.Tensor:
    """`qmatmul` for a non-empty problem with its config ``cfg`` (see there)."""
    T, K = x.shape
    N, g = pw.N, pw.group_size
    x32 = as_f32(x)
    G = pw.num_groups
    xp = np.empty((T, G * g), np.float32)
    Xg = np.empty((T, G), np.float32)
    extreme = gemv.prologue(x32, as_f32(D), D is not None, g, xp, Xg)
    scales = as_np(pw.scales)
    zp_f, zp_i, off_mode, half = _offset_args(pw)
    c = np.empty((N, G), np.int32)  # each group's zero code and its value (codes are centred on it)
    m0 = np.empty((N, G), np.float32)
    gemv.centres(scales, zp_f, zp_i, off_mode, half, c, m0)
    has_m0 = off_mode != gemv.OFF_SYM  # symmetric codes centre exactly: m0 = 0
    prefill = T >= cfg["DEQUANT_MIN_T"]  # compute bound: let BLAS do the GEMM
    pl = planes(pw)
    # x~ too large or too small for the fast kernels' scaling (gemv.SAFE_MIN/MAX): the
    # dequantize + BLAS path, exact in range (docs/numerics.md)
    robust = (pl is None and prefill) or extreme
    if A is not None:  # x A^T: [T, r], tiny; the B side is fused per row (one GEMM for prefill)
        if prefill or robust:
            u = (torch.from_numpy(x32) @ A.to(torch.float32).mT).numpy()
        else:
            u = np.empty((T, A.shape[0]), np.float32)
            gemv.lowrank_left(x32, as_f32(A), u)
        Bn = as_f32(B)
    else:
        u, Bn = np.empty((T, 0), np.float32), np.empty((N, 0), np.float32)
    bn = as_f32(bias)
    y = np.empty((T, N), np.float32)

    if robust:  # any layout: Wq' = s * (u - c) + m0 in natural order, then BLAS
        qw = as_np(pw.qweight)
        qhi = as_np(pw.qweight_hi) if pw.bits == 3 else np.empty((0, 0), np.uint8)
        W = np.empty((N, K), np.float32)
        gemv.dequantize(qw, qhi, pw.bits, g, K, scales, c, m0, cfg["BLOCK_N"], W)
        yt = torch.from_numpy(xp[:, :K]) @ torch.from_numpy(W).mT
        return _epilogue(yt, u, Bn, bn).to(x.dtype)
    if pl is None:  # group sizes that are not whole words
        qw = as_np(pw.qweight)
        qhi = as_np(pw.qweight_hi) if pw.bits == 3 else np.empty((0, 0), np.uint8)
        gemv.generic(qw, qhi, pw.bits, g, xp, Xg, scales, c, m0, has_m0, u, Bn, bn, cfg["BLOCK_N"], y)
        return torch.from_numpy(y).to(x.dtype)

    L = sum(p.words.shape[1] * p.cpw for p in pl)
    fused = T <= cfg["FUSED_MAX_T"] and not prefill
    if fused and pw.bits == 3:  # planes merged into nibble words in registers
        xs3 = np.empty((T, L), np.float32)
        gemv.permute3(xp, xs3)
        lo, hi = pl
        gemv.fused3(lo.words, hi.words, _INT4_MASKS, _INT4_REP, lo.Wg, xs3, Xg, scales, c, m0, has_m0,
                    u, Bn, bn, cfg["BLOCK_N"], y)  # fmt: skip
        return torch.from_numpy(y).to(x.dtype)
    T2 = T + (T & 1) if fused and T > 1 else T  # the fused kernel takes tokens 2 at a time
    xs = np.zeros((T2, L), np.float32) if T2 > T else np.empty((T, L), np.float32)
    off = 0
    for p in pl:
        gemv.permute(xp, xs, off, p.words.shape[1], p.nf, p.b, p.factor)
        off += p.words.shape[1] * p.cpw
    p1 = pl[0]
    first = (p1.words, p1.masks, p1.rep, p1.Wg)
    if len(pl) == 2:
        p2 = pl[1]
        second = (p2.words, p2.masks, p2.rep, p2.Wg)
    else:
        second = (_EMPTY_U16, _DUMMY_MASKS, 0, 1)
    off2 = p1.words.shape[1] * p1.cpw  # where the second plane's block starts (= L with one plane)
    if prefill:  # x~ (s (u - c))^T by BLAS on the unpacked rows, + X~ m0^T, + the epilogue
        Wp = np.empty((N, L), np.float32)
        gemv.unpack_rows(*first, *second, off2, scales, c, cfg["BLOCK_N"], Wp)
        yt = torch.from_numpy(xs[:T]) @ torch.from_numpy(Wp).mT
        if has_m0:
            yt += torch.from_numpy(Xg) @ torch.from_numpy(m0).mT
        return _epilogue(yt, u, Bn, bn).to(x.dtype)
    kernel = gemv.fused if fused else gemv.buffered
    kernel(*first, *second, xs, off2, Xg, scales, c, m0, has_m0, u, Bn, bn, cfg["BLOCK_N"], y)
    return torch.from_numpy(y).to(x.dtype)


BACKEND = NumbaBackend()

__all__ = ["BACKEND", "NumbaBackend", "config"]
