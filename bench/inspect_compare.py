"""Old vs new static figures of the main GEMM kernel per layer, bit width and token count.

    python bench/inspect_compare.py results/inspect/old_50f3d73_sm90.json results/inspect/h200_sm90.json \\
        > results/inspect/compare_h200_sm90.md

Inputs: the JSON of ``bench/inspect_old_kernels.py`` and of ``python -m
ttqkern.backends.triton.inspect``.  For each (N x K, bits, T) present in both: the
main kernel's lanes per weight byte, 8/16-bit and 128-bit global loads, barriers,
shuffles, int-to-float conversions and special-function ops in its main loop, spill
bytes and estimated weight KB in flight per SM, old -> new.  (T = 512 and 2048 in
the new run may take the dequantize + cuBLAS path, which has no main loop: the
prefill kernel at T = 128 is shown beside the old T = 512 GEMM.)
"""

from __future__ import annotations

import json
import sys

MAIN = ("_gemv_kernel", "_gemm_kernel", "_qdot_kernel")


def _main(row):
    return next((k for k in row["kernels"] if k["kernel"] in MAIN and k.get("main_loop")), None)


def _figs(k):
    lp = k["main_loop"]
    mem, fam = lp["memory"], lp["families"]
    narrow = sum(n for m, n in mem.items() if m in ("LDG.8", "LDG.16", "LDGSTS.8", "LDGSTS.16"))
    wide = mem.get("LDG.128", 0) + mem.get("LDGSTS.128", 0)
    infl = lp.get("weight_bytes_in_flight_per_sm")
    return {
        "kernel": k["kernel"].strip("_").replace("_kernel", ""),
        "lpb": lp.get("lanes_per_weight_byte"),
        "narrow": narrow,
        "wide": wide,
        "bar": fam.get("BAR", 0),
        "shfl": fam.get("SHFL", 0),
        "i2f": fam.get("I2F", 0),
        "mufu": fam.get("MUFU", 0),
        "spill": k["spill_bytes"],
        "kb": None if infl is None else round(infl / 1024, 1),
        "ipm": lp.get("instructions_per_mma"),
    }


def compare(old: dict, new: dict) -> str:
    new_rows = {(r["N"], r["K"], r["bits"], r["T"]): r for r in new["rows"]}
    out = [f"Main GEMM kernel, old (commit {old['commit']}, shipped {old['device']} configs) -> new "
           f"({new['device']} configs), {new['arch']}.  Commands: `{old['command']}`; `{new['command']}`.", "",
           "| N x K | b | T | kernel | lanes/B | 8/16-bit loads | 128-bit loads | BAR | SHFL | I2F | MUFU | spill B | "
           "KB in flight/SM | instr/MMA |", "|" + "---|" * 14]  # fmt: skip
    for r in old["rows"]:
        ko = _main(r)
        T_new = 128 if r["T"] >= 512 else r["T"]
        rn = new_rows.get((r["N"], r["K"], r["bits"], T_new))
        kn = rn and _main(rn)
        if ko is None or kn is None:
            continue
        a, b = _figs(ko), _figs(kn)
        cell = lambda f: f"{a[f] if a[f] is not None else '-'} -> {b[f] if b[f] is not None else '-'}"  # noqa: E731
        T = f"{r['T']} -> {T_new}" if T_new != r["T"] else r["T"]
        out.append(f"| {r['N']}x{r['K']} | {r['bits']} | {T} | {a['kernel']} -> {b['kernel']} | {cell('lpb')} | "
                   f"{cell('narrow')} | {cell('wide')} | {cell('bar')} | {cell('shfl')} | {cell('i2f')} | {cell('mufu')} | "
                   f"{cell('spill')} | {cell('kb')} | {cell('ipm')} |")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f, open(sys.argv[2]) as g:
        sys.stdout.write(compare(json.load(f), json.load(g)))
