"""Tunable kernel parameters: what a backend declares, and the run-time lookup.

A backend declares, per op, the fields of its store key, each tunable field with
its type and range, the values a tuner should try, and its defaults
(`OpParams`), collected in one `ConfigTable`.  At run time a kernel asks
``table.params(op, device, **shape)``: the defaults updated by the tuned entry that
the config store (`ttqkern.tuning.store`) holds for this device under the key

    <backend>/<op>/<field>=<value>/...      (dims rounded up to a power of two)

An entry with an unknown field or a value of the wrong type or range (a float
``16.0`` where an int is expected, a bool, a negative block) is ignored with a
warning and the defaults are used (docs/spec.md §5): a kernel never receives a
value its declaration does not allow.  Answers are memoised per op, bucketed
shape, device and store generation, so a decode step pays a dict lookup.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import devices, store


@dataclass(frozen=True)
class Int:
    """An integer parameter in ``[lo, hi]`` (a power of two when ``pow2``)."""

    lo: int
    hi: int
    pow2: bool = False

    def check(self, v) -> bool:
        if not isinstance(v, int) or isinstance(v, bool) or not self.lo <= v <= self.hi:
            return False
        return not self.pow2 or (v > 0 and v & (v - 1) == 0)

    def describe(self) -> str:
        return f"an int in [{self.lo}, {self.hi}]" + (", a power of two" if self.pow2 else "")


STAGES = ("act_scale", "quantize", "qmatmul")
EXACT_KEY_FIELDS = ("bits", "group")  # kept as they are in a store key; every other dim is bucketed


@dataclass(frozen=True)
class OpParams:
    """The tunable parameters of one op of a backend.

    key_fields: the shape fields of its store key, in order (``bits`` and ``group``
    -- the resolved group size -- are kept as they are, dims are bucketed).
    fields: every parameter with its `Int` range.
    space: the candidate values a tuner tries (each within its field's range).
    defaults: a dict, or ``callable(device, **shape) -> dict`` when they depend on
    the device or shape (``device``: a torch device, or a catalog
    `ttqkern.tuning.devices.Device` when a config is asked for a GPU that is not
    here -- `ttqkern.tuning.devices.target` turns either into a `Device`).

    What the tuner (``python -m ttqkern.tune``) needs besides:

    stage: the public stage that runs this op (``act_scale``, ``quantize`` or
    ``qmatmul``); default: the op's name when it is one of them.
    tokens: ``(lo, hi)``, the token counts T this op serves (a decode kernel up to
    16 tokens, a prefill GEMM above); a tuning case outside it is not made.
    constraint: ``callable(cfg, device: Device, **shape) -> str``: why a candidate
    cannot run on, or does not fit, the device ('' when it can) -- shared memory,
    registers, occupancy on a GPU; candidates it rejects are never launched.
    canonical: ``callable(cfg, **shape) -> dict``: the config that behaves the same
    as ``cfg`` at this shape, for every shape of its store bucket (e.g. a threshold
    replaced by the kernel choice it makes there); the tuner measures each
    behaviour once and stores the canonical form.
    kernels: names of the compiled kernels whose code this op's parameters shape
    (``python -m ttqkern.tune --compile-check`` attributes what it finds by them;
    empty: every kernel the op's stage launches).
    """

    key_fields: tuple[str, ...]
    fields: Mapping[str, Int]
    space: Mapping[str, tuple] = field(default_factory=dict)
    defaults: Mapping | Callable[..., dict] = field(default_factory=dict)
    stage: str | None = None
    tokens: tuple[int, int] = (1, 1 << 31)
    constraint: Callable[..., str] | None = None
    canonical: Callable[..., dict] | None = None
    kernels: tuple[str, ...] = ()

    def __post_init__(self):
        for name, values in self.space.items():
            if name not in self.fields:
                raise ValueError(f"search space names {name!r}, which is not a field ({sorted(self.fields)})")
            bad = [v for v in values if not self.fields[name].check(v)]
            if bad:
                raise ValueError(f"search space of {name} has values outside its field: {bad}")
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")

    def stage_of(self, op: str) -> str:
        """The public stage that runs this op (declared, or the op's own name)."""
        if self.stage is not None:
            return self.stage
        if op in STAGES:
            return op
        raise ValueError(f"op {op!r} is not a stage name: declare OpParams(stage=...) for the tuner")

    def default(self, device, **shape) -> dict:
        d = self.defaults(device, **shape) if callable(self.defaults) else self.defaults
        return dict(d)

    def invalid(self, entry) -> str:
        """Why a tuned ``entry`` cannot be used ('' when it can)."""
        if not isinstance(entry, Mapping):
            return f"not a mapping: {entry!r}"
        for name, v in entry.items():
            spec = self.fields.get(name)
            if spec is None:
                return f"unknown field {name!r} (known: {sorted(self.fields)})"
            if not spec.check(v):
                return f"{name}={v!r} is not {spec.describe()}"
        return ""

    def rejects(self, cfg: dict, device, **shape) -> str:
        """Why ``cfg`` cannot be a candidate on ``device`` ('' when it can): field ranges, then `constraint`."""
        why = self.invalid(cfg)
        if why or self.constraint is None:
            return why
        from .devices import target

        return self.constraint(cfg, target(device), **shape) or ""

    def canonicalize(self, cfg: dict, **shape) -> dict:
        return dict(self.canonical(dict(cfg), **shape)) if self.canonical is not None else dict(cfg)


@functools.cache
def slug_of(device: torch.device) -> str:
    """The config-file stem of a device (`ttqkern.tuning.devices.device_slug`), cached."""
    return devices.device_slug(device)


@dataclass(frozen=True)
class Resolution:
    """Which config an op would run with, and where it came from (`ConfigTable.resolve`).

    source: ``"user"`` (the user's tuned file), ``"shipped"`` (the package's file),
    ``"override"`` (a tuner's candidate), ``"derived"`` (defaults derived from the
    device's figures) or ``"default"`` (fixed defaults).  path: the file of a tuned
    entry.  note: how defaults were derived, or why a tuned entry was rejected.
    """

    backend: str
    op: str
    device: str
    key: str
    config: dict
    source: str
    path: Path | None
    defaults: dict
    entry: dict | None
    note: str = ""
    provenance: dict | None = None

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path is not None else ""
        extra = f"; {self.note}" if self.note else ""
        return f"{self.key} on {self.device}: {self.config} from {self.source}{where}{extra}"


class ConfigTable:
    """A backend's tunable parameters per op, looked up in the config store.

    derived: optional ``callable(device) -> str``: a description of how this
    backend's defaults are derived from the device's figures ('' where they are
    fixed); `resolve` reports such defaults as source ``"derived"``.
    """

    def __init__(self, backend: str, ops: Mapping[str, OpParams], derived: Callable[..., str] | None = None):
        self.backend = backend
        self.ops = dict(ops)
        self.derived = derived
        self._memo: dict = {}

    def key(self, op: str, **shape) -> str:
        """Store key of ``op`` for a shape: ``<backend>/<op>/<field>=<value>...`` (dims bucketed)."""
        spec = self.ops[op]
        fields = {f: (shape[f] if f in EXACT_KEY_FIELDS else store.bucket(shape[f])) for f in spec.key_fields}
        return store.make_key(self.backend, op, **fields)

    def default(self, op: str, device, **shape) -> dict:
        return self.ops[op].default(_device_arg(device), **shape)

    def params(self, op: str, device, **shape) -> dict:
        """Parameters of ``op`` for a shape on ``device``: defaults updated by a valid tuned entry.

        The returned dict is shared between calls: do not modify it.
        """
        dev = _device_arg(device)
        slug = dev.slug if isinstance(dev, devices.Device) else slug_of(dev)
        spec = self.ops[op]
        fields = tuple(shape[f] if f in EXACT_KEY_FIELDS else store.bucket(shape[f]) for f in spec.key_fields)
        dtype = dev.type if isinstance(dev, torch.device) else dev.slug
        memo_key = (op, fields, slug, dtype, store.generation(), tuple(sorted(shape.items())))
        hit = self._memo.get(memo_key)
        if hit is None:
            if len(self._memo) > 4096:  # bounded: shapes x store generations
                self._memo.clear()
            hit = self._memo[memo_key] = self.resolve(op, dev, _slug=slug, _warn=True, **shape).config
        return hit

    def resolve(self, op: str, device, *, _slug: str | None = None, _warn: bool = False, **shape) -> Resolution:
        """`params` with its provenance: the config, and whether it is a tuned entry (which file) or defaults."""
        dev = _device_arg(device)
        slug = _slug or (dev.slug if isinstance(dev, devices.Device) else slug_of(dev))
        spec = self.ops[op]
        base = spec.default(dev, **shape)
        key = self.key(op, **shape)
        tuned, src = store.sourced_entry(slug, key)
        note = self.derived(dev) if self.derived is not None else ""
        kind = "derived" if note else "default"
        if tuned is None:
            return Resolution(self.backend, op, slug, key, base, kind, None, base, None, note)
        why = spec.invalid(tuned)
        if why:
            msg = f"tuned config {key} for {slug} has invalid values ({why}); using defaults"
            if _warn:
                warnings.warn(f"ttqkern: {msg}", stacklevel=4)
            return Resolution(self.backend, op, slug, key, base, kind, None, base, tuned, msg)
        prov = store.provenance(src, key) if not _warn else None
        return Resolution(self.backend, op, slug, key, {**base, **tuned}, src.kind, src.path, base, tuned, "", prov)


def _device_arg(device):
    """A torch device, or a catalog `Device` (given as one or by its slug)."""
    if isinstance(device, devices.Device):
        return device
    if isinstance(device, str) and device in devices.BY_SLUG:
        return devices.BY_SLUG[device]
    return torch.device(device)


__all__ = ["EXACT_KEY_FIELDS", "STAGES", "ConfigTable", "Int", "OpParams", "Resolution", "slug_of"]
