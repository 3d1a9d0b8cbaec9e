"""Device catalog: the roofline numbers benchmarks divide by, and config file names.

Peak figures are the vendors' datasheet values (dense, no sparsity); they are
the ceilings "% of roofline" is measured against, not measurements.  A CPU has
no fixed entry: its bandwidth is measured on the machine (`measure_cpu_bandwidth`).
"""

from __future__ import annotations

import functools
import platform
import re
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """One GPU model of the catalog.

    slug: config file stem; match: substrings of `torch.cuda.get_device_name`.
    arch: the compute capability as an int (80, 86, 89, 90) on NVIDIA, the gfx name on AMD.
    sms: streaming multiprocessors (NVIDIA) / compute units (AMD).  clock_mhz: boost clock.
    smem_kib: shared memory (LDS on AMD) one thread block may use, opt-in maximum.
    source: where the figures come from (vendor datasheets and whitepapers; the
    shared-memory and per-SM limits of NVIDIA parts from the CUDA C++ Programming
    Guide's table of technical specifications per compute capability).
    """

    slug: str
    name: str
    vendor: str
    hbm_gbps: float  # peak memory bandwidth, GB/s (1e9 B/s)
    fp16_tflops: float  # peak dense fp16 tensor throughput with fp32 accumulate
    l2_mib: float  # last-level (L2 / Infinity) cache, MiB: cold-cache benches exceed it
    match: tuple[str, ...]
    arch: int | str = 0
    sms: int = 0
    clock_mhz: int = 0
    smem_kib: int = 0
    source: str = ""

    @property
    def target(self) -> str:
        """The compiler target: ``sm_90`` (NVIDIA) or ``gfx942`` (AMD)."""
        return f"sm_{self.arch}" if self.vendor == "nvidia" else str(self.arch)

    @property
    def bytes_in_flight_per_sm(self) -> float:
        """Bytes each SM must have requested to keep memory busy (Little's law).

        ``bandwidth x latency / SMs`` with a DRAM latency of `DRAM_LATENCY_US`: what a
        memory-bound kernel's tiles, stages and resident CTAs must cover.
        """
        return self.hbm_gbps * 1e3 * DRAM_LATENCY_US / max(self.sms, 1)


# Round-trip latency of a DRAM load under load on recent NVIDIA parts, in microseconds
# (perf-notes §3 uses ~0.8 us for the H200); only the derived defaults use it.
DRAM_LATENCY_US = 0.8

_CUDA_GUIDE = "CUDA C++ Programming Guide, technical specifications per compute capability (shared memory per block)"
_CATALOG_SOURCES = {
    "a40": "NVIDIA A40 datasheet (10,752 CUDA cores = 84 SMs of GA102, 696 GB/s); GA102 whitepaper (1,740 MHz boost)",
    "a100": "NVIDIA A100 datasheet and Ampere GA100 whitepaper (108 SMs, 1,410 MHz boost, 40 MB L2)",
    "l40": "NVIDIA L40 datasheet (18,176 CUDA cores = 142 SMs of AD102, 864 GB/s, 2,490 MHz boost)",
    "rtx3090": "NVIDIA GeForce RTX 3090 specifications (10,496 CUDA cores = 82 SMs, 1,695 MHz boost, 936 GB/s)",
    "rtx4090": "NVIDIA GeForce RTX 4090 specifications (16,384 CUDA cores = 128 SMs, 2,520 MHz boost, 1,008 GB/s)",
    "h100-pcie": "NVIDIA H100 datasheet and Hopper whitepaper (PCIe: 114 SMs, 1,755 MHz boost, 2.0 TB/s)",
    "h100": "NVIDIA H100 datasheet and Hopper whitepaper (SXM5: 132 SMs, 1,980 MHz boost, 3.35 TB/s)",
    "h200": "NVIDIA H200 datasheet (GH100 as H100 SXM: 132 SMs, 1,980 MHz boost; 4.8 TB/s HBM3e)",
    "mi300x": "AMD Instinct MI300X datasheet (304 CUs, 2,100 MHz peak, 5.3 TB/s; 64 KB LDS per CU)",
}


def _src(key: str) -> str:
    return _CATALOG_SOURCES[key] + ("; " + _CUDA_GUIDE if key != "mi300x" else "")


