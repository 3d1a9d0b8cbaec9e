"""PNG plots of an eval result (``--plot calib`` / ``--plot group``), after the paper's Tables 1 and 2."""

from __future__ import annotations

from pathlib import Path

STYLE = {"rtn": ("RTN", "tab:gray", "s"), "awq": ("AWQ", "tab:blue", "o")}
TTQ_COLORS = ("tab:orange", "tab:red", "tab:purple", "tab:brown")


def _ttq_style(r: int, i: int):
    return f"TTQ r={r}", TTQ_COLORS[i % len(TTQ_COLORS)], "^"


def _axes(n: int):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on these machines
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(max(7.0, 5.2 * n), 4.4), squeeze=False)
    return plt, fig, axes[0]


def _style_axes(ax, xlabel: str, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _title(result: dict) -> str:
    s = result["settings"]
    return f"{s['model']} on {s['text']} ({s['windows']}x{s['seqlen']} tokens)"


def plot_calib(result: dict, path: Path) -> None:
    """Perplexity vs AWQ calibration tokens, per bit width; TTQ (no calibration), RTN and fp as horizontal lines."""
    rows = result["rows"]
    bits = sorted({r["bits"] for r in rows if r["method"] == "awq"})
    plt, fig, axes = _axes(len(bits))
    fp = [r["ppl"] for r in rows if r["method"] == "fp"]
    for ax, b in zip(axes, bits, strict=True):
        awq = sorted((r["calib_tokens"], r["ppl"]) for r in rows if r["method"] == "awq" and r["bits"] == b)
        ax.plot([x for x, _ in awq], [y for _, y in awq], "o-", color="tab:blue", label="AWQ (calibrated)")
        ttq = sorted({r["r"] for r in rows if r["method"] == "ttq"})
        for i, rank in enumerate(ttq):
            y = [r["ppl"] for r in rows if r["method"] == "ttq" and r["r"] == rank and r["bits"] == b]
            if y:
                lab, c, _ = _ttq_style(rank, i)
                ax.axhline(y[0], color=c, ls="--", label=f"{lab} (no calibration)")
        y = [r["ppl"] for r in rows if r["method"] == "rtn" and r["bits"] == b]
        if y:
            ax.axhline(y[0], color="tab:gray", ls=":", label="RTN")
        if fp:
            ax.axhline(fp[0], color="black", lw=0.8, label="fp32")
        ax.set_xscale("symlog", linthresh=max(1, min([x for x, _ in awq if x > 0] or [1])))
        ax.set_xlim(left=0)  # symlog would otherwise show a meaningless negative range
        g = sorted({r["group_size"] for r in rows if r["group_size"] is not None})
        _style_axes(ax, "AWQ calibration tokens", f"{b} bits, group {','.join(map(str, g))}")
    _save(plt, fig, path, "Perplexity vs calibration tokens\n" + _title(result))


def plot_group(result: dict, path: Path) -> None:
    """Perplexity vs group size, per bit width, for each method (fp as a horizontal line)."""
    rows = result["rows"]
    bits = sorted({r["bits"] for r in rows if r["bits"] is not None})
    plt, fig, axes = _axes(len(bits))
    fp = [r["ppl"] for r in rows if r["method"] == "fp"]
    ranks = sorted({r["r"] for r in rows if r["method"] == "ttq"})
    for ax, b in zip(axes, bits, strict=True):
        series = [("rtn", None), ("awq", None)] + [("ttq", rank) for rank in ranks]
        for m, rank in series:
            pts = sorted(
                (r["group_size"], r["ppl"]) for r in rows if r["method"] == m and r["bits"] == b
                and (rank is None or r["r"] == rank)
            )  # fmt: skip
            if not pts:
                continue
            lab, c, mk = STYLE[m] if m in STYLE else _ttq_style(rank, ranks.index(rank))
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=mk, color=c, label=lab)
        if fp:
            ax.axhline(fp[0], color="black", lw=0.8, label="fp32")
        ax.set_xscale("log", base=2)
        _style_axes(ax, "group size", f"{b} bits")
    _save(plt, fig, path, "Perplexity vs group size\n" + _title(result))


def plot(kind: str, result: dict, path: Path) -> None:
    """``kind`` is ``"calib"`` or ``"group"``; writes a PNG to ``path``."""
    if kind == "calib":
        plot_calib(result, path)
    elif kind == "group":
        plot_group(result, path)
    else:
        raise ValueError(f"plot kind must be 'calib' or 'group', got {kind!r}")


def main(argv=None) -> int:
    """``python -m ttqkern.eval.plots {calib,group} RESULT.json [OUT.png]``: redraw from a saved result."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m ttqkern.eval.plots", description=main.__doc__)
    p.add_argument("kind", choices=("calib", "group"))
    p.add_argument("result", help="a JSON written by python -m ttqkern.eval --out PREFIX")
    p.add_argument("png", nargs="?", help="output PNG (default: the JSON's path with .png)")
    a = p.parse_args(argv)
    path = Path(a.result)
    if not path.is_file():
        p.error(f"result {a.result!r} does not exist")
    out = Path(a.png) if a.png else path.with_suffix(".png")
    plot(a.kind, json.loads(path.read_text()), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
