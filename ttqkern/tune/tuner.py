"""One Optuna tuner of kernel parameters for every backend that declares a `ConfigTable`.

What to tune comes from the backend's declaration (`ttqkern.tuning.params.OpParams`):
the store key fields, the search space, the defaults, the stage an op runs
(``act_scale`` / ``quantize`` / ``qmatmul``), the token counts it serves, a
constraint hook (shared memory, registers, occupancy on a GPU) and a canonical
form (thresholds on the CPU).  Nothing here knows a backend by name.

Per *case* -- (device, backend, op, bits, group size, shape bucket): one store key --
there is one Optuna study, named ``<prefix>:<device>:<store key>``, in a storage
any number of processes on any number of machines may share (`ttqkern.tune.storage`):

1. the process that creates the study enqueues the default config: trial 0;
2. a candidate the constraint rejects is pruned without being launched;
3. every other candidate is installed with `ttqkern.tuning.store.override` under
   the exact store key the backend looks up, run once and checked against the
   torch backend (`ttqkern.tune.workload`); a wrong answer fails the trial, is
   reported and is never stored;
4. then timed as the device needs (`ttqkern.tune.timing`): the GPU time of a
   CUDA-graph replay with a cold L2, in microseconds; on a CPU, the time relative
   to the default config measured interleaved with it (a ratio: comparable
   between machines and robust to other processes), with a contention check;
5. candidates with the same canonical form are measured once (in this process,
   or reused from another worker's completed trial);
6. at the end each process takes the study's best trial (over every worker),
   re-checks and re-times it here against the default, and merges it into *this*
   device's config file (`ttqkern.tuning.store.save`, with the run's provenance).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import backends
from ..quant import QuantFormat
from ..tuning import devices, store
from . import storage as storage_mod
from .timing import CpuTimer, gpu_time_us, graph_replay  # noqa: F401  (graph_replay: re-exported for the bench)
from .workload import Workload, build, rel_err  # noqa: F401  (rel_err: re-exported for the bench)

SHAPE_FIELDS = ("bits", "group", "T", "N", "K")


class CandidateFailed(Exception):
    """A candidate config that could not run or gave a wrong answer (the trial fails)."""


@dataclass(frozen=True)
class Case:
    """One tuning problem: a backend's op at one bit width, group size and shape.

    ``group`` is the resolved group size (> 0).  Fields an op's stage does not use
    are 0 (act_scale: bits, group, N; quantize: T).
    """

    backend: str
    op: str
    bits: int
    group: int
    T: int
    N: int
    K: int

    def full_shape(self) -> dict:
        return {"bits": self.bits, "group": self.group, "T": self.T, "N": self.N, "K": self.K}

    def shape(self) -> dict:
        """The fields of the op's store key."""
        spec = table_of(self.backend).ops[self.op]
        full = self.full_shape()
        return {f: full[f] for f in spec.key_fields}

    @property
    def key(self) -> str:
        return table_of(self.backend).key(self.op, **self.shape())

    def label(self) -> str:
        return f"{self.op} " + " ".join(f"{k}={v}" for k, v in self.shape().items())


def table_of(backend: str):
    """The `ConfigTable` a backend declares (its ``params``); ValueError when it has none."""
    b = backends.get(backend)
    if b is None:
        raise RuntimeError(backends.availability(backend)[1])
    if b.params is None:
        raise ValueError(f"backend {backend!r} declares no tunable parameters (Backend.params is None)")
    return b.params


def cases(backend: str, ops: list[str] | None, shapes: list[tuple[int, int, int]], bits: list[int],
          group_sizes: list[int]) -> list[Case]:  # fmt: skip
    """Every case for ``shapes`` ``[(T, N, K)]``: each op of the backend's table (or ``ops``)
    whose stage and token range fit, at each bit width and group size; one case per store key."""
    table = table_of(backend)
    ops = list(table.ops) if ops is None else ops
    unknown = [o for o in ops if o not in table.ops]
    if unknown:
        raise ValueError(f"backend {backend!r} has no ops {unknown} (ops: {', '.join(table.ops)})")
    out = []
    for T, N, K in shapes:
        for op in ops:
            spec = table.ops[op]
            stage = spec.stage_of(op)
            if stage == "act_scale":
                out.append(Case(backend, op, 0, 0, T, 0, K))
                continue
            if stage == "qmatmul" and not spec.tokens[0] <= T <= spec.tokens[1]:
                continue
            for b in bits:
                for g in group_sizes:
                    gs = QuantFormat(b, g).resolved(K).group_size
                    out.append(Case(backend, op, b, gs, T if stage == "qmatmul" else 0, N, K))
    seen, unique = set(), []
    for c in out:  # a key is tuned once even if two shapes share its bucket
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    return unique


