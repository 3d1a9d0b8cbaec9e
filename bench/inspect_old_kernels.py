"""Static figures of the Triton kernels as they stood at an older commit (the baseline of issue 13).

    python bench/inspect_old_kernels.py --commit 50f3d73 --arch sm_90 --device h200 \\
        --json results/inspect/old_50f3d73_sm90.json --md results/inspect/old_50f3d73_sm90.md

Checks the commit out into a temporary git worktree, runs *its* ``qmatmul`` host code
with *its* shipped configs for ``--device`` (and the catalog's SM count), compiles each
launch as the JIT would with this checkout's `ttqkern.backends.triton.aot`, and reads the
SASS with this checkout's `ttqkern.backends.sass` -- the same method as
``python -m ttqkern.backends.triton.inspect``, so old and new figures compare.  Weight
bytes per main-loop iteration of the old kernels: ``BLOCK_N x BLOCK_K x b / 8``.
Needs TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(4096, 4096), (12288, 4096), (4096, 12288), (8192, 5120), (25600, 5120), (5120, 25600)]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commit", default="50f3d73")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--device", default="h200")
    p.add_argument("--bits", default="4,3")
    p.add_argument("--T", default="1,16,512")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(argv)
    # this checkout's tools, under names that cannot clash with the old package
    sass = _load("_new_sass", ROOT / "ttqkern" / "backends" / "sass.py")
    aot = _load("_new_aot", ROOT / "ttqkern" / "backends" / "triton" / "aot.py")
    devices = _load("_new_devices", ROOT / "ttqkern" / "tuning" / "devices.py")
    dev = next(d for d in devices.CATALOG if d.slug == args.device)
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.commit], check=True,
                       capture_output=True)  # fmt: skip
        try:
            rows = _inspect(wt, sass, aot, dev, args)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    summary = {
        "command": "python bench/inspect_old_kernels.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "commit": args.commit, "arch": args.arch, "device": args.device, "sms": dev.sms, "clock_ghz": dev.clock_mhz / 1000,
        "rows": rows,
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    md = _markdown(summary)
    if args.md:
        args.md.write_text(md)
    print(md)
    return 0


def _inspect(wt: Path, sass, aot, dev, args) -> list[dict]:
    sys.path.insert(0, str(wt))
    for m in [m for m in sys.modules if m == "ttqkern" or m.startswith("ttqkern.")]:
        del sys.modules[m]
    from ttqkern.backends.triton import config as old_config  # the old package, from the worktree
    from ttqkern.format import PackedWeight

    assert str(wt) in old_config.__file__, old_config.__file__
    old_config._slug = lambda device: args.device  # its shipped tuned file for that device
    old_config._num_sms = lambda device: dev.sms
    qm = importlib.import_module("ttqkern.backends.triton.qmatmul")
    target = aot.parse_target(args.arch)
    cap = target.arch
    from triton.backends.nvidia.compiler import get_ptxas

    rows = []
    for N, K in SHAPES:
        for b in (int(v) for v in args.bits.split(",")):
            for T in (int(v) for v in args.T.split(",")):
                G = K // 128
                qw = torch.zeros(N, K * (2 if b == 3 else b) // 8, dtype=torch.uint8)
                hi = torch.zeros(N, K // 8, dtype=torch.uint8) if b == 3 else None
                pw = PackedWeight(qweight=qw, qweight_hi=hi, scales=torch.ones(N, G), mins=torch.zeros(N, G),
                                  bits=b, group_size=128, shape=(N, K))  # fmt: skip
                x = torch.zeros(T, K, dtype=torch.float16)
                A, B = torch.zeros(16, K, dtype=torch.float16), torch.zeros(N, 16, dtype=torch.float16)
                with aot.capture(target) as launches:
                    qm.qmatmul(x, pw, torch.ones(K), A, B, torch.zeros(N, dtype=torch.float16), False)
                kernels = []
                for lc in launches:
                    sm = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
                    rep = next(iter(sass.inspect_cubin(lc.asm("cubin"), ptx=lc.asm("ptx"), arch=sm,
                                                      ptxas=get_ptxas(cap).path, ptxas_flags=("--regAllocOptLevel=2",),
                                                      prefer="MMA").values()))  # fmt: skip
                    c = lc.constexprs
                    k = {"kernel": lc.kernel, "ctas": lc.ctas, "num_warps": lc.num_warps,
                         "registers": rep.resources.registers, "spill_bytes": rep.resources.spills,
                         "shared_bytes": lc.shared, "main_loop": None}  # fmt: skip
                    if rep.main is not None and lc.kernel in ("_gemv_kernel", "_gemm_kernel"):
                        wb = c["BLOCK_N"] * c["BLOCK_K"] * b / 8
                        lpb = sass.lanes_per_byte(rep.main.instructions, lc.num_warps, wb)
                        res = sass.occupancy(rep.resources.registers, lc.shared, lc.num_warps * 32, cap)
                        mma = rep.main.families["MMA"]
                        k["main_loop"] = {**rep.main.as_dict(), "weight_bytes_per_iter": wb,
                                          "lanes_per_weight_byte": round(lpb, 2),
                                          "issue_ceiling_GBps": round(sass.issue_ceiling_gbps(lpb, dev.sms,
                                                                                              dev.clock_mhz / 1000, cap)),
                                          "weight_bytes_in_flight_per_sm": sass.bytes_in_flight_per_sm(
                                              lc.ctas, dev.sms, res, wb),
                                          "instructions_per_mma": round(rep.main.instructions / mma, 1) if mma else None,
                                          "tile": f"{c['BLOCK_N']}x{c['BLOCK_K']}"}  # fmt: skip
                    kernels.append(k)
                rows.append({"N": N, "K": K, "bits": b, "T": T, "launches_per_call": len(launches), "kernels": kernels})
                print(f"{N}x{K} b{b} T={T}: {', '.join(k['kernel'] for k in kernels)}", flush=True)
    return rows


def _markdown(summary: dict) -> str:
    out = [f"Static figures of the Triton kernels at commit **{summary['commit']}** for **{summary['arch']}** with "
           f"the **{summary['device']}**'s shipped configs ({summary['sms']} SMs, {summary['clock_ghz']} GHz).", "",
           f"Command: `{summary['command']}`", "",
           "| N x K | b | T | launches | kernel | tile | CTAs | warps | regs | spill B | loop instr | loads in loop | "
           "BAR | SHFL | I2F | MUFU | MMA | lanes/B | instr/MMA | issue GB/s | KB in flight/SM |",
           "|" + "---|" * 21]  # fmt: skip
    for r in summary["rows"]:
        for k in r["kernels"]:
            lp = k["main_loop"]
            if lp is None:
                continue
            f = lp["families"]
            mem = " ".join(f"{m}x{n}" for m, n in sorted(lp["memory"].items()) if m.startswith(("LDG", "LDGSTS")))
            out.append(f"| {r['N']}x{r['K']} | {r['bits']} | {r['T']} | {r['launches_per_call']} | {k['kernel']} | "
                       f"{lp['tile']} | {k['ctas']} | {k['num_warps']} | {k['registers']} | {k['spill_bytes']} | "
                       f"{lp['instructions']} | {mem} | {f['BAR']} | {f['SHFL']} | {f['I2F']} | {f['MUFU']} | {f['MMA']} | "
                       f"{lp['lanes_per_weight_byte']} | {lp['instructions_per_mma'] or '-'} | {lp['issue_ceiling_GBps']} | "
                       f"{round(lp['weight_bytes_in_flight_per_sm'] / 1024, 1)} |")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
