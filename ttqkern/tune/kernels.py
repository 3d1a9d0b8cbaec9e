"""``python -m ttqkern.tune --cpu`` / ``--gpu``: tune a backend's kernel parameters with Optuna.

One study per (device, backend, op, bits, group size, shape bucket) (`ttqkern.tune.tuner`);
every candidate is checked against the torch backend before it is timed; the best
config of each study goes into this device's config file
(``$TTQKERN_CONFIG_DIR/<device>.json``, default ``~/.cache/ttqkern/configs``), which
the backend reads at run time (`ttqkern.tuning.lookup` shows what a call uses).

Fleets: point ``--storage`` at a database every machine reaches (e.g.
``postgresql+psycopg2://user:pw@host/db``) and run the same command on each machine;
machines of one device model share its studies, and each exports the best configs
to its own device's config file.  Without ``--storage`` the studies live in a local
journal file, so a rerun resumes them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from .. import backends
from .shapes import PRESETS, parse_ints, parse_shapes

MODES = {
    "cpu": {"backend": "numba", "shapes": "smollm2-135m", "tokens": "1,8,32", "dtype": "float32", "device": "cpu"},
    "gpu": {"backend": "triton", "shapes": "qwen3-8b", "tokens": "1,16,512", "dtype": "float16", "device": "cuda"},
}


def build_parser(mode: str) -> argparse.ArgumentParser:
    """The ``--cpu`` / ``--gpu`` mode's argument parser."""
    d = MODES[mode]
    p = argparse.ArgumentParser(prog=f"python -m ttqkern.tune --{mode}", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=d["backend"], help=f"backend to tune (default {d['backend']})")
    p.add_argument("--ops", default=None, help="comma list of the backend's ops (default: every op it declares)")
    p.add_argument("--shapes", default=d["shapes"],
                   help="TxNxK items, NxK items and presets (" + ", ".join(PRESETS) + f"); default {d['shapes']}")  # fmt: skip
    p.add_argument("--tokens", default=d["tokens"], help=f"T values for NxK items and presets (default {d['tokens']})")
    p.add_argument("--bits", default="4,3", help="bit widths (default 4,3)")
    p.add_argument("--group-size", default="128", help="group sizes, -1 = one group per row (default 128)")
    p.add_argument("--trials", type=int, default=40, help="trials per case in this process (default 40)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per case in this process at most")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: journal:PATH, sqlite:///PATH or a database URL shared by a fleet "
                        "(default: a journal file under ~/.cache/ttqkern/tune)")  # fmt: skip
    p.add_argument("--study-name", default="ttqkern", help="prefix of the study names (default ttqkern)")
    p.add_argument("--out", type=Path, default=None,
                   help="config folder written (default $TTQKERN_CONFIG_DIR or ~/.cache/ttqkern/configs)")  # fmt: skip
    p.add_argument("--ship", action="store_true", help="write into the package's ttqkern/tuning/configs")
    p.add_argument("--report", type=Path, default=None, help="also write PREFIX.json / PREFIX.md (run record + table)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=d["dtype"],
                   help=f"activation dtype (default {d['dtype']})")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: random; give each worker its own)")
    p.add_argument("--device", default=d["device"],
                   help="cuda / cuda:N" + (" or cpu (the Triton interpreter: smoke tests only, one timing round)" if mode == "gpu" else ""))  # fmt: skip
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if mode == "cpu":
        p.add_argument("--threads", type=int, default=None, help="Numba threads (default: Numba's)")
        p.add_argument(
            "--rounds", type=int, default=5, help="interleaved candidate/default pairs per trial (default 5)"
        )
        p.add_argument("--max-load", type=float, default=None,
                       help="refuse to start when the 1-minute load average is above this (default: warn above 0.5)")  # fmt: skip
    return p


