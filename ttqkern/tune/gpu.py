"""``python -m ttqkern.tune --gpu``: tune the Triton kernels' tiles for this GPU with Optuna.

Runs one study per op, bit width and shape bucket (`ttqkern.tune.tuner`), checks
every candidate against the torch backend, and merges the best configs into the
device's config file (``$TTQKERN_CONFIG_DIR/<device>.json``, default
``~/.cache/ttqkern/configs``), which the Triton backend reads at run time.  Shapes
not tuned keep the defaults.  Run it once per device; ``--ship`` writes into the
package's ``ttqkern/tuning/configs`` instead (for configs committed to the repo).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import __version__, backends

# nn.Linear weight shapes [N, K] of real models (the bench's layers)
PRESETS = {
    "qwen3-8b": [(4096, 4096), (12288, 4096), (4096, 12288)],  # q_proj, gate/up, down
    "qwen3-32b": [(8192, 5120), (25600, 5120), (5120, 25600)],
    "tiny": [(48, 96)],  # a smoke test (CPU interpreter)
}
OPS = ("gemv", "gemm", "quantize", "act_scale")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for raw in text.split(","):
        item = raw.strip()
        if item in PRESETS:
            out += PRESETS[item]
        elif "x" in item:
            n, k = item.split("x")
            out.append((int(n), int(k)))
        else:
            raise argparse.ArgumentTypeError(f"--shapes: {item!r} is neither NxK nor a preset ({', '.join(PRESETS)})")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``--gpu`` mode's argument parser."""
    p = argparse.ArgumentParser(prog="python -m ttqkern.tune --gpu", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ops", default="gemv,gemm,quantize", help=f"comma list of {', '.join(OPS)} (default gemv,gemm,quantize)"
    )
    p.add_argument("--shapes", type=_shapes, default=PRESETS["qwen3-8b"],
                   help="NxK weight shapes and/or presets " + ", ".join(PRESETS) + " (default qwen3-8b)")  # fmt: skip
    p.add_argument("--bits", type=_ints, default=[4, 3], help="bit widths (default 4,3)")
    p.add_argument("--decode-T", type=_ints, default=[1, 16], help="tokens per decode GEMV (default 1,16; each <= 16)")
    p.add_argument("--prefill-T", type=_ints, default=[512], help="tokens per prefill GEMM (default 512; each > 16)")
    p.add_argument("--prompt-T", type=int, default=512, help="prompt tokens for act_scale (default 512)")
    p.add_argument("--trials", type=int, default=40, help="trials per case at most (default 40)")
    p.add_argument("--time-per-case", type=float, default=60.0, help="seconds per case at most (default 60)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=None, help="config folder (default $TTQKERN_CONFIG_DIR or ~/.cache/ttqkern/configs)"
    )
    p.add_argument("--ship", action="store_true", help="write into the package's ttqkern/tuning/configs")
    p.add_argument("--report", type=Path, default=None, help="also write the study summary (JSON + .md) here")
    p.add_argument(
        "--device", default="cuda", help="cuda (default) or cpu: the Triton interpreter, for smoke tests only"
    )
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prog = "python -m ttqkern.tune --gpu"
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        print(f"{prog}: error: --ops: unknown {bad}; choose from {', '.join(OPS)}", file=sys.stderr)
        return 2
    if any(t > 16 or t < 1 for t in args.decode_T) or any(t <= 16 for t in args.prefill_T):
        print(f"{prog}: error: --decode-T values must be 1..16 and --prefill-T values > 16", file=sys.stderr)
        return 2
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        print(f"{prog}: error: needs optuna ({e}): pip install 'ttqkern[tune]'", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: no CUDA/ROCm GPU here (torch.cuda.is_available() is False); "
              "--device cpu runs the Triton interpreter for smoke tests", file=sys.stderr)  # fmt: skip
        return 2
    ok, why = backends.availability("triton")
    if not ok:
        print(f"{prog}: error: the Triton backend is not usable: {why}", file=sys.stderr)
        return 2

    from ..tuning import devices, store
    from . import tuner

    dtype = getattr(torch, args.dtype)
    todo = tuner.cases(ops, args.shapes, args.bits, args.decode_T, args.prefill_T, args.prompt_T)
    slug = devices.device_slug(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else devices.cpu_name()
    print(f"tuning {len(todo)} cases on {name} ({slug}), up to {args.trials} trials / {args.time_per_case:.0f} s each",
          flush=True)  # fmt: skip
    t0 = time.perf_counter()
    out_dir = store.PACKAGE_DIR if args.ship else args.out
    path = None

    def save(result, entries):  # after every case: a run stopped half way keeps what it found
        nonlocal path
        if result.key in entries:
            path = store.save(slug, {result.key: entries[result.key]}, out_dir)

    results, entries = tuner.tune(todo, device, trials=args.trials, timeout=args.time_per_case, seed=args.seed,
                                  dtype=dtype, log=lambda m: print(m, flush=True), on_result=save)  # fmt: skip
    rows = [r.as_dict() for r in results]
    print(f"\n{'case':<44} {'default us':>11} {'best us':>9} {'speedup':>8}")
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['case']:<44} {r['default_us']:>11.1f} {r['best_us']:>9.1f} {sp:>8}")
    failures = sum(len(r["failures"]) for r in rows)
    print(f"\n{len(entries)} configs written to {path} in {time.perf_counter() - t0:.0f} s; "
          f"{failures} candidate configs failed or gave wrong results (listed above)")  # fmt: skip
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "command": "python -m ttqkern.tune --gpu " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "device": name,
            "slug": slug,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"ttqkern": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "dtype": args.dtype,
            "seconds": time.perf_counter() - t0,
            "rows": rows,
        }
        args.report.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
        args.report.with_suffix(".md").write_text(tuner.report_markdown(summary))
    return 0 if entries else 1
