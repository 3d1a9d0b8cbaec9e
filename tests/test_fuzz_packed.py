"""Fuzzing the packed-weight entry points (issue 12, findings 1-4, 15; spec §5).

Inconsistent `PackedWeight`s (every field perturbed: shapes, dtypes, bits, group
size, planes, mins/zeros, form, layout, devices, types) and random `ops.pack` calls
with wrong shapes must be rejected before any kernel runs, with a ValueError /
TypeError (RuntimeError for devices) that names the field; weights that happen to
stay consistent must give the torch backend's answer.  Each backend's cases run in
one subprocess (`fuzz_packed.py`), so a crash -- the old failure mode was a
segfault or heap corruption *after* the call returned -- fails the test and names
the case that was running, instead of killing the test run.  The Numba process
loads its kernels from Numba's on-disk cache (``cache=True``), so a batch costs a
process start, not a compile.

Under ``NUMBA_BOUNDSCHECK=1`` (every array index checked: an index past a buffer
raises there instead of corrupting memory), a table of consistent weights
(`fuzz_packed.PATH_CASES`) runs every compiled entry point of the Numba backend --
the test checks that none was left out -- and each loop structure: one token,
token tiles with a ragged last tile, K tiles, parallel tasks, the portable
micro-kernel, ragged N, K and groups.  A table rather than random cases: each
kernel specialization costs a cold bounds-checked compile (seconds), and random
cases compile many specializations of the same loops.  Bounds-checked code is
different code: the backend's cache folder is keyed by ``NUMBA_BOUNDSCHECK`` and
``NUMBA_OPT`` too (`ttqkern.backends.numba.cache`), so the build is reused by later runs,
fresh clones included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ttqkern import backends

SCRIPT = str(Path(__file__).with_name("fuzz_packed.py"))
N_PACKED, N_PACK = 300, 60  # per backend; at least 200 of the perturbed weights are inconsistent
N_VALID = {"torch": 12, "numba": 12, "triton": 8}  # random consistent weights, every kernel path
GOOD_ERRORS = ("ValueError", "TypeError", "RuntimeError")


def run_cases(backend: str, batches: list[tuple[str, int, int]], env: dict | None = None, timeout: int = 600,
              kernels: bool = False):  # fmt: skip
    """Run case batches in one subprocess; returns ``{(kind, i): (description, outcome)}`` (and, with
    ``kernels``, ``{Numba entry point: specializations compiled}`` as the process reported them).

    Fails (naming the case) when the process dies or hangs inside a case.
    """
    cmd = [sys.executable, SCRIPT, backend, *(f"{k}:{a}:{n}" for k, a, n in batches)]
    full_env = {**os.environ, "TRITON_INTERPRET": "1", **(env or {})}
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=full_env, timeout=timeout)
        stdout, rc, err = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        stdout, rc, err = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout", ""
    began, results, used = {}, {}, {}
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "KERNELS":
            used = json.loads(rest)
        if tag == "BEGIN":
            kind, i, desc = rest.split(" ", 2)
            began[(kind, int(i))] = desc
        elif tag == "END":
            kind, i, out = rest.split(" ", 2)
            results[(kind, int(i))] = (began[(kind, int(i))], json.loads(out))
    unfinished = [f"{k} {i}: {d}" for (k, i), d in began.items() if (k, i) not in results]
    assert rc == 0 and not unfinished, (
        f"{backend}: the fuzz process ended with {rc} while running {unfinished or 'no case'}\n{err[-3000:]}"
    )
    expected = sum(n for _, _, n in batches)
    assert len(results) == expected, f"{backend}: {len(results)} of {expected} cases reported"
    return (results, used) if kernels else results


def names_field(message: str, names: list[str]) -> bool:
    return any(re.search(r"(?<![\w.])" + re.escape(n) + r"\b", message) for n in names)


def check(results) -> dict:
    """Every case raised a spec error naming its field, or matched the torch backend."""
    bad, counts = [], {"raised": 0, "consistent": 0}
    for (kind, i), (desc, out) in sorted(results.items()):
        if "ok" in out:
            counts["consistent"] += 1
            if not out["match"]:
                bad.append(f"{kind} {i} ({desc}): no error, and a result unlike the torch backend's")
        elif out["raised"] not in GOOD_ERRORS or not names_field(out["message"], out["names"]):
            bad.append(f"{kind} {i} ({desc}): {out['raised']}: {out['message'][:300]} (should name {out['names']})")
        else:
            counts["raised"] += 1
    assert not bad, f"{len(bad)} bad outcomes:\n" + "\n".join(bad[:40])
    return counts


def _available(name: str):
    ok, why = backends.availability(name)
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
def test_inconsistent_packed_weights_and_bad_pack_calls_are_rejected(backend):
    _available(backend)
    results = run_cases(backend, [("packed", 0, N_PACKED), ("pack", 0, N_PACK), ("valid", 0, N_VALID[backend])])
    packed = check({k: v for k, v in results.items() if k[0] == "packed"})
    pack = check({k: v for k, v in results.items() if k[0] == "pack"})
    valid = {k: v for k, v in results.items() if k[0] == "valid"}
    assert packed["raised"] >= 200, packed
    assert pack["raised"] >= 50, pack
    failed = [f"{i} ({d}): {o.get('traceback', o)}" for (_, i), (d, o) in valid.items() if not o.get("match")]
    assert not failed, "consistent weights failed:\n" + "\n".join(failed[:10])


def test_every_numba_path_stays_in_bounds_under_boundscheck():
    from fuzz_packed import PATH_CASES

    _available("numba")
    # NUMBA_OPT=0: bounds checks are inserted before LLVM optimizes, so the same indices are checked; a third
    # less compile time
    env = {"NUMBA_BOUNDSCHECK": "1", "NUMBA_OPT": "0"}
    results, kernels = run_cases("numba", [("path", 0, len(PATH_CASES))], env=env, timeout=1800, kernels=True)
    failed = [f"{i} ({d}): {o.get('traceback', o)}" for (_, i), (d, o) in results.items() if not o.get("match")]
    assert not failed, "under NUMBA_BOUNDSCHECK=1:\n" + "\n".join(failed[:10])
    missed = sorted(name for name, n in kernels.items() if n == 0)
    assert not missed, f"Numba entry points no case ran under boundscheck: {missed}"
