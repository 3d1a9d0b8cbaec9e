"""Numba backend: what the shared conformance suite does not reach.

`test_conformance.py` already runs every stage of this backend against the
reference.  Here: each kernel path (AVX-512 blocked and lut decode kernels, the
portable forms, the word-plane fused decode GEMV, buffered small-T GEMM, generic
odd-group kernel, dequantize + BLAS) forced through tuned configs, the ISA switch
and the family switch, and compared with the torch backend on the *same*
`PackedWeight` (spec §6), exact ties,
constant and non-finite groups in quantize, act_scale's norms, dtypes, the config
plumbing, and ``auto`` choosing numba for CPU tensors.

Compile time dominates this file: every array handed to a kernel is fp32 (or the
packed integer planes), so only a handful of specialisations exist per kernel.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from helpers import QUANT_FORMS, assert_codes_match, assert_output_close, assert_packed_match, random_case, rel_err
from hypothesis import given
from hypothesis import strategies as st

import ttqkern
from ttqkern import backends, ops, reference
from ttqkern.tuning import store

pytest.importorskip("numba")
_ok, _why = backends.availability("numba")
if not _ok:
    pytest.skip(f"numba backend unavailable: {_why}", allow_module_level=True)

from ttqkern.backends import numba as nbk
from ttqkern.backends.numba import _common, config, host, isa

ROOT = Path(__file__).resolve().parents[1]

# kernel path -> qmatmul config forcing it (with T = 1..64 in these tests)
PATHS = {
    "fused": {"FUSED_MAX_T": 1 << 20, "DEQUANT_MIN_T": 1 << 20},
    "buffered": {"FUSED_MAX_T": 0, "DEQUANT_MIN_T": 1 << 20},
    "dequant": {"FUSED_MAX_T": 0, "DEQUANT_MIN_T": 1, "PACKED_MAX_T": 0},  # prefill: dequantize + BLAS
    "packed": {"PACKED_MAX_T": 1 << 30},  # the decode families (blocked / lut) for every T
    "packed-portable": {"PACKED_MAX_T": 1 << 30, "DEQUANT_MIN_T": 1 << 20},
    "lut": {"PACKED_MAX_T": 1 << 30},
}
# path -> (kernel family forced, ISA forced); None: what the backend picks
FAMILY = {
    "fused": ("words", None),
    "buffered": ("words", None),
    "dequant": (None, None),
    "packed": (None, None),
    "packed-portable": (None, "portable"),
    "lut": ("lut", None),
}


@contextlib.contextmanager
def forcing(path):
    fam, which = FAMILY[path]
    with host.forced_family(fam), isa.forced(which) if which else contextlib.nullcontext():
        yield


def _case(T, N, K, r=0, bias=False, dtype=torch.float32):
    """`helpers.random_case` with random low-rank factors instead of an SVD of W.

    qmatmul takes any (A, B); an SVD per case (~1 s each on a busy 2-core machine)
    would dominate this file's run time.
    """
    x, W, _, b = random_case(T, N, K, bias=bias, dtype=dtype)
    lowrank = (torch.randn(r, K) / K**0.5, torch.randn(N, r) / r**0.5) if r else None
    return x, W, lowrank, b


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """``tuned(op, entry, **shape)`` stores a tuned CPU entry for that op and shape."""
    monkeypatch.setenv("TTQKERN_CONFIG_DIR", str(tmp_path))
    store.load.cache_clear()

    def write(op, entry, check=True, **shape):
        store.save("cpu", {config.key(op, **shape): entry}, tmp_path)
        if check:
            assert config.params(op, **shape) == {**config.defaults(op, **shape), **entry}

    yield write
    store.load.cache_clear()


def _compare(x, pw, D, lowrank, bias, path=None):
    with forcing(path) if path else contextlib.nullcontext():
        y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="numba")
    y_ref = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch")
    assert_output_close(y, y_ref)
    return y


# --- registry -----------------------------------------------------------------------


def test_available_and_auto_picks_numba_on_cpu():
    assert nbk.BACKEND.available() == (True, "")
    assert nbk.BACKEND.device_types == ("cpu",)
    assert backends.resolve("auto", torch.device("cpu")) is nbk.BACKEND
    x, W, _, _ = _case(2, 8, 64)
    pw = ops.quantize(W, bits=4, group_size=32)
    assert torch.equal(ops.qmatmul(x, pw), ops.qmatmul(x, pw, backend="numba"))


# --- qmatmul: every kernel path against the torch backend -----------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("T,N,K,g", [(1, 33, 256, 64), (3, 17, 200, 32), (16, 9, 128, -1), (33, 24, 160, 128)])
def test_qmatmul_paths_match_torch(tuned, path, bits, sym, zero, T, N, K, g):
    x, W, lowrank, bias = _case(T, N, K, r=3, bias=True)
    tuned("qmatmul", PATHS[path], bits=bits, group=K if g == -1 else g, T=T, N=N, K=K)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, bits, g, sym, zero, 1.0)
    _compare(x, pw, D, lowrank, bias, path)


@pytest.mark.parametrize("bits,g", [(4, 37), (3, 40), (2, 24), (8, 5), (3, 8)])
@pytest.mark.parametrize("T", [1, 5])
def test_generic_kernel_for_groups_that_are_not_whole_words(bits, g, T):
    x, W, lowrank, bias = _case(T, 11, 100, r=2, bias=True)
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, bits, g, False, "float", 1.0)
    assert _common.planes(pw) is None  # the fast layout does not apply: generic kernel
    _compare(x, pw, D, lowrank, bias)


@pytest.mark.parametrize("T", [1, 3, 16, 33, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_qmatmul_tokens_and_dtypes_default_config(T, dtype):
    x, W, lowrank, bias = _case(T, 48, 256, r=4, bias=True, dtype=dtype)
    D = reference.act_scale(x.float(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W, D, 4, 128, False, "float", 1.0)
    y = _compare(x, pw, D, lowrank, bias)
    assert y.dtype == dtype and y.shape == (T, 48)


@pytest.mark.parametrize("with_D,with_lowrank,with_bias", [(False, False, False), (True, True, True),
                                                           (False, True, False), (True, False, True)])  # fmt: skip
@pytest.mark.parametrize("bits", [3, 4])
def test_qmatmul_prologue_and_epilogue_combinations(with_D, with_lowrank, with_bias, bits):
    x, W, lowrank, bias = _case(2, 40, 192, r=5 if with_lowrank else 0, bias=with_bias)
    D = reference.act_scale(x, 2.0, 1.0, 0.25) if with_D else None
    pw = reference.quantize(W, D, bits, 64, False, "float", 1.0)
    for xx in (x[:1], x):
        _compare(xx, pw, D, lowrank, bias)


@given(
    T=st.integers(1, 20),
    N=st.integers(1, 40),
    K=st.integers(1, 300),
    g=st.sampled_from([16, 32, 64, 128, -1, 40]),
    bits=st.sampled_from([2, 3, 4, 8]),
    form=st.sampled_from(QUANT_FORMS),
    path=st.sampled_from(list(PATHS)),
    r=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_every_path(T, N, K, g, bits, form, path, r, seed):
    torch.manual_seed(seed)
    x, W, lowrank, bias = _case(T, N, K, r=min(r, N, K), bias=bool(seed & 1))
    D = ops.act_scale(x, backend="numba")
    pw = ops.quantize(W, D, bits=bits, group_size=g, sym=form[0], zero=form[1], backend="numba")
    g_res = K if g == -1 else g
    assert_packed_match(pw, reference.quantize(W, D, bits, g_res, *form, 1.0))
    y_ref = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch")
    key = config.key("qmatmul", bits=pw.bits, group=pw.group_size, T=T, N=N, K=K)
    with store.override("cpu", key, PATHS[path]), forcing(path):  # hypothesis examples cannot use fixtures
        y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="numba")
    assert_output_close(y, y_ref)


def test_nan_and_inf_propagate_through_every_path(tuned):
    x, W, _, _ = _case(3, 6, 64)
    W[2, 40] = float("nan")
    W[4, 3] = float("inf")
    pw = ops.quantize(W, None, bits=4, group_size=32, backend="numba")
    for path, entry in PATHS.items():
        tuned("qmatmul", entry, bits=4, group=32, T=3, N=6, K=64)
        with forcing(path):
            y = ops.qmatmul(x, pw, None, backend="numba")
        assert torch.isnan(y[:, 2]).all() and not torch.isfinite(y[:, 4]).any(), path
        assert torch.isfinite(y[:, [0, 1, 3, 5]]).all(), path
        xn = x.clone()
        xn[1, 7] = float("nan")
        with forcing(path):
            y = ops.qmatmul(xn, pw, None, backend="numba")
        assert torch.isnan(y[1]).all() and torch.isfinite(y[0, [0, 1, 3, 5]]).all(), path


# --- quantize ---------------------------------------------------------------------------


@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
def test_quantize_ties_and_constant_groups_are_exact(sym, zero):
    # 4 bits, g = 16: a group spanning [0, 15] (or [-7, 7] symmetric) has s = 1, so
    # every .5 value is an exact tie; plus constant, all-zero and negative groups
    span = torch.arange(-7.0, 8.0) if sym else torch.arange(0.0, 16.0)
    tie_row = torch.cat([span[:1], span[-1:], (span[:-1] + 0.5)[:14]])
    W = torch.stack([tie_row, -tie_row, torch.full((16,), 3.0), torch.zeros(16), torch.full((16,), -2.5)])
    W = torch.cat([W, W.flip(1)], dim=1)
    pw = ops.quantize(W, None, bits=4, group_size=16, sym=sym, zero=zero, backend="numba")
    ref = reference.quantize(W, None, 4, 16, sym, zero, 1.0)
    assert torch.equal(ops.unpack(pw), ops.unpack(ref))
    pw = pw.canonical()  # the backend writes its decode layout; compare in the canonical one
    for name, t in ref.tensors().items():
        assert torch.equal(getattr(pw, name), t), name


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("N,K,g,beta", [(7, 100, 32, 1.0), (5, 37, -1, 0.9), (12, 300, 128, 1.1), (3, 33, 5, 1.0)])
def test_quantize_matches_reference(tuned, bits, sym, zero, N, K, g, beta):
    x, W, _, _ = _case(4, N, K)
    tuned(
        "quantize", {"BLOCK_N": 2}, bits=bits, group=K if g == -1 else g, N=N, K=K
    )  # several tasks, a ragged last one
    D = reference.act_scale(x, 2.0, 1.0, 0.25)
    pw = ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, beta=beta, backend="numba")
    pw_ref = reference.quantize(W, D, bits, K if g == -1 else g, sym, zero, beta)
    assert_packed_match(pw, pw_ref)
    assert all(t.shape == getattr(pw_ref, n).shape for n, t in pw.canonical().tensors().items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_half_precision_weights(dtype):
    W = torch.randn(16, 96).to(dtype)
    D = torch.rand(96) + 0.5
    pw = ops.quantize(W, D, bits=4, group_size=32, backend="numba")
    assert_codes_match(ops.unpack(pw), ops.unpack(reference.quantize(W, D, 4, 32, False, "float", 1.0)))


# --- act_scale --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2.0, 1.0, 0.5, 3.0, float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_act_scale_matches_reference(tuned, p, dtype):
    x = _case(33, 1, 300, dtype=dtype)[0]
    tuned("act_scale", {"BLOCK_K": 64}, T=33, K=300)
    D = ops.act_scale(x, p=p, lam=0.3, alpha=0.5, backend="numba")
    torch.testing.assert_close(D, reference.act_scale(x, p, 0.3, 0.5), rtol=1e-5, atol=0)


# --- config plumbing ----------------------------------------------------------------------


def test_invalid_tuned_entry_warns_and_uses_defaults(tuned):
    x, W, _, _ = _case(2, 8, 64)
    pw = reference.quantize(W, None, 4, 32, False, "float", 1.0)
    tuned("qmatmul", {"BLOCK_N": -3}, check=False, bits=4, group=32, T=2, N=8, K=64)
    with pytest.warns(UserWarning, match=r"tuned config numba/qmatmul/bits=4/group=32/T=2/N=8/K=64 .* invalid values"):
        y = ops.qmatmul(x, pw, backend="numba")
    assert_output_close(y, reference.qmatmul(x, pw))


def test_defaults_and_search_space_are_valid():
    for op in config.OPS:
        spec = config.TABLE.ops[op]
        assert set(config.DEFAULTS[op]) == set(config.SPACE[op]) and spec.invalid(config.DEFAULTS[op]) == ""
        for field, values in config.SPACE[op].items():
            assert all(spec.invalid({field: v}) == "" for v in values), (op, field)
    assert config.key("qmatmul", bits=3, group=128, T=5, N=4000, K=4096) == (
        "numba/qmatmul/bits=3/group=128/T=8/N=4096/K=4096"
    )


def test_serial_and_parallel_runs_agree(tuned):
    """Small problems run on one thread (SERIAL_MAX); forcing the thread team gives the same bits."""
    x, W, lowrank, bias = _case(5, 64, 256, r=2, bias=True)
    pw = ops.quantize(W, bits=4, group_size=64, backend="numba")
    y = ops.qmatmul(x, pw, lowrank=lowrank, bias=bias, backend="numba")
    tuned("quantize", {"SERIAL_MAX": 0, "BLOCK_N": 4}, bits=4, group=64, N=64, K=256)
    tuned("qmatmul", {"SERIAL_MAX": 0, "BLOCK_N": 4}, bits=4, group=64, T=5, N=64, K=256)
    pw_par = ops.quantize(W, bits=4, group_size=64, backend="numba")
    assert all(torch.equal(t, getattr(pw_par, n)) for n, t in pw.tensors().items())
    assert torch.equal(ops.qmatmul(x, pw_par, lowrank=lowrank, bias=bias, backend="numba"), y)


def test_kernels_are_cached_on_disk():
    import sys

    from ttqkern.backends.numba import gemm, gemv_blocked, gemv_lut, gemv_words, generic

    quantize_mod = sys.modules["ttqkern.backends.numba.quantize"]  # the package exports the function
    for kernel in (
        gemv_words.fused,
        gemm.buffered,
        generic.generic,
        generic.dequantize,
        quantize_mod._quantize_kernel,
        gemv_blocked.gemv,
        gemv_blocked.gemv_serial,
        gemv_blocked.gemv_ktiled,
        gemv_blocked.gemv_ktiled_serial,
        gemv_lut.gemv,
        gemv_lut.gemv_serial,
    ):
        assert kernel._cache.__class__.__name__ == "FunctionCache", kernel


_CACHE_PROBE = """
import sys, torch
from ttqkern import ops
from ttqkern.backends.numba import gemv_blocked, gemv_lut
torch.manual_seed(0)
for bits, sym in ((4, False), (3, True)):  # the blocked and the lut family
    pw = ops.quantize(torch.randn(24, 256), bits=bits, group_size=64, sym=sym, backend="numba")
    ops.qmatmul(torch.randn(1, 256), pw, backend="numba")
