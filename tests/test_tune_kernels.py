"""The generic kernel tuner: ``python -m ttqkern.tune --cpu``, lookup, wrong candidates, fleets.

Timings on this shared machine mean nothing here; what is tested is what a real
run relies on: a short run writes a valid store that the next call uses (shown by
`ttqkern.tuning.lookup`), a wrong config is failed and never stored, and several
worker processes on one study -- on a throwaway PostgreSQL server and on the
single-machine journal file -- run exactly the trials asked for and export the
study's best config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import ttqkern
from ttqkern import backends, reference
from ttqkern.backends.base import Backend
from ttqkern.tuning import lookup, store
from ttqkern.tuning.params import ConfigTable, Int, OpParams

optuna = pytest.importorskip("optuna")

from ttqkern.backends.numba import config as nconfig  # noqa: E402
from ttqkern.tune import kernels, storage, tuner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"bits": 4, "group": 128, "T": 2, "N": 64, "K": 256}


def test_short_cpu_run_writes_a_store_the_next_call_uses(config_dir, tmp_path, capsys):
    t0 = time.perf_counter()
    argv = ["--shapes", "2x64x256", "--bits", "4", "--trials", "3", "--storage", f"journal:{tmp_path / 's.journal'}",
            "--no-progress", "--seed", "0", "--report", str(tmp_path / "rep")]  # fmt: skip
    assert kernels.main(argv, "cpu") == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, f"a 3-trial --cpu run took {elapsed:.0f} s"
    out = capsys.readouterr().out
    assert "qmatmul bits=4 group=128 T=2 N=64 K=256" in out and "3 configs written" in out
    data = json.loads((config_dir / "cpu.json").read_text())
    assert data["format"] == store.FORMAT and data["version"] == store.VERSION
    key = nconfig.key("qmatmul", **SHAPE)
    assert set(data["entries"]) == {key, nconfig.key("quantize", **SHAPE), nconfig.key("act_scale", T=2, K=256)}
    for k, entry in data["entries"].items():  # every stored entry is valid for its op
        assert nconfig.TABLE.ops[k.split("/")[1]].invalid(entry) == ""
    assert data["provenance"][key]["command"].startswith("python -m ttqkern.tune --cpu --shapes 2x64x256")
    store.load.cache_clear()
    got = lookup("qmatmul", SHAPE, device="cpu")
    assert got.source == "user" and got.path == config_dir / "cpu.json" and got.key == key
    assert got.config == {**nconfig.defaults("qmatmul", **SHAPE), **data["entries"][key]}  # defaults per shape
    assert got.provenance["study"].endswith(key)
    assert nconfig.params("qmatmul", **SHAPE) == got.config  # what the kernel launch reads
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["run"]["command"].startswith("python -m ttqkern.tune --cpu") and rep["run"]["load_average"]
    assert "bandwidth probe" in rep["run"]["machine_state"]["verdict"]
    assert all(r["best_us"] <= r["default_us"] and r["trials"] == 3 for r in rep["rows"])
    assert "| qmatmul bits=4 group=128 T=2 N=64 K=256 |" in (tmp_path / "rep.md").read_text()
    # a second run resumes the same studies: 3 more trials each
    assert kernels.main(argv[:-2], "cpu") == 0
    study = optuna.load_study(study_name=tuner.Tuner("numba", torch.device("cpu")).study_name(
        tuner.Case("numba", "qmatmul", 4, 128, 2, 64, 256)), storage=storage.open_storage(argv[7]))  # fmt: skip
    assert len(study.trials) == 6


def test_lookup_without_a_tuned_entry_says_default(config_dir):
    got = lookup("qmatmul", (1, 4096, 4096), bits=3, device="cpu", backend="numba")
    assert got.source == "default" and got.path is None and got.entry is None
    assert got.key == "numba/qmatmul/bits=3/group=128/T=1/N=4096/K=4096"
    assert got.config == nconfig.defaults("qmatmul", bits=3, group=128, T=1, N=4096, K=4096)
    with pytest.raises(ValueError, match="no op 'frob'"):
        lookup("frob", SHAPE, device="cpu", backend="numba")
    with pytest.raises(ValueError, match="positive ints"):
        lookup("qmatmul", {**SHAPE, "N": 0}, device="cpu", backend="numba")


def test_lookup_reports_an_invalid_entry(config_dir):
    store.save("cpu", {nconfig.key("qmatmul", **SHAPE): {"BLOCK_N": -1}})
    got = lookup("qmatmul", SHAPE, device="cpu", backend="numba")
    assert got.source == "default" and "invalid values" in got.note
    assert got.config == nconfig.defaults("qmatmul", **SHAPE)


def test_canonical_thresholds_make_one_choice_per_bucket():
    canon = nconfig.TABLE.ops["qmatmul"].canonicalize
    shape = {**SHAPE, "T": 6}  # bucket T = 5..8
    fused = canon({**nconfig.DEFAULTS["qmatmul"], "FUSED_MAX_T": 6, "DEQUANT_MIN_T": 64}, **shape)
    assert (fused["FUSED_MAX_T"], fused["DEQUANT_MIN_T"]) == (8, 9)
    buffered = canon({**nconfig.DEFAULTS["qmatmul"], "FUSED_MAX_T": 2, "DEQUANT_MIN_T": 64}, **shape)
    assert (buffered["FUSED_MAX_T"], buffered["DEQUANT_MIN_T"]) == (4, 9)
    blas = canon({**nconfig.DEFAULTS["qmatmul"], "DEQUANT_MIN_T": 6}, **shape)
    assert blas["DEQUANT_MIN_T"] == 5
    for cfg in (fused, buffered, blas):  # the same choice for every T of the bucket
        for T in (5, 6, 7, 8):
            assert canon(cfg, **{**shape, "T": T}) == cfg
    serial = canon({**nconfig.DEFAULTS["qmatmul"], "SERIAL_MAX": 1 << 18}, **shape)
    assert serial["SERIAL_MAX"] == 64 * 256 and canon({**serial, "SERIAL_MAX": 0}, **shape)["SERIAL_MAX"] == 0


# --- a deliberately broken candidate ---------------------------------------------------


class _Broken(Backend):
    """The torch reference, scaled by the config's FUDGE: only FUDGE = 1 is right, and it is the slowest."""

    name = "broken"
    device_types = ("cpu",)
    preference = 1000
    params = ConfigTable("broken", {"qmatmul": OpParams(
        ("bits", "group", "T", "N", "K"), {"FUDGE": Int(0, 2), "PAD": Int(0, 3)},
        {"FUDGE": (0, 1, 2), "PAD": (0, 1, 2, 3)}, {"FUDGE": 1, "PAD": 0},
        constraint=lambda cfg, device, **shape: "PAD=3 does not fit" if cfg["PAD"] == 3 else "",
    )})  # fmt: skip

    def qmatmul(self, x, pw, D, A, B, bias):
        cfg = self.params.params(
            "qmatmul", "cpu", bits=pw.bits, group=pw.group_size, T=x.shape[0], N=pw.N, K=x.shape[1]
        )
        if cfg["FUDGE"] == 1:
            time.sleep(2e-4)
        return reference.qmatmul(x, pw, D, A, B, bias) * cfg["FUDGE"]


