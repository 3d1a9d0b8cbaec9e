"""Stage 1: column p-norms of x over the tokens, in parallel over column blocks.

Grid: one task per ``BLOCK_K`` columns; each walks the T rows of its block (rows are
contiguous, so a block is read as T short contiguous runs).  Sums are kept in fp64,
which makes the norms at least as accurate as torch's fp32 reduction; the cheap
``D = (c + lam * mean(c))^alpha`` over K values is the reference's own code, so its
edge cases (all-zero x -> 1, clamping, nan propagation) are identical by construction.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from ... import reference
from . import config
from ._common import STRICT, as_f32


@numba.njit(parallel=True, **STRICT)
def _colnorms(x, p, block_k):  # pragma: no cover - compiled
    """x fp32 ``[T, K]`` -> fp32 ``[K]``: ``||x[:, k]||_p`` (p = inf: max |x|)."""
    T, K = x.shape
    out = np.empty(K, np.float32)
    nblk = (K + block_k - 1) // block_k
    is_inf = p == np.inf
    acc = np.empty(K, np.float64)
    for b in prange(nblk):
        k0 = b * block_k
        k1 = min(K, k0 + block_k)
        for k in range(k0, k1):
            acc[k] = 0.0
        for t in range(T):
            for k in range(k0, k1):
                v = abs(np.float64(x[t, k]))
                if is_inf:
                    # max that propagates nan, as torch's norm does
                    if v > acc[k] or v != v:  # noqa: PLR0124 (v != v: nan test, numba-friendly)
                        acc[k] = v
                elif p == 2.0:
                    acc[k] += v * v
                elif p == 1.0:
                    acc[k] += v
                else:
                    acc[k] += v**p
        for k in range(k0, k1):
            a = acc[k]
            if is_inf or p == 1.0:
                out[k] = np.float32(a)
            elif p == 2.0:
                out[k] = np.float32(np.sqrt(a))
            else:
                out[k] = np.float32(a ** (1.0 / p))
    return out


def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float) -> torch.Tensor:
    """x ``[T, K]`` fp32/fp16/bf16 (T, K >= 1) -> D fp32 ``[K]`` (see `reference.act_scale`)."""
    T, K = x.shape
    cfg = config.params("act_scale", T=T, K=K)
    with config.threads_for(T * K, cfg):
        n = _colnorms(as_f32(x), float(p), cfg["BLOCK_K"])
    return reference.scale_from_norms(torch.from_numpy(n), lam, alpha)
