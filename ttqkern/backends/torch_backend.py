"""The always-available torch backend: the reference stages, with a BLAS GEMM.

`act_scale` and `quantize` are the reference itself.  `qmatmul` dequantizes the
packed weight once (codes centred on each group's zero code, `format.dequantize`:
every weight within a few ulps of its own value) and calls one fp32 matmul instead
of the reference's fp64 per-group einsum, which keeps it usable on real models
(memory O(N*K), not O(T*N*G)).
"""

from __future__ import annotations

import torch

from .. import reference
from ..format import PackedWeight, dequantize
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    device_types = ("cpu", "cuda", "mps", "xpu")
    preference = 100  # the fallback everywhere
    reference_ops = frozenset({"act_scale", "quantize"})

    def act_scale(self, x, scaling):
        return reference.act_scale(x, scaling.p, scaling.lam, scaling.alpha)

    def quantize(self, W, D, fmt):
        return reference.quantize(W, D, fmt.bits, fmt.group_size, fmt.sym, fmt.zero, fmt.beta)

    def qmatmul(self, x, pw: PackedWeight, D, A, B, bias) -> torch.Tensor:
        """``y = (x / D) Wq'^T + (x A^T) B^T + b``; x ``[T, K]`` -> ``[T, N]`` in x.dtype, fp32 math."""
        x32 = x.to(torch.float32)
        xs = x32 if D is None else x32 / D
        y = xs @ dequantize(pw).mT
        if A is not None:
            y += (x32 @ A.to(torch.float32).mT) @ B.to(torch.float32).mT
        if bias is not None:
            y += bias.to(torch.float32)
        return y.to(x.dtype)


BACKEND = TorchBackend()
