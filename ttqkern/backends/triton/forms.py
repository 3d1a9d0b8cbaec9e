"""Quantization form codes shared by the host and device code: every form is ``w = s * u + m``.

(`ttqkern.format` explains the unsigned codes; the form only changes how the
offset m is stored: float minima, integer zero-points, or implied by symmetry.)
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...quant import Form

# constexpr codes of the forms, as kernels receive them: the values of `ttqkern.quant.Form`
MODE_FLOAT, MODE_INT, MODE_SYM = int(Form.FLOAT), int(Form.INT), int(Form.SYM)


@triton.jit
def offsets(s, zp_ptr, idx, MODE: tl.constexpr, BITS: tl.constexpr):
    """Offsets m (fp32, shape of ``s``) with ``w = s * u + m``: float mins, ``-s * zero`` or ``-s * 2^(b-1)``.

    ``idx`` addresses the ``[N, G]`` mins (float form) or int32 zeros (int form).
    """
    if MODE == 0:
        return tl.load(zp_ptr + idx)
    elif MODE == 1:
        return -s * tl.load(zp_ptr + idx).to(tl.float32)
    else:
        return -s * (1 << (BITS - 1))


@triton.jit
def centre(s, cq_ptr, m0_ptr, row, grp, G, G4, magic, MODE: tl.constexpr, BITS: tl.constexpr):
    """``(c, m0)`` fp32 (shape of ``s``) of groups ``(row, grp)``: ``w = s * (u - c) + m0`` (docs/numerics.md Q1).

    c, the group's zero code, comes from `qmatmul.centres`: one byte per group, four
    groups per int32 word (``cq [N, G4]``), turned into a float with the magic of
    `unpack.field_scaled` (no I2F); m0 = s * c + m rounded once (``m0 [N, G]`` fp32).
    The symmetric form needs neither: c = 2^(b-1), m0 = 0.
    """
    if MODE == 2:
        c = tl.zeros_like(s) + (1 << (BITS - 1))
        m0 = tl.zeros_like(s)
    else:
        word = tl.load(cq_ptr + row * G4 + grp // 4)
        byte = (word >> ((grp % 4) * 8)) & 0xFF
        c = (byte | magic).to(tl.float32, bitcast=True) - 8388608.0
        m0 = tl.load(m0_ptr + row * G + grp)
    return c, m0