# fmt: off
CATALOG: tuple[Device, ...] = (
    Device("a40", "NVIDIA A40", "nvidia", 696, 149.7, 6, ("A40",), 86, 84, 1740, 99, _src("a40")),
    Device("a100-80gb", "NVIDIA A100 80GB SXM", "nvidia", 2039, 312, 40, ("A100-SXM4-80GB", "A100 80GB"),
           80, 108, 1410, 163, _src("a100")),
    Device("a100-40gb", "NVIDIA A100 40GB", "nvidia", 1555, 312, 40, ("A100",), 80, 108, 1410, 163, _src("a100")),
    Device("l40", "NVIDIA L40", "nvidia", 864, 181, 96, ("L40",), 89, 142, 2490, 99, _src("l40")),
    Device("rtx3090", "NVIDIA GeForce RTX 3090", "nvidia", 936, 71, 6, ("RTX 3090",), 86, 82, 1695, 99,
           _src("rtx3090")),
    Device("rtx4090", "NVIDIA GeForce RTX 4090", "nvidia", 1008, 165, 72, ("RTX 4090",), 89, 128, 2520, 99,
           _src("rtx4090")),
    Device("h100-pcie", "NVIDIA H100 PCIe", "nvidia", 2000, 756, 50, ("H100 PCIe",), 90, 114, 1755, 227,
           _src("h100-pcie")),
    Device("h100", "NVIDIA H100 SXM", "nvidia", 3350, 989, 50, ("H100",), 90, 132, 1980, 227, _src("h100")),
    Device("h200", "NVIDIA H200", "nvidia", 4800, 989, 50, ("H200",), 90, 132, 1980, 227, _src("h200")),
    Device("mi300x", "AMD Instinct MI300X", "amd", 5300, 1307, 256, ("MI300X",), "gfx942", 304, 2100, 64,
           _src("mi300x")),
)
# fmt: on
BY_SLUG = {d.slug: d for d in CATALOG}


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


def target(device) -> Device:
    """The `Device` a config is chosen for: ``device`` may be a `Device`, a catalog slug
    (``"a100-80gb"``: what that GPU would use, asked from any machine), or a torch
    device / device string (``"cpu"``, ``"cuda:0"``).

    A CUDA device the catalog does not know is described from its properties (SM
    count, shared memory per block, compute capability; bandwidth unknown: 0).  The
    CPU is ``Device("cpu", ...)`` with no fixed figures (its bandwidth is measured).
    """
    if isinstance(device, Device):
        return device
    if isinstance(device, str) and device in BY_SLUG:
        return BY_SLUG[device]
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda":
        return _cpu_device()
    return _cuda_device(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cpu_device() -> Device:
    return Device("cpu", cpu_name(), "cpu", 0, 0, 0, (), source="this machine")


@functools.cache
def _cuda_device(index: int) -> Device:
    name = torch.cuda.get_device_name(index)
    dev = lookup_gpu(name)
    if dev is not None:
        return dev
    props = torch.cuda.get_device_properties(index)
    hip = getattr(torch.version, "hip", None) is not None
    arch = getattr(props, "gcnArchName", "").split(":")[0] if hip else props.major * 10 + props.minor
    smem = getattr(props, "shared_memory_per_block_optin", 0) or getattr(props, "shared_memory_per_block", 0)
    l2 = getattr(props, "L2_cache_size", 0) / 2**20
    return Device("gpu-" + _slugify(name), name, "amd" if hip else "nvidia", 0, 0, l2, (name,), arch,
                  props.multi_processor_count, 0, smem // 1024, "torch.cuda.get_device_properties")  # fmt: skip


def config_kind(slug: str) -> str:
    """``"tuned"`` when the package ships a config file for ``slug`` (made by ``python -m
    ttqkern.tune``), else ``"derived"``: its kernels run on defaults derived from the
    catalog's figures."""
    from . import store

    return "tuned" if (store.PACKAGE_DIR / f"{slug}.json").is_file() else "derived"


def catalog_table() -> str:
    """A markdown table of the GPU catalog: figures, and which devices have tuned or derived configs."""
    rows = ["| device | slug | target | SMs | boost MHz | smem/block KiB | GB/s | L2 MiB | configs |",
            "|---|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for d in CATALOG:
        rows.append(f"| {d.name} | {d.slug} | {d.target} | {d.sms} | {d.clock_mhz} | {d.smem_kib} | "
                    f"{d.hbm_gbps:.0f} | {d.l2_mib:g} | {config_kind(d.slug)} |")  # fmt: skip
    return "\n".join(rows) + "\n"


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
