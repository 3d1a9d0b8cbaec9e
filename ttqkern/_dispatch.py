"""One dispatch path from validated arguments to a backend, eager or compiled.

`ttqkern.ops` validates, then calls `act_scale` / `quantize` / `qmatmul` here.  Each
resolves the backend (cached per name and device type) and calls its stage
function -- directly in eager mode, or through the `torch.library` custom op of the
same name when `torch.compile` traces (fake tensors need the op's shape function,
and the op keeps TTQ layers free of graph breaks).  A `PackedWeight` is not a
tensor, so the custom ops take and return its tensors and layout name.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

from . import backends
from .format import CANONICAL, PackedWeight, convert, get_layout
from .quant import ActScaling, QuantFormat


def direct(t: Tensor) -> bool:
    """Call the backend directly instead of through the registered custom op?

    The custom ops exist so `torch.compile` can trace TTQ layers (and fake tensors
    get shapes); in eager mode their Python dispatch costs tens of microseconds per
    call, a tenth of an int4 decode GEMV on CPU.  So eager calls on real tensors
    skip them; the backend code that runs is the same either way.
    """
    return not torch.compiler.is_compiling() and t.device.type != "meta" and not isinstance(t, FakeTensor)


# --- act_scale ---------------------------------------------------------------------------


def act_scale(x: Tensor, scaling: ActScaling, backend: str) -> Tensor:
    """x ``[T, K]`` contiguous, T, K >= 1 -> D fp32 ``[K]``."""
    if direct(x):
        return backends.resolve(backend, x.device).act_scale(x, scaling)
    return act_scale_op(x, scaling.p, scaling.lam, scaling.alpha, backend)


@torch.library.custom_op("ttqkern::act_scale", mutates_args=())
def act_scale_op(x: Tensor, p: float, lam: float, alpha: float, backend: str) -> Tensor:
    return backends.resolve(backend, x.device).act_scale(x, ActScaling(alpha, lam, p))


@act_scale_op.register_fake
def _(x, p, lam, alpha, backend):
    return x.new_empty(x.shape[-1], dtype=torch.float32)


# --- quantize ----------------------------------------------------------------------------


def quantize(W: Tensor, D: Tensor | None, fmt: QuantFormat, backend: str) -> PackedWeight:
    """W ``[N, K]`` contiguous, N, K >= 1, D fp32 ``[K]`` or None, fmt resolved -> `PackedWeight`."""
    if direct(W):
        return backends.resolve(backend, W.device).quantize(W, D, fmt)
    outs = quantize_op(W, D, fmt.bits, fmt.group_size, fmt.sym, fmt.zero, fmt.beta, backend)
    layout = quantize_layout(backend, W.device)
    return from_op_args(outs, fmt=fmt, shape=tuple(W.shape), layout=layout)


def quantize_layout(backend: str, device: torch.device) -> str:
    """The layout a backend's quantize produces (its first readable layout)."""
    return backends.resolve(backend, device).layouts[0]


@torch.library.custom_op("ttqkern::quantize", mutates_args=())
def quantize_op(
    W: Tensor, D: Tensor | None, bits: int, group_size: int, sym: bool, zero: str, beta: float, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (qweight, qweight_hi or empty, scales, mins | zeros | empty)."""
    pw = backends.resolve(backend, W.device).quantize(W, D, QuantFormat(bits, group_size, sym, zero, beta))
    return op_args(pw)


@quantize_op.register_fake
def _(W, D, bits, group_size, sym, zero, beta, backend):
    N, K = W.shape
    fmt = QuantFormat(bits, group_size, sym, zero, beta)
    planes = get_layout(quantize_layout(backend, W.device)).planes(N, K, fmt)
    new = lambda field, empty_dtype: (  # noqa: E731
        W.new_empty(planes[field][0], dtype=planes[field][1])
        if field in planes
        else W.new_empty((0,), dtype=empty_dtype)
    )
    zp = "mins" if "mins" in planes else "zeros"
    return (
        new("qweight", torch.uint8),
        new("qweight_hi", torch.uint8),
        new("scales", torch.float32),
        new(zp, torch.float32),
    )


# --- qmatmul -----------------------------------------------------------------------------


def readable(pw: PackedWeight, backend_obj) -> PackedWeight:
    """``pw`` in a layout the backend reads (converted exactly through the canonical one if needed)."""
    if pw.layout in backend_obj.layouts:
        return pw
    target = CANONICAL if CANONICAL in backend_obj.layouts else backend_obj.layouts[0]
    return convert(pw, target)


def qmatmul(x: Tensor, pw: PackedWeight, D, A, B, bias, backend: str) -> Tensor:
    """x ``[T, K]`` contiguous, T, N, K >= 1; the other operands checked and contiguous -> ``[T, N]``."""
    if direct(x):
        be = backends.resolve(backend, x.device)
        return be.qmatmul(x, readable(pw, be), D, A, B, bias)
    q, hi, s, zp = op_args(pw)
    return qmatmul_op(x, q, hi, s, zp, D, A, B, bias, pw.bits, pw.group_size, pw.N, pw.K, pw.sym, pw.zero,
                      pw.layout, backend)  # fmt: skip


def _empty(like: Tensor, dtype=torch.uint8) -> Tensor:
    return torch.empty(0, dtype=dtype, device=like.device)


def op_args(pw: PackedWeight) -> tuple:
    """A `PackedWeight`'s tensors as custom-op arguments: (qweight, hi | empty, scales, offsets | empty)."""
    hi = pw.qweight_hi if pw.qweight_hi is not None else _empty(pw.qweight)
    zp = pw.offsets_field if pw.offsets_field is not None else _empty(pw.qweight, torch.float32)
    return pw.qweight, hi, pw.scales, zp


def from_op_args(outs, *, fmt: QuantFormat, shape: tuple[int, int], layout: str) -> PackedWeight:
    """Inverse of `op_args`."""
    qweight, hi, scales, zp = outs
    return PackedWeight.build(
        fmt, shape, qweight=qweight, qweight_hi=hi, scales=scales, offsets=None if fmt.sym else zp, layout=layout
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
    layout: str,
    backend: str,
) -> Tensor:
    pw = from_op_args((qweight, qweight_hi, scales, zp), fmt=QuantFormat(bits, group_size, sym, zero), shape=(N, K),
                      layout=layout)  # fmt: skip
    be = backends.resolve(backend, x.device)
    return be.qmatmul(x, readable(pw, be), D, A, B, bias)


@qmatmul_op.register_fake
def _(x, qweight, qweight_hi, scales, zp, D, A, B, bias, bits, group_size, N, K, sym, zero, layout, backend):
    return x.new_empty((x.shape[0], N))