kernels = [gemv_blocked.gemv, gemv_blocked.gemv_serial, gemv_lut.gemv, gemv_lut.gemv_serial]
print(sum(sum(k.stats.cache_hits.values()) for k in kernels), sum(sum(k.stats.cache_misses.values()) for k in kernels))
import os, ttqkern; print(os.path.dirname(ttqkern.__file__))
"""


def test_a_new_process_loads_the_decode_kernels_from_the_disk_cache(tmp_path):
    """A second process compiles nothing, even from another checkout of the same sources.

    The decode kernels' cache keys are the same in every process.  (They were not while the
    kernels were made in closures over other kernels: Numba's cache key pickles closure cells,
    and a dispatcher pickles with a per-process UUID, numba issue #6264.  Every process then
    recompiled them, seconds each, and the cache folder grew.)  And the cache folder is keyed
    by the sources, not by where they are (`ttqkern.backends.numba.cache`; Numba's own folder
    is named after the path, so a fresh clone compiled everything again).  The cache is the one
    the backend uses (usually filled by the tests before this one).
    """
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "ttqkern", copy / "ttqkern", ignore=shutil.ignore_patterns("__pycache__"))
    runs = []
    for where in (ROOT, copy):  # python -c imports ttqkern from its working directory first
        r = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, cwd=where,
                           timeout=600, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(tuple(map(int, r.stdout.split()[-3:-1])))
        assert r.stdout.split()[-1] == str(where / "ttqkern"), r.stdout  # the checkout it ran from
    hits, misses = runs[1]
    assert misses == 0 and hits >= 2, f"(cache hits, misses) per process: {runs}"


# --- end to end ---------------------------------------------------------------------------


def test_linear_end_to_end_matches_the_torch_backend():
    x, W, _, b = _case(3, 48, 256, bias=True)
    y = ttqkern.linear(x, W, b, r=4, bits=4, group_size=64, backend="numba")
    assert_output_close(y, ttqkern.linear(x, W, b, r=4, bits=4, group_size=64, backend="torch"))
    assert rel_err(y, x @ W.T + b) < 0.15
