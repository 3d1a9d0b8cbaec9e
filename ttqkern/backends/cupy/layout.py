"""The CuPy backend's packed layout ``cupy_mma``: codes laid out as tensor-core A fragments.

Torch only (never cupy), so any machine can build, convert and check it; the CUDA
sources (``csrc/ttq_common.cuh``, `field_pos` and `hi_bit_pos`) implement the same
maps, and the tests check that the two agree and that the conversions are exact.

Why this layout.  The decode kernel multiplies with ``mma.sync.m16n8k16`` (A = 16
weight rows x 16 codes of K, B = 16 of K x 8 tokens, fp32 accumulators).  Each lane of
a warp owns 8 codes of every 16 x 16 tile: rows ``gID`` and ``gID + 8`` (``gID = lane
>> 2``) and K offsets ``2t, 2t+1, 2t+8, 2t+9`` (``t = lane & 3``).  Storing exactly those
codes together, in the order the bit tricks of the dequantizer emit them, lets every
lane fetch the codes of several tiles with one 128-bit load and turn each pair of
codes into a ``half2`` / ``bfloat162`` with one LOP3 (or PRMT) and one HFMA2, without
any shuffle, shared-memory pass or int-to-float instruction.

Shapes (N rows, K columns, group size g, G = ceil(K / g) groups, Kp = G * g):

- ``NT = ceil(N / 16)`` row tiles; rows past N are zero (codes 0, scales 0).
- K is padded to ``KPAD = roundup(Kp, KCH)`` and cut into ``KC = KPAD / KCH`` chunks
  of ``KCH`` codes (64 for 8 and 4 bits, 128 for 2 bits, 256 for 3 bits); codes past
  K are 0 (as in the canonical layout).
- ``qweight``: int32 ``[NT, KC * V * 128 + GQ * 16]``, per row tile its codes, then its
  groups' zero codes.  Codes: ``[KC, V, 32, 4]`` -- per chunk, ``V`` vectors of 32 lanes x
  4 words (one 128-bit load per lane per vector, a warp's vector is 512 contiguous
  bytes); V = 2 for 8 bits, 1 for 4 and 2 bits, 3 for 3 bits (two vectors of the 2-bit
  ``lo`` plane, one of the 1-bit ``hi`` plane).  Zero codes: ``[GQ, 8, 2]`` words,
  ``GQ = ceil(G / 4)``; byte ``j % 4`` of word ``[j // 4, r, h]`` is the zero code c of row
  ``16 nt + r + 8 h``, group j (`PackedWeight.centred`; bytes past G are 0).
- ``scales``: fp32 ``[NT, G, 8, 4]``: ``scales[nt, j, r, h]`` is the scale s of row
  ``16 nt + r + 8 h``, group j, and ``scales[nt, j, r, 2 + h]`` the value of its zero code,
  ``m0 = s c + m`` (`PackedWeight.centred`): a lane reads s and m0 of its two rows with
  one 128-bit load, and the kernels compute ``w = s (u - c) + m0`` for every form
  (docs/numerics.md, rule Q1).
- ``mins`` (fp32) / ``zeros`` (int32): ``[NT, G, 8, 2]``, same row order; symmetric: none.
  Read only by `to_canonical`: the zero codes and m0 are derived from them and the
  scales (by `from_canonical` and the quantize kernel), so the conversions stay exact.

Inside a chunk, field f of word w of vector v holds the code of tile j (16 codes of
K, ``j = 0 .. KCH / 16 - 1``), A-fragment element e (`field_pos`); element e of lane
``(gID, t)`` is row ``gID + 8 * ((e >> 1) & 1)``, K offset ``16 j + 2t + (e & 1) + 8 (e >> 2)``
(the PTX ISA's m16n8k16 A fragment: registers ``a0..a3`` hold elements
``(e0, e1), (e2, e3), (e4, e5), (e6, e7)``, low half first).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ...format import Layout, PackedWeight, num_groups, pack_bits, register_layout
from ...quant import QuantFormat

NAME = "cupy_mma"
TILE_ROWS = 16
LANES = 32
WORDS = 4  # 32-bit words per lane per vector: one 128-bit load

# bits -> (codes of K per chunk, vectors per chunk)
CHUNK = {8: (64, 2), 4: (64, 1), 2: (128, 1), 3: (256, 3)}
# rotation of a hi-plane word that lines up the hi bits of (lo word parity q, field
# group (f >> 2) & 1) with bit 2 of each 2-bit lo field (see hi_bit_pos)
HI_SHIFT = (0, 1, 8, 9)


def chunk_size(bits: int) -> int:
    """Codes of K per chunk (KCH)."""
    return CHUNK[bits][0]


def vectors(bits: int) -> int:
    """128-bit vectors per lane per chunk (V)."""
    return CHUNK[bits][1]


@dataclass(frozen=True)
class Geometry:
    """Sizes of a ``cupy_mma`` weight of shape ``[N, K]``, bits, group size g (> 0)."""

    N: int
    K: int
    bits: int
    g: int

    @property
    def G(self) -> int:
        return num_groups(self.K, self.g)

    @property
    def Kp(self) -> int:
        return self.G * self.g

    @property
    def KCH(self) -> int:
        return chunk_size(self.bits)

    @property
    def V(self) -> int:
        return vectors(self.bits)

    @property
    def NT(self) -> int:
        return -(-self.N // TILE_ROWS)

    @property
    def KPAD(self) -> int:
        return -(-self.Kp // self.KCH) * self.KCH

    @property
    def KC(self) -> int:
        return self.KPAD // self.KCH

    @property
    def GQ(self) -> int:
        """32-bit words of zero codes per row and row tile (4 groups per word)."""
        return -(-self.G // 4)

    @property
    def CODE_WORDS(self) -> int:
        """int32 words of codes per row tile (the zero codes follow them)."""
        return self.KC * self.V * LANES * WORDS

    def shapes(self, sym: bool, zero: str) -> dict[str, tuple]:
        """Shape of every tensor field (dtype: qweight int32, scales/mins fp32, zeros int32)."""
        shapes = {"qweight": (self.NT, self.CODE_WORDS + self.GQ * 16), "scales": (self.NT, self.G, 8, 4)}
        if not sym:
            shapes["zeros" if zero == "int" else "mins"] = (self.NT, self.G, 8, 2)
        return shapes


def field_pos(bits: int, v: int, w: int, f: int) -> tuple[int, int]:
    """``(tile j, element e)`` of field f of word w of vector v (lo plane for 3 bits).

    8 bits: byte f of a word; 4 bits: nibble f; 2 (and 3-bit lo): 2-bit field f.
    """
    if bits == 8:
        return 2 * v + (w >> 1), 4 * (w & 1) + f
    if bits == 4:
        return w, 2 * (f & 3) + (f >> 2)
    i = 4 * v + w  # 2-bit words: lo word index (v is 0 for 2 bits)
    return 2 * i + ((f >> 2) & 1), 2 * (f & 3) + (f >> 3)


def hi_bit_pos(q: int, f: int) -> int:
    """Bit of hi word m that holds bit 2 of field f of lo word ``2m + q`` (3 bits).

    Rotating the hi word right by ``HI_SHIFT[2q + ((f >> 2) & 1)]`` puts it at bit
    ``2 (f & 3) + 2 + 16 (f >> 3)``: just above the field's two lo bits once the lo word
    is shifted by 8 for the second field group, so one LOP3 merges them.
    """
    target = 2 * (f & 3) + 2 + 16 * (f >> 3)
    return (target + HI_SHIFT[2 * q + ((f >> 2) & 1)]) & 31


def element_rc(lane: int, j: int, e: int) -> tuple[int, int]:
    """``(row in tile, K offset in chunk)`` of element e of tile j for a lane."""
    gid, t = lane >> 2, lane & 3
    return gid + 8 * ((e >> 1) & 1), 16 * j + 2 * t + (e & 1) + 8 * (e >> 2)


def fields_per_word(bits: int) -> int:
    return {8: 4, 4: 8, 2: 16, 3: 16}[bits]


@functools.cache
def _maps(bits: int) -> tuple[tuple[int, int, int, torch.Tensor, torch.Tensor], ...]:
    """Index maps of one chunk, one entry per plane: ``(v0, v1, width, index, shift)``.

    Vectors ``v0 .. v1 - 1`` hold fields of ``width`` bits; ``index[v, lane, w, f]`` is
    ``row * KCH + K offset`` of the code field f of word w holds (for the 3-bit hi
    plane: the code whose bit 2 it holds) and ``shift`` its bit offset in the word.
    CPU int64 tensors of shape ``[v1 - v0, 32, 4, F]``.
    """
    kch = chunk_size(bits)

    def plane(v0, v1, width, entries):
        index = torch.full((v1 - v0, LANES, WORDS, 32 // width), -1, dtype=torch.int64)
        shift = torch.zeros_like(index)
        for v, lane, w, slot, j, e, bit in entries:
            r, c = element_rc(lane, j, e)
            index[v - v0, lane, w, slot], shift[v - v0, lane, w, slot] = r * kch + c, bit
        assert bool((index >= 0).all()), "every field of a word holds a code"
        return v0, v1, width, index, shift

    lo_bits = 2 if bits == 3 else bits
    lo_v = 2 if bits == 3 else vectors(bits)
    lo = [
        (v, lane, w, f, *field_pos(bits, v, w, f), f * lo_bits)
        for v in range(lo_v)
        for lane in range(LANES)
        for w in range(WORDS)
        for f in range(fields_per_word(bits))
    ]
    planes = [plane(0, lo_v, lo_bits, lo)]
    if bits == 3:  # hi word w of a lane covers lo words 2w (q = 0) and 2w + 1 (q = 1)
        hi = []
        for lane in range(LANES):
            for w in range(WORDS):
                for q in range(2):
                    i = 2 * w + q
                    for f in range(16):
                        p = hi_bit_pos(q, f)
                        hi.append((2, lane, w, p, *field_pos(3, i >> 2, i & 3, f), p))
        planes.append(plane(2, 3, 1, hi))
    return tuple(planes)


def _padded_codes(pw: PackedWeight, geo: Geometry) -> torch.Tensor:
    """Canonical codes as uint8 ``[NT * 16, KPAD]`` (zero padded)."""
    u = pw.codes()
    out = torch.zeros(geo.NT * TILE_ROWS, geo.KPAD, dtype=torch.uint8, device=u.device)
    out[: geo.N, : geo.K] = u
    return out


def _to_tiles(t: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``[N, G]`` -> ``[NT, G, 8, 2]`` (rows past N zero)."""
    out = torch.zeros(geo.NT * TILE_ROWS, t.shape[1], dtype=t.dtype, device=t.device)
    out[: geo.N] = t
    return out.view(geo.NT, 2, 8, -1).permute(0, 3, 2, 1).contiguous()


