"""Device helpers: codes out of 32-bit words as exact floats, without integer-to-float conversion.

A code u of b bits at bit offset P of a word becomes a float with one LOP3 and one
FADD: OR-ing the masked field into the mantissa of a power of two gives
``2^E + u * 2^(P + E - 23)`` exactly, and subtracting ``2^E`` leaves the scaled
code.  Two variants:

- `field_scaled` (decode GEMV on the vector units): one magic ``2^23`` for every
  field, so the result is ``u * 2^Q`` with ``Q = P`` (``P - 12`` for fields that
  do not fit the 23-bit mantissa and are read from ``word >> 12``); the prologue
  stores x~ pre-multiplied by ``2^-Q`` for that field, so no per-code scaling is
  needed.  The magic comes from memory (`load_magic`, a constant buffer per
  device: `qmatmul.magic_buffer`): as a register it is one
  LOP3 operand beside the immediate mask (a kernel argument would be a constant-
  bank operand, which sm_80 cannot combine with an immediate in one LOP3).
- `codes_tile` (tensor-core path): magic ``2^(23-Q)`` per field, giving u itself
  (exact in fp16 / bf16), gathered into canonical code order with `tl.join`
  (free: no data movement) rather than a reshape of a broadcast (a layout change).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAGIC = 0x4B000000  # fp32 bits of 2^23
MAGIC_FP16X2 = 0x64006400  # two fp16 1024.0: a code OR-ed into each half is 1024 + u exactly
MAGIC_BF16X2 = 0x43004300  # two bf16 128.0: 128 + u exactly for u < 128
MAGICS = (MAGIC, MAGIC_FP16X2, MAGIC_BF16X2, 0)  # the per-device constant buffer, in this order


@triton.jit
def field_shift(i: tl.constexpr, B: tl.constexpr):
    """Bit offset Q at which field i of a word is OR-ed into the mantissa (host mirror: `field_shifts`)."""
    if i * B + B <= 23:
        return i * B
    else:
        return i * B - 12


def field_shifts(B: int) -> list[int]:
    """Host copy of `field_shift` for every field of a B-bit plane."""
    return [i * B if i * B + B <= 23 else i * B - 12 for i in range(32 // B)]


@triton.jit
def load_magic(magic_ptr):
    """The int32 magic ``0x4B000000`` (`MAGIC`), read from memory so that it lives in a register."""
    return tl.load(magic_ptr)


def pair_codes_ok(bits: int, dtype_name: str) -> bool:
    """Can codes of ``bits`` be built directly as 16-bit floats of ``dtype_name`` by `pair_codes_tile`?"""
    if bits == 3:
        return False  # two planes with different pairings: the fp32 path
    return (dtype_name == "float16" and bits in (2, 4, 8)) or (dtype_name == "bfloat16" and bits in (2, 4))


def pair_offset(dtype_name: str) -> float:
    """The value of the 16-bit magic of `pair_codes_tile`: 1024 (fp16) or 128 (bf16)."""
    return 1024.0 if dtype_name == "float16" else 128.0


@triton.jit
def _half_codes(w, mag, off, i: tl.constexpr, H: tl.constexpr, B: tl.constexpr, DT: tl.constexpr):
    """Code ``i + H * CPW/2`` of each word minus its centre, as DT: fields i (low half) and
    i + CPW/2 (high half) are OR-ed into the mantissas of a pair of 16-bit floats at once, then
    ``off`` (the magic's value plus the row's centre) is subtracted from both (one HADD2)."""
    M: tl.constexpr = ((1 << B) - 1) | (((1 << B) - 1) << 16)
    if i == 0:
        t = (w & M) | mag
    else:
        t = ((w >> (i * B)) & M) | mag
    if H == 0:
        h = (t & 0xFFFF).to(tl.int16)
    else:
        h = (t >> 16).to(tl.int16)
    return h.to(DT, bitcast=True) - off


@triton.jit
def _pair_tree(w, mag, off, lo: tl.constexpr, step: tl.constexpr, n: tl.constexpr, H: tl.constexpr,
               B: tl.constexpr, DT: tl.constexpr):  # fmt: skip
    if n == 1:
        return _half_codes(w, mag, off, lo, H, B, DT)
    else:
        a = _pair_tree(w, mag, off, lo, 2 * step, n // 2, H, B, DT)
        b = _pair_tree(w, mag, off, lo + step, 2 * step, n // 2, H, B, DT)
        return tl.join(a, b)


@triton.jit
def pair_codes_tile(w, mag, off, B: tl.constexpr, DT: tl.constexpr):
    """Words ``[R, W]`` of a B-bit plane -> centred codes ``u - c`` ``[R, W * 32/B]`` in DT (fp16 /
    bf16), in *pair order*; ``off [R, 1]`` = `pair_offset` + the row's centre c, in DT.

    Position ``j * CPW + 2 p + h`` holds field ``p + h * CPW/2`` of word j (CPW = 32/B): the two
    codes that share a 32-bit register are adjacent, so no byte permutes are needed to pack the
    operand.  ``mag``: `MAGIC_FP16X2` or `MAGIC_BF16X2` (from memory, like `load_magic`).  The
    prologue writes x~ in the same order (`pair_position`).
    """
    CPW: tl.constexpr = 32 // B
    f = tl.join(_pair_tree(w, mag, off, 0, 1, CPW // 2, 0, B, DT), _pair_tree(w, mag, off, 0, 1, CPW // 2, 1, B, DT))
    return tl.reshape(f, [w.shape[0], w.shape[1] * CPW])


@triton.jit
def pair_position(j, CPW: tl.constexpr):
    """Pair-order position of code j (see `pair_codes_tile`): field i of word w at w*CPW + 2*(i%H) + i//H."""
    HALF: tl.constexpr = CPW // 2
    i = j % CPW
    return (j - i) + 2 * (i % HALF) + i // HALF


