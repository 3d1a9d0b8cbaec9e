"""GPU benchmark of the CuPy backend beside the Triton one (skipped without a usable GPU).

    python -m pytest bench/test_gpu_cupy.py -s          # writes results/bench/cupy_<device>.json

Same layers, bit widths, token counts, peers, timing method and JSON fields as
bench/test_gpu_triton.py (shapes and helpers are imported from it), with the CuPy
backend's TTQ rows and, in the same run, the Triton backend's fused decode as a peer
(``triton-ttq-fused-graph``).  Decode rows (T = 1, 16): ``ttq-fused`` (eager, through
``ttqkern.ops``), ``ttq-fused-graph`` (a CUDA-graph replay of the prepared layer,
``BACKEND.prepare``: GPU time without host overhead), the unfused torch-ops variant,
``fp16-F.linear``(-graph), torchao int4 / gemlite where installed; requantization per
prompt and the break-even token count; prefill (T = 512, 2048): dequantize + cuBLAS vs
``F.linear``.  Reported: us, GB/s over the bytes that must move, % of the HBM roofline
(`ttqkern.tuning.devices`); TFLOP/s and % of fp16 peak for prefill.  Every TTQ output is
first checked against the torch backend.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_gpu_triton import (
    BITS,
    DECODE_T,
    DTYPE,
    GROUP,
    LAYERS,
    PREFILL_LAYERS,
    PREFILL_T,
    PROMPT_T,
    RANK,
    _baselines_int4,
    _graph_ms,
    _ms,
    _nbytes,
    _row,
)
from ttqkern.tuning.tuner import graph_replay, rel_err

from ttqkern.backends import cupy as cupy_backend

_ok, _why = cupy_backend.BACKEND.available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _ok, reason=f"GPU benchmark of the CuPy backend: {_why}")]

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"
DEVICE = "cuda"


@pytest.fixture(scope="module")
def report():
    """Collects rows; writes ``results/bench/cupy_<slug>.json`` when the module ends."""
    import cupy

    from ttqkern.tuning import devices

    dev = torch.device("cuda")
    slug = devices.device_slug(dev)
    cat = devices.lookup_gpu(torch.cuda.get_device_name(dev))
    catalog = None if cat is None else {"hbm_gbps": cat.hbm_gbps, "fp16_tflops": cat.fp16_tflops, "l2_mib": cat.l2_mib}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    data = {
        "device": torch.cuda.get_device_name(dev),
        "slug": slug,
        "catalog": catalog,
        "backend": "cupy",
        "versions": {
            "torch": torch.__version__,
            "cupy": cupy.__version__,
            "triton": triton_version,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": "triton.testing.do_bench median, L2 cleared before every run (cold cache); fp16 activations",
        "group_size": GROUP,
        "rank": RANK,
        "rows": [],
        "unavailable": {},
    }
    yield data
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"cupy_{slug}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwrote {path}")


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_decode_and_requantization(report, layer):
    from ttqkern import backends, ops

    N, K = LAYERS[layer]
    torch.manual_seed(0)
    W = (torch.randn(N, K, device=DEVICE) / K**0.5).to(DTYPE)
    bias = torch.randn(N, device=DEVICE, dtype=DTYPE)
    A, B, W_res = ops.lowrank(W.float(), RANK)
    A, B, W_res = A.to(DTYPE), B.to(DTYPE), W_res.to(DTYPE)
    prompt = torch.randn(PROMPT_T, K, device=DEVICE, dtype=DTYPE)
    xs = {T: torch.randn(T, K, device=DEVICE, dtype=DTYPE) for T in DECODE_T}
    triton_ok = backends.availability("triton")[0]

    t_fp16 = {}
    for T, x in xs.items():
        t_fp16[T] = _ms(lambda: F.linear(x, W, bias)) * 1e3
        _row(report, layer=layer, N=N, K=K, bits=16, T=T, kernel="fp16-F.linear", us=t_fp16[T],
             bytes=_nbytes(W, x, bias) + T * N * 2)  # fmt: skip
        _row(report, layer=layer, N=N, K=K, bits=16, T=T, kernel="fp16-F.linear-graph",
             us=_graph_ms(lambda: F.linear(x, W, bias)) * 1e3, bytes=_nbytes(W, x, bias) + T * N * 2)  # fmt: skip
    for name, (fn, why) in _baselines_int4(W).items():
        if fn is None:
            report["unavailable"][name] = why
            continue
        for T, x in xs.items():
            packed = N * K // 2 + 2 * 2 * N * (K // GROUP)
            _row(report, layer=layer, N=N, K=K, bits=4, T=T, kernel=name, us=_ms(lambda: fn(x)) * 1e3,
                 bytes=packed + _nbytes(x) + T * N * 2)  # fmt: skip

    for bits in BITS:
        D = ops.act_scale(prompt, backend="cupy")
        pw = ops.quantize(W_res, D, bits=bits, group_size=GROUP, backend="cupy")

        def requant():
            d = ops.act_scale(prompt, backend="cupy")
            return ops.quantize(W_res, d, bits=bits, group_size=GROUP, backend="cupy")

        t_req = _ms(requant) * 1e3
        _row(report, layer=layer, N=N, K=K, bits=bits, T=PROMPT_T, kernel="ttq-requantize", us=t_req,
             bytes=_nbytes(prompt, W_res) + pw.nbytes + 4 * K)  # fmt: skip
        prepared = cupy_backend.BACKEND.prepare(pw, D, A, B, bias)  # layout conversion + kernel compilation, once

        for T, x in xs.items():
            y = ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="cupy")
            err = rel_err(y, ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="torch"))
            assert err < 1e-2, f"{layer} bits={bits} T={T}: cupy vs torch backend rel err {err:.3g}"
            assert rel_err(prepared(x), y) < 1e-6
            moved = pw.nbytes + _nbytes(x, y, D, A, B, bias)
            common = dict(layer=layer, N=N, K=K, bits=bits, T=T)
            t_fused = _ms(lambda: ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="cupy")) * 1e3

            def unfused():
                x_scaled = (x.float() / D).to(DTYPE)
                return ops.qmatmul(x_scaled, pw, None, backend="cupy") + (x @ A.T) @ B.T + bias

            _row(report, **common, kernel="ttq-fused", us=t_fused, bytes=moved, rel_err_vs_torch_backend=err)
            _row(report, **common, kernel="ttq-unfused-torch-ops", us=_ms(unfused) * 1e3, bytes=moved)
            fused_graph = _ms(graph_replay(lambda: prepared(x))) * 1e3
            _row(report, **common, kernel="ttq-fused-graph", us=fused_graph, bytes=moved)
            _row(report, **common, kernel="ttq-unfused-torch-ops-graph", us=_graph_ms(unfused) * 1e3, bytes=moved)
            if triton_ok:
                tri = _graph_ms(lambda: ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="triton")) * 1e3
                _row(report, **common, kernel="triton-ttq-fused-graph", us=tri, bytes=moved)
            saving = t_fp16[T] - t_fused
            _row(report, **common, kernel="ttq-break-even", requant_us=t_req, decode_saving_us=saving,
                 break_even_tokens=(t_req / saving) if saving > 0 else None)  # fmt: skip


@pytest.mark.parametrize("layer", PREFILL_LAYERS)
def test_gpu_prefill(report, layer):
    from ttqkern import ops

    N, K = LAYERS[layer]
    torch.manual_seed(0)
    W = (torch.randn(N, K, device=DEVICE) / K**0.5).to(DTYPE)
    for T in PREFILL_T:
        x = torch.randn(T, K, device=DEVICE, dtype=DTYPE)
        D = ops.act_scale(x, backend="cupy")
        for bits in BITS:
            pw = ops.quantize(W, D, bits=bits, group_size=GROUP, backend="cupy")
            y = ops.qmatmul(x, pw, D, backend="cupy")
            err = rel_err(y, ops.qmatmul(x, pw, D, backend="torch"))
            assert err < 1e-2, f"{layer} bits={bits} T={T}: cupy vs torch backend rel err {err:.3g}"
            t = _ms(lambda: ops.qmatmul(x, pw, D, backend="cupy")) * 1e3
            _row(report, layer=layer, N=N, K=K, bits=bits, T=T, kernel="ttq-gemm", us=t, flops=2 * T * N * K,
                 rel_err_vs_torch_backend=err)  # fmt: skip
        t = _ms(lambda: F.linear(x, W)) * 1e3
        _row(report, layer=layer, N=N, K=K, bits=16, T=T, kernel="fp16-F.linear", us=t, flops=2 * T * N * K)
