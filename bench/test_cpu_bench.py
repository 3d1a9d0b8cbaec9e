"""CPU benchmark of the Numba backend against torch's CPU kernels (pytest-benchmark, ``-m cpu``).

    TTQKERN_BENCH_THREADS=2 python -m pytest bench -m cpu            # -> results/bench/cpu.json
    python bench/report.py results/bench/cpu.json > results/bench/cpu.md
    python bench/plot.py results/bench/cpu.json results/bench/cpu_gbps.png

What is timed (docs/benchmarks.md has the why and the regression workflow):

- ``test_cpu_matmul``: y = x W^T for T = 1, 4, 16 (decode) and 512 (prefill) on
  Llama-7B-like layers (4096 x 4096, 11008 x 4096, 4096 x 11008) and the bundled
  SmolLM2-135M's (576 x 576 q/o, 192 x 576 k/v, 1536 x 576 gate/up, 576 x 1536 down).
  Ours: ``ttq-int2/3/4/8`` (float-min form) and ``ttq-int2/3-sym`` (symmetric: the
  form the AVX-512 lut kernels take), g = 128 (64 where 128 does not divide K, as for
  torch's kernel), through the backend's ``prepare`` (the callable
  `TTQLinear` uses per decode step), ``ttq-int4-extras`` (+ 1/D prologue, r = 16
  low-rank, bias), ``ttq-int4-portable`` (the fallback for CPUs without AVX-512,
  forced).  Peers: ``fp32-linear`` / ``bf16-linear`` (`F.linear`) and ``torch-int4``
  (``_weight_int4pack_mm_for_cpu``, g = 128, bf16 activations: its fast path).
- ``test_cpu_requantize``: quantize a 4096 x 4096 fp32 W (with D) straight into the
  decode layout, against ``copy_`` of the same W; act_scale + quantize.
- ``test_cpu_overhead``: one eager decode step through `TTQLinear` against the
  bare kernel call it ends in (the host overhead per token).

Method: every row but torch-int4's is timed *interleaved* with torch's int4 kernel on
the same shape and T (A B A B ..., the peer in pytest-benchmark's untimed setup), and
its ``ratio_vs_int4`` is the peer's median over ours from those same rounds.  Cold
cache: operands rotate through copies whose bytes exceed twice the last-level cache.
Each row records the streaming-read probe measured just before it
(``probe_GBps``, ``pct_probe`` = GB/s of weight bytes over it), the CPU share used by
other processes during it (``others_cpu``) and the load average; the session's state
before and after is in ``machine_info["ttqkern"]`` (conftest.py), with the verdict
``contended``.  Threads: ``TTQKERN_BENCH_THREADS`` (default 2) for torch and Numba.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import time
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from conftest import THREADS, session_probe
from machine import OthersCpu, llc_bytes

from ttqkern import backends, ops, reference
from ttqkern.quant import QuantFormat

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.cpu

from ttqkern.backends.numba import host, isa  # noqa: E402

GROUP = 128  # g of every row (64 where 128 does not divide K, e.g. SmolLM2's 576: torch's int4 kernel needs K % g == 0)
RANK = 16
BIG = [(4096, 4096), (11008, 4096), (4096, 11008)]
SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # q/o, k/v, gate/up, down (N x K)
TOKENS = [1, 4, 16, 512]
PEERS = ["fp32-linear", "bf16-linear", "torch-int4"]
OURS = ["ttq-int2", "ttq-int3", "ttq-int4", "ttq-int8", "ttq-int2-sym", "ttq-int3-sym"]
LLC = llc_bytes()
NUMBA = backends.get("numba")


def _cases():
    """(shape, kind, T) in an order that reuses each shape's operands across kinds and T."""
    out = []
    for shape in BIG + SMOLLM2:
        for kind in [*PEERS, *OURS, "ttq-int4-extras", "ttq-int4-portable"]:
            for T in TOKENS:
                if kind == "ttq-int4-extras" and T == 512:
                    continue
                if kind == "ttq-int4-portable" and (T != 1 or shape not in BIG):
                    continue
                out.append(pytest.param(shape, kind, T, id=f"{shape[0]}x{shape[1]}-{kind}-T{T}"))
    return out


