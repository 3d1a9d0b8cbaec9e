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