@triton.jit
def field_scaled(w, wh, magic, i: tl.constexpr, B: tl.constexpr):
    """Field i of int32 words ``w`` (``wh = w >> 12``) as fp32 ``u * 2^Q`` (Q = `field_shift`), exactly."""
    if i * B + B <= 23:
        v = (w & (((1 << B) - 1) << (i * B))) | magic
    else:
        v = (wh & (((1 << B) - 1) << (i * B - 12))) | magic
    return v.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _field_code(w, wh, magic, i: tl.constexpr, B: tl.constexpr, DT: tl.constexpr):
    """Field i of ``w`` as the code u itself, in DT (exact: u < 256)."""
    if i * B + B <= 23:
        Q: tl.constexpr = i * B
        v = (w & (((1 << B) - 1) << Q)) | (magic - (Q << 23))
    else:
        Q: tl.constexpr = i * B - 12
        v = (wh & (((1 << B) - 1) << Q)) | (magic - (Q << 23))
    return (v.to(tl.float32, bitcast=True) - (1 << (23 - Q)) * 1.0).to(DT)


@triton.jit
def _join_fields(w, wh, magic, lo: tl.constexpr, step: tl.constexpr, n: tl.constexpr, B: tl.constexpr,
                 DT: tl.constexpr):  # fmt: skip
    """Fields ``lo, lo + step, ...`` (n of them) stacked on new trailing axes, lowest index bit last."""
    if n == 1:
        return _field_code(w, wh, magic, lo, B, DT)
    else:
        a = _join_fields(w, wh, magic, lo, 2 * step, n // 2, B, DT)
        b = _join_fields(w, wh, magic, lo + step, 2 * step, n // 2, B, DT)
        return tl.join(a, b)


@triton.jit
def codes_tile(w, magic, B: tl.constexpr, DT: tl.constexpr):
    """Words ``[R, W]`` of a B-bit plane -> codes ``[R, W * 32/B]`` in DT, canonical order (code j*32/B + i = field i of word j)."""
    CPW: tl.constexpr = 32 // B
    f = _join_fields(w, w >> 12, magic, 0, 1, CPW, B, DT)
    return tl.reshape(f, [w.shape[0], w.shape[1] * CPW])


@triton.jit
def round_to(v, DT: tl.constexpr):
    """fp32 ``v`` rounded to nearest, ties to even, in DT (fp32 / fp16 / bf16); returned as DT.

    bf16 is rounded with integer ops on the fp32 bits (then the cast is exact):
    Triton 3.9's interpreter truncates fp32 -> bf16 casts, and its explicit "rtne"
    mode loses the carry into the exponent; GPUs give the same answer either way.
    """
    if DT == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        r = tl.where(v == v, bits.to(tl.float32, bitcast=True), v)  # keep nan a nan
        return r.to(tl.bfloat16)
    else:
        return v.to(DT)
