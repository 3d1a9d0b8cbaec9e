"""The CuPy backend: hand-written CUDA kernels for every TTQ stage, launched through CuPy.

Modules, one job each:

- ``csrc/``: the CUDA sources (package data).  ``decode.cu``: packed GEMV / skinny GEMM
  on the tensor cores (mma.sync m16n8k16, fp32 accumulation) reading the ``cupy_mma``
  layout with 128-bit loads and bit-trick dequantization; ``prologue.cu``: x / D as MMA
  operands, per-tile sums, x A^T partials; ``requant.cu``: act_scale, quantize + pack,
  dequantize (prefill through cuBLAS).  Each kernel's comment block gives its grid
  mapping, the layout it reads, shared memory and bytes moved.
- `layout`: the ``cupy_mma`` packed layout, torch only, exact to and from canonical.
- `host`: buffers, grids and arguments (torch only; also runs under `emulator` in CI).
- `kernels`: NVRTC compilation through ``cupy.RawModule``, launches on torch's stream.
- `config`: tile / warp parameters with defaults, tuned entries from the config store.
- `emulator`: the same kernel bodies compiled for the CPU (tests only).

Importing this module never imports cupy: ``BACKEND.available()`` says why the backend cannot run.
Requires an NVIDIA GPU of compute capability 8.0 or newer (sm_80 - sm_90 are
compile-checked in CI), cupy (``pip install 'ttqkern[cupy]'``) and NVRTC.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ClassVar

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ...format import CANONICAL, PackedWeight
from ..base import Backend
from . import config, host, layout

MIN_CAPABILITY = (8, 0)  # mma.sync.m16n8k16 with bf16 operands, cvt.rn.bf16x2


@functools.cache
def _availability() -> tuple[bool, str]:
    try:
        import cupy
    except ImportError as e:
        return False, (
            f"cupy is not installed ({e}); install the extra: pip install 'ttqkern[cupy]' (cupy-cuda13x; "
            "with a CUDA 12 torch install cupy-cuda12x instead)"
        )
    if getattr(torch.version, "hip", None):
        return False, f"the CuPy backend's kernels are NVIDIA-only (torch {torch.__version__} is a ROCm build)"
    if not torch.cuda.is_available():
        return False, f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # cupy's CUDA runtime cannot talk to the driver
        return False, f"cupy {cupy.__version__} cannot use the GPU: {type(e).__name__}: {e}"
    cap = torch.cuda.get_device_capability(0)
    if cap < MIN_CAPABILITY:
        return False, f"needs compute capability >= 8.0 (mma.sync bf16); {torch.cuda.get_device_name(0)} is {cap}"
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as e:
        return False, f"NVRTC not found ({type(e).__name__}: {e}); install nvidia-cuda-nvrtc matching cupy's CUDA"
    return True, ""


def _gpu_run(launches) -> None:
    from . import kernels

    kernels.launch(launches)


# cupy_mma copies of canonical weights, keyed by the canonical qweight tensor: the first
# qmatmul on a canonical PackedWeight converts it once (torch ops on the GPU), later calls
# reuse the copy while the tensors live and are not modified in place.
_mma_cache = WeakIdKeyDictionary()  # tensors compare elementwise: key by identity


def _stamp(pw: PackedWeight) -> tuple:
    """What must not change for a cached conversion to stay valid: fields, tensors, their versions."""
    ts = pw.tensors()
    return (pw.bits, pw.group_size, pw.shape, pw.sym, pw.zero,
            *((n, id(t), t._version) for n, t in sorted(ts.items())))  # fmt: skip


def as_mma(pw: PackedWeight) -> PackedWeight:
    """``pw`` in the ``cupy_mma`` layout (a canonical weight's copy is cached per qweight tensor)."""
    if pw.layout == layout.NAME:
        return pw
    pw = pw.canonical()
    hit = _mma_cache.get(pw.qweight)
    if hit is not None and hit[0] == _stamp(pw):
        return hit[1]
    mma = layout.from_canonical(pw)
    _mma_cache[pw.qweight] = (_stamp(pw), mma)
    return mma


class CupyBackend(Backend):
    """Hand-written CUDA kernels through CuPy (NVIDIA, compute capability >= 8.0).

    ``run`` executes `host.Launch` records: CuPy on the GPU here; the CPU emulator in
    tests (a subclass with ``device_types = ("cpu",)``).
    """

    name = "cupy"
    device_types: ClassVar[tuple[str, ...]] = ("cuda",)
    preference: ClassVar[dict[str, int]] = {"cuda": 20}  # after Triton (10) until measured on a GPU
    params = config.TABLE
    # quantize writes cupy_mma; canonical weights are read through a cached conversion
    layouts: ClassVar[tuple[str, ...]] = (layout.NAME, CANONICAL)
    run: ClassVar[Callable] = staticmethod(_gpu_run)

    def available(self) -> tuple[bool, str]:
        """``(True, '')`` with cupy, NVRTC and a CUDA GPU of compute capability >= 8.0, else why not."""
        return _availability()

    def _scope(self, t: torch.Tensor):
        return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()

    def act_scale(self, x, scaling):
        """Stage 1: x ``[T, K]`` fp32/fp16/bf16 -> D fp32 ``[K]`` (see `reference.act_scale`)."""
        with self._scope(x):
            return host.act_scale(x, scaling.p, scaling.lam, scaling.alpha, self.run)

    def quantize(self, W, D, fmt):
        """Stages 2-3: W ``[N, K]`` float, D fp32 ``[K]`` | None -> `PackedWeight` in ``cupy_mma``."""
        g = fmt.group_for(W.shape[1])
        with self._scope(W):
            return host.quantize(W, D, fmt.bits, g, fmt.sym, fmt.zero, float(fmt.beta), self.run)

    def qmatmul(self, x, pw, D, A, B, bias):
        """Stages 4-5: x ``[T, K]`` fp32/fp16/bf16 -> ``[T, N]`` in x.dtype, fp32 accumulation."""
        with self._scope(x):
            return host.qmatmul(x, as_mma(pw), D, A, B, bias, self.run)

    def warmup(self, pw: PackedWeight, dtypes=(torch.float16, torch.bfloat16, torch.float32)) -> int:
        """Compile and load every kernel `qmatmul` may launch for ``pw`` (before CUDA-graph capture)."""
        if pw.device.type != "cuda":
            return 0
        from . import kernels

        mma = as_mma(pw)
        names = set()
        for dt in dtypes:
            names |= host.kernel_names(mma, dt, mma.device)
        return kernels.warmup(names, mma.device)

    def prepare(self, pw, D, A, B, bias):
        """``callable(x [T, K]) -> y``: layout conversion, kernel compilation and operand casts hoisted."""
        mma = as_mma(pw)
        self.warmup(mma, tuple({t.dtype for t in (A, B, bias) if t is not None} or {torch.float16, torch.bfloat16}))
        converted: dict[torch.dtype, tuple] = {}

        def run(x: torch.Tensor) -> torch.Tensor:
            ops = converted.get(x.dtype)
            if ops is None:  # the low-rank factors and bias in x's dtype, once per dtype
                ops = tuple(None if t is None else t.to(x.dtype).contiguous() for t in (A, B, bias))
                converted[x.dtype] = ops
            with self._scope(x):
                return host.qmatmul(x, mma, D, *ops, self.run)

        return run


BACKEND = CupyBackend()

__all__ = ["BACKEND", "CupyBackend", "as_mma", "config", "host", "layout"]
