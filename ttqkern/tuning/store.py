"""Tuned kernel configs: JSON data files looked up at run time.

A config file holds, for one device, the parameters a backend's kernels should
use per op, bit width and shape bucket::

    {"format": "ttqkern-configs", "version": 1, "device": "h100",
     "entries": {"triton/qmatmul/bits=4/T=16/N=4096/K=4096": {"BLOCK_N": 64, ...}}}

Files are searched in the user's directory (``$TTQKERN_CONFIG_DIR``, default
``~/.cache/ttqkern/configs``, written by ``python -m ttqkern.tune``) and then in
the ones shipped with the package (``ttqkern/tuning/configs``).  Lookup never
imports optuna.  A corrupt file or one from another format version is ignored
with a warning and the backend's defaults are used (spec §5).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from pathlib import Path

FORMAT = "ttqkern-configs"
VERSION = 1
PACKAGE_DIR = Path(__file__).with_name("configs")


def user_dir() -> Path:
    return Path(os.environ.get("TTQKERN_CONFIG_DIR", Path.home() / ".cache" / "ttqkern" / "configs"))


def bucket(n: int) -> int:
    """Round a dimension up to a power of two, so nearby shapes share a config."""
    return 1 << max(0, (int(n) - 1).bit_length())


def make_key(backend: str, op: str, **fields) -> str:
    """``backend/op/k1=v1/k2=v2`` with fields in the order given (e.g. bits, T, N, K)."""
    return "/".join([backend, op] + [f"{k}={v}" for k, v in fields.items()])


def _read(path: Path) -> dict:
    """Entries of one file, or {} with a warning when it cannot be trusted."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"ttqkern: ignoring unreadable tuned-config file {path}: {e}; using defaults", stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        warnings.warn(f"ttqkern: ignoring {path}: not a ttqkern config file (format {FORMAT!r}); using defaults",
                      stacklevel=3)  # fmt: skip
        return {}
    if data.get("version") != VERSION:
        warnings.warn(
            f"ttqkern: ignoring {path}: config format version {data.get('version')!r}, this ttqkern reads "
            f"version {VERSION}; re-run `python -m ttqkern.tune` for this device; using defaults",
            stacklevel=3,
        )
        return {}
    return data["entries"]


@functools.cache
def load(slug: str) -> dict:
    """All entries for a device slug: package file first, the user's file overriding it."""
    entries = {}
    for d in (PACKAGE_DIR, user_dir()):
        path = d / f"{slug}.json"
        if path.exists():
            entries.update(_read(path))
    return entries


# (slug, key) -> entry tried by a tuner in this process; consulted before the files
_overrides: dict[tuple[str, str], dict] = {}


@contextlib.contextmanager
def override(slug: str, key: str, entry: dict):
    """Within the block, ``lookup(slug, key, ...)`` answers ``entry`` (a tuner's candidate)."""
    _overrides[(slug, key)] = entry
    try:
        yield
    finally:
        del _overrides[(slug, key)]


def lookup(slug: str, key: str, defaults: dict) -> dict:
    """``defaults`` updated by the tuned entry for ``key`` (unknown fields dropped with a warning)."""
    tuned = _overrides.get((slug, key)) or load(slug).get(key)
    if not tuned:
        return dict(defaults)
    if not isinstance(tuned, dict) or set(tuned) - set(defaults):
        warnings.warn(f"ttqkern: tuned config {key} for {slug} has unexpected fields; using defaults", stacklevel=2)
        return dict(defaults)
    return {**defaults, **tuned}


def save(slug: str, entries: dict, directory: Path | None = None) -> Path:
    """Merge ``entries`` into ``<directory>/<slug>.json`` (default: the user's dir)."""
    directory = Path(directory) if directory is not None else user_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{slug}.json"
    old = _read(path) if path.exists() else {}
    data = {"format": FORMAT, "version": VERSION, "device": slug, "entries": {**old, **entries}}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    load.cache_clear()
    return path
