"""CPU decode layouts of a packed weight, and their exact conversions to and from canonical.

This module imports only torch, so any machine can build, check and convert these
layouts; the Numba kernels that read them live in `ttqkern.backends.numba`.

Two layouts, one per kernel family of the Numba backend (its ``gemv_blocked`` and
``gemv_lut`` modules explain why each is fast):

``blocked`` (bits 4 and 8, ``g % 16 == 0`` and ``128 % g == 0`` or ``g % 128 == 0``)
    Rows in blocks of ``BR`` (4 or 8), K in chunks of 128 codes.  Memory order is
    the order the decode kernel walks: block, chunk, row::

        codes  uint8 [NB, C, BR, CB]   NB = ceil(N / BR), C = ceil(Kp / 128),
                                       CB = 64 (4-bit) or 128 (8-bit) bytes per row-chunk
        sm     fp32  [NB, GQ, 2, BR]   per block and group: BR scales, then BR offsets m

    so a row block streams from one contiguous run.  A 4-bit row-chunk holds its
    128 codes as 16 little-endian 32-bit words; nibble f of word l is code
    ``16 f + l`` of the chunk, so the 16 words' nibble f are 16 *consecutive*
    codes (one field of the kernel, always inside one group).  8-bit row-chunks
    are the codes in order.  ``m`` is the offset of ``w = s * u + m`` (the min, or
    ``-s * z``, or ``-s * 2^(b-1)``, see `PackedWeight.offsets`).  GQ covers the
    padded chunks (``GQ = C * 128 / g`` for ``g < 128``, else G); padding rows,
    codes and groups are 0 with ``s = m = 0``, so they add exactly 0.

``lut`` (bits 2 and 3, and 4, any ``g`` with ``g * b % 32 == 0`` for every plane)
    Rows in blocks of 16 (the 16 lanes of a vector), each plane's 32-bit words
    transposed so that one 64-byte vector holds the same word of 16 rows::

        words  int32 [NB16, W, 16]     per plane (3-bit: lo = 2-bit plane, hi = 1-bit plane)
        sm     fp32  [NB16, G, 2, 16]  per block and group: 16 scales, then 16 offsets

The conversions are exact (codes, scales, offsets and, for integer zero-points,
the zeros themselves are kept), so ``to_canonical(from_canonical(pw))`` gives back
``pw``'s tensors bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format import PackedWeight, num_groups, pack_bits, unpack_bits

CHUNK = 128  # codes per row-chunk of the blocked layout
LUT_ROWS = 16  # rows per block of the lut layout (vector lanes)


def blocked_fits(bits: int, group_size: int) -> bool:
    """Can a weight of this width and group size be stored in the blocked layout?"""
    g = group_size
    return bits in (4, 8) and g % 16 == 0 and (CHUNK % g == 0 or g % CHUNK == 0)


def lut_fits(bits: int, group_size: int, K: int | None = None) -> bool:
    """Can it be stored in the lut layout (every group of every plane whole 32-bit words)?"""
    widths = {2: (2,), 3: (2, 1), 4: (4,)}.get(bits)
    return widths is not None and all(group_size * b % 32 == 0 for b in widths)


@dataclass
class Blocked:
    """A weight in the blocked layout (see module doc); ``N, K, bits, group_size`` as in canonical."""

    codes: torch.Tensor  # uint8 [NB, C, BR, CB]
    sm: torch.Tensor  # fp32 [NB, GQ, 2, BR]
    N: int
    K: int
    bits: int
    group_size: int
    rows: int  # BR
    zeros: torch.Tensor | None = None  # int32 [N, G] kept for zero="int" (exact round trip)
    sym: bool = False
    zero: str = "float"

    @property
    def chunks(self) -> int:
        return self.codes.shape[1]

    @property
    def groups_stored(self) -> int:
        return self.sm.shape[1]


def blocked_shapes(N: int, K: int, bits: int, group_size: int, rows: int) -> dict[str, tuple[int, ...]]:
    """Shapes of `Blocked.codes` and `Blocked.sm` for these parameters."""
    g = group_size
    G = num_groups(K, g)
    C = -(-G * g // CHUNK)
    GQ = C * CHUNK // g if g < CHUNK else G
    NB = -(-N // rows)
    return {"codes": (NB, C, rows, CHUNK * bits // 8), "sm": (NB, GQ, 2, rows)}


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[0])) if n > t.shape[0] else t


def to_blocked(pw: PackedWeight, rows: int = 8) -> Blocked:
    """Canonical (bits 4 or 8) -> blocked layout with ``rows`` rows per block."""
    if not blocked_fits(pw.bits, pw.group_size):
        raise ValueError(f"the blocked layout needs bits 4 or 8 and a group size dividing or divided by 128, "
                         f"got bits={pw.bits}, group_size={pw.group_size}")  # fmt: skip
    N, K, g = pw.N, pw.K, pw.group_size
    shp = blocked_shapes(N, K, pw.bits, g, rows)
    NB, C, _, CB = shp["codes"]
    GQ = shp["sm"][1]
    Kq = C * CHUNK
    codes = pw.codes() if pw.bits == 4 else pw.qweight[:, :K]  # [N, K] uint8 codes
    codes = torch.nn.functional.pad(codes, (0, Kq - K))
    codes = _pad_rows(codes, NB * rows).view(NB, rows, C, CHUNK)
    if pw.bits == 4:  # field f, lane l = code 16 f + l: byte 4 l + b = code(32 b + l) | code(32 b + 16 + l) << 4
        c = codes.view(NB, rows, C, 4, 2, 16)  # [.., b, nibble, l]
        byte = c[..., 0, :] | (c[..., 1, :] << 4)  # [.., b, l]
        codes = byte.transpose(-1, -2).reshape(NB, rows, C, CB)
    codes = codes.transpose(1, 2).contiguous()  # [NB, C, rows, CB]
    G = pw.num_groups

    def grid(t: torch.Tensor) -> torch.Tensor:  # [N, G] -> [NB, GQ, rows] zero padded
        t = torch.nn.functional.pad(t.to(torch.float32), (0, GQ - G))
        return _pad_rows(t, NB * rows).view(NB, rows, GQ).transpose(1, 2)

    sm = torch.stack([grid(pw.scales), grid(pw.offsets())], dim=2).contiguous()  # [NB, GQ, 2, rows]
    return Blocked(codes, sm, N, K, pw.bits, g, rows, pw.zeros if (pw.zero == "int" and not pw.sym) else None,
                   pw.sym, pw.zero)  # fmt: skip


def from_blocked(bl: Blocked) -> PackedWeight:
    """Blocked -> canonical `PackedWeight` (exact inverse of `to_blocked`)."""
    N, K, g, rows = bl.N, bl.K, bl.group_size, bl.rows
    NB, C = bl.codes.shape[:2]
    G = num_groups(K, g)
    Kp = G * g
    codes = bl.codes.transpose(1, 2)  # [NB, rows, C, CB]
    if bl.bits == 4:
        byte = codes.reshape(NB, rows, C, 16, 4).transpose(-1, -2)  # [.., b, l]
        lo, hi = byte & 15, byte >> 4
        codes = torch.stack([lo, hi], dim=-2).reshape(NB, rows, C, CHUNK)  # [.., b, nibble, l] -> code order
    u = codes.reshape(NB * rows, C * CHUNK)[:N, :Kp]
    qweight = pack_bits(u, 4) if bl.bits == 4 else u.contiguous()
    sm = bl.sm.transpose(2, 3).reshape(NB, bl.sm.shape[1], rows, 2).transpose(1, 2)  # [NB, rows, GQ, 2]
    sm = sm.reshape(NB * rows, -1, 2)[:N, :G]
    scales = sm[..., 0].contiguous()
    mins = sm[..., 1].contiguous() if (bl.zero == "float" and not bl.sym) else None
    zeros = bl.zeros if (bl.zero == "int" and not bl.sym) else None
    return PackedWeight(qweight=qweight, scales=scales, bits=bl.bits, group_size=g, shape=(N, K), sym=bl.sym,
                        zero=bl.zero, mins=mins, zeros=zeros)  # fmt: skip


@dataclass
class Lut:
    """A weight in the lut layout (see module doc)."""

    planes: tuple[torch.Tensor, ...]  # int32 [NB16, W_p, 16] per plane: (codes,) or (lo, hi) for 3 bits
    sm: torch.Tensor  # fp32 [NB16, G, 2, 16]
    N: int
    K: int
    bits: int
    group_size: int
    zeros: torch.Tensor | None = None
    sym: bool = False
    zero: str = "float"


def _transpose_words(plane: torch.Tensor, NB: int) -> torch.Tensor:
    """uint8 [N, bytes] (bytes % 4 == 0) -> int32 [NB, W, 16]."""
    w = _pad_rows(plane.contiguous(), NB * LUT_ROWS).view(torch.int32)  # [N16, W]
    return w.view(NB, LUT_ROWS, -1).transpose(1, 2).contiguous()


def _untranspose_words(words: torch.Tensor, N: int) -> torch.Tensor:
    NB, W, _ = words.shape
    return words.transpose(1, 2).reshape(NB * LUT_ROWS, W)[:N].contiguous().view(torch.uint8)


def to_lut(pw: PackedWeight) -> Lut:
    """Canonical (bits 2, 3 or 4) -> lut layout."""
    if not lut_fits(pw.bits, pw.group_size, pw.K):
        raise ValueError(f"the lut layout needs bits 2, 3 or 4 and whole 32-bit words per row, got bits={pw.bits}, "
                         f"group_size={pw.group_size}, K={pw.K}")  # fmt: skip
    N, G = pw.N, pw.num_groups
    NB = -(-N // LUT_ROWS)
    src = (pw.qweight, pw.qweight_hi) if pw.bits == 3 else (pw.qweight,)
    planes = tuple(_transpose_words(p, NB) for p in src)

    def grid(t: torch.Tensor) -> torch.Tensor:  # [N, G] -> [NB, G, 16]
        return _pad_rows(t.to(torch.float32), NB * LUT_ROWS).view(NB, LUT_ROWS, G).transpose(1, 2)

    sm = torch.stack([grid(pw.scales), grid(pw.offsets())], dim=2).contiguous()
    return Lut(planes, sm, N, pw.K, pw.bits, pw.group_size, pw.zeros if (pw.zero == "int" and not pw.sym) else None,
               pw.sym, pw.zero)  # fmt: skip


def from_lut(lt: Lut) -> PackedWeight:
    """Lut -> canonical `PackedWeight` (exact inverse of `to_lut`)."""
    N, G = lt.N, num_groups(lt.K, lt.group_size)
    planes = [_untranspose_words(p, N) for p in lt.planes]
    sm = lt.sm.transpose(1, 3).reshape(-1, 2, G)[:N]  # [N, 2, G]
    scales = sm[:, 0].contiguous()
    mins = sm[:, 1].contiguous() if (lt.zero == "float" and not lt.sym) else None
    zeros = lt.zeros if (lt.zero == "int" and not lt.sym) else None
    return PackedWeight(qweight=planes[0], qweight_hi=planes[1] if lt.bits == 3 else None, scales=scales,
                        bits=lt.bits, group_size=lt.group_size, shape=(N, lt.K), sym=lt.sym, zero=lt.zero,
                        mins=mins, zeros=zeros)  # fmt: skip


__all__ = ["CHUNK", "LUT_ROWS", "Blocked", "Lut", "blocked_fits", "blocked_shapes", "from_blocked", "from_lut",
           "lut_fits", "to_blocked", "to_lut", "unpack_bits"]  # fmt: skip
