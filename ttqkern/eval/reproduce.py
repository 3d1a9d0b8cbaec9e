"""``python -m ttqkern.eval.reproduce FIRST.json SECOND.json``: does a re-run reproduce a result within its intervals?

Both files come from ``python -m ttqkern.eval --out`` with the same settings (another
thread count, backend or machine changes only the rounding).  For every row: is the
second run's perplexity inside the first run's 95 % interval, and how far apart are
the two (the paired interval of the second against the first, over the same windows:
rounding noise); for every paired comparison: do both runs reach the same verdict
(better / worse / unresolved)?  Writes ``--out PREFIX.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .. import records
from .stats import Interval, bootstrap_mean, fmt_percent, fmt_ppl, paired_difference

PROG = "python -m ttqkern.eval.reproduce"


def _row_key(r) -> tuple:
    return r["method"], r["bits"], r["group_size"], r["r"], r.get("calib_tokens")


def _iv(c) -> Interval:
    return Interval(c["estimate"], c["low"], c["high"], c["level"], c["n"])


def compare(first: dict, second: dict) -> dict:
    """Row by row and comparison by comparison, as described in the module docstring."""
    rows = []
    second_rows = {_row_key(r): r for r in second["rows"]}
    for r in first["rows"]:
        s = second_rows.get(_row_key(r))
        if s is None:
            continue
        iv = bootstrap_mean(r["window_nll"])
        inside = iv.low <= s["nll"] <= iv.high if math.isfinite(s["nll"]) else False
        rows.append({"row": r["label"], "bits": r["bits"], "first": iv.as_dict(), "second_ppl": s["ppl"],
                     "inside": inside, "second_vs_first": paired_difference(s["window_nll"], r["window_nll"]).as_dict()})  # fmt: skip
    verdicts = []
    sc = {(c["a"], c["b"], c["bits"], c["group_size"]): c for c in second["comparisons"]}
    for c in first["comparisons"]:
        d = sc.get((c["a"], c["b"], c["bits"], c["group_size"]))
        if d is not None:
            verdicts.append({"a": c["a"], "b": c["b"], "bits": c["bits"], "group_size": c["group_size"],
                             "first": c, "second": d, "same": _iv(c).verdict == _iv(d).verdict})  # fmt: skip
    return {"rows": rows, "verdicts": verdicts, "all_inside": all(x["inside"] for x in rows),
            "all_same_verdict": all(v["same"] for v in verdicts)}  # fmt: skip


def markdown(res: dict, first: dict, second: dict, names: tuple[str, str]) -> str:
    t1, t2 = first["run"]["threads"], second["run"]["threads"]
    out = [f"# Re-run check: `{names[1]}` ({t2} threads) against `{names[0]}` ({t1} threads)", "",
           "| row | bits | first run [95 % interval] | second run | inside | second vs first (paired) |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for x in res["rows"]:
        out.append(f"| {x['row']} | {x['bits'] or '—'} | {fmt_ppl(_iv(x['first']))} | {x['second_ppl']:,.2f} | "
                   f"{'yes' if x['inside'] else '**no**'} | {fmt_percent(_iv(x['second_vs_first']))} |")  # fmt: skip
    same = sum(v["same"] for v in res["verdicts"])
    out += ["", f"Every row inside the first run's interval: {'yes' if res['all_inside'] else 'no'}. "
            f"Paired comparisons with the same verdict (better / worse / unresolved) in both runs: "
            f"{same} of {len(res['verdicts'])}.", ""]  # fmt: skip
    diff = [v for v in res["verdicts"] if not v["same"]]
    if diff:
        out += ["Comparisons whose verdict changed:", "", "| comparison | bits | first | second |", "|---|---|---|---|"]
        out += [f"| {v['a']} vs {v['b']} | {v['bits']} | {fmt_percent(_iv(v['first']))} | "
                f"{fmt_percent(_iv(v['second']))} |" for v in diff] + [""]  # fmt: skip
    out.append(records.record_markdown(res["run"]))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--out", default=None, help="write PREFIX.md and PREFIX.json")
    a = p.parse_args(argv)
    for f in (a.first, a.second):
        if not f.is_file():
            p.error(f"{f} does not exist")
    first, second = json.loads(a.first.read_text()), json.loads(a.second.read_text())
    res = compare(first, second)
    res["run"] = records.run_record(records.command_line(PROG, argv))
    md = markdown(res, first, second, (str(a.first), str(a.second)))
    print(md)
    if a.out:
        for path in records.write_report(a.out, res, md):
            print(f"wrote {path}")
    return 0 if res["all_inside"] else 1


if __name__ == "__main__":
    sys.exit(main())
