"""The CuPy backend's integration: availability, errors, caching, configs; GPU checks (marker gpu).

Numerical conformance on a GPU runs through tests/test_conformance.py (the registry lists
``cupy`` for CUDA tensors when it is available); the CPU-side evidence for the kernels
themselves is in test_cupy_emulated.py and test_cupy_compile.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import assert_output_close, random_case

import ttqkern
from ttqkern import backends, ops, reference
from ttqkern.backends import cupy as cb
from ttqkern.backends.cupy import config, host, kernels
from ttqkern.backends.cupy import layout as L
from ttqkern.tuning import store

ok, why = cb.BACKEND.available()
gpu = pytest.mark.skipif(not ok, reason=f"cupy backend unavailable: {why}")


def test_import_ttqkern_never_needs_cupy():
    code = "import sys, ttqkern; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # without cupy at all (None in sys.modules makes its import fail): a reason, no exception
    code = "import sys; sys.modules['cupy'] = None; import ttqkern; print(ttqkern.backends.status()['cupy'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(False, " in out.stdout and "cupy: cupy is not installed" in out.stdout and "ttqkern[cupy]" in out.stdout


def test_unavailable_backend_names_what_is_missing():
    if ok:
        pytest.skip("the cupy backend is available here")
    assert "cupy" in why or "CUDA" in why or "NVRTC" in why or "capability" in why
    ok2, reason = backends.availability("cupy")
    assert not ok2 and reason.startswith("cupy: ")
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="backend 'cupy' is not available"):
        ops.act_scale(x, backend="cupy")
    with pytest.raises(RuntimeError, match=re.escape(why.split("(")[0][:20])):
        ops.quantize(torch.randn(4, 8), bits=4, group_size=8, backend="cupy")


def test_auto_prefers_triton_then_cupy_on_cuda():
    ranks = {n: backends.get(n).auto_rank("cuda") for n in ("triton", "cupy", "torch") if backends.get(n)}
    assert ranks["cupy"] > ranks.get("triton", 0) and ranks["cupy"] < ranks["torch"]
    assert cb.BACKEND.device_types == ("cuda",) and cb.BACKEND.auto_rank("cpu") is None


def test_sources_are_inlined_for_nvrtc():
    for name in set(kernels.SOURCE_OF.values()):
        src = kernels.source(name)
        assert '#include "' not in src and "#pragma once" not in src
        assert src.count("struct Lay<4>") == 1  # ttq_common.cuh included once
    assert "ttq_decode" in kernels.source("decode.cu")


def test_canonical_weights_are_converted_once_and_reconverted_after_changes():
    pw = reference.quantize(torch.randn(20, 96), None, 4, 32, False, "float", 1.0)
    a = cb.as_mma(pw)
    assert cb.as_mma(pw) is a and a.layout == L.NAME
    pw.scales.mul_(2)  # in place: the cached copy is stale
    b = cb.as_mma(pw)
    assert b is not a and torch.equal(L.to_canonical(b).scales, pw.scales)
    assert cb.as_mma(b) is b


def test_config_defaults_and_space_are_valid():
    for bits in (2, 3, 4, 8):
        for op in config.OPS:
            assert config.invalid(op, config.defaults(op, bits=bits)) == ""
    assert "launch bound" in config.invalid("decode", {"WR": 8, "WK": 2})  # 16 warps
    assert config.invalid("decode", {"RT": 4}) and config.invalid("decode", {"WK": 3})
    assert config.invalid("decode", {"BLOCK_N": 4})


def test_invalid_tuned_entry_warns_and_uses_defaults(config_dir):
    shape = dict(bits=4, group=64, T=1, N=64, K=64)
    store.save("cpu", {config.key("decode", **shape): {"RT": 3}}, config_dir)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = config.params("decode", torch.device("cpu"), **shape)
    assert got == config.defaults("decode", bits=4) and any("invalid" in str(w.message) for w in rec)


def test_kernel_names_cover_every_launch_and_compiled_set():
    every = set(host.all_kernel_names())
    for bits, g in ((4, 128), (3, 48), (2, 20)):
        pw = L.from_canonical(reference.quantize(torch.randn(40, 200), None, bits, g, False, "int", 1.0))
        for dt in host.XMODE:
            names = host.kernel_names(pw, dt, torch.device("cpu"))
            assert names <= every and names
            assert any(k == "dequant" for k, _ in names)  # prefill T
            assert (g % 16 == 0) == any(k == "decode" for k, _ in names)


def test_launch_records_check_their_geometry():
    with pytest.raises(AssertionError):
        host.Launch("scale", (), (1, 1, 1), 2048, 0, (None, None, 1, 1, 2, 1.0, 1.0, 1.0))
    with pytest.raises(AssertionError):
        host.Launch("scale", (), (1, 1, 1), 1024, 0, (None, None, 1))


# ---- on a GPU -------------------------------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 5, 16, 40, 300])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_real_shape_matches_the_torch_backend(T, dtype):
    torch.manual_seed(0)
    x, W, (A, B), bias = random_case(T, 1024, 2048, r=16, bias=True, dtype=dtype, device="cuda")
    D = ops.act_scale(x, backend="cupy")
    pw = ops.quantize(W, D, bits=4, group_size=128, backend="cupy")
    y = ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="cupy")
    assert_output_close(y, ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="torch"))


@gpu
@pytest.mark.gpu
def test_gpu_prepared_decode_is_capturable_in_a_cuda_graph():
    torch.manual_seed(0)
    x, W, (A, B), bias = random_case(1, 512, 1024, r=8, bias=True, dtype=torch.float16, device="cuda")
    D = ops.act_scale(x, backend="cupy")
    pw = ops.quantize(W, D, bits=4, group_size=64, backend="cupy")
    run = cb.BACKEND.prepare(pw, D, A, B, bias)
    ref = run(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_output_close(out, cb.BACKEND.qmatmul(x, pw, D, A, B, bias))
    assert not torch.equal(out, ref)


@gpu
@pytest.mark.gpu
def test_gpu_ttqlinear_compiles_with_the_cupy_backend():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128)).cuda().half()
    model = ttqkern.quantize_model(model, mode="prompt", r=4, bits=4, group_size=64, backend="cupy")
    prompt = torch.randn(1, 8, 256, device="cuda", dtype=torch.float16)
    eager = model(prompt)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(prompt), eager)
    step = torch.randn(1, 1, 256, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(compiled(step), model(step))
