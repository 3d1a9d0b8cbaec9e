"""The Numba backend's decode kernel families, each forced, against the torch backend on the same weight.

Families (``ttqkern.backends.numba.host``): ``blocked`` (bits 4 / 8; AVX-512 table
lookups, or the portable form), ``lut`` (bits 2 / 3 on AVX-512, and its 4-bit mode),
``words`` (the portable word-plane kernels), ``generic``.  Every family runs with
the AVX-512 path and with the portable fallback forced (`isa.forced`), over all bit
widths and forms, ragged last groups, K not a multiple of g, odd group sizes, T = 1
to 64 (decode kernels forced for every T), with and without D / low-rank / bias, in
fp32 / fp16 / bf16; `prepare` against `qmatmul`; the host-side buffer checks; the
ISA switch, in process and through the environment variable in a fresh process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import QUANT_FORMS, assert_output_close, random_case
from hypothesis import given
from hypothesis import strategies as st

from ttqkern import backends, ops, reference
from ttqkern.tuning import store

pytest.importorskip("numba")
_ok, _why = backends.availability("numba")
if not _ok:
    pytest.skip(f"numba backend unavailable: {_why}", allow_module_level=True)

from ttqkern.backends import cpu_layouts as L
from ttqkern.backends.numba import BACKEND, config, gemv_blocked, gemv_lut, host, isa

HAS_AVX512 = isa.detect("auto") == "avx512"
ISAS = ["avx512", "portable"] if HAS_AVX512 else ["portable"]
FAMILIES = ["auto", "blocked", "lut", "words", "generic"]
NO_PREFILL = {"PACKED_MAX_T": 1 << 30, "DEQUANT_MIN_T": 1 << 20}  # the decode kernels for every T


@contextlib.contextmanager
def running(family, which, bits=None, T=None, N=None, K=None, group=None):
    """Force a family and an ISA (and keep prefill off for the shape, when given)."""
    fam = None if family == "auto" else family
    ctx = contextlib.ExitStack()
    ctx.enter_context(host.forced_family(fam))
    ctx.enter_context(isa.forced(which))
    if bits is not None:
        ctx.enter_context(
            store.override("cpu", config.key("qmatmul", bits=bits, group=group, T=T, N=N, K=K), NO_PREFILL)
        )
    with ctx:
        yield


def _factors(N, K, r):
    return (torch.randn(r, K) / K**0.5, torch.randn(N, r) / r**0.5) if r else None


def _check(x, pw, D, lowrank, bias, family, which):
    T, K = x.shape
    with running(family, which, pw.bits, T, pw.N, K, pw.group_size):
        y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="numba")
    assert_output_close(y, ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch"))
    return y


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("T,N,K,g", [(1, 9, 576, 128), (5, 33, 200, 64), (16, 20, 300, 32), (64, 17, 256, 256),
                                     (3, 24, 160, 16)])  # fmt: skip
def test_every_family_and_isa(which, family, bits, sym, zero, T, N, K, g):
    x, W, _, bias = random_case(T, N, K, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = BACKEND.quantize(W, D, reference_fmt(bits, g, sym, zero, K))  # the numba_cpu layout, written directly
    _check(x, pw, D, _factors(N, K, 3), bias, family, which)
    _check(x[:1], pw.canonical(), None, None, None, family, which)  # canonical input, no extras


def reference_fmt(bits, g, sym, zero, K):
    from ttqkern.quant import QuantFormat

    return QuantFormat(bits, g, sym, zero).resolved(K)


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("family", ["auto", "lut", "words"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 16, 33, 64])
def test_tokens_and_dtypes(which, family, dtype, T):
    x, W, _, bias = random_case(T, 40, 256, bias=True, dtype=dtype)
    D = reference.act_scale(x.float(), 2.0, 1.0, 0.25)
    for bits in (3, 4):
        pw = reference.quantize(W, D, bits, 128, False, "float", 1.0)
        y = _check(x, pw, D, _factors(40, 256, 4), bias, family, which)
        assert y.dtype == dtype and y.shape == (T, 40)


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("with_D,r,with_bias", [(False, 0, False), (True, 0, False), (False, 5, False),
                                                (False, 0, True), (True, 16, True)])  # fmt: skip
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_prologue_and_epilogue_combinations(which, with_D, r, with_bias, bits):
    x, W, _, bias = random_case(4, 50, 384, bias=with_bias)
    D = reference.act_scale(x, 2.0, 1.0, 0.25) if with_D else None
    pw = reference.quantize(W, D, bits, 128, False, "float", 1.0)
    for xx in (x[:1], x):
        _check(xx, pw, D, _factors(50, 384, r), bias, "auto", which)


@given(
    T=st.integers(1, 24),
    N=st.integers(1, 40),
    K=st.integers(1, 300),
    g=st.sampled_from([16, 32, 48, 64, 128, 256, -1]),
    bits=st.sampled_from([2, 3, 4, 8]),
    form=st.sampled_from(QUANT_FORMS),
    family=st.sampled_from(FAMILIES),
    which=st.sampled_from(ISAS),
    r=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_every_family(T, N, K, g, bits, form, family, which, r, seed):
    torch.manual_seed(seed)
    x, W, _, bias = random_case(T, N, K, bias=bool(seed & 1))
    D = reference.act_scale(x, 2.0, 1.0, 0.25) if seed & 2 else None
    pw = ops.quantize(W, D, bits=bits, group_size=g, sym=form[0], zero=form[1], backend="numba")
    _check(x, pw, D, _factors(N, K, min(r, N, K)), bias, family, which)


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_prepare_matches_qmatmul_and_sees_operand_changes(which, bits):
    x, W, _, bias = random_case(6, 48, 320, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    A, B = _factors(48, 320, 4)
    pw = ops.quantize(W, D, bits=bits, group_size=64, backend="numba")
    with isa.forced(which):
        fn = BACKEND.prepare(pw, D, A, B, bias)
        for T in (1, 2, 6, 1):  # plans per T, cached
            y = fn(x[:T])
            assert torch.equal(y, ops.qmatmul(x[:T], pw, D, lowrank=(A, B), bias=bias, backend="numba"))
        b16 = bias.to(torch.bfloat16)  # a converted operand: re-read after an in-place change
        fn16 = BACKEND.prepare(pw, D, A, B, b16)
        y0 = fn16(x[:1])
        b16.add_(1.0)
        assert torch.allclose(fn16(x[:1]), y0 + 1.0, atol=2e-2)  # bf16 rounding of bias + 1


def test_ttqlinear_decode_step_is_the_prepared_call():
    from torch import nn

    from ttqkern import TTQLinear

    layer = TTQLinear.from_linear(nn.Linear(192, 96), r=4, bits=4, group_size=64, mode="prompt", backend="numba")
    layer(torch.randn(1, 5, 192))
    x = torch.randn(2, 1, 192)
    y = layer(x)
    assert isinstance(layer._run[1], host.Prepared)
    assert torch.equal(y, layer._matmul(x, layer.packed, layer.D))  # the full path gives the same bits
    layer.bias.data.add_(1.0)  # an in-place change of an operand: re-prepared
    assert torch.allclose(layer(x), y + 1.0, atol=1e-5)
    assert layer(torch.randn(1, 3, 192)).shape == (1, 3, 96)  # a prompt requantizes


# --- buffer checks -----------------------------------------------------------------------


def _blocked_args(N=20, K=256, g=128):
    pw = BACKEND.quantize(torch.randn(N, K), None, reference_fmt(4, g, False, "float", K))
    x, y = np.zeros((1, K), np.float32), np.zeros((1, N), np.float32)
    A, Bm, b = np.zeros((0, K), np.float32), np.zeros((N, 0), np.float32), np.zeros(0, np.float32)
    return pw.qweight.numpy(), pw.scales.numpy(), x, A, Bm, b, y, N, K, 4, g


def test_blocked_buffer_check_accepts_the_layout_and_rejects_anything_else():
    args = list(_blocked_args())
    gemv_blocked.check_buffers(*args, 8)
    for i, bad in [(0, args[0][:-1]), (1, args[1][:, :1]), (2, np.zeros((1, 255), np.float32)),
                   (4, np.zeros((19, 0), np.float32)), (5, np.zeros(3, np.float32)),
                   (6, np.zeros((2, 20), np.float32)), (0, np.asfortranarray(args[0]))]:  # fmt: skip
        broken = list(args)
        broken[i] = bad
        with pytest.raises(RuntimeError, match="buffers do not match"):
            gemv_blocked.check_buffers(*broken, 8)


def test_lut_buffer_check_rejects_wrong_planes():
    N, K, g = 20, 256, 128
    pw = BACKEND.quantize(torch.randn(N, K), None, reference_fmt(3, g, True, "float", K))  # lut: symmetric
    x, y = np.zeros((1, K), np.float32), np.zeros((1, N), np.float32)
    A, Bm, b = np.zeros((0, K), np.float32), np.zeros((N, 0), np.float32), np.zeros(0, np.float32)
    planes = (pw.qweight.numpy(), pw.qweight_hi.numpy())
    bases = (gemv_lut.basis(gemv_lut.KIND_PAIR2, 0), gemv_lut.basis(gemv_lut.KIND_QUAD1, 1))
    sm = pw.scales.numpy()
    gemv_lut.check_buffers(planes, bases, sm, x, A, Bm, b, y, N, K, 3, g)
    for bad_planes, bad_bases in [(planes[:1], bases[:1]), ((planes[0][:1], planes[1]), bases),
                                  (planes, bases[::-1]), (planes, (bases[0][:1], bases[1]))]:  # fmt: skip
        with pytest.raises(RuntimeError, match="buffers do not match"):
            gemv_lut.check_buffers(bad_planes, bad_bases, sm, x, A, Bm, b, y, N, K, 3, g)


def test_lut_tables_are_centred_on_the_symmetric_zero_code():
    """Rule Q1 in the lut kernels: table entries are x~ times centred codes (u - 2^(b-1))."""
    assert gemv_lut.basis(gemv_lut.KIND_PAIR2, 2)[:, 10].tolist() == [0.0, 0.0]  # i = 10: codes (2, 2)
    assert gemv_lut.basis(gemv_lut.KIND_QUAD1, 1)[:, 15].tolist() == [0.0] * 4  # hi bits all set: 4 (1 - 1)
    assert gemv_lut.basis(gemv_lut.KIND_SINGLE4, 8)[0, 0] == -8.0


# --- the ISA switch ----------------------------------------------------------------------


def test_isa_detection_and_override(monkeypatch):
    assert isa.detect("portable") == "portable"
    with pytest.warns(UserWarning, match="not one of"):
        assert isa.detect("neon9000") in ("avx512", "portable")
    monkeypatch.setattr(isa, "cpu_features", lambda: {"avx2", "fma"})
    with pytest.warns(UserWarning, match="lacks"):
        assert isa.detect("avx512") == "portable"
    assert isa.detect("auto") == "portable"
    with pytest.raises(RuntimeError, match="no AVX-512"):
        with isa.forced("avx512"):
            pass


def test_portable_forced_by_environment_in_a_fresh_process():
    code = (
        "import torch; from ttqkern import ops; from ttqkern.backends.numba import isa, host;"
        "pw = ops.quantize(torch.randn(8, 256), bits=3, group_size=128, sym=True, backend='numba');"
        "print(isa.ISA, host.family(pw))"
    )
    env = {**os.environ, isa.ENV: "portable"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["portable", "words"]  # no AVX-512: 3-bit codes go to the word-plane kernels


@pytest.mark.skipif(
    not os.environ.get("TTQKERN_TEST_AVX2"), reason="set TTQKERN_TEST_AVX2=1 (compiles every kernel again)"
)
def test_portable_kernels_compiled_for_an_avx2_cpu(tmp_path):
    """The portable path compiled by LLVM for Haswell (AVX2, no AVX-512) runs and matches the reference."""
    code = (
        "import torch; from ttqkern import ops, reference; from ttqkern.backends.numba import isa;"
        "assert isa.ISA == 'portable', isa.ISA;"
        "torch.manual_seed(0); x = torch.randn(3, 576); W = torch.randn(70, 576);"
        "D = ops.act_scale(x, backend='numba');"
        "[(lambda pw: torch.testing.assert_close(ops.qmatmul(x, pw, D, backend='numba'),"
        " reference.qmatmul(x, pw, D), rtol=1e-4, atol=1e-4))(ops.quantize(W, D, bits=b, backend='numba'))"
        " for b in (2, 3, 4, 8)]; print('ok')"
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt",
           "NUMBA_CACHE_DIR": str(tmp_path)}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("ok")


def test_layout_kinds_cover_every_family():
    assert host.family(reference.quantize(torch.randn(4, 256), None, 4, 128, False, "float", 1.0)) == "blocked"
    fam3 = host.family(reference.quantize(torch.randn(4, 256), None, 3, 128, True, "float", 1.0))
    assert fam3 == ("lut" if isa.current() == "avx512" else "words")
    # asymmetric 2/3-bit codes: per-row zero codes, which the lut tables cannot centre (rule Q1):
    # widened to nibbles for the 4-bit blocked kernels on AVX-512, word planes elsewhere
    fam3a = host.family(reference.quantize(torch.randn(4, 256), None, 3, 128, False, "float", 1.0))
    assert fam3a == ("blocked" if isa.current() == "avx512" else "words")
    with host.forced_family("words"):
        assert host.family(reference.quantize(torch.randn(4, 256), None, 3, 128, False, "float", 1.0)) == "words"
    assert host.family(reference.quantize(torch.randn(4, 96), None, 4, 48, False, "float", 1.0)) == "words"
    assert host.family(reference.quantize(torch.randn(4, 100), None, 4, 37, False, "float", 1.0)) == "generic"
    assert L.kind(4, 48, False) == "plain"


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("zero", ["float", "int"])
@pytest.mark.parametrize("g", [16, 64, 128, 256])
@pytest.mark.parametrize("T", [1, 3, 16])
def test_asymmetric_low_bits_on_nibble_widened_blocked_kernels(bits, zero, g, T):
    """Asymmetric 2/3-bit weights through the 4-bit blocked kernels (codes widened to nibbles)."""
    if isa.current() != "avx512":
        pytest.skip("the nibble-widened path is AVX-512 only")
    N, K = 29, 3 * g + 16  # ragged last group, rows not a multiple of the row block
    x, W, _, bias = random_case(T, N, K, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = BACKEND.quantize(W, D, reference_fmt(bits, g, False, zero, K))
    assert host.family(pw) == "blocked"
    lowrank = _factors(N, K, 3)
    y = host.prepare(pw, D, *lowrank, bias)(x)
    assert_output_close(y, ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch"))


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("g", [32, 128, 256])
@pytest.mark.parametrize("kt", [1, 4, 5])
@pytest.mark.parametrize("T", [2, 5, 16])
def test_blocked_k_tiles(which, bits, g, kt, T):
    """The K-tiled walk of the blocked kernels (K_TILE > 0, several tokens) gives the untiled result."""
    N, K = 37, 700  # 6 chunks of 128 codes (Kp = 768 for g = 256): ragged tiles for kt = 4 and 5
    x, W, _, bias = random_case(T, N, K, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = BACKEND.quantize(W, D, reference_fmt(bits, g, False, "float", K))
    lowrank = _factors(N, K, 3)
    key = config.key("qmatmul", bits=bits, group=g, T=T, N=N, K=K)
    with isa.forced(which), store.override("cpu", key, {"K_TILE": kt, "TASK_BLOCKS": 2}):
        y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="numba")
    assert_output_close(y, ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch"))