@pytest.fixture
def broken_backend():
    backends.register("broken", _Broken())
    yield
    backends.unregister("broken")


def test_wrong_candidates_fail_are_reported_and_never_stored(config_dir, tmp_path, broken_backend):
    case = tuner.Case("broken", "qmatmul", 4, 64, 3, 32, 128)
    t = tuner.Tuner("broken", torch.device("cpu"), storage=f"journal:{tmp_path / 'j.journal'}", trials=12, seed=1,
                    dtype=torch.float32, log=lambda m: None, cpu_rounds=3)  # fmt: skip
    r = t.tune_case(case)
    study = optuna.load_study(study_name=r.study, storage=t.storage)
    states = [tr.state for tr in study.trials]
    failed = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.FAIL]
    assert failed and all("differs from the torch backend" in tr.user_attrs["failure"] for tr in failed)
    assert all(tr.user_attrs["config"]["FUDGE"] != 1 for tr in failed)
    assert r.failures and all("FUDGE" in f and "differs from the torch backend" in f for f in r.failures)
    pruned = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.PRUNED]
    assert all(tr.user_attrs["rejected"] == "PAD=3 does not fit" for tr in pruned) and len(pruned) == r.rejected
    assert states.count(optuna.trial.TrialState.COMPLETE) + len(failed) + len(pruned) == 12
    assert study.trials[0].user_attrs["role"] == "default" and study.trials[0].user_attrs["config"]["FUDGE"] == 1
    # the faster, wrong FUDGE values never reach the store
    entry = json.loads((config_dir / "cpu.json").read_text())["entries"]
    assert entry[case.key]["FUDGE"] == 1 and r.best["FUDGE"] == 1
    store.load.cache_clear()
    assert lookup("qmatmul", case.shape(), device="cpu", backend="broken").config["FUDGE"] == 1


