"""``python -m ttqkern.eval.sensitivity``: the numerical noise floor of a TTQ perplexity, with intervals.

TTQ recomputes D and requantizes every layer per prompt, so rounding-level changes
to D (another backend's summation order, another thread count) flip codes that sit
near a rounding boundary, and the flips compound through the layers.  This command
runs the same TTQ model on each backend and with D scaled by ``1 + eps`` for each
``--eps`` (default +-2e-7, about two fp32 ulps: a uniform scale leaves the exact
codes unchanged, only rounding differs), through the layer's ``requantizer`` option
(`PerturbedScale`).  Each run is compared with the first by the same paired
bootstrap interval over windows as the method comparisons, so a reader can tell a
method difference (an interval that excludes 0) from numerical chaos (intervals of
perturbed runs, which should straddle 0, and their width).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

from .. import backends, data, records
from ..alpha_search import quantize_for
from ..threads import set_threads
from . import args as A
from .methods import quantized_copy
from .models import auto_group_size, load_causal_lm
from .perplexity import perplexity
from .stats import bootstrap_mean, fmt_percent, fmt_ppl, paired_difference
from .windows import token_ids, windows

PROG = "python -m ttqkern.eval.sensitivity"


@dataclass(frozen=True)
class PerturbedScale:
    """A `TTQLinear` requantizer: the layer's usual D times ``(1 + rel)``, quantized as usual."""

    rel: float

    def __call__(self, layer, x):
        from .. import ops

        D = ops.act_scale(x, p=layer.p, lam=layer.lam, alpha=layer.alpha, backend=layer.backend) * (1 + self.rel)
        return layer.alpha, D, quantize_for(layer, D)


def runs(backend_names: list[str], eps: list[float]) -> list[tuple[str, str, PerturbedScale | None]]:
    """``(name, backend, requantizer)`` of every run: each backend as is, then the first backend per eps."""
    out = [(f"backend {b}", b, None) for b in backend_names]
    out += [(f"backend {backend_names[0]}, D x (1{e:+.0e})", backend_names[0], PerturbedScale(e)) for e in eps]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    p.add_argument("--text", default="wikitext2", help="text name or path (default wikitext2)")
    p.add_argument("--bits", type=A.bit_widths, default="3", help="bit width (default 3)")
    p.add_argument("--r", type=int, default=0, help="TTQ low rank (default 0)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=16, help="windows spread over the text (default 16; 0 = all)")
    p.add_argument("--eps", type=float, nargs="+", default=[2e-7, -2e-7],
                   help="relative perturbations of D, one run each on the first backend (default 2e-7 -2e-7)")  # fmt: skip
    p.add_argument("--backends", default="torch,numba", help="backends to compare (default torch,numba)")
    A.add_threads(p)
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = build_parser()
    a = p.parse_args(argv)
    if len(a.bits) != 1:
        p.error("--bits takes one value here")
    A.check_positive(p, r=(a.r, 0), seqlen=(a.seqlen, 2), max_windows=(a.max_windows, 0), threads=(a.threads, 1))
    A.check_text(p, "--text", a.text)
    A.check_model(p, a.model)
    names = [b.strip() for b in a.backends.split(",") if b.strip()]
    for b in names:
        A.check_backend(p, b)
    if a.threads:
        set_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, name = load_causal_lm(a.model)
    g, bits = auto_group_size(model), a.bits[0]
    ids = token_ids(tok, data.read_text(a.text))
    wins = windows(ids, a.seqlen, a.max_windows or None, spread=True)
    rows = []
    for label, backend, requant in runs(names, a.eps):
        backends.resolve(backend, torch.device("cpu"))  # a clear error when a named backend cannot run here
        opts = {} if requant is None else {"requantizer": requant}
        m = quantized_copy(model, "ttq", bits=bits, group_size=g, r=a.r, backend=backend, **opts)
        res = perplexity(m, wins)
        rows.append({"run": label, "ppl": res.ppl, "nll": res.nll, "window_nll": res.window_nll})
        print(f"{label:<32} ppl {res.ppl:.3f}", flush=True)
    for r in rows:
        r["interval"] = bootstrap_mean(r["window_nll"]).as_dict()
        r["vs_first"] = (
            paired_difference(r["window_nll"], rows[0]["window_nll"]).as_dict() if r is not rows[0] else None
        )
    vals = [r["ppl"] for r in rows]
    spread = (max(vals) - min(vals)) / min(vals)
    rec = records.run_record(records.command_line(PROG, argv), seconds=time.perf_counter() - t0)
    md = markdown(rows, name=name, text=a.text, bits=bits, r=a.r, g=g, wins=len(wins), seqlen=a.seqlen,
                  total=ids.numel() // a.seqlen, spread=spread, rec=rec)  # fmt: skip
    print(md)
    if a.out:
        payload = {"settings": {"model": name, "text": a.text, "bits": bits, "r": a.r, "group_size": g,
                                "windows": len(wins), "seqlen": a.seqlen, "eps": a.eps, "backends": names},
                   "rows": rows, "spread": spread, "run": rec}  # fmt: skip
        for path in records.write_report(a.out, payload, md):
            print(f"wrote {path}")
    return 0


def markdown(rows, *, name, text, bits, r, g, wins, seqlen, total, spread, rec) -> str:
    from .stats import Interval

    def iv(d):
        return Interval(d["estimate"], d["low"], d["high"], d["level"], d["n"])

    lines = [
        f"TTQ r={r} {bits}-bit g{g} perplexity of {name} on `{text}` ({wins} windows x {seqlen} tokens spread over "
        f"the text's {total}) under rounding-level changes of D; each run against the first by the paired bootstrap "
        "95 % interval over the same windows:",
        "",
        "| run | perplexity [95 % interval] | change vs first run [95 % interval] |",
        "|---|---|---|",
        *[
            f"| {x['run']} | {fmt_ppl(iv(x['interval']))} | {fmt_percent(iv(x['vs_first'])) if x['vs_first'] else '—'} |"
            for x in rows
        ],
        "",
        f"Spread of the perplexities (max - min) / min: {100 * spread:.1f} %. A method difference is resolved when "
        "its own paired interval excludes 0; the intervals above show how far rounding alone moves one.",
        "",
        records.record_markdown(rec),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
