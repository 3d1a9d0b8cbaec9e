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

Importing this module never imports cupy: `available` says why the backend cannot run.
Requires an NVIDIA GPU of compute capability 8.0 or newer (sm_80 - sm_90 are
compile-checked in CI), cupy (``pip install 'ttqkern[cupy]'``) and NVRTC.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ...format import PackedWeight
from . import config, host, layout

DEVICE_TYPES = ("cuda",)
MIN_CAPABILITY = (8, 0)  # mma.sync.m16n8k16 with bf16 operands, cvt.rn.bf16x2


@functools.cache
def available() -> tuple[bool, str]:
    """``(True, '')`` with cupy, NVRTC and a CUDA GPU of compute capability >= 8.0, else why not."""
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


def _run(launches) -> None:
    from . import kernels

    kernels.launch(launches)


# cupy_mma copies of canonical weights, keyed by the canonical qweight tensor: the first
# qmatmul on a canonical PackedWeight converts it once (torch ops on the GPU), later calls
# reuse the copy while the tensor lives and is not modified in place.
_mma_cache = WeakIdKeyDictionary()  # tensors compare elementwise: key by identity


def as_mma(pw: PackedWeight) -> PackedWeight:
    """``pw`` in the ``cupy_mma`` layout (cached per canonical qweight tensor)."""
    if pw.layout == layout.NAME:
        return pw
    hit = _mma_cache.get(pw.qweight)
    if hit is not None and hit[0] == _stamp(pw):
        return hit[1]
    mma = layout.from_canonical(pw)
    _mma_cache[pw.qweight] = (_stamp(pw), mma)
    return mma


def _stamp(pw: PackedWeight) -> tuple:
    """What must not change for a cached conversion to stay valid: fields, tensors, their versions."""
    ts = pw.tensors()
    return (pw.bits, pw.group_size, pw.shape, pw.sym, pw.zero,
            *((n, id(t), t._version) for n, t in sorted(ts.items())))  # fmt: skip


def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float) -> torch.Tensor:
    """Stage 1: x ``[T, K]`` fp32/fp16/bf16 -> D fp32 ``[K]`` (see `reference.act_scale`)."""
    with torch.cuda.device(x.device):
        return host.act_scale(x, p, lam, alpha, _run)


def quantize(
    W: torch.Tensor, D: torch.Tensor | None, bits: int, group_size: int, sym: bool, zero: str, beta: float
) -> PackedWeight:
    """Stages 2-3 straight into ``cupy_mma``; returned canonical (what `ttqkern.ops` accepts today).

    The ``cupy_mma`` result is kept for the first `qmatmul` on the returned weight.
    """
    with torch.cuda.device(W.device):
        mma = host.quantize(W.contiguous(), D, bits, group_size, sym, zero, beta, _run)
        pw = layout.to_canonical(mma)
    _mma_cache[pw.qweight] = (_stamp(pw), mma)
    return pw


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stages 4-5: x ``[T, K]`` fp32/fp16/bf16 -> ``[T, N]`` in x.dtype, fp32 accumulation."""
    with torch.cuda.device(x.device):
        return host.qmatmul(x, as_mma(pw), D, A, B, bias, _run)


def warmup(pw: PackedWeight, dtypes=(torch.float16, torch.bfloat16, torch.float32)) -> int:
    """Compile and load every kernel `qmatmul` may launch for ``pw`` (before CUDA-graph capture)."""
    from . import kernels

    mma = as_mma(pw)
    names = set()
    for dt in dtypes:
        names |= host.kernel_names(mma, dt, mma.device)
    return kernels.warmup(names, mma.device)


def prepare(pw: PackedWeight, D=None, A=None, B=None, bias=None):
    """``callable(x [T, K]) -> y``: the layout conversion and kernel compilation hoisted out of decode."""
    mma = as_mma(pw)
    warmup(mma, dtypes=tuple({t.dtype for t in (A, B, bias) if t is not None} or {torch.float16, torch.bfloat16}))
    converted: dict[torch.dtype, tuple] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        ops = converted.get(x.dtype)
        if ops is None:  # the low-rank factors and bias in x's dtype, once per dtype
            ops = converted[x.dtype] = tuple(None if t is None else t.to(x.dtype).contiguous() for t in (A, B, bias))
        with torch.cuda.device(x.device):
            return host.qmatmul(x, mma, D, *ops, _run)

    return run


__all__ = ["DEVICE_TYPES", "act_scale", "as_mma", "available", "config", "prepare", "qmatmul", "quantize", "warmup"]
