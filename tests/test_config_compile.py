"""Every default and shipped Triton config compiles for each catalog GPU's architecture, fits, and does not spill.

``python -m ttqkern.tune --compile-check`` (sm_80 A100, sm_86 A40 / RTX 3090, sm_89
L40 / RTX 4090, sm_90 H100 / H200): no GPU needed, but the kernels must be compiled,
not interpreted, so it runs in a subprocess without TRITON_INTERPRET.  It covers every
Triton op at T = 1 (`_gemv_kernel`), 16 (`_qdot_kernel` decode), 128 (`_qdot_kernel`
prefill) and 512 (`_dequant_kernel`) on the Qwen3-8B layers; tests/test_gates.py
compiles many of the same kernels for sm_90 and sm_80 and finds them in Triton's
cache and the ``ptxas -v`` cache (`ttqkern.backends.sass.ptxas_usage`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.compiler")

from ttqkern.backends.triton import interpreter_supported  # noqa: E402
from ttqkern.tuning import devices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not interpreter_supported(triton.__version__), reason="the AOT path needs triton >= 3.9")
def test_every_default_and_shipped_config_compiles_fits_and_does_not_spill(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    env["TTQKERN_CONFIG_DIR"] = str(tmp_path)  # the shipped files only, not this machine's tuned ones
    r = subprocess.run([sys.executable, "-m", "ttqkern.tune", "--compile-check", "--report", str(tmp_path / "cc")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for d in devices.CATALOG:
        if d.vendor == "nvidia":
            assert f"{d.slug} ({d.target}):" in out and f"| {d.name} | {d.target} |" in out
    assert "FAIL" not in out
