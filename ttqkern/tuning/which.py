"""`lookup`: which config a kernel call would use, and where it comes from.

    >>> from ttqkern.tuning import lookup
    >>> print(lookup("qmatmul", {"bits": 4, "group": 128, "T": 1, "N": 4096, "K": 4096}, device="cpu"))
    numba/qmatmul/bits=4/group=128/T=1/N=4096/K=4096 on cpu: {...} from default

The answer (`ttqkern.tuning.params.Resolution`) says whether the config is a tuned
entry of the user's file (``$TTQKERN_CONFIG_DIR/<device>.json``, written by
``python -m ttqkern.tune``), of the file shipped with the package, or the backend's
defaults -- fixed, or derived from the device's catalog figures for a GPU that was
never tuned.  ``device`` may name a catalog GPU that is not on this machine
(``device="a100-80gb"``): the answer is what that GPU would use.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import devices
from .params import Resolution

_SHAPE_FIELDS = ("bits", "group", "T", "N", "K")


def _backend_for(backend: str, device):
    from .. import backends

    if backend != "auto":
        b = backends.get(backend)
        if b is None:
            raise RuntimeError(backends.availability(backend)[1])
        return b
    if isinstance(device, devices.Device) or (isinstance(device, str) and device in devices.BY_SLUG):
        dtype = "cpu" if devices.target(device).vendor == "cpu" else "cuda"
        ranked = []
        for name in backends.names():
            b = backends.get(name)
            rank = None if b is None else b.auto_rank(dtype)
            if rank is not None and b.params is not None:
                ranked.append((rank, name, b))
        if not ranked:
            raise RuntimeError(f"no registered backend with a config table runs on {dtype}: {backends.status()}")
        return min(ranked)[2]
    return backends.resolve("auto", torch.device(device))


def _shape(shape, bits, group_size) -> dict:
    if isinstance(shape, Mapping):
        out = dict(shape)
    else:
        dims = tuple(int(v) for v in shape)
        if len(dims) != 3:
            raise ValueError(f"shape must be a mapping of {_SHAPE_FIELDS} or a (T, N, K) tuple, got {shape!r}")
        out = dict(zip(("T", "N", "K"), dims, strict=True))
    if bits is not None:
        out["bits"] = bits
    if group_size is not None:
        out["group"] = group_size
    if "group" not in out and "K" in out:
        out["group"] = 128  # the library's default group size
    bad = {k: v for k, v in out.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"shape values must be positive ints, got {bad}")
    return out


def lookup(op: str, shape, device="cpu", backend: str = "auto", *, bits: int | None = None,
           group_size: int | None = None) -> Resolution:  # fmt: skip
    """Which config ``op`` would use for ``shape`` on ``device``, and where it came from.

    op: an op of the backend's table (``gemv``, ``gemm``, ``quantize``, ...) or a
    stage name (``qmatmul``: the op serving that many tokens, e.g. Triton's gemv for
    T <= 16).  shape: a mapping with the op's key fields (``bits``, ``group`` -- the
    resolved group size, default 128 --, ``T``, ``N``, ``K``) or a ``(T, N, K)``
    tuple with ``bits=`` / ``group_size=``.  device: a torch device or device string,
    or a catalog slug (`ttqkern.tuning.devices.CATALOG`).  backend: a registered
    backend, or ``auto`` (the one ``backend="auto"`` would run on that device).
    Returns a `Resolution`: ``.config``, ``.source`` (user / shipped / override /
    derived / default), ``.path``, ``.key``, ``.note``, ``.provenance``.
    """
    b = _backend_for(backend, device)
    table = b.params
    if table is None:
        raise ValueError(f"backend {b.name!r} declares no tunable parameters")
    shape = _shape(shape, bits, group_size)
    if op not in table.ops:
        T = shape.get("T", 1)
        serving = sorted((spec.tokens[1] - spec.tokens[0], name) for name, spec in table.ops.items()
                         if spec.stage_of(name) == op and spec.tokens[0] <= T <= spec.tokens[1])  # fmt: skip
        serving = [name for _, name in serving]  # the op made for this T first (gemv before a pre-pass)
        if not serving:
            raise ValueError(f"backend {b.name!r} has no op {op!r} (ops: {sorted(table.ops)})")
        op = serving[0]
    missing = [f for f in table.ops[op].key_fields if f not in shape]
    if missing:
        raise ValueError(f"{b.name}/{op} is keyed by {table.ops[op].key_fields}; shape lacks {missing}")
    return table.resolve(op, device, **shape)


__all__ = ["lookup"]
