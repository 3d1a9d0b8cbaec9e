"""``python -m ttqkern.eval.shift``: the domain-shift matrix, TTQ against AWQ calibrated in and out of domain.

The paper's claim: activation-aware quantization calibrated offline (AWQ) degrades
when the prompts come from another domain than its calibration text, while TTQ,
which takes its scales from each prompt, does not.  This command calibrates AWQ on
each domain's *validation* split and evaluates every AWQ model on every domain's
*test* split (the matrix), beside TTQ (ranks ``--ttq-ranks``, no calibration), RTN and
fp, for each bit width and group size.  Every cell keeps its per-window NLLs; every
comparison is a paired bootstrap interval over the same windows (`ttqkern.eval.stats`).

Writes ``PREFIX.md``, ``PREFIX.json`` and ``PREFIX.png`` (perplexity ratio to fp per
test domain: AWQ in-domain vs shifted vs TTQ).  Cells are appended to
``PREFIX.cells.jsonl`` window by window as they finish; a re-run with the same
settings skips what is saved, so a long run can be stopped and resumed, or extended
with more ``--windows`` (the spread windows of n are among those of 2n).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .. import data, defaults, records
from ..threads import set_threads
from . import args as A
from .methods import quantized_copy
from .models import in_features, load_causal_lm
from .perplexity import exp_nll, perplexity
from .stats import Interval, bootstrap_mean, fmt_percent, fmt_ppl, paired_difference
from .windows import calibration_batches, token_ids, window_starts, windows

PROG = "python -m ttqkern.eval.shift"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    p.add_argument("--domains", default=",".join(data.domains()),
                   help=f"comma list of {', '.join(data.domains())} (default all)")  # fmt: skip
    p.add_argument("--bits", type=A.bit_widths, default="3,4", help="bit widths (default 3,4)")
    p.add_argument("--group-size", type=A.group_sizes, default="64,128",
                   help="group sizes; those that do not divide every layer's input size are skipped (default 64,128)")  # fmt: skip
    p.add_argument("--ttq-ranks", type=A.int_list("--ttq-ranks", minimum=0), default="0,16",
                   help="TTQ low ranks (default 0,16)")  # fmt: skip
    p.add_argument("--methods", default="fp,rtn,awq,ttq",
                   help="evaluate only these of fp, rtn, awq, ttq (default all; the report needs all)")  # fmt: skip
    p.add_argument("--windows", type=int, default=32,
                   help="windows per test split, spread over it (default 32; 0 = the whole split)")  # fmt: skip
    p.add_argument("--seqlen", type=int, default=512, help="window length (default 512)")
    p.add_argument("--calib-tokens", type=int, default=2048,
                   help="AWQ calibration tokens from the start of each validation split (default 2048)")  # fmt: skip
    p.add_argument("--backend", default="auto", help="ttqkern backend (default auto)")
    A.add_threads(p)
    p.add_argument("--out", default="results/quality/shift", help="output prefix (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no per-window progress bars")
    return p


def parse_args(argv):
    p = build_parser()
    a = p.parse_args(argv)
    a.domains = [d.strip() for d in a.domains.split(",") if d.strip()]
    unknown = [d for d in a.domains if d not in data.domains()]
    if unknown or len(a.domains) < 2:
        p.error(f"--domains: need two or more of {', '.join(data.domains())}, got {a.domains}")
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not a.methods or any(m not in ("fp", "rtn", "awq", "ttq") for m in a.methods):
        p.error(f"--methods: a comma list of fp, rtn, awq, ttq, got {a.methods}")
    if a.group_size == "auto":
        p.error("--group-size takes explicit sizes here (the matrix skips those the model's dims do not allow)")
    A.check_positive(p, windows=(a.windows, 0), seqlen=(a.seqlen, 2), calib_tokens=(a.calib_tokens, 1),
                     threads=(a.threads, 1))  # fmt: skip
    A.check_backend(p, a.backend)
    A.check_model(p, a.model)
    return a


def models(a, groups) -> list[dict]:
    """Every model variant of the matrix, as a key dict; fp first, then per bits and group."""
    out = [{"method": "fp", "r": None, "bits": None, "group_size": None, "calib": None}]
    for b in a.bits:
        for g in groups:
            out.append({"method": "rtn", "r": 0, "bits": b, "group_size": g, "calib": None})
            # TTQ's hyper-parameters are part of its key: saved windows of other values are not reused
            hp = {"alpha": defaults.ALPHA, "lam": defaults.LAM, "p": defaults.P}
            out += [{"method": "ttq", "r": r, "bits": b, "group_size": g, "calib": None, "hp": hp} for r in a.ttq_ranks]
            out += [{"method": "awq", "r": 0, "bits": b, "group_size": g, "calib": d} for d in a.domains]
    return out


def model_label(m: dict) -> str:
    if m["method"] == "fp":
        return "fp32"
    if m["method"] == "awq":
        return f"AWQ calib {m['calib']}"
    return "RTN" if m["method"] == "rtn" else f"TTQ r={m['r']}"


def _key(m: dict, test: str) -> str:
    return json.dumps({**m, "test": test}, sort_keys=True)


def run(a) -> dict | None:
    if a.threads:
        set_threads(a.threads)
    t_start = time.perf_counter()
    model, tok, name = load_causal_lm(a.model, progress=not a.no_progress)
    ks = in_features(model)
    groups = [g for g in a.group_size if g == -1 or all(k % g == 0 for k in ks)]
    skipped = [g for g in a.group_size if g not in groups]
    if not groups:
        raise ValueError(f"no --group-size divides every layer's input size {ks}")
    if skipped:
        print(f"group sizes {skipped} skipped: they do not divide every layer's input size {ks}", flush=True)
    tests, starts, calibs, totals = {}, {}, {}, {}
    for d in a.domains:
        test, valid = data.domains()[d]
        ids = token_ids(tok, data.read_text(test))
        totals[d] = ids.numel() // a.seqlen
        starts[d] = window_starts(totals[d], a.windows or None)
        tests[d] = dict(zip(starts[d], windows(ids, a.seqlen, a.windows or None, spread=True), strict=True))
        calibs[d] = calibration_batches(token_ids(tok, data.read_text(valid)), a.calib_tokens, a.seqlen)
        print(f"{d}: test {test} {ids.numel():,} tokens, {len(tests[d])} of {totals[d]} windows; AWQ calibration: "
              f"first {a.calib_tokens} tokens of {valid}", flush=True)  # fmt: skip
    cells_path = Path(a.out + ".cells.jsonl")
    cells_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"model": name, "domains": {d: data.domains()[d] for d in a.domains}, "bits": a.bits,
                "group_sizes": groups, "group_sizes_skipped": skipped, "ttq_ranks": a.ttq_ranks,
                "windows": {d: len(w) for d, w in tests.items()}, "total_windows": totals, "seqlen": a.seqlen,
                "calib_tokens": a.calib_tokens, "backend": a.backend, "window_selection": "spread",
                "ttq": {"alpha": defaults.ALPHA, "lam": defaults.LAM, "p": defaults.P}}  # fmt: skip
    # (model, test) -> {window index: NLL}.  Spread windows of n are a subset of those of 2n, so a
    # re-run with more --windows evaluates only the new ones.
    saved: dict[str, dict[int, float]] = {}
    speed: dict[str, float] = {}
    # what the saved windows cost, over every run that computed them (a report may only read them)
    cost = {"window_seconds": 0.0, "quantize_seconds": 0.0, "windows": 0, "threads": set(), "load_1min": []}
    if cells_path.is_file():
        for line in cells_path.read_text().splitlines():
            c = json.loads(line)
            if c.get("settings_key") == _settings_key(settings):
                k = _key(c["model"], c["test"])
                saved.setdefault(k, {}).update(zip(c["starts"], c["window_nll"], strict=True))
                speed[k] = c["tokens_per_s"]
                _add_cost(cost, c)
    todo = [m for m in models(a, groups) if m["method"] in a.methods]
    n_cells, n_done = len(todo) * len(a.domains), 0
    for m in todo:
        missing = {d: [i for i in starts[d] if i not in saved.get(_key(m, d), {})] for d in a.domains}
        if not any(missing.values()):
            n_done += len(a.domains)
            continue
        t_q = time.perf_counter()
        if m["method"] == "fp":
            q = model
        else:
            calib = calibs[m["calib"]] if m["method"] == "awq" else None
            q = quantized_copy(model, m["method"], bits=m["bits"], group_size=m["group_size"], r=m["r"],
                               calib=calib, backend=a.backend)  # fmt: skip
        quantize_s = time.perf_counter() - t_q  # booked on the model's first new cell
        for d in a.domains:
            n_done += 1
            if not missing[d]:
                continue
            t_w = time.perf_counter()
            res = perplexity(q, [tests[d][i] for i in missing[d]], desc=f"{model_label(m)} b{m['bits']} on {d}",
                             progress=not a.no_progress)  # fmt: skip
            k = _key(m, d)
            saved.setdefault(k, {}).update(zip(missing[d], res.window_nll, strict=True))
            speed[k] = res.tokens_per_s
            line = {"settings_key": _settings_key(settings), "model": m, "test": d, "starts": missing[d],
                    "window_nll": res.window_nll, "tokens_per_s": res.tokens_per_s,
                    "seconds": time.perf_counter() - t_w, "quantize_seconds": quantize_s,
                    "threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0]}  # fmt: skip
            quantize_s = 0.0
            _add_cost(cost, line)
            # one write per line, appended: processes sharing the file (--methods / --bits splits) do not interleave
            with open(cells_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"[{n_done}/{n_cells}] {model_label(m):>16} b{m['bits']} g{m['group_size']} on {d:<6}: "
                  f"{len(missing[d])} windows, {res.tokens_per_s:5.0f} tok/s  ({time.perf_counter() - t_start:.0f} s)",
                  flush=True)  # fmt: skip
        del q
    if set(a.methods) != {"fp", "rtn", "awq", "ttq"}:
        print(f"--methods {','.join(a.methods)}: windows saved in {cells_path}; the report needs every method")
        return None
    cells = []
    for m in todo:
        for d in a.domains:
            nll = [saved[_key(m, d)][i] for i in starts[d]]
            mean = sum(nll) / len(nll)
            cells.append({"model": m, "test": d, "ppl": exp_nll(mean), "nll": mean, "window_nll": nll,
                          "window_starts": starts[d], "tokens_per_s": speed[_key(m, d)]})  # fmt: skip
    cost["threads"] = sorted(cost["threads"])
    cost["load_1min"] = [min(cost["load_1min"]), max(cost["load_1min"])] if cost["load_1min"] else None
    result = {"settings": settings, "cells": cells, "cost": cost}
    result["comparisons"] = comparisons(result)
    result["run"] = records.run_record(records.command_line(PROG, a.argv), seconds=time.perf_counter() - t_start)
    return result


def _add_cost(cost: dict, line: dict) -> None:
    """Add a saved cell line's compute time to the running totals (lines from before timing was kept add 0)."""
    cost["window_seconds"] += line.get("seconds", 0.0)
    cost["quantize_seconds"] += line.get("quantize_seconds", 0.0)
    cost["windows"] += len(line["starts"])
    if "threads" in line:
        cost["threads"].add(line["threads"])
        cost["load_1min"].append(line["load_1min"])


