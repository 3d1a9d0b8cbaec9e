"""How the kernel tuner times a candidate, per kind of device.

GPU: the call captured in a CUDA graph and replayed by ``triton.testing.do_bench``
(median, L2 flushed before every replay: cold cache, as a decode step sees its
weights), so the time is the kernels' own and not Python's launch overhead; an op
that cannot be captured (a host sync) is timed eagerly.

CPU (`CpuTimer`): the machine may be shared, and a parallel kernel slows 2-10x,
unevenly, when another process takes a core (docs: perf-notes §1).  So a
candidate is never timed alone: it is interleaved with the *baseline* (the
default config) in the same rounds (A B B A ...), and what counts is the median
ratio candidate / baseline, turned into microseconds with the baseline's time
measured at the start.  Contention check: when the baseline's median in a
measurement drifts from its reference by more than ``tolerance``, or the ratios
spread too much, the measurement is repeated (up to ``retries`` times) and, if
still disturbed, flagged ``contended`` -- the tuner reports how many were.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def graph_replay(fn):
    """``fn`` captured in a CUDA graph; returns the graph's ``replay`` (warm-up runs on a side stream).

    Timing a replay measures the GPU's time alone: an eager decode call of a few
    microseconds of GPU work is bound by its Python launches, which would drown the
    difference between tile configs.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def gpu_time_us(fn) -> float:
    """Median GPU time of ``fn()`` in microseconds: CUDA-graph replays with a cold L2."""
    import triton.testing

    try:
        timed = graph_replay(fn)
    except RuntimeError:  # an op that cannot be captured (a host sync): time it eagerly
        torch.cuda.synchronize()
        timed = fn
    return 1e3 * triton.testing.do_bench(timed, warmup=10, rep=40, return_mode="median")


@dataclass(frozen=True)
class Measurement:
    """One timed candidate: ``us`` (its time, in the baseline's reference units), the
    median ``ratio`` to the baseline, the baseline's ``drift`` from its reference,
    the ratios' ``spread`` (max/min), and whether contention was detected."""

    us: float
    ratio: float
    drift: float = 0.0
    spread: float = 1.0
    contended: bool = False
    attempts: int = 1


def _sample(fn: Callable[[], object], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


class CpuTimer:
    """Interleaved timing against a baseline, with a contention check (module docstring).

    baseline: ``fn()`` running the default config.  rounds: A/B pairs per
    measurement.  min_sample_s: each sample repeats the call until it lasts about
    this long.  tolerance: allowed drift of the baseline's median from its
    reference, and of the ratios' spread from 1, before a measurement is repeated.
    """

    def __init__(self, baseline: Callable[[], object], *, rounds: int = 5, min_sample_s: float = 2e-3,
                 tolerance: float = 0.25, retries: int = 2):  # fmt: skip
        self.baseline = baseline
        self.rounds = rounds
        self.tolerance = tolerance
        self.retries = retries
        baseline()  # warm: compile, first-touch allocations
        one = _sample(baseline, 1)
        self.reps = max(1, min(10_000, round(min_sample_s / max(one, 1e-7))))
        samples = sorted(_sample(baseline, self.reps) for _ in range(2 * rounds + 1))
        self.reference_s = statistics.median(samples)
        self.reference_spread = samples[-2] / max(samples[1], 1e-12)  # drop the extremes
        self.contended = 0
        self.measured = 0

    @property
    def reference_us(self) -> float:
        return 1e6 * self.reference_s

    def measure(self, fn: Callable[[], object]) -> Measurement:
        """Time ``fn`` against the baseline (module docstring); ``fn`` has been run once (checked)."""
        fn()
        attempts = 0
        while True:
            attempts += 1
            ratios, base = [], []
            for r in range(self.rounds):
                if r % 2:  # A B, then B A: neither side always runs first
                    b = _sample(self.baseline, self.reps)
                    c = _sample(fn, self.reps)
                else:
                    c = _sample(fn, self.reps)
                    b = _sample(self.baseline, self.reps)
                ratios.append(c / b)
                base.append(b)
            ratio = statistics.median(ratios)
            drift = statistics.median(base) / self.reference_s - 1.0
            spread = max(ratios) / max(min(ratios), 1e-12)
            disturbed = abs(drift) > self.tolerance or spread > 1.0 + 2 * self.tolerance
            if not disturbed or attempts > self.retries:
                break
        self.measured += 1
        self.contended += disturbed
        return Measurement(ratio * self.reference_us, ratio, drift, spread, disturbed, attempts)


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (Linux sysfs), 32 MiB when it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for name in os.listdir(base):
            try:
                with open(f"{base}/{name}/size") as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            digits = text.rstrip("KMG")
            if digits.isdigit():
                best = max(best, int(digits) * mult)
    except OSError:
        pass
    return best or 32 << 20
