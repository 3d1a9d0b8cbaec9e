"""Triton kernels compiled for GPU targets without a GPU: static performance gates and the per-device compile check.

One file so that one pytest-xdist worker runs both, in turn: they compile many of the same
kernels, and the second finds them in Triton's cache and the ``ptxas -v`` cache
(`ttqkern.backends.sass.ptxas_usage`) instead of compiling them again in parallel.

Static performance gates on sm_90 and sm_80, from the SASS:

Runs ``python -m ttqkern.backends.triton.inspect --gates`` (in a subprocess: the
kernels must be compiled, not interpreted) for the Qwen3-8B and Qwen3-32B layer
shapes with the shipped and the default configs, 4-bit, at T = 1 (decode on the
vector units), T = 16 (decode on tensor cores) and T = 128 (the prefill kernel),
and checks every gate of issue 13 (`inspect.GATES`) plus what the report must
contain.  Each distinct kernel specialization compiles once per target (the
command dedupes within its process; Triton's cache keeps them across runs).

Every default and shipped config compiles for each catalog GPU's architecture, fits, and
does not spill: ``python -m ttqkern.tune --compile-check`` (sm_80 A100, sm_86 A40 / RTX
3090, sm_89 L40 / RTX 4090, sm_90 H100 / H200) covers every Triton op at T = 1
(`_gemv_kernel`), 16 (`_qdot_kernel` decode), 128 (`_qdot_kernel` prefill) and 512
(`_dequant_kernel`) on the Qwen3-8B layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttqkern.backends import sass
from ttqkern.tuning import devices

ROOT = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")

from ttqkern.backends.triton import interpreter_supported  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        not {"nvidia"} <= set(getattr(triton.backends, "backends", {})), reason="triton lacks the nvidia backend"
    ),
    pytest.mark.skipif(
        any(sass.find_tool(t) is None for t in ("cuobjdump", "ptxas")),
        reason="CUDA binary tools (cuobjdump, ptxas) not found: install triton with its bundled tools",
    ),
]

TARGETS = {"sm_90": "h200", "sm_80": "a100-80gb"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """``{arch: summary}`` of one inspect run per target (all cases of the gates), the targets in parallel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    tmp = tmp_path_factory.mktemp("gates")
    runs = {}
    for arch, device in TARGETS.items():
        cmd = [sys.executable, "-m", "ttqkern.backends.triton.inspect", "--arch", arch, "--device", device,
               "--shapes", "qwen3-8b,qwen3-32b", "--bits", "4", "--T", "1,16,128", "--configs", "shipped,default",
               "--json", str(tmp / f"{arch}.json"), "--gates"]  # fmt: skip
        runs[arch] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    for arch, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=1200)
        assert proc.returncode in (0, 1), stdout[-3000:] + stderr[-3000:]
        out[arch] = json.loads((tmp / f"{arch}.json").read_text())
        out[arch]["_stdout"] = stdout
    return out


@pytest.mark.parametrize("arch", list(TARGETS))
def test_every_gate_holds(reports, arch):
    from ttqkern.backends.triton.inspect import gate_failures

    rows = reports[arch]["rows"]
    assert len(rows) == 2 * 6 * 3  # config sets x layer shapes x token counts
    failures = {f"{r['configs']} {r['N']}x{r['K']} T={r['T']}": gate_failures(r) for r in rows}
    assert not {k: v for k, v in failures.items() if v}, reports[arch]["_stdout"][-4000:]


@pytest.mark.parametrize("arch", list(TARGETS))
def test_report_has_the_figures_the_issue_asks_for(reports, arch):
    for r in reports[arch]["rows"]:
        assert r["launches_per_call"] <= 2
        main = [k for k in r["kernels"] if k["kernel"] in ("_gemv_kernel", "_qdot_kernel")]
        assert len(main) == 1, r
        k = main[0]
        lp = k["main_loop"]
        for field in ("instructions", "memory", "families", "weight_bytes_per_iter", "lanes_per_weight_byte",
                      "issue_ceiling_GBps", "weight_bytes_in_flight_per_sm"):  # fmt: skip
            assert lp[field] is not None, (field, r["T"])
        for field in ("registers", "spill_bytes", "shared_bytes", "grid", "resident_ctas_per_sm"):
            assert k[field] is not None
        if r["T"] == 1:
            assert k["kernel"] == "_gemv_kernel" and lp["families"]["MMA"] == 0
        else:  # tensor cores: the instruction count per tensor-core op is reported
            assert k["kernel"] == "_qdot_kernel" and lp["instructions_per_mma"] > 0


@pytest.mark.skipif(not interpreter_supported(triton.__version__), reason="the AOT path needs triton >= 3.9")
def test_every_default_and_shipped_config_compiles_fits_and_does_not_spill(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env["TTQKERN_CONFIG_DIR"] = str(tmp_path)  # the shipped files only, not this machine's tuned ones
    # --jobs 1: on CI's two cores the other pytest worker holds the second one, and each spawned
    # process would cost its own torch + Triton import (6 s against 12 s when Triton's cache is warm)
    cmd = [sys.executable, "-m", "ttqkern.tune", "--compile-check", "--jobs", "1", "--report", str(tmp_path / "cc")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for d in devices.CATALOG:
        if d.vendor == "nvidia":
            assert f"{d.slug} ({d.target}):" in out and f"| {d.name} | {d.target} |" in out
    assert "FAIL" not in out