def _fail(prog: str, msg: str) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def main(argv, mode: str) -> int:
    argv = list(argv)
    prog = f"python -m ttqkern.tune --{mode}"
    args = build_parser(mode).parse_args(argv)
    try:
        bits = parse_ints("--bits", args.bits)
        groups = [int(v) for v in args.group_size.split(",") if v.strip()]
        if not groups or any(g == 0 or g < -1 for g in groups):
            raise argparse.ArgumentTypeError(f"--group-size: values must be > 0 or -1, got {args.group_size!r}")
        shapes = parse_shapes(args.shapes, parse_ints("--tokens", args.tokens))
    except (argparse.ArgumentTypeError, ValueError) as e:
        return _fail(prog, str(e))
    if args.trials < 1:
        return _fail(prog, f"--trials must be >= 1, got {args.trials}")
    if args.timeout is not None and not args.timeout > 0:
        return _fail(prog, f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        backends.check_name(args.backend)
    except ValueError as e:
        return _fail(prog, f"--backend: {e}")
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        return _fail(prog, f"needs optuna ({e}): pip install 'ttqkern[tune]'")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail(prog, "no CUDA/ROCm GPU here (torch.cuda.is_available() is False)"
                     + ("; --device cpu runs the Triton interpreter for smoke tests" if mode == "gpu" else ""))  # fmt: skip
    ok, why = backends.availability(args.backend)
    if not ok:
        return _fail(prog, f"the {args.backend} backend is not usable: {why}")
    b = backends.get(args.backend)
    if device.type not in b.device_types:
        return _fail(prog, f"backend {args.backend!r} runs on {', '.join(b.device_types)}, not {device.type}")
    if b.params is None:
        return _fail(prog, f"backend {args.backend!r} declares no tunable parameters")
    if mode == "cpu" and args.threads is not None:
        import numba

        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            return _fail(prog, f"--threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {args.threads}")
        from ..threads import set_threads

        set_threads(args.threads)

    from ..records import command_line, run_record, write_report
    from ..tuning import devices, store
    from . import storage, tuner

    ops = [o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else None
    try:
        todo = tuner.cases(args.backend, ops, shapes, bits, groups)
        storage.kind(args.storage)
    except ValueError as e:
        return _fail(prog, str(e))
    if not todo:
        return _fail(prog, "no cases: no op of the backend serves these shapes and token counts")
    if args.list:
        for c in todo:
            print(f"{c.label()}    [{c.key}]")
        return 0

    command = command_line(prog, argv)
    target = devices.target(device)
    state = _machine_state(device, args, mode)
    if state.get("refuse"):
        return _fail(prog, state["refuse"])
    print(f"tuning {len(todo)} cases of {args.backend} on {target.name} ({devices.device_slug(device)}): up to "
          f"{args.trials} trials each in this process; studies in {storage.describe(args.storage)}", flush=True)  # fmt: skip
    for w in state.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr, flush=True)

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * args.trials, desc="trials", unit="trial", dynamic_ncols=True)

    def on_trial(case, trial):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(case.label(), refresh=False)

    def log(msg):
        (bar.write if bar is not None else print)(msg)

    meta = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": args.backend}
    # --gpu --device cpu runs the kernels in Triton's interpreter, whose times say nothing of a GPU:
    # one timing round per trial and per confirmation is enough for the smoke test it is
    smoke = mode == "gpu" and device.type == "cpu"
    rounds = {"cpu_rounds": 1, "confirm_rounds": 1} if smoke else {"cpu_rounds": getattr(args, "rounds", 5)}
    t = tuner.Tuner(args.backend, device, storage=args.storage, prefix=args.study_name, trials=args.trials,
                    timeout=args.timeout, seed=args.seed, dtype=getattr(torch, args.dtype),
                    out_dir=store.PACKAGE_DIR if args.ship else args.out, meta=meta, log=log, on_trial=on_trial,
                    **rounds)  # fmt: skip
    if mode == "cpu":
        t.roofline_gbps = state["bandwidth_gbps"][0]
    t0 = time.perf_counter()

    def done(r):
        if bar is not None:  # trials this process skipped (timeout) still count as done
            bar.update(max(0, args.trials - r.here))
        for f in r.failures:
            log(f"[{r.case.label()}] WRONG OR FAILED CONFIG (not stored): {f}")

    try:
        results = t.tune(todo, on_result=done)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if mode == "cpu":
        state["bandwidth_gbps"].append(round(devices.measure_cpu_bandwidth(1 << 27, 3), 2))
        state["load_end"] = _load()
        state.update(_verdict(state, results))
    rows = [r.as_dict() for r in results]
    print(table(rows, roofline=t.roofline_gbps, cpu=mode == "cpu"))
    saved = sum(r["saved"] for r in rows)
    failures = sum(len(r["failures"]) for r in rows)
    print(f"\n{saved} configs written to {t.path} in {seconds:.0f} s; {failures} candidate configs failed the check "
          "against the torch backend (listed above, never stored)")  # fmt: skip
    if mode == "cpu":
        print(f"machine: {state['verdict']}")
    if args.report:
        rec = run_record(command, seconds=seconds, machine_state=state, storage=storage.describe(args.storage))
        summary = {"command": command, "run": rec, "backend": args.backend, "device": target.name,
                   "slug": devices.device_slug(device), "dtype": args.dtype, "config_file": str(t.path),
                   "roofline_gbps": t.roofline_gbps, "rows": rows,
                   "notes": [state["verdict"]] if mode == "cpu" else []}  # fmt: skip
        write_report(args.report, summary, tuner.report_markdown(summary))
    return 0 if saved else 1


