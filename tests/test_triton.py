"""Triton backend: what the shared conformance suite does not reach.

`test_conformance.py` already runs every stage of this backend against the
reference (on CPU tensors under the interpreter, on CUDA tensors with the ``gpu``
marker).  Here: availability and device rules, the portable rounding helpers,
exact ties and non-finite groups, the multi-program paths (split-K, split-T,
tiles spanning groups, several tiles per group) forced through tuned configs on
small shapes, the config plumbing itself, GPU compilation for NVIDIA and AMD
targets without a GPU, and larger checks on a real GPU.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUANT_FORMS, assert_output_close, assert_packed_match, random_case, rel_err

import ttqkern
from ttqkern import backends, ops, reference
from ttqkern.tuning import devices, store

triton = pytest.importorskip("triton")
_ok, _why = backends.availability("triton")
if not _ok:
    pytest.skip(f"triton backend unavailable: {_why}", allow_module_level=True)

import triton.language as tl  # noqa: E402

from ttqkern.backends import triton as tb  # noqa: E402
from ttqkern.backends.triton import config  # noqa: E402
from ttqkern.backends.triton.quantize import rint  # noqa: E402
from ttqkern.backends.triton.unpack import round_to  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEVICES = [d for d in ("cpu",) if d in tb.BACKEND.device_types] + [pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def splits(monkeypatch):
    """The split factors the launchers chose (split-K / split-T), in launch order."""
    seen = []
    real = config.auto_split

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(config, "auto_split", spy)
    return seen


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """``tuned(device, op, entry, **shape)`` stores a tuned entry for that device and shape."""
    monkeypatch.setenv("TTQKERN_CONFIG_DIR", str(tmp_path))
    store.load.cache_clear()

    def write(device, op, entry, check=True, **shape):
        store.save(devices.device_slug(torch.device(device)), {config.key(op, **shape): entry}, tmp_path)
        if check:  # the launch will really use it
            expected = {**config.defaults(op, tb.INTERPRET, **shape), **entry}
            assert config.params(op, torch.device(device), tb.INTERPRET, **shape) == expected

    yield write
    store.load.cache_clear()


# --- availability and device rules ------------------------------------------------


def test_device_types_follow_the_interpreter():
    assert tb.BACKEND.available() == (True, "")
    assert "cuda" in tb.BACKEND.device_types
    assert ("cpu" in tb.BACKEND.device_types) == tb.INTERPRET == bool(triton.knobs.runtime.interpret)


def test_interpreter_version_gate():
    assert tb.interpreter_supported(triton.__version__) or not tb.INTERPRET  # else this module was skipped
    assert not tb.interpreter_supported("3.6.0")
    assert tb.interpreter_supported("3.9.0") and tb.interpreter_supported("3.10.1") and tb.interpreter_supported("4.0")


def test_the_suites_interpreter_speedup_changes_no_result():
    """``tests/interpreter_speedup.py`` (installed by conftest) only skips repeated patching of
    `triton.language` inside a launch: every stage gives bitwise the same output without it."""
    if not tb.INTERPRET:
        pytest.skip("the speed-up is for the interpreter")
    import interpreter_speedup

    installed, why = interpreter_speedup.install()
    if not installed:
        pytest.skip(why)

    def every_stage():
        torch.manual_seed(1)
        x, W, lowrank, bias = random_case(40, 40, 160, r=4, bias=True)
        D = ops.act_scale(x, backend="triton")
        out = []
        for bits, g, sym, zero in [(4, 32, False, "float"), (3, 37, True, "float"), (2, 48, False, "int")]:
            pw = ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, backend="triton")
            out += [D, *pw.tensors().values()]
            for T in (1, 5, 40):  # the GEMV, the tensor-core decode and the prefill kernels
                out.append(ops.qmatmul(x[:T], pw, D, lowrank=lowrank, bias=bias, backend="triton"))
        return out

    fast = every_stage()
    interpreter_speedup.uninstall()
    try:
        plain = every_stage()
    finally:
        interpreter_speedup.install()
    assert len(fast) == len(plain) and all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


def test_auto_picks_triton_for_cuda_tensors():
    assert backends.resolve("auto", torch.device("cuda")) is tb.BACKEND


def test_cpu_tensors_without_the_interpreter_are_a_clear_error():
    code = (
        "import torch\n"
        "from ttqkern import backends, ops\n"
        "try:\n"
        "    ops.act_scale(torch.randn(2, 3), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('ERROR:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    if torch.cuda.is_available():
        assert "ERROR: backend 'triton' cannot run on cpu tensors (it runs on: cuda)" in out.stdout
    else:
        assert "ERROR: backend 'triton' is not available on this machine: triton: no CUDA/ROCm device" in out.stdout
        assert "set TRITON_INTERPRET=1 before importing ttqkern" in out.stdout


@pytest.mark.skipif(
    not {"nvidia", "amd"} <= set(getattr(triton.backends, "backends", {})),
    reason="triton lacks the nvidia/amd backends",
)
@pytest.mark.skipif(
    tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9),
    reason="tests/triton_aot.py drives triton >= 3.9 compiler internals (ASTSource by argument name)",
)
def test_kernels_compile_for_nvidia_and_amd_targets():
    """Ahead-of-time compilation (no GPU needed): PTX/cubin for sm_90, AMDGCN for MI300X."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "triton_aot.py"), "cuda:90", "hip:gfx942"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    kernels = "_colpow_kernel, _dequant_kernel, _gemv_kernel, _prologue_kernel, _qdot_kernel, _quantize_kernel, "
    kernels += "_scale_kernel"
    assert f"compiled 19 kernels for cuda:90: {kernels}" in out.stdout
    assert f"compiled 19 kernels for hip:gfx942: {kernels}" in out.stdout