@pytest.fixture(scope="module", autouse=True)
def threads():
    old_t, old_n = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    yield THREADS
    torch.set_num_threads(old_t)
    numba.set_num_threads(old_n)


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _copies(nbytes: int) -> int:
    """How many operand copies make a rotation exceed twice the LLC (at least 2)."""
    return max(2, -(-2 * LLC // max(nbytes, 1)))


def _clone(pw):
    return pw.__class__(**{**pw.__dict__, **{n: t.clone() for n, t in pw.tensors().items()}})


class _Operands:
    """Per shape: the weights of every kind, built once and reused for every T (the last shape only)."""

    shape = None
    cache: ClassVar[dict] = {}

    @classmethod
    def get(cls, shape, kind):
        if shape != cls.shape:
            cls.cache.clear()
            gc.collect()
            cls.shape = shape
        if kind not in cls.cache:
            cls.cache[kind] = _build(shape, kind)
        return cls.cache[kind]


def _build(shape, kind):
    """``(make_call(x) -> callable, nbytes per call, reference check or None, copies)`` for one kind."""
    N, K = shape
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, K, generator=g) / K**0.5
    if kind in ("fp32-linear", "bf16-linear"):
        dt = torch.float32 if kind == "fp32-linear" else torch.bfloat16
        W0 = W.to(dt)
        Ws = [W0] + [W0.clone() for _ in range(_copies(_nbytes(W0)) - 1)]
        cyc = itertools.cycle(Ws)
        return (lambda x: lambda: F.linear(x.to(dt), next(cyc))), _nbytes(W0), None, len(Ws)
    if kind == "torch-int4":
        q = torch.randint(0, 16, (N, K), dtype=torch.int32, generator=g)
        wp = torch._convert_weight_to_int4pack_for_cpu(q, 2)
        gs = group_for(K)
        sz = torch.randn(K // gs, N, 2, generator=g).to(torch.bfloat16)
        n = _copies(_nbytes(wp, sz))
        ops_ = [(wp, sz)] + [(wp.clone(), sz.clone()) for _ in range(n - 1)]
        cyc = itertools.cycle(ops_)

        def make(x):
            xb = x.to(torch.bfloat16)

            def call():
                w, s = next(cyc)
                return torch._weight_int4pack_mm_for_cpu(xb, w, gs, s)

            return call

        return make, _nbytes(wp, sz), None, n
    bits = int(kind[7])
    extras = kind == "ttq-int4-extras"
    sym = kind.endswith("-sym")  # symmetric 2/3-bit: the AVX-512 lut kernels (asymmetric: word planes)
    xs = torch.randn(32, K, generator=g) * (1 + 5 * (torch.rand(K, generator=g) < 0.05))
    D = reference.act_scale(xs, 2.0, 1.0, 0.25) if extras else None
    pw = NUMBA.quantize(W.contiguous(), D, QuantFormat(bits, group_for(K), sym=sym).resolved(K))
    A = torch.randn(RANK, K, generator=g) / K**0.5 if extras else None
    B = torch.randn(N, RANK, generator=g) / RANK**0.5 if extras else None
    bias = torch.randn(N, generator=g) if extras else None
    streamed = _nbytes(pw.qweight, pw.qweight_hi, pw.scales) + _nbytes(A, B, bias)  # what the kernel reads
    n = _copies(streamed)
    pws = [pw] + [_clone(pw) for _ in range(n - 1)]
    # the portable fallback, forced: the family and kernels are chosen when a layer is prepared
    with isa.forced("portable") if kind == "ttq-int4-portable" else _nullcontext():
        fns = [NUMBA.prepare(p, D, A, B, bias) for p in pws]
    cyc = itertools.cycle(fns)

    def make(x):
        return lambda: next(cyc)(x)

    def check(x):
        y = fns[0](x)
        y_ref = ops.qmatmul(x, pw.canonical(), D, lowrank=(A, B) if extras else None, bias=bias, backend="torch")
        err = float((y - y_ref).abs().max())
        assert err <= 1e-4 * max(float(y_ref.abs().max()), 1.0), f"{kind} {shape}: max abs error {err:.3g}"

    return make, streamed, check, n


def group_for(K: int) -> int:
    return GROUP if K % GROUP == 0 else 64


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _rounds(fn, budget_s: float) -> int:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return int(min(60, max(5, budget_s / max(dt, 1e-6))))


def _measure(benchmark, ours, peer, nbytes: int, info: dict, budget_s: float = 0.25, warm: int = 1) -> None:
    """Time ``ours`` with pytest-benchmark, ``peer`` interleaved in the untimed setup; fill extra_info.

    ``warm``: calls of each before timing (one per rotated operand copy: first-call
    work such as a layout conversion is never timed).
    """
    probe = session_probe()
    probe_gbps = probe.measure(repeats=1) if probe is not None else float("nan")
    for _ in range(warm):
        ours()
        if peer is not None:
            peer()
    rounds = _rounds(ours, budget_s)
    peer_t: list[float] = []

    def setup():
        if peer is not None:
            t0 = time.perf_counter()
            peer()
            peer_t.append(time.perf_counter() - t0)
        return (), {}

    oc = OthersCpu().start()
    benchmark.pedantic(ours, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    others = oc.stop()
    st = benchmark.stats.stats
    ms = st.median * 1e3
    gbps = nbytes / (st.median * 1e9)
    info.update(ms=ms, ms_min=st.min * 1e3, bytes=nbytes, GBps=gbps, probe_GBps=probe_gbps,
                pct_probe=100 * gbps / probe_gbps, others_cpu=others, load1=os.getloadavg()[0], threads=THREADS,
                rounds=rounds, isa=isa.current())  # fmt: skip
    if peer_t:
        peer_ms = statistics.median(peer_t) * 1e3
        info.update(peer="torch-int4", peer_ms=peer_ms, ratio_vs_int4=peer_ms / ms)
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("shape,kind,T", _cases())
def test_cpu_matmul(benchmark, shape, kind, T):
    N, K = shape
    make, nbytes, check, copies = _Operands.get(shape, kind)
    x = torch.randn(T, K, generator=torch.Generator().manual_seed(T))
    if check is not None and T in (1, 16):
        check(x)
    peer = None
    if kind != "torch-int4":
        make_peer, _, _, peer_copies = _Operands.get(shape, "torch-int4")
        peer = make_peer(x)
        copies = max(copies, peer_copies)
    info = {"kind": kind, "N": N, "K": K, "T": T, "g": group_for(K), "GFLOPs": 2 * T * N * K / 1e9}
    budget = 0.25 if T <= 16 else 0.8
    _measure(benchmark, make(x), peer, nbytes, info, budget, warm=copies)
    benchmark.extra_info["GFLOPps"] = info["GFLOPs"] / (info["ms"] * 1e-3)


@pytest.mark.parametrize("kind", ["torch-copy", "ttq-quantize-int4", "ttq-quantize-int3", "ttq-quantize-int2",
                                  "ttq-quantize-int8", "ttq-requantize-int4"])  # fmt: skip
def test_cpu_requantize(benchmark, kind):
    """4096 x 4096 fp32 W: quantize (with D) into the decode layout, against ``copy_`` of W."""
    N = K = 4096
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(N, K, generator=g) for _ in range(2)]  # 64 MiB each: beyond the LLC by themselves
    xs = torch.randn(16, K, generator=g)
    D = reference.act_scale(xs, 2.0, 1.0, 0.25)
    cyc = itertools.cycle(Ws)
    if kind == "torch-copy":
        dst = torch.empty_like(Ws[0])
        fn, nbytes = (lambda: dst.copy_(next(cyc))), 2 * _nbytes(Ws[0])
    else:
        bits = int(kind[-1])
        fmt = QuantFormat(bits, GROUP).resolved(K)
        if kind.startswith("ttq-requantize"):
            from ttqkern.quant import ActScaling

            sc = ActScaling(0.25, 1.0, 2.0)
            fn = lambda: NUMBA.quantize(next(cyc), NUMBA.act_scale(xs, sc), fmt)
        else:
            fn = lambda: NUMBA.quantize(next(cyc), D, fmt)
        pw = fn()
        nbytes = _nbytes(Ws[0]) + pw.nbytes  # W read once, the packed weight written
    info = {"kind": kind, "N": N, "K": K, "T": 0}
    _measure(benchmark, fn, None, nbytes, info, budget_s=0.5)


@pytest.mark.parametrize("shape", [*SMOLLM2, (4096, 4096)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu_overhead(benchmark, shape):
    """One eager decode step through TTQLinear (int4 g128, r = 16, bias) against its bare kernel call."""
    from torch import nn

    from ttqkern import TTQLinear

    N, K = shape
    torch.manual_seed(0)
    layer = TTQLinear.from_linear(nn.Linear(K, N), r=RANK, bits=4, group_size=GROUP, mode="prompt", backend="numba")
    layer(torch.randn(1, 8, K))  # the prompt: requantizes
    x = torch.randn(1, 1, K)
    layer(x)  # prepares
    prepared = layer._run[1]
    assert isinstance(prepared, host.Prepared), type(prepared)
    kernel, mid, _ = prepared._plan(1)
    xn = x.reshape(1, K).numpy()
    import numpy as np

    y = np.empty((1, N), np.float32)
    args = (xn, *mid, y)
    bare = lambda: kernel(*args)
    bare()
    torch.testing.assert_close(torch.from_numpy(y), layer(x).reshape(1, N))
    lin = nn.Linear(K, N)
    lin_t = []
    for _ in range(200):  # an nn.Linear step for scale, timed apart: its fp32 weight would evict ours
        t0 = time.perf_counter()
        lin(x)
        lin_t.append(time.perf_counter() - t0)
    t_bare: list[float] = []

    def peer():  # the bare kernel right before each timed step: both find the weight equally warm
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)

    info = {"kind": "ttqlinear-step", "N": N, "K": K, "T": 1}
    _measure(benchmark, lambda: layer(x), peer, prepared.arrays[0].nbytes, info, budget_s=0.2)
    bare_us = statistics.median(t_bare) * 1e6
    step_us = benchmark.extra_info["ms"] * 1e3
    benchmark.extra_info.update(peer="bare-kernel", bare_us=bare_us, step_us=step_us, overhead_us=step_us - bare_us,
                                nn_linear_us=statistics.median(lin_t) * 1e6, ratio_vs_int4=None, peer_ms=None)  # fmt: skip
