"""``python -m ttqkern.tune --compile-check``: every default and shipped config, compiled for each catalog GPU.

For each NVIDIA GPU of the catalog (`ttqkern.tuning.devices.CATALOG`) and each op of
the Triton backend's table, the configs a call on that GPU would use --
its shipped tuned entries, and the defaults (derived for that device) on real
models' layers -- are launched on CPU tensors with every kernel launch compiled
ahead of time for the GPU's architecture instead (nothing runs; no GPU needed).
Each compiled kernel must:

- compile (PTX and cubin for ``sm_80`` / ``sm_86`` / ``sm_89`` / ``sm_90a``),
- fit the device's shared memory per block (`Device.smem_kib`),
- fit its registers with at least one resident CTA per SM (``ptxas -v``,
  `ttqkern.backends.sass.occupancy`),
- not spill (``ptxas -v``: 0 bytes of spill stores and loads).

Compilation goes through the Triton backend's AOT capture
(``ttqkern.backends.triton.aot.capture``: the JIT's own specialization, so the code
is what the GPU runs); registers and spills are those of ``ptxas -v`` with the flags
Triton passes (`aot.ptxas_flags`), cached on disk by `ttqkern.backends.sass.ptxas_usage`
and shared with the static gates (``python -m ttqkern.backends.triton.inspect``), which
compile many of the same kernels.  Must run with TRITON_INTERPRET unset (tests run it
in a subprocess).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field

import torch

SHAPES = "qwen3-8b"
TOKENS = (1, 16, 128, 512)  # one-token, tensor-core decode, the prefill kernel, dequantize + cuBLAS
BITS = (4, 3)
GROUP = 128
_USAGE: dict = {}  # (arch, kernel, ptx, flags) -> ptxas -v usage, for this process (sass caches on disk too)


def _ptxas_usage(ln, cc: int, arch: str):
    """Registers and spills of one captured launch: its PTX re-assembled with ``ptxas -v``, the assembler
    and flags Triton used for ``cc`` (`aot.ptxas_flags`; `ttqkern.backends.sass.ptxas_usage`)."""
    from triton.backends.nvidia.compiler import get_ptxas

    from ..backends import sass
    from ..backends.triton import aot

    flags = aot.ptxas_flags(ln)
    kid = (arch, ln.kernel, ln.asm("ptx"), flags)
    if kid not in _USAGE:
        usage = sass.ptxas_usage(ln.asm("ptx"), arch, flags, get_ptxas(cc).path)
        _USAGE[kid] = next(iter(usage.values())) if usage else None
    return _USAGE[kid]


@dataclass
class Check:
    """One config of one op on one device, and what its kernels compiled to."""

    device: str
    op: str
    key: str
    source: str  # shipped / derived / default
    config: dict
    kernels: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _empty_inputs(case, dtype=torch.float16):
    from ..format import CANONICAL, PackedWeight, get_layout
    from ..quant import QuantFormat

    fmt = QuantFormat(case.bits or 4, case.group or GROUP).resolved(case.K)
    N, K, T = max(case.N, 1), case.K, max(case.T, 1)
    planes = get_layout(CANONICAL).planes(N, K, fmt)
    t = {f: torch.zeros(shape, dtype=dt) for f, (shape, dt) in planes.items()}
    pw = PackedWeight.build(fmt, (N, K), qweight=t["qweight"], qweight_hi=t.get("qweight_hi"), scales=t["scales"],
                            offsets=t.get("mins", t.get("zeros")))  # fmt: skip
    # nothing is launched, so the operands need no values (zeroing 100 MB layers cost seconds per device)
    return {"x": torch.empty(T, K, dtype=dtype), "W": torch.empty(N, K, dtype=dtype), "D": torch.ones(K),
            "A": torch.empty(16, K, dtype=dtype), "B": torch.empty(N, 16, dtype=dtype),
            "bias": torch.empty(N, dtype=dtype), "pw": pw, "fmt": fmt}  # fmt: skip


def _launch(backend, stage: str, case) -> None:
    from ..quant import ActScaling

    a = _empty_inputs(case)
    if stage == "act_scale":
        backend.act_scale(a["x"], ActScaling(0.25, 1.0, 2.0))
    elif stage == "quantize":
        backend.quantize(a["W"], a["D"], a["fmt"])
    else:
        backend.qmatmul(a["x"], a["pw"], a["D"], a["A"], a["B"], a["bias"])


def _shipped_cases(slug: str, table):
    """``[(case, entry)]`` for the package's tuned entries of ``slug`` (shape: the bucket's top)."""
    from ..tuning import store
    from .tuner import Case

    out = []
    for path in (store.PACKAGE_DIR / f"{slug}.json",):
        if not path.is_file():
            continue
        for key, entry in store._read(path).items():
            parts = key.split("/")
            if parts[0] != table.backend or parts[1] not in table.ops:
                continue
            vals = {k: int(v) for k, v in (p.split("=") for p in parts[2:])}
            full = {"bits": 0, "group": 0, "T": 0, "N": 0, "K": 0, **vals}
            out.append(
                (Case(table.backend, parts[1], full["bits"], full["group"], full["T"], full["N"], full["K"]), entry)
            )
    return out


def check_device(dev, backend, shapes, log=print) -> list[Check]:
    """Compile every default and shipped config of ``backend`` for catalog device ``dev``."""
    from triton.backends.compiler import GPUTarget

    from ..backends import sass
    from ..backends.triton import aot
    from ..tuning import store
    from . import tuner

    table = backend.params
    target = GPUTarget("cuda", int(dev.arch), 32)
    arch = f"sm_{dev.arch}a" if int(dev.arch) >= 90 else f"sm_{dev.arch}"
    shipped = _shipped_cases(dev.slug, table)
    keys = {c.key for c, _ in shipped}  # a default case whose key is shipped is checked as the shipped entry
    todo = [(c, None) for c in tuner.cases(table.backend, None, shapes, list(BITS), [GROUP]) if c.key not in keys]
    todo += shipped
    checks: list[Check] = []
    from ..backends.triton import config as triton_config

    with triton_config.device_override(dev):  # launches sized as on that GPU (its SMs: split factors, grids)
        for case, entry in todo:
            spec = table.ops[case.op]
            full = case.full_shape()
            res = table.resolve(case.op, dev, **full)
            cfg = {**res.defaults, **entry} if entry is not None else res.config
            source = "shipped" if entry is not None else res.source
            ck = Check(dev.slug, case.op, case.key, source, cfg)
            why = spec.invalid(cfg)
            if why:
                ck.problems.append(f"invalid: {why}")
                checks.append(ck)
                continue
            try:
                with aot.capture(target) as launches, store.override(dev.slug, case.key, cfg):
                    _launch(backend, spec.stage_of(case.op), case)
            except Exception as e:
                ck.problems.append(f"does not compile: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                checks.append(ck)
                continue
            for ln in launches:
                if spec.kernels and ln.kernel not in spec.kernels:
                    continue  # another op's kernel, launched at its own config (checked as that op)
                res_ = _ptxas_usage(ln, int(dev.arch), arch)
                regs = res_.registers if res_ else 0
                spills = res_.spills if res_ else 0
                occ = sass.occupancy(regs, ln.shared, ln.num_warps * 32, int(dev.arch)) if res_ else 0
                k = {"kernel": ln.kernel, "shared": ln.shared, "registers": regs, "spills": spills, "ctas_per_sm": occ,
                     "num_warps": ln.num_warps}  # fmt: skip
                ck.kernels.append(k)
                if ln.shared > dev.smem_kib * 1024:
                    ck.problems.append(f"{ln.kernel}: {ln.shared} B of shared memory > {dev.smem_kib} KiB")
                if res_ is None:
                    ck.problems.append(f"{ln.kernel}: ptxas -v reported nothing")
                elif spills:
                    ck.problems.append(
                        f"{ln.kernel}: spills {res_.spill_stores} B stored / {res_.spill_loads} B loaded"
                    )
                if res_ is not None and occ < 1:
                    ck.problems.append(f"{ln.kernel}: no CTA fits an SM ({regs} registers x {ln.num_warps} warps)")
            if spec.kernels and not ck.kernels:  # a case that compiles none of its op's kernels checks nothing
                ck.problems.append(f"launched none of {', '.join(spec.kernels)} at T = {full['T']}")
            checks.append(ck)
    return checks


def table_markdown(rows: list[dict]) -> str:
    out = ["| device | target | configs | compiled kernels | max shared KiB (limit) | max registers | spills | "
           "problems | configs shipped |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['device']} | {r['target']} | {r['configs']} | {r['kernels']} | "
                   f"{r['max_shared'] / 1024:.1f} ({r['smem_kib']}) | {r['max_registers']} | {r['spills']} | "
                   f"{r['problems']} | {r['kind']} |")  # fmt: skip
    return "\n".join(out) + "\n"


def _check_devices(slugs: list[str], shapes_spec: str) -> list[tuple[str, tuple]]:
    """``[(slug, (table row, checks as dicts, problems, seconds))]`` for catalog devices ``slugs``
    (one architecture: run in one process, they share its compiled kernels)."""
    from .. import backends
    from ..tuning import devices
    from .shapes import parse_shapes

    backend = backends.get("triton")
    shapes = parse_shapes(shapes_spec, list(TOKENS))
    out = []
    for slug in slugs:
        t0 = time.perf_counter()
        dev = devices.BY_SLUG[slug]
        checks = check_device(dev, backend, shapes)
        ks = [k for c in checks for k in c.kernels]
        probs = [f"{c.key} ({c.source}): {pr}" for c in checks for pr in c.problems]
        row = {"device": dev.name, "slug": dev.slug, "target": dev.target, "configs": len(checks),
               "kernels": len(ks), "max_shared": max((k["shared"] for k in ks), default=0),
               "smem_kib": dev.smem_kib, "max_registers": max((k["registers"] for k in ks), default=0),
               "spills": sum(k["spills"] > 0 for k in ks), "problems": len(probs),
               "kind": devices.config_kind(dev.slug)}  # fmt: skip
        out.append((slug, (row, [c.__dict__ for c in checks], probs, time.perf_counter() - t0)))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "python -m ttqkern.tune --compile-check"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="all", help="catalog slugs, comma list, or all NVIDIA ones (default)")
    p.add_argument("--backend", default="triton", help="backend whose configs to compile (default triton)")
    p.add_argument("--shapes", default=SHAPES, help=f"layers whose default configs are compiled (default {SHAPES})")
    p.add_argument("--report", default=None, help="write PREFIX.json / PREFIX.md")
    p.add_argument("--jobs", type=int, default=0,
                   help="processes compiling in parallel, one architecture each (default: one per CPU core)")  # fmt: skip
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(f"{prog}: error: unset TRITON_INTERPRET (the kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    from .. import backends
    from ..records import command_line, run_record, write_report
    from ..tuning import devices

    if a.backend != "triton":
        print(f"{prog}: error: compile checks exist for the triton backend only so far", file=sys.stderr)
        return 2
    nvidia = [d for d in devices.CATALOG if d.vendor == "nvidia"]
    wanted = nvidia if a.devices == "all" else [devices.BY_SLUG.get(s.strip()) for s in a.devices.split(",")]
    if any(d is None or d.vendor != "nvidia" for d in wanted):
        print(
            f"{prog}: error: --devices: NVIDIA catalog slugs are {', '.join(d.slug for d in nvidia)}", file=sys.stderr
        )
        return 2
    if backends.get(a.backend) is None:
        print(f"{prog}: error: {backends.availability(a.backend)[1]}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    # one task per architecture: devices of an arch share compiled kernels (this process's cache)
    groups: dict[str, list[str]] = {}
    for d in wanted:
        groups.setdefault(d.target, []).append(d.slug)
    jobs = max(1, min(a.jobs or os.cpu_count() or 1, len(groups)))
    print(f"compiling for {', '.join(groups)} in {jobs} process{'es' if jobs > 1 else ''}", flush=True)
    by_slug: dict[str, tuple] = {}

    def finished(target: str, results) -> None:
        by_slug.update(results)
        print(f"{target}: {', '.join(s for s, _ in results)} checked ({time.perf_counter() - t0:.0f} s)", flush=True)

    if jobs == 1:
        for target, slugs in groups.items():
            finished(target, _check_devices(slugs, a.shapes))
    else:  # spawned, not forked: the parent holds torch's and Triton's threads
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = {ex.submit(_check_devices, slugs, a.shapes): target for target, slugs in groups.items()}
            for fut in concurrent.futures.as_completed(futures):
                finished(futures[fut], fut.result())
    rows, failed, details = [], [], []
    for dev in wanted:
        row, checks, probs, seconds = by_slug[dev.slug]
        failed += [f"{dev.slug}: {pr}" for pr in probs]
        rows.append(row)
        details += checks
        print(f"{dev.slug} ({dev.target}): {row['configs']} configs, {row['kernels']} kernel launches compiled, "
              f"{len(probs)} problems ({seconds:.0f} s)", flush=True)  # fmt: skip
    md = table_markdown(rows)
    print("\n" + md)
    for f in failed:
        print(f"FAIL {f}")
    print(
        f"compiled with ttqkern.backends.triton.aot (the JIT's specialization); {len(failed)} problems in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if a.report:
        rec = run_record(command_line(prog, argv), seconds=time.perf_counter() - t0)
        write_report(a.report, {"run": rec, "rows": rows, "checks": details, "failures": failed}, md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
