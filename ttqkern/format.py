"""The packed weight: the canonical layout (docs/spec.md §3), its bit packing, and layouts.

Every backend can read and write the canonical layout, so a `PackedWeight` made by
one backend can be multiplied by any other, and tests compare backends in it.  A
backend may also keep a weight in an internal layout of its own (a registered
`Layout` with exact conversions to and from the canonical one).

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

from .quant import SUPPORTED_BITS, ZERO_MODES, Form, QuantFormat, check_bits, check_group_size, resolve_group_size

CANONICAL = "canonical"
PLANE_FIELDS = ("qweight", "qweight_hi", "scales", "mins", "zeros")


def num_groups(K: int, group_size: int) -> int:
    """Number of groups ``G = ceil(K / g)`` along K (``g`` already resolved > 0)."""
    return -(-K // group_size)


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
    return u.reshape(packed.shape[0], packed.shape[1] * per)[:, :L]  # not -1: N may be 0


@dataclass
class PackedWeight:
    """A groupwise-quantized ``[N, K]`` weight.

    In the canonical layout (``layout == "canonical"``):

    qweight:    uint8 ``[N, ceil(Kp * b / 8)]``, codes packed along K (for b = 3:
                the 2-bit ``lo`` plane).  ``Kp = G * group_size``; codes past K are 0.
    qweight_hi: uint8 ``[N, ceil(Kp / 8)]``, the 1-bit ``hi`` plane for b = 3, else None.
    scales:     fp32 ``[N, G]``.
    mins:       fp32 ``[N, G]`` group minima, for ``zero="float"`` (asymmetric) only.
    zeros:      int32 ``[N, G]`` integer zero-points, for ``zero="int"`` only.
    bits, group_size (resolved, > 0), shape ``(N, K)``, sym, zero, layout.

    Other layouts hold the same information in the same fields with shapes and
    dtypes of their own (`Layout.planes`); `canonical()` converts exactly.  Build
    one with `PackedWeight.build` or `ttqkern.ops.pack`; `ttqkern._checks.check_packed`
    verifies that the tensors agree with the fields before any kernel reads them.

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
    layout: str = CANONICAL

    @classmethod
    def build(
        cls,
        fmt: QuantFormat,
        shape: tuple[int, int],
        *,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        offsets: torch.Tensor | None = None,
        qweight_hi: torch.Tensor | None = None,
        layout: str = CANONICAL,
    ) -> PackedWeight:
        """The one constructor the library uses: fields from ``fmt`` (resolved for K = shape[1]).

        ``offsets`` is the form's per-group tensor: mins (float form), zeros (int
        form) or None (symmetric); ``qweight_hi`` only for 3 bits.
        """
        N, K = shape
        form = fmt.form
        return cls(
            qweight=qweight,
            qweight_hi=qweight_hi if fmt.bits == 3 else None,
            scales=scales,
            mins=offsets if form == Form.FLOAT else None,
            zeros=offsets if form == Form.INT else None,
            bits=fmt.bits,
            group_size=fmt.group_for(K),
            shape=(int(N), int(K)),
            sym=fmt.sym,
            zero="float" if fmt.sym else fmt.zero,
            layout=layout,
        )

    @property
    def N(self) -> int:
        return self.shape[0]

    @property
    def K(self) -> int:
        return self.shape[1]

    @property
    def form(self) -> Form:
        if self.sym:
            return Form.SYM
        return Form.INT if self.zero == "int" else Form.FLOAT

    @property
    def quant_format(self) -> QuantFormat:
        """bits, group size and form as a `QuantFormat` (beta is not recorded in a weight: 1.0)."""
        return QuantFormat(self.bits, self.group_size, self.sym, self.zero)

    @property
    def num_groups(self) -> int:
        return num_groups(self.K, self.group_size)

    @property
    def K_padded(self) -> int:
        return self.num_groups * self.group_size

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def offsets_field(self) -> torch.Tensor | None:
        """The form's per-group tensor: mins, zeros, or None (symmetric)."""
        return self.mins if self.mins is not None else self.zeros

    def offsets(self) -> torch.Tensor:
        """fp32 ``[N, G]`` offsets m with ``w ≈ s * u + m`` for the stored code u (canonical)."""
        if self.sym:
            return -self.scales * float(1 << (self.bits - 1))
        if self.zero == "int":
            return -self.scales * self.zeros.to(torch.float32)
        return self.mins

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c, m0)``: each group's zero code and the value of that code (canonical).

        ``w = s * (u - c) + m0`` is the same weight as ``s * u + m``, written so that no
        sum cancels (docs/numerics.md): c is the code nearest to the value 0 (int32
        ``[N, G]``: ``2^(b-1)`` symmetric, z clamped to ``[0, 2^b - 1]`` for the integer
        form, ``clamp(round(-mn / s), 0, 2^b - 1)`` float-min) and ``m0 = s * c + m``
        (fp32 ``[N, G]``, rounded once: 0 for the symmetric form and for zero-points
        inside the code range, at most s/2 in magnitude when 0 lies in the group's range).
        """
        pw = self.canonical()
        s = pw.scales
        top = (1 << pw.bits) - 1
        if pw.sym:
            return torch.full_like(s, 1 << (pw.bits - 1), dtype=torch.int32), torch.zeros_like(s)
        # s * c + m in one rounding: fp64 holds s * c exactly (24 + 8 bits); MPS has no fp64
        wide = torch.float32 if s.device.type == "mps" else torch.float64
        if pw.zero == "int":
            c = pw.zeros.clamp(0, top)
            return c, (s.to(wide) * (c.to(wide) - pw.zeros.to(wide))).to(torch.float32)
        mn = pw.mins
        ok = torch.isfinite(s) & (s != 0) & torch.isfinite(mn)
        c = torch.where(ok, (-mn / torch.where(ok, s, 1.0)).round(), 0.0).clamp(0, top)
        m0 = (mn.to(wide) + s.to(wide) * c.to(wide)).to(torch.float32)
        return c.to(torch.int32), m0

    def canonical(self) -> PackedWeight:
        """This weight in the canonical layout (itself when it already is)."""
        return self if self.layout == CANONICAL else get_layout(self.layout).to_canonical(self)

    def codes(self) -> torch.Tensor:
        """uint8 ``[N, K]`` stored (unsigned) codes, unpacked from the canonical planes."""
        pw = self.canonical()
        if pw.bits == 3:
            lo = unpack_bits(pw.qweight, 2, pw.K)
            hi = unpack_bits(pw.qweight_hi, 1, pw.K)
            return lo | (hi << 2)
        return unpack_bits(pw.qweight, pw.bits, pw.K)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this weight holds, by field name (None fields left out)."""
        return {n: getattr(self, n) for n in PLANE_FIELDS if getattr(self, n) is not None}

    def to(self, device) -> PackedWeight:
        return replace(self, **{n: t.to(device) for n, t in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor held: what a GEMV must stream."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


# --- layouts -----------------------------------------------------------------------------


class Layout:
    """A physical arrangement of a `PackedWeight`'s tensors, with exact canonical conversions.

    Subclasses name themselves (``name``), say which tensors a weight of given
    parameters holds (`planes`: what `check_packed` verifies before any kernel runs),
    and convert to and from the canonical layout without loss.  A layout module
    imports only torch, so every machine can check and convert every layout.
    """

    name: str

    def planes(self, N: int, K: int, fmt: QuantFormat) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """``{field: (shape, dtype)}`` of every tensor a weight holds; fields left out must be None."""
        raise NotImplementedError

    def to_canonical(self, pw: PackedWeight) -> PackedWeight:
        raise NotImplementedError

    def from_canonical(self, pw: PackedWeight) -> PackedWeight:
        raise NotImplementedError


class CanonicalLayout(Layout):
    """docs/spec.md §3: codes packed along K, little-endian in each byte; fp32 [N, G] group tensors."""

    name = CANONICAL

    def planes(self, N, K, fmt):
        g = fmt.group_for(K)
        G = num_groups(K, g)
        Kp = G * g
        out = {}
        if fmt.bits == 3:
            out["qweight"] = ((N, packed_bytes(Kp, 2)), torch.uint8)
            out["qweight_hi"] = ((N, packed_bytes(Kp, 1)), torch.uint8)
        else:
            out["qweight"] = ((N, packed_bytes(Kp, fmt.bits)), torch.uint8)
        out["scales"] = ((N, G), torch.float32)
        if fmt.form == Form.FLOAT:
            out["mins"] = ((N, G), torch.float32)
        elif fmt.form == Form.INT:
            out["zeros"] = ((N, G), torch.int32)
        return out

    def to_canonical(self, pw):
        return pw

    def from_canonical(self, pw):
        return pw


_LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Make ``layout`` known by its name (idempotent for the same class)."""
    old = _LAYOUTS.get(layout.name)
    if old is not None and type(old) is not type(layout):
        raise ValueError(f"a different layout is already registered as {layout.name!r}")
    _LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    """The registered layout called ``name``; ValueError naming the known ones otherwise."""
    try:
        return _LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"pw.layout {name!r} is not a registered layout (known: {sorted(_LAYOUTS)})") from None


def convert(pw: PackedWeight, layout: str) -> PackedWeight:
    """``pw`` in ``layout`` (through the canonical layout; exact)."""
    if pw.layout == layout:
        return pw
    return get_layout(layout).from_canonical(pw.canonical())


register_layout(CanonicalLayout())


def expected_plane_shapes(N: int, K: int, bits: int, group_size: int) -> dict[str, tuple]:
    """Shapes of the code planes and scales of a canonical float-min `PackedWeight`."""
    planes = _LAYOUTS[CANONICAL].planes(N, K, QuantFormat(bits, group_size))
    return {f: shape for f, (shape, _) in planes.items() if f != "mins"}


# --- canonical pack / unpack / dequantize ------------------------------------------------


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
    """Build a canonical `PackedWeight` from logical codes and group parameters.

    q: integer ``[N, K]`` codes as the spec defines them (``[0, 2^b-1]``, or
    ``[-(2^(b-1)-1), 2^(b-1)-1]`` when ``sym``); scales float ``[N, G]``; exactly
    one of ``mins`` (float ``[N, G]``, float zero) / ``zeros`` (integer ``[N, G]``,
    integer zero) unless ``sym``.  ``group_size`` is a positive length or -1 (whole row).
    """
    check_bits(bits)
    check_group_size(group_size)
    if not isinstance(q, torch.Tensor) or q.dim() != 2:
        raise ValueError(f"q must be a 2-D tensor [N, K], got {getattr(q, 'shape', type(q).__name__)}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool or q.layout != torch.strided:
        raise TypeError(f"q must be a dense tensor of integer codes, got dtype {q.dtype} ({q.layout})")
    N, K = q.shape
    g = resolve_group_size(K, group_size)
    G = num_groups(K, g)
    if sym:
        if mins is not None or zeros is not None:
            raise ValueError("sym=True takes neither mins nor zeros")
        zero, offsets = "float", None
        u = q.to(torch.int32) + (1 << (bits - 1))
    else:
        if (mins is None) == (zeros is None):
            raise ValueError("give exactly one of mins (zero='float') or zeros (zero='int')")
        zero = "float" if mins is not None else "int"
        offsets = mins if mins is not None else zeros
        u = q.to(torch.int32)
    group_tensors = {"scales": scales, "mins": mins, "zeros": zeros}
    for name, t in group_tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [N, G], got {type(t).__name__}")
        if t.is_complex() or t.dtype == torch.bool or t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense real tensor [N, G], got {t.dtype} ({t.layout})")
        if tuple(t.shape) != (N, G):
            raise ValueError(f"{name} must have shape [N, G] = {[N, G]}, got {list(t.shape)}")
        if t.device != q.device:
            raise RuntimeError(f"{name} must be on q's device {q.device}, got {t.device}")
    if zeros is not None and (zeros.is_floating_point() or zeros.is_complex()):
        raise TypeError(f"zeros must hold integers, got dtype {zeros.dtype}")
    if u.numel() and (int(u.min()) < 0 or int(u.max()) > (1 << bits) - 1):
        raise ValueError(f"codes out of range for bits={bits}, sym={sym}")
    u = torch.nn.functional.pad(u, (0, G * g - K)).to(torch.uint8)
    hi = None
    if bits == 3:
        hi = pack_bits(u >> 2, 1)
        qweight = pack_bits(u & 3, 2)
    else:
        qweight = pack_bits(u, bits)
    if offsets is not None:
        offsets = offsets.to(torch.float32 if zero == "float" else torch.int32).contiguous()
    fmt = QuantFormat(bits, g, sym, zero)
    return PackedWeight.build(
        fmt, (N, K), qweight=qweight, qweight_hi=hi, scales=scales.to(torch.float32).contiguous(), offsets=offsets
    )


def unpack(pw: PackedWeight) -> torch.Tensor:
    """Logical codes of ``pw``: int32 ``[N, K]`` (signed when ``pw.sym``)."""
    u = pw.codes().to(torch.int32)
    return u - (1 << (pw.bits - 1)) if pw.sym else u


def dequantize(pw: PackedWeight) -> torch.Tensor:
    """The quantized scaled weight ``Wq' = s * u + m``: fp32 ``[N, K]``.

    This is ``W_res * D`` after quantization; divide by D to get back to W's scale.
    Computed as ``s * (u - c) + m0`` (`PackedWeight.centred`): each value within
    3 units in the last place of its own magnitude, however large the group's
    minimum is next to it (``s * u + m`` rounds ``s * u`` first: an error of the
    size of |m| on a weight near 0).
    """
    pw = pw.canonical()
    N, K = pw.shape
    g, G = pw.group_size, pw.num_groups
    c, m0 = pw.centred()
    u = torch.nn.functional.pad(pw.codes().to(torch.float32), (0, G * g - K)).view(N, G, g)
    w = (u - c.to(torch.float32)[..., None]) * pw.scales[..., None] + m0[..., None]  # u - c: exact
    return w.view(N, G * g)[:, :K]


__all__ = [
    "CANONICAL",
    "SUPPORTED_BITS",
    "ZERO_MODES",
    "CanonicalLayout",
    "Layout",
    "PackedWeight",
    "convert",
    "dequantize",
    "get_layout",
    "num_groups",
    "pack",
    "pack_bits",
    "register_layout",
    "resolve_group_size",
    "unpack",
    "unpack_bits",
]