def _from_tiles(t: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``[NT, G, 8, 2]`` -> ``[N, G]``."""
    return t.permute(0, 3, 2, 1).reshape(geo.NT * TILE_ROWS, -1)[: geo.N].contiguous()


def _pack_centres(c: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Zero codes int ``[N, G]`` -> int32 words ``[NT, GQ * 16]`` (4 groups per word, bytes past G zero)."""
    t = _to_tiles(c.to(torch.int64), geo)  # [NT, G, 8, 2]
    t = torch.nn.functional.pad(t, (0, 0, 0, 0, 0, geo.GQ * 4 - geo.G)).view(geo.NT, geo.GQ, 4, 8, 2)
    words = sum(t[:, :, i] << (8 * i) for i in range(4))  # [NT, GQ, 8, 2]
    return (words - ((words >> 31) << 32)).to(torch.int32).reshape(geo.NT, -1)


def zero_codes(pw: PackedWeight) -> torch.Tensor:
    """The zero codes a ``cupy_mma`` weight holds: int32 ``[N, G]``."""
    geo = Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    words = pw.qweight[:, geo.CODE_WORDS :].to(torch.int64).view(geo.NT, geo.GQ, 1, 8, 2) & 0xFFFFFFFF
    fields = (words >> (8 * torch.arange(4, device=words.device).view(1, 1, 4, 1, 1))) & 0xFF
    return _from_tiles(fields.reshape(geo.NT, geo.GQ * 4, 8, 2)[:, : geo.G], geo).to(torch.int32)


def centred_offsets(pw: PackedWeight) -> torch.Tensor:
    """m0 = s c + m of a ``cupy_mma`` weight: fp32 ``[N, G]``."""
    geo = Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    return _from_tiles(pw.scales[..., 2:], geo)


def from_canonical(pw: PackedWeight) -> PackedWeight:
    """The canonical `PackedWeight` ``pw`` in the ``cupy_mma`` layout (exact, any device)."""
    if pw.layout == NAME:
        return pw
    geo = Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    codes = _padded_codes(pw, geo).view(geo.NT, TILE_ROWS, geo.KC, geo.KCH).permute(0, 2, 1, 3)  # [NT, KC, 16, KCH]
    flat = codes.reshape(geo.NT, geo.KC, TILE_ROWS * geo.KCH)
    words = []
    for _v0, _v1, width, index_cpu, shift_cpu in _maps(pw.bits):
        index, shift = index_cpu.to(codes.device), shift_cpu.to(codes.device)
        fields = flat[:, :, index.reshape(-1)].view(geo.NT, geo.KC, *index.shape).to(torch.int64)
        if pw.bits == 3:
            fields = (fields & 3) if width == 2 else (fields >> 2) & 1
        words.append((fields << shift).sum(-1))  # fields are disjoint: sum == or
    words = torch.cat(words, dim=2)  # [NT, KC, V, 32, 4]
    qweight = (words - ((words >> 31) << 32)).to(torch.int32)  # two's complement of the uint32 word
    c, m0 = pw.centred()  # the one definition of the zero codes and their values
    qweight = torch.cat([qweight.reshape(geo.NT, -1), _pack_centres(c, geo)], dim=1)
    scales = torch.cat([_to_tiles(pw.scales, geo), _to_tiles(m0, geo)], dim=-1)  # [NT, G, 8, 4]
    extra = {}
    if pw.mins is not None:
        extra["mins"] = _to_tiles(pw.mins, geo)
    if pw.zeros is not None:
        extra["zeros"] = _to_tiles(pw.zeros, geo)
    return PackedWeight(
        qweight=qweight.contiguous(),
        scales=scales.contiguous(),
        bits=pw.bits,
        group_size=pw.group_size,
        shape=pw.shape,
        sym=pw.sym,
        zero=pw.zero,
        layout=NAME,
        **extra,
    )


def unpack_codes(pw: PackedWeight) -> torch.Tensor:
    """Unsigned codes of a ``cupy_mma`` weight: uint8 ``[N, K]`` (exact inverse of the packing)."""
    geo = Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    words = pw.qweight[:, : geo.CODE_WORDS].to(torch.int64).view(geo.NT, geo.KC, geo.V, LANES, WORDS) & 0xFFFFFFFF
    flat = torch.zeros(geo.NT, geo.KC, TILE_ROWS * geo.KCH, dtype=torch.int64, device=words.device)
    for v0, v1, width, index_cpu, shift_cpu in _maps(pw.bits):
        index, shift = index_cpu.to(words.device), shift_cpu.to(words.device)
        vals = (words[:, :, v0:v1, ..., None] >> shift) & ((1 << width) - 1)
        if pw.bits == 3 and width == 1:
            vals = vals << 2
        flat[:, :, index.reshape(-1)] |= vals.reshape(geo.NT, geo.KC, -1)
    codes = flat.view(geo.NT, geo.KC, TILE_ROWS, geo.KCH).permute(0, 2, 1, 3).reshape(geo.NT * TILE_ROWS, geo.KPAD)
    return codes[: geo.N, : geo.K].to(torch.uint8)


def to_canonical(pw: PackedWeight) -> PackedWeight:
    """The ``cupy_mma`` weight ``pw`` in the canonical layout (exact, any device)."""
    if pw.layout != NAME:
        return pw
    geo = Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    u = torch.nn.functional.pad(unpack_codes(pw), (0, geo.Kp - geo.K))
    if pw.bits == 3:
        qweight, hi = pack_bits(u & 3, 2), pack_bits(u >> 2, 1)
    else:
        qweight, hi = pack_bits(u, pw.bits), None
    return PackedWeight(
        qweight=qweight,
        qweight_hi=hi,
        scales=_from_tiles(pw.scales[..., :2], geo),
        mins=None if pw.mins is None else _from_tiles(pw.mins, geo),
        zeros=None if pw.zeros is None else _from_tiles(pw.zeros, geo),
        bits=pw.bits,
        group_size=pw.group_size,
        shape=pw.shape,
        sym=pw.sym,
        zero=pw.zero,
    )


def check(pw: PackedWeight) -> None:
    """Raise ValueError unless every tensor of a ``cupy_mma`` weight has its declared shape and dtype."""
    want = CupyMmaLayout().planes(pw.N, pw.K, pw.quant_format)
    have = pw.tensors()
    if set(have) != set(want):
        raise ValueError(f"cupy_mma weight must hold {sorted(want)}, got {sorted(have)}")
    for name, (shape, dtype) in want.items():
        t = have[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"cupy_mma {name} must be {dtype} of shape {list(shape)}, got {t.dtype} {list(t.shape)}")


class CupyMmaLayout(Layout):
    """The layout the CuPy backend's decode kernels read (see the module docstring)."""

    name = NAME

    def planes(self, N: int, K: int, fmt: QuantFormat) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        geo = Geometry(N, K, fmt.bits, fmt.group_for(K))
        dtypes = {"qweight": torch.int32, "scales": torch.float32, "mins": torch.float32, "zeros": torch.int32}
        return {f: (shape, dtypes[f]) for f, shape in geo.shapes(fmt.sym, fmt.zero).items()}

    def to_canonical(self, pw: PackedWeight) -> PackedWeight:
        return to_canonical(pw)

    def from_canonical(self, pw: PackedWeight) -> PackedWeight:
        return from_canonical(pw)


register_layout(CupyMmaLayout())


__all__ = [
    "CHUNK",
    "NAME",
    "CupyMmaLayout",
    "Geometry",
    "centred_offsets",
    "check",
    "chunk_size",
    "element_rc",
    "field_pos",
    "from_canonical",
    "hi_bit_pos",
    "to_canonical",
    "unpack_codes",
    "vectors",
    "zero_codes",
]
