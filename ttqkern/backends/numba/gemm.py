"""Small-T GEMM and the prefill unpack on the canonical word planes (plain Numba).

- `buffered` (``FUSED_MAX_T < T < DEQUANT_MIN_T`` on the portable path): per row,
  unpack once into an L1-resident fp32 row ``s * code`` (permuted), then one dot
  per token: the unpack is paid once for all T tokens.  Grid: row blocks of
  ``BLOCK_N``.  Bytes per row: the row's codes and scales once, x~ from L1/L2.
- `unpack_rows` (``T >= DEQUANT_MIN_T``, fast layout): every row's ``s * u`` in the
  permuted order as fp32 ``[N, L]`` for a BLAS matmul with the permuted activations
  (the offsets term is a small ``X~ m^T`` GEMM, added by the host).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._common import REASSOC, STRICT
from .gemv_words import _dot, _fill_se, _row_tail, _se_buffers, _unpack16, _unpack32


@numba.njit(parallel=True, **REASSOC)
def buffered(w1, m1, Wg1, w2, m2, Wg2, xs, off2, Xg, scales, zp_f, zp_i, off_mode, half,
             u, B, bias, block_n, y):  # pragma: no cover - compiled  # fmt: skip
    """Small-T GEMM: each row unpacked once into fp32 (scales applied), then a dot per token."""
    N = scales.shape[0]
    T = Xg.shape[0]
    L = xs.shape[1]
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1, se1_c, se2, se2_c = _se_buffers(w1, w2)
        buf = np.empty(L, np.float32)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            _fill_se(scales, n, Wg1, se1, se1_c)
            _unpack32(w1[n], se1, m1, buf[:off2])
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
                _unpack16(w2[n], se2, m2, buf[off2:])
            for t in range(T):
                y[t, n] = _dot(xs[t], buf) + _row_tail(n, t, Xg, scales, zp_f, zp_i, off_mode, half, u, B, bias)


@numba.njit(parallel=True, **STRICT)
def unpack_rows(w1, m1, Wg1, w2, m2, Wg2, off2, scales, block_n, out):  # pragma: no cover - compiled
    """out fp32 ``[N, L]``: every row's ``s * code`` in the permuted order of `buffered`.

    Multiplied by the permuted, pre-scaled activations this is ``x~ (s * u)^T`` -- the
    prefill path hands it to BLAS (the offsets term is added separately).
    """
    N = scales.shape[0]
    two = w2.shape[1] > 0
    nblk = (N + block_n - 1) // block_n
    for blk in prange(nblk):
        se1, se1_c, se2, se2_c = _se_buffers(w1, w2)
        for n in range(blk * block_n, min(N, (blk + 1) * block_n)):
            row = out[n]
            _fill_se(scales, n, Wg1, se1, se1_c)
            _unpack32(w1[n], se1, m1, row[:off2])
            if two:
                _fill_se(scales, n, Wg2, se2, se2_c)
                _unpack16(w2[n], se2, m2, row[off2:])
