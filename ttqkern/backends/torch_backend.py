"""The always-available torch backend: the reference stages, with a BLAS GEMM.

`act_scale` and `quantize` are the reference itself.  `qmatmul` dequantizes the
packed weight once and calls one matmul instead of the reference's per-group
einsum, which keeps it usable on real models (memory O(N*K), not O(T*N*G)).
"""

from __future__ import annotations

import torch

from .. import reference
from ..format import PackedWeight, dequantize

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

act_scale = reference.act_scale
quantize = reference.quantize


def available() -> tuple[bool, str]:
    return True, ""


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = (x / D) Wq'^T + (x A^T) B^T + b``; x ``[T, K]`` -> ``[T, N]`` in x.dtype, fp32 math."""
    x32 = x.to(torch.float32)
    xs = x32 if D is None else x32 / D
    y = xs @ dequantize(pw).mT
    if A is not None:
        y += (x32 @ A.to(torch.float32).mT) @ B.to(torch.float32).mT
    if bias is not None:
        y += bias.to(torch.float32)
    return y.to(x.dtype)
