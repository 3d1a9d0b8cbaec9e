"""The Numba backend's kernel cache (`ttqkern.backends.numba.cache`).

Keyed by every source file a kernel is built from and by the build settings, and not by
where the sources are checked out: an edit to an inlined helper recompiles the kernels
that use it, and a second checkout of the same sources loads what the first compiled
(that one in two processes: `test_numba_backend`, the disk-cache test).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

from ttqkern.backends.numba import cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _copy_package(dest: Path) -> Path:
    """A copy of the ``ttqkern`` package (sources only) under ``dest``; returns the copy's ttqkern dir."""
    shutil.copytree(ROOT / "ttqkern", dest / "ttqkern", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest / "ttqkern"


def _digest(pkg: Path, extra: tuple = ()) -> str:
    files = cache.dependency_files(pkg / "backends" / "numba")
    return cache.source_digest(files, root=pkg, extra=extra)


def test_dependencies_are_the_package_and_the_ttqkern_modules_it_imports():
    names = {f.relative_to(cache.TTQKERN_DIR).as_posix() for f in cache.dependency_files()}
    # inlined helpers and constants frozen into kernels live in these files
    assert {"backends/numba/simd.py", "backends/numba/prologue.py", "backends/numba/_common.py",
            "backends/cpu_layouts.py", "quant.py"} <= names  # fmt: skip
    assert not any(n.startswith(("eval/", "backends/triton/", "backends/cupy/")) for n in names), names


def test_digest_follows_the_sources_and_settings_not_the_checkout_path(tmp_path):
    a, b = _copy_package(tmp_path / "a"), _copy_package(tmp_path / "b")
    assert _digest(a) == _digest(b)
    assert _digest(a, extra=("OPT", 0)) != _digest(a, extra=("OPT", 3))
    (b / "eval" / "cli.py").write_text((b / "eval" / "cli.py").read_text() + "\n# unrelated\n")
    assert _digest(a) == _digest(b)
    # an inlined helper's file, and a file whose constants are frozen into kernels
    for i, f in enumerate((b / "backends" / "numba" / "prologue.py", b / "backends" / "cpu_layouts.py")):
        before = _digest(b)
        f.write_text(f.read_text() + f"\n# edit {i}\n")
        assert _digest(b) != before


def test_every_backend_kernel_is_cached_in_the_source_keyed_folder():
    import numba

    from ttqkern.backends.numba import gemm, gemv_blocked, gemv_lut, gemv_words, generic

    quantize_mod = sys.modules["ttqkern.backends.numba.quantize"]
    seen = 0
    for mod in (gemm, gemv_blocked, gemv_lut, gemv_words, generic, quantize_mod):
        for obj in vars(mod).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj._cache.__class__.__name__ == "FunctionCache":
                assert isinstance(obj._cache._impl.locator, cache.SourceTreeLocator), obj
                assert Path(obj._cache.cache_path) == cache.cache_dir(), obj
                seen += 1
    assert seen >= 10
    assert cache.cache_dir().parent == cache.cache_root()
