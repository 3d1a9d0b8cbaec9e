"""The CuPy backend's kernels executed on the CPU by the host emulator, against the reference.

Everything but CuPy itself runs here: the host code of `ttqkern.backends.cupy.host`
(buffers, grids, splits, the decode / prefill choice, the prefill torch ops) and the
CUDA kernel bodies, compiled for a 32-lane host warp (see csrc/host_emulator.cpp for
what that does and does not check).  Tolerances are the conformance suite's (spec §6).
"""

from __future__ import annotations

import pytest
import torch
from conformance import ConformanceSuite
from helpers import QUANT_FORMS, assert_output_close, assert_packed_match, random_case

from ttqkern import reference
from ttqkern.backends.cupy import config, host
from ttqkern.backends.cupy import layout as L
from ttqkern.format import dequantize
from ttqkern.tuning import store

emulator = pytest.importorskip("ttqkern.backends.cupy.emulator")
if emulator.compiler() is None:
    pytest.skip("the CuPy kernel emulator needs a C++20 compiler (g++ or $CXX)", allow_module_level=True)

act_scale = emulator.emulated("act_scale")
quantize = emulator.emulated("quantize")
qmatmul = emulator.emulated("qmatmul")

SHAPES = [  # (T, N, K, g): T = 1, odd sizes, K not a multiple of g, one group per row
    (1, 5, 37, 16),
    (3, 16, 128, 32),
    (16, 33, 200, 64),
    (5, 40, 512, 128),
    (9, 17, 130, 48),
    (33, 8, 64, 64),
]


@pytest.fixture(scope="module", autouse=True)
def _built():
    with emulator.registered():
        yield


class TestEmulatedConformance(ConformanceSuite):
    """The shared conformance suite (the one GPU backends run under marker gpu), on the emulator."""

    backend = emulator.EmulatedCupy.name
    device = "cpu"


@pytest.mark.parametrize("p,lam,alpha", [(2.0, 1.0, 0.25), (1.0, 0.0, 0.5), (0.5, 0.1, 1.0), (3.0, 10.0, 0.0),
                                         (float("inf"), 1.0, 0.5)])  # fmt: skip
