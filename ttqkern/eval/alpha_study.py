"""``python -m ttqkern.eval.alpha_study``: does test-time alpha search pay, on validation text of every domain?

For each bit width and TTQ rank, the same model with a fixed alpha (`ttqkern.defaults`)
and with `ttqkern.alpha_search.AlphaSearch` runs on windows spread over each domain's
*validation* split (never a test split: this decides a default).  The two run
alternately on each window (A, B, A, B, ...), so machine load hits both alike, and
the report gives per domain and pooled over the domains the paired bootstrap
interval of the perplexity change, the prefill cost (forward time with the search
over forward time without), and how often each alpha of the grid was chosen.

The decision rule the report applies: the search is worth turning on by default only
if, at every bit width and rank, its pooled interval excludes 0 in its favour and no
domain's interval excludes 0 against it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from .. import data, defaults, records
from ..alpha_search import DEFAULT_GRID, DEFAULT_TOKENS, AlphaSearch
from ..nn import TTQLinear
from ..threads import set_threads
from . import args as A
from .methods import quantized_copy
from .models import auto_group_size, load_causal_lm
from .perplexity import perplexity
from .stats import Interval, fmt_percent, paired_difference
from .windows import token_ids, windows

PROG = "python -m ttqkern.eval.alpha_study"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    p.add_argument("--domains", default=",".join(data.domains()), help="comma list of domains (default all)")
    p.add_argument("--bits", type=A.bit_widths, default="3,4", help="bit widths (default 3,4)")
    p.add_argument("--ranks", type=A.int_list("--ranks", minimum=0), default="0,16", help="TTQ ranks (default 0,16)")
    p.add_argument("--windows", type=int, default=8, help="windows per validation split, spread (default 8)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_GRID), help="candidate alphas")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="prompt tokens that score each alpha")
    p.add_argument("--backend", default="auto")
    A.add_threads(p)
    p.add_argument("--out", default="results/quality/alpha_search", help="output prefix (default %(default)s)")
    return p


def _alphas(model) -> list[float]:
    return [m.last_alpha for m in model.modules() if isinstance(m, TTQLinear) and m.last_alpha is not None]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = build_parser()
    a = p.parse_args(argv)
    doms = [d.strip() for d in a.domains.split(",") if d.strip()]
    if not doms or any(d not in data.domains() for d in doms):
        p.error(f"--domains: choose from {', '.join(data.domains())}")
    A.check_positive(p, windows=(a.windows, 1), seqlen=(a.seqlen, 2), threads=(a.threads, 1))
    A.check_backend(p, a.backend)
    A.check_model(p, a.model)
    try:
        search = AlphaSearch(grid=tuple(a.grid), tokens=a.tokens)
    except ValueError as e:
        p.error(str(e))
    if a.threads:
        set_threads(a.threads)
    t0 = time.perf_counter()
    model, tok, name = load_causal_lm(a.model)
    g = auto_group_size(model)
    wins = {d: windows(token_ids(tok, data.read_text(data.domains()[d][1])), a.seqlen, a.windows, spread=True)
            for d in doms}  # fmt: skip
    rows = []
    for b in a.bits:
        for r in a.ranks:
            plain = quantized_copy(model, "ttq", bits=b, group_size=g, r=r, backend=a.backend)
            searched = quantized_copy(model, "ttq", bits=b, group_size=g, r=r, backend=a.backend, requantizer=search)
            row = {"bits": b, "r": r, "group_size": g, "domains": {}}
            for d, ws in wins.items():
                nll_p, nll_s, sec_p, sec_s, chosen = [], [], 0.0, 0.0, Counter()
                for w in ws:  # interleaved: both models see the same load
                    rp, rs = perplexity(plain, [w]), perplexity(searched, [w])
                    nll_p.append(rp.nll)
                    nll_s.append(rs.nll)
                    sec_p += rp.seconds
                    sec_s += rs.seconds
                    chosen.update(_alphas(searched))
                row["domains"][d] = {"plain_nll": nll_p, "search_nll": nll_s, "plain_s": sec_p, "search_s": sec_s,
                                     "chosen": {str(k): v for k, v in sorted(chosen.items())},
                                     "interval": paired_difference(nll_s, nll_p).as_dict()}  # fmt: skip
                print(f"b{b} r{r} {d:<6}: {fmt_percent(_iv(row['domains'][d]['interval']))}, "
                      f"prefill x{sec_s / sec_p:.2f}", flush=True)  # fmt: skip
            all_s = [v for x in row["domains"].values() for v in x["search_nll"]]
            all_p = [v for x in row["domains"].values() for v in x["plain_nll"]]
            row["pooled"] = paired_difference(all_s, all_p).as_dict()
            row["prefill_ratio"] = sum(x["search_s"] for x in row["domains"].values()) / sum(
                x["plain_s"] for x in row["domains"].values()
            )
            rows.append(row)
            del plain, searched
    wins_all = all(_iv(r["pooled"]).verdict < 0 and all(_iv(x["interval"]).verdict <= 0 for x in r["domains"].values())
                   for r in rows)  # fmt: skip
    rec = records.run_record(records.command_line(PROG, argv), seconds=time.perf_counter() - t0)
    result = {"settings": {"model": name, "domains": {d: data.domains()[d][1] for d in doms}, "windows": a.windows,
                           "seqlen": a.seqlen, "group_size": g, "grid": list(search.grid), "tokens": search.tokens,
                           "fixed_alpha": defaults.ALPHA, "lam": defaults.LAM, "p": defaults.P},
              "rows": rows, "search_wins_everywhere": wins_all, "run": rec}  # fmt: skip
    md = markdown(result)
    print(md)
    for path in records.write_report(a.out, result, md):
        print(f"wrote {path}")
    return 0


def _iv(d) -> Interval:
    return Interval(d["estimate"], d["low"], d["high"], d["level"], d["n"])


def _cell(d) -> str:
    s = fmt_percent(_iv(d))
    return f"**{s}**" if _iv(d).excludes_zero else s


def markdown(res: dict) -> str:
    s = res["settings"]
    doms = list(s["domains"])
    out = [
        f"# Test-time alpha search on {s['model']} (validation splits)",
        "",
        f"TTQ with alpha chosen per layer and window from the grid {s['grid']} by the output error on "
        f"{s['tokens']} of the window's tokens, against TTQ with the fixed default alpha = {s['fixed_alpha']:.4g} "
        f"(lam = {s['lam']:.4g}, p = {s['p']:.4g}), group {s['group_size']}; {s['windows']} windows x {s['seqlen']} "
        "tokens spread over each validation split (" + ", ".join(f"{d}: `{v}`" for d, v in s["domains"].items()) + "). "
        "Perplexity change of the search against the fixed alpha, paired bootstrap 95 % interval over the same "
        "windows (negative: the search is better; **bold**: the interval excludes 0). Prefill cost: forward time "
        "with the search / without, the two run alternately on each window.",
        "",
        "| bits | r | " + " | ".join(doms) + " | pooled | prefill cost |",
        "|---|---|" + "---|" * (len(doms) + 2),
    ]
    for r in res["rows"]:
        cells = [_cell(r["domains"][d]["interval"]) for d in doms]
        out.append(f"| {r['bits']} | {r['r']} | " + " | ".join(cells) + f" | {_cell(r['pooled'])} | "
                   f"x{r['prefill_ratio']:.2f} |")  # fmt: skip
    out += ["", "Alphas chosen (layer-windows per grid value, all domains):", "",
            "| bits | r | " + " | ".join(str(g) for g in s["grid"]) + " |", "|---|---|" + "---|" * len(s["grid"])]  # fmt: skip
    for r in res["rows"]:
        tot = Counter()
        for x in r["domains"].values():
            tot.update({float(k): v for k, v in x["chosen"].items()})
        n = sum(tot.values()) or 1
        out.append(f"| {r['bits']} | {r['r']} | " + " | ".join(f"{100 * tot[g] / n:.0f} %" for g in s["grid"]) + " |")
    verdict = (
        "wins at every bit width and rank (pooled interval below 0, no domain against it): worth a default"
        if res["search_wins_everywhere"]
        else "does not win everywhere by that rule: it stays off by default (an option: requantizer=AlphaSearch())"
    )
    out += ["", f"Decision rule (pooled interval excludes 0 in favour of the search at every bits and rank, no "
            f"domain's interval against it): the search {verdict}.", "", records.record_markdown(res["run"])]  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
