"""Small-T GEMM and the prefill unpack on the canonical word planes (plain Numba).

- `buffered` (``FUSED_MAX_T < T < DEQUANT_MIN_T`` on the word-plane path): per row,
  unpack once into an L1-resident fp32 row ``s * (code - c)`` (permuted, centred as
  in `gemv_words`), then one dot per token: the unpack is paid once for all T
  tokens.  Grid: row blocks of ``BLOCK_N``.  Bytes per row: the row's codes and
  scales once, x~ from L1/L2.
- `unpack_rows` (``T >= DEQUANT_MIN_T``, word planes): every row's ``s * (u - c)``
  in the permuted order as fp32 ``[N, L]`` for a BLAS matmul with the permuted
  activations (the offsets term is a small ``X~ m0^T`` GEMM, added by the host).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import REASSOC, STRICT, STRICT_INLINE
from .gemv_words import _dot, _fill_centre, _fill_se, _row_tail, _unpack16, _unpack32, _word_buffers


@numba.njit(**STRICT_INLINE)
def _unpack_row(n, w1, m1, r1, Wg1, w2, m2, r2, Wg2, off2, scales, c, bufs, dst):  # pragma: no cover - compiled
    """dst fp32 ``[L]`` = row n's ``s * (code - c)`` in the permuted order, both planes.

    bufs: per-word scale and centre buffers (`_word_buffers` twice) and an fp32 ``[2, G]`` scratch.
    """
    se1, se1_c, se2, se2_c, ce1, ce1c, ce2, ce2c, cg = bufs
    _fill_se(scales, n, Wg1, se1, se1_c)
    _fill_centre(c, n, Wg1, r1, ce1, ce1c, Wg2, r2, ce2, ce2c, cg)
    _unpack32(w1[n], se1, ce1, m1, dst[:off2])
    if w2.shape[1] > 0:
        _fill_se(scales, n, Wg2, se2, se2_c)
        _unpack16(w2[n], se2, ce2, m2, dst[off2:])


@numba.njit(parallel=True, **REASSOC)
def buffered(w1, m1, r1, Wg1, w2, m2, r2, Wg2, xs, off2, Xg, scales, c, m0, has_m0,
             u, B, bias, block_n, y):  # pragma: no cover - compiled  # fmt: skip
    """Small-T GEMM: each row unpacked once into fp32 (scales applied), then a dot per token."""
    N, G = scales.shape
    T = Xg.shape[0]
    L = xs.shape[1]
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        bufs = (*_word_buffers(w1, w2), *_word_buffers(w1, w2), np.empty((2, G), np.float32))
        buf = np.empty(L, np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _unpack_row(n, w1, m1, r1, Wg1, w2, m2, r2, Wg2, off2, scales, c, bufs, buf)
            for t in range(T):
                y[t, n] = _dot(xs[t], buf) + _row_tail(t, Xg, m0[n], has_m0, u, B, bias, n)


@numba.njit(parallel=True, **STRICT)
def unpack_rows(w1, m1, r1, Wg1, w2, m2, r2, Wg2, off2, scales, c, block_n, out):  # pragma: no cover - compiled
    """out fp32 ``[N, L]``: every row's ``s * (code - c)`` in the permuted order of `buffered`.

    Multiplied by the permuted, pre-scaled activations this is ``x~ (s * (u - c))^T``
    -- the prefill path hands it to BLAS and adds ``X~ m0^T`` (`centres`).
    """
    N, G = scales.shape
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        bufs = (*_word_buffers(w1, w2), *_word_buffers(w1, w2), np.empty((2, G), np.float32))
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _unpack_row(n, w1, m1, r1, Wg1, w2, m2, r2, Wg2, off2, scales, c, bufs, out[n])
