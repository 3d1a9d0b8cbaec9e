"""Canonical packed format (spec §3): layout, round trips, plane shapes."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ttqkern import ops
from ttqkern.format import expected_plane_shapes, pack_bits, unpack_bits


@given(bits=st.sampled_from([1, 2, 4, 8]), N=st.integers(1, 9), L=st.integers(0, 70), seed=st.integers(0, 999))
def test_pack_bits_round_trip(bits, N, L, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 1 << bits, (N, L), generator=g, dtype=torch.uint8)
    packed = pack_bits(u, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (N, -(-L * bits // 8))
    assert torch.equal(unpack_bits(packed, bits, L), u)


def test_little_endian_within_byte():
    # element i of a byte occupies bits [i*b, (i+1)*b)
    assert pack_bits(torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8), 2).item() == 0b00_11_10_01
    assert pack_bits(torch.tensor([[0xA, 0x5]], dtype=torch.uint8), 4).item() == 0x5A


@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    sym=st.booleans(),
    N=st.integers(1, 8),
    K=st.integers(1, 100),
    g=st.sampled_from([1, 7, 16, 32, 128, -1]),
    seed=st.integers(0, 999),
)
def test_pack_unpack_round_trip(bits, sym, N, K, g, seed):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
    q = torch.randint(lo, hi + 1, (N, K), generator=gen)
    G = -(-K // (K if g == -1 else g))
    scales = torch.rand(N, G, generator=gen) + 0.1
    extra = {} if sym else {"mins": torch.randn(N, G, generator=gen)}
    pw = ops.pack(q, bits=bits, group_size=g, scales=scales, sym=sym, **extra)
    assert torch.equal(ops.unpack(pw), q.to(torch.int32))
    for name, shape in expected_plane_shapes(N, K, bits, g).items():
        assert tuple(getattr(pw, name).shape) == shape
    assert (pw.qweight_hi is not None) == (bits == 3)
    # dequantize follows s * q + mn (asymmetric) / s * q (symmetric)
    gs = K if g == -1 else g
    s = scales.repeat_interleave(gs, dim=1)[:, :K]
    expect = s * q + (0 if sym else extra["mins"].repeat_interleave(gs, dim=1)[:, :K])
    torch.testing.assert_close(ops.dequantize(pw), expect, rtol=1e-5, atol=1e-5)


def test_integer_zero_point_dequantizes_as_s_times_q_minus_z():
    q = torch.tensor([[0, 3, 7, 5]])
    pw = ops.pack(q, bits=3, group_size=2, scales=torch.tensor([[0.5, 2.0]]), zeros=torch.tensor([[1, 4]]))
    assert pw.zero == "int"
    torch.testing.assert_close(ops.dequantize(pw), torch.tensor([[-0.5, 1.0, 6.0, 2.0]]))


def test_padding_codes_are_zero():
    q = torch.full((2, 5), 3)
    pw = ops.pack(q, bits=2, group_size=4, scales=torch.ones(2, 2), mins=torch.zeros(2, 2))
    # Kp = 8 codes: 5 real (value 3), 3 padding (0) -> bytes 0xFF, 0x03
    assert pw.qweight.tolist() == [[0xFF, 0x03]] * 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=5), "bits must be one of"),
        (dict(group_size=0), "group_size must be > 0"),
        (dict(scales=torch.ones(3, 1)), r"scales must have shape \[N, G\]"),
        (dict(mins=None), "exactly one of mins"),
        (dict(q=torch.full((2, 5), 4)), "codes out of range"),
    ],
)
def test_pack_rejects_bad_input(kwargs, match):
    args = dict(q=torch.zeros(2, 5, dtype=torch.int64), bits=2, group_size=4, scales=torch.ones(2, 2),
                mins=torch.zeros(2, 2))  # fmt: skip
    args.update(kwargs)
    q = args.pop("q")
    with pytest.raises((ValueError, TypeError), match=match):
        ops.pack(q, **args)
