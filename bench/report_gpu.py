"""Markdown tables from the GPU benchmark JSON (bench/test_gpu_triton.py) or a tuning report.

    python bench/report_gpu.py results/bench/triton_h200.json [> table.md]
    python bench/report_gpu.py results/tune/h200.json          # python -m ttqkern.tune --gpu --report

Decode: per layer, bit width and T, TTQ fused (D, rank-16 low rank, bias), the packed
GEMM alone, the same math as separate torch ops, and cuBLAS fp16 ``F.linear``:
microseconds, % of the device's HBM roofline (catalog bandwidth) and speed relative to
fp16 (fp16 us / ours, > 1 means faster), CUDA-graph replay first.  Then requantization
per prompt and prefill TFLOP/s of both prefill paths against fp16.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

# run as a script from a checkout: the package beside bench/ renders the tuning table
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _f(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    if "command" in data and "tune" in data["command"]:
        from ttqkern.tune.tuner import report_markdown

        return report_markdown(data)
    rows = data["rows"]
    by = defaultdict(dict)  # (layer, bits, T) -> kernel -> row
    fp16 = {}  # (layer, T, kernel) -> row
    for r in rows:
        if r["kernel"].startswith("fp16-F.linear"):
            fp16[(r["layer"], r["T"], r["kernel"])] = r
        else:
            by[(r["layer"], r["bits"], r["T"])][r["kernel"]] = r
    cat = data.get("catalog") or {}
    out = [
        f"GPU benchmark on **{data['device']}** ({data['date']}; torch {data['versions']['torch']}, "
        f"triton {data['versions']['triton']}); {data['method']}; group {data['group_size']}, "
        f"low-rank r={data['rank']} + bias in the fused decode rows.  Roofline: {cat.get('hbm_gbps', '?')} GB/s HBM, "
        f"{cat.get('fp16_tflops', '?')} TFLOP/s fp16 (catalog).  vs fp16 = cuBLAS fp16 time / ours (> 1: faster).",
    ]
    for mode, suffix in (("replayed from CUDA graphs (GPU time)", "-graph"), ("called eagerly from Python", "")):
        out += ["", f"Decode (cold L2), {mode}:", "",
                "| layer | N x K | bits | T | TTQ fused us | % HBM | vs fp16 | plain us | r16 extras | torch-ops us | "
                "fp16 us | % HBM |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for (layer, bits, T), ks in by.items():
            fused = ks.get("ttq-fused" + suffix)
            if fused is None:
                continue
            plain, unf = ks.get("ttq-plain" + suffix), ks.get("ttq-unfused-torch-ops" + suffix)
            ref = fp16.get((layer, T, "fp16-F.linear" + suffix))
            extras = None if plain is None else 100 * (fused["us"] / plain["us"] - 1)
            out.append(
                f"| {layer} | {fused['N']} x {fused['K']} | {bits} | {T} | {_f(fused['us'])} | "
                f"{_f(fused.get('pct_hbm_roofline'))} | {_f(fused.get('vs_fp16'), '.2f')}x | {_f(plain and plain['us'])} | "
                f"{_f(extras)} % | {_f(unf and unf['us'])} | {_f(ref and ref['us'])} | "
                f"{_f(ref and ref.get('pct_hbm_roofline'))} |"
            )  # fmt: skip
    out += ["", "Requantization per prompt (act_scale over the prompt + quantize of the fp16 weight):", "",
            "| layer | bits | us | GB/s | % HBM | break-even decode tokens (T=1) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for (layer, bits, _T), ks in by.items():
        r = ks.get("ttq-requantize")
        if r:
            be = by.get((layer, bits, 1), {}).get("ttq-break-even", {}).get("break_even_tokens")
            out.append(f"| {layer} | {bits} | {_f(r['us'])} | {_f(r['GBps'], '.0f')} | "
                       f"{_f(r.get('pct_hbm_roofline'))} | {_f(be)} |")  # fmt: skip
    out += ["", "Prefill (TFLOP/s; vs fp16 = cuBLAS fp16 time / ours):", "",
            "| layer | T | bits | default path | default vs fp16 | kernel TFLOP/s | kernel vs fp16 | dequant+cuBLAS "
            "TFLOP/s | dequant vs fp16 | fp16 TFLOP/s | % fp16 peak |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (layer, bits, T), ks in by.items():
        d, k, q = ks.get("ttq-prefill"), ks.get("ttq-prefill-kernel"), ks.get("ttq-prefill-dequant")
        if d is None:
            continue
        ref = fp16.get((layer, T, "fp16-F.linear"))
        out.append(
            f"| {layer} | {T} | {bits} | {d.get('path')} | {_f(d.get('vs_fp16'), '.2f')}x | {_f(k and k['TFLOPs'])} | "
            f"{_f(k and k.get('vs_fp16'), '.2f')}x | {_f(q and q['TFLOPs'])} | {_f(q and q.get('vs_fp16'), '.2f')}x | "
            f"{_f(ref and ref['TFLOPs'])} | {_f(ref and ref.get('pct_fp16_peak'))} |"
        )  # fmt: skip
    if data.get("unavailable"):
        out += ["", "Peers not measured: " + "; ".join(f"{k} ({v})" for k, v in data["unavailable"].items())]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.stdout.write(report(sys.argv[1]))
