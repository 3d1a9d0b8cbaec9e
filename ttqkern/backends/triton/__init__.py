"""The Triton backend: TTQ's stages as portable Triton kernels, designed from their machine code.

Kernels (one module each, named by what they compute; docs/triton-kernels.md has the
design and the static figures of each):

- `act_scale`: column p-norms of x over the tokens, then D in one program.
- `quantize`: scale by D, groupwise min/max, round, pack -- one pass over W,
  writing the canonical packed layout, which the GEMMs read as 32-bit words
  (`ttqkern.backends.words`; odd group sizes are padded to whole chunks).
- `prologue`: x~ = x / D once per call, laid out for the GEMM that follows, with
  its chunk sums and the partials of ``x A^T``.
- `gemv` (one token, vector units), `qdot` (2+ tokens, tensor cores) and
  `dequant` (long prefills: dequantize once, then cuBLAS): the packed GEMM with
  the low-rank + bias epilogue; `qmatmul` picks one and launches 2 kernels.
- `unpack`: codes to floats without integer-to-float conversion.
- `config`: tiles, warps, stages and thresholds per device, op, bit width and
  shape bucket (defaults from the device's SM count, overridden by tuned entries).
- `aot` / `inspect`: compile for a GPU target as the JIT would, without a GPU, and
  report the static performance figures and gates (``python -m
  ttqkern.backends.triton.inspect``).

Only portable Triton is used, so the same source targets NVIDIA and AMD GPUs.
With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels are
interpreted on CPU tensors (slow, but the same kernel source: that is how CI tests
them); otherwise CPU tensors are refused with the registry's clear error.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import ClassVar

import numpy as np
import torch
import triton  # an ImportError here is the registry's "why not available" reason

from ..base import Backend

# Triton decides at decoration time (`triton.jit`) whether a kernel is compiled or
# interpreted, from this knob (env TRITON_INTERPRET); read it once, before the
# kernel modules below are imported and decorated.
try:
    INTERPRET: bool = bool(triton.knobs.runtime.interpret)
except AttributeError:  # triton < 3.4 has no knobs and reads the variable directly
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Oldest Triton whose interpreter runs these kernels: 3.6's turns a loop bound derived
# from tl.program_id into a 1-element array and fails in range() (seen with 3.6.0;
# compiled GPU kernels are fine there).  Versions in between were not tried.
INTERPRETER_MIN_VERSION = (3, 9)


def interpreter_supported(version: str) -> bool:
    """Can Triton ``version`` (e.g. ``"3.9.0"``) interpret this backend's kernels?"""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    return parts >= INTERPRETER_MIN_VERSION


from . import config  # noqa: E402
from .act_scale import act_scale as _act_scale  # noqa: E402
from .qmatmul import prepare as _prepare_weight  # noqa: E402
from .qmatmul import qmatmul as _qmatmul  # noqa: E402
from .quantize import quantize as _quantize  # noqa: E402


class TritonBackend(Backend):
    """Fused Triton kernels; on CPU tensors only under the interpreter (tests)."""

    name = "triton"
    # Interpreted kernels run on CPU tensors (and on CUDA tensors through host copies).
    device_types = ("cuda", "cpu") if INTERPRET else ("cuda",)
    preference: ClassVar[dict[str, int]] = {"cuda": 10}  # never the auto choice on the CPU, not even interpreted
    params = config.TABLE

    def available(self) -> tuple[bool, str]:
        """``(True, '')`` with a CUDA / ROCm device or under the interpreter, else why not."""
        if INTERPRET and not interpreter_supported(triton.__version__):
            need = ".".join(map(str, INTERPRETER_MIN_VERSION))
            return False, (
                f"TRITON_INTERPRET=1 needs triton >= {need} to interpret these kernels (this is triton "
                f"{triton.__version__}); upgrade triton, or unset TRITON_INTERPRET on a GPU machine"
            )
        if INTERPRET or torch.cuda.is_available():
            return True, ""
        return False, (
            f"no CUDA/ROCm device (torch {torch.__version__}: torch.cuda.is_available() is False) and the Triton "
            "interpreter is off; set TRITON_INTERPRET=1 before importing ttqkern to run the kernels on CPU tensors"
        )

    def act_scale(self, x, scaling):
        """Stage 1: x ``[T, K]`` fp32/fp16/bf16 -> D fp32 ``[K]`` (see `reference.act_scale`)."""
        with _launch_scope(x):
            return _act_scale(x, scaling.p, scaling.lam, scaling.alpha, INTERPRET)

    def quantize(self, W, D, fmt):
        """Stages 2-3: W ``[N, K]`` float, D fp32 ``[K]`` | None -> canonical `PackedWeight` (fp32 scales)."""
        with _launch_scope(W):
            return _quantize(W, D, fmt, INTERPRET)

    def qmatmul(self, x, pw, D, A, B, bias):
        """Stages 4-5: x ``[T, K]`` fp32/fp16/bf16 -> ``[T, N]`` in x.dtype, fp32 accumulation."""
        with _launch_scope(x):
            return _qmatmul(x, pw, D, A, B, bias, INTERPRET)

    def prepare(self, pw, D, A, B, bias):
        """`qmatmul` with ``pw``'s word planes (for odd group sizes a padded copy) and group centres made
        once per weight rather than per call: a decode step then launches the two kernels and nothing else."""
        with _launch_scope(pw.scales):
            prep = _prepare_weight(pw)

        def run(x):
            with _launch_scope(x):
                return _qmatmul(x, pw, D, A, B, bias, INTERPRET, prep)

        return run


@contextlib.contextmanager
def _launch_scope(t: torch.Tensor):
    """Launch on the tensor's GPU (Triton uses the current device).

    Under the interpreter, numpy's floating-point warnings are silenced: masked
    lanes and the nan / inf the spec propagates would warn there, never on a GPU.
    """
    with contextlib.ExitStack() as stack:
        if t.device.type == "cuda":
            stack.enter_context(torch.cuda.device(t.device))
        if INTERPRET:
            stack.enter_context(np.errstate(all="ignore"))
        yield


BACKEND = TritonBackend()

__all__ = ["BACKEND", "INTERPRET", "TritonBackend", "config"]
