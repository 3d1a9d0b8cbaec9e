"""The canonical packed weight format (spec §3) and its bit packing.

Every backend produces and consumes this layout, so a `PackedWeight` made by one
backend can be multiplied by any other, and tests compare backends in it.

Codes are stored *unsigned*: ``u in [0, 2^b - 1]``.  The three quantization forms
differ only in how a code maps back to a value, and all of them reduce to
``w ≈ s * u + m`` with a per-group offset ``m`` (see `PackedWeight.offsets`):

- float-min (default): ``u = q``,            ``m = mn``
- integer zero-point:  ``u = q``,            ``m = -s * z``
- symmetric:           ``u = q + 2^(b-1)``,  ``m = -s * 2^(b-1)``

That single form is what lets every GEMM kernel handle the min term with one
per-group sum of ``x / D`` (spec stage 4) regardless of the quantization form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
ZERO_MODES = ("float", "int")


def num_groups(K: int, group_size: int) -> int:
    """Number of groups ``G = ceil(K / g)`` along K (``g`` already resolved > 0)."""
    return -(-K // group_size)


def resolve_group_size(K: int, group_size: int) -> int:
    """Map the user's ``group_size`` (positive or -1 = whole row) to a positive length."""
    return K if group_size == -1 else group_size


def packed_bytes(K_padded: int, bits: int) -> int:
    """Bytes per row of a plane holding ``K_padded`` codes of ``bits`` bits."""
    return -(-K_padded * bits // 8)


def pack_bits(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes along the last dim, little-endian inside each byte.

    u: ``[N, L]`` integer codes in ``[0, 2^bits)``; bits in {1, 2, 4, 8}.
    Returns uint8 ``[N, ceil(L * bits / 8)]``; element i of a byte occupies bits
    ``[i*bits, (i+1)*bits)``; unused high bits of the last byte are zero.
    """
    per = 8 // bits
    N, L = u.shape
    pad = (-L) % per
    u = u.to(torch.uint8)
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    u = u.view(N, -1, per)
    out = torch.zeros(u.shape[:2], dtype=torch.uint8, device=u.device)
    for i in range(per):
        out |= u[..., i] << (i * bits)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, L: int) -> torch.Tensor:
    """Inverse of `pack_bits`: uint8 ``[N, bytes]`` -> uint8 codes ``[N, L]``."""
    per = 8 // bits
    mask = (1 << bits) - 1
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    u = (packed[..., None] >> shifts) & mask
    return u.reshape(packed.shape[0], -1)[:, :L]


@dataclass
class PackedWeight:
    """A groupwise-quantized ``[N, K]`` weight in the canonical layout.

    qweight:    uint8 ``[N, ceil(Kp * b / 8)]``, codes packed along K (for b = 3:
                the 2-bit ``lo`` plane).  ``Kp = G * group_size``; codes past K are 0.
    qweight_hi: uint8 ``[N, ceil(Kp / 8)]``, the 1-bit ``hi`` plane for b = 3, else None.
    scales:     fp32 ``[N, G]`` (fp32 on every device in this version).
    mins:       fp32 ``[N, G]`` group minima, for ``zero="float"`` (asymmetric) only.
    zeros:      int32 ``[N, G]`` integer zero-points, for ``zero="int"`` only.
    bits, group_size (resolved, > 0), shape ``(N, K)``, sym, zero, layout.

    A group whose values were not all finite carries a nan scale, so every output
    that touches it is nan: non-finite weights never give a finite answer.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    bits: int
    group_size: int
    shape: tuple[int, int]
    sym: bool = False
    zero: str = "float"
    mins: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    qweight_hi: torch.Tensor | None = None
    layout: str = "canonical"

    @property
    def N(self) -> int:
        return self.shape[0]

    @property
    def K(self) -> int:
        return self.shape[1]

    @property
    def num_groups(self) -> int:
        return num_groups(self.K, self.group_size)

    @property
    def K_padded(self) -> int:
        return self.num_groups * self.group_size

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def offsets(self) -> torch.Tensor:
        """fp32 ``[N, G]`` offsets m with ``w ≈ s * u + m`` for the stored code u."""
        if self.sym:
            return -self.scales * float(1 << (self.bits - 1))
        if self.zero == "int":
            return -self.scales * self.zeros.to(torch.float32)
        return self.mins

    def codes(self) -> torch.Tensor:
        """uint8 ``[N, K]`` stored (unsigned) codes, unpacked from the planes."""
        if self.bits == 3:
            lo = unpack_bits(self.qweight, 2, self.K)
            hi = unpack_bits(self.qweight_hi, 1, self.K)
            return lo | (hi << 2)
        return unpack_bits(self.qweight, self.bits, self.K)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this weight holds, by field name (None fields left out)."""
        names = ("qweight", "qweight_hi", "scales", "mins", "zeros")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device) -> PackedWeight:
        return replace(self, **{n: t.to(device) for n, t in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor held: what a GEMV must stream."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def pack(
    q: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    scales: torch.Tensor,
    mins: torch.Tensor | None = None,
    zeros: torch.Tensor | None = None,
    sym: bool = False,
) -> PackedWeight:
    """Build a `PackedWeight` from logical codes and group parameters.

    q: integer ``[N, K]`` codes as the spec defines them (``[0, 2^b-1]``, or
    ``[-(2^(b-1)-1), 2^(b-1)-1]`` when ``sym``); scales fp32 ``[N, G]``; exactly one
    of ``mins`` (fp32, float zero) / ``zeros`` (int, integer zero) unless ``sym``.
    ``group_size`` is a positive length or -1 (whole row).
    """
    from ._checks import check_bits, check_group_size

    check_bits(bits)
    if q.dim() != 2:
        raise ValueError(f"q must be 2-D [N, K], got shape {tuple(q.shape)}")
    N, K = q.shape
    check_group_size(group_size, K)
    g = resolve_group_size(K, group_size)
    G = num_groups(K, g)
    if tuple(scales.shape) != (N, G):
        raise ValueError(f"scales must have shape [N, G] = {[N, G]}, got {list(scales.shape)}")
    if sym:
        if mins is not None or zeros is not None:
            raise ValueError("sym=True takes neither mins nor zeros")
        zero = "float"
        u = q.to(torch.int32) + (1 << (bits - 1))
    else:
        if (mins is None) == (zeros is None):
            raise ValueError("give exactly one of mins (zero='float') or zeros (zero='int')")
        zero = "float" if mins is not None else "int"
        u = q.to(torch.int32)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > (1 << bits) - 1):
        raise ValueError(f"codes out of range for bits={bits}, sym={sym}")
    u = torch.nn.functional.pad(u, (0, G * g - K)).to(torch.uint8)
    hi = None
    if bits == 3:
        hi = pack_bits(u >> 2, 1)
        qweight = pack_bits(u & 3, 2)
    else:
        qweight = pack_bits(u, bits)
    return PackedWeight(
        qweight=qweight,
        qweight_hi=hi,
        scales=scales.to(torch.float32).contiguous(),
        mins=None if mins is None else mins.to(torch.float32).contiguous(),
        zeros=None if zeros is None else zeros.to(torch.int32).contiguous(),
        bits=bits,
        group_size=g,
        shape=(N, K),
        sym=sym,
        zero=zero,
    )


def unpack(pw: PackedWeight) -> torch.Tensor:
    """Logical codes of ``pw``: int32 ``[N, K]`` (signed when ``pw.sym``)."""
    u = pw.codes().to(torch.int32)
    return u - (1 << (pw.bits - 1)) if pw.sym else u


def dequantize(pw: PackedWeight) -> torch.Tensor:
    """The quantized scaled weight ``Wq' = s * u + m``: fp32 ``[N, K]``.

    This is ``W_res * D`` after quantization; divide by D to get back to W's scale.
    """
    N, K = pw.shape
    g, G = pw.group_size, pw.num_groups
    u = torch.nn.functional.pad(pw.codes().to(torch.float32), (0, G * g - K)).view(N, G, g)
    w = u * pw.scales[..., None] + pw.offsets()[..., None]
    return w.view(N, G * g)[:, :K]


def expected_plane_shapes(N: int, K: int, bits: int, group_size: int) -> dict[str, tuple]:
    """Shapes of the tensors a canonical `PackedWeight` of these parameters holds."""
    g = resolve_group_size(K, group_size)
    G = num_groups(K, g)
    Kp = G * g
    shapes = {"scales": (N, G)}
    if bits == 3:
        shapes["qweight"] = (N, packed_bytes(Kp, 2))
        shapes["qweight_hi"] = (N, packed_bytes(Kp, 1))
    else:
        shapes["qweight"] = (N, packed_bytes(Kp, bits))
    return shapes


__all__ = [
    "SUPPORTED_BITS",
    "ZERO_MODES",
    "PackedWeight",
    "dequantize",
    "num_groups",
    "pack",
    "pack_bits",
    "resolve_group_size",
    "unpack",
    "unpack_bits",
]
