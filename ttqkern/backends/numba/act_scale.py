"""Stage 1: column p-norms of x over the tokens, in parallel over column blocks.

Grid: one task per ``BLOCK_K`` columns; each walks the T rows of its block (rows are
contiguous, so a block is read as T short contiguous runs).  Sums are kept in fp64,
which makes the norms at least as accurate as torch's fp32 reduction, and relative
to the column max for p other than 1, 2, inf (no ``|x|^p`` overflow for any p); the cheap
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
    """x fp32 ``[T, K]`` -> fp32 ``[K]``: ``||x[:, k]||_p`` (p = inf: max |x|).

    p = 1, 2 sum ``|x|`` / ``x^2`` in fp64, which cannot overflow or underflow for fp32
    inputs.  Any other p first takes the column max ``a`` (a second pass over the
    block, still in cache) and sums ``(|x| / a)^p <= 1``: ``|x|^p`` overflows even
    fp64 for p = 1000 (docs/numerics.md).  A column holding inf or nan is summed
    unscaled, so its norm is inf or nan as the reference's.
    """
    T, K = x.shape
    out = np.empty(K, np.float32)
    nblk = (K + block_k - 1) // block_k
    is_inf = p == np.inf
    generic = not is_inf and p != 1.0 and p != 2.0
    acc = np.empty(K, np.float64)
    inv = np.empty(K, np.float64)
    for b in prange(nblk):
        k0 = b * block_k
        k1 = min(K, k0 + block_k)
        for k in range(k0, k1):
            acc[k] = 0.0
        if is_inf or generic:
            for t in range(T):
                for k in range(k0, k1):
                    v = abs(np.float64(x[t, k]))
                    # max that propagates nan, as torch's norm does
                    if v > acc[k] or v != v:  # noqa: PLR0124 (v != v: nan test, numba-friendly)
                        acc[k] = v
        if generic:
            for k in range(k0, k1):
                a = acc[k]
                inv[k] = 1.0 / a if 0.0 < a < np.inf else 1.0  # inf / nan / zero columns: unscaled
                acc[k] = 0.0
            for t in range(T):
                for k in range(k0, k1):
                    acc[k] += (abs(np.float64(x[t, k])) * inv[k]) ** p
        elif not is_inf:
            for t in range(T):
                for k in range(k0, k1):
                    v = abs(np.float64(x[t, k]))
                    acc[k] += v * v if p == 2.0 else v
        for k in range(k0, k1):
            a = acc[k]
            if is_inf or p == 1.0:
                out[k] = np.float32(a)
            elif p == 2.0:
                out[k] = np.float32(np.sqrt(a))
            else:
                out[k] = np.float32(a ** (1.0 / p) / inv[k])
    return out


def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float) -> torch.Tensor:
    """x ``[T, K]`` fp32/fp16/bf16 (T, K >= 1) -> D fp32 ``[K]`` (see `reference.act_scale`)."""
    T, K = x.shape
    cfg = config.params("act_scale", T=T, K=K)
    with config.threads_for(T * K, cfg):
        n = _colnorms(as_f32(x), float(p), cfg["BLOCK_K"])
    return reference.scale_from_norms(torch.from_numpy(n), lam, alpha)
