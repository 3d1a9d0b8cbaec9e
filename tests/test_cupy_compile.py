"""Every CUDA kernel instantiation of the CuPy backend compiles for sm_80, sm_86, sm_89, sm_90.

nvcc builds one cubin per architecture (tests/cupy_compile.py; cached by a hash of the
sources, so a session compiles once); ``ptxas -v`` and the SASS, read with the shared
`ttqkern.backends.sass`, are then gated:

- no kernel above 128 registers; no spill in any decode kernel;
- the decode kernels' K loop: 128-bit weight loads (and no global load narrower than
  64 bits), tensor-core MMAs, no barrier, no shuffle, no int-to-float conversion (I2F),
  SASS lanes per byte of codes reported and bounded;
- the sources also compile through NVRTC, the compiler the backend uses on a GPU,
  with the backend's own options (when cupy's NVRTC is importable).

Skipped with the reason when nvcc (or the CUDA binary tools) is absent.
"""

from __future__ import annotations

import re

import cupy_compile as cc
import pytest

from ttqkern.backends import sass
from ttqkern.backends.cupy import config, host, kernels

_why = (
    "nvcc not found (set $NVCC or put a CUDA toolkit's nvcc on PATH)"
    if cc.nvcc() is None
    else "cuobjdump not found (install triton, which bundles it, or set $TTQKERN_CUDA_BIN)"
    if sass.find_tool("cuobjdump") is None
    else None
)
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

# 4-bit, T = 1, groups of 64 or more: the shape the bandwidth target is for (perf-notes §3)
LANES_PER_BYTE_MAX = {4: 10.0, 8: 10.0, 2: 20.0, 3: 20.0}
# fp32 activations carry x / D exactly as three bf16 planes (docs/numerics.md rule Q2): three
# MMAs and 24 B of B fragments per tile where fp16 / bf16 take one MMA and 8 B
FP32_LANES_FACTOR = 1.25


SASS_ARCHS = (80, 90)  # the main-loop gates' architectures (the SASS of all four: python tests/cupy_compile.py)


@pytest.fixture(scope="module")
def report():
    return cc.inspect(cc.ARCHS, sass_archs=SASS_ARCHS)


def test_every_instantiation_compiles_for_every_architecture(report):
    want = {name for _, name in host.all_kernel_names()}
    for arch in cc.ARCHS:
        assert set(report[arch]) == want, f"sm_{arch}: missing {sorted(want - set(report[arch]))[:5]}"


def test_register_budget_and_no_spills(report):
    for arch, rows in report.items():
        for name, r in rows.items():
            assert r["registers"] <= cc.REG_LIMIT, f"sm_{arch} {name}: {r['registers']} registers"
            if name.startswith("ttq_decode<"):
                assert r["spill_stores"] == r["spill_loads"] == 0, f"sm_{arch} {name} spills: {r}"


@pytest.mark.parametrize("arch", SASS_ARCHS)
def test_decode_main_loop_static_gates(report, arch):
    lpb = {}
    for name, r in report[arch].items():
        p = cc.decode_params(name)
        if p is None:
            continue
        ml = r["main_loop"]
        assert ml is not None, f"{name}: no K loop with MMA found"
        mem, fam = ml["memory"], ml["families"]
        planes = 3 if p["xm"] == 2 else 1  # fp32 x: bf16 hi + mid + lo
        # weights: V 128-bit loads per row tile; x / D: 2 (6) 128-bit loads per step and token tile
        assert mem.get("LDG.128", 0) >= p["rt"] * {8: 2, 4: 1, 2: 1, 3: 3}[p["bits"]], (name, mem)
        assert not any(int(k.split(".")[1]) < 64 for k in mem if k.startswith("LDG")), (name, mem)
        assert fam["BAR"] == 0 and fam["SHFL"] == 0 and fam["LOCAL"] == 0, (name, fam)
        tiles = r["codes_per_iter"] // (16 * 16 * p["rt"])  # MMA tiles per row tile and iteration
        assert fam["MMA"] == tiles * p["rt"] * p["nt"] * planes, (name, fam["MMA"])
        # no int-to-float conversion at all: the zero codes enter as integers in the HFMA2 bias
        # operands and the flush reads fp32 s and m0 (docs/numerics.md rule Q1)
        assert fam["I2F"] == 0, (name, fam["I2F"])
        assert fam["MUFU"] == 0, (name, fam)
        if p["nt"] == 1 and p["tg"] == 0:  # one token tile, groups of 64 or more
            limit = LANES_PER_BYTE_MAX[p["bits"]] * (FP32_LANES_FACTOR if p["xm"] == 2 else 1.0)
            assert r["lanes_per_byte"] <= limit, (name, r["lanes_per_byte"])
            lpb[name] = r["lanes_per_byte"]
    assert lpb, "no decode kernel measured"
    print(f"\nsm_{arch} decode K loop, SASS lanes per byte of codes (T <= 8, g % 64 == 0):")
    for name, v in sorted(lpb.items()):
        print(f"  {name}: {v:.2f}")


def test_default_decode_config_keeps_bytes_in_flight(report):
    """Little's law on sm_90 (perf-notes §3): >= 30 KB requested per SM for 4-bit T = 1 defaults."""
    rt = config.defaults("decode", bits=4)["RT"]
    for xm in (0, 1):
        r = report[90][f"ttq_decode<4, {xm}, 1, 0, {rt}>"]
        assert r["bytes_in_flight_per_sm"] >= 30 * 1024, r["bytes_in_flight_per_sm"]


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as e:  # cupy not installed (CI), or no NVRTC library
        pytest.skip(f"NVRTC through cupy not available here: {type(e).__name__}: {e}")


@pytest.mark.parametrize("source", sorted(set(kernels.SOURCE_OF.values())))
def test_sources_compile_with_nvrtc_as_the_backend_does(source):
    """The GPU path: the inlined source, the backend's options, name expressions (sm_90)."""
    nvrtc = _nvrtc()
    names = [n for k, n in host.all_kernel_names() if kernels.SOURCE_OF[k] == source]
    names = [n for n in names if not n.startswith("ttq_decode<") or re.search(r"<4, \d, 1, 0, 2>$", n)]
    prog = nvrtc.createProgram(kernels.source(source), source, [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, ["-arch=sm_90", *kernels.OPTIONS])
        except Exception as e:
            pytest.fail(f"NVRTC failed on {source}: {e}\n{nvrtc.getProgramLog(prog)[-3000:]}")
        assert len(nvrtc.getCUBIN(prog)) > 0
        for n in names:
            assert nvrtc.getLoweredName(prog, n).startswith("_Z")
    finally:
        nvrtc.destroyProgram(prog)
