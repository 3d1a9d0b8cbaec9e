"""The stage ops registered with `torch.library.custom_op`.

Registering them (with fake implementations that only compute output shapes)
lets `torch.compile` trace a model that uses `TTQLinear` without graph breaks,
and keeps the ops capturable by CUDA graphs.  A `PackedWeight` is not a tensor,
so the ops take and return its tensors; `ttqkern.ops` rebuilds the dataclass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends
from .format import PackedWeight, expected_plane_shapes, num_groups, resolve_group_size


def _empty(like: Tensor, dtype=torch.uint8) -> Tensor:
    return torch.empty(0, dtype=dtype, device=like.device)


def op_args(pw: PackedWeight) -> tuple:
    """A `PackedWeight` as the tensor arguments of `qmatmul_op`."""
    hi = pw.qweight_hi if pw.qweight_hi is not None else _empty(pw.qweight)
    zp = pw.mins if pw.mins is not None else pw.zeros if pw.zeros is not None else _empty(pw.qweight, torch.float32)
    return pw.qweight, hi, pw.scales, zp


@torch.library.custom_op("ttqkern::act_scale", mutates_args=())
def act_scale_op(x: Tensor, p: float, lam: float, alpha: float, backend: str) -> Tensor:
    return backends.resolve(backend, x.device).act_scale(x, p, lam, alpha)


@act_scale_op.register_fake
def _(x, p, lam, alpha, backend):
    return x.new_empty(x.shape[-1], dtype=torch.float32)


@torch.library.custom_op("ttqkern::quantize", mutates_args=())
def quantize_op(
    W: Tensor, D: Tensor | None, bits: int, group_size: int, sym: bool, zero: str, beta: float, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (qweight, qweight_hi or empty, scales, mins | zeros | empty)."""
    g = resolve_group_size(W.shape[1], group_size)  # backends receive a positive group length
    pw = backends.resolve(backend, W.device).quantize(W, D, bits, g, sym, zero, beta)
    return op_args(pw)


@quantize_op.register_fake
def _(W, D, bits, group_size, sym, zero, beta, backend):
    N, K = W.shape
    shapes = expected_plane_shapes(N, K, bits, group_size)
    G = num_groups(K, resolve_group_size(K, group_size))
    new = lambda shape, dtype: W.new_empty(shape, dtype=dtype)  # noqa: E731
    hi = new(shapes["qweight_hi"], torch.uint8) if bits == 3 else new((0,), torch.uint8)
    zp = new((0,), torch.float32) if sym else new((N, G), torch.int32 if zero == "int" else torch.float32)
    return new(shapes["qweight"], torch.uint8), hi, new((N, G), torch.float32), zp


def packed_from_op(outs, *, N, K, bits, group_size, sym, zero) -> PackedWeight:
    qweight, hi, scales, zp = outs
    return PackedWeight(
        qweight=qweight,
        qweight_hi=hi if bits == 3 else None,
        scales=scales,
        mins=zp if (not sym and zero == "float") else None,
        zeros=zp if (not sym and zero == "int") else None,
        bits=bits,
        group_size=resolve_group_size(K, group_size),
        shape=(N, K),
        sym=sym,
        zero="float" if sym else zero,
    )


@torch.library.custom_op("ttqkern::qmatmul", mutates_args=())
def qmatmul_op(
    x: Tensor,
    qweight: Tensor,
    qweight_hi: Tensor,
    scales: Tensor,
    zp: Tensor,
    D: Tensor | None,
    A: Tensor | None,
    B: Tensor | None,
    bias: Tensor | None,
    bits: int,
    group_size: int,
    N: int,
    K: int,
    sym: bool,
    zero: str,
    backend: str,
) -> Tensor:
    pw = packed_from_op(
        (qweight, qweight_hi, scales, zp), N=N, K=K, bits=bits, group_size=group_size, sym=sym, zero=zero
    )
    return backends.resolve(backend, x.device).qmatmul(x, pw, D, A, B, bias)


@qmatmul_op.register_fake
def _(x, qweight, qweight_hi, scales, zp, D, A, B, bias, bits, group_size, N, K, sym, zero, backend):
    return x.new_empty((x.shape[0], N))