# --- portable rounding helpers ------------------------------------------------------


@triton.jit
def _rint_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(y_ptr + o, rint(tl.load(x_ptr + o, mask=o < n)), mask=o < n)


@triton.jit
def _bf16_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(y_ptr + o, round_to(tl.load(x_ptr + o, mask=o < n), tl.bfloat16), mask=o < n)


@pytest.mark.parametrize("device", DEVICES)
def test_rint_rounds_half_to_even_like_torch_round(device):
    ties = torch.arange(-20, 20) + 0.5
    special = torch.tensor([0.49999997, -0.49999997, 2.0**22 + 0.5, 2.0**23 - 0.5, 2.0**23 + 1, 1e30, -1e30, 0.0,
                            -0.0, float("inf"), float("-inf"), float("nan")])  # fmt: skip
    x = torch.cat([ties, special, torch.randn(200) * 100]).to(device)
    y = torch.empty_like(x)
    _rint_kernel[(1,)](x, y, x.numel(), BLOCK=512)
    torch.testing.assert_close(y, torch.round(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rounding_is_nearest_even_like_torch(device):
    bits = torch.randint(0, 1 << 16, (300,), dtype=torch.int32) << 16
    tie = (bits | 0x8000).view(torch.float32)  # exactly half way between two bf16 values
    near_pow2 = torch.tensor([1.9999999, 3.9999998, -7.9999995, 0.99999994, 3.4028235e38, 65504.0])
    x = torch.cat([tie, near_pow2, torch.randn(300) * 1e3, torch.tensor([float("inf"), float("nan")])]).to(device)
    y = torch.empty(x.numel(), dtype=torch.bfloat16, device=device)
    _bf16_kernel[(1,)](x, y, x.numel(), BLOCK=1024)
    torch.testing.assert_close(y, x.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)


# --- quantize: exact ties, constant and non-finite groups ---------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
def test_quantize_ties_and_constant_groups_are_exact(device, sym, zero):
    # 4 bits, g = 16: a group spanning [0, 15] (or [-7, 7] symmetric) has s = 1, so
    # every .5 value is an exact tie; plus constant, all-zero and negative groups
    span = torch.arange(-7.0, 8.0) if sym else torch.arange(0.0, 16.0)
    tie_row = torch.cat([span[:1], span[-1:], (span[:-1] + 0.5)[:14]])
    W = torch.stack([tie_row, -tie_row, torch.full((16,), 3.0), torch.zeros(16), torch.full((16,), -2.5)])
    W = torch.cat([W, W.flip(1)], dim=1).to(device)  # K = 32, two groups per row
    pw = ops.quantize(W, None, bits=4, group_size=16, sym=sym, zero=zero, backend="triton")
    ref = reference.quantize(W.cpu(), None, 4, 16, sym, zero, 1.0)
    assert torch.equal(ops.unpack(pw).cpu(), ops.unpack(ref))
    assert torch.equal(pw.scales.cpu(), ref.scales)
    for name in ("mins", "zeros"):
        if getattr(ref, name) is not None:
            assert torch.equal(getattr(pw, name).cpu(), getattr(ref, name))


# --- multi-program paths, forced with tuned configs on small shapes -----------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [2.0, 0.5, float("inf")])
def test_act_scale_split_over_tokens_and_columns(device, tuned, splits, p):
    x = random_case(70, 1, 200, device=device)[0]
    tuned(device, "act_scale", {"BLOCK_T": 8, "BLOCK_K": 32, "SPLIT_T": 4}, T=70, K=200)
    D = ops.act_scale(x, p=p, lam=0.5, alpha=0.3, backend="triton")
    assert splits == [4]  # token slices write (max, scaled sum) partials: no atomics, p = inf splits too
    torch.testing.assert_close(D.cpu(), reference.act_scale(x.cpu(), p, 0.5, 0.3), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [3, 8])
@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("g", [-1, 37, 64])  # chunks of 2 groups x 300, 8 groups x 37, 1 group x 64
def test_quantize_many_programs_and_tiles_per_chunk(device, tuned, bits, sym, zero, g):
    x, W, _, _ = random_case(4, 10, 300, device=device)
    tuned(device, "quantize", {"BLOCK_N": 4, "BLOCK_K": 64}, bits=bits, group=300 if g == -1 else g, N=10, K=300)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = ops.quantize(W, D.to(device), bits=bits, group_size=g, sym=sym, zero=zero, beta=1.05, backend="triton")
    assert_packed_match(pw.to("cpu"), reference.quantize(W.cpu(), D, bits, g, sym, zero, 1.05))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,warps,prefetch", [(1, 2, 0), (2, 4, 1), (4, 1, 1)])
@pytest.mark.parametrize("bits,g", [(4, 32), (4, 48), (3, 64), (2, 37), (8, 128)])
def test_one_token_gemv_many_programs_and_steps(device, tuned, rows, warps, prefetch, bits, g):
    # K = 1100: 4 and 8 bits take several 32-chunk steps and a partial last one; N = 37: a partial last program;
    # g = 48 / 37 take the padded word layout, the others read the canonical bytes in place
    x, W, lowrank, bias = random_case(1, 37, 1100, r=20, bias=True, dtype=torch.float16, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, bits, g, False, "float", 1.0)
    tuned(device, "decode1", {"ROWS": rows, "num_warps": warps, "PREFETCH": prefetch}, bits=bits, group=g, N=37, K=1100)
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    lr = [t.cpu() for t in lowrank]
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T,swap,split,dtype", [(2, 0, 1, torch.float16), (5, 1, 1, torch.bfloat16),
                                                 (16, 1, 4, torch.float16), (7, 0, 2, torch.bfloat16)])  # fmt: skip
