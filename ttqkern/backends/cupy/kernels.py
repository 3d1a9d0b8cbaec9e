"""CUDA sources -> CuPy kernels, launched on torch's current stream.

Each ``host.Launch`` names a template instantiation (``ttq_decode<4, 0, 1, 0, 2>``); the
first launch of a name on a device compiles its source file with NVRTC through
``cupy.RawModule(name_expressions=...)`` (CuPy caches the cubin on disk, keyed by the
source text, options and architecture) and loads it; later launches reuse the
function.  Local ``#include "..."`` lines are inlined here, so the cache key covers
every header.  Compiling or loading during CUDA-graph capture fails, so `warmup` /
``BACKEND.prepare`` resolve a layer's kernels ahead of time.

Arguments go to the kernels as numpy scalars of the exact parameter width (pointers
as uint64 from ``tensor.data_ptr()``): no copies and no CuPy arrays per call.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import host

CSRC = Path(__file__).with_name("csrc")
SOURCE_OF = {
    "decode": "decode.cu",
    "prologue": "prologue.cu",
    "colnorm": "requant.cu",
    "scale": "requant.cu",
    "quantize": "requant.cu",
    "dequant": "requant.cu",
}
OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


@functools.cache
def source(filename: str) -> str:
    """``csrc/<filename>`` with its local includes inlined (each header once)."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (CSRC / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text).replace("#pragma once", "")

    return expand(filename)


_functions: dict[tuple[int, str], object] = {}
_lock = threading.Lock()


def function(kernel: str, name: str, device_index: int):
    """The loaded ``cupy.RawKernel`` of name expression ``name`` on a device (compiled once)."""
    key = (device_index, name)
    fn = _functions.get(key)
    if fn is None:
        import cupy

        with _lock, cupy.cuda.Device(device_index):
            fn = _functions.get(key)
            if fn is None:
                mod = cupy.RawModule(code=source(SOURCE_OF[kernel]), options=OPTIONS, name_expressions=[name])
                fn = mod.get_function(name)  # NVRTC compile + module load happen here
                _functions[key] = fn
    return fn


def warmup(names: Iterable[tuple[str, str]], device: torch.device) -> int:
    """Compile and load kernels ``(kernel, name expression)`` on ``device``; returns how many."""
    device = torch.device(device)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    names = set(names)
    for kernel, name in names:
        function(kernel, name, idx)
    return len(names)


def _device_of(launch: host.Launch) -> torch.device:
    for v in launch.args:
        if isinstance(v, torch.Tensor):
            return v.device
    raise AssertionError(f"{launch.name} has no tensor argument")


def _scalar(value, kind: str):
    if kind == "p":
        return np.uint64(0 if value is None else value.data_ptr())
    if kind == "i":
        return np.int32(value)
    if kind == "u":
        return np.uint32(value)
    return np.float32(value)


@functools.cache
def _stream(device_index: int, handle: int):
    """torch's stream as a CuPy stream (ExternalStream: CuPy 13 and 14; 14 deprecates it)."""
    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(handle, device_index)


def launch(launches: Sequence[host.Launch]) -> None:
    """Run ``launches`` in order on torch's current stream of their tensors' device."""
    import cupy

    dev = _device_of(launches[0])
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    stream = _stream(idx, torch.cuda.current_stream(idx).cuda_stream)
    with cupy.cuda.Device(idx), stream:
        for lc in launches:
            fn = function(lc.kernel, lc.name, idx)
            args = tuple(_scalar(v, k) for v, k in zip(lc.args, host.SIGNATURES[lc.kernel], strict=True))
            fn(lc.grid, (lc.block, 1, 1), args, shared_mem=lc.smem)
