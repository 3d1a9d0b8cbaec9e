"""Activation prologues of the word-plane kernels: ``x / D``, group sums, permuted activations, ``x A^T``.

The blocked and lut kernels (`gemv_blocked`, `gemv_lut`) do their own prologue
inside the kernel call; these serve `gemv_words`, `gemm` and `generic` (the
portable paths and prefill).  See `gemv_words` for the permuted layout.
"""

from __future__ import annotations

import numba
import numpy as np

from ._common import REASSOC, REASSOC_INLINE, STRICT, STRICT_INLINE


@numba.njit(**REASSOC_INLINE)
def group_sums(xp, g, Xg):  # pragma: no cover - compiled
    """Xg ``[T, G]``: the per-group sums X~ of xp ``[T, >= G * g]``."""
    T, G = Xg.shape
    for t in range(T):
        for j in range(G):
            acc = np.float32(0.0)
            for k in range(j * g, (j + 1) * g):
                acc += xp[t, k]
            Xg[t, j] = acc


@numba.njit(**STRICT_INLINE)
def scale_pad(x, D, has_D, xp):  # pragma: no cover - compiled
    """xp ``[T, Kp]`` = x ``[T, K]`` / D (true division, as the reference's x / D), zero past K."""
    T, K = x.shape
    Kp = xp.shape[1]
    for t in range(T):
        if has_D:
            for k in range(K):
                xp[t, k] = x[t, k] / D[k]
        else:
            for k in range(K):
                xp[t, k] = x[t, k]
        for k in range(K, Kp):
            xp[t, k] = 0.0


@numba.njit(**REASSOC_INLINE)
def lowrank_column(x, A, u, j):  # pragma: no cover - compiled
    """u[:, j] = x A[j]^T: one rank's column of ``u = x A^T`` (x ``[T, K]`` unscaled, spec stage 5)."""
    for t in range(x.shape[0]):
        acc = np.float32(0.0)
        for k in range(x.shape[1]):
            acc += x[t, k] * A[j, k]
        u[t, j] = acc


# A token whose largest |x~| lies outside [2^-60, 2^60] goes to the dequantize + BLAS
# path: the word-plane kernels pre-scale x~ by up to 2^-14 (`permute`: subnormal x~
# would lose bits) and sum x~ times codes before the scale (huge x~ could overflow
# there); so do the lut kernels (docs/numerics.md, rule Q2).
SAFE_MIN, SAFE_MAX = 2.0**-60, 2.0**60


@numba.njit(**STRICT_INLINE)
def extreme(xp, K):  # pragma: no cover - compiled
    """True when some token's largest finite nonzero ``|x~|`` (xp ``[T, >= K]``) is outside ``[SAFE_MIN, SAFE_MAX]``."""
    out = False
    for t in range(xp.shape[0]):
        big = np.float32(0.0)
        for k in range(K):
            a = abs(xp[t, k])
            if a > big and a < np.inf:
                big = a
        if big > 0 and (big < SAFE_MIN or big > SAFE_MAX):
            out = True
    return out


@numba.njit(**STRICT)
def prologue(x, D, has_D, g, xp, Xg):  # pragma: no cover - compiled
    """x fp32 ``[T, K]``, D fp32 ``[K]`` -> xp = x / D zero-padded ``[T, Kp]``, Xg ``[T, G]``.

    Returns `extreme` of x~ (then the caller takes the dequantize + BLAS path).
    """
    scale_pad(x, D, has_D, xp)
    group_sums(xp, g, Xg)
    return extreme(xp, x.shape[1])


@numba.njit(**REASSOC)
def lowrank_left(x, A, u):  # pragma: no cover - compiled
    """u = x A^T: x fp32 ``[T, K]`` (unscaled, spec stage 5), A fp32 ``[r, K]`` -> u ``[T, r]``.

    Serial and tiny (T * r dot products of length K); done here rather than by
    ``torch.matmul`` so a decode step never wakes torch's thread pool between two
    Numba parallel regions (two OpenMP pools spinning on 2 cores slow each other).
    """
    for t in range(x.shape[0]):
        xt = x[t]
        for r in range(A.shape[0]):
            a = A[r]
            acc = np.float32(0.0)
            for k in range(xt.shape[0]):
                acc += xt[k] * a[k]
            u[t, r] = acc


@numba.njit(**STRICT)
def permute(xp, xs, off, nw, nf, b, factor):  # pragma: no cover - compiled
    """One plane's block of the permuted, pre-scaled activations (see module doc)."""
    T = xp.shape[0]
    cpw = 2 * nf
    for t in range(T):
        for c in range(2):
            for i in range(nf):
                sc = np.float32(factor * 2.0 ** (-b * i))  # exact: a power of two (times 4 for 3-bit hi)
                base = off + (c * nf + i) * nw
                src = c * nf + i
                for w in range(nw):
                    xs[t, base + w] = xp[t, w * cpw + src] * sc


@numba.njit(**STRICT)
def permute3(xp, xs):  # pragma: no cover - compiled
    """The activations for `fused3` (3-bit codes as even / odd nibble words, see there).

    Per token: block E then block O, each ``8 * nw`` long (nw = 2-bit words per row);
    entry ``(c * 4 + i) * nw + w`` of E is ``x~[16 w + 8 c + 2 i] * 2^(-4 i)``, of O the
    next code ``16 w + 8 c + 2 i + 1``.
    """
    T, Kp = xp.shape
    nw = Kp // 16
    half = 8 * nw
    for t in range(T):
        for c in range(2):
            for i in range(4):
                sc = np.float32(2.0 ** (-4 * i))
                base = (c * 4 + i) * nw
                src = 8 * c + 2 * i
                for w in range(nw):
                    xs[t, base + w] = xp[t, 16 * w + src] * sc
                    xs[t, half + base + w] = xp[t, 16 * w + src + 1] * sc