@pytest.mark.parametrize("g", [32, 96, 37])  # chunks of 32 (= g), of 32 (3 per group), padded groups
def test_decode_tensor_core_path_small_tiles(device, tuned, T, swap, split, g, dtype):
    x, W, lowrank, bias = random_case(T, 40, 200, r=20, bias=True, dtype=dtype, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, 4, g, False, "float", 1.0)
    cfg = {"BLOCK_N": 16, "CHUNK": 32, "SWAP": swap, "SPLIT_K": split}
    tuned(device, "decode", cfg, bits=4, group=g, T=T, N=40, K=200)
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    lr = [t.cpu() for t in lowrank]
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits,g,form", [(4, 32, (False, "float")), (3, 37, (True, "float")), (2, 48, (False, "int"))])
def test_prefill_many_tiles(device, tuned, dtype, bits, g, form):
    x, W, lowrank, bias = random_case(40, 40, 160, r=20, bias=True, dtype=dtype, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, bits, g, *form, 1.0)
    prefill = {"BLOCK_T": 16, "BLOCK_N": 16, "CHUNK": 32, "GROUP_T": 2, "DEQUANT_MIN_T": 1 << 30}
    tuned(device, "prefill", prefill, bits=bits, group=g, T=40, N=40, K=160)
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    lr = [t.cpu() for t in lowrank]
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,g,form", [(4, 128, (False, "float")), (3, 37, (False, "int")), (8, 48, (True, "float"))])
@pytest.mark.parametrize("with_lowrank", [False, True])
def test_prefill_threshold_takes_the_dequantize_and_linear_path(device, tuned, monkeypatch, dtype, bits, g, form,
                                                                 with_lowrank):  # fmt: skip
    import importlib

    qm = importlib.import_module("ttqkern.backends.triton.qmatmul")  # the module, not the function it exports
    taken = []
    real = qm._dequant_linear
    monkeypatch.setattr(qm, "_dequant_linear", lambda *a: taken.append(1) or real(*a))
    x, W, lowrank, bias = random_case(33, 24, 300, r=5 if with_lowrank else 0, bias=True, dtype=dtype, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, bits, g, *form, 1.0)
    tuned(device, "prefill", {"DEQUANT_MIN_T": 32}, bits=bits, group=g, T=33, N=24, K=300)
    tuned(device, "dequant", {"BLOCK_N": 16, "CHUNK": 64}, bits=bits, group=g, N=24, K=300)
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    assert taken == [1]
    lr = [None, None] if lowrank is None else [t.cpu() for t in lowrank]
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()))


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_search_space_configs_are_correct(device, tuned):
    """A tuner may store any point of `config.SPACE`: a sample of them, one shape per op."""
    rng = random.Random(0)
    x, W, lowrank, bias = random_case(20, 24, 160, r=3, bias=True, device=device)
    xs = x[:3].contiguous()
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, 4, 32, False, "float", 1.0)
    lr = [t.cpu() for t in lowrank]
    for _ in range(4):
        pick = {op: {k: rng.choice(v) for k, v in space.items()} for op, space in config.SPACE.items()}
        for T in (3, 20):
            tuned(device, "act_scale", pick["act_scale"], T=T, K=160)
        tuned(device, "quantize", pick["quantize"], bits=4, group=32, N=24, K=160)
        tuned(device, "decode1", pick["decode1"], bits=4, group=32, N=24, K=160)
        tuned(device, "decode", pick["decode"], bits=4, group=32, T=3, N=24, K=160)
        pick["prefill"]["DEQUANT_MIN_T"] = rng.choice([16, 1 << 30])  # both prefill paths at T = 20
        tuned(device, "prefill", pick["prefill"], bits=4, group=32, T=20, N=24, K=160)
        tuned(device, "dequant", pick["dequant"], bits=4, group=32, N=24, K=160)
        # the spec's values, explicitly: ttqkern.defaults holds the tuned ones
        D_tr = ops.act_scale(x, p=2.0, lam=1.0, alpha=0.25, backend="triton")
        torch.testing.assert_close(D_tr.cpu(), D, rtol=1e-5, atol=0)
        q = ops.quantize(W, D.to(device), bits=4, group_size=32, backend="triton")
        assert_packed_match(q.to("cpu"), pw)
        for xx in (x[:1].contiguous(), xs, x):
            y = ops.qmatmul(xx, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
            assert_output_close(y.cpu(), reference.qmatmul(xx.cpu(), pw, D, *lr, bias.cpu()))


# --- config plumbing ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_tuned_entry_warns_and_uses_defaults(device, tuned):
    x, W, _, _ = random_case(2, 8, 64, device=device)
    pw = reference.quantize(W.cpu(), None, 4, 32, False, "float", 1.0)
    tuned(device, "decode", {"BLOCK_N": 48}, check=False, bits=4, group=32, T=2, N=8, K=64)
    with pytest.warns(UserWarning, match=r"tuned config triton/decode/bits=4/group=32/T=2/N=8/K=64 .* invalid values"):
        y = ops.qmatmul(x, pw.to(device), backend="triton")
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw))


