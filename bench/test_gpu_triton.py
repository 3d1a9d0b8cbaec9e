"""GPU benchmark of the Triton backend on real model shapes (skipped without a GPU).

    python -m pytest bench/test_gpu_triton.py -s          # writes results/bench/triton_<device>.json
    python bench/report_gpu.py results/bench/triton_<device>.json     # the tables

Dry run on a CPU (the Triton interpreter, shapes divided by 64, one wall-clock call
per measurement: checks the code paths and the JSON, measures nothing):

    TRITON_INTERPRET=1 TTQKERN_BENCH_DRY_RUN=/tmp/bench.json python -m pytest bench/test_gpu_triton.py -s

Layers (``nn.Linear`` weights ``[N, K]``) of Qwen3-8B (hidden 4096, intermediate
12288, 32 heads x 128) and Qwen3-32B (hidden 5120, intermediate 25600, 64 heads x
128): q_proj, gate/up (fused), down.  Per layer and bit width (4, 3, 2; g = 128):

- decode, T = 1, 4 and 16: TTQ ``qmatmul`` with D, rank-16 low rank and bias, timed through the
  backend's ``prepare`` (as ``TTQLinear`` runs it: planes and centres made once per weight)
  (``ttq-fused``), the packed GEMM alone (``ttq-plain``: the "r = 16 extras" are
  fused / plain - 1), the same TTQ math as separate torch ops around the packed
  GEMM (``ttq-unfused-torch-ops``), ``F.linear`` fp16 (cuBLAS), and where installed
  torchao int4 (tinygemm) and gemlite at 4 bits.
- requantization per prompt (act_scale over 512 prompt tokens + quantize of the fp16
  weight) and the break-even number of decode tokens against fp16.
- prefill, T = 128, 512 and 2048: the tensor-core kernel (``ttq-prefill-kernel``), the
  dequantize + cuBLAS path (``ttq-prefill-dequant``), the default choice
  (``ttq-prefill``, by the tunable ``DEQUANT_MIN_T``), and ``F.linear``.

Every timing is ``triton.testing.do_bench``'s median with the L2 cleared before
each run (cold cache), both eagerly and replayed from a CUDA graph (``*-graph``
rows: GPU time without the host's launch overhead, what serving stacks run).  Rows
carry GB/s over the bytes that must move and % of the device's HBM roofline, or
TFLOP/s and % of its fp16 tensor peak (`ttqkern.tuning.devices`), and
``vs_fp16``: cuBLAS fp16's time over ours in the same run and mode (> 1: faster).
Every TTQ output measured is first checked against the torch backend.
``TTQKERN_BENCH_LAYERS`` / ``TTQKERN_BENCH_BITS`` / ``TTQKERN_BENCH_DECODE_T`` /
``TTQKERN_BENCH_PREFILL_T`` (comma lists) restrict the run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ttqkern.tune.tuner import graph_replay, rel_err

DRY_RUN = os.environ.get("TTQKERN_BENCH_DRY_RUN")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() and not DRY_RUN,
        reason="GPU benchmark: needs a CUDA or ROCm GPU (torch.cuda.is_available() is False); "
        "TTQKERN_BENCH_DRY_RUN=<json path> with TRITON_INTERPRET=1 dry-runs it on the CPU",
    ),
]

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"
ALL_LAYERS = {  # name -> (N, K)
    "qwen3-8b/q_proj": (4096, 4096),
    "qwen3-8b/gate_up_proj": (12288, 4096),
    "qwen3-8b/down_proj": (4096, 12288),
    "qwen3-32b/q_proj": (8192, 5120),
    "qwen3-32b/gate_up_proj": (25600, 5120),
    "qwen3-32b/down_proj": (5120, 25600),
}
SCALE = 64 if DRY_RUN else 1  # the dry run divides every dimension
_pick = os.environ.get("TTQKERN_BENCH_LAYERS")
LAYERS = {k: (n // SCALE, k_ // SCALE) for k, (n, k_) in ALL_LAYERS.items() if not _pick or k in _pick.split(",")}
BITS = tuple(int(b) for b in os.environ.get("TTQKERN_BENCH_BITS", "4,3,2").split(","))
GROUP = 128 // (2 if DRY_RUN else 1)
RANK = 16
PREFILL_LAYERS = tuple(k for k in LAYERS if k.startswith("qwen3-8b/"))  # the CuPy bench's prefill layers


def _ints(var: str, default: str) -> tuple[int, ...]:
    return tuple(int(v) for v in os.environ.get(var, default).split(","))


# T = 1: the one-token kernel; 2..16: tensor-core decode; 128: the in-register prefill kernel
# (below DEQUANT_MIN_T); 512, 2048: dequantize + cuBLAS by default, the kernel beside it (dry run: 24, 48, 144)
DECODE_T = _ints("TTQKERN_BENCH_DECODE_T", "1,4,16")
PREFILL_T = tuple(t // SCALE * 4 + 16 if DRY_RUN else t for t in _ints("TTQKERN_BENCH_PREFILL_T", "128,512,2048"))
PROMPT_T = 512 // SCALE * 4 if DRY_RUN else 512
DTYPE = torch.float16
DEVICE = "cpu" if DRY_RUN else "cuda"


def _ms(fn) -> float:
    if DRY_RUN:  # one wall-clock call: the dry run checks code paths, it measures nothing
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def _graph_ms(fn) -> float:
    """``_ms`` of ``fn`` replayed from a CUDA graph: the GPU time without Python / launch overhead."""
    return _ms(fn if DRY_RUN else graph_replay(fn))


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _baselines_int4(W: torch.Tensor):
    """``{name: (callable(x) | None, reason)}`` for torchao int4 and gemlite, when installed."""
    out = {}
    if DRY_RUN:
        return out
    try:
        from torchao.quantization import quantize_

        try:
            from torchao.quantization import Int4WeightOnlyConfig as int4
        except ImportError:  # torchao < 0.10
            from torchao.quantization import int4_weight_only as int4
        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device, dtype=torch.bfloat16)
        lin.weight.data.copy_(W)
        quantize_(lin, int4(group_size=GROUP))
        lin(torch.randn(1, W.shape[1], device=W.device, dtype=torch.bfloat16))  # fail here, not mid-benchmark
        out["torchao-int4-bf16"] = (lambda x: lin(x.to(torch.bfloat16)), "")
    except Exception as e:  # not installed, or no kernel for this device
        out["torchao-int4-bf16"] = (None, f"{type(e).__name__}: {e}"[:300])
    try:
        import gemlite  # noqa: F401
        from torchao.quantization import GemliteUIntXWeightOnlyConfig, quantize_

        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device, dtype=torch.float16)
        lin.weight.data.copy_(W)
        quantize_(lin, GemliteUIntXWeightOnlyConfig(group_size=GROUP, bit_width=4))
        lin(torch.randn(1, W.shape[1], device=W.device, dtype=torch.float16))
        out["gemlite-int4-fp16"] = (lin, "")
    except Exception as e:
        out["gemlite-int4-fp16"] = (None, f"{type(e).__name__}: {e}"[:300])
    return out


@pytest.fixture(scope="module")
def report():
    """Collects rows; writes ``results/bench/triton_<slug>.json`` (dry run: its own path) at the end."""
    import triton

    from ttqkern.tuning import devices

    if DRY_RUN:
        name, slug, cat = "dry run (Triton interpreter on the CPU)", "dry-run", None
    else:
        dev = torch.device("cuda")
        name, slug = torch.cuda.get_device_name(dev), devices.device_slug(dev)
        cat = devices.lookup_gpu(name)
    catalog = None if cat is None else {"hbm_gbps": cat.hbm_gbps, "fp16_tflops": cat.fp16_tflops, "l2_mib": cat.l2_mib}
    data = {
        "device": name,
        "slug": slug,
        "catalog": catalog,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m pytest bench/test_gpu_triton.py -s",
        "method": "triton.testing.do_bench median (warmup 10 ms, rep 50 ms), L2 cleared before every run (cold "
        "cache); eager and CUDA-graph replay; fp16 activations",
        "group_size": GROUP,
        "rank": RANK,
        "rows": [],
        "unavailable": {},
    }
    yield data
    print(f"\nwrote {_save(data)}")


def _save(data) -> Path:
    """Write the report so far (after every test: a run cut short by its time limit keeps what it measured)."""
    path = Path(DRY_RUN) if DRY_RUN else RESULTS / f"triton_{data['slug']}.json"
    _add_ratios(data["rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _add_ratios(rows) -> None:
    """``vs_fp16`` on every timed row: fp16 ``F.linear``'s time in the same layer, T and mode over ours."""
    ref = {}
    for r in rows:
        if r["kernel"].startswith("fp16-F.linear"):
            ref[(r["layer"], r["T"], r["kernel"].endswith("-graph"))] = r["us"]
    for r in rows:
        t = ref.get((r["layer"], r["T"], r["kernel"].endswith("-graph")))
        if t and r.get("us") and not r["kernel"].startswith("fp16"):
            r["vs_fp16"] = t / r["us"]