def test_a_default_that_fails_stores_nothing(config_dir, tmp_path, broken_backend, monkeypatch):
    monkeypatch.setattr(_Broken, "qmatmul", lambda self, *a: reference.qmatmul(*a) + 1.0)
    t = tuner.Tuner("broken", torch.device("cpu"), storage=f"journal:{tmp_path / 'j.journal'}", trials=3, seed=0,
                    dtype=torch.float32, log=lambda m: None)  # fmt: skip
    r = t.tune_case(tuner.Case("broken", "qmatmul", 4, 64, 3, 32, 128))
    assert math.isinf(r.default_us) and not r.saved and not (config_dir / "cpu.json").exists()


# --- CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--shapes", "3x4x5x6"], "is neither TxNxK"),
        (["--shapes", "0x64x64"], "must be >= 1"),
        (["--group-size", "0"], "--group-size"),
        (["--bits", "x"], "--bits"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--backend", "nope"], "--backend"),
        (["--backend", "torch"], "declares no tunable parameters"),
        (["--ops", "frob"], "no ops ['frob']"),
        (["--storage", "nonsense"], "--storage must be"),
        (["--max-load", "-1"], "--max-load"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys, config_dir):
    assert kernels.main(["--shapes", "1x64x256", "--no-progress", *argv], "cpu") == 2
    assert message in capsys.readouterr().err


def test_cli_lists_cases_per_op_and_bucket(capsys):
    assert kernels.main(["--shapes", "smollm2-135m", "--tokens", "1,32", "--bits", "4", "--list"], "cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "qmatmul bits=4 group=128 T=32 N=1536 K=576    [numba/qmatmul/bits=4/group=128/T=32/N=2048/K=1024]" in lines
    assert len(lines) == len(set(lines)) == 2 * 2 + 4 + 2 * 4  # act_scale per (T, K), quantize per N x K bucket


def test_main_dispatches_cpu_mode(capsys):
    from ttqkern.tune.__main__ import main

    assert main(["--cpu", "--shapes", "1x64x256", "--list"]) == 0
    assert "numba/qmatmul/bits=4/group=128/T=1/N=64/K=256" in capsys.readouterr().out


# --- fleets: two worker processes on one study -------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return cands[-1].parent if cands else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a Unix socket (skipped with the reason when it cannot start)."""
    pytest.importorskip("psycopg2", reason="PostgreSQL fleets need psycopg2: pip install 'ttqkern[tune]'")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin: "
                    "apt-get install postgresql (.ci/run does)")  # fmt: skip
    user = None
    root = tempfile.mkdtemp(prefix="ttq-pg-")
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the 'postgres' user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        user = "postgres"
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, sock = Path(root) / "data", Path(root)
    with socket.socket() as s:  # a free port number names the socket file
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd, **kw):
        return subprocess.run(
            [str(c) for c in cmd], user=user, capture_output=True, text=True, timeout=120, check=False, **kw
        )

    r = run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "ttq", "--no-sync", "-E", "UTF8")
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    opts = f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off"
    r = run(bindir / "pg_ctl", "-D", data, "-o", opts, "-l", Path(root) / "log", "-w", "-t", "60", "start")
    if r.returncode != 0:
        log = (Path(root) / "log").read_text()[-500:] if (Path(root) / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {r.stderr.strip()[-300:]} {log}")
    try:
        yield f"postgresql+psycopg2://ttq@/postgres?host={sock}&port={port}"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _workers(url: str, tmp_path: Path, n: int = 2, trials: int = 4) -> list[Path]:
    """``n`` worker processes of one --cpu study; each exports to its own config folder (its own machine)."""
    outs = [tmp_path / f"machine{i}" for i in range(n)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TTQKERN_TUNE_HEARTBEAT_S": "2"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ttqkern.tune",
                "--cpu",
                "--shapes",
                "1x64x256",
                "--ops",
                "qmatmul",
                "--bits",
                "4",
                "--trials",
                str(trials),
                "--storage",
                url,
                "--study-name",
                "fleet",
                "--seed",
                str(i),
                "--rounds",
                "3",
                "--no-progress",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env={**env, "TTQKERN_CONFIG_DIR": str(out)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    for p in procs:
        text = p.communicate(timeout=300)[0]
        assert p.returncode == 0, text[-3000:]
    return outs


def _check_fleet_study(url: str, outs: list[Path], expected: int):
    st = storage.open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    assert len(names) == 1 and names[0].startswith("fleet:cpu-") and names[0].endswith(
        "numba/qmatmul/bits=4/group=128/T=1/N=64/K=256")  # fmt: skip
    study = optuna.load_study(study_name=names[0], storage=st)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == expected, [(t.number, t.state) for t in trials]  # none lost, none extra
    assert sorted(t.number for t in trials) == list(range(expected))  # none duplicated
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert sum(t.user_attrs.get("role") == "default" for t in trials) == 1  # the default enqueued once
    assert len({t.user_attrs["host"] for t in trials}) == 1  # (one machine here; hosts are recorded)
    best = min(trials, key=lambda t: t.value)
    default = next(t for t in trials if t.user_attrs.get("role") == "default").user_attrs["config"]
    key = "numba/qmatmul/bits=4/group=128/T=1/N=64/K=256"
    seen_all = 0
    for out in outs:  # every machine exported the study's best when it finished (or kept the default)
        data = json.loads((out / "cpu.json").read_text())
        prov = data["provenance"][key]
        assert prov["study"] == names[0]
        chosen = trials[prov["study_best_trial"]].user_attrs["config"]
        assert data["entries"][key] == (default if prov["kept_default"] else chosen)
        if prov["trials"] == expected:  # finished last: saw every trial, so took the global best
            seen_all += 1
            assert prov["study_best_trial"] == best.number or trials[prov["study_best_trial"]].value == best.value
    assert seen_all >= 1


def test_two_workers_share_one_study_on_postgresql(postgres_url, tmp_path):
    outs = _workers(postgres_url, tmp_path)
    _check_fleet_study(postgres_url, outs, expected=8)


def test_two_workers_share_one_study_on_the_journal_file(tmp_path):
    url = f"journal:{tmp_path / 'fleet.journal'}"
    outs = _workers(url, tmp_path)
    _check_fleet_study(url, outs, expected=8)


def test_postgres_storage_has_heartbeat_retry_and_pre_ping(postgres_url):
    st = storage.open_storage(postgres_url, heartbeat_s=5)
    assert st.heartbeat_interval == 5 and st.grace_period >= 10
    assert st.engine.pool._pre_ping
    cb = st.get_heartbeat_stale_trial_callback() if hasattr(st, "get_heartbeat_stale_trial_callback") else (
        st.get_failed_trial_callback())  # fmt: skip
    assert cb is not None


def test_storage_urls():
    assert storage.kind(None) == "journal" and storage.kind("journal:/x") == "journal"
    assert storage.kind("sqlite:////tmp/x.db") == "sqlite" and storage.kind("postgresql+psycopg2://u@h/d") == "server"
    assert storage.describe("postgresql+psycopg2://me:secret@db:5432/x") == "postgresql+psycopg2://me:***@db:5432/x"
    with pytest.raises(ValueError, match="--storage must be"):
        storage.kind("what")


def test_ttqkern_exports_lookup():
    assert ttqkern.tuning.lookup is lookup
