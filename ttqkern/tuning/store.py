"""Tuned kernel configs: JSON data files looked up at run time.

A config file holds, for one device, the parameters a backend's kernels should
use per op, bit width and shape bucket::

    {"format": "ttqkern-configs", "version": 1, "device": "h100",
     "entries": {"triton/gemv/bits=4/T=16/N=4096/K=4096": {"BLOCK_N": 64, ...}}}

Files are searched in the user's directory (``$TTQKERN_CONFIG_DIR``, default
``~/.cache/ttqkern/configs``, written by ``python -m ttqkern.tune``) and then in
the ones shipped with the package (``ttqkern/tuning/configs``).  Lookup never
imports optuna.  A file that cannot be trusted -- corrupt, from another format
version, deeply nested, not a regular file (a directory, a FIFO), a dangling link
-- is ignored with a warning and the backends' defaults are used (docs/spec.md §5);
reading never blocks.  What an entry may contain is checked by the backend's
`ttqkern.tuning.params.ConfigTable`.

Writers (`save`) lose nothing: the read-merge-write runs under an exclusive lock
on ``<file>.lock`` and the new file replaces the old one atomically
(``os.replace`` of a temporary file in the same folder), so concurrent tuners
merge their entries and a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

FORMAT = "ttqkern-configs"
VERSION = 1
PACKAGE_DIR = Path(__file__).with_name("configs")
MAX_BYTES = 16 << 20  # a config file is a few KB; anything this large is not one


def user_dir() -> Path:
    return Path(os.environ.get("TTQKERN_CONFIG_DIR", Path.home() / ".cache" / "ttqkern" / "configs"))


def bucket(n: int) -> int:
    """Round a dimension up to a power of two, so nearby shapes share a config."""
    return 1 << max(0, (int(n) - 1).bit_length())


def make_key(backend: str, op: str, **fields) -> str:
    """``backend/op/k1=v1/k2=v2`` with fields in the order given (e.g. bits, T, N, K)."""
    return "/".join([backend, op] + [f"{k}={v}" for k, v in fields.items()])


def _warn(path: Path, why: str, what: str = "") -> dict:
    warnings.warn(f"ttqkern: ignoring {what}tuned-config file {path}: {why}; using defaults", stacklevel=4)
    return {}


def _read_text(path: Path) -> str | None:
    """The file's text, or None (with a warning) when it is not a readable regular file.

    ``O_NONBLOCK`` and the ``S_ISREG`` check on the opened descriptor: a FIFO at the
    path must not block the caller, and a file swapped in after a check is caught.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        _warn(path, f"cannot open it ({e})", "unreadable ")
        return None
    # fstat before wrapping the descriptor: os.fdopen refuses a directory (IsADirectoryError)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        _warn(path, "not a regular file")
        return None
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_BYTES:
            _warn(path, f"{st.st_size} bytes, larger than any config file ({MAX_BYTES})")
            return None
        try:
            raw = f.read(MAX_BYTES + 1)  # bounded: the file may have grown since the fstat
        except OSError as e:
            _warn(path, f"cannot read it ({e})", "unreadable ")
            return None
        if len(raw) > MAX_BYTES:
            _warn(path, f"larger than any config file ({MAX_BYTES} bytes)")
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _warn(path, f"cannot read it ({e})", "unreadable ")
            return None


