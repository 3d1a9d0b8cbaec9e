"""Static performance figures and gates of the Triton kernels, from their machine code, without a GPU.

    python -m ttqkern.backends.triton.inspect --arch sm_90 --device h200 \\
        --shapes qwen3-8b,qwen3-32b --bits 4 --T 1,16,128,2048 --configs shipped,default \\
        --json results/inspect/h200_sm90.json --md results/inspect/h200_sm90.md --dump /tmp/sass

For every (config set, layer shape, bit width, token count) it runs the
backend's own ``qmatmul`` host code (x fp16, D, rank-16 low-rank, bias: TTQ as
it runs) with every launch compiled for the target as the JIT would
(`aot.capture`) and the device's SM count (``--device``, from the catalog), and
reads the SASS (`ttqkern.backends.sass`).  Per kernel launch: grid, warps,
registers, spills, shared memory, resident CTAs per SM, the main loop's
instructions, its load widths and BAR / SHFL / I2F / MUFU / MMA counts, the
weight bytes it consumes per iteration, SASS lanes per weight byte, the issue-rate
ceiling in GB/s, and the estimated weight bytes in flight per SM.  ``--gates``
checks the limits of `GATES` (issue 13) and exits 1 when one fails.

``--configs``: ``shipped`` uses the tuned entries shipped for ``--device``
(``ttqkern/tuning/configs/<device>.json``; a user's own tuned file is ignored),
``default`` the untuned defaults.  ``--dump DIR`` writes each kernel's SASS,
PTX and TTGIR there.  Needs TRITON_INTERPRET unset and triton's bundled CUDA
tools (cuobjdump, ptxas).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import sass

SHAPES = {  # nn.Linear weights [N, K]: q_proj, gate/up (fused), down
    "qwen3-8b": [(4096, 4096), (12288, 4096), (4096, 12288)],
    "qwen3-32b": [(8192, 5120), (25600, 5120), (5120, 25600)],
}
RANK = 16  # the low-rank part of TTQ as it runs (``--rank``)
GROUP = 128

# (limit, description) per gate; checked by `gate_failures`
GATES = {
    "decode1_4bit": "T = 1, 4-bit: weight loads 128-bit, no 8/16-bit loads, no BAR/SHFL/I2F/MUFU in the main loop, "
    "<= 10 lanes per weight byte, no spills, >= 30 KB of weight bytes in flight per SM, <= 2 launches",
    "decode16": "T = 16, 4-bit: no spills, <= 14 lanes per weight byte",
    "prefill": "prefill: no spills; instructions per tensor-core op reported",
}
MAX_LANES_T1 = 10.0
MAX_LANES_T16 = 14.0
MIN_INFLIGHT_T1 = 30 * 1024


@dataclass(frozen=True)
class Case:
    configs: str  # "shipped" | "default"
    N: int
    K: int
    bits: int
    T: int

    def label(self) -> str:
        return f"{self.configs} {self.N}x{self.K} b{self.bits} T={self.T}"


def _weight_bytes_per_iter(kernel: str, c: dict, num_warps: int) -> float | None:
    """Weight bytes the CTA consumes per main-loop iteration (kernel knowledge; None: not a weight stream)."""
    if kernel == "_gemv_kernel":
        words = c["WCH0"] + (c["WCH1"] if c["B1"] else 0)
        return c["ROWS"] * c["NW"] * 32 * words * 4
    if kernel == "_qdot_kernel":
        return c["BLOCK_N"] * (c["WPC0"] + (c["WPC1"] if c["B1"] else 0)) * 4
    if kernel == "_dequant_kernel":  # one chunk per program, no loop: per program
        return c["BLOCK_N"] * (c["WPC0"] + (c["WPC1"] if c["B1"] else 0)) * 4
    return None


def _stages(kernel: str, c: dict, options: dict) -> int:
    if kernel == "_gemv_kernel":
        return 1 + int(c["PREFETCH"])
    if kernel == "_qdot_kernel":
        return max(1, int(options.get("num_stages", 1)))
    return 1


_reports: dict = {}  # (cubin hash, arch, ptxas flags) -> sass.KernelReport


def analyse_launch(lc, arch: str, sms: int, clock_ghz: float, dump: Path | None, tag: str) -> dict:
    """The figures of one captured launch (see the module docstring)."""
    from triton.backends.nvidia.compiler import get_ptxas

    from . import aot

    cubin, ptx = lc.asm("cubin"), lc.asm("ptx")
    cap = int(re.sub(r"\D", "", arch))
    sm_arch = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
    flags = aot.ptxas_flags(lc)
    key = (hashlib.sha256(cubin).hexdigest(), sm_arch, flags)
    kr = _reports.get(key)
    if kr is None:  # shapes and config sets share compiled kernels: disassemble each once
        rep = sass.inspect_cubin(cubin, ptx=ptx, arch=sm_arch, ptxas=get_ptxas(cap).path, ptxas_flags=flags,
                                 prefer="MMA")  # fmt: skip
        kr = _reports[key] = next(iter(rep.values()))
    res = kr.resources
    warps = lc.num_warps
    resident = sass.occupancy(res.registers, lc.shared, warps * 32, cap)
    c = lc.constexprs
    wb = _weight_bytes_per_iter(lc.kernel, c, warps)
    main = kr.main
    out = {
        "kernel": lc.kernel,
        "grid": list(lc.grid),
        "ctas": lc.ctas,
        "num_warps": warps,
        "num_stages": lc.options.get("num_stages"),
        "constexprs": {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in c.items()},
        "registers": res.registers,
        "spill_bytes": res.spills,
        "stack_bytes": res.stack,
        "shared_bytes": lc.shared,
        "resident_ctas_per_sm": resident,
        "kernel_instructions": kr.instructions,
        "main_loop": None,
    }
    if main is not None:
        loop = main.as_dict()
        loop["weight_bytes_per_iter"] = wb
        if wb and lc.kernel != "_dequant_kernel":
            lpb = sass.lanes_per_byte(main.instructions, warps, wb)
            loop["lanes_per_weight_byte"] = round(lpb, 2)
            loop["issue_ceiling_GBps"] = round(sass.issue_ceiling_gbps(lpb, sms, clock_ghz, cap), 0)
            stages = _stages(lc.kernel, c, lc.options)
            loop["stages_in_flight"] = stages
            loop["weight_bytes_in_flight_per_sm"] = sass.bytes_in_flight_per_sm(lc.ctas, sms, resident, wb, stages)
        mma = main.families.get("MMA", 0)
        loop["instructions_per_mma"] = round(main.instructions / mma, 1) if mma else None
        out["main_loop"] = loop
    if lc.kernel == "_dequant_kernel" and wb:
        out["lanes_per_weight_byte_whole_program"] = round(sass.lanes_per_byte(kr.instructions, warps, wb), 2)
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)  # (the disassembly is redone here: dumping is not the fast path)
        stem = dump / f"{tag}.{lc.kernel}"
        stem.with_suffix(".sass").write_text(sass.disassemble(cubin))
        stem.with_suffix(".ptx").write_text(ptx)
        stem.with_suffix(".ttgir").write_text(lc.asm("ttgir"))
        out["dump"] = str(stem)
    return out


@contextlib.contextmanager
def _config_set(name: str, slug: str):
    """The `config` state of a config set: the catalog device, and its shipped entries or none."""
    from ...tuning import devices, store
    from . import config

    with contextlib.ExitStack() as stack:
        stack.enter_context(config.device_override(devices.BY_SLUG[slug]))
        if name == "default":
            stack.enter_context(config.defaults_only())
        else:  # only the package's shipped file: point the user directory at an empty one
            import tempfile

            empty = stack.enter_context(tempfile.TemporaryDirectory())
            old = os.environ.get("TTQKERN_CONFIG_DIR")
            os.environ["TTQKERN_CONFIG_DIR"] = empty
            store.load.cache_clear()
            stack.callback(store.load.cache_clear)
            stack.callback(lambda: os.environ.pop("TTQKERN_CONFIG_DIR") if old is None else os.environ.update(
                TTQKERN_CONFIG_DIR=old))  # fmt: skip
        yield


def _inputs(case: Case, rank: int = RANK):
    """Tensors of the call (values never matter: nothing is launched)."""
    from ...format import PackedWeight, num_groups, packed_bytes

    N, K, b = case.N, case.K, case.bits
    G = num_groups(K, GROUP)
    Kp = G * GROUP
    qw = torch.zeros(N, packed_bytes(Kp, 2 if b == 3 else b), dtype=torch.uint8)
    hi = torch.zeros(N, packed_bytes(Kp, 1), dtype=torch.uint8) if b == 3 else None
    pw = PackedWeight(qweight=qw, qweight_hi=hi, scales=torch.ones(N, G), mins=torch.zeros(N, G), bits=b,
                      group_size=GROUP, shape=(N, K))  # fmt: skip
    x = torch.zeros(case.T, K, dtype=torch.float16)
    D = torch.ones(K)
    A = torch.zeros(rank, K, dtype=torch.float16) if rank else None
    B = torch.zeros(N, rank, dtype=torch.float16) if rank else None
    bias = torch.zeros(N, dtype=torch.float16)
    return x, pw, D, A, B, bias


def inspect_case(case: Case, target, arch: str, slug: str, sms: int, clock: float, dump: Path | None,
                 rank: int = RANK) -> dict:  # fmt: skip
    """Compile one qmatmul call for ``target`` and analyse each launch."""
    import importlib

    from . import aot

    qm = importlib.import_module("ttqkern.backends.triton.qmatmul")
    x, pw, D, A, B, bias = _inputs(case, rank)
    with _config_set(case.configs, slug), aot.capture(target) as launches:
        qm.qmatmul(x, pw, D, A, B, bias, False)
    tag = f"{case.configs}_{case.N}x{case.K}_b{case.bits}_T{case.T}"
    kernels = [analyse_launch(lc, arch, sms, clock, dump, f"{tag}.{i}") for i, lc in enumerate(launches)]
    extra = 1 if any(k["kernel"] == "_dequant_kernel" for k in kernels) else 0  # + cuBLAS
    return {**case.__dict__, "launches_per_call": len(kernels) + extra, "kernels": kernels}


def gate_failures(row: dict) -> list[str]:
    """The gates of `GATES` this row (one qmatmul call) violates, as readable reasons."""
    fails = []
    T, bits = row["T"], row["bits"]
    for k in row["kernels"]:
        if k["spill_bytes"] > 0 and k["kernel"] in ("_gemv_kernel", "_qdot_kernel"):
            fails.append(f"{k['kernel']}: {k['spill_bytes']} B of spills")
    main = next((k for k in row["kernels"] if k["kernel"] in ("_gemv_kernel", "_qdot_kernel")), None)
    if T == 1 and bits == 4:
        if row["launches_per_call"] > 2:
            fails.append(f"{row['launches_per_call']} launches per call (at most 2)")
        if main is None or main["main_loop"] is None:
            return [*fails, "no main loop found"]
        lp = main["main_loop"]
        mem, fam = lp["memory"], lp["families"]
        narrow = {m: n for m, n in mem.items() if m in ("LDG.8", "LDG.16", "LDGSTS.8", "LDGSTS.16")}
        if narrow:
            fails.append(f"8/16-bit global loads in the loop: {narrow}")
        if mem.get("LDG.128", 0) + mem.get("LDGSTS.128", 0) == 0:
            fails.append("no 128-bit weight loads in the loop")
        for f in ("BAR", "SHFL", "I2F", "MUFU"):
            if fam.get(f, 0):
                fails.append(f"{fam[f]} {f} in the loop")
        if lp.get("lanes_per_weight_byte", math.inf) > MAX_LANES_T1:
            fails.append(f"{lp.get('lanes_per_weight_byte')} lanes per weight byte (at most {MAX_LANES_T1})")
        if lp.get("weight_bytes_in_flight_per_sm", 0) < MIN_INFLIGHT_T1:
            fails.append(f"{lp.get('weight_bytes_in_flight_per_sm')} B in flight per SM (at least {MIN_INFLIGHT_T1})")
    if T == 16 and bits == 4:
        if main is None or main["main_loop"] is None:
            return [*fails, "no main loop found"]
        lpb = main["main_loop"].get("lanes_per_weight_byte", math.inf)
        if lpb > MAX_LANES_T16:
            fails.append(f"{lpb} lanes per weight byte at T = 16 (at most {MAX_LANES_T16})")
    return fails


def _fmt_mem(mem: dict) -> str:
    keep = {k: v for k, v in sorted(mem.items()) if k.startswith(("LDG", "LDGSTS", "LDS", "LDSM", "STS"))}
    return " ".join(f"{k}x{v}" for k, v in keep.items()) or "-"


def markdown(summary: dict) -> str:
    """The table of a summary (one row per kernel launch)."""
    out = [f"Static figures of the Triton kernels for **{summary['arch']}** with the **{summary['device']}**'s "
           f"configs ({summary['sms']} SMs, {summary['clock_ghz']} GHz), triton {summary['triton']}.", "",
           f"Command: `{summary['command']}`", "",
           "| configs | N x K | b | T | kernel | grid | warps | regs | spill B | smem B | CTAs/SM | loop instr | "
           "loads in loop | BAR | SHFL | I2F | MUFU | MMA | lanes/B | instr/MMA | issue GB/s | KB in flight/SM | gates |",
           "|" + "---|" * 23]  # fmt: skip
    for row in summary["rows"]:
        fails = gate_failures(row)
        for k in row["kernels"]:
            lp = k["main_loop"] or {}
            fam = lp.get("families", {})
            infl = lp.get("weight_bytes_in_flight_per_sm")
            gate = "-" if k["kernel"] not in ("_gemv_kernel", "_qdot_kernel") else ("FAIL" if fails else "ok")
            out.append(
                f"| {row['configs']} | {row['N']}x{row['K']} | {row['bits']} | {row['T']} | {k['kernel']} | "
                f"{k['ctas']} | {k['num_warps']} | {k['registers']} | {k['spill_bytes']} | {k['shared_bytes']} | "
                f"{k['resident_ctas_per_sm']} | {lp.get('instructions', '-')} | {_fmt_mem(lp.get('memory', {}))} | "
                f"{fam.get('BAR', '-')} | {fam.get('SHFL', '-')} | {fam.get('I2F', '-')} | {fam.get('MUFU', '-')} | "
                f"{fam.get('MMA', '-')} | {lp.get('lanes_per_weight_byte', '-')} | {lp.get('instructions_per_mma') or '-'} | "
                f"{lp.get('issue_ceiling_GBps', '-')} | {'-' if infl is None else round(infl / 1024, 1)} | {gate} |"
            )  # fmt: skip
    fails = [(r, gate_failures(r)) for r in summary["rows"]]
    bad = [f"- {r['configs']} {r['N']}x{r['K']} b{r['bits']} T={r['T']}: {'; '.join(f)}" for r, f in fails if f]
    out += ["", "Gates: " + ("all hold." if not bad else "failures:"), *bad]
    out += ["", "Gate definitions:", *[f"- {v}" for v in GATES.values()]]
    return "\n".join(out) + "\n"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in SHAPES:
            out += SHAPES[item]
        elif "x" in item:
            n, k = item.split("x")
            out.append((int(n), int(k)))
        else:
            raise argparse.ArgumentTypeError(f"--shapes: {item!r} is neither NxK nor one of {', '.join(SHAPES)}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttqkern.backends.triton.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=None, help="sm_90, sm_80, ... (default: the --device's architecture)")
    p.add_argument("--device", default="h200", help="catalog device whose SM count, clock and shipped configs apply")
    p.add_argument("--shapes", type=_shapes, default=SHAPES["qwen3-8b"] + SHAPES["qwen3-32b"],
                   help="NxK and/or presets " + ", ".join(SHAPES) + " (default both)")  # fmt: skip
    p.add_argument("--bits", type=_ints, default=[4], help="bit widths (default 4)")
    p.add_argument("--T", type=_ints, default=[1, 16], help="token counts (default 1,16)")
    p.add_argument("--configs", default="shipped,default", help="shipped and/or default (default both)")
    p.add_argument("--rank", type=int, default=RANK, help=f"low-rank r of the call (default {RANK}; 0: none)")
    p.add_argument("--json", type=Path, default=None, help="write the full figures here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--dump", type=Path, default=None, help="write SASS / PTX / TTGIR of every kernel here")
    p.add_argument("--gates", action="store_true", help="exit 1 when a gate fails")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prog = "python -m ttqkern.backends.triton.inspect"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print(f"{prog}: error: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    for tool in ("cuobjdump", "ptxas"):
        if sass.find_tool(tool) is None:
            print(f"{prog}: error: {tool} not found (triton bundles it; or set $TTQKERN_CUDA_BIN)", file=sys.stderr)
            return 2
    import triton

    from ...tuning import devices
    from . import aot

    dev = next((d for d in devices.CATALOG if d.slug == args.device), None)
    if dev is None or not dev.sms or not dev.clock_mhz:
        print(
            f"{prog}: error: --device {args.device!r}: not in the catalog with an SM count and clock", file=sys.stderr
        )
        return 2
    args.arch = args.arch or dev.target
    target = aot.parse_target(args.arch)
    if target.backend != "cuda":
        print(f"{prog}: error: --arch {args.arch}: SASS inspection is for NVIDIA targets", file=sys.stderr)
        return 2
    config_sets = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not set(config_sets) <= {"shipped", "default"}:
        print(f"{prog}: error: --configs: shipped and/or default", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = []
    for cs in config_sets:
        for N, K in args.shapes:
            for b in args.bits:
                for T in args.T:
                    case = Case(cs, N, K, b, T)
                    rows.append(inspect_case(case, target, args.arch, dev.slug, dev.sms, dev.clock_mhz / 1000, args.dump,
                                             args.rank))  # fmt: skip
                    print(f"{case.label()}: {', '.join(k['kernel'] for k in rows[-1]['kernels'])}", flush=True)
    summary = {
        "command": f"{prog} " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "arch": args.arch,
        "device": args.device,
        "sms": dev.sms,
        "clock_ghz": dev.clock_mhz / 1000,
        "triton": triton.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
        "gates": GATES,
        "rows": rows,
    }
    table = markdown(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table)
    print(table)
    failed = [r for r in rows if gate_failures(r)]
    return 1 if (args.gates and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
