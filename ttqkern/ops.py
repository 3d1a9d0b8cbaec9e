"""The stage ops of the spec (§2, §4): validated, dispatched to a backend.

Each op checks its arguments (spec §5), flattens leading dims, picks a backend
for the tensors' device and calls the registered `torch.library` op, so the
same calls work eagerly and under `torch.compile`.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

from . import _checks as C
from . import backends, defaults, reference
from ._library import act_scale_op, op_args, packed_from_op, qmatmul_op, quantize_op
from .format import PackedWeight, dequantize, pack, resolve_group_size, unpack

__all__ = ["act_scale", "dequantize", "lowrank", "pack", "prepare", "qmatmul", "quantize", "unpack"]


def _direct(t: torch.Tensor) -> bool:
    """Call the backend directly instead of through the registered custom op?

    The custom ops exist so `torch.compile` can trace TTQ layers (and fake tensors
    get shapes); in eager mode their Python dispatch costs tens of microseconds per
    call, a tenth of an int4 decode GEMV on CPU.  So eager calls on real tensors
    skip them; the backend code that runs is the same either way.
    """
    return not torch.compiler.is_compiling() and t.device.type != "meta" and not isinstance(t, FakeTensor)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` -> contiguous ``[T, K]`` (T = product of the leading dims)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def act_scale(
    x: torch.Tensor,
    *,
    p: float = defaults.P,
    lam: float = defaults.LAM,
    alpha: float = defaults.ALPHA,
    backend: str = "auto",
) -> torch.Tensor:
    """Activation scale ``D_k = (||x[:, k]||_p^2 + lam * mean)^alpha`` (spec stage 1).

    x: ``[..., K]`` fp32/fp16/bf16 (leading dims are tokens).  Returns fp32 ``[K]``,
    finite and > 0 for finite x; nan in x gives nan in D.
    """
    C.check_tensor(x, "x", min_dims=1)
    C.check_hparams(alpha, lam, p)
    backends.check_name(backend)
    x2 = _tokens(x)
    if x2.shape[0] == 0:  # no tokens: no statistics, so no scaling
        return torch.ones(x2.shape[1], dtype=torch.float32, device=x.device)
    if _direct(x2):
        return backends.resolve(backend, x2.device).act_scale(x2, float(p), float(lam), float(alpha))
    return act_scale_op(x2, float(p), float(lam), float(alpha), backend)


def quantize(
    W: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    zero: str = "float",
    beta: float = 1.0,
    backend: str = "auto",
) -> PackedWeight:
    """Scale W's columns by D and quantize groups along K (spec stages 2-3).

    W: ``[N, K]`` float; D: fp32 ``[K]`` or None (RTN).  bits in {2, 3, 4, 8};
    group_size > 0 or -1 (one group per row), K need not be a multiple of it;
    ``zero`` is ``"float"`` (float minimum, default) or ``"int"`` (integer
    zero-point); ``sym=True`` for symmetric; beta scales each group's range.
    Returns a canonical `PackedWeight` with fp32 scales.
    """
    C.check_tensor(W, "W", dims=2)
    C.check_quant_args(bits, group_size, sym, zero, beta)
    C.check_D(D, W.shape[1])
    C.check_same_device(W=W, D=D)
    backends.check_name(backend)
    N, K = W.shape
    D = None if D is None else D.to(torch.float32).contiguous()
    W = W.contiguous()
    if _direct(W):
        g = resolve_group_size(K, group_size)  # backends receive a positive group length
        outs = op_args(backends.resolve(backend, W.device).quantize(W, D, bits, g, sym, zero, float(beta)))
    else:
        outs = quantize_op(W, D, bits, group_size, sym, zero, float(beta), backend)
    return packed_from_op(outs, N=N, K=K, bits=bits, group_size=group_size, sym=sym, zero=zero)


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    *,
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Packed GEMM ``y = (x / D) Wq'^T + (x A^T) B^T + bias`` (spec stages 4-5).

    x: ``[..., K]`` fp32/fp16/bf16; pw: `PackedWeight` ``[N, K]``; D fp32 ``[K]``
    (the one pw was quantized with) or None; lowrank ``(A [r, K], B [N, r])`` or
    None; bias ``[N]`` or None.  Returns ``[..., N]`` in x's dtype (fp32 accumulate).
    """
    C.check_tensor(x, "x", min_dims=1)
    C.check_packed(pw, x.shape[-1])
    N, K = pw.shape
    C.check_D(D, K)
    C.check_lowrank(lowrank, N, K)
    C.check_bias(bias, N)
    A, B = lowrank if lowrank is not None else (None, None)
    C.check_same_device(x=x, qweight=pw.qweight, D=D, A=A, B=B, bias=bias)
    backends.check_name(backend)
    lead = x.shape[:-1]
    x2 = _tokens(x)
    if x2.shape[0] == 0:
        return x.new_zeros(*lead, N)
    D = None if D is None else D.to(torch.float32).contiguous()
    A = None if A is None else A.contiguous()
    B = None if B is None else B.contiguous()
    bias = None if bias is None else bias.contiguous()
    if _direct(x2):
        y = backends.resolve(backend, x2.device).qmatmul(x2, pw, D, A, B, bias)
    else:
        y = qmatmul_op(x2, *op_args(pw), D, A, B, bias, pw.bits, pw.group_size, N, K, pw.sym, pw.zero, backend)
    return y.reshape(*lead, N)


