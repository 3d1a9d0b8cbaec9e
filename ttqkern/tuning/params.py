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


@dataclass(frozen=True)
class OpParams:
    """The tunable parameters of one op of a backend.

    key_fields: the shape fields of its store key, in order (``bits`` is kept as
    is, dims are bucketed).  fields: every parameter with its `Int` range.
    space: the candidate values a tuner tries (each within its field's range).
    defaults: a dict, or ``callable(device, **shape) -> dict`` when they depend on
    the device or shape.
    """

    key_fields: tuple[str, ...]
    fields: Mapping[str, Int]
    space: Mapping[str, tuple] = field(default_factory=dict)
    defaults: Mapping | Callable[..., dict] = field(default_factory=dict)

    def __post_init__(self):
        for name, values in self.space.items():
            bad = [v for v in values if not self.fields[name].check(v)]
            if bad:
                raise ValueError(f"search space of {name} has values outside its field: {bad}")

    def default(self, device: torch.device, **shape) -> dict:
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


@functools.cache
def slug_of(device: torch.device) -> str:
    """The config-file stem of a device (`ttqkern.tuning.devices.device_slug`), cached."""
    return devices.device_slug(device)


class ConfigTable:
    """A backend's tunable parameters per op, looked up in the config store."""

    def __init__(self, backend: str, ops: Mapping[str, OpParams]):
        self.backend = backend
        self.ops = dict(ops)
        self._memo: dict = {}

    def key(self, op: str, **shape) -> str:
        """Store key of ``op`` for a shape: ``<backend>/<op>/<field>=<value>...`` (dims bucketed)."""
        spec = self.ops[op]
        fields = {f: (shape[f] if f == "bits" else store.bucket(shape[f])) for f in spec.key_fields}
        return store.make_key(self.backend, op, **fields)

    def default(self, op: str, device, **shape) -> dict:
        return self.ops[op].default(torch.device(device), **shape)

    def params(self, op: str, device, **shape) -> dict:
        """Parameters of ``op`` for a shape on ``device``: defaults updated by a valid tuned entry.

        The returned dict is shared between calls: do not modify it.
        """
        device = torch.device(device)
        slug = slug_of(device)
        spec = self.ops[op]
        fields = tuple(shape[f] if f == "bits" else store.bucket(shape[f]) for f in spec.key_fields)
        memo_key = (op, fields, slug, device.type, store.generation(), tuple(sorted(shape.items())))
        hit = self._memo.get(memo_key)
        if hit is None:
            if len(self._memo) > 4096:  # bounded: shapes x store generations
                self._memo.clear()
            hit = self._memo[memo_key] = self._params(op, device, slug, **shape)
        return hit

    def _params(self, op: str, device: torch.device, slug: str, **shape) -> dict:
        spec = self.ops[op]
        base = spec.default(device, **shape)
        key = self.key(op, **shape)
        tuned = store.entry(slug, key)
        if tuned is None:
            return base
        why = spec.invalid(tuned)
        if why:
            warnings.warn(
                f"ttqkern: tuned config {key} for {slug} has invalid values ({why}); using defaults", stacklevel=3
            )
            return base
        return {**base, **tuned}


__all__ = ["ConfigTable", "Int", "OpParams", "slug_of"]
