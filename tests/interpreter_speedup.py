"""Test-only speed-up of Triton's interpreter: `triton.language` is patched once per launch.

Under ``TRITON_INTERPRET=1`` every call of a ``@triton.jit`` device function goes through
``InterpretedFunction.__call__``, which first calls ``_patch_lang(fn)``: four
``inspect.getmembers`` scans of `triton.language`, `tl.tensor`, `tl.math` and the descriptor
class, each replacing the builtins it finds with interpreter versions.  The launch
(``GridExecutor.__call__``) has already patched those modules, and a patched member is no
longer a builtin, so the repeated call replaces nothing that matters; it is pure cost.  Our
kernels call many small helpers (the unpack trees in ``backends/triton/unpack.py`` recurse
once per field), so a 40x40x160 prefill made 7182 such calls, and the scans were 30-40 % of
the interpreted run.

`install` wraps the two functions: inside a launch, a device function whose language
modules (`tl`, `tl.core`) were already patched during that launch skips the patch; the
first call that brings a new one (Triton's own ``tl.sum`` lives in a module that imports
`tl.core`) still patches it.  What runs is unchanged: the same interpreter executes the
same kernels on the same numpy arrays.  ``tests/test_triton.py`` checks that outputs are
bitwise equal with and without it.

Only the test suite installs it (``tests/conftest.py`` and the fuzz subprocess): a library
must not change a third-party package's internals in its users' processes.  When
Triton's interpreter does not have the functions it wraps, `install` does nothing and
says why.
"""

from __future__ import annotations

import inspect

_STATE = {"depth": 0, "patched": frozenset()}  # launches in progress; language modules patched in this one


def _languages(fn, tl) -> frozenset[int]:
    """ids of the language modules `_patch_lang` would patch for ``fn`` (those it finds in its globals)."""
    return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))


def install() -> tuple[bool, str]:
    """Patch Triton's interpreter once per launch; returns ``(installed, why not)``.  Idempotent."""
    try:
        import triton.language as tl
        import triton.runtime.interpreter as interp
    except ImportError as e:
        return False, f"triton is not importable: {e}"
    names = ("_patch_lang", "_LangPatchScope", "GridExecutor", "InterpretedFunction")
    missing = [n for n in names if not hasattr(interp, n)]
    if missing:
        return False, f"triton {getattr(__import__('triton'), '__version__', '?')}'s interpreter lacks {missing}"
    if getattr(interp._patch_lang, "_ttqkern_once", False):
        return True, ""
    patch_lang, launch = interp._patch_lang, interp.GridExecutor.__call__

    def _patch_lang_once(fn):
        if _STATE["depth"]:
            langs = _languages(fn, tl)
            if langs <= _STATE["patched"]:
                return interp._LangPatchScope()  # nothing to patch, nothing to restore
            _STATE["patched"] |= langs
        return patch_lang(fn)

    def _launch(self, *args, **kwargs):
        _STATE["depth"] += 1
        try:
            return launch(self, *args, **kwargs)
        finally:  # the launch restored what it patched: the next one starts from scratch
            _STATE["depth"] -= 1
            if not _STATE["depth"]:
                _STATE["patched"] = frozenset()

    _patch_lang_once._ttqkern_once = True
    _patch_lang_once._ttqkern_original = patch_lang
    _launch._ttqkern_original = launch
    interp._patch_lang = _patch_lang_once
    interp.GridExecutor.__call__ = _launch
    return True, ""


def uninstall() -> None:
    """Put Triton's own functions back (for the test that compares the two)."""
    import triton.runtime.interpreter as interp

    if getattr(interp._patch_lang, "_ttqkern_once", False):
        interp._patch_lang = interp._patch_lang._ttqkern_original
        interp.GridExecutor.__call__ = interp.GridExecutor.__call__._ttqkern_original
