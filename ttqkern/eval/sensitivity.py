"""``python -m ttqkern.eval.sensitivity``: the numerical noise floor of a TTQ perplexity.

TTQ recomputes D and requantizes every layer per prompt, so rounding-level changes
to D (another backend's summation order, another thread count) flip codes that sit
near a rounding boundary, and the flips compound through the layers.  This command
measures how far the perplexity moves under such changes: the same TTQ model run on
each backend, and on the torch backend with D scaled by ``1 +- eps`` (eps = 2e-7,
about two fp32 ulps; a uniform scale leaves the exact codes unchanged, only rounding
differs).  Differences between methods smaller than this spread are not resolved
by the measurement.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from .. import backends, data
from ..backends import torch_backend
from . import auto_group_size, load_causal_lm, perplexity, quantized_copy, token_ids, windows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ttqkern.eval.sensitivity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    ap.add_argument("--text", default="wikitext2", help="text name or path (default wikitext2)")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--r", type=int, default=0, help="TTQ low rank (default 0)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=2)
    ap.add_argument("--eps", type=float, default=2e-7, help="relative scale applied to D (default 2e-7)")
    ap.add_argument("--backends", default="torch,numba", help="backends to compare (default torch,numba)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, path = load_causal_lm(args.model)
    name = Path(path).name
    g = auto_group_size(model)
    wins = windows(token_ids(tok, "\n\n".join(data.rows(args.text))), args.seqlen, args.max_windows)

    def ppl(backend: str) -> float:
        m = quantized_copy(model, "ttq", bits=args.bits, group_size=g, r=args.r, backend=backend)
        with torch.no_grad():
            return perplexity(m, wins).ppl

    rows = []
    for b in [b.strip() for b in args.backends.split(",") if b.strip()]:
        backends.resolve(b, torch.device("cpu"))  # a clear error when a named backend cannot run here
        rows.append({"run": f"backend {b}", "ppl": ppl(b)})
        print(f"{rows[-1]['run']:<28} ppl {rows[-1]['ppl']:.3f}", flush=True)
    real = torch_backend.act_scale
    try:
        for eps in (args.eps, -args.eps):
            torch_backend.act_scale = lambda x, p, lam, alpha, e=eps: real(x, p, lam, alpha) * (1 + e)
            rows.append({"run": f"backend torch, D x (1{eps:+.0e})", "ppl": ppl("torch")})
            print(f"{rows[-1]['run']:<28} ppl {rows[-1]['ppl']:.3f}", flush=True)
    finally:
        torch_backend.act_scale = real
    vals = [r["ppl"] for r in rows]
    spread = (max(vals) - min(vals)) / min(vals)
    cmd = "python -m ttqkern.eval.sensitivity " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = [
        f"TTQ r={args.r} {args.bits}-bit g{g} perplexity of {name} on `{args.text}` "
        f"({len(wins)} windows x {args.seqlen} tokens) under rounding-level changes of D:",
        "",
        "| run | perplexity |",
        "|---|---|",
        *[f"| {r['run']} | {r['ppl']:.3f} |" for r in rows],
        "",
        f"Spread (max - min) / min: {100 * spread:.1f} %.  Command: `{cmd}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        summary = {"command": cmd, "bits": args.bits, "r": args.r, "group_size": g, "windows": len(wins), "rows": rows}
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
