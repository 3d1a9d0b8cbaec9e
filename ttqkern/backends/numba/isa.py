"""Which CPU code path the Numba backend uses, decided once at import.

``ISA`` is ``"avx512"`` when the CPU Numba compiles for has AVX-512 F, BW and VL
(the `simd` intrinsics: ``vpermps`` on zmm registers, 64-byte loads), else
``"portable"``: kernels written in target-independent LLVM vector IR or plain
Numba, which LLVM lowers for AVX2, NEON or anything else.

The host's features come from LLVM (``llvmlite.binding.get_host_cpu_features``),
the same source Numba uses to pick its target; when ``NUMBA_CPU_NAME`` names
another CPU (cross-compiling, or simulating an older one), the features come
from ``NUMBA_CPU_FEATURES`` and AVX-512 is used only if they list it.

Override with the environment variable ``TTQKERN_NUMBA_ISA`` (read at import):
``auto`` (default), ``portable`` (force the fallback, e.g. to test it on an
AVX-512 machine), or ``avx512`` (refused with a warning when the CPU lacks it).
Tests switch paths in-process with `forced`; the host reads `current`.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numba

ENV = "TTQKERN_NUMBA_ISA"
CHOICES = ("auto", "avx512", "portable")
NEEDED = ("avx512f", "avx512bw", "avx512vl")


def cpu_features() -> set[str]:
    """The target CPU's LLVM feature names that are enabled (e.g. ``{"avx2", "avx512f", ...}``)."""
    if numba.config.CPU_NAME:  # Numba compiles for a named CPU: trust only what it is told
        spec = numba.config.CPU_FEATURES or ""
    else:
        from llvmlite import binding

        spec = binding.get_host_cpu_features().flatten()
    return {f[1:] for f in spec.split(",") if f.startswith("+")}


def detect(request: str | None = None) -> str:
    """``"avx512"`` or ``"portable"`` for the requested choice (default: the environment variable)."""
    request = (request if request is not None else os.environ.get(ENV, "auto")).strip().lower() or "auto"
    if request not in CHOICES:
        warnings.warn(f"ttqkern: {ENV}={request!r} is not one of {list(CHOICES)}; using 'auto'", stacklevel=2)
        request = "auto"
    has = all(f in cpu_features() for f in NEEDED)
    if request == "portable":
        return "portable"
    if request == "avx512" and not has:
        warnings.warn(f"ttqkern: {ENV}=avx512 but this CPU lacks {', '.join(NEEDED)}; using the portable path",
                      stacklevel=2)  # fmt: skip
    return "avx512" if has else "portable"


ISA = detect()  # what this process detected at import (with the environment override)
_state = {"isa": ISA}


def current() -> str:
    """The code path in use now: `ISA`, or what `forced` set."""
    return _state["isa"]


@contextlib.contextmanager
def forced(name: str):
    """Run the enclosed code with the ``name`` path (``"portable"`` anywhere; ``"avx512"`` where supported)."""
    if name not in ("avx512", "portable"):
        raise ValueError(f"ISA must be 'avx512' or 'portable', got {name!r}")
    if name == "avx512" and detect("auto") != "avx512":
        raise RuntimeError("this CPU has no AVX-512 (F, BW, VL): the avx512 path cannot run here")
    old, _state["isa"] = _state["isa"], name
    try:
        yield
    finally:
        _state["isa"] = old
