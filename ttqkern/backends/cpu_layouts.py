"""The ``numba_cpu`` layout: a packed weight in the order the CPU decode kernels read it.

This module imports only torch, so any machine can check and convert the layout;
the Numba kernels that read it live in `ttqkern.backends.numba` (their module docs
say why each order is fast).  The layout is registered on import.

A ``numba_cpu`` weight is stored in one of three ways, chosen by bits and group
size g (`kind`):

``blocked`` (bits 4 and 8, ``g % 16 == 0`` and ``128 % g == 0`` or ``g % 128 == 0``)
    Rows in blocks of 8, K in chunks of 128 codes; memory order is the order the
    decode kernel walks (block, chunk, row), so a row block is one contiguous run::

        qweight  uint8 [NB, C, 8, CB]    NB = ceil(N / 8), C = ceil(Kp / 128),
                                         CB = 64 (4-bit) or 128 (8-bit) bytes per row-chunk
        scales   fp32  [NB, GQ, 3, 8]    per block and group: 8 scales s, 8 zero codes c, 8 values m0

    A 4-bit row-chunk holds its 128 codes as 16 little-endian 32-bit words; nibble
    f of word l is code ``16 f + l`` of the chunk, so the 16 words' nibble f are 16
    *consecutive* codes (one field of the kernel, always inside one group).  8-bit
    row-chunks are the codes in order.  ``(c, m0)`` are the group's centre of
    ``w = s * (u - c) + m0`` (`PackedWeight.centred`, docs/numerics.md rule Q1; c
    stored as an exact fp32 integer).  GQ covers the padded chunks (``GQ = C * 128 / g``
    for ``g < 128``, else G); padding rows, codes and groups are 0 with
    ``s = c = m0 = 0``, so they add exactly 0.

``lut`` (bits 2 and 3, symmetric form, ``g * b % 32 == 0`` for each plane)
    Rows in blocks of 16 (the 16 lanes of a vector), each plane's 32-bit words
    transposed so that one 64-byte vector holds the same word of 16 rows::

        qweight     int32 [NB16, Kp * 2 / 32, 16]   2-bit codes (3-bit: the lo plane)
        qweight_hi  int32 [NB16, Kp / 32, 16]       3-bit only: the 1-bit hi plane
        scales      fp32  [NB16, G, 2, 16]          per block and group: 16 scales, 16 values m0 (0)

    The lut kernels' activation tables are shared by the 16 rows of a vector, so they
    can centre the codes only on one zero code for all rows: the symmetric form's
    ``2^(b-1)``.  Asymmetric 2- and 3-bit weights (per-row zero codes) are ``plain``.

``plain`` (any other bits / group size / form): the canonical tensors unchanged.

In every kind, ``mins`` (float form) or ``zeros`` (integer zero-point form) are the
canonical ``[N, G]`` tensors, kept so that the conversions are exact (the kernels
read the centres from ``scales``); symmetric weights hold neither.  So
``to_canonical(from_canonical(pw))`` gives back ``pw``'s tensors bit for bit.
"""

from __future__ import annotations

import torch

from ..format import CANONICAL, Layout, PackedWeight, get_layout, num_groups, pack_bits, register_layout
from ..quant import Form, QuantFormat

NUMBA_CPU = "numba_cpu"
CHUNK = 128  # codes per row-chunk of the blocked kind
BLOCK_ROWS = 8  # rows per block of the blocked kind
LUT_ROWS = 16  # rows per block of the lut kind (vector lanes)
_LUT_WIDTHS = {2: (2,), 3: (2, 1)}


def blocked_fits(bits: int, group_size: int) -> bool:
    """Is a weight of this width and (resolved) group size stored ``blocked``?"""
    g = group_size
    return bits in (4, 8) and g % 16 == 0 and (CHUNK % g == 0 or g % CHUNK == 0)


def nibble_fits(bits: int, group_size: int) -> bool:
    """Can 2- / 3-bit codes be widened to nibbles for the blocked 4-bit kernels (`blocked_arrays`)?

    The asymmetric 2 / 3-bit forms have per-row zero codes, which the lut kernels'
    shared tables cannot centre on (`lut_fits`); their codes fit a nibble, and the 4-bit
    kernels' per-row tables ``s (i - c) + m0`` take any code range.  They then stream
    4.5 bits per weight instead of 2.5 / 3.5, but at the 4-bit kernel's speed, which is
    several times the word-plane kernels' (docs/cpu-kernels.md).
    """
    return bits in (2, 3) and blocked_fits(4, group_size)


def blocked_bits(bits: int) -> int:
    """Code width a blocked weight of ``bits`` is stored at: 8, or nibbles (4) for bits 2-4."""
    return 8 if bits == 8 else 4


