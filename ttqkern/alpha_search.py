"""Test-time alpha search: choose each layer's alpha per prompt from a small grid.

TTQ keeps alpha fixed (the paper: "to keep it fast").  This option picks it per layer
and per prompt the way AWQ picks its static alpha offline, but on the prompt's own
activations: for each alpha of the grid, compute D from the prompt, quantize, and
measure the output error ``||x W^T - (x / D) Wq'^T||_F`` on a subsample of the
prompt's tokens; keep the alpha with the least error (the low-rank part is exact,
so only the residual weight matters).  The candidate outputs come from the backend's
own `ttqkern.ops.qmatmul`, the same GEMM the forward then runs.

Cost per layer and prompt: ``len(grid)`` activation scales and quantizations and
``len(grid)`` GEMMs of ``tokens`` rows, against one of each without the search.

Use: ``quantize_model(model, method="ttq", requantizer=AlphaSearch())`` or
``TTQLinear(..., requantizer=AlphaSearch(grid=(0.0, 0.25, 0.5), tokens=32))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from . import ops
from .format import PackedWeight

DEFAULT_GRID = (0.0, 0.125, 0.25, 0.375, 0.5)
DEFAULT_TOKENS = 64


def quantize_for(layer, D: torch.Tensor | None) -> PackedWeight:
    """Quantize a `TTQLinear`'s residual weight with scale D in the layer's own format and backend."""
    return ops.quantize(
        layer.weight, D, bits=layer.bits, group_size=layer.group_size, sym=layer.sym,
        zero=layer.zero, beta=layer.beta, backend=layer.backend,
    )  # fmt: skip


def token_subsample(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """``tokens`` rows of x ``[T, K]`` evenly spaced from the first to the last (all of x if T <= tokens)."""
    T = x.shape[0]
    if T <= tokens:
        return x
    idx = torch.linspace(0, T - 1, tokens, device=x.device).round().long()
    return x.index_select(0, idx)


@dataclass(frozen=True)
class AlphaSearch:
    """A `TTQLinear` requantizer: alpha from ``grid`` by output error on ``tokens`` prompt tokens.

    grid: candidate alphas, each in [0, 1] (0 is RTN, so the search never does worse
    than RTN on the sampled tokens).  tokens: rows of the prompt used to score them.
    """

    grid: tuple[float, ...] = DEFAULT_GRID
    tokens: int = DEFAULT_TOKENS

    def __post_init__(self):
        grid = tuple(self.grid)
        if not grid or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1 for a in grid):
            raise ValueError(f"AlphaSearch grid must be a non-empty sequence of numbers in [0, 1], got {self.grid!r}")
        if not isinstance(self.tokens, int) or isinstance(self.tokens, bool) or self.tokens < 1:
            raise ValueError(f"AlphaSearch tokens must be an int >= 1, got {self.tokens!r}")
        object.__setattr__(self, "grid", tuple(float(a) for a in grid))

    @torch.no_grad()
    def __call__(self, layer, x: torch.Tensor) -> tuple[float, torch.Tensor, PackedWeight]:
        """For a `TTQLinear` and its prompt x ``[..., K]``: ``(alpha, D fp32 [K], PackedWeight)`` chosen."""
        x2 = x.reshape(-1, x.shape[-1])
        sub = token_subsample(x2, self.tokens)
        target = F.linear(sub.float(), layer.weight.float())
        best = None
        for alpha in self.grid:
            D = ops.act_scale(x2, p=layer.p, lam=layer.lam, alpha=alpha, backend=layer.backend)
            pw = quantize_for(layer, D)
            err = float((ops.qmatmul(sub, pw, D, backend=layer.backend).float() - target).square().sum())
            if best is None or err < best[0]:
                best = (err, alpha, D, pw)
        return best[1], best[2], best[3]
