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
from ttqkern.backends.triton.tiles import round_to  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEVICES = [d for d in ("cpu",) if d in tb.BACKEND.device_types] + [pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def splits(monkeypatch):
    """The split factors the launchers chose (split-K / split-T), in launch order."""
    seen = []
    real = config.auto_split

    def spy(*args):
        seen.append(real(*args))
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
    kernels = "_colpow_kernel, _gemm_kernel, _gemv_kernel, _quantize_kernel, _scale_kernel, _xa_kernel"
    assert f"compiled 13 kernels for cuda:90: {kernels}" in out.stdout
    assert f"compiled 13 kernels for hip:gfx942: {kernels}" in out.stdout


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
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("use_dot", [0, 1])
@pytest.mark.parametrize("g", [32, 48, 37])  # tile in one group, tile shrunk to 16 to fit, tiles spanning groups
def test_gemv_split_k_and_lowrank_prepass(device, tuned, splits, T, use_dot, g):
    x, W, lowrank, bias = random_case(T, 40, 200, r=20, bias=True, dtype=torch.float16, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, 4, g, False, "float", 1.0)
    gemv = {"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 3, "USE_DOT": use_dot, "BLOCK_R": 16}
    tuned(device, "gemv", gemv, bits=4, group=g, T=T, N=40, K=200)
    tuned(device, "lowrank", {"BLOCK_T": 4, "BLOCK_R": 16, "BLOCK_K": 32, "SPLIT_K": 3, "USE_DOT": use_dot},
          T=T, K=200)  # fmt: skip
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    assert splits == [3, 3]  # pre-pass and GEMV each split K in three
    lr = [t.cpu() for t in lowrank]
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits,g,form", [(4, 32, (False, "float")), (3, 37, (True, "float")), (2, 48, (False, "int"))])
def test_gemm_many_tiles(device, tuned, dtype, bits, g, form):
    x, W, lowrank, bias = random_case(40, 40, 160, r=20, bias=True, dtype=dtype, device=device)
    D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
    pw = reference.quantize(W.cpu(), D, bits, g, *form, 1.0)
    gemm = {"BLOCK_T": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_T": 2, "BLOCK_R": 16}
    tuned(device, "gemm", gemm, bits=bits, group=g, T=40, N=40, K=160)
    y = ops.qmatmul(x, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
    lr = [t.cpu() for t in lowrank]
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
            tuned(device, "lowrank", pick["lowrank"], T=T, K=160)
        tuned(device, "quantize", pick["quantize"], bits=4, group=32, N=24, K=160)
        tuned(device, "gemv", pick["gemv"], bits=4, group=32, T=3, N=24, K=160)
        tuned(device, "gemm", pick["gemm"], bits=4, group=32, T=20, N=24, K=160)
        # the spec's values, explicitly: ttqkern.defaults holds the tuned ones
        D_tr = ops.act_scale(x, p=2.0, lam=1.0, alpha=0.25, backend="triton")
        torch.testing.assert_close(D_tr.cpu(), D, rtol=1e-5, atol=0)
        q = ops.quantize(W, D.to(device), bits=4, group_size=32, backend="triton")
        assert_packed_match(q.to("cpu"), pw)
        for xx in (xs, x):
            y = ops.qmatmul(xx, pw.to(device), D.to(device), lowrank=lowrank, bias=bias, backend="triton")
            assert_output_close(y.cpu(), reference.qmatmul(xx.cpu(), pw, D, *lr, bias.cpu()))


# --- config plumbing ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_tuned_entry_warns_and_uses_defaults(device, tuned):
    x, W, _, _ = random_case(2, 8, 64, device=device)
    pw = reference.quantize(W.cpu(), None, 4, 32, False, "float", 1.0)
    tuned(device, "gemv", {"BLOCK_N": 48}, check=False, bits=4, group=32, T=2, N=8, K=64)
    with pytest.warns(UserWarning, match=r"tuned config triton/gemv/bits=4/group=32/T=2/N=8/K=64 .* invalid values"):
        y = ops.qmatmul(x, pw.to(device), backend="triton")
    assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw))


def test_defaults_and_search_space_are_valid():
    for op in config.OPS:
        for interpret in (True, False):
            for T in (1, 2, 16, 17, 100):
                base = config.defaults(op, interpret, T=T)
                spec = config.TABLE.ops[op]
                assert set(base) == set(config.SPACE[op]) and spec.invalid(base) == ""
                for field, values in config.SPACE[op].items():
                    assert all(spec.invalid({**base, field: v}) == "" for v in values), (op, field)
    gemv = config.TABLE.ops["gemv"]
    assert gemv.invalid({"BLOCK_N": 48}) and gemv.invalid({"num_warps": 3})


def test_key_buckets_dimensions():
    assert config.key("gemv", bits=3, group=64, T=5, N=4000, K=4096) == "triton/gemv/bits=3/group=64/T=8/N=4096/K=4096"
    assert config.key("act_scale", T=33, K=100) == "triton/act_scale/T=64/K=128"


@pytest.mark.parametrize(
    "block_k,g,K,min_block,expected",
    [
        (64, 128, 4096, 16, (64, True)),  # group a multiple of the tile
        (64, 48, 4096, 16, (16, True)),  # shrink to the largest power of two dividing g
        (128, 48, 4096, 16, (128, False)),  # ... unless that shrinks it more than 4x: per-column scales
        (128, 16, 4096, 1, (128, False)),  # shrinking 8x is not worth it: gather scales per column
        (64, 37, 37, 16, (64, False)),  # odd group (g = K = 37): per-column scales
        (128, 64, 40, 16, (64, True)),  # tile capped at K's power of two
        (16, 40, 40, 16, (16, False)),  # 40 = 8 * 5: 8 < the dot's minimum tile
    ],
)
def test_fit_block_k(block_k, g, K, min_block, expected):
    assert config.fit_block_k(block_k, g, K, min_block) == expected


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
    # auto is triton on CUDA tensors; not bitwise equal to y: split-K sums with fp32
    # atomics, whose order varies from run to run (seen on an H200 at T = 16)
    assert backends.resolve("auto", x.device).name == "triton"
    assert_output_close(ops.qmatmul(x, pw, D, backend="auto"), y)


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
