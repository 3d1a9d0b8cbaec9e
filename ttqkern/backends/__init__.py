"""Backend registry and dispatch.

A backend is a module that implements the stage functions on inputs that already
passed `ttqkern._checks`:

- ``act_scale(x [T, K], p, lam, alpha) -> D fp32 [K]``
- ``quantize(W [N, K], D fp32 [K] | None, bits, group_size (> 0), sym, zero, beta) -> PackedWeight``
- ``qmatmul(x [T, K], pw, D | None, A | None, B | None, bias | None) -> y [T, N] (x.dtype)``

plus ``available() -> (ok: bool, reason: str)`` and ``DEVICE_TYPES`` (the tensor
device types it runs on).  Modules are imported lazily, so a missing triton or
numba never breaks ``import ttqkern``; an import failure becomes the reason shown.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

# name -> module path.  Order of preference per device type is in AUTO_ORDER.
BACKENDS = {
    "torch": "ttqkern.backends.torch_backend",
    "numba": "ttqkern.backends.numba",
    "triton": "ttqkern.backends.triton",
    "cupy": "ttqkern.backends.cupy",
}
AUTO_ORDER = {
    "cuda": ("triton", "cupy", "torch"),
    "cpu": ("numba", "torch"),
}
DEFAULT_ORDER = ("torch",)

_modules: dict[str, ModuleType] = {}
_import_errors: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name in _modules:
        return _modules[name]
    if name in _import_errors:
        return None
    try:
        mod = importlib.import_module(BACKENDS[name])
    except ImportError as e:  # a missing optional dependency, reported by available()
        _import_errors[name] = f"{name}: cannot import ({e})"
        return None
    _modules[name] = mod
    return mod


def check_name(name: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")


def availability(name: str) -> tuple[bool, str]:
    """``(ok, reason)`` for a backend name; reason is '' when ok."""
    check_name(name)
    mod = _load(name)
    if mod is None:
        return False, _import_errors[name]
    ok, reason = mod.available()
    return ok, "" if ok else f"{name}: {reason}"


def status() -> dict[str, tuple[bool, str]]:
    """Every known backend with ``(ok, reason)``: why a backend is not in use."""
    return {name: availability(name) for name in BACKENDS}


def resolve(name: str, device: torch.device) -> ModuleType:
    """The backend module to run on tensors of ``device``.

    ``auto`` takes the first available backend of `AUTO_ORDER` for the device
    type, quietly skipping missing ones; an explicit name that is unavailable or
    cannot run on ``device`` raises RuntimeError saying why.
    """
    check_name(name)
    if name == "auto":
        for cand in AUTO_ORDER.get(device.type, DEFAULT_ORDER):
            ok, _ = availability(cand)
            if ok and device.type in _modules[cand].DEVICE_TYPES:
                return _modules[cand]
        raise RuntimeError(f"no ttqkern backend can run on device {device}: {status()}")
    ok, reason = availability(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available on this machine: {reason}")
    mod = _modules[name]
    if device.type not in mod.DEVICE_TYPES:
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors (it runs on: {', '.join(mod.DEVICE_TYPES)})"
        )
    return mod
