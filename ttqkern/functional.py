"""`ttqkern.linear`: one TTQ linear call, with the SVD factors of W cached."""

from __future__ import annotations

import threading
import weakref

import torch

from . import _checks as C
from . import backends, defaults, ops
from .quant import ActScaling, QuantFormat


class _LowRankCache:
    """SVD factors per weight tensor, dropped when the weight dies or changes.

    Keyed by ``id(W)``; an entry is valid while W's version counter (bumped by any
    in-place write), storage pointer, shape, dtype and r are unchanged.
    """

    def __init__(self):
        self._entries: dict[int, tuple] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(W: torch.Tensor, r: int) -> tuple:
        return (W._version, W.data_ptr(), tuple(W.shape), W.dtype, W.device, r)

    def get(self, W: torch.Tensor, r: int):
        key = id(W)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] == self._stamp(W, r):
            return hit[1]
        factors = ops.lowrank(W, r)
        with self._lock:
            if key not in self._entries:
                weakref.finalize(W, self._entries.pop, key, None)
            self._entries[key] = (self._stamp(W, r), factors)
        return factors

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        return len(self._entries)


lowrank_cache = _LowRankCache()


def linear(
    x: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    r: int = 16,
    bits: int = 4,
    group_size: int = 128,
    alpha: float = defaults.ALPHA,
    lam: float = defaults.LAM,
    p: float = defaults.P,
    sym: bool = False,
    zero: str = "float",
    beta: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """One TTQ linear layer: ``y ≈ x W^T + bias`` with W quantized from x itself.

    x: ``[..., K]`` fp32/fp16/bf16; W: ``[N, K]``; bias ``[N]`` or None.  Returns
    ``[..., N]`` in x's dtype.  Runs all spec stages: the rank-r SVD split of W
    (cached per weight tensor, recomputed if W is modified in place), the
    activation scale D from this x, groupwise ``bits``-bit quantization of
    ``W_res * D`` and the packed GEMM with the low-rank and bias epilogue.
    """
    C.check_x_W(x, W)
    C.check_rank(r, *W.shape)
    scaling = ActScaling(alpha, lam, p)
    fmt = QuantFormat(bits, group_size, sym, zero, beta)
    C.check_bias(bias, W.shape[0])
    C.check_same_device(x=x, W=W, bias=bias)
    backends.check_name(backend)
    A, B, W_res = lowrank_cache.get(W, r) if r > 0 else (None, None, W)
    x2 = ops._tokens(x)
    D = ops.run_act_scale(x2, scaling, backend)
    pw = ops.run_quantize(W_res.contiguous(), D, fmt, backend)
    bias = None if bias is None else bias.contiguous()
    y = ops.run_qmatmul(x2, pw, D, A, B, bias, backend)
    return y.reshape(*x.shape[:-1], W.shape[0])
