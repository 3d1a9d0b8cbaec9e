"""Backend registry and resolution.

Each backend is a `ttqkern.backends.base.Backend` instance, exported as ``BACKEND``
by its package and registered here by one line.  Packages are imported lazily, so
a missing numba, triton or cupy never breaks ``import ttqkern``; an import failure
becomes the reason `status` shows.  ``backend="auto"`` takes, for the tensors'
device type, the available backend with the lowest ``preference``.
"""

from __future__ import annotations

import importlib
import threading

import torch

from . import cpu_layouts  # noqa: F401  (registers the numba_cpu packed layout; imports only torch)
from .base import Backend, Tolerances

# name -> the module exporting BACKEND, or a Backend instance registered at run time
_registry: dict[str, str | Backend] = {}
_loaded: dict[str, Backend] = {}
_import_errors: dict[str, str] = {}
_resolved: dict[tuple[str, str], Backend] = {}
_lock = threading.Lock()


def register(name: str, target: str | Backend) -> None:
    """Register a backend: a module path exporting ``BACKEND`` (imported on first use) or an instance.

    Re-registering a name replaces it (and forgets what was resolved for it).
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name must be a non-empty string other than 'auto', got {name!r}")
    if isinstance(target, Backend) and target.name != name:
        raise ValueError(f"backend instance is named {target.name!r}, registered as {name!r}")
    if not isinstance(target, (str, Backend)):
        raise TypeError(
            f"register({name!r}, ...) takes a module path or a Backend instance, got {type(target).__name__}"
        )
    with _lock:
        _registry[name] = target
        _loaded.pop(name, None)
        _import_errors.pop(name, None)
        _resolved.clear()


def unregister(name: str) -> None:
    """Forget a backend registered at run time (tests)."""
    with _lock:
        _registry.pop(name, None)
        _loaded.pop(name, None)
        _import_errors.pop(name, None)
        _resolved.clear()


register("torch", "ttqkern.backends.torch_backend")
register("numba", "ttqkern.backends.numba")
register("triton", "ttqkern.backends.triton")
register("cupy", "ttqkern.backends.cupy")


def names() -> list[str]:
    """Every registered backend name, sorted."""
    return sorted(_registry)


def check_name(name) -> None:
    if name != "auto" and name not in _registry:
        raise ValueError(f"backend must be 'auto' or one of {names()}, got {name!r}")


def get(name: str) -> Backend | None:
    """The backend object of ``name``, importing it on first use; None when it cannot be imported."""
    check_name(name)
    if name in _loaded:
        return _loaded[name]
    if name in _import_errors:
        return None
    target = _registry[name]
    if isinstance(target, Backend):
        backend = target
    else:
        try:
            backend = importlib.import_module(target).BACKEND
        except ImportError as e:  # a missing optional dependency, reported by availability()
            _import_errors[name] = f"{name}: cannot import ({e})"
            return None
    _loaded[name] = backend
    return backend


def availability(name: str) -> tuple[bool, str]:
    """``(ok, reason)`` for a backend name; reason is '' when ok."""
    backend = get(name)
    if backend is None:
        return False, _import_errors[name]
    ok, reason = backend.available()
    return ok, "" if ok else f"{name}: {reason}"


def status() -> dict[str, tuple[bool, str]]:
    """Every registered backend with ``(ok, reason)``: why a backend is not in use."""
    return {name: availability(name) for name in names()}


def resolve(name: str, device: torch.device) -> Backend:
    """The backend to run on tensors of ``device`` (cached per name and device type).

    ``auto`` takes the available backend with the lowest ``preference`` among those
    running on the device type; an explicit name that is unavailable or cannot run
    on ``device`` raises RuntimeError saying why.
    """
    cache_key = (name, device.type)
    hit = _resolved.get(cache_key)
    if hit is not None:
        return hit
    backend = _resolve(name, device)
    _resolved[cache_key] = backend
    return backend


def _resolve(name: str, device: torch.device) -> Backend:
    check_name(name)
    if name == "auto":
        candidates = []
        for cand in names():
            backend = get(cand)
            rank = None if backend is None else backend.auto_rank(device.type)
            if rank is not None and backend.available()[0]:
                candidates.append((rank, cand, backend))
        if not candidates:
            raise RuntimeError(f"no ttqkern backend can run on device {device}: {status()}")
        return min(candidates)[2]
    ok, reason = availability(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available on this machine: {reason}")
    backend = _loaded[name]
    if device.type not in backend.device_types:
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors (it runs on: {', '.join(backend.device_types)})"
        )
    return backend


__all__ = ["Backend", "Tolerances", "availability", "check_name", "get", "names", "register", "resolve", "status"]