@pytest.mark.parametrize("T,K", [(1, 37), (16, 200), (300, 64), (2, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_act_scale(p, lam, alpha, T, K, dtype):
    x = random_case(T, 1, K, dtype=dtype)[0]
    torch.testing.assert_close(act_scale(x, p, lam, alpha), reference.act_scale(x, p, lam, alpha), rtol=1e-5, atol=0)


def test_act_scale_zero_input_is_one_and_nan_is_nan():
    assert torch.equal(act_scale(torch.zeros(4, 19), 2.0, 1.0, 0.25), torch.ones(19))
    x = torch.randn(4, 19)
    x[1, 3] = float("nan")
    assert torch.isnan(act_scale(x, 2.0, 1.0, 0.25)).all()
    assert torch.isnan(act_scale(x, float("inf"), 1.0, 0.25)).all()  # max must not drop the nan


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("T,N,K,g", SHAPES)
def test_quantize_writes_the_reference_in_cupy_mma(bits, sym, zero, T, N, K, g):
    x, W, _, _ = random_case(T, N, K)
    W = W.to(torch.bfloat16 if bits in (3, 8) else torch.float32)  # both weight element types
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = quantize(W, D, bits, g, sym, zero, 1.0)
    L.check(pw)
    ref = reference.quantize(W, D, bits, g, sym, zero, 1.0)
    assert_packed_match(L.to_canonical(pw), ref)
    # same IEEE operations as the reference: scales, offsets, zero codes and centred offsets
    # (PackedWeight.centred) bit for bit, padding included (rows past N are zero, as
    # layout.from_canonical pads)
    exact = L.from_canonical(ref)
    assert torch.equal(L.zero_codes(pw), ref.centred()[0])
    for name in ("scales", "mins", "zeros"):
        if getattr(exact, name) is not None:
            torch.testing.assert_close(getattr(pw, name), getattr(exact, name), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("beta", [0.9, 1.1])
def test_quantize_range_expansion(beta):
    W = torch.randn(9, 70)
    pw = quantize(W, None, 3, 32, False, "float", beta)
    assert_packed_match(L.to_canonical(pw), reference.quantize(W, None, 3, 32, False, "float", beta))


@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
def test_quantize_huge_narrow_groups_match_the_reference_exactly(sym, zero):
    """Finite values far from 0 in a narrow range: for zero="int", z = round(-mn / s) leaves
    int32 and must become INT32_MIN as torch's CPU conversion makes it (non-finite groups
    are in the conformance suite above)."""
    W = torch.randn(4, 70)
    W[1, 10:40] = 1e30 + torch.arange(30) * 1e24
    W[2, :] = -3e9
    pw = L.to_canonical(quantize(W, None, 4, 32, sym, zero, 1.0))
    ref = reference.quantize(W, None, 4, 32, sym, zero, 1.0)
    for name, t in ref.tensors().items():
        torch.testing.assert_close(getattr(pw, name), t, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("T,N,K,g", SHAPES)
def test_qmatmul(bits, sym, zero, T, N, K, g):
    x, W, lowrank, bias = random_case(T, N, K, r=2, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, bits, g, sym, zero, 1.0)
    y = qmatmul(x, L.from_canonical(pw), D, *lowrank, bias)
    assert_output_close(y, reference.qmatmul(x, pw, D, *lowrank, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_D,r,with_bias", [(False, 0, False), (True, 0, True), (True, 4, False), (True, 16, True)])
@pytest.mark.parametrize("T", [1, 8, 9, 16, 33, 100])
def test_qmatmul_epilogues_dtypes_and_paths(dtype, with_D, r, with_bias, T):
    x, W, lowrank, bias = random_case(T, 24, 96, r=r, bias=with_bias, dtype=dtype)
    D = reference.act_scale(x, 2.0, 1.0, 0.25) if with_D else None
    pw = reference.quantize(W, D, 4, 32, False, "float", 1.0)
    A, B = lowrank if lowrank else (None, None)
    y = qmatmul(x, L.from_canonical(pw), D, A, B, bias)
    assert_output_close(y, reference.qmatmul(x, pw, D, A, B, bias))


@pytest.mark.parametrize("case", ["prefill", "odd_group", "large_rank"])
def test_qmatmul_fallback_paths(case):
    T, N, K, g, r = {"prefill": (70, 20, 256, 64, 3), "odd_group": (2, 20, 100, 25, 3), "large_rank": (4, 80, 96, 32, 70)}[case]  # fmt: skip
    x, W, lowrank, bias = random_case(T, N, K, r=r, bias=True, dtype=torch.float16)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, 3, g, False, "int", 1.0)
    mma = L.from_canonical(pw)
    assert host.uses_decode_kernel(mma, T, x.device) == (case == "large_rank")
    assert_output_close(qmatmul(x, mma, D, *lowrank, bias), reference.qmatmul(x, pw, D, *lowrank, bias))


def test_dequantize_equals_the_reference_bit_for_bit():
    """The prefill path's weight is `format.dequantize`'s: s * (u - c) + m0, bit for bit (rule Q1),
    including groups whose zero code is clamped (all-positive / all-negative groups, integer
    zero-points outside the codes) and a D = 1e8 outlier column."""
    for bits, (sym, zero) in [(2, QUANT_FORMS[0]), (3, QUANT_FORMS[1]), (4, QUANT_FORMS[2]), (8, QUANT_FORMS[0]),
                              (4, QUANT_FORMS[0]), (8, QUANT_FORMS[1])]:  # fmt: skip
        W = torch.randn(19, 150)
        W[3] = W[3].abs() + 5.0  # 0 outside the group's range: c = 0, m0 = the group minimum
        W[4] = -W[4].abs() - 5.0
        D = torch.ones(150)
        D[7] = 1e8
        pw = reference.quantize(W, D, bits, 50, sym, zero, 1.0)
        Wd = host.dequantize(L.from_canonical(pw), torch.float32, emulator.run)
        assert torch.equal(Wd, dequantize(pw))


@pytest.mark.parametrize("cfg", [{"RT": 1, "WR": 1, "WK": 1}, {"RT": 2, "WR": 2, "WK": 4}, {"RT": 2, "WR": 8, "WK": 1},
                                 {"RT": 1, "WR": 1, "WK": 8, "KX": 512}])  # fmt: skip
@pytest.mark.parametrize("bits,g", [(4, 64), (2, 32), (8, 16), (3, 128)])
def test_decode_configs_of_the_search_space(cfg, bits, g):
    T, N, K = 5, 48, 520  # several chunks per k-warp and row tiles per block
    x, W, lowrank, bias = random_case(T, N, K, r=3, bias=True, dtype=torch.bfloat16)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, bits, g, False, "float", 1.0)
    cfg = {**cfg, "RT": min(cfg["RT"], config.RT_MAX[bits])}
    assert config.invalid("decode", cfg) == ""
    with store.override("cpu", config.key("decode", bits=bits, group=g, T=T, N=N, K=K), cfg):
        y = qmatmul(x, L.from_canonical(pw), D, *lowrank, bias)
    assert_output_close(y, reference.qmatmul(x, pw, D, *lowrank, bias))


def _flags(x, pw, D) -> torch.Tensor:
    """The prologue's flags ``[TP / 16, KB]`` (bit t: token 16 y + t takes the exact path)."""
    pro, _ = host.decode_launches(x, pw, D, None, None, None, x.new_empty(x.shape[0], pw.N))
    emulator.run([pro])
    return pro.args[7].view(-1, pro.grid[0]).to(torch.int64) & 0xFFFF


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_prologue_flags_only_the_tokens_the_mma_operands_cannot_carry(dtype):
    """docs/numerics.md rule Q2: ordinary activations keep the tensor-core path (so the numerics
    tests' extreme-D cases test it); huge, sub-normal-range, and fp16-overflowing x / D do not."""
    x, W, _, _ = random_case(20, 24, 520, dtype=dtype)
    W[:, 300] *= 1e-3  # keeps fp16 outputs finite next to x / D ~ 7e4
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = L.from_canonical(reference.quantize(W, D, 4, 64, False, "float", 1.0))
    assert not _flags(x, pw, D).any()
    xe = x.clone()
    big = {torch.float32: 1e30, torch.bfloat16: 1e30, torch.float16: 70.0}[dtype]
    xe[3, 300], xe[17, 5] = big, 1e-38 if dtype != torch.float16 else 1.0
    D2 = D.clone()
    D2[300] = 1e-3  # x / D far above fp16's 65504, 2^64 for the bf16 modes
    f = _flags(xe, pw, D2)
    assert f[0, 1] == 1 << 3 and f[0].sum() == 1 << 3  # token 3, codes 256..511 only
    assert f[1, 0] == (1 << 1 if dtype != torch.float16 else 0) and f[1, 1:].sum() == 0  # token 17: below 2^-100
    y = qmatmul(xe, pw, D2, None, None, None)
    assert torch.isfinite(y).all()
    ref = reference.qmatmul(xe, L.to_canonical(pw), D2, None, None, None)
    assert_output_close(y, ref)


@pytest.mark.parametrize("cfg", [{"RT": 1, "WR": 1, "WK": 1}, {"RT": 2, "WR": 2, "WK": 4}, {"RT": 1, "WR": 1, "WK": 8}])
@pytest.mark.parametrize("bits,g", [(4, 64), (2, 32), (8, 16), (3, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_path_in_every_configuration(cfg, bits, g, dtype):
    """Flagged tokens (x ~ 1e36 next to ordinary ones) through the exact path: K split across
    warps, row tiles per warp, 8 and 16 tokens per block, ragged groups."""
    T, N, K = 11, 40, 520
    x, W, lowrank, bias = random_case(T, N, K, r=3, bias=True, dtype=dtype)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    x[[0, 9]] = x[[0, 9]] * 1e36
    pw = reference.quantize(W, D, bits, g, False, "int", 1.0)
    mma = L.from_canonical(pw)
    cfg = {**cfg, "RT": min(cfg["RT"], config.RT_MAX[bits])}
    with store.override("cpu", config.key("decode", bits=bits, group=g, T=T, N=N, K=K), cfg):
        assert _flags(x, mma, D).any()
        y = qmatmul(x, mma, D, *lowrank, bias)
    ref = reference.qmatmul(x, pw, D, *lowrank, bias)
    assert torch.isfinite(y).all()
    for rows in ([0, 9], [1, 2, 3, 4, 5, 6, 7, 8, 10]):  # the huge tokens and the ordinary ones, each to spec
        assert_output_close(y[rows], ref[rows])