def test_shipped_entries_name_the_current_ops_and_validate():
    """Every shipped Triton entry is keyed for an op this version launches and passes its `ConfigTable`
    check: entries tuned for the kernels issue 13 replaced (ops gemv / gemm / lowrank) would never be
    looked up again, and the compile check would skip them silently."""
    shipped = {p.stem: store._read(p) for p in sorted(store.PACKAGE_DIR.glob("*.json"))}
    checked = 0
    for slug, entries in shipped.items():
        for key, entry in entries.items():
            backend, op = key.split("/")[:2]
            if backend != "triton":
                continue
            assert op in config.TABLE.ops, f"{slug}: {key} is keyed for an op the Triton backend does not have"
            assert config.TABLE.ops[op].invalid(entry) == "", (slug, key, entry)
            fields = dict(p.split("=") for p in key.split("/")[2:])
            assert set(fields) == set(config.KEY_FIELDS[op]), (slug, key)
            checked += 1
    assert checked >= 1  # h200.json ships the quantize entries


def test_defaults_and_search_space_are_valid():
    for op in config.OPS:
        for interpret in (True, False):
            for T in (1, 2, 16, 17, 100):
                base = config.defaults(op, interpret, T=T)
                spec = config.TABLE.ops[op]
                assert set(base) == set(config.SPACE[op]) and spec.invalid(base) == ""
                for field, values in config.SPACE[op].items():
                    assert all(spec.invalid({**base, field: v}) == "" for v in values), (op, field)
    decode, decode1 = config.TABLE.ops["decode"], config.TABLE.ops["decode1"]
    assert decode.invalid({"BLOCK_N": 48}) and decode1.invalid({"num_warps": 3})
    assert decode1.invalid({"BLOCK_N": 16})  # a field of another op


