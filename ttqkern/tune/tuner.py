"""Optuna tuner of the Triton kernels' launch parameters, per device, op and shape.

For every *case* (an op with its bit width and shape) the tuner runs one Optuna
study over the op's search space (`ttqkern.backends.triton.config.SPACE`):

1. trial 0 is the backend's default config, so every report has the baseline;
2. each candidate is installed with `ttqkern.tuning.store.override` under the
   exact store key the backend will look up, run once and checked against the
   torch backend (a config that gives a wrong answer is a kernel bug: it scores
   ``inf``, is reported, and is never saved);
3. then timed: ``triton.testing.do_bench`` (median, L2 flushed) of a CUDA-graph
   replay on a GPU -- the kernels' time without Python launch overhead, which
   dominates eager decode calls -- and a wall-clock median on the CPU
   interpreter (used by the tests, not for speed).

The best config of each case goes into the store file ``<device slug>.json``
(`ttqkern.tuning.store.save`), which the backend reads at run time without
importing optuna.  Optuna is imported here only, by ``python -m ttqkern.tune``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..tuning import devices, store

RANK = 16  # the low-rank part measured with qmatmul, as TTQ runs it
GROUP = 128


@dataclass(frozen=True)
class Case:
    """One tuning problem: ``op`` in gemv / gemm / quantize / act_scale and its shape.

    gemv / gemm: ``qmatmul`` of x ``[T, K]`` with a packed ``[N, K]`` weight (D,
    rank-16 low-rank and bias on); quantize: ``[N, K]`` weight; act_scale: x ``[T, K]``.
    """

    op: str
    bits: int
    T: int
    N: int
    K: int

    def shape(self) -> dict:
        """The fields of the op's store key (`config.KEY_FIELDS`)."""
        from ..backends.triton import config

        full = {"bits": self.bits, "T": self.T, "N": self.N, "K": self.K}
        return {f: full[f] for f in config.KEY_FIELDS[self.op]}

    def label(self) -> str:
        return f"{self.op} " + " ".join(f"{k}={v}" for k, v in self.shape().items())


@dataclass
class Result:
    """What one study found: times in microseconds, the best config, failures seen."""

    case: Case
    key: str
    default_us: float
    best_us: float
    best: dict
    trials: int
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        speedup = self.default_us / self.best_us if math.isfinite(self.best_us) and self.best_us > 0 else None
        return {
            "case": self.case.label(),
            "key": self.key,
            "default_us": self.default_us,
            "best_us": self.best_us,
            "speedup": speedup,
            "best": self.best,
            "trials": self.trials,
            "failures": self.failures,
        }


def cases(ops, shapes, bits, decode_T, prefill_T, prompt_T) -> list[Case]:
    """The cases to tune: every op x bit width x (N, K) x token count that applies to it."""
    out = []
    for N, K in shapes:
        for op in ops:
            if op == "act_scale":
                out.append(Case(op, 0, prompt_T, 0, K))
                continue
            for b in bits:
                if op == "quantize":
                    out.append(Case(op, b, 0, N, K))
                for T in decode_T if op == "gemv" else prefill_T if op == "gemm" else ():
                    out.append(Case(op, b, T, N, K))
    # a key is tuned once even if two shapes share its bucket
    seen, unique = set(), []
    for c in out:
        k = _key(c)
        if k not in seen:
            seen.add(k)
            unique.append(c)
    return unique


def _key(case: Case) -> str:
    from ..backends.triton import config

    return config.key(case.op, **case.shape())


def report_markdown(summary: dict) -> str:
    """The markdown table of a tuning report (``python -m ttqkern.tune --gpu --report``'s JSON)."""
    out = [f"Triton kernel tuning on **{summary['device']}** ({summary['date']}, {summary['seconds']:.0f} s): "
           f"`{summary['command']}`", "", "| case | default us | tuned us | speed-up | trials |",
           "|---|---|---|---|---|"]  # fmt: skip
    for r in summary["rows"]:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        out.append(f"| {r['case']} | {r['default_us']:.1f} | {r['best_us']:.1f} | {sp} | {r['trials']} |")
    return "\n".join(out) + "\n"


