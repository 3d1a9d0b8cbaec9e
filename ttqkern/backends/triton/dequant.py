"""Prefill fallback: dequantize once into the activation dtype, then one cuBLAS GEMM.

For many tokens the GEMM is compute-bound and cuBLAS is the fastest GEMM there
is; dequantizing the packed weight costs one pass over it (read ``b/8`` bytes,
write 2 bytes per weight), which a long prefill amortises.  The TTQ prologue and
the low-rank term fold into the dequantized weight itself,

    W_eff[n, k] = (s * (u - c) + m0)[n, k] / D[k] + (B A)[n, k]      (centred: docs/numerics.md),

so ``y = x W_eff^T + bias`` is a single ``torch.nn.functional.linear`` call: two
launches in all.  Which T takes this path is the tunable ``DEQUANT_MIN_T``
(`config`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .forms import centre
from .qdot import chunk_codes
from .unpack import load_magic, round_to


@triton.jit
def _dequant_kernel(
    magic_ptr, q0_ptr, q1_ptr, s_ptr, cq_ptr, m0_ptr, D_ptr, A_ptr, B_ptr, w_ptr,
    N, K, G, G4, g, NCH, R,
    BITS: tl.constexpr, MODE: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, WPC0: tl.constexpr,
    WPC1: tl.constexpr, CPG: tl.constexpr, CCD: tl.constexpr, HAS_D: tl.constexpr, HAS_LR: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``W_eff [N, K]`` (w_ptr's dtype) for chunk pid1 of rows ``[pid0 * BLOCK_N, +BLOCK_N)``.

    Grid ``(cdiv(N, BLOCK_N), NCH)``.  Traffic: the packed chunk once, one scale
    and offset per row, CCD values of D and (low rank) ``R x CCD`` of A per
    program, ``BLOCK_N x CCD`` values written.
    """
    magic = load_magic(magic_ptr)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1)
    rmask = rows < N
    rows = tl.minimum(rows, N - 1)
    grp = c // CPG
    s = tl.load(s_ptr + rows * G + grp)
    cz, m0 = centre(s, cq_ptr, m0_ptr, rows, grp, G, G4, magic, MODE, BITS)
    u = chunk_codes(q0_ptr, q1_ptr, rows, c, NCH, magic, magic, cz, B0, B1, WPC0, WPC1, False, 0.0, tl.float32)
    w = u * s[:, None] + m0[:, None]  # centred (docs/numerics.md Q1)
    local = (c % CPG) * CCD + tl.arange(0, CCD)
    k = (c // CPG) * g + local
    kmask = (local < g) & (k < K)
    if HAS_D:
        w = w / tl.load(D_ptr + k, mask=kmask, other=1.0)[None, :]
    if HAS_LR:
        rs = tl.arange(0, BLOCK_R)
        rm = rs < R
        b = tl.load(B_ptr + rows[:, None].to(tl.int64) * R + rs[None, :], mask=rm[None, :], other=0.0)
        a = tl.load(A_ptr + rs[:, None].to(tl.int64) * K + k[None, :], mask=rm[:, None] & kmask[None, :], other=0.0)
        w += tl.dot(b.to(tl.float32), a.to(tl.float32), input_precision="ieee")
    dst = w_ptr + rows[:, None].to(tl.int64) * K + k[None, :]
    tl.store(dst, round_to(w, w_ptr.dtype.element_ty), mask=rmask[:, None] & kmask[None, :])