def _settings_key(settings: dict) -> str:
    """What must match for saved windows to be reused (the models and the windows may grow)."""
    keep = ("model", "domains", "seqlen", "calib_tokens", "backend")
    return json.dumps({k: settings[k] for k in keep}, sort_keys=True)


def _cell(result, test, **m):
    for c in result["cells"]:
        if c["test"] == test and all(c["model"][k] == v for k, v in m.items()):
            return c
    return None


def comparisons(result: dict) -> list[dict]:
    """Paired intervals (log-perplexity ratio over the same windows) for every test domain, bits and group:
    each TTQ rank against AWQ from every calibration domain and against RTN; each AWQ against the
    in-domain AWQ (its shift penalty); every quantized model against fp."""
    s = result["settings"]
    out = []
    for b in s["bits"]:
        for g in s["group_sizes"]:
            q = {"bits": b, "group_size": g}
            for test in s["domains"]:
                fp = _cell(result, test, method="fp")
                ind = _cell(result, test, method="awq", calib=test, **q)
                pairs = []
                for r in s["ttq_ranks"]:
                    t = _cell(result, test, method="ttq", r=r, **q)
                    pairs += [(t, _cell(result, test, method="awq", calib=c, **q), "ttq_vs_awq") for c in s["domains"]]
                    pairs.append((t, _cell(result, test, method="rtn", **q), "ttq_vs_rtn"))
                pairs += [(_cell(result, test, method="awq", calib=c, **q), ind, "awq_shift") for c in s["domains"]
                          if c != test]  # fmt: skip
                quantized = [c for c in result["cells"] if c["test"] == test and c["model"]["bits"] == b
                             and c["model"]["group_size"] == g]  # fmt: skip
                pairs += [(c, fp, "vs_fp") for c in quantized]
                for x, y, kind in pairs:
                    iv = paired_difference(x["window_nll"], y["window_nll"])
                    out.append({"kind": kind, "a": x["model"], "b": y["model"], "test": test, "bits": b,
                                "group_size": g, **iv.as_dict()})  # fmt: skip
    return out