def _row(report, **fields):
    cat = report["catalog"]
    us = fields.get("us")
    if "bytes" in fields:
        fields["GBps"] = fields["bytes"] / (us * 1e-6) / 1e9
        fields["pct_hbm_roofline"] = None if cat is None else 100 * fields["GBps"] / cat["hbm_gbps"]
    if "flops" in fields:
        fields["TFLOPs"] = fields["flops"] / (us * 1e-6) / 1e12
        fields["pct_fp16_peak"] = None if cat is None else 100 * fields["TFLOPs"] / cat["fp16_tflops"]
    report["rows"].append(fields)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))


def _both(report, fn, **fields):
    """One eager and one graph-replay row of ``fn``."""
    kernel = fields.pop("kernel")
    _row(report, **fields, kernel=kernel, us=_ms(fn) * 1e3)
    _row(report, **fields, kernel=kernel + "-graph", us=_graph_ms(fn) * 1e3)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_decode_and_requantization(report, layer):
    from ttqkern import backends, ops

    N, K = LAYERS[layer]
    torch.manual_seed(0)
    dev = DEVICE
    tb = backends.get("triton")
    W = (torch.randn(N, K, device=dev) / K**0.5).to(DTYPE)
    bias = torch.randn(N, device=dev, dtype=DTYPE)
    A, B, W_res = ops.lowrank(W.float(), RANK)
    A, B, W_res = A.to(DTYPE), B.to(DTYPE), W_res.to(DTYPE)
    prompt = torch.randn(PROMPT_T, K, device=dev, dtype=DTYPE)
    xs = {T: torch.randn(T, K, device=dev, dtype=DTYPE) for T in DECODE_T}

    t_fp16 = {}
    for T, x in xs.items():
        moved = _nbytes(W, x, bias) + T * N * 2
        _both(report, lambda: F.linear(x, W, bias), layer=layer, N=N, K=K, bits=16, T=T, kernel="fp16-F.linear",
              bytes=moved)  # fmt: skip
        t_fp16[T] = report["rows"][-1]["us"]  # the graph replay
    for name, (fn, why) in _baselines_int4(W).items():
        if fn is None:
            report["unavailable"][name] = why
            continue
        for T, x in xs.items():
            packed = N * K // 2 + 2 * 2 * N * (K // GROUP)  # int4 codes + fp16/bf16 scales and zeros
            _both(report, lambda: fn(x), layer=layer, N=N, K=K, bits=4, T=T, kernel=name,
                  bytes=packed + _nbytes(x) + T * N * 2)  # fmt: skip

    for bits in BITS:
        D = ops.act_scale(prompt, backend="triton")
        pw = ops.quantize(W_res, D, bits=bits, group_size=GROUP, backend="triton")

        def requant():  # per prompt: act_scale over the prompt, then read W once and write the packed weight
            d = ops.act_scale(prompt, backend="triton")
            return ops.quantize(W_res, d, bits=bits, group_size=GROUP, backend="triton")

        t_req = _ms(requant) * 1e3
        _row(report, layer=layer, N=N, K=K, bits=bits, T=PROMPT_T, kernel="ttq-requantize", us=t_req,
             bytes=_nbytes(prompt, W_res) + pw.nbytes + 4 * K)  # fmt: skip

        for T, x in xs.items():
            y = ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="triton")
            err = rel_err(y, ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="torch"))
            assert err < 1e-2, f"{layer} bits={bits} T={T}: triton vs torch backend rel err {err:.3g}"
            common = dict(layer=layer, N=N, K=K, bits=bits, T=T)
            # timed as TTQLinear runs it: the backend's prepared call (word planes and group centres
            # made once per requantization), which ops.qmatmul would redo per call
            fused = tb.prepare(pw, D, A, B, bias)
            assert rel_err(fused(x), y) < 1e-3
            _both(report, lambda: fused(x), **common,
                  kernel="ttq-fused", bytes=pw.nbytes + _nbytes(x, y, D, A, B, bias), rel_err_vs_torch_backend=err)  # fmt: skip
            fused_graph = report["rows"][-1]["us"]
            plain = tb.prepare(pw, None, None, None, None)
            _both(report, lambda: plain(x), **common, kernel="ttq-plain",
                  bytes=pw.nbytes + _nbytes(x, y))  # fmt: skip
            report["rows"][-1]["r16_extras_pct"] = 100 * (fused_graph / report["rows"][-1]["us"] - 1)

            def unfused():  # the same TTQ math as separate torch ops around the packed GEMM
                x_scaled = (x.float() / D).to(DTYPE)
                return plain(x_scaled) + (x @ A.T) @ B.T + bias

            _both(report, unfused, **common, kernel="ttq-unfused-torch-ops", bytes=pw.nbytes + _nbytes(x, y, D, A, B))
            saving = t_fp16[T] - fused_graph
            _row(
                report,
                **common,
                kernel="ttq-break-even",
                requant_us=t_req,
                decode_saving_us=saving,
                break_even_tokens=(t_req / saving) if saving > 0 else None,
            )  # fmt: skip  (None: never ahead)
    _save(report)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_prefill(report, layer):
    from ttqkern import ops
    from ttqkern.backends.triton import config
    from ttqkern.tuning import devices, store

    N, K = LAYERS[layer]
    torch.manual_seed(0)
    W = (torch.randn(N, K, device=DEVICE) / K**0.5).to(DTYPE)
    slug = devices.device_slug(torch.device(DEVICE))
    for T in PREFILL_T:
        x = torch.randn(T, K, device=DEVICE, dtype=DTYPE)
        D = ops.act_scale(x, backend="triton")
        flops = 2 * T * N * K
        for bits in BITS:
            pw = ops.quantize(W, D, bits=bits, group_size=GROUP, backend="triton")
            ref = ops.qmatmul(x, pw, D, backend="torch")
            key = config.key("prefill", bits=bits, group=GROUP, T=T, N=N, K=K)
            base = config.params("prefill", torch.device(DEVICE), bool(DRY_RUN), bits=bits, group=GROUP, T=T, N=N, K=K)
            for kernel, entry in (("ttq-prefill", None), ("ttq-prefill-kernel", {"DEQUANT_MIN_T": 1 << 30}),
                                  ("ttq-prefill-dequant", {"DEQUANT_MIN_T": 16})):  # fmt: skip
                with store.override(slug, key, {**base, **entry}) if entry else contextlib.nullcontext():
                    y = ops.qmatmul(x, pw, D, backend="triton")
                    err = rel_err(y, ref)
                    assert err < 1e-2, f"{layer} bits={bits} T={T} {kernel}: rel err vs torch backend {err:.3g}"
                    _row(report, layer=layer, N=N, K=K, bits=bits, T=T, kernel=kernel, flops=flops,
                         us=_ms(lambda: ops.qmatmul(x, pw, D, backend="triton")) * 1e3, rel_err_vs_torch_backend=err,
                         path="dequant" if T >= (entry or base)["DEQUANT_MIN_T"] else "kernel")  # fmt: skip
        _row(report, layer=layer, N=N, K=K, bits=16, T=T, kernel="fp16-F.linear", flops=flops,
             us=_ms(lambda: F.linear(x, W)) * 1e3)  # fmt: skip
    _save(report)
