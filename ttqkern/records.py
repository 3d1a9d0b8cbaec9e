"""Run records and report files: what every results file says about the run that made it.

A command that writes results calls `run_record` once at the end and `write_report`
to save ``PREFIX.json`` (the record plus the command's own payload) and ``PREFIX.md``
(the command's table), so every figure under ``results/`` carries the command line,
the date, the library versions, the machine, the thread count, the load average and
the git commit it came from.  Used by ``python -m ttqkern.eval``, its sub-commands and
``python -m ttqkern.tune``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

# Packages whose versions change numbers (kernels, tokenizers, samplers); absent ones are None.
VERSIONED = ("ttqkern", "torch", "numpy", "numba", "triton", "transformers", "optuna", "cupy-cuda13x", "cupy-cuda12x")


def command_line(prog: str, argv: Sequence[str]) -> str:
    """The shell command that reproduces a run: ``prog`` (e.g. ``python -m ttqkern.eval``) + argv, quoted."""
    return shlex.join([*shlex.split(prog), *argv])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "ttqkern":  # run from a checkout, not installed
            from . import __version__

            return __version__
        return None


def versions() -> dict[str, str | None]:
    """Python and the `VERSIONED` packages' versions (None: not installed)."""
    return {"python": platform.python_version(), **{d: _version(d) for d in VERSIONED}}


def git_commit() -> dict | None:
    """``{"commit", "dirty"}`` of the checkout this package was imported from; None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine() -> dict:
    """CPU name and count, OS, and the GPU when torch sees one."""
    from .tuning.devices import cpu_name

    out = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def run_record(command: str, *, seconds: float | None = None, **extra) -> dict:
    """The record of a run, taken when it ends.

    Keys: command, date (UTC ISO), seconds (wall time, if given), versions, machine,
    threads (torch's intra-op threads), load_average (1/5/15 min; other processes'
    load slows timings), git (commit and dirty flag, or None) and ``extra``.
    """
    rec = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else round(seconds, 1),
        "versions": versions(),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "git": git_commit(),
    }
    rec.update(extra)
    return rec


def record_markdown(rec: dict) -> str:
    """A one-paragraph footer for a report: the command and the conditions of the run."""
    v = rec["versions"]
    git = rec.get("git")
    commit = f"commit {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git else "not a git checkout"
    load = rec.get("load_average")
    parts = [
        f"Command: `{rec['command']}`",
        f"Run {rec['date']}" + (f", {rec['seconds']:.0f} s" if rec.get("seconds") is not None else ""),
        f"{rec['threads']} threads on {rec['machine']['cpu']} ({rec['machine']['cpu_count']} CPUs"
        + (f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}" if load else "")
        + ")",
        f"ttqkern {v['ttqkern']}, torch {v['torch']}, Python {v['python']}, {commit}.",
    ]
    return "; ".join(parts[:-1]) + "; " + parts[-1]


def write_report(prefix: str | os.PathLike, payload: dict, markdown: str | None = None) -> list[Path]:
    """Write ``PREFIX.json`` (payload, which holds a `run_record` under ``"run"`` or at the top)
    and, if given, ``PREFIX.md``; parent folders are created, each file replaced atomically.

    Returns the paths written.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = [(prefix.with_name(prefix.name + ".json"), json.dumps(payload, indent=1, allow_nan=True) + "\n")]
    if markdown is not None:
        out.append((prefix.with_name(prefix.name + ".md"), markdown if markdown.endswith("\n") else markdown + "\n"))
    for path, text in out:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return [p for p, _ in out]
