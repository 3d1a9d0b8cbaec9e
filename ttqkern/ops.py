"""The stage ops of the spec (docs/spec.md §2, §4): validated, then dispatched to a backend.

Each op checks its arguments once (docs/spec.md §5), flattens leading dims, answers
empty problems itself, and hands the rest to `ttqkern._dispatch`, which picks the
backend for the tensors' device and calls it eagerly or through the registered
`torch.library` op under `torch.compile`.

Empty dimensions have documented results, never internal errors: no tokens (T = 0)
give an empty y and D = 1; N = 0 gives an empty y and an empty `PackedWeight`;
K = 0 gives an empty D, an empty `PackedWeight` and ``y = bias`` (or zeros): the
sum over zero columns.
"""

from __future__ import annotations

import torch

from . import _checks as C
from . import _dispatch, backends, defaults, reference
from .format import CANONICAL, PackedWeight, convert, dequantize, get_layout, pack, unpack
from .quant import ActScaling, QuantFormat

__all__ = ["act_scale", "dequantize", "lowrank", "pack", "qmatmul", "quantize", "repack", "unpack"]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` -> contiguous ``[T, K]`` (T = product of the leading dims)."""
    T = 1
    for d in x.shape[:-1]:
        T *= d
    return x.reshape(T, x.shape[-1]).contiguous()  # not -1: K may be 0


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


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
    finite and > 0 for finite x; nan in x gives nan in D.  No tokens: D = 1.
    """
    C.check_tensor(x, "x", min_dims=1)
    scaling = ActScaling(alpha, lam, p)
    backends.check_name(backend)
    return run_act_scale(_tokens(x), scaling, backend)


def run_act_scale(x2: torch.Tensor, scaling: ActScaling, backend: str) -> torch.Tensor:
    """`act_scale` on checked arguments: x2 contiguous ``[T, K]``."""
    T, K = x2.shape
    if T == 0 or K == 0:  # no statistics: no scaling
        return torch.ones(K, dtype=torch.float32, device=x2.device)
    return _dispatch.act_scale(x2, scaling, backend)


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

    W: ``[N, K]`` float; D: ``[K]`` (> 0) or None (RTN).  bits in {2, 3, 4, 8};
    group_size > 0 or -1 (one group per row), K need not be a multiple of it;
    ``zero`` is ``"float"`` (float minimum, default) or ``"int"`` (integer
    zero-point); ``sym=True`` for symmetric; beta scales each group's range.
    Returns a `PackedWeight` in the backend's layout (`PackedWeight.canonical`
    converts; every backend reads every layout).
    """
    C.check_tensor(W, "W", dims=2)
    fmt = QuantFormat(bits, group_size, sym, zero, beta)
    C.check_D(D, W.shape[1])
    C.check_same_device(W=W, D=D)
    backends.check_name(backend)
    D = None if D is None else D.to(torch.float32).contiguous()
    return run_quantize(W.contiguous(), D, fmt, backend)


def run_quantize(W: torch.Tensor, D: torch.Tensor | None, fmt: QuantFormat, backend: str) -> PackedWeight:
    """`quantize` on checked arguments: W contiguous ``[N, K]``, D fp32 contiguous or None."""
    N, K = W.shape
    fmt = fmt.resolved(K)
    if N == 0 or K == 0:
        return _empty_packed(N, K, fmt, W.device)
    return _dispatch.quantize(W, D, fmt, backend)


def _empty_packed(N: int, K: int, fmt: QuantFormat, device) -> PackedWeight:
    planes = get_layout(CANONICAL).planes(N, K, fmt)
    t = {f: torch.zeros(shape, dtype=dtype, device=device) for f, (shape, dtype) in planes.items()}
    offsets = t.get("mins", t.get("zeros"))
    return PackedWeight.build(
        fmt, (N, K), qweight=t["qweight"], qweight_hi=t.get("qweight_hi"), scales=t["scales"], offsets=offsets
    )


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

    x: ``[..., K]`` fp32/fp16/bf16; pw: `PackedWeight` ``[N, K]`` (any layout; its
    tensors must agree with its fields); D ``[K]`` (the one pw was quantized with,
    > 0) or None; lowrank ``(A [r, K], B [N, r])`` or None; bias ``[N]`` or None.
    Returns ``[..., N]`` in x's dtype (fp32 accumulation).
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
    D = None if D is None else D.to(torch.float32).contiguous()
    y = run_qmatmul(_tokens(x), contiguous_packed(pw), D, _contiguous(A), _contiguous(B), _contiguous(bias), backend)
    return y.reshape(*lead, N)


def contiguous_packed(pw: PackedWeight) -> PackedWeight:
    """``pw`` with contiguous tensors (itself when they already are): kernels index planes densely."""
    if all(t.is_contiguous() for t in pw.tensors().values()):
        return pw
    from dataclasses import replace

    return replace(pw, **{n: t.contiguous() for n, t in pw.tensors().items()})


def run_qmatmul(x2, pw: PackedWeight, D, A, B, bias, backend: str) -> torch.Tensor:
    """`qmatmul` on checked, contiguous arguments: x2 ``[T, K]`` -> ``[T, N]``."""
    T, K = x2.shape
    N = pw.N
    if T == 0 or N == 0 or K == 0:  # the sum over zero columns is 0; only the bias remains
        y = x2.new_zeros(T, N)
        return y + bias.to(y.dtype) if bias is not None else y
    return _dispatch.qmatmul(x2, pw, D, A, B, bias, backend)


def repack(pw: PackedWeight, layout: str = CANONICAL) -> PackedWeight:
    """``pw`` converted (exactly) to ``layout``, e.g. to pay a conversion once rather than per call."""
    C.check_packed(pw)
    return convert(pw, layout)


def lowrank(W: torch.Tensor, r: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Truncated-SVD split ``W = B A + W_res`` (spec stage 0).

    W: ``[N, K]`` float; r in ``[0, min(N, K)]``.  Returns A ``[r, K]``, B ``[N, r]``,
    W_res ``[N, K]`` in W's dtype, or ``(None, None, W)`` for r == 0.  With r > 0 W
    must be finite (an SVD of nan/inf is meaningless; with r = 0 non-finite groups
    quantize to nan outputs instead).
    """
    C.check_tensor(W, "W", dims=2)
    C.check_rank(r, *W.shape)
    if r > 0:
        C.check_finite_weight(W, "the rank-r SVD split (r > 0) needs a finite W; use r=0 to quantize it as is")
    return reference.lowrank(W.detach(), r)  # static factors: never part of an autograd graph
