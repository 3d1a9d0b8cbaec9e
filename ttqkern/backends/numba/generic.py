"""Kernels for any canonical weight, including group sizes that are not whole words (e.g. g = 37).

- `generic`: centred codes ``u - c`` extracted one by one from the bytes into a
  per-group fp32 buffer, then dotted with x~ per token.  Grid: row blocks of ``BLOCK_N``.
- `dequantize`: ``Wq' = s * (u - c) + m0`` as fp32 ``[N, K]`` in natural order, for a
  BLAS matmul (prefill on these layouts, and calls whose x~ is outside
  ``[SAFE_MIN, SAFE_MAX]``: `prologue.prologue`, docs/numerics.md rule Q2).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import REASSOC, STRICT, STRICT_INLINE
from .gemv_words import _dot, _row_tail


@numba.njit(**STRICT_INLINE)
def _code(qw, qhi, bits, n, k):  # pragma: no cover - compiled
    """The stored code u[n, k] read from the canonical bytes."""
    if bits == 3:
        lo = (qw[n, k >> 2] >> ((k & 3) * 2)) & 3
        hi = (qhi[n, k >> 3] >> (k & 7)) & 1
        return np.int32(lo) | (np.int32(hi) << 2)
    per = 8 // bits
    return np.int32((qw[n, k // per] >> ((k % per) * bits)) & ((1 << bits) - 1))


@numba.njit(parallel=True, **REASSOC)
def generic(qw, qhi, bits, g, xp, Xg, scales, c, m0, has_m0, u, B, bias, block_n, y):  # pragma: no cover
    """Any canonical layout: centred codes extracted one by one into a per-group fp32 buffer."""
    N, G = scales.shape
    T = Xg.shape[0]
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        cb = np.empty(g, np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            for t in range(T):
                y[t, n] = _row_tail(t, Xg, m0[n], has_m0, u, B, bias, n)
            for j in range(G):
                cj = c[n, j]
                for k in range(g):
                    cb[k] = np.float32(_code(qw, qhi, bits, n, j * g + k) - cj)
                s = scales[n, j]
                for t in range(T):
                    y[t, n] += s * _dot(xp[t, j * g : (j + 1) * g], cb)


@numba.njit(parallel=True, **STRICT)
def dequantize(qw, qhi, bits, g, K, scales, c, m0, block_n, out):  # pragma: no cover
    """out fp32 ``[N, K]`` = ``s * (u - c) + m0`` (the scaled weight Wq', not divided by D; `centres`)."""
    N, G = scales.shape
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            for j in range(G):
                s = scales[n, j]
                cj = c[n, j]
                m = m0[n, j]
                for k in range(j * g, min(K, (j + 1) * g)):
                    out[n, k] = s * np.float32(_code(qw, qhi, bits, n, k) - cj) + m
