"""Plot GB/s per kernel and bit width from the CPU benchmark JSON (decode, T = 1, cold cache).

    python bench/plot.py results/bench/cpu.json results/bench/cpu_gbps.png

One panel per layer shape: a bar per kernel (torch's F.linear fp32 / bf16 and int4
kernel, ttqkern int2 / int3 / int4 / int8, the TTQ-extras and portable int4 rows),
GB/s of the weight bytes it streams; the dashed line is the streaming-read probe
measured in the same run (the roofline), the dotted one 85 % of it.  The title says
whether the run was flagged as contended.  Needs matplotlib (the ``eval`` extra).
"""

from __future__ import annotations

import sys

from report import BIG, OURS, PEERS, load


def plot(path: str, out: str, T: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _, _, mi, ci = load(path)
    st = mi.get("ttqkern", {})
    shapes = [s for s in BIG if (*s, T) in rows] + sorted(
        {(N, K) for N, K, t in rows if t == T and (N, K) not in BIG}, key=lambda s: -s[0] * s[1]
    )
    kinds = PEERS + OURS
    colors = {"fp32-linear": "#999999", "bf16-linear": "#bbbbbb", "torch-int4": "#e08020"}
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(7.0, 3.2 * len(shapes)), 4.2), sharey=True, squeeze=False)
    for ax, (N, K) in zip(axes[0], shapes, strict=True):
        rt = rows[(N, K, T)]
        ks = [k for k in kinds if k in rt]
        vals = [rt[k]["GBps"] for k in ks]
        ax.bar(range(len(ks)), vals, color=[colors.get(k, "#3070c0") for k in ks])
        ax.set_xticks(range(len(ks)), [k.replace("ttq-", "").replace("-linear", "") for k in ks], rotation=60,
                      ha="right", fontsize=8)  # fmt: skip
        probes = [rt[k]["probe_GBps"] for k in ks if rt[k].get("probe_GBps") == rt[k].get("probe_GBps")]
        if probes:
            p = sorted(probes)[len(probes) // 2]
            ax.axhline(p, ls="--", c="k", lw=1, label=f"read probe {p:.0f} GB/s")
            ax.axhline(0.85 * p, ls=":", c="k", lw=1, label="85% of probe")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(f"{N} x {K}", fontsize=10)
    axes[0][0].set_ylabel(f"GB/s of weight bytes (T = {T}, cold)")
    verdict = "CONTENDED RUN (not results)" if st.get("contended") else "quiet run"
    fig.suptitle(f"ttqkern Numba decode vs torch, {st.get('threads', '?')} threads, commit "
                 f"{ci.get('id', '?')[:10]} -- {verdict}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/plot.py results/bench/cpu.json out.png")
    plot(sys.argv[1], sys.argv[2])