def test_key_buckets_dimensions():
    key = config.key("decode", bits=3, group=64, T=5, N=4000, K=4096)
    assert key == "triton/decode/bits=3/group=64/T=8/N=4096/K=4096"
    assert (
        config.key("decode1", bits=4, group=128, T=1, N=4000, K=5120) == "triton/decode1/bits=4/group=128/N=4096/K=8192"
    )
    assert config.key("act_scale", T=33, K=100) == "triton/act_scale/T=64/K=128"


@pytest.mark.parametrize(
    "bits,g,cap,expected",
    [
        (4, 128, 128, (128, 1, 1)),  # one tl.dot per group
        (4, 128, 64, (64, 2, 2)),  # capped: two per group
        (4, 5120, 128, (128, 40, 40)),  # g = -1 on a 5120-wide layer: 40 chunks of 128
        (4, 96, 128, (32, 3, 3)),  # largest power of two dividing 96
        (2, 37, 128, (64, 1, 1)),  # padded group (37 -> 64 codes): one chunk
        (3, 64, 128, (64, 1, 1)),
    ],
)
def test_dot_chunk_is_a_power_of_two_inside_a_group(bits, g, cap, expected):
    from ttqkern.backends import words
    from ttqkern.backends.triton.qmatmul import _dot_chunk

    pw = reference.quantize(torch.randn(3, g), None, bits, g, False, "float", 1.0)
    assert _dot_chunk(words.word_plan(pw), cap) == expected


def test_gpu_defaults_follow_the_sm_count():
    # one token: >= 2 CTAs per SM with one row per warp and thread when N is small, more rows when large
    assert config.defaults("decode1", False, N=1024, sms=132)["ROWS"] == 1
    assert config.defaults("decode1", False, N=25600, sms=132)["ROWS"] == 8
    assert config.defaults("decode1", False, N=4096, sms=108)["ROWS"] == 4
    # tensor-core decode: 64-row tiles, split over K until there is a CTA per SM
    assert config.defaults("decode", False, N=4096, sms=132)["SPLIT_K"] == 0
    assert config.auto_split(0, 64, 8, torch.device("cpu"), per_sm=1) == 1  # the interpreter counts one SM
    with config.device_override(devices.BY_SLUG["h200"]):
        assert config.auto_split(0, 64, 8, torch.device("cpu"), per_sm=1) == 3  # 132 SMs
    # a catalog GPU asked about from here gets its derived defaults (not the interpreter's)
    from ttqkern.tuning import lookup

    shape = {"bits": 4, "group": 128, "T": 1, "N": 25600, "K": 5120}
    assert lookup("decode1", shape, device="h200", backend="triton").config["ROWS"] == 8
    prefill = {**shape, "T": 512}
    assert lookup("prefill", prefill, device="a100-80gb", backend="triton").config["BLOCK_T"] == 64
    assert lookup("prefill", prefill, device="h200", backend="triton").config["BLOCK_T"] == 128


def test_auto_split_fills_the_device_and_respects_limits():
    cpu = torch.device("cpu")
    assert config.auto_split(0, 1, 10, cpu) == 2  # 2 programs per SM, one SM stands for the interpreter
    assert config.auto_split(0, 64, 10, cpu) == 1
    assert config.auto_split(8, 1, 3, cpu) == 3  # never more slices than K tiles


# --- end to end -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_linear_end_to_end_matches_the_torch_backend(device):
    x, W, _, b = random_case(3, 48, 96, bias=True, device=device)
    y = ttqkern.linear(x, W, b, r=4, bits=4, group_size=32, backend="triton")
    y_torch = ttqkern.linear(x, W, b, r=4, bits=4, group_size=32, backend="torch")
    assert_output_close(y, y_torch)
    assert rel_err(y, x @ W.T + b) < 0.15


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_pass_opcheck_with_triton(device):
    """The registered ops' fake impls agree with what the Triton kernels return."""
    from ttqkern._dispatch import op_args

    x, W = torch.randn(5, 64, device=device), torch.randn(24, 64, device=device)
    D = torch.rand(64, device=device) + 0.5
    torch.library.opcheck(torch.ops.ttqkern.act_scale.default, (x, 2.0, 1.0, 0.25, "triton"))
    torch.library.opcheck(torch.ops.ttqkern.quantize.default, (W, D, 3, 32, False, "float", 1.0, "triton"))
    pw = ops.quantize(W, bits=3, group_size=32, backend="triton")
    bias = torch.randn(24, device=device)
    args = (x, *op_args(pw), D, None, None, bias, 3, 32, 24, 64, False, "float", pw.layout, "triton")
    torch.library.opcheck(torch.ops.ttqkern.qmatmul.default, args)


