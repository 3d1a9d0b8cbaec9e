"""Run the CuPy backend's kernels on the CPU: a test tool, never a backend.

`build()` compiles ``csrc/host_emulator.cpp`` -- the kernel bodies the GPU runs, with a
host warp of 32 lanes (see that file for what this does and does not check) -- into a
shared library with g++ (cached under ``$TTQKERN_EMU_CACHE`` or the system temp dir,
keyed by a hash of the sources), and `run` executes `host.Launch` records on CPU
tensors through ctypes.  With it, ``host.act_scale / quantize / qmatmul`` run end to end
on any machine with a C++20 compiler: ``emulated(op)`` binds one of them, and
`EmulatedCupy` is the whole backend on CPU tensors (``registered()`` puts it in the
registry for a test's duration: the conformance and numerics suites run on it).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from .. import register, unregister
from . import CupyBackend, host

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("host_emulator.cpp", "ttq_common.cuh", "ttq_decode.cuh", "ttq_prologue.cuh", "ttq_requant.cuh")
CXXFLAGS = ("-std=c++20", "-O0", "-ffp-contract=off", "-fno-fast-math", "-pthread", "-shared", "-fPIC")
ELEM_INDEX = {"F16": 0, "BF16": 1, "F32": 2}


def compiler() -> str | None:
    """The C++ compiler the emulator is built with (``$CXX``, else g++), or None."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def _digest() -> str:
    h = hashlib.sha256(" ".join(CXXFLAGS).encode())
    for name in SOURCES:
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def build() -> ctypes.CDLL:
    """Compile (once per source version) and load the emulator library."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CuPy kernel emulator needs a C++20 compiler (g++ or $CXX)")
    cache = Path(os.environ.get("TTQKERN_EMU_CACHE", Path(tempfile.gettempdir()) / "ttqkern-emu"))
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"ttq_emu_{_digest()}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, *CXXFLAGS, f"-I{CSRC}", str(CSRC / "host_emulator.cpp"), "-o", str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tmp.replace(lib)  # atomic: concurrent builds never load a half-written library
    return ctypes.CDLL(str(lib))


def _arg(value, kind: str):
    if kind == "p":
        if value is None:
            return ctypes.c_void_p(0)
        assert isinstance(value, torch.Tensor) and value.device.type == "cpu"
        return ctypes.c_void_p(value.data_ptr())
    if kind == "i":
        return ctypes.c_int(int(value))
    if kind == "u":
        return ctypes.c_uint(int(value))
    return ctypes.c_float(float(value))


def _tparams(launch: host.Launch) -> list[int]:
    """Template parameters as the emulator's dispatch integers (element types by index)."""
    out = []
    for p in launch.tparams:
        out.append(ELEM_INDEX[p] if isinstance(p, str) else int(p))
    return out


def run(launches: Sequence[host.Launch]) -> None:
    """Execute kernel launches on CPU tensors, in order."""
    lib = build()
    for lc in launches:
        fn = getattr(lib, f"ttq_emu_{lc.kernel}")
        fn.restype = ctypes.c_int
        grid = [ctypes.c_int(v) for v in (*lc.grid, lc.block)] + [ctypes.c_longlong(lc.smem)]
        args = [_arg(v, k) for v, k in zip(lc.args, host.SIGNATURES[lc.kernel], strict=True)]
        rc = fn(*[ctypes.c_int(v) for v in _tparams(lc)], *grid, *args)
        if rc != 0:
            raise RuntimeError(f"emulator has no instantiation {lc.name}")


def emulated(op: str):
    """``host.<op>`` bound to the emulator, e.g. ``emulated("qmatmul")(x, pw, D, A, B, bias)``."""
    fn = getattr(host, op)
    return functools.partial(fn, run=run)


class EmulatedCupy(CupyBackend):
    """The CuPy backend with its launches executed by the host emulator, on CPU tensors (tests only)."""

    name = "cupy-emulated"
    device_types: ClassVar[tuple[str, ...]] = ("cpu",)
    preference: ClassVar[dict[str, int]] = {}  # never chosen by backend="auto"
    run = staticmethod(run)

    def available(self):
        if compiler() is None:
            return False, "the CuPy kernel emulator needs a C++20 compiler (g++ or $CXX)"
        return True, ""


@contextlib.contextmanager
def registered() -> Iterator[EmulatedCupy]:
    """`EmulatedCupy` registered as ``cupy-emulated`` (built first), unregistered on exit."""
    build()
    be = EmulatedCupy()
    register(be.name, be)
    try:
        yield be
    finally:
        unregister(be.name)


def afrag(bits: int, bf16: bool, words: Sequence[int], j: int, centres: tuple[int, int] = (0, 0)) -> list[int]:
    """The 4 A-fragment registers ``codes_to_afrag`` makes of a lane's chunk words, tile j, with
    the codes centred on ``centres`` (zero codes of rows gID and gID + 8)."""
    w = (ctypes.c_uint * len(words))(*[int(v) & 0xFFFFFFFF for v in words])
    out = (ctypes.c_uint * 4)()
    lib = build()
    c0, c1 = (ctypes.c_uint(c) for c in centres)
    assert lib.ttq_emu_afrag(bits, int(bf16), w, j, c0, c1, out) == 0
    return list(out)


def fastdiv(n: int, d: int) -> int:
    lib = build()
    lib.ttq_emu_fastdiv.restype = ctypes.c_uint
    return lib.ttq_emu_fastdiv(ctypes.c_uint(n), *(ctypes.c_uint(v) for v in host.fastdiv(d)))


def f32_to_f16(values: Sequence[float]) -> list[int]:
    lib = build()
    lib.ttq_emu_f32_to_f16.restype = ctypes.c_uint
    return [lib.ttq_emu_f32_to_f16(ctypes.c_float(v)) for v in values]


def f32_to_bf16(values: Sequence[float]) -> list[int]:
    lib = build()
    lib.ttq_emu_f32_to_bf16.restype = ctypes.c_uint
    return [lib.ttq_emu_f32_to_bf16(ctypes.c_float(v)) for v in values]
