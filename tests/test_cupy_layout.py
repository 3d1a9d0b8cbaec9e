"""The CuPy backend's ``cupy_mma`` layout: exact conversions, and the CUDA side agrees with it.

Runs anywhere (torch only); the checks against the CUDA sources' maps and bit tricks use
the host emulator (skipped without a C++20 compiler).
"""

from __future__ import annotations

import random
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ttqkern import reference
from ttqkern.backends.cupy import layout as L

FORMS = [(False, "float"), (False, "int"), (True, "float")]


def _pw(N, K, bits, g, sym, zero, seed=0):
    torch.manual_seed(seed)
    return reference.quantize(torch.randn(N, K), None, bits, g, sym, zero, 1.0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", FORMS)
@pytest.mark.parametrize("N,K,g", [(1, 1, 1), (5, 37, 16), (33, 200, 64), (16, 256, 128), (17, 130, 48), (9, 600, 600)])
def test_round_trip_is_exact(bits, sym, zero, N, K, g):
    pw = _pw(N, K, bits, g, sym, zero)
    mma = L.from_canonical(pw)
    L.check(mma)
    assert mma.layout == L.NAME
    back = L.to_canonical(mma)
    assert set(back.tensors()) == set(pw.tensors())
    for name, t in pw.tensors().items():
        assert torch.equal(getattr(back, name), t), name
    assert torch.equal(L.unpack_codes(mma), pw.codes())


@given(
    N=st.integers(1, 40), K=st.integers(1, 300), g=st.sampled_from([3, 16, 32, 48, 64, 100, 128, -1]),
    bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_round_trip_random_shapes(N, K, g, bits, seed):
    g = K if g == -1 else g
    pw = _pw(N, K, bits, g, False, "float", seed)
    back = L.to_canonical(L.from_canonical(pw))
    assert torch.equal(back.qweight, pw.qweight) and torch.equal(back.scales, pw.scales)
    assert bits != 3 or torch.equal(back.qweight_hi, pw.qweight_hi)


def test_geometry_pads_rows_and_chunks():
    geo = L.Geometry(N=17, K=130, bits=3, g=48)
    assert (geo.G, geo.Kp, geo.NT, geo.KCH, geo.KPAD, geo.KC, geo.V) == (3, 144, 2, 256, 256, 1, 3)
    mma = L.from_canonical(_pw(17, 130, 3, 48, False, "int"))
    # codes (1 chunk x 3 vectors x 128 words), then 1 word of zero codes per row (3 groups)
    assert tuple(mma.qweight.shape) == (2, 3 * 128 + 16) and tuple(mma.zeros.shape) == (2, 3, 8, 2)
    assert tuple(mma.scales.shape) == (2, 3, 8, 4)  # s and m0 of rows r, r + 8
    assert not mma.scales[1, :, 1:, :].any() and not mma.zeros[1, :, 1:, :].any()  # rows 17.. are zero
    assert not mma.qweight[1, 3 * 128 + 2 :].any()  # their zero codes too


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", FORMS)
def test_zero_codes_and_centred_offsets_are_the_canonical_definition(bits, sym, zero):
    W = torch.randn(21, 300)
    W[2] = W[2].abs() + 3.0  # groups without 0: clamped zero codes
    pw = reference.quantize(W, None, bits, 32, sym, zero, 1.0)
    if zero == "int" and not sym:
        pw.zeros[5, 1] = -40  # zero-points outside the codes (ops.pack allows them)
        pw.zeros[6, 2] = 1000
    mma = L.from_canonical(pw)
    c, m0 = pw.centred()
    assert torch.equal(L.zero_codes(mma), c) and torch.equal(L.centred_offsets(mma), m0)
    assert pw.num_groups == 10  # the last zero-code word holds groups 8, 9 and two zero bytes
    tail = mma.qweight[:, -16:].to(torch.int64) & 0xFFFFFFFF
    assert not (tail >> 16).any()


def test_check_rejects_wrong_shapes_and_dtypes():
    mma = L.from_canonical(_pw(8, 64, 4, 32, False, "float"))
    L.check(mma)
    bad = L.from_canonical(_pw(8, 64, 4, 32, False, "float"))
    bad.scales = bad.scales[:, :1]
    with pytest.raises(ValueError, match="scales"):
        L.check(bad)
    bad = L.from_canonical(_pw(8, 64, 4, 32, False, "float"))
    bad.qweight = bad.qweight.to(torch.int64)
    with pytest.raises(ValueError, match="qweight"):
        L.check(bad)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_code_position_is_held_by_exactly_one_field(bits):
    kch = L.chunk_size(bits)
    seen = torch.zeros(16, kch, dtype=torch.int32)
    for v0, v1, width, index, _shift in L._maps(bits):
        for i in index.reshape(-1).tolist():
            seen.view(-1)[i] += 1
        assert index.shape[0] == v1 - v0 and index.shape[-1] == 32 // width
    # 3 bits: each code has one lo field and one hi bit
    assert bool((seen == (2 if bits == 3 else 1)).all())


# ---- the CUDA sources' maps and bit tricks (host emulator) --------------------------------


@pytest.fixture(scope="module")
def emu():
    from ttqkern.backends.cupy import emulator

    if emulator.compiler() is None:
        pytest.skip("the CuPy kernel emulator needs a C++20 compiler (g++ or $CXX)")
    return emulator


def _half(reg: int, h: int, bf16: bool) -> float:
    bits16 = (reg >> (16 * h)) & 0xFFFF
    if bf16:
        return struct.unpack("<f", struct.pack("<I", bits16 << 16))[0]
    return struct.unpack("<e", struct.pack("<H", bits16))[0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("bf16", [False, True])
def test_bit_trick_dequantization_gives_the_codes_of_field_pos(emu, bits, bf16):
    """codes_to_afrag (LOP3 / PRMT + HFMA2) yields, in register i >> 1, half i & 1, the code of
    fragment element i -- where layout.field_pos says each field's code goes -- minus the zero
    code of its row (rule Q1: the HFMA2's bias carries it), exactly, for every zero code."""
    rng = random.Random(bits * 2 + bf16)
    kch, V = L.chunk_size(bits), L.vectors(bits)
    for lane in (0, 5, 31):
        codes = torch.randint(0, 1 << bits, (16, kch), generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
        codes[0, 0], codes[15, kch - 1] = (1 << bits) - 1, 0  # extremes
        # words of one lane of one chunk, built with the Python layout maps
        words = [0] * (4 * V)
        for v0, _v1, width, index, shift in L._maps(bits):
            for vv in range(index.shape[0]):
                for w in range(4):
                    for f in range(index.shape[-1]):
                        c = int(codes.view(-1)[int(index[vv, lane, w, f])])
                        val = (c >> 2) & 1 if (bits == 3 and width == 1) else (c & 3 if bits == 3 else c)
                        words[4 * (v0 + vv) + w] |= val << int(shift[vv, lane, w, f])
        top = (1 << bits) - 1
        for j in range(kch // 16):
            for centres in ((0, 0), (top, 0), (rng.randrange(top + 1), rng.randrange(top + 1)), (0, top)):
                regs = emu.afrag(bits, bf16, words, j, centres)
                for i in range(8):
                    r, kk = L.element_rc(lane, j, i)
                    want = float(codes[r, kk]) - centres[(i >> 1) & 1]  # registers 0, 2: row gID; 1, 3: gID + 8
                    assert _half(regs[i >> 1], i & 1, bf16) == want, (lane, j, i, centres)


def test_fastdiv_is_exact(emu):
    rng = random.Random(0)
    for d in [1, 2, 3, 7, 16, 37, 48, 64, 100, 128, 4096, 5000, 65537, 2**31 - 1]:
        for n in [0, 1, d - 1, d, d + 1, 2**24, 2**31 - 1, 2**32 - 1] + [rng.randrange(2**32) for _ in range(40)]:
            assert emu.fastdiv(n, d) == n // d, (n, d)


def test_host_fp16_bf16_rounding_matches_torch(emu):
    vals = torch.cat([torch.randn(2000) * 10.0 ** torch.randint(-8, 6, (2000,)), torch.tensor(
        [0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e-8, 6e-8, 3e-8, float("inf"), -float("inf"), 2.0**-24, 2.0**-25])])  # fmt: skip
    got = torch.tensor(emu.f32_to_f16(vals.tolist()), dtype=torch.int32).to(torch.int16).view(torch.float16)
    torch.testing.assert_close(got, vals.to(torch.float16), rtol=0, atol=0)
    got = torch.tensor(emu.f32_to_bf16(vals.tolist()), dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    torch.testing.assert_close(got, vals.to(torch.bfloat16), rtol=0, atol=0)