def prepare(
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    *,
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
):
    """A layer's decode callable: ``f(x) == qmatmul(x, pw, D, lowrank=..., bias=...)``, eager mode.

    Validates pw, D, lowrank and bias once and hands them to the backend's
    ``prepare`` (when it has one: it hoists config lookup, layout work and buffer
    checks out of the per-token path), so that each call only checks x (a
    ``[..., K]`` fp32/fp16/bf16 tensor on pw's device).  The callable reads pw,
    D and the factors as they are now: prepare again after a requantization.
    """
    C.check_packed(pw, pw.K)
    N, K = pw.shape
    C.check_D(D, K)
    C.check_lowrank(lowrank, N, K)
    C.check_bias(bias, N)
    A, B = lowrank if lowrank is not None else (None, None)
    C.check_same_device(qweight=pw.qweight, D=D, A=A, B=B, bias=bias)
    backends.check_name(backend)
    be = backends.resolve(backend, pw.device)
    D = None if D is None else D.to(torch.float32).contiguous()
    A = None if A is None else A.contiguous()
    B = None if B is None else B.contiguous()
    bias = None if bias is None else bias.contiguous()
    if hasattr(be, "prepare"):
        fn = be.prepare(pw, D, A, B, bias)
    else:
        fn = lambda x2: be.qmatmul(x2, pw, D, A, B, bias)  # noqa: E731
    device = pw.device

    def call(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype not in C.FLOAT_DTYPES or x.dim() < 1 or x.shape[-1] != K:
            C.check_tensor(x, "x", min_dims=1)
            raise ValueError(f"x's last dim ({x.shape[-1]}) must equal the packed weight's K ({K})")
        if x.device != device:
            C.check_same_device(x=x, qweight=pw.qweight)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, K)
        if x2.shape[0] == 0:
            return x.new_zeros(*lead, N)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        return fn(x2).reshape(*lead, N)

    return call


def lowrank(W: torch.Tensor, r: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Truncated-SVD split ``W = B A + W_res`` (spec stage 0).

    W: ``[N, K]`` float; r in ``[0, min(N, K)]``.  Returns A ``[r, K]``, B ``[N, r]``,
    W_res ``[N, K]`` in W's dtype, or ``(None, None, W)`` for r == 0.
    """
    C.check_tensor(W, "W", dims=2)
    C.check_rank(r, *W.shape)
    return reference.lowrank(W.detach(), r)  # static factors: never part of an autograd graph
