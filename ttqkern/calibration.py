"""Static (calibrated) scaling: the AWQ baseline in TTQ's own code path.

AWQ computes D once from calibration activations and searches alpha per layer
on the layer's output error; the paper runs it with the l2 statistic (p = 2),
which is what `ColumnStats` accumulates by default.  With no calibration tokens
there is no statistic and the layer falls back to RTN (D = 1), as in the
paper's Table 1 (0 calibration tokens).
"""

from __future__ import annotations

import math

import torch

from . import ops, reference

AWQ_ALPHAS = tuple(i / 20 for i in range(21))  # 0, 0.05, ..., 1


class ColumnStats:
    """Running p-norms of the columns of every activation batch seen, plus a token sample.

    ``update(x)`` with x ``[..., K]``; ``norms()`` -> fp32 ``[K]`` equal to the p-norm
    over all tokens seen; ``sample`` holds up to ``max_tokens`` tokens (the first
    seen), used to measure output error when searching alpha.
    """

    def __init__(self, K: int, p: float = 2.0, max_tokens: int = 512):
        self.p = p
        self.max_tokens = max_tokens
        # finite p: acc = sum (|x| / scale)^p with scale the running column max, so no
        # |x|^p is formed (it overflows even fp64 for large p; docs/numerics.md)
        self.acc = torch.zeros(K, dtype=torch.float64)
        self.scale = torch.zeros(K, dtype=torch.float64)
        self.tokens = 0
        self.sample: list[torch.Tensor] = []
        self._sampled = 0

    def update(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        a = x2.abs().cpu()
        if math.isinf(self.p):
            self.acc = torch.maximum(self.acc, a.amax(dim=0))
        elif a.shape[0]:
            finite = torch.where(torch.isfinite(a), a, torch.zeros_like(a))  # inf / nan: summed unscaled below
            new = torch.maximum(self.scale, finite.amax(dim=0))
            div = torch.where(new > 0, new, torch.ones_like(new))
            grown = new > self.scale
            self.acc = torch.where(grown, self.acc * (self.scale / div).pow(self.p), self.acc)
            self.acc += (a / div).pow(self.p).sum(dim=0)
            self.scale = new
        self.tokens += x2.shape[0]
        take = min(self.max_tokens - self._sampled, x2.shape[0])
        if take > 0:
            self.sample.append(x.detach().reshape(-1, x.shape[-1])[:take].clone())
            self._sampled += take

    def norms(self) -> torch.Tensor:
        n = self.acc if math.isinf(self.p) else self.scale * self.acc.pow(1.0 / self.p)
        n = torch.where(torch.isnan(self.acc) | (self.acc == math.inf), self.acc, n)  # 0 * inf: keep inf / nan
        return n.to(torch.float32)

    def sample_tokens(self) -> torch.Tensor:
        return torch.cat(self.sample) if self.sample else torch.empty(0)


def output_error(x: torch.Tensor, W: torch.Tensor, pw, D: torch.Tensor | None) -> float:
    """``||x W^T - x (Wq' / D)^T||_F^2`` in fp32: the error the quantized weight adds."""
    E = W.to(torch.float32) - reference.dequantized_weight(pw, D)
    return float((x.to(torch.float32) @ E.mT).square().sum())


def search_alpha(
    W: torch.Tensor,
    stats: ColumnStats,
    *,
    lam: float,
    bits: int,
    group_size: int,
    sym: bool = False,
    zero: str = "float",
    beta: float = 1.0,
    alphas=AWQ_ALPHAS,
    backend: str = "auto",
):
    """AWQ's grid search: the alpha whose static D gives the least output error.

    W: ``[N, K]`` (the residual when a low-rank part is kept).  Returns
    ``(alpha, D fp32 [K] | None, PackedWeight)``; D is None (RTN) without tokens.
    """
    quant = dict(bits=bits, group_size=group_size, sym=sym, zero=zero, beta=beta, backend=backend)
    if stats.tokens == 0:
        return 0.0, None, ops.quantize(W, None, **quant)
    x = stats.sample_tokens().to(W.device)
    n = stats.norms().to(W.device)
    best = None
    for alpha in alphas:
        D = reference.scale_from_norms(n, lam, alpha)
        pw = ops.quantize(W, D, **quant)
        err = output_error(x, W, pw, D)
        if best is None or err < best[0]:
            best = (err, alpha, D, pw)
    return best[1], best[2], best[3]
