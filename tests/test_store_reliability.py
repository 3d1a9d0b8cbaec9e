"""The tuned-config store under concurrent writers and odd files (issue 12, findings 5-7, 18).

A config file is data a user or a tuner wrote; nothing in it may crash, hang or
mislead a kernel: every odd file is a warning and the defaults, every tuned value
is checked by type and range, and concurrent `store.save` calls lose nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from ttqkern import ops
from ttqkern.tuning import store
from ttqkern.tuning.params import ConfigTable, Int, OpParams

HERE = Path(__file__).parent


@pytest.fixture
def fast_dir(tmp_path):
    """A folder on tmpfs when there is one: each save fsyncs, ~5 ms apiece on a disk, and the
    test is about atomicity and locking, which hold on any POSIX filesystem."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ttqkern-store-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_two_writers_lose_nothing_and_a_reader_never_sees_half_a_file(fast_dir):
    """Finding 7: 2 processes x 300 saves of distinct keys + 1 reader."""
    tmp_path = fast_dir
    stop = tmp_path / "stop"
    script = str(HERE / "store_stress.py")
    reader = subprocess.Popen([sys.executable, script, "read", str(tmp_path), str(stop)], stdout=subprocess.PIPE)
    writers = [subprocess.Popen([sys.executable, script, "write", str(tmp_path), name, "300"]) for name in ("w0", "w1")]
    try:
        for w in writers:
            assert w.wait(timeout=240) == 0
    finally:
        stop.touch()
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    seen = json.loads(out)
    entries = json.loads((tmp_path / "cpu.json").read_text())["entries"]
    assert set(entries) == {f"w{p}/{i}" for p in (0, 1) for i in range(300)}
    assert all(entries[f"w{p}/{i}"] == {"BLOCK_N": i} for p in (0, 1) for i in range(300))
    assert seen["loads"] > 10 and seen["bad"] == 0, seen
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"


def _load_warns(config_dir, match):
    store.load.cache_clear()
    with pytest.warns(UserWarning, match=match):
        entries = store.load("cpu")
    assert entries == {}


def test_a_fifo_at_the_config_path_is_skipped_without_blocking(config_dir):
    """Finding 18: a FIFO used to block `store.load` forever (the open waits for a writer)."""
    os.mkfifo(config_dir / "cpu.json")
    t0 = time.perf_counter()
    _load_warns(config_dir, "not a regular file")
    assert time.perf_counter() - t0 < 5


def test_a_directory_at_the_config_path_is_skipped(config_dir):
    (config_dir / "cpu.json").mkdir()
    _load_warns(config_dir, "not a regular file")


def test_a_dangling_symlink_is_reported(config_dir):
    """Finding 18: a dangling link used to be ignored silently."""
    (config_dir / "cpu.json").symlink_to(config_dir / "nowhere.json")
    _load_warns(config_dir, "dangling symbolic link")


def test_a_symlink_to_a_good_file_is_read(config_dir, tmp_path_factory):
    real = tmp_path_factory.mktemp("elsewhere") / "configs.json"
    real.write_text(json.dumps({"format": store.FORMAT, "version": store.VERSION, "entries": {"k": {"A": 1}}}))
    (config_dir / "cpu.json").symlink_to(real)
    store.load.cache_clear()
    assert store.load("cpu") == {"k": {"A": 1}}


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deeply_nested_json_is_a_warning(config_dir, depth):
    """Finding 6: deep nesting raised RecursionError out of `load`."""
    (config_dir / "cpu.json").write_text("[" * depth + "]" * depth)
    _load_warns(config_dir, "not valid JSON")


def test_nesting_inside_an_entry_is_rejected_by_the_table(config_dir):
    deep = json.loads("[" * 500 + "]" * 500)
    store.save("cpu", {"numba/act_scale/T=4/K=64": {"BLOCK_K": deep}}, config_dir)
    with pytest.warns(UserWarning, match="invalid values"):
        D = ops.act_scale(torch.randn(4, 64), backend="numba")
    assert D.shape == (64,)


def test_an_oversized_file_is_not_read(config_dir, monkeypatch):
    monkeypatch.setattr(store, "MAX_BYTES", 1000)
    (config_dir / "cpu.json").write_text(" " * 2000 + "{}")
    _load_warns(config_dir, "larger than any config file")


def test_binary_garbage_is_a_warning(config_dir):
    (config_dir / "cpu.json").write_bytes(b"\xff\xfe\x00garbage")
    _load_warns(config_dir, "cannot read it|not valid JSON")


TABLE = ConfigTable("demo", {"op": OpParams(("N",), {"BLOCK": Int(1, 64, pow2=True)}, defaults={"BLOCK": 16})})


@pytest.mark.parametrize(
    "value",
    [16.0, 8.0, True, False, -8, 0, 128, 3, "16", None, [16], {"v": 16}, float("nan")],
    ids=repr,
)
def test_every_tuned_value_is_checked_by_type_and_range(config_dir, value):
    """Finding 5: ``16.0 == 16`` skipped validation and reached the kernel as a double."""
    store.save("cpu", {TABLE.key("op", N=100): {"BLOCK": value}}, config_dir)
    with pytest.warns(UserWarning, match="invalid values"):
        got = TABLE.params("op", "cpu", N=100)
    assert got == {"BLOCK": 16} and type(got["BLOCK"]) is int


def test_a_valid_tuned_value_is_used(config_dir):
    store.save("cpu", {TABLE.key("op", N=100): {"BLOCK": 32}}, config_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TABLE.params("op", "cpu", N=100) == {"BLOCK": 32}


@pytest.mark.parametrize(
    "op,field,shape",
    [
        ("qmatmul", "BLOCK_N", dict(bits=4, group=32, T=4, N=32, K=64)),
        ("quantize", "BLOCK_N", dict(bits=4, group=32, N=32, K=64)),
        ("act_scale", "BLOCK_K", dict(T=4, K=64)),
    ],
)
def test_float_entries_equal_to_the_defaults_never_reach_numba(config_dir, op, field, shape):
    """Finding 5 end to end: every Numba op used to fail with an LLVM cast error."""
    from ttqkern.backends.numba import config

    default = config.DEFAULTS[op][field]
    store.save("cpu", {config.key(op, **shape): {field: float(default)}}, config_dir)
    x, W = torch.randn(4, 64), torch.randn(32, 64)
    with pytest.warns(UserWarning, match=f"{field}={float(default)!r} is not an int"):
        D = ops.act_scale(x, backend="numba")
        pw = ops.quantize(W, D, group_size=32, backend="numba")
        y = ops.qmatmul(x, pw, D, backend="numba")
    torch.testing.assert_close(y, ops.qmatmul(x, pw, D, backend="torch"), rtol=1e-4, atol=1e-4)
