"""``python -m ttqkern.tune --gpu`` and `ttqkern.tune.tuner`, on the Triton interpreter.

The tuner's timings mean nothing on the interpreter; what is tested is the
plumbing a GPU run relies on: every candidate goes through the store key the
backend looks up, wrong answers are caught and never saved, and the best
configs land in the device's config file where the backend finds them.
"""

from __future__ import annotations

import json

import pytest
import torch

from ttqkern import backends
from ttqkern.tuning import devices, store

pytest.importorskip("optuna")
triton = pytest.importorskip("triton")
if not backends.availability("triton")[0]:
    pytest.skip("Triton backend unavailable", allow_module_level=True)

from ttqkern.backends import triton as tb  # noqa: E402
from ttqkern.backends.triton import config  # noqa: E402
from ttqkern.tune import (
    gpu,  # noqa: E402
    tuner,  # noqa: E402
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_cases_cover_ops_and_dedupe_buckets():
    cs = tuner.cases(["gemv", "gemm", "quantize", "act_scale"], [(48, 96), (50, 100)], [4, 3], [1, 16], [33], 20)
    labels = [c.label() for c in cs]
    # 48x96 and 50x100 share the buckets N=64, K=128: tuned once
    assert len(labels) == len(set(labels)) == 2 * 2 + 2 * 1 + 2 + 1
    assert "gemv bits=3 T=16 N=48 K=96" in labels and "act_scale T=20 K=96" in labels


def test_override_is_what_the_backend_launches_with():
    key = config.key("gemv", bits=4, T=1, N=48, K=96)
    slug = devices.device_slug(torch.device(DEVICE))
    entry = {"BLOCK_N": 16, "SPLIT_K": 2}
    with store.override(slug, key, entry):
        got = config.params("gemv", torch.device(DEVICE), tb.INTERPRET, bits=4, T=1, N=48, K=96)
        assert got == {**config.defaults("gemv", tb.INTERPRET, T=1), **entry}
    assert config.params("gemv", torch.device(DEVICE), tb.INTERPRET, bits=4, T=1, N=48, K=96) == config.defaults(
        "gemv", tb.INTERPRET, T=1
    )


def test_wrong_answers_score_inf_and_are_reported(monkeypatch):
    case = tuner.Case("gemv", 4, 1, 48, 96)
    run, check = tuner.workload(case, torch.device(DEVICE), torch.float32)
    assert check(run()) == ""
    assert "differs from the torch backend" in check(run() + 1.0)

    def broken(case, device, dtype):  # a kernel that is wrong for every config
        return (lambda: run() * 2), check

    monkeypatch.setattr(tuner, "workload", broken)
    r = tuner.tune_case(
        case, torch.device(DEVICE), trials=2, timeout=60, seed=0, dtype=torch.float32, log=lambda m: None
    )
    assert r.default_us == float("inf") and r.best_us == float("inf")
    assert r.failures and "differs from the torch backend" in r.failures[0]
    _, entries = tuner.tune([case], torch.device(DEVICE), trials=2, timeout=60, dtype=torch.float32,
                                  log=lambda m: None)  # fmt: skip
    assert entries == {}  # never saved


def test_cli_writes_configs_the_backend_reads(config_dir, tmp_path, capsys):
    argv = ["--device", DEVICE, "--shapes", "tiny", "--ops", "gemv,quantize", "--bits", "4", "--decode-T", "1",
            "--trials", "3", "--time-per-case", "30", "--dtype", "float32", "--report", str(tmp_path / "rep")]  # fmt: skip
    assert gpu.main(argv) == 0
    out = capsys.readouterr().out
    assert "gemv bits=4 T=1 N=48 K=96" in out and "2 configs written" in out
    slug = devices.device_slug(torch.device(DEVICE))
    data = json.loads((config_dir / f"{slug}.json").read_text())
    key = config.key("gemv", bits=4, T=1, N=48, K=96)
    assert set(data["entries"]) == {key, config.key("quantize", bits=4, N=48, K=96)}
    store.load.cache_clear()
    assert config.params("gemv", torch.device(DEVICE), tb.INTERPRET, bits=4, T=1, N=48, K=96) == data["entries"][key]
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert [r["case"] for r in rep["rows"]] == ["gemv bits=4 T=1 N=48 K=96", "quantize bits=4 N=48 K=96"]
    assert all(r["best_us"] <= r["default_us"] for r in rep["rows"])
    assert "| gemv bits=4 T=1 N=48 K=96 |" in (tmp_path / "rep.md").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ops", "gemv,frob"], "unknown"),
        (["--decode-T", "32"], "--decode-T values must be 1..16"),
        (["--prefill-T", "8"], "--prefill-T values > 16"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    assert gpu.main(["--device", DEVICE, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cli_without_gpu_says_so(capsys):
    assert gpu.main([]) == 2
    assert "no CUDA/ROCm GPU here" in capsys.readouterr().err