@dataclass
class Result:
    """What one case's study found, confirmed on this machine.

    default_us / best_us: times here (GPU: graph replay, cold L2; CPU: interleaved,
    best_us = default_us x the confirmed ratio).  trials: the study's trials (every
    worker); here: this process's.  failures: candidates that failed the check.
    """

    case: Case
    key: str
    study: str
    default_us: float
    best_us: float
    best: dict
    trials: int
    here: int
    failures: list[str] = field(default_factory=list)
    rejected: int = 0
    contended: int = 0
    nbytes: int = 0
    roofline_gbps: float = 0.0
    best_trial: int | None = None
    best_host: str = ""
    saved: bool = False

    @property
    def speedup(self) -> float | None:
        if math.isfinite(self.best_us) and self.best_us > 0 and math.isfinite(self.default_us):
            return self.default_us / self.best_us
        return None

    def as_dict(self) -> dict:
        gbps = self.nbytes / (self.best_us * 1e-6) / 1e9 if math.isfinite(self.best_us) and self.best_us > 0 else None
        pct = 100 * gbps / self.roofline_gbps if gbps is not None and self.roofline_gbps > 0 else None
        return {
            "case": self.case.label(),
            "key": self.key,
            "study": self.study,
            "default_us": self.default_us,
            "best_us": self.best_us,
            "speedup": self.speedup,
            "gbps": gbps,
            "roofline_pct": pct,
            "best": self.best,
            "best_trial": self.best_trial,
            "best_host": self.best_host,
            "trials": self.trials,
            "trials_here": self.here,
            "failures": self.failures,
            "rejected": self.rejected,
            "contended": self.contended,
            "saved": self.saved,
        }


