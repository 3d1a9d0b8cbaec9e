"""Where Numba keeps this backend's compiled kernels: one folder per version of what they are built from.

Numba's ``cache=True`` keys a compiled kernel by its own file's content, its bytecode and
its signature.  Three things that key does not see:

- **The other files a kernel is built from.**  The decode kernels inline helpers from
  `prologue`, `gemv_words` and `simd`, and freeze constants from
  `ttqkern.backends.cpu_layouts` into their code.  After an edit to one of those files
  alone, Numba loads the kernel compiled against the old helper: a test run then checks
  code that is no longer in the tree.  (Seen: doubling ``x / D`` in `prologue.scale_pad`
  left the 4-bit decode's output unchanged in the next process, loaded from the cache.)
- **Build settings that change the code**: ``NUMBA_OPT``, ``NUMBA_BOUNDSCHECK``,
  ``NUMBA_DEBUGINFO``, the vectorizer switches.  (``TTQKERN_NUMBA_ISA`` is not one: it
  only changes which kernel and micro-kernel tag the host passes, never a kernel's code;
  the target CPU's name and features are in Numba's own key.)
- **Where the sources are checked out.**  Numba's folder is ``__pycache__`` beside the
  sources (or a subfolder of ``$NUMBA_CACHE_DIR`` named after their absolute path), so
  every fresh clone, worktree or copy compiled every kernel again: minutes of CPU.

`SourceTreeLocator` is a Numba cache locator for the functions defined in this package.
Its folder is ``<root>/<digest>``: the digest hashes (`source_digest`) the content of
every module of this package and of every ``ttqkern`` module they import, plus the
settings above; the root is ``$NUMBA_CACHE_DIR/ttqkern-numba`` when that is set, else
``$XDG_CACHE_HOME/ttqkern/numba`` (``~/.cache/ttqkern/numba``).  Two checkouts of the
same sources share one folder; any change to any of those files gets a new one.  The
digest is also the index's source stamp, so Numba's own freshness check agrees.  Folders
unused for a day, past the `KEEP` most recent, are deleted when a new one is made.

Installed at import of `_common` (before any kernel is decorated) by putting the locator
first in Numba's list; functions outside this package keep Numba's own locators, and so
does everything when ``NUMBA_CACHE_LOCATOR_CLASSES`` is set (Numba then ignores the list),
the root is not writable, or this Numba has no such list.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from numba.core import caching, config

from ...diskcache import user_cache_dir

PACKAGE_DIR = Path(__file__).resolve().parent  # ttqkern/backends/numba
TTQKERN_DIR = PACKAGE_DIR.parents[1]  # ttqkern
KEEP = 8  # digest folders kept (one per version of the sources used in the last day, at least)
STALE_S = 24 * 3600
# numba.config attributes whose value changes the machine code but is not in Numba's cache key
_SETTINGS = ("OPT", "BOUNDSCHECK", "DEBUGINFO_DEFAULT", "LOOP_VECTORIZE", "SLP_VECTORIZE", "ENABLE_AVX")


def _imported_ttqkern_files(path: Path, top: Path) -> set[Path]:
    """The ``ttqkern`` modules (files under ``top``) that ``path`` imports, relatively or by absolute name."""
    tree = ast.parse(path.read_bytes(), str(path))
    package = path.parent.relative_to(top.parent).parts  # ("ttqkern", "backends", "numba")
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            # "from .. import cpu_layouts" names a module; "from ..quant import Form" a module's name
            candidates = [_module_file([*mod, a.name], top) or _module_file(mod, top) for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [_module_file(a.name.split("."), top) for a in node.names]
        else:
            continue
        found |= {f for f in candidates if f is not None}
    return found


def _module_file(parts: list[str], top: Path) -> Path | None:
    """The file of module ``ttqkern.<...>`` under ``top`` (a package's ``__init__.py``), or None outside it."""
    if not parts or parts[0] != "ttqkern":
        return None
    stem = top.parent.joinpath(*parts)
    for f in (stem.with_suffix(".py"), stem / "__init__.py"):
        if f.is_file():
            return f
    return None


def dependency_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every ``.py`` file of ``package_dir`` and every ``ttqkern`` module one of them imports, sorted."""
    top = package_dir.parents[1]  # the ttqkern folder this package is in
    own = sorted(package_dir.glob("*.py"))
    deps = set(own)
    for f in own:
        deps |= _imported_ttqkern_files(f, top)
    return sorted(deps)


def settings() -> tuple:
    """The build settings folded into the digest (values as Numba and the backend read them)."""
    return (
        sys.version_info[:2],
        tuple((name, repr(getattr(config, name, None))) for name in _SETTINGS),
    )


def source_digest(files: list[Path], root: Path = TTQKERN_DIR, extra: tuple = ()) -> str:
    """A hex digest of the files' paths (relative to ``root``) and bytes, and of ``extra``."""
    h = hashlib.sha256(repr(extra).encode())
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:24]


def cache_root() -> Path:
    """``$NUMBA_CACHE_DIR/ttqkern-numba`` if set, else ``$XDG_CACHE_HOME/ttqkern/numba``."""
    if config.CACHE_DIR:
        return Path(config.CACHE_DIR) / "ttqkern-numba"
    return user_cache_dir("numba")


@functools.cache
def cache_dir() -> Path:
    """This process's kernel cache folder (``cache_root() / digest``), made on first use."""
    path = cache_root() / source_digest(dependency_files(), extra=settings())
    new = not path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)  # "recently used", for the pruning of other processes
    if new:
        _prune(path.parent, keep=path)
    return path


def _prune(root: Path, keep: Path) -> None:
    """Delete digest folders past the `KEEP` most recently used, if unused for `STALE_S`."""
    try:
        folders = sorted((p for p in root.iterdir() if p.is_dir() and p != keep), key=lambda p: -p.stat().st_mtime)
    except OSError:
        return
    now = time.time()
    for p in folders[KEEP - 1 :]:
        try:
            if now - p.stat().st_mtime > STALE_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


class SourceTreeLocator(caching._CacheLocator):
    """Numba cache locator for this package's functions: `cache_dir`, stamped with its digest."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file  # Numba's warnings name it ("cannot cache ... as it uses dynamic globals")
        self._lineno = py_func.__code__.co_firstlineno
        self._path = cache_dir()

    def get_cache_path(self):
        return str(self._path)

    def get_source_stamp(self):
        return self._path.name

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            if Path(py_file).resolve().parent != PACKAGE_DIR:
                return None
            self = cls(py_func, py_file)
            self.ensure_cache_path()
        except OSError:  # no writable root: Numba's next locator (``__pycache__``) takes over
            return None
        return self


def install() -> bool:
    """Put `SourceTreeLocator` first in Numba's locator list (once); False if this Numba has none."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list):
        return False
    if SourceTreeLocator not in classes:
        classes.insert(0, SourceTreeLocator)
    return True