# --- on a real GPU ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 16, 256])
@pytest.mark.parametrize("bits", [3, 4])
def test_gpu_real_shape_matches_torch_backend_and_fp16_linear(T, bits):
    """Qwen3-8B q_proj shape (4096 x 4096), fp16, with split-K / tl.dot / GEMM as T grows."""
    torch.manual_seed(0)
    x = torch.randn(T, 4096, device="cuda", dtype=torch.float16)
    W = torch.randn(4096, 4096, device="cuda", dtype=torch.float16) / 64
    D = ops.act_scale(x, backend="triton")
    torch.testing.assert_close(D, ops.act_scale(x, backend="torch"), rtol=1e-5, atol=0)
    pw = ops.quantize(W, D, bits=bits, group_size=128, backend="triton")
    assert_packed_match(pw.to("cpu"), reference.quantize(W.cpu(), D.cpu(), bits, 128, False, "float", 1.0))
    y = ops.qmatmul(x, pw, D, backend="triton")
    assert_output_close(y, ops.qmatmul(x, pw, D, backend="torch"))
    assert rel_err(y, x @ W.T) < (0.12 if bits == 4 else 0.25)
    # auto is triton on CUDA tensors; split-K decode sums its partials in split order: bitwise repeatable
    assert backends.resolve("auto", x.device).name == "triton"
    assert torch.equal(ops.qmatmul(x, pw, D, backend="auto"), y)


@pytest.mark.gpu
@pytest.mark.parametrize("T,N,split", [(16, 256, 8), (4, 1000, 3), (2, 64, 16)])
def test_gpu_split_k_decode_is_deterministic_and_resets_its_counters(tuned, T, N, split):
    """The last program of a tile sums the partials after an acquire and resets the tile's counter: a race
    or a counter left set would change some call's output (the interpreter runs programs one by one and
    cannot show either)."""
    x, W, lowrank, bias = random_case(T, N, 4096, r=16, bias=True, dtype=torch.float16, device="cuda")
    D = ops.act_scale(x, backend="triton")
    pw = ops.quantize(W, D, bits=4, group_size=128, backend="triton")
    tuned("cuda", "decode", {"BLOCK_N": 64, "CHUNK": 128, "SWAP": 1, "SPLIT_K": split}, bits=4, group=128, T=T,
          N=N, K=4096)  # fmt: skip
    run = tb.BACKEND.prepare(pw, D, *lowrank, bias)
    first = run(x)
    assert_output_close(first, ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch"))
    for _ in range(50):
        assert torch.equal(run(x), first)


@pytest.mark.gpu
def test_gpu_qmatmul_is_capturable_in_a_cuda_graph():
    x, W, lowrank, bias = random_case(1, 1024, 2048, r=8, bias=True, dtype=torch.float16, device="cuda")
    D = ops.act_scale(x, backend="triton")
    pw = ops.quantize(W, D, bits=4, group_size=128, backend="triton")
    eager = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="triton")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compile) outside the capture
        ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="triton")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="triton")
    graph.replay()
    torch.cuda.synchronize()
    assert_output_close(y, eager)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("g", [64, 48])  # canonical bytes read in place / a padded copy, made once
def test_prepare_makes_the_word_planes_once(device, monkeypatch, g):
    from ttqkern.backends import words

    x, W, lowrank, bias = random_case(1, 20, 96, r=3, bias=True, dtype=torch.float16, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, 4, g, False, "float", 1.0).to(device)
    made = []
    real = words.word_plan
    monkeypatch.setattr(words, "word_plan", lambda p: made.append(1) or real(p))
    run = tb.BACKEND.prepare(pw, D.to(device), *lowrank, bias)
    ys = [run(x), run(x)]
    assert made == [1]
    ref = reference.qmatmul(x.cpu(), pw.to("cpu"), D, *[t.cpu() for t in lowrank], bias.cpu())
    for y in ys:
        assert_output_close(y.cpu(), ref)