def _read(path: Path) -> dict:
    """Entries of one file, or {} with a warning when it cannot be trusted."""
    text = _read_text(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        return _warn(path, f"not valid JSON ({type(e).__name__}: {str(e)[:120]})", "unreadable ")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return _warn(path, f"not a ttqkern config file (format {FORMAT!r})")
    if data.get("version") != VERSION:
        return _warn(
            path,
            f"config format version {data.get('version')!r}, this ttqkern reads version {VERSION}; "
            "re-run `python -m ttqkern.tune` for this device",
        )
    return data["entries"]


def _candidates(slug: str) -> list[Path]:
    out = []
    for d in (PACKAGE_DIR, user_dir()):
        path = d / f"{slug}.json"
        if path.is_symlink() and not path.exists():
            _warn(path, "a dangling symbolic link")
        elif path.exists() or path.is_symlink():
            out.append(path)
    return out


_generation = [0]  # a one-element list: bumped in place


def generation() -> int:
    """A counter that changes whenever what `lookup` could answer changes (memo keys use it)."""
    return _generation[0]


def _bump() -> None:
    _generation[0] += 1


@dataclass(frozen=True)
class Source:
    """Where a tuned entry comes from: ``kind`` is ``"user"`` (the user's config folder,
    written by ``python -m ttqkern.tune``), ``"shipped"`` (the package's folder) or
    ``"override"`` (a tuner's candidate in this process); ``path`` the file (None for an override)."""

    kind: str
    path: Path | None = None


@functools.cache
def _load_sourced(slug: str) -> dict:
    """``{key: (entry, Source)}``: the package file first, the user's file overriding it."""
    out = {}
    for path in _candidates(slug):
        kind = "shipped" if path.parent == PACKAGE_DIR else "user"
        src = Source(kind, path)
        out.update({k: (v, src) for k, v in _read(path).items()})
    return out


@functools.cache
def _load(slug: str) -> dict:
    return {k: v for k, (v, _) in _load_sourced(slug).items()}


def load(slug: str) -> dict:
    """All entries for a device slug: package file first, the user's file overriding it."""
    return _load(slug)


def _cache_clear() -> None:
    _load.cache_clear()
    _load_sourced.cache_clear()
    _bump()


load.cache_clear = _cache_clear  # the tests' fixture and `save` clear the cache through this name

# (slug, key) -> entry tried by a tuner in this process; consulted before the files
_overrides: dict[tuple[str, str], dict] = {}


@contextlib.contextmanager
def override(slug: str, key: str, entry: dict):
    """Within the block, ``entry(slug, key)`` answers ``entry`` (a tuner's candidate)."""
    _overrides[(slug, key)] = entry
    _bump()
    try:
        yield
    finally:
        del _overrides[(slug, key)]
        _bump()


def entry(slug: str, key: str) -> dict | None:
    """The tuned entry for ``key`` on device ``slug`` (an override first), or None."""
    hit = _overrides.get((slug, key))
    return hit if hit is not None else load(slug).get(key)


def sourced_entry(slug: str, key: str) -> tuple[dict | None, Source | None]:
    """`entry` and where it comes from (`Source`); ``(None, None)`` when there is none."""
    hit = _overrides.get((slug, key))
    if hit is not None:
        return hit, Source("override")
    found = _load_sourced(slug).get(key)
    return found if found is not None else (None, None)


def lookup(slug: str, key: str, defaults: dict) -> dict:
    """``defaults`` updated by the tuned entry for ``key`` (an entry with other fields: a warning, the defaults).

    Backends go through `ttqkern.tuning.params.ConfigTable`, which also checks types and ranges.
    """
    tuned = entry(slug, key)
    if not tuned:
        return dict(defaults)
    if not isinstance(tuned, dict) or set(tuned) - set(defaults):
        warnings.warn(f"ttqkern: tuned config {key} for {slug} has unexpected fields; using defaults", stacklevel=2)
        return dict(defaults)
    return {**defaults, **tuned}


def _read_provenance(path: Path) -> dict:
    """The ``"provenance"`` map of a config file (``{key: run metadata}``), {} when absent or odd."""
    text = _read_text(path)
    try:
        prov = json.loads(text).get("provenance", {}) if text else {}
    except (ValueError, RecursionError, AttributeError):
        return {}
    return prov if isinstance(prov, dict) else {}


def provenance(source: Source | None, key: str) -> dict | None:
    """The run metadata `save` recorded for ``key`` in ``source``'s file, or None."""
    if source is None or source.path is None:
        return None
    got = _read_provenance(source.path).get(key)
    return got if isinstance(got, dict) else None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``<path>.lock`` (POSIX ``flock``; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic replace still holds, merging may race
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def save(slug: str, entries: dict, directory: Path | None = None, meta: dict | None = None) -> Path:
    """Merge ``entries`` into ``<directory>/<slug>.json`` (default: the user's dir); returns the path.

    Under the file's lock: read what is there now, merge, write a temporary file,
    ``os.replace`` it over the old one.  ``meta`` (e.g. the tuning run's command,
    date and machine) is recorded per key under ``"provenance"``: readers ignore it,
    `ttqkern.tuning.lookup` shows it.
    """
    directory = Path(directory) if directory is not None else user_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{slug}.json"
    with _locked(path):
        old = _read(path) if path.exists() else {}
        prov = _read_provenance(path) if path.exists() else {}
        if meta is not None:
            prov.update({k: meta for k in entries})
        prov = {k: v for k, v in prov.items() if k in old or k in entries}
        data = {"format": FORMAT, "version": VERSION, "device": slug, "entries": {**old, **entries}}
        if prov:
            data["provenance"] = prov
        fd, tmp = tempfile.mkstemp(prefix=f".{slug}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    load.cache_clear()
    return path
