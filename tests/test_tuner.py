"""``python -m ttqkern.tune --gpu`` on the Triton interpreter: the plumbing a GPU run relies on.

Timings mean nothing on the interpreter; what is tested: every candidate goes
through the store key the Triton backend looks up, and the best configs land in
the device's config file where the backend finds them.
"""

from __future__ import annotations

import json

import pytest
import torch

from ttqkern import backends
from ttqkern.tuning import devices, lookup, store

pytest.importorskip("optuna")
triton = pytest.importorskip("triton")
if not backends.availability("triton")[0]:
    pytest.skip("Triton backend unavailable", allow_module_level=True)

from ttqkern.backends import triton as tb  # noqa: E402
from ttqkern.backends.triton import config  # noqa: E402
from ttqkern.tune import gpu, tuner  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = {"bits": 4, "group": 96, "T": 1, "N": 48, "K": 96}


def test_cases_follow_each_ops_token_range_and_dedupe_buckets():
    cs = tuner.cases("triton", None, [(1, 48, 96), (1, 50, 100), (33, 48, 96)], [4, 3], [128])
    labels = [c.label() for c in cs]
    # 48x96 and 50x100 share the buckets N=64, K=128 and the group size: tuned once
    assert "decode1 bits=4 group=128 N=48 K=96" in labels and "prefill bits=3 group=128 T=33 N=48 K=96" in labels
    assert not any("N=50" in lb for lb in labels)
    assert not any(c.op in ("decode1", "decode") and c.T > config.DECODE_MAX_T for c in cs)
    assert not any(c.op == "decode1" and c.T > 1 for c in cs)
    assert not any(c.op in ("prefill", "dequant") and c.T <= config.DECODE_MAX_T for c in cs)
    assert len(labels) == len(set(labels))


def test_override_is_what_the_backend_launches_with():
    key = config.key("decode1", **SHAPE)
    slug = devices.device_slug(torch.device(DEVICE))
    entry = {"ROWS": 2, "PREFETCH": 0}
    base = config.defaults("decode1", tb.INTERPRET, T=1)
    with store.override(slug, key, entry):
        assert config.params("decode1", torch.device(DEVICE), tb.INTERPRET, **SHAPE) == {**base, **entry}
        assert lookup("decode1", SHAPE, device=DEVICE, backend="triton").source == "override"
    assert config.params("decode1", torch.device(DEVICE), tb.INTERPRET, **SHAPE) == base


def test_cli_writes_configs_the_backend_reads(config_dir, tmp_path, capsys):
    argv = ["--device", DEVICE, "--shapes", "1x48x96", "--ops", "decode1,quantize", "--bits", "4", "--group-size", "96",
            "--trials", "3", "--dtype", "float32", "--storage", f"journal:{tmp_path / 'j.journal'}", "--no-progress",
            "--report", str(tmp_path / "rep")]  # fmt: skip
    assert gpu.main(argv) == 0
    out = capsys.readouterr().out
    assert "decode1 bits=4 group=96 N=48 K=96" in out and "2 configs written" in out
    slug = devices.device_slug(torch.device(DEVICE))
    data = json.loads((config_dir / f"{slug}.json").read_text())
    key = config.key("decode1", **SHAPE)
    assert set(data["entries"]) == {key, config.key("quantize", bits=4, group=96, N=48, K=96)}
    store.load.cache_clear()
    got = config.params("decode1", torch.device(DEVICE), tb.INTERPRET, **SHAPE)
    assert got == {**config.defaults("decode1", tb.INTERPRET, T=1), **data["entries"][key]}
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert [r["case"] for r in rep["rows"]] == [
        "decode1 bits=4 group=96 N=48 K=96",
        "quantize bits=4 group=96 N=48 K=96",
    ]
    assert "| decode1 bits=4 group=96 N=48 K=96 |" in (tmp_path / "rep.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cli_without_gpu_says_so(capsys):
    assert gpu.main(["--no-progress"]) == 2
    assert "no CUDA/ROCm GPU here" in capsys.readouterr().err


def test_a_catalog_gpu_never_tuned_gets_derived_defaults_that_fit_it():
    shape = {"bits": 4, "group": 128, "T": 512, "N": 4096, "K": 4096}
    a100 = lookup("prefill", shape, device="a100-80gb", backend="triton")
    assert a100.source == "derived" and "A100" in a100.note and "108 SMs" in a100.note
    assert a100.config["BLOCK_T"] == 64  # 128 x 128 spills below sm_90 (both MMA operands in registers)
    assert lookup("prefill", shape, device="h100", backend="triton").config["BLOCK_T"] == 128
    assert devices.config_kind("a100-80gb") == "derived" and devices.config_kind("h200") == "tuned"
    h200 = lookup("quantize", {"bits": 4, "group": 128, "N": 4096, "K": 4096}, device="h200", backend="triton")
    assert h200.source == "shipped" and h200.path == store.PACKAGE_DIR / "h200.json"
    assert h200.provenance["command"].startswith("python -m ttqkern.tune --gpu")


def test_constraint_rejects_configs_that_cannot_fit():
    prefill = config.TABLE.ops["prefill"]
    shape = {"bits": 4, "group": 128, "T": 512, "N": 4096, "K": 4096}
    big = {**config.defaults("prefill", False, T=512), "BLOCK_T": 128, "BLOCK_N": 256, "CHUNK": 128, "num_stages": 4}
    assert "shared memory" in prefill.rejects(big, "rtx4090", **shape)
    assert prefill.rejects(config.defaults("prefill", False, T=512, cc=89), "rtx4090", **shape) == ""
    hopper = config.defaults("prefill", False, T=512, cc=90)  # 128 x 128: fine on Hopper, spills on an A100
    assert prefill.rejects(hopper, "h200", **shape) == ""
    assert "spill before Hopper" in prefill.rejects(hopper, "a100-80gb", **shape)


def test_prefill_threshold_is_stored_as_the_choice_it_makes():
    canon = config.TABLE.ops["prefill"].canonicalize
    base = config.defaults("prefill", False, T=512)
    shape = {"bits": 4, "group": 128, "T": 512, "N": 4096, "K": 4096}
    assert canon({**base, "DEQUANT_MIN_T": 256}, **shape)["DEQUANT_MIN_T"] == 16  # dequantize + cuBLAS
    assert canon({**base, "DEQUANT_MIN_T": 1024}, **shape)["DEQUANT_MIN_T"] == 1 << 30  # the kernel
    assert canon({**base, "DEQUANT_MIN_T": 512}, **shape) == canon({**base, "DEQUANT_MIN_T": 64}, **shape)