def lut_fits(bits: int, group_size: int, sym: bool) -> bool:
    """Could it be stored ``lut`` (bits 2, 3 and 4, symmetric; every plane's groups whole 32-bit words)?

    The layout uses ``lut`` for bits 2 and 3 only; a 4-bit weight in lut order is what
    the lut kernels' 4-bit mode reads (`lut_arrays`).  Symmetric only: the kernels'
    tables centre every row on the same zero code (module doc).
    """
    widths = {**_LUT_WIDTHS, 4: (4,)}.get(bits)
    return sym and widths is not None and all(group_size * b % 32 == 0 for b in widths)


def kind(bits: int, group_size: int, sym: bool) -> str:
    """``"blocked"``, ``"lut"`` or ``"plain"``: how a ``numba_cpu`` weight of this format is stored."""
    if blocked_fits(bits, group_size):
        return "blocked"
    if bits in _LUT_WIDTHS and lut_fits(bits, group_size, sym):
        return "lut"
    return "plain"


def blocked_shapes(N: int, K: int, bits: int, group_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the blocked kind's ``qweight`` and ``scales``."""
    g = group_size
    G = num_groups(K, g)
    C = -(-G * g // CHUNK)
    GQ = C * CHUNK // g if g < CHUNK else G
    NB = -(-N // BLOCK_ROWS)
    return {"qweight": (NB, C, BLOCK_ROWS, CHUNK * bits // 8), "scales": (NB, GQ, 3, BLOCK_ROWS)}


def lut_shapes(N: int, K: int, bits: int, group_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the lut kind's planes (``qweight``, 3-bit ``qweight_hi``) and ``scales``."""
    G = num_groups(K, group_size)
    Kp = G * group_size
    NB = -(-N // LUT_ROWS)
    widths = {**_LUT_WIDTHS, 4: (4,)}[bits]
    out = {"qweight": (NB, Kp * widths[0] // 32, LUT_ROWS)}
    if bits == 3:
        out["qweight_hi"] = (NB, Kp // 32, LUT_ROWS)
    out["scales"] = (NB, G, 2, LUT_ROWS)
    return out


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[0])) if n > t.shape[0] else t


def _grid(t: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    """[N, G] -> [NB, cols, block] (rows padded to NB * block, columns to cols, with zeros)."""
    t = torch.nn.functional.pad(t.to(torch.float32), (0, cols - t.shape[1]))
    return _pad_rows(t, rows * block).view(rows, block, cols).transpose(1, 2)


def _ungrid(t: torch.Tensor, N: int, G: int) -> torch.Tensor:
    """Inverse of `_grid`: [NB, cols, block] -> [N, G]."""
    NB, cols, block = t.shape
    return t.transpose(1, 2).reshape(NB * block, cols)[:N, :G].contiguous()


def blocked_arrays(pw: PackedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """A canonical bits 4 / 8 weight's blocked ``(qweight, scales)`` (see module doc).

    Bits 2 and 3 (where `nibble_fits`) come out as a 4-bit blocked weight holding the
    same codes, scales and centres: the 4-bit kernels read it unchanged.
    """
    N, K, g = pw.N, pw.K, pw.group_size
    nibbles = blocked_bits(pw.bits) == 4
    shp = blocked_shapes(N, K, blocked_bits(pw.bits), g)
    NB, C, R, CB = shp["qweight"]
    GQ = shp["scales"][1]
    codes = pw.codes() if nibbles else pw.qweight[:, :K]  # [N, K] uint8 codes
    codes = torch.nn.functional.pad(codes, (0, C * CHUNK - K))
    codes = _pad_rows(codes, NB * R).view(NB, R, C, CHUNK)
    if nibbles:  # field f, lane l = code 16 f + l: byte 4 l + b = code(32 b + l) | code(32 b + 16 + l) << 4
        c = codes.view(NB, R, C, 4, 2, 16)  # [.., b, nibble, l]
        codes = (c[..., 0, :] | (c[..., 1, :] << 4)).transpose(-1, -2).reshape(NB, R, C, CB)
    qweight = codes.transpose(1, 2).contiguous()  # [NB, C, R, CB]
    c, m0 = pw.centred()
    sm = torch.stack([_grid(pw.scales, NB, GQ, R), _grid(c, NB, GQ, R), _grid(m0, NB, GQ, R)], dim=2).contiguous()
    return qweight, sm


def lut_arrays(pw: PackedWeight) -> tuple[torch.Tensor, ...]:
    """A canonical bits 2 / 3 / 4 weight's lut planes and ``scales``: ``(qweight, qweight_hi | None, scales)``."""
    N, G = pw.N, pw.num_groups
    NB = -(-N // LUT_ROWS)

    def words(plane: torch.Tensor) -> torch.Tensor:  # uint8 [N, bytes] -> int32 [NB, W, 16]
        w = _pad_rows(plane.contiguous(), NB * LUT_ROWS).view(torch.int32)
        return w.view(NB, LUT_ROWS, -1).transpose(1, 2).contiguous()

    hi = words(pw.qweight_hi) if pw.bits == 3 else None
    m0 = pw.centred()[1]  # 0 (symmetric): the tables are centred on 2^(b-1)
    sm = torch.stack([_grid(pw.scales, NB, G, LUT_ROWS), _grid(m0, NB, G, LUT_ROWS)], dim=2).contiguous()
    return words(pw.qweight), hi, sm


def _kept_offsets(pw: PackedWeight) -> torch.Tensor | None:
    return None if pw.form == Form.SYM else pw.offsets_field


class NumbaCpuLayout(Layout):
    """The ``numba_cpu`` layout (see the module doc)."""

    name = NUMBA_CPU

    def planes(self, N, K, fmt: QuantFormat):
        g = fmt.group_for(K)
        k = kind(fmt.bits, g, fmt.sym)
        if k == "plain":
            return get_layout(CANONICAL).planes(N, K, fmt)
        if k == "blocked":
            shp = blocked_shapes(N, K, fmt.bits, g)
            out = {"qweight": (shp["qweight"], torch.uint8), "scales": (shp["scales"], torch.float32)}
        else:
            out = {
                f: (s, torch.float32 if f == "scales" else torch.int32)
                for f, s in lut_shapes(N, K, fmt.bits, g).items()
            }
        G = num_groups(K, g)
        if fmt.form == Form.FLOAT:
            out["mins"] = ((N, G), torch.float32)
        elif fmt.form == Form.INT:
            out["zeros"] = ((N, G), torch.int32)
        return out

    def from_canonical(self, pw: PackedWeight) -> PackedWeight:
        k = kind(pw.bits, pw.group_size, pw.sym)
        fmt, shape = pw.quant_format, pw.shape
        if k == "plain":
            return PackedWeight.build(fmt, shape, qweight=pw.qweight, qweight_hi=pw.qweight_hi, scales=pw.scales,
                                      offsets=_kept_offsets(pw), layout=NUMBA_CPU)  # fmt: skip
        if k == "blocked":
            qweight, sm = blocked_arrays(pw)
            hi = None
        else:
            qweight, hi, sm = lut_arrays(pw)
        return PackedWeight.build(fmt, shape, qweight=qweight, qweight_hi=hi, scales=sm, offsets=_kept_offsets(pw),
                                  layout=NUMBA_CPU)  # fmt: skip

    def to_canonical(self, pw: PackedWeight) -> PackedWeight:
        k = kind(pw.bits, pw.group_size, pw.sym)
        fmt, (N, K), g = pw.quant_format, pw.shape, pw.group_size
        G = num_groups(K, g)
        if k == "plain":
            return PackedWeight.build(fmt, (N, K), qweight=pw.qweight, qweight_hi=pw.qweight_hi, scales=pw.scales,
                                      offsets=_kept_offsets(pw))  # fmt: skip
        sm = pw.scales  # [NB, GQ, 2, R]
        scales = _ungrid(sm[:, :, 0], N, G)
        if k == "blocked":
            NB, C, R = pw.qweight.shape[:3]
            codes = pw.qweight.transpose(1, 2)  # [NB, R, C, CB]
            if pw.bits == 4:
                byte = codes.reshape(NB, R, C, 16, 4).transpose(-1, -2)  # [.., b, l]
                codes = torch.stack([byte & 15, byte >> 4], dim=-2).reshape(NB, R, C, CHUNK)
            u = codes.reshape(NB * R, C * CHUNK)[:N, : G * g]
            qweight = pack_bits(u, 4) if pw.bits == 4 else u.contiguous()
            hi = None
        else:

            def unwords(w: torch.Tensor) -> torch.Tensor:  # int32 [NB, W, 16] -> uint8 [N, 4 W]
                out = torch.empty((N, w.shape[1]), dtype=torch.int32)  # dense even when W == 1
                out.copy_(w.transpose(1, 2).reshape(-1, w.shape[1])[:N])
                return out.view(torch.uint8)

            qweight = unwords(pw.qweight)
            hi = unwords(pw.qweight_hi) if pw.bits == 3 else None
        return PackedWeight.build(fmt, (N, K), qweight=qweight, qweight_hi=hi, scales=scales,
                                  offsets=_kept_offsets(pw))  # fmt: skip


register_layout(NumbaCpuLayout())

__all__ = ["BLOCK_ROWS", "CHUNK", "LUT_ROWS", "NUMBA_CPU", "NumbaCpuLayout", "blocked_arrays", "blocked_fits",
           "blocked_shapes", "kind", "lut_arrays", "lut_fits", "lut_shapes"]  # fmt: skip