def _sig(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def device_id(device: torch.device) -> str:
    """What a study's timings are specific to: the catalog slug on a GPU; on a CPU the
    model and the thread count (every CPU shares the config file ``cpu.json``)."""
    if device.type != "cpu":
        return devices.device_slug(device)
    import numba

    return f"cpu-{devices._slugify(devices.cpu_name())}-{numba.get_num_threads()}t"


class Tuner:
    """Tunes cases of one backend on one device (module docstring).

    storage: an Optuna storage URL (None: the local journal file).  prefix: study
    names' prefix.  trials / timeout: per case, in this process.  out_dir: config
    folder (None: the user's).  meta: provenance saved with each entry.
    on_trial(case, trial): called after every trial (progress bars).
    """

    def __init__(self, backend: str, device: torch.device, *, storage: str | None = None, prefix: str = "ttqkern",
                 trials: int = 40, timeout: float | None = None, seed: int | None = None,
                 dtype: torch.dtype = torch.float16, out_dir=None, meta: dict | None = None,
                 log: Callable[[str], None] = print, on_trial=None, cpu_rounds: int = 5,
                 confirm_rounds: int = 15, save: bool = True):  # fmt: skip
        self.backend = backend
        self.table = table_of(backend)
        self.device = torch.device(device)
        self.slug = devices.device_slug(self.device)
        self.target = devices.target(self.device)
        self.device_id = device_id(self.device)
        self.storage_url = storage
        self.prefix = prefix
        self.trials = trials
        self.timeout = timeout
        self.seed = seed
        self.dtype = dtype
        self.out_dir = out_dir
        self.meta = dict(meta or {})
        self.log = log
        self.on_trial = on_trial
        self.cpu_rounds = cpu_rounds
        self.confirm_rounds = confirm_rounds
        self.save_results = save
        self.roofline_gbps = self.target.hbm_gbps if self.device.type != "cpu" else 0.0
        self._storage = None
        self.path = None
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    @property
    def storage(self):
        if self._storage is None:
            self._storage = storage_mod.open_storage(self.storage_url)
        return self._storage

    def study_name(self, case: Case) -> str:
        return f"{self.prefix}:{self.device_id}:{case.key}"

    # --- measuring one config ------------------------------------------------------------

    def _batch(self, wl: Workload, key: str, cfg: dict):
        """``go(reps)``: ``reps`` calls under ``cfg`` (one override per batch, not per call)."""

        def go(reps: int = 1):
            with store.override(self.slug, key, cfg):
                for _ in range(reps):
                    wl.run()

        return go

    def _check(self, wl: Workload, key: str, cfg: dict) -> str:
        """'' when ``cfg`` runs and matches the torch backend, else why not."""
        with store.override(self.slug, key, cfg):
            try:
                out = wl.first()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                return wl.check(out)
            except Exception as e:  # a config the kernel cannot launch (out of shared memory, ...)
                return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    def _time(self, wl: Workload, key: str, cfg: dict, timer: CpuTimer | None, rounds: int | None = None):
        """``(value, us, attrs)``: GPU -> value = us; CPU -> value = ratio to the default."""
        go = self._batch(wl, key, cfg)
        if timer is None:
            with store.override(self.slug, key, cfg):
                us = gpu_time_us(wl.run)
            return us, us, {}
        saved = timer.rounds
        timer.rounds = rounds or saved
        try:
            m = timer.measure(go)
        finally:
            timer.rounds = saved
        return m.ratio, m.us, {"ratio": m.ratio, "drift": round(m.drift, 4), "spread": round(m.spread, 4),
                               "contended": m.contended, "attempts": m.attempts}  # fmt: skip

    # --- one study -----------------------------------------------------------------------

    def _open_study(self, name: str, default_params: dict):
        import optuna

        sampler = optuna.samplers.TPESampler(seed=self.seed, constant_liar=True,
                                             n_startup_trials=max(2, min(8, self.trials // 3)))  # fmt: skip
        try:  # the one process that creates the study enqueues the default: exactly one trial 0
            study = optuna.create_study(storage=self.storage, study_name=name, direction="minimize",
                                        sampler=sampler, load_if_exists=False)  # fmt: skip
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
        study.set_user_attr("value", "us" if self.device.type != "cpu" else "ratio to the default config")
        study.enqueue_trial(default_params, user_attrs={"role": "default"})
        return study

    def tune_case(self, case: Case) -> Result:
        """Run this process's share of ``case``'s study and export the study's best config."""
        import optuna

        spec = self.table.ops[case.op]
        full = case.full_shape()
        key = case.key
        default = self.table.default(case.op, self.device, **full)
        default_c = spec.canonicalize(default, **full)
        space = {f: tuple(v) for f, v in spec.space.items()}
        wl = build(case, self.device, self.dtype)
        name = self.study_name(case)
        why = self._check(wl, key, default)
        if why:
            self.log(f"[{case.label()}] the DEFAULT config fails the check: {why}")
        timer = None
        if self.device.type == "cpu" and not why:
            timer = CpuTimer(self._batch(wl, key, default), rounds=self.cpu_rounds)
            default_us = timer.reference_us
        elif not why:
            default_us = self._time(wl, key, default, None)[1]
        else:
            default_us = math.inf
        study = self._open_study(name, {k: v for k, v in default.items() if k in space and v in space[k]})
        local: dict[str, tuple[float, float, dict]] = {}
        failures: list[str] = []
        counts = {"rejected": 0, "here": 0}

        def objective(trial):
            if trial.user_attrs.get("role") == "default":
                for f, values in space.items():
                    if default.get(f) in values:  # the enqueued (fixed) parameters
                        trial.suggest_categorical(f, values)
                cfg = dict(default)
            else:
                cfg = {**default, **{f: trial.suggest_categorical(f, values) for f, values in space.items()}}
            reason = spec.rejects(cfg, self.target, **full)
            if reason:
                counts["rejected"] += 1
                trial.set_user_attr("rejected", reason)
                raise optuna.TrialPruned(reason)
            canon = spec.canonicalize(cfg, **full)
            sig = _sig(canon)
            trial.set_user_attr("config", canon)
            trial.set_user_attr("sig", sig)
            trial.set_user_attr("host", platform.node())
            if sig in local:
                value, us, attrs = local[sig]
                trial.set_user_attr("reused", "this process")
            else:
                other = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                              if t.user_attrs.get("sig") == sig), None)  # fmt: skip
                if other is not None:
                    value, us, attrs = other.value, other.user_attrs.get("us", math.nan), {}
                    trial.set_user_attr("reused", f"trial {other.number}")
                else:
                    bad = self._check(wl, key, cfg)
                    if bad:
                        failures.append(f"{canon}: {bad}")
                        trial.set_user_attr("failure", bad)
                        raise CandidateFailed(bad)
                    value, us, attrs = self._time(wl, key, cfg, timer)
                local[sig] = (value, us, attrs)
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("us", us)
            return value

        def after(study_, trial):
            counts["here"] += 1
            if self.on_trial is not None:
                self.on_trial(case, trial)

        if not math.isinf(default_us):
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by this tuner
            study.optimize(objective, n_trials=self.trials, timeout=self.timeout, catch=(CandidateFailed,),
                           callbacks=[after], gc_after_trial=False)  # fmt: skip
        return self._finish(case, study, wl, key, default, default_c, default_us, timer, failures, counts)

    def _finish(self, case, study, wl, key, default, default_c, default_us, timer, failures, counts) -> Result:
        import optuna

        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]  # fmt: skip
        res = Result(case, key, study.study_name, default_us, math.inf, dict(default), len(trials), counts["here"],
                     failures, counts["rejected"], 0, wl.nbytes, self.roofline_gbps)  # fmt: skip
        if timer is not None:
            res.contended = timer.contended
        if math.isinf(default_us):
            return res
        best_t = min(done, key=lambda t: t.value) if done else None
        best = dict(best_t.user_attrs.get("config", default_c)) if best_t is not None else default_c
        if best_t is not None:
            res.best_trial, res.best_host = best_t.number, best_t.user_attrs.get("host", "")
        # confirm here: the best may come from another worker
        bad = self._check(wl, key, best) if _sig(best) != _sig(default_c) else ""
        if bad:
            self.log(f"[{case.label()}] the study's best config fails the check on this machine: {bad}; not stored")
            res.failures.append(f"{best}: {bad} (study best, trial {res.best_trial})")
            best = default_c
        if timer is not None:
            ratio = self._time(wl, key, best, timer, rounds=self.confirm_rounds)[0] if best != default_c else 1.0
            if ratio >= 1.0:  # not faster than the default when measured carefully: keep the default
                best, ratio = default_c, 1.0
            res.best_us = default_us * ratio
        else:
            us = self._time(wl, key, best, None)[1] if best != default_c else default_us
            if us >= default_us:
                best, us = default_c, default_us
            res.best_us = us
        res.best = best
        if self.save_results:
            meta = {**self.meta, "study": study.study_name, "storage": storage_mod.describe(self.storage_url),
                    # the trials the best was chosen from: those complete when this worker finished (others of
                    # a fleet may still be running; counting them claimed a best this worker never saw)
                    "host": platform.node(), "device": self.target.name, "trials": len(done),
                    "trials_started": len(trials),
                    "default_us": round(default_us, 3), "best_us": round(res.best_us, 3),
                    "study_best_trial": res.best_trial, "kept_default": best == default_c}  # fmt: skip
            self.path = store.save(self.slug, {key: best}, self.out_dir, meta=meta)
            res.saved = True
        return res

    def tune(self, todo: list[Case], on_result=None) -> list[Result]:
        """Every case in turn; ``on_result(result)`` after each (its config is already saved)."""
        out = []
        for case in todo:
            r = self.tune_case(case)
            out.append(r)
            if on_result is not None:
                on_result(r)
        return out


def report_markdown(summary: dict) -> str:
    """The markdown table of a tuning report (``python -m ttqkern.tune --cpu/--gpu --report``'s JSON)."""
    run = summary.get("run", summary)
    head = (f"Kernel tuning ({summary.get('backend', 'triton')}) on **{summary.get('device', run.get('device'))}** "
            f"({run['date']}, {run.get('seconds') or 0:.0f} s): `{run['command']}`")  # fmt: skip
    out = [head, "", "| case | default us | tuned us | speed-up | GB/s | % of roofline | trials | failed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in summary["rows"]:
        sp = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        gbps = "-" if r.get("gbps") is None else f"{r['gbps']:.1f}"
        pct = "-" if r.get("roofline_pct") is None else f"{r['roofline_pct']:.0f}"
        out.append(f"| {r['case']} | {r['default_us']:.1f} | {r['best_us']:.1f} | {sp} | {gbps} | {pct} | "
                   f"{r['trials']} | {len(r.get('failures', []))} |")  # fmt: skip
    if "run" in summary:
        from ..records import record_markdown

        out += ["", record_markdown(summary["run"])]
    for note in summary.get("notes", []):
        out += ["", note]
    return "\n".join(out) + "\n"
