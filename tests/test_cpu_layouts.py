"""The ``numba_cpu`` packed layout (ttqkern.backends.cpu_layouts): exact conversions, shapes, checks.

The layout module imports only torch, so these run on any machine; the Numba
backend's quantize, which writes the layout directly, is compared with the
reference's canonical weight converted here.
"""

from __future__ import annotations

import pytest
import torch
from helpers import QUANT_FORMS
from hypothesis import given
from hypothesis import strategies as st

from ttqkern import backends, ops, reference
from ttqkern._checks import check_packed
from ttqkern.backends import cpu_layouts as L
from ttqkern.format import get_layout

LAYOUT = get_layout(L.NUMBA_CPU)


def _roundtrip(pw):
    q = LAYOUT.from_canonical(pw)
    assert q.layout == L.NUMBA_CPU
    check_packed(q, pw.K)  # the converted weight agrees with what the layout declares
    back = LAYOUT.to_canonical(q)
    assert back.layout == "canonical" and set(back.tensors()) == set(pw.tensors())
    for name, t in pw.tensors().items():
        assert torch.equal(getattr(back, name), t), name
    return q


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("N,K,g", [(1, 16, 16), (5, 37, 16), (17, 300, 64), (33, 576, 128), (9, 640, 256), (8, 96, 48),
                                   (3, 40, 8), (20, 128, 32)])  # fmt: skip
def test_roundtrip_is_exact(bits, sym, zero, N, K, g):
    pw = reference.quantize(torch.randn(N, K), None, bits, g, sym, zero, 1.0)
    q = _roundtrip(pw)
    k = L.kind(bits, g, sym)
    if k == "plain":
        assert q.qweight is pw.qweight and q.scales is pw.scales
    elif k == "blocked":
        assert tuple(q.qweight.shape) == L.blocked_shapes(N, K, bits, g)["qweight"]
    else:
        assert tuple(q.scales.shape) == L.lut_shapes(N, K, bits, g)["scales"]


def test_kinds():
    assert L.kind(4, 128, False) == L.kind(8, 64, True) == L.kind(4, 256, False) == L.kind(8, 16, False) == "blocked"
    assert L.kind(4, 48, True) == L.kind(4, 8, False) == L.kind(8, 40, True) == "plain"
    assert L.kind(3, 16, True) == "plain"  # 3-bit hi plane: g % 32
    assert L.kind(2, 16, True) == L.kind(3, 32, True) == L.kind(3, 128, True) == "lut"
    # asymmetric 2/3-bit: per-row zero codes the lut tables cannot centre (rule Q1)
    assert L.kind(2, 16, False) == L.kind(3, 128, False) == "plain"


def test_blocked_order_of_4bit_codes():
    """Nibble f of 32-bit word l of a row-chunk is code 16 f + l (the kernels' field order)."""
    q = torch.arange(128).remainder(16).view(1, 128)
    pw = ops.pack(q, bits=4, group_size=128, scales=torch.ones(1, 1), mins=torch.zeros(1, 1))
    words = LAYOUT.from_canonical(pw).qweight[0, 0, 0].view(torch.int32)  # row 0, chunk 0: 16 words
    for lane in range(16):
        for f in range(8):
            assert (int(words[lane]) >> (4 * f)) & 15 == (16 * f + lane) % 16


def test_padding_adds_nothing():
    """Rows, codes and groups added by the layout hold s = m = 0 and code 0."""
    pw = reference.quantize(torch.randn(5, 70), None, 4, 32, False, "float", 1.0)
    q = LAYOUT.from_canonical(pw)
    assert q.qweight.shape[0] * 8 >= 5 and torch.all(q.qweight[0, :, 5:] == 0)  # rows 5..7 of block 0
    assert torch.all(q.scales[0, 3:] == 0)  # groups 3..3 (G = 3, padded to whole chunks: 4)


@given(
    N=st.integers(1, 40),
    K=st.integers(1, 300),
    g=st.sampled_from([8, 16, 32, 48, 64, 128, 256]),
    bits=st.sampled_from([2, 3, 4, 8]),
    form=st.sampled_from(QUANT_FORMS),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_random(N, K, g, bits, form, seed):
    torch.manual_seed(seed)
    _roundtrip(reference.quantize(torch.randn(N, K), None, bits, g, *form, 1.0))


def test_layout_mismatch_is_rejected():
    pw = LAYOUT.from_canonical(reference.quantize(torch.randn(9, 256), None, 4, 128, False, "float", 1.0))
    bad = pw.__class__(**{**pw.__dict__, "qweight": pw.qweight[:, :1].contiguous()})
    with pytest.raises(ValueError, match="qweight"):
        check_packed(bad, 256)


_ok, _ = backends.availability("numba")


@pytest.mark.skipif(not _ok, reason="numba backend unavailable")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("N,K,g", [(5, 37, 16), (17, 300, 64), (40, 576, 128), (3, 70, 48)])
def test_numba_quantize_writes_the_layout_directly(bits, sym, zero, N, K, g):
    """The kernel's own layout output equals the canonical output converted by this module."""
    from ttqkern.backends.numba import quantize as nq

    quantize = nq.quantize
    W = torch.randn(N, K)
    D = torch.rand(K) + 0.5
    direct = quantize(W, D, bits, g, sym, zero, 1.0)
    canonical = quantize(W, D, bits, g, sym, zero, 1.0, layout="canonical")
    assert direct.layout == L.NUMBA_CPU and canonical.layout == "canonical"
    check_packed(direct, K)
    expect = LAYOUT.from_canonical(canonical)
    for name, t in expect.tensors().items():
        torch.testing.assert_close(getattr(direct, name), t, rtol=0, atol=0, equal_nan=True, msg=name)
