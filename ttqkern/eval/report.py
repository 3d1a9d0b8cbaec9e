"""The main job's tables: perplexity with intervals, paired comparisons, speed, fidelity."""

from __future__ import annotations

import math

from .. import records
from .stats import bootstrap_mean, fmt_percent, fmt_ppl, paired_difference

ORDER = {"fp": 0, "rtn": 1, "awq": 2, "ttq": 3}  # the paper's row order: baselines, then TTQ by rank


def _row_label(row) -> str:
    if row["method"] == "awq" and row.get("calib_tokens") is not None:
        return f"AWQ (calib {row['calib_tokens']})"
    return row["label"]


def _key(row):
    return ORDER[row["method"]], row.get("calib_tokens") or 0, row["r"] or 0


def comparisons(rows: list[dict]) -> list[dict]:
    """Paired intervals per bit width and group: each TTQ row against every baseline, and every
    quantized row against fp32 (log-perplexity ratio over the same windows)."""
    out = []
    fp = next((r for r in rows if r["method"] == "fp"), None)
    cells = sorted({(r["bits"], r["group_size"]) for r in rows if r["method"] != "fp"})
    for b, g in cells:
        here = sorted((r for r in rows if (r["bits"], r["group_size"]) == (b, g)), key=_key)
        pairs = [(t, o) for t in here if t["method"] == "ttq" for o in here if o["method"] in ("rtn", "awq")]
        if fp is not None:
            pairs += [(q, fp) for q in here]
        for x, y in pairs:
            iv = paired_difference(x["window_nll"], y["window_nll"])
            out.append({"a": _row_label(x), "b": _row_label(y), "bits": b, "group_size": g, **iv.as_dict()})
    return out


def _fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    return f"{v:,.{nd}f}" if isinstance(v, float) else str(v)


def _cmp_cell(c) -> str:
    if c is None:
        return "—"
    from .stats import Interval

    iv = Interval(c["estimate"], c["low"], c["high"], c["level"], c["n"])
    s = fmt_percent(iv)
    return f"**{s}**" if iv.excludes_zero else s


def markdown(result: dict) -> str:
    """The result as markdown: perplexity with intervals, TTQ vs baselines, speed, fidelity, run record."""
    rows, s = result["rows"], result["settings"]
    subset = "" if s["full_text"] else f", spread over the text's {s['total_windows']}: a subset"
    ttq = s["ttq"]
    search = f", alpha searched per layer and window ({ttq['alpha_search']})" if ttq.get("alpha_search") else ""
    out = [
        f"Perplexity of **{s['model']}** on `{s['text']}` ({s['windows']} windows x {s['seqlen']} tokens = "
        f"{s['tokens']:,} tokens{subset}); AWQ calibrated on `{s['calib']}`; TTQ alpha = {ttq['alpha']:.4g}, "
        f"lam = {ttq['lam']:.4g}, p = {ttq['p']:.4g}{search}; backend {s['backend']} ({s['backend_used']}).",
        "",
    ]
    bits = sorted({r["bits"] for r in rows if r["bits"] is not None})
    groups = sorted({r["group_size"] for r in rows if r["group_size"] is not None}, key=lambda g: (g == -1, g))
    fp = [r for r in rows if r["method"] == "fp"]
    comps = result.get("comparisons") or comparisons(rows)
    for g in groups or [None]:
        out += [f"Group size {g}: perplexity [95 % bootstrap interval over windows]", ""]
        out += ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]
        if fp:
            out.append("| fp32 | " + " | ".join(fmt_ppl(bootstrap_mean(fp[0]["window_nll"])) for _ in bits) + " |")
        ranked = sorted((r for r in rows if r["method"] != "fp" and r["group_size"] == g), key=_key)
        labels = list(dict.fromkeys(_row_label(r) for r in ranked))
        for lab in labels:
            hit = {r["bits"]: r for r in ranked if _row_label(r) == lab}
            cells = [fmt_ppl(bootstrap_mean(hit[b]["window_nll"])) if b in hit else "—" for b in bits]
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
        out += ["", "Paired comparisons: perplexity change of the first method against the second, paired "
                "bootstrap 95 % interval over the same windows (negative: the first is better; **bold**: the "
                "interval excludes 0, the only case where a difference is claimed):", ""]  # fmt: skip
        out += ["| comparison | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]
        mine = [c for c in comps if c["group_size"] == g]
        for a_lab, b_lab in dict.fromkeys((c["a"], c["b"]) for c in mine):
            cells = [_cmp_cell(next((c for c in mine if (c["a"], c["b"], c["bits"]) == (a_lab, b_lab, b)), None))
                     for b in bits]  # fmt: skip
            out.append(f"| {a_lab} vs {b_lab} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["Speed: window tokens per second of forward (TTQ including its per-window requantization); the run's "
            "threads and load average are in the footer, and a loaded machine slows every row:", "",
            "| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]  # fmt: skip
    if fp:
        out.append("| fp32 | " + " | ".join(_fmt(fp[0]["tokens_per_s"], 0) for _ in bits) + " |")
    for lab in dict.fromkeys(_row_label(r) for r in sorted((r for r in rows if r["method"] != "fp"), key=_key)):
        hit = {
            r["bits"]: r for r in rows if r["method"] != "fp" and _row_label(r) == lab and r["group_size"] == groups[0]
        }
        out.append(
            f"| {lab} | " + " | ".join(_fmt(hit[b]["tokens_per_s"], 0) if b in hit else "—" for b in bits) + " |"
        )
    fid = result.get("fidelity") or []
    if fid:
        fb = sorted({r["bits"] for r in fid})
        out += ["", f"Output fidelity on **{fid[0]['model']}** (fp32 weights): mean cosine similarity of mean-pooled "
                f"sentence embeddings to fp32 over {fid[0]['sentences']} WikiText-2 test sentences, group size "
                f"{fid[0]['group_size']} (AWQ calibrated on as many validation sentences):", "",
                "| method | " + " | ".join(f"{b} bits" for b in fb) + " |", "|---|" + "---|" * len(fb)]  # fmt: skip
        for lab in dict.fromkeys(r["label"] for r in fid):
            cells = [next((f"{r['cosine']:.4f}" for r in fid if r["label"] == lab and r["bits"] == b), "—") for b in fb]
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
    if "run" in result:
        out += ["", records.record_markdown(result["run"])]
    return "\n".join(out) + "\n"
