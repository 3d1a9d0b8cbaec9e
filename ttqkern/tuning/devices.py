"""Device catalog: the roofline numbers benchmarks divide by, and config file names.

Peak figures and SM counts are the vendors' datasheet values (dense, no sparsity); they are
the ceilings "% of roofline" is measured against, not measurements.  A CPU has
no fixed entry: its bandwidth is measured on the machine (`measure_cpu_bandwidth`).
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """slug: config file stem; match: substrings of `torch.cuda.get_device_name`."""

    slug: str
    name: str
    vendor: str
    hbm_gbps: float  # peak memory bandwidth, GB/s (1e9 B/s)
    fp16_tflops: float  # peak dense fp16 tensor throughput with fp32 accumulate
    l2_mib: float  # last-level (L2 / Infinity) cache, MiB: cold-cache benches exceed it
    match: tuple[str, ...]
    sms: int | None = None  # streaming multiprocessors (AMD: compute units); kernel defaults size grids by it
    boost_ghz: float | None = None  # boost clock: static issue-rate ceilings (backends/sass.py) multiply by it


CATALOG: tuple[Device, ...] = (
    Device("a40", "NVIDIA A40", "nvidia", 696, 149.7, 6, ("A40",), 84, 1.74),
    Device("a100-80gb", "NVIDIA A100 80GB SXM", "nvidia", 2039, 312, 40, ("A100-SXM4-80GB", "A100 80GB"), 108, 1.41),
    Device("a100-40gb", "NVIDIA A100 40GB", "nvidia", 1555, 312, 40, ("A100",), 108, 1.41),
    Device("l40", "NVIDIA L40", "nvidia", 864, 181, 96, ("L40",), 142, 2.49),
    Device("rtx3090", "NVIDIA GeForce RTX 3090", "nvidia", 936, 71, 6, ("RTX 3090",), 82, 1.7),
    Device("rtx4090", "NVIDIA GeForce RTX 4090", "nvidia", 1008, 165, 72, ("RTX 4090",), 128, 2.52),
    Device("h100-pcie", "NVIDIA H100 PCIe", "nvidia", 2000, 756, 50, ("H100 PCIe",), 114, 1.755),
    Device("h100", "NVIDIA H100 SXM", "nvidia", 3350, 989, 50, ("H100",), 132, 1.98),
    Device("h200", "NVIDIA H200", "nvidia", 4800, 989, 50, ("H200",), 132, 1.98),
    Device("mi300x", "AMD Instinct MI300X", "amd", 5300, 1307, 256, ("MI300X",), 304, 2.1),
)


def lookup_gpu(name: str) -> Device | None:
    """The catalog entry whose match string occurs in ``name`` (first match wins)."""
    for dev in CATALOG:
        if any(m in name for m in dev.match):
            return dev
    return None


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device: torch.device | str | None = None) -> str:
    """Config file stem for a device: a catalog slug, ``gpu-<name>`` if unknown, or ``cpu``."""
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    dev = lookup_gpu(name)
    return dev.slug if dev else "gpu-" + _slugify(name)


def cpu_name() -> str:
    """A human-readable CPU model name (best effort)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Achievable CPU memory bandwidth in GB/s: best of ``repeats`` large copies.

    A copy reads and writes ``nbytes`` each, so 2 * nbytes move per copy.
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9