def rel_err(y, ref) -> float:
    """``||y - ref|| / ||ref||`` in fp32."""
    y, ref = y.float(), ref.float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def workload(case: Case, device: torch.device, dtype: torch.dtype):
    """``(run, check)``: ``run()`` calls the Triton op once; ``check(out)`` -> error text or ''."""
    from .. import ops

    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    if case.op == "act_scale":
        x = randn(case.T, case.K)
        ref = ops.act_scale(x, backend="torch")

        def check(D):
            err = rel_err(D, ref)
            return "" if err < 1e-4 else f"act_scale differs from the torch backend: rel err {err:.3g}"

        return (lambda: ops.act_scale(x, backend="triton")), check

    W = randn(case.N, case.K, scale=case.K**-0.5)
    D = ops.act_scale(randn(64, case.K), backend="torch")
    if case.op == "quantize":
        ref = ops.dequantize(ops.quantize(W, D, bits=case.bits, group_size=GROUP, backend="torch"))

        def check(pw):
            err = rel_err(ops.dequantize(pw), ref)
            return "" if err < 1e-3 else f"quantize differs from the torch backend: rel err {err:.3g}"

        return (lambda: ops.quantize(W, D, bits=case.bits, group_size=GROUP, backend="triton")), check

    pw = ops.quantize(W, D, bits=case.bits, group_size=GROUP, backend="torch")
    x = randn(case.T, case.K)
    A, B, bias = randn(RANK, case.K, scale=case.K**-0.5), randn(case.N, RANK, scale=0.1), randn(case.N)
    ref = ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="torch")

    def check(y):
        err = rel_err(y, ref)
        return "" if err < 1e-2 else f"qmatmul differs from the torch backend: rel err {err:.3g}"

    return (lambda: ops.qmatmul(x, pw, D, lowrank=(A, B), bias=bias, backend="triton")), check


def graph_replay(fn):
    """``fn`` captured in a CUDA graph; returns the graph's ``replay`` (warm-up runs on a side stream).

    Timing a replay measures the GPU's time alone: an eager decode call of a few
    microseconds of GPU work is bound by its Python launches, which would drown the
    difference between tile configs.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and allocate outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_us(fn, device: torch.device) -> float:
    """Median time of ``fn()`` in microseconds: GPU time of a CUDA-graph replay with a cold L2
    on a GPU, wall-clock on the CPU interpreter."""
    if device.type == "cuda":
        import triton.testing

        try:
            timed = graph_replay(fn)
        except RuntimeError:  # an op that cannot be captured (a host sync): time it eagerly
            torch.cuda.synchronize()
            timed = fn
        return 1e3 * triton.testing.do_bench(timed, warmup=10, rep=40, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def tune_case(case: Case, device: torch.device, *, trials: int, timeout: float, seed: int, dtype, log=print) -> Result:
    """One Optuna study for ``case``; returns the default's and the best config's times."""
    import optuna

    from ..backends.triton import config

    slug = devices.device_slug(device)
    key = _key(case)
    space = config.SPACE[case.op]
    default = config.defaults(case.op, device.type != "cuda", T=max(case.T, 1))
    run, check = workload(case, device, dtype)
    seen: dict[tuple, float] = {}
    failures: list[str] = []

    def measure(cfg: dict) -> float:
        sig = tuple(sorted(cfg.items()))
        if sig in seen:  # TPE re-proposes configs; a compile + timing is the expensive part
            return seen[sig]
        with store.override(slug, key, cfg):
            try:
                why = check(run())
                us = math.inf if why else time_us(run, device)
            except Exception as e:  # a config the kernel cannot launch (e.g. out of shared memory)
                why, us = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", math.inf
        if why:
            failures.append(f"{cfg}: {why}")
        seen[sig] = us
        return us

    default_us = measure(default)
    log(f"[{case.label()}] default {default_us:.1f} us")
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(8, trials // 3)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    # trial 0: the default, restricted to what the space offers
    study.enqueue_trial({k: v for k, v in default.items() if k in space and v in space[k]})
    t_start = time.perf_counter()

    def objective(trial):
        cfg = {**default, **{name: trial.suggest_categorical(name, values) for name, values in space.items()}}
        us = measure(cfg)
        done = trial.number + 1
        best = min(seen.values())
        log(f"[{case.label()}] trial {done}/{trials} ({time.perf_counter() - t_start:.0f} s): "
            f"{us:.1f} us, best {best:.1f} us, default {default_us:.1f} us")  # fmt: skip
        return us if math.isfinite(us) else float("inf")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials, timeout=timeout)
    finite = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    if finite:
        best_t = min(finite, key=lambda t: t.value)
        best, best_us = {**default, **best_t.params}, best_t.value
        if default_us <= best_us:
            best, best_us = dict(default), default_us
    else:
        best, best_us = dict(default), default_us
    for f in failures:
        log(f"[{case.label()}] WRONG OR FAILED CONFIG: {f}")
    return Result(case, key, default_us, best_us, best, len(study.trials), failures)


def tune(cases_, device: torch.device, *, trials: int, timeout: float, seed: int = 0, dtype=torch.float16, log=print,
         on_result=None):  # fmt: skip
    """Tune every case; returns ``(results, entries)`` where entries is ``{key: best config}``.

    A case whose default and every trial failed contributes no entry.  ``on_result(result,
    entries)`` is called after each case (the CLI saves there, so a killed run keeps its work).
    """
    results, entries = [], {}
    for i, case in enumerate(cases_):
        log(f"case {i + 1}/{len(cases_)}: {case.label()}")
        r = tune_case(case, device, trials=trials, timeout=timeout, seed=seed, dtype=dtype, log=log)
        results.append(r)
        if math.isfinite(r.best_us):
            entries[r.key] = r.best
        if on_result is not None:
            on_result(r, entries)
    return results, entries
