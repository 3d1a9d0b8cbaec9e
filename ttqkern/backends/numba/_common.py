"""Shared pieces of the Numba kernels: jit options, tensor <-> array views, plane layouts.

Numerics policy (why fastmath is used where it is):

- `STRICT` (no fastmath) for everything that rounds to codes or must keep nan/inf:
  fastmath may turn ``w / s`` into ``w * (1 / s)`` (a different value at exact .5
  ties) and its ``nnan``/``ninf`` flags let LLVM assume away the non-finite groups
  that the spec says must give nan.
- `REASSOC` (``reassoc`` + ``contract`` only) for the dot products of the packed
  GEMV/GEMM: re-ordering fp32 sums (vector lanes, several accumulators, FMA) changes
  results only within the spec's 1e-4 tolerance, and without ``nnan``/``ninf``/``nsz``
  a nan or inf in x, D or a scale still propagates to the output.
"""

from __future__ import annotations

import numpy as np
import torch

from . import cache

# Before any kernel is decorated with cache=True: the kernels' disk cache is keyed by every
# source file they are built from, not only their own (`cache`).
cache.install()

STRICT = {"cache": True, "nogil": True}
REASSOC = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract"}}
# Helpers called in hot loops are inlined at Numba-IR level: a call with array arguments
# costs an atomic refcount increment and decrement per array (NRT), tens of cycles each,
# and inlining lets the refcount pruning pass drop them.  Inlined code takes the
# *caller's* fastmath flags, so a helper is only inlined into callers with the same.
STRICT_INLINE = {**STRICT, "inline": "always"}
REASSOC_INLINE = {**REASSOC, "inline": "always"}


def as_f32(t: torch.Tensor | None) -> np.ndarray:
    """A C-contiguous fp32 numpy view (a copy only when dtype/layout differ).

    None becomes an empty ``[0]`` array so that kernels keep one signature.
    """
    if t is None:
        return np.empty(0, np.float32)
    return t.detach().to(torch.float32).contiguous().numpy()


def as_np(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor, same dtype."""
    return t.detach().contiguous().numpy()


# per code width b: the field masks of a half word (see `Plane`), and sum_i 2^(b*i): a value
# times it has that value in every field (a per-group centre, ANDed with a mask per field)
_MASKS = {
    b: tuple(np.int32(((1 << b) - 1) << (b * i)) for i in range((16 if b == 1 else 32) // 2 // b)) for b in (1, 2, 4, 8)
}
_REP = {b: sum(1 << (b * i) for i in range(len(m))) for b, m in _MASKS.items()}


class Plane:
    """How one bit plane of a `PackedWeight` is read by the fast kernels.

    A plane of ``b``-bit codes (b = 1, 2, 4, 8) is read as machine words of ``WB``
    bits (uint16 for 1-bit planes, uint32 otherwise), each word split into two
    ``WB/2``-bit halves of ``nf = WB / 2 / b`` fields.  A field is extracted as
    ``int32(half & mask_i)`` with ``mask_i = (2^b - 1) << (b * i)`` -- the code
    times ``2^(b*i)``, converted to fp32 exactly -- so one AND and one convert per
    code, no shift; the ``2^(-b*i)`` is folded into the permuted activations.
    Halves are at most 16 bits, so the int32 reinterpretation is never negative.

    ``factor`` multiplies the plane's contribution (4 for the ``hi`` plane of 3-bit
    codes: ``q = lo + 4 * hi``).  ``rep = sum_i 2^(b*i)``: ``c * rep`` holds a group's
    zero code c in every field, so ``field - ((c * rep) & mask_i)`` is the centred code.  Valid when a group is a whole number of words
    (``g * b % WB == 0``): every word then lies in one group, rows are whole words.
    """

    def __init__(self, packed: torch.Tensor, b: int, factor: float, group_size: int):
        self.b = b
        self.WB = 16 if b == 1 else 32
        self.nf = self.WB // 2 // b  # fields per half word
        self.cpw = 2 * self.nf  # codes per word
        self.Wg = group_size * b // self.WB  # words per group
        self.factor = factor
        self.words = as_np(packed).view(np.uint16 if self.WB == 16 else np.uint32)
        self.masks = _MASKS[b]
        self.rep = _REP[b]
        self.shift = self.WB // 2

    @staticmethod
    def fits(b: int, group_size: int) -> bool:
        return group_size * b % (16 if b == 1 else 32) == 0


def planes(pw) -> list[Plane] | None:
    """The `Plane` list of a canonical `PackedWeight`, or None when the fast layout does not apply."""
    g = pw.group_size
    spec = [(pw.qweight, 2, 1.0), (pw.qweight_hi, 1, 4.0)] if pw.bits == 3 else [(pw.qweight, pw.bits, 1.0)]
    if not all(Plane.fits(b, g) for _, b, _ in spec):
        return None
    return [Plane(t, b, f, g) for t, b, f in spec]
