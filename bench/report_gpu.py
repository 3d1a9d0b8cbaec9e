"""Markdown tables from the GPU benchmark JSON (bench/test_gpu_triton.py) or a tuning report.

    python bench/report_gpu.py results/bench/triton_h200.json [> table.md]
    python bench/report_gpu.py results/tune/h200.json          # python -m ttqkern.tune --gpu --report

Decode: per layer, bit width and T, the fused TTQ kernel, the same math as separate
torch ops around the packed GEMM, and cuBLAS fp16 ``F.linear``: microseconds, % of
the device's HBM roofline (catalog bandwidth) and speed relative to fp16 (fp16 us /
ours, > 1 means faster than fp16).  Then requantization per 512-token prompt and
prefill TFLOP/s against fp16.
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
    fp16 = {}  # (layer, T) -> row
    for r in rows:
        if r["kernel"] == "fp16-F.linear":
            fp16[(r["layer"], r["T"])] = r
        elif r["kernel"] == "fp16-F.linear-graph":
            fp16[(r["layer"], r["T"] + 0.5)] = r  # the graph-replay twin of the row above
        else:
            by[(r["layer"], r["bits"], r["T"])][r["kernel"]] = r
    cat = data.get("catalog") or {}
    header = [
        "| layer | N x K | bits | T | TTQ fused us | % HBM | torch-ops TTQ us | fused speed-up | fp16 us | % HBM | fp16 / fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out = [
        f"GPU benchmark on **{data['device']}** ({data['date']}; torch {data['versions']['torch']}, "
        f"triton {data['versions']['triton']}); {data['method']}; group {data['group_size']}, "
        f"low-rank r={data['rank']} + bias in the decode rows.  Roofline: {cat.get('hbm_gbps', '?')} GB/s HBM, "
        f"{cat.get('fp16_tflops', '?')} TFLOP/s fp16 (catalog).",
        "",
        "Decode (cold L2), called eagerly from Python:",
        "",
        *header,
    ]
    graph_rows = []
    for (layer, bits, T), ks in by.items():
        fused, unf = ks.get("ttq-fused"), ks.get("ttq-unfused-torch-ops")
        if fused is None:
            continue
        ref = fp16.get((layer, T))
        out.append(
            f"| {layer} | {fused['N']} x {fused['K']} | {bits} | {T} | {_f(fused['us'])} | "
            f"{_f(fused.get('pct_hbm_roofline'))} | {_f(unf and unf['us'])} | "
            f"{_f(unf and unf['us'] / fused['us'], '.2f')}x | {_f(ref and ref['us'])} | "
            f"{_f(ref and ref.get('pct_hbm_roofline'))} | {_f(ref and ref['us'] / fused['us'], '.2f')}x |"
        )
        fg, ug, rg = ks.get("ttq-fused-graph"), ks.get("ttq-unfused-torch-ops-graph"), fp16.get((layer, T + 0.5))
        if fg is not None:
            graph_rows.append(
                f"| {layer} | {fg['N']} x {fg['K']} | {bits} | {T} | {_f(fg['us'])} | {_f(fg.get('pct_hbm_roofline'))} | "
                f"{_f(ug and ug['us'])} | {_f(ug and ug['us'] / fg['us'], '.2f')}x | {_f(rg and rg['us'])} | "
                f"{_f(rg and rg.get('pct_hbm_roofline'))} | {_f(rg and rg['us'] / fg['us'], '.2f')}x |"
            )
    if graph_rows:
        out += ["", "Decode replayed from CUDA graphs (GPU time, no host launch overhead):", "", *header]
        out += graph_rows
    out += ["", "Requantization per prompt (act_scale over 512 tokens + quantize of the fp16 weight):", "",
            "| layer | bits | us | GB/s | % HBM |", "|---|---|---|---|---|"]  # fmt: skip
    for (layer, bits, _T), ks in by.items():
        r = ks.get("ttq-requantize")
        if r:
            out.append(
                f"| {layer} | {bits} | {_f(r['us'])} | {_f(r['GBps'], '.0f')} | {_f(r.get('pct_hbm_roofline'))} |"
            )
    out += ["", "Prefill:", "", "| layer | T | bits | TTQ us | TFLOP/s | % fp16 peak | fp16 us | fp16 TFLOP/s |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (layer, bits, T), ks in by.items():
        r = ks.get("ttq-gemm")
        if r:
            ref = fp16.get((layer, T))
            out.append(
                f"| {layer} | {T} | {bits} | {_f(r['us'])} | {_f(r['TFLOPs'])} | {_f(r.get('pct_fp16_peak'))} | "
                f"{_f(ref and ref['us'])} | {_f(ref and ref['TFLOPs'])} |"
            )
    if data.get("unavailable"):
        out += ["", "Peers not measured: " + "; ".join(f"{k} ({v})" for k, v in data["unavailable"].items())]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.stdout.write(report(sys.argv[1]))
