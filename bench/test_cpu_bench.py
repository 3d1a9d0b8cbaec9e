"""CPU decode benchmark of the Numba backend against torch's CPU kernels (pytest-benchmark).

    TTQKERN_BENCH_THREADS=2 python -m pytest bench -k cpu --benchmark-json results/bench/cpu.json
    python bench/report.py results/bench/cpu.json          # markdown table + targets

Decode, T = 1, fp32 activations, on Llama-7B-like layer shapes (N, K): 4096 x 4096
(q/k/v/o), 11008 x 4096 (gate/up), 4096 x 11008 (down).  Cold cache: every
benchmark rotates through enough weight copies that their bytes exceed twice the
last-level cache, so each call streams its weight from DRAM.  Threads: env
``TTQKERN_BENCH_THREADS`` (default 2), applied to torch and numba alike.

Peers in the same run: ``F.linear`` fp32 and bf16, and torch's int4 CPU kernel
(``_convert_weight_to_int4pack_for_cpu`` + ``_weight_int4pack_mm_for_cpu``, g = 128,
bf16 activations: its fp32-activation path was ~13x slower in a first measurement
on this project's CPU, so bf16 is the strong peer).  Ours, through the public
``ttqkern.ops.qmatmul`` (checks and dispatch included): int4 / int3 / int2 with
g = 128, and int4 with the TTQ extras (1/D prologue + rank-16 low-rank epilogue).
Requantization: ``ops.quantize`` of a 4096 x 4096 fp32 W to int4 (with D) against
``dst.copy_(W)`` of the same W.

``benchmark.extra_info`` of every row: kind, shape, threads, ms (median; ms_min the
fastest round, the robust figure when other jobs share the CPU), the bytes
a call must stream (weight + scales/offsets, low-rank factors where used) and GB/s,
and the machine's measured copy bandwidth for context.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ttqkern import ops, reference
from ttqkern.tuning import devices

numba = pytest.importorskip("numba")

THREADS = int(os.environ.get("TTQKERN_BENCH_THREADS", "2"))
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
GROUP = 128
RANK = 16
KINDS = ["fp32-linear", "bf16-linear", "torch-int4", "ttq-int4", "ttq-int3", "ttq-int2", "ttq-int4-extras"]


def _llc_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        return int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}[s[-1]]
    except (OSError, ValueError, KeyError):
        return 32 << 20


def _copies(nbytes: int) -> int:
    """How many weight copies make the rotation exceed twice the LLC (at least 2)."""
    return max(2, -(-2 * _llc_bytes() // max(nbytes, 1)))


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


@pytest.fixture(scope="module", autouse=True)
def threads():
    old_t, old_n = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    yield THREADS
    torch.set_num_threads(old_t)
    numba.set_num_threads(old_n)


@pytest.fixture(scope="module")
def machine():
    return {"cpu": devices.cpu_name(), "copy_GBps": round(devices.measure_cpu_bandwidth(1 << 27, 3), 2),
            "llc_MiB": _llc_bytes() >> 20, "threads": THREADS}  # fmt: skip


def _packed_copies(N, K, bits, n, D=None):
    """n packed weights in separate storage (one real quantization, then clones)."""
    base = ops.quantize(torch.randn(N, K) / K**0.5, D, bits=bits, group_size=GROUP, backend="numba")
    return [base] + [replace(base, **{k: t.clone() for k, t in base.tensors().items()}) for _ in range(n - 1)]


def _run(benchmark, fn, args_list, nbytes, machine, kind, shape):
    cyc = itertools.cycle(args_list)
    fn(*args_list[0])  # warm up: JIT load, first-touch
    benchmark(lambda: fn(*next(cyc)))
    ms = benchmark.stats.stats.median * 1e3
    ms_min = benchmark.stats.stats.min * 1e3  # the robust figure on a machine shared with other jobs
    benchmark.extra_info.update({"kind": kind, "N": shape[0], "K": shape[1], "ms": ms, "ms_min": ms_min, "bytes": nbytes,
                                 "GBps": nbytes / (ms * 1e-3) / 1e9, "copies": len(args_list), **machine})  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_decode(benchmark, machine, shape, kind):
    N, K = shape
    torch.manual_seed(0)
    x = torch.randn(1, K)
    if kind in ("fp32-linear", "bf16-linear"):
        dt = torch.float32 if kind == "fp32-linear" else torch.bfloat16
        W0 = (torch.randn(N, K) / K**0.5).to(dt)
        Ws = [W0] + [W0.clone() for _ in range(_copies(_nbytes(W0)) - 1)]
        xx = x.to(dt)
        _run(benchmark, F.linear, [(xx, W) for W in Ws], _nbytes(W0), machine, kind, shape)
    elif kind == "torch-int4":
        q = torch.randint(0, 16, (N, K), dtype=torch.int32)
        wp = torch._convert_weight_to_int4pack_for_cpu(q, 2)
        sz = torch.randn(K // GROUP, N, 2).to(torch.bfloat16)
        n = _copies(_nbytes(wp, sz))
        args = [(x.to(torch.bfloat16), wp if i == 0 else wp.clone(), GROUP, sz.clone()) for i in range(n)]
        _run(benchmark, torch._weight_int4pack_mm_for_cpu, args, _nbytes(wp, sz), machine, kind, shape)
    else:
        bits = int(kind[7])
        extras = kind.endswith("extras")
        D = reference.act_scale(torch.randn(16, K), 2.0, 1.0, 0.25) if extras else None
        pws = _packed_copies(N, K, bits, 1, D)
        pw0 = pws[0]
        lr_bytes = (N + K) * RANK * 4 if extras else 0
        n = _copies(pw0.nbytes + lr_bytes)
        pws += [replace(pw0, **{k: t.clone() for k, t in pw0.tensors().items()}) for _ in range(n - 1)]
        lrs = [(torch.randn(RANK, K), torch.randn(N, RANK)) if extras else None for _ in range(n)]
        y = ops.qmatmul(x, pws[0], D, lowrank=lrs[0], backend="numba")  # checked before it is timed
        y_ref = ops.qmatmul(x, pws[0], D, lowrank=lrs[0], backend="torch")
        assert float((y - y_ref).abs().max()) <= 1e-4 * float(y_ref.abs().max().clamp_min(1.0))

        def call(pw, lr):
            return ops.qmatmul(x, pw, D, lowrank=lr, backend="numba")

        _run(benchmark, call, list(zip(pws, lrs, strict=True)), pw0.nbytes + lr_bytes, machine, kind, shape)


@pytest.mark.parametrize("kind", ["ttq-quantize-int4", "torch-copy"])
def test_cpu_requantize(benchmark, machine, kind):
    N, K = 4096, 4096
    torch.manual_seed(0)
    Ws = [torch.randn(N, K) for _ in range(2)]  # 64 MiB each: beyond the LLC by themselves
    D = reference.act_scale(torch.randn(16, K), 2.0, 1.0, 0.25)
    if kind == "torch-copy":
        dst = torch.empty_like(Ws[0])
        _run(benchmark, dst.copy_, [(W,) for W in Ws], 2 * _nbytes(Ws[0]), machine, kind, (N, K))
    else:

        def call(W):
            return ops.quantize(W, D, bits=4, group_size=GROUP, backend="numba")

        pw = call(Ws[0])
        _run(benchmark, call, [(W,) for W in Ws], _nbytes(Ws[0]) + pw.nbytes, machine, kind, (N, K))
