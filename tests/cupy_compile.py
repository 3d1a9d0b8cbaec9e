"""Compile every CUDA kernel instantiation of the CuPy backend with nvcc and inspect the result.

    python tests/cupy_compile.py [--arch 80 86 89 90] [--out results/cupy]

For each architecture, one translation unit includes the backend's ``.cu`` sources and
takes the address of every instantiation the backend can launch (`host.all_kernel_names`),
then ``nvcc -cubin -arch=sm_XX -Xptxas -v`` compiles it (architectures in parallel).
``ptxas -v`` gives registers and spills per kernel, ``cuobjdump -sass`` the machine code,
read with the shared `ttqkern.backends.sass` module: the decode kernels' main loop (the
innermost loop issuing the most global loads) is measured -- load widths, tensor-core
and conversion instructions, SASS lanes per byte of codes, bytes in flight per SM.

Results are cached under ``$TTQKERN_NVCC_CACHE`` (default: the temp dir), keyed by a
hash of the sources, the instantiation list, the flags and nvcc's version, so a test
session compiles once.  ``--out`` writes ``resources.json`` and ``resources.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ttqkern.backends import sass  # noqa: E402
from ttqkern.backends.cupy import config, host  # noqa: E402
from ttqkern.backends.cupy import layout as L  # noqa: E402

CSRC = ROOT / "ttqkern" / "backends" / "cupy" / "csrc"
ARCHS = (80, 86, 89, 90)
NVCC_FLAGS = ("-std=c++17", "-cubin", "-Xptxas", "-v")
REG_LIMIT = 128  # registers per thread: above, fewer warps fit an SM than the decode design assumes


def nvcc() -> str | None:
    return os.environ.get("NVCC") or shutil.which("nvcc")


def translation_unit(names) -> str:
    """The .cu sources plus a reference to every instantiation (which makes nvcc compile it)."""
    refs = ",\n    ".join(f"(const void*)&{name}" for _, name in names)
    return (
        '#include "decode.cu"\n#include "prologue.cu"\n#include "requant.cu"\n'
        f"__attribute__((used)) static const void* const ttq_instances[] = {{\n    {refs}}};\n"
    )


def _key(names, arch: int) -> str:
    h = hashlib.sha256()
    for f in sorted(CSRC.glob("*.cu*")):
        h.update(f.name.encode() + f.read_bytes())
    ver = subprocess.run([nvcc(), "--version"], capture_output=True, text=True, check=True).stdout
    h.update(repr((names, arch, NVCC_FLAGS, ver)).encode())
    return h.hexdigest()[:20]


def compile_arch(arch: int, names, cache: Path) -> tuple[Path, str]:
    """``(cubin, ptxas log)`` for one architecture (from the cache when the key matches)."""
    key = _key(names, arch)
    cubin, log = cache / f"ttq_sm{arch}_{key}.cubin", cache / f"ttq_sm{arch}_{key}.log"
    if cubin.exists() and log.exists():
        return cubin, log.read_text()
    with tempfile.TemporaryDirectory() as d:
        tu = Path(d) / "ttq_all.cu"
        tu.write_text(translation_unit(names))
        out = Path(d) / "out.cubin"
        cmd = [nvcc(), *NVCC_FLAGS, f"-arch=sm_{arch}", f"-I{CSRC}", str(tu), "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed for sm_{arch}:\n{res.stderr[-4000:]}")
        tmp = cubin.with_suffix(f".{os.getpid()}.tmp")
        shutil.copy(out, tmp)
        log.write_text(res.stdout + res.stderr)
        tmp.replace(cubin)
    return cubin, log.read_text()


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled kernel name -> name expression (``ttq_decode<4, 0, 1, 0, 2>``) via c++filt."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if tool is None:
        raise RuntimeError("c++filt (binutils) is needed to read kernel names")
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    result = {}
    for mangled, plain in zip(names, out.splitlines(), strict=True):
        m = re.search(r"(ttq_\w+(?:<[^()]*>)?)\(", plain)
        result[mangled] = m.group(1) if m else plain
    return result


def decode_params(name: str) -> dict | None:
    m = re.fullmatch(r"ttq_decode<(\d+), (\d+), (\d+), (\d+), (\d+)>", name)
    return None if m is None else dict(zip(("bits", "xm", "nt", "tg", "rt"), map(int, m.groups()), strict=True))


def decode_main_loop(instrs: list[sass.Instr]) -> sass.LoopStats | None:
    """The decode kernel's K loop: the innermost loop issuing tensor-core instructions.

    (`sass.main_loop` ranks loops by their global loads; the epilogue's reduction loops
    issue more, smaller loads than the K loop, so the MMA decides here.)
    """
    loops = [sass.loop_stats(instrs, lp) for lp in sass.innermost_loops(instrs)]
    loops = [st for st in loops if st.families.get("MMA", 0) > 0]
    return max(loops, key=lambda st: st.instructions, default=None)


def decode_loop_figures(p: dict, st: sass.LoopStats | None, res: sass.Resources, arch: int) -> dict:
    """Main-loop figures of a decode kernel: one iteration is one chunk of KCH codes per warp."""
    if st is None:
        return {"main_loop": None}
    codes = p["rt"] * 16 * L.chunk_size(p["bits"])  # per warp and iteration
    code_bytes = codes * p["bits"] // 8
    # the block of a large layer's defaults: WR row warps x as many k-warps as fit 256 threads
    threads = 32 * config.MAX_WARPS
    resident = sass.occupancy(res.registers, 0, threads, arch)
    # in flight per SM at that occupancy: the chunk being computed and the next, per warp
    flight = resident * (threads // 32) * 2 * code_bytes
    return {
        "main_loop": st.as_dict(),
        "codes_per_iter": codes,
        "code_bytes_per_iter": code_bytes,
        "lanes_per_byte": round(sass.lanes_per_byte(st.instructions, 1, code_bytes), 2),
        "resident_ctas": resident,
        "bytes_in_flight_per_sm": flight,
    }


def inspect(archs=ARCHS, names=None, cache: Path | None = None, sass_archs=None) -> dict:
    """``{arch: {name expression: {...resources, decode loop figures}}}``.

    Registers and spills come from ``ptxas -v`` for every arch; the SASS (decode loop figures)
    is disassembled and read for ``sass_archs`` only (default: all; about 5 s per arch).
    """
    names = names or host.all_kernel_names()
    cache = Path(cache or os.environ.get("TTQKERN_NVCC_CACHE", Path(tempfile.gettempdir()) / "ttqkern-nvcc"))
    cache.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(archs), os.cpu_count() or 1)) as ex:
        built = dict(zip(archs, ex.map(lambda a: compile_arch(a, names, cache), archs), strict=True))
    report = {}
    for arch, (cubin, log) in built.items():
        res = sass.parse_ptxas_verbose(log)
        funcs = sass.parse_sass(sass.disassemble(cubin)) if sass_archs is None or arch in sass_archs else None
        plain = demangle(sorted(set(res) | set(funcs or ())))
        rows = {}
        for mangled, r in res.items():
            name = plain[mangled]
            row = {"registers": r.registers, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads,
                   "stack": r.stack, "shared_static": r.shared}  # fmt: skip
            p = decode_params(name)
            if p is not None and funcs is not None:
                row.update(decode_loop_figures(p, decode_main_loop(funcs.get(mangled, [])), r, arch))
            rows[name] = row
        report[arch] = rows
    return report


def markdown(report: dict) -> str:
    archs = sorted(report)
    names = sorted({n for a in archs for n in report[a]})
    lines = [
        "# CuPy backend: compiled kernels (nvcc, no GPU)",
        "",
        "Written by `python tests/cupy_compile.py --out results/cupy` (nvcc -cubin -Xptxas -v per",
        "architecture, SASS read with `ttqkern.backends.sass`).  regs / spill stores+loads (bytes) /",
        "static smem (bytes) per kernel and architecture.  Decode kernels: the main loop (one chunk of",
        "codes per warp) on sm_90: instructions, 128-bit loads, HMMA, I2F, SASS lanes per byte of codes,",
        "bytes in flight per SM for 256-thread blocks at the occupancy their registers allow",
        "(resident CTAs x 8 warps x 2 chunks: the chunk computed and the next one loading).",
        "Lanes per byte count the whole loop body, group-flush code included (it runs once per group).",
        "",
        "| kernel | " + " | ".join(f"sm_{a}" for a in archs) + " | loop instrs | LDG.128 | HMMA | I2F | lanes/B | KB in flight |",
        "|---|" + "---|" * len(archs) + "---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for n in names:
        cells = []
        for a in archs:
            r = report[a].get(n)
            cells.append(
                "-"
                if r is None
                else f"{r['registers']} / {r['spill_stores']}+{r['spill_loads']} / {r['shared_static']}"
            )
        d = report[max(archs)].get(n, {})
        ml = d.get("main_loop")
        if ml:
            fam = ml["families"]
            extra = [str(ml["instructions"]), str(ml["memory"].get("LDG.128", 0)), str(fam.get("MMA", 0)),
                     str(fam.get("I2F", 0)), f"{d['lanes_per_byte']:.2f}", f"{d['bytes_in_flight_per_sm'] / 1024:.0f}"]  # fmt: skip
        else:
            extra = [""] * 6
        lines.append(f"| `{n}` | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--out", type=Path, help="folder for resources.json and resources.md")
    args = ap.parse_args(argv)
    if nvcc() is None:
        print("nvcc not found: set $NVCC or put nvcc on PATH", file=sys.stderr)
        return 2
    report = inspect(tuple(args.arch))
    text = markdown(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "resources.json").write_text(json.dumps({f"sm_{a}": r for a, r in report.items()}, indent=1) + "\n")
        (args.out / "resources.md").write_text(text)
        print(f"wrote {args.out / 'resources.json'} and {args.out / 'resources.md'}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
