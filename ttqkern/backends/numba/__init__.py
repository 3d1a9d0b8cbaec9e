"""The Numba backend: TTQ's stages as CPU kernels compiled by Numba.

Modules, one job each:

- `isa`: which code path this CPU takes (AVX-512 or portable), detected at import.
- `simd`: 16-lane vector types and LLVM intrinsics (``vpermps``, FMA, prefetch) for
  Numba kernels, and the codegen helpers of the micro-kernels.
- `act_scale`: column p-norms of x over the tokens (parallel over column blocks).
- `quantize`: scale by D, groupwise min/max, round and pack -- one pass over W,
  straight into the decode layout (`ttqkern.backends.cpu_layouts`, ``numba_cpu``).
- `host`: qmatmul's host side: picks a kernel family per weight and T, finds the
  decode layout, allocates, launches; `prepare`.
- kernel families: `gemv_blocked` (bits 4 / 8, AVX-512 table lookups or portable
  IR), `gemv_lut` (bits 2 / 3, AVX-512 activation lookup tables), `gemv_words`
  (portable word-plane GEMVs), `gemm` (small-T GEMM, prefill unpack), `generic`
  (any group size; dequantize for BLAS), `prologue` (their x / D prologues).
- `config`: block sizes, tiles and thresholds (documented defaults, tuned entries
  from `ttqkern.tuning.store`).
- `_common`: jit options (why fastmath is or is not used), array views, plane layout.
- `cache`: where the compiled kernels are kept (a folder per version of their sources).

Kernels are compiled with ``cache=True``: a second process loads them from Numba's
disk cache instead of compiling again.  `cache` keys that cache by every source file a
kernel is built from and by the build settings, in ``~/.cache/ttqkern/numba`` (or under
``$NUMBA_CACHE_DIR``), so an edit to an inlined helper recompiles and another checkout
of the same sources compiles nothing.  Threads: Numba's pool (``numba.set_num_threads``).
"""

from __future__ import annotations

import numba  # noqa: F401  (an ImportError here is the registry's "why not available" reason)
import torch

from ...format import CANONICAL, PackedWeight
from ..base import Backend
from ..cpu_layouts import NUMBA_CPU
from . import config, host, isa
from .act_scale import act_scale as _act_scale
from .quantize import quantize as _quantize


class NumbaBackend(Backend):
    """CPU kernels compiled by Numba (the ``auto`` choice on CPUs).

    Its quantize writes the ``numba_cpu`` layout (the decode kernels' own order,
    `ttqkern.backends.cpu_layouts`); its qmatmul reads that layout and the canonical one.
    """

    name = "numba"
    device_types = ("cpu",)
    preference = 10
    params = config.TABLE
    layouts = (NUMBA_CPU, CANONICAL)

    def act_scale(self, x, scaling):
        return _act_scale(x, scaling.p, scaling.lam, scaling.alpha)

    def quantize(self, W, D, fmt):
        return _quantize(W, D, fmt.bits, fmt.group_size, fmt.sym, fmt.zero, fmt.beta)

    def qmatmul(self, x, pw, D, A, B, bias) -> torch.Tensor:
        """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + b``.

        x ``[T, K]`` fp32/fp16/bf16, pw ``[N, K]`` (numba_cpu or canonical), D fp32
        ``[K]`` | None, A ``[r, K]`` / B ``[N, r]`` | None, bias ``[N]`` | None.
        Returns ``[T, N]`` in x.dtype, accumulated in fp32.
        """
        return host.qmatmul(x, pw, D, A, B, bias)

    def prepare(self, pw: PackedWeight, D, A, B, bias):
        """Per-layer decode state (`host.Prepared`): layout, fp32 views, config per T and
        buffer checks are done once here instead of on every decode step."""
        return host.prepare(pw, D, A, B, bias)


BACKEND = NumbaBackend()

__all__ = ["BACKEND", "NumbaBackend", "config", "isa"]