def _iv(c) -> Interval:
    return Interval(c["estimate"], c["low"], c["high"], c["level"], c["n"])


def _pct(c, bold=True) -> str:
    s = fmt_percent(_iv(c))
    return f"**{s}**" if bold and _iv(c).excludes_zero else s


def findings(result: dict) -> list[str]:
    """One line per bits, group and TTQ rank: where TTQ beats / loses to AWQ in-domain and under shift."""
    s, comps = result["settings"], result["comparisons"]
    lines = []
    for b in s["bits"]:
        for g in s["group_sizes"]:
            for r in s["ttq_ranks"]:
                mine = [c for c in comps if c["kind"] == "ttq_vs_awq" and c["bits"] == b and c["group_size"] == g
                        and c["a"]["r"] == r]  # fmt: skip
                ind = [c for c in mine if c["b"]["calib"] == c["test"]]
                sh = [c for c in mine if c["b"]["calib"] != c["test"]]

                def tally(cs):
                    win = sum(_iv(c).verdict < 0 for c in cs)
                    lose = sum(_iv(c).verdict > 0 for c in cs)
                    return f"better in {win}, worse in {lose}, unresolved in {len(cs) - win - lose} of {len(cs)}"

                med = sorted(c["percent"][0] for c in sh)[len(sh) // 2] if sh else float("nan")
                lines.append(f"{b} bits, group {g}, TTQ r={r} vs AWQ: in-domain {tally(ind)}; "
                             f"shifted calibration {tally(sh)} (median change {med:+.1f} %).")  # fmt: skip
    return lines


def _cost_line(result: dict) -> str:
    c, s = result.get("cost"), result["settings"]
    tokens = sum(len(x["window_nll"]) for x in result["cells"]) * s["seqlen"]
    if not c:
        return f"Cells: {len(result['cells'])}, {tokens:,} tokens evaluated."
    load = "" if not c["load_1min"] else f", 1-minute load average {c['load_1min'][0]:.1f}-{c['load_1min'][1]:.1f}"
    return (
        f"Cost: {len(result['cells'])} cells, {tokens:,} tokens evaluated; the windows took "
        f"{c['window_seconds']:,.0f} s and quantizing / calibrating {c['quantize_seconds']:,.0f} s of wall time "
        f"summed over the processes that computed them (torch threads {c['threads']}{load}; a shared 2-core "
        "machine, so these are not speeds). The record at the end is this report's run, which reads saved cells."
    )


def markdown(result: dict) -> str:
    s = result["settings"]
    doms = list(s["domains"])
    comps = result["comparisons"]
    head = "| | " + " | ".join(f"test: {d}" for d in doms) + " |"
    sep = "|---|" + "---|" * len(doms)
    wins = ", ".join(f"{d} {s['windows'][d]} of {s['total_windows'][d]}" for d in doms)
    out = [
        f"# Domain shift: TTQ vs AWQ calibrated in and out of domain ({s['model']})",
        "",
        f"Test splits ({s['seqlen']}-token windows spread over each split: {wins}) against AWQ calibrated on the "
        f"first {s['calib_tokens']} tokens of each domain's validation split; TTQ (alpha = {s['ttq']['alpha']:.4g}, "
        f"lam = {s['ttq']['lam']:.4g}, p = {s['ttq']['p']:.4g}: `ttqkern/defaults.json`) and RTN use no calibration. "
        f"Splits: " + "; ".join(f"{d}: test `{t}`, validation `{v}`" for d, (t, v) in s["domains"].items()) + ". "
        "Intervals: paired bootstrap 95 % over the same windows; **bold** where the interval excludes 0, "
        "the only case where a difference is claimed."
        + (
            f" Group sizes {s['group_sizes_skipped']} skipped: they do not divide every layer's input size."
            if s["group_sizes_skipped"]
            else ""
        ),
        "",
        _cost_line(result),
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings(result)],
        "",
    ]
    fp_row = (
        "| fp32 | "
        + " | ".join(fmt_ppl(bootstrap_mean(_cell(result, d, method="fp")["window_nll"])) for d in doms)
        + " |"
    )
    for b in s["bits"]:
        for g in s["group_sizes"]:
            q = {"bits": b, "group_size": g}
            out += [f"## {b} bits, group {g}", "", "Perplexity [95 % interval over windows]:", "", head, sep, fp_row]
            names = [{"method": "rtn"}] + [{"method": "ttq", "r": r} for r in s["ttq_ranks"]]
            names += [{"method": "awq", "calib": c} for c in doms]
            for m in names:
                cells = [_cell(result, d, **m, **q) for d in doms]
                lab = model_label({"r": None, "calib": None, **m})
                out.append(f"| {lab} | " + " | ".join(fmt_ppl(bootstrap_mean(c["window_nll"])) for c in cells) + " |")
            for r in s["ttq_ranks"]:
                out += ["", f"TTQ r={r} against AWQ calibrated on each domain (rows) on each test split "
                        "(columns); the diagonal is in-domain, marked (in); perplexity change of TTQ:", "", head, sep]  # fmt: skip
                for c in doms:
                    row = []
                    for d in doms:
                        x = next(v for v in comps if v["kind"] == "ttq_vs_awq" and v["a"]["r"] == r
                                 and v["b"]["calib"] == c and v["test"] == d and v["bits"] == b and v["group_size"] == g)  # fmt: skip
                        row.append(_pct(x) + (" (in)" if c == d else ""))
                    out.append(f"| vs AWQ calib {c} | " + " | ".join(row) + " |")
                row = [_pct(next(v for v in comps if v["kind"] == "ttq_vs_rtn" and v["a"]["r"] == r and v["test"] == d
                                 and v["bits"] == b and v["group_size"] == g)) for d in doms]  # fmt: skip
                out.append("| vs RTN | " + " | ".join(row) + " |")
            out += ["", "AWQ's shift penalty: AWQ calibrated on another domain (rows) against AWQ calibrated in "
                    "domain, on each test split (columns):", "", head, sep]  # fmt: skip
            for c in doms:
                row = []
                for d in doms:
                    x = next((v for v in comps if v["kind"] == "awq_shift" and v["a"]["calib"] == c and v["test"] == d
                              and v["bits"] == b and v["group_size"] == g), None)  # fmt: skip
                    row.append("(in)" if x is None else _pct(x))
                out.append(f"| AWQ calib {c} | " + " | ".join(row) + " |")
            out.append("")
    out.append(records.record_markdown(result["run"]))
    return "\n".join(out) + "\n"