def _load() -> float | None:
    from .timing import load_average

    v = load_average()
    return None if v is None else round(v, 2)


def _machine_state(device, args, mode) -> dict:
    """Load average (and, on the CPU, a bandwidth probe) before the run; warnings; a refusal."""
    state: dict = {"load_start": _load(), "warnings": []}
    if mode != "cpu":
        return state
    import numba

    from ..tuning import devices

    state["threads"] = numba.get_num_threads()
    state["bandwidth_gbps"] = [round(devices.measure_cpu_bandwidth(1 << 27, 3), 2)]
    load = state["load_start"]
    if load is not None and args.max_load is not None and load > args.max_load:
        state["refuse"] = f"load average {load:.2f} > --max-load {args.max_load}: other processes would skew timings"
    elif load is not None and load > 0.5:
        state["warnings"].append(
            f"load average {load:.2f} > 0.5: other processes share the CPUs; timings are interleaved with the "
            "default and checked for contention, but tune on a quiet machine for results to keep"
        )
    return state


def _verdict(state: dict, results) -> dict:
    bw = state["bandwidth_gbps"]
    moved = abs(bw[-1] / bw[0] - 1) if bw[0] > 0 else math.inf
    contended = sum(r.contended for r in results)
    loads = [v for v in (state["load_start"], state.get("load_end")) if v is not None]
    quiet = moved <= 0.10 and all(v <= 0.5 for v in loads) and contended == 0
    why = (f"bandwidth probe {bw[0]:.1f} -> {bw[-1]:.1f} GB/s ({moved:+.0%} moved), load average "
           f"{' -> '.join(f'{v:.2f}' for v in loads)}, {contended} contended measurements")  # fmt: skip
    verdict = ("quiet: " if quiet else "NOT QUIET (timings may be skewed; rerun on a quiet machine): ") + why
    return {"quiet": quiet, "contended_measurements": contended, "verdict": verdict}


def table(rows: list[dict], roofline: float = 0.0, cpu: bool = False) -> str:
    """The final table: default vs best time, GB/s, % of roofline, speed-up per case."""
    head = f"{'case':<46} {'default us':>11} {'best us':>10} {'speed-up':>9} {'GB/s':>7} {'%roof':>6} {'trials':>9} {'failed':>6}"
    if cpu:
        head += f" {'contended':>9}"
    lines = ["", head]
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        gbps = f"{r['gbps']:.1f}" if r["gbps"] is not None else "-"
        pct = f"{r['roofline_pct']:.0f}" if r["roofline_pct"] is not None else "-"
        line = (f"{r['case']:<46} {r['default_us']:>11.1f} {r['best_us']:>10.1f} {sp:>9} {gbps:>7} {pct:>6} "
                f"{r['trials_here']:>4}/{r['trials']:<4} {len(r['failures']):>6}")  # fmt: skip
        if cpu:
            line += f" {r['contended']:>9}"
        lines.append(line)
    lines.append(f"(roofline: {roofline:.1f} GB/s" + (", the bandwidth probe at the start)" if cpu else ")"))
    return "\n".join(lines)
