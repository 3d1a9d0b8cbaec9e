"""The Numba backend: TTQ's stages as CPU kernels compiled by Numba.

Modules, one job each:

- `isa`: which code path this CPU takes (AVX-512 or portable), detected at import.
- `simd`: 16-lane vector types and LLVM intrinsics (``vpermps``, FMA, prefetch) for
  Numba kernels, and the codegen helpers of the micro-kernels.
- `act_scale`: column p-norms of x over the tokens (parallel over column blocks).
- `quantize`: scale by D, groupwise min/max, round and pack -- one pass over W,
  straight into the canonical packed layout (spec §3), every bit width and form.
- `host`: qmatmul's host side: picks a kernel family per weight and T, holds the
  decode layout (`ttqkern.backends.cpu_layouts`), allocates, launches; `prepare`.
- kernel families: `gemv_blocked` (bits 4 / 8, AVX-512 table lookups or portable
  IR), `gemv_lut` (bits 2 / 3, AVX-512 activation lookup tables), `gemv_words`
  (portable word-plane GEMVs), `gemm` (small-T GEMM, prefill unpack), `generic`
  (any group size; dequantize for BLAS), `prologue` (their x / D prologues).
- `config`: block sizes, tiles and thresholds (documented defaults, tuned entries
  from `ttqkern.tuning.store`).
- `_common`: jit options (why fastmath is or is not used), array views, plane layout.

Kernels are compiled with ``cache=True``: a second process loads them from Numba's
cache (``__pycache__`` beside the sources, or ``$NUMBA_CACHE_DIR``) instead of
compiling again.  Threads: Numba's pool (``numba.set_num_threads``).
"""

from __future__ import annotations

import numba  # noqa: F401  (an ImportError here is the registry's "why not available" reason)
import torch

from ...format import PackedWeight
from . import config, host, isa
from .act_scale import act_scale
from .quantize import quantize

DEVICE_TYPES = ("cpu",)


def available() -> tuple[bool, str]:
    """``(True, '')``: Numba imported (the registry reports an import failure itself)."""
    return True, ""


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + b``.

    x ``[T, K]`` fp32/fp16/bf16, pw a canonical `PackedWeight` ``[N, K]``, D fp32
    ``[K]`` | None, A ``[r, K]`` / B ``[N, r]`` | None, bias ``[N]`` | None.
    Returns ``[T, N]`` in x.dtype, accumulated in fp32.
    """
    return host.qmatmul(x, pw, D, A, B, bias)


def prepare(pw: PackedWeight, D=None, A=None, B=None, bias=None):
    """Per-layer decode state: a callable ``f(x [T, K]) -> y [T, N]`` (x validated by the caller).

    Same arguments and result as `qmatmul`; the layout, fp32 views, config lookup
    and buffer checks are done here once instead of on every call.
    """
    return host.prepare(pw, D, A, B, bias)


__all__ = ["DEVICE_TYPES", "act_scale", "available", "config", "isa", "prepare", "qmatmul", "quantize"]
