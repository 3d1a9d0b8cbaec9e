"""Benchmark suite configuration: markers, machine state, contention rules, default JSON output.

``pytest bench -m cpu`` runs the CPU suite (``-m gpu`` the GPU one).  For the CPU
suite this file measures the machine before and after the run (load average,
CPU used by other processes, the streaming-read probe) and

- writes the JSON to ``results/bench/cpu.json`` unless ``--benchmark-json`` is given;
- records the state in the JSON's ``machine_info["ttqkern"]`` and flags the run
  ``contended`` when the 1-minute load average at the start is above
  ``--max-load`` (default 0.5 plus this run's own threads already counted), other
  processes used more than ``--max-others`` (default 5 %) of the CPUs while idle
  at the start, or the probe moved by more than ``--max-probe-drift`` (10 %)
  between start and end;
- refuses to run (exit code 3) when the start state is contended and
  ``--refuse-contended`` is given.

See docs/benchmarks.md for the regression workflow.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "results" / "bench" / "cpu.json"
THREADS = int(os.environ.get("TTQKERN_BENCH_THREADS", "2"))

_state: dict = {}


def pytest_addoption(parser):
    g = parser.getgroup("ttqkern-bench", "ttqkern benchmark machine state")
    g.addoption("--refuse-contended", action="store_true", help="exit before benchmarking when the machine is busy")
    g.addoption("--max-load", type=float, default=0.5, help="1-min load average above which a run is contended")
    g.addoption("--max-others", type=float, default=0.05, help="CPU share of other processes that marks contention")
    g.addoption("--max-probe-drift", type=float, default=0.10, help="relative probe change start->end that flags")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu: CPU benchmark (the Numba backend and its CPU peers)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    if getattr(config.option, "numprocesses", None):  # pytest-benchmark would silently time nothing
        raise pytest.UsageError("benchmarks run in one process: drop -n (pytest-xdist) for bench/")


def _cpu_selected(config) -> bool:
    expr = config.getoption("-m") or ""
    return "cpu" in expr and "not cpu" not in expr


def pytest_collection_modifyitems(session, config, items):
    if not any(item.get_closest_marker("cpu") for item in items):
        return
    bs = getattr(config, "_benchmarksession", None)  # pytest-benchmark's session (reads the option at configure)
    if bs is not None and bs.json is None and _cpu_selected(config):
        DEFAULT_JSON.parent.mkdir(parents=True, exist_ok=True)
        bs.json = DEFAULT_JSON
    from machine import ReadProbe, idle_share, llc_bytes, load_average

    load = load_average()
    others = idle_share(1.0)
    probe = ReadProbe(THREADS)
    start = probe.measure()
    reasons = []
    if load[0] > config.getoption("max_load"):
        reasons.append(f"load average {load[0]:.2f} > {config.getoption('max_load')}")
    if others > config.getoption("max_others"):
        reasons.append(f"other processes used {others:.0%} of the CPUs while this run was idle")
    _state.update(
        probe=probe, load_start=list(load), others_start=others, probe_start_GBps=start, reasons=reasons,
        llc_MiB=llc_bytes() >> 20, threads=THREADS, probe_kind=probe.kind,
        started=datetime.datetime.now().isoformat(timespec="seconds"),
    )  # fmt: skip
    msg = (f"ttqkern bench: load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, others {others:.0%}, "
           f"read probe {start:.1f} GB/s ({THREADS} threads)")  # fmt: skip
    print("\n" + msg + (" -- CONTENDED: " + "; ".join(reasons) if reasons else ""))
    if reasons and config.getoption("refuse_contended"):
        pytest.exit("machine is busy (" + "; ".join(reasons) + "): not benchmarking", returncode=3)


def session_probe():
    """The session's `machine.ReadProbe` (None outside a CPU benchmark run)."""
    return _state.get("probe")


def _finish_state(config) -> dict:
    if "probe_end_GBps" not in _state and "probe" in _state:
        from machine import idle_share, load_average

        _state["probe_end_GBps"] = _state["probe"].measure()
        _state["load_end"] = list(load_average())
        _state["others_end"] = idle_share(0.5)
        drift = _state["probe_end_GBps"] / _state["probe_start_GBps"] - 1
        _state["probe_drift"] = drift
        if abs(drift) > config.getoption("max_probe_drift"):
            _state["reasons"].append(f"read probe moved {drift:+.0%} between start and end")
        _state["contended"] = bool(_state["reasons"])
    return {k: v for k, v in _state.items() if k != "probe"}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if "probe" in _state:
        output_json.setdefault("machine_info", {})["ttqkern"] = _finish_state(config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if "probe" not in _state:
        return
    st = _finish_state(config)
    line = (f"ttqkern bench: read probe {st['probe_start_GBps']:.1f} -> {st['probe_end_GBps']:.1f} GB/s, "
            f"load {st['load_start'][0]:.2f} -> {st['load_end'][0]:.2f}")  # fmt: skip
    if st["contended"]:
        line += " -- CONTENDED (" + "; ".join(st["reasons"]) + "): these timings are not results"
    terminalreporter.write_line(line)
    if os.environ.get("TTQKERN_BENCH_STATE"):
        Path(os.environ["TTQKERN_BENCH_STATE"]).write_text(json.dumps(st, indent=1))