def _series(m: dict, test: str) -> str:
    """The plot series of a model on a test domain."""
    if m["method"] == "awq":
        return "AWQ in-domain" if m["calib"] == test else "AWQ shifted"
    return model_label(m)


def plot(result: dict, path: Path) -> None:
    """Perplexity / fp per test domain, one panel per bits and group: RTN, AWQ in-domain, AWQ shifted
    (one marker per other calibration domain), TTQ ranks; bars are the paired 95 % intervals."""
    import math

    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    s, comps = result["settings"], result["comparisons"]
    doms = list(s["domains"])
    panels = [(b, g) for b in s["bits"] for g in s["group_sizes"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    series = [("RTN", "tab:gray", "s"), ("AWQ in-domain", "tab:blue", "o"), ("AWQ shifted", "tab:cyan", "v")]
    colors = ("tab:orange", "tab:red", "tab:purple", "tab:brown")
    series += [(f"TTQ r={r}", colors[i % len(colors)], "^") for i, r in enumerate(s["ttq_ranks"])]
    for ax, (b, g) in zip(axes[0], panels, strict=True):
        vs_fp = [c for c in comps if c["kind"] == "vs_fp" and c["bits"] == b and c["group_size"] == g]
        for j, (lab, color, marker) in enumerate(series):
            pts = [(doms.index(c["test"]), *(math.exp(v) for v in (c["estimate"], c["low"], c["high"])))
                   for c in vs_fp if _series(c["a"], c["test"]) == lab]  # fmt: skip
            if not pts:
                continue
            off = (j - (len(series) - 1) / 2) * 0.12
            ax.errorbar([i + off for i, *_ in pts], [e for _, e, _, _ in pts],
                        yerr=[[e - lo for _, e, lo, _ in pts], [hi - e for _, e, _, hi in pts]],
                        fmt=marker, color=color, label=lab, capsize=2, ms=5, lw=1)  # fmt: skip
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(doms)), [f"test: {d}" for d in doms])
        ax.set_yscale("log")
        ax.set_ylabel("perplexity / fp32")
        ax.set_title(f"{b} bits, group {g}")
        ax.grid(alpha=0.3, which="both", axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"Domain shift on {s['model']}: AWQ calibrated in-domain vs on another domain vs TTQ (no calibration)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    a.argv = argv
    result = run(a)
    if result is None:
        return 0
    md = markdown(result)
    print(md)
    for p in records.write_report(a.out, result, md):
        print(f"wrote {p}")
    png = Path(a.out + ".png")
    plot(result, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
