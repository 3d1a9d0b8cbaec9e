"""Machine state for CPU benchmarks: a streaming-read probe, load, and CPU time taken by others.

Timings on a shared machine are only believable with the machine's state beside
them (docs/benchmarks.md): every 2-thread kernel slows 2-10x when another process
takes a core, and the memory bandwidth itself moves between states minutes apart.
So a benchmark measures, in the same run:

- `ReadProbe`: the streaming-read bandwidth of this machine now (an fp32 sum over
  512 MiB, one prefetch per cache line, on the benchmark's threads), the roofline a
  decode kernel's GB/s is divided by;
- `load_average` (``/proc/loadavg``) and `OthersCpu`: the fraction of the CPUs used by
  *other* processes over an interval (all busy time in ``/proc/stat`` minus this
  process's own CPU time, ``os.times``), a direct measure of contention.

Only the probe needs Numba (its loop is built from `ttqkern.backends.numba.simd`'s
target-independent intrinsics, so it runs on any CPU); without Numba it falls back
to ``torch.sum``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

PROBE_BYTES = 512 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

try:
    import numba

    from ttqkern.backends.numba import simd as S

    @numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
    def _stream_sum(a, nchunk, ahead):  # pragma: no cover - compiled
        """Sum of a float32 array, 64 floats (4 lines) per step, each line prefetched ``ahead`` floats early."""
        n = a.shape[0]
        step = n // nchunk // 64 * 64
        out = np.zeros(nchunk, np.float32)
        for c in numba.prange(nchunk):
            i0 = c * step
            i1 = n if c == nchunk - 1 else i0 + step
            a0 = S.fzero()
            a1 = S.fzero()
            a2 = S.fzero()
            a3 = S.fzero()
            for i in range(i0, i1 - 63, 64):
                S.prefetch(a, i + ahead)
                S.prefetch(a, i + ahead + 16)
                S.prefetch(a, i + ahead + 32)
                S.prefetch(a, i + ahead + 48)
                a0 = S.fadd(a0, S.load_f(a, i))
                a1 = S.fadd(a1, S.load_f(a, i + 16))
                a2 = S.fadd(a2, S.load_f(a, i + 32))
                a3 = S.fadd(a3, S.load_f(a, i + 48))
            out[c] = S.hsum(S.fadd(S.fadd(a0, a1), S.fadd(a2, a3)))
        return out.sum()

except ImportError:  # pragma: no cover - numba missing
    _stream_sum = None


class ReadProbe:
    """Streaming-read bandwidth (GB/s) of a 512 MiB fp32 buffer on ``threads`` threads."""

    def __init__(self, threads: int, nbytes: int = PROBE_BYTES):
        self.threads = threads
        self.buf = np.ones(nbytes // 4, np.float32)  # touched once here, so no page faults are timed
        self.kind = "numba prefetch sum" if _stream_sum is not None else "torch.sum"
        self.measure(repeats=1)  # JIT load / warm-up

    def measure(self, repeats: int = 3) -> float:
        """Best of ``repeats`` full passes, in GB/s (1e9 bytes per second)."""
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            if _stream_sum is not None:
                _stream_sum(self.buf, 8 * self.threads, 2048)
            else:
                torch.from_numpy(self.buf).sum()
            best = min(best, time.perf_counter() - t0)
        return self.buf.nbytes / best / 1e9


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - no /proc
        return (float("nan"),) * 3


def _busy_all() -> float:
    """Seconds of non-idle CPU time of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def _busy_self() -> float:
    """Seconds of CPU time of this process (user + system, all threads)."""
    t = os.times()
    return t.user + t.system


class OthersCpu:
    """Fraction of the machine's CPUs used by other processes between `start` and `stop`.

    0.0 on an idle machine; 0.5 on a 2-CPU machine means one CPU was busy with someone
    else all along.  nan where /proc is not available.
    """

    def __init__(self):
        self.ncpu = os.cpu_count() or 1
        self._t0 = None

    def start(self) -> OthersCpu:
        try:
            self._t0 = (time.perf_counter(), _busy_all(), _busy_self())
        except OSError:  # pragma: no cover
            self._t0 = None
        return self

    def stop(self) -> float:
        if self._t0 is None:
            return float("nan")
        wall0, all0, self0 = self._t0
        wall = time.perf_counter() - wall0
        others = (_busy_all() - all0) - (_busy_self() - self0)
        return max(0.0, others) / max(wall * self.ncpu, 1e-9)


def idle_share(seconds: float = 1.0) -> float:
    """`OthersCpu` over ``seconds`` of this process sleeping: what others use right now."""
    oc = OthersCpu().start()
    time.sleep(seconds)
    return oc.stop()


def llc_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        return int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}[s[-1]]
    except (OSError, ValueError, KeyError):
        return 32 << 20
