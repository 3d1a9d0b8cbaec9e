"""``python -m ttqkern.tune --hparams``: Optuna search of TTQ's alpha, lam, p (and beta).

Objective: the mean log-perplexity of the TTQ-quantized model (``prompt`` mode: each
window is quantized from its own activations) over windows drawn from the
*validation* splits of several domains (default: 8 windows spread over each of
``wikitext2-valid`` and ``code-valid``); test splits are refused.  One study per bit
width in an Optuna storage shared by every process that runs the same command (an
RDB URL such as ``sqlite:///study.db``, or ``journal:PATH`` for a journal file), so
several workers can feed one study.  ``--trials 0`` only summarises the study.

Writes ``PREFIX_b<bits>.json`` / ``.md`` (best values, the spec's starting values as
trial 0, the best trials, parameter importances, the run record); ``--ship-defaults``
also writes the best values with their provenance into ``ttqkern/defaults.json``,
the file `ttqkern.defaults` reads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import data, defaults, records
from ..eval import args as A
from ..nn import TTQLinear
from ..threads import set_threads

PROG = "python -m ttqkern.tune --hparams"
# The spec's starting values (spec §2), enqueued first so every study reports the baseline.
SPEC_START = {"alpha": 0.25, "lam": 1.0, "p": 2.0}
# Search ranges.  A first study (47 trials on WikiText-2 validation, r = 16) put all of its
# ten best trials at alpha 0.17-0.25, lam <= 0.08 and p 1.2-3.6 and found alpha > 0.5 or
# p < 1 far worse; these ranges keep a margin around that region so that a study of a
# few dozen trials (minutes each on a CPU) spends them where they can matter.
SPACE = {"alpha": (0.05, 0.6), "lam": (1e-3, 10.0), "p": (1.0, 4.0), "beta": (0.8, 1.2)}
DEFAULT_TEXTS = "wikitext2-valid,code-valid"


def _require_optuna():
    try:
        import optuna
    except ImportError as e:
        raise RuntimeError(f"--hparams needs optuna ({e}): install the tune extra: pip install 'ttqkern[tune]'") from e
    return optuna


def build_parser() -> argparse.ArgumentParser:
    """The ``--hparams`` mode's argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    p.add_argument("--texts", default=DEFAULT_TEXTS,
                   help=f"validation texts, comma list of names or paths (default {DEFAULT_TEXTS}; test splits are refused)")  # fmt: skip
    p.add_argument("--bits", type=A.bit_widths, default="3", help="bit widths, comma list; one study each (default 3)")
    p.add_argument(
        "--group-size", type=A.group_sizes, default="auto", help="group size or 'auto' (as python -m ttqkern.eval)"
    )
    p.add_argument("--r", type=int, default=0, help="TTQ low-rank r of the tuned model (default 0)")
    p.add_argument("--seqlen", type=int, default=512, help="window length (default 512)")
    p.add_argument("--windows", type=int, default=8, help="windows per text, spread over it (default 8)")
    p.add_argument(
        "--trials", type=int, default=20, help="trials to run in this process (default 20; 0: summarise only)"
    )
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--beta", action="store_true", help="also search the range expansion beta in [0.8, 1.2]")
    p.add_argument("--storage", default=None,
                   help="Optuna storage shared by workers: an RDB URL (sqlite:///PATH, ...) or journal:PATH "
                   "(default sqlite:///<cache>/tune/hparams.db)")  # fmt: skip
    p.add_argument("--study", default=None, help="study name prefix (default derived from the settings)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed; give each worker its own (default 0)")
    p.add_argument("--startup-trials", type=int, default=4,
                   help="random trials (per worker) before TPE models the objective (default 4)")  # fmt: skip
    p.add_argument("--backend", default="auto", help="ttqkern backend (default auto)")
    A.add_threads(p)
    p.add_argument("--out", default="results/hparams/ttq_hparams",
                   help="output prefix: writes PREFIX_b<bits>.json/.md (default %(default)s)")  # fmt: skip
    p.add_argument("--ship-defaults", action="store_true",
                   help="write the best values and their provenance into ttqkern/defaults.json (one bit width)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no per-window progress bars")
    return p


def parse_args(argv) -> argparse.Namespace:
    """Parse and validate the ``--hparams`` flags (errors name the flag)."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.group_size != "auto" and len(a.group_size) != 1:
        p.error("--group-size takes one value here")
    A.check_positive(p, trials=(a.trials, 0), startup_trials=(a.startup_trials, 0), windows=(a.windows, 1), seqlen=(a.seqlen, 2), r=(a.r, 0),
                     threads=(a.threads, 1))  # fmt: skip
    if a.timeout is not None and not a.timeout > 0:
        p.error(f"--timeout must be > 0 seconds, got {a.timeout}")
    a.texts = [t.strip() for t in a.texts.split(",") if t.strip()]
    if not a.texts:
        p.error("--texts needs at least one validation text")
    for t in a.texts:
        A.check_text(p, "--texts", t, validation=True)
    A.check_backend(p, a.backend)
    A.check_model(p, a.model)
    if a.ship_defaults and len(a.bits) != 1:
        p.error("--ship-defaults takes the study of one bit width: give one --bits")
    return a


def default_storage() -> str:
    """``sqlite:///<cache>/tune/hparams.db`` (directory created)."""
    from ..diskcache import user_cache_dir

    d = user_cache_dir("tune")
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'hparams.db'}"


def open_storage(optuna, spec: str):
    """An Optuna storage from ``--storage``: ``journal:PATH`` is a journal file, anything else an RDB URL."""
    if spec.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(spec[len("journal:") :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return spec


def set_hparams(model: torch.nn.Module, **hp) -> None:
    """Set alpha/lam/p/beta on every `TTQLinear` and drop its packed weight (next window requantizes)."""
    scaling = {k: v for k, v in hp.items() if k in ("alpha", "lam", "p")}
    fmt = {k: v for k, v in hp.items() if k == "beta"}
    if set(hp) - set(scaling) - set(fmt):
        raise ValueError(f"set_hparams sets alpha, lam, p and beta, got {sorted(hp)}")
    for m in model.modules():
        if isinstance(m, TTQLinear):
            # the layer's frozen ActScaling / QuantFormat, rebuilt (and so validated) with the new values
            m.scaling = replace(m.scaling, **scaling)
            m.fmt = replace(m.fmt, **fmt)
            m.reset()


def _is_baseline(params: dict) -> bool:
    return all(params.get(k) == v for k, v in SPEC_START.items())


def summary(study, optuna, bits: int, settings: dict) -> dict:
    """The study's best trials, baseline and importances as a dict (the JSON report)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    done.sort(key=lambda t: t.value)
    base = [t for t in done if _is_baseline(t.params)]
    try:
        importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as e:  # noqa: BLE001 -- too few trials or a flat objective: report it, keep the results
        importances = {"error": f"{type(e).__name__}: {e}"}

    def trial(t):
        return {"number": t.number, "ppl": math.exp(t.value), "log_ppl": t.value,
                "domain_ppl": t.user_attrs.get("domain_ppl"), **t.params}  # fmt: skip

    return {
        "study": study.study_name,
        "study_commands": study.user_attrs.get("commands", []),
        "bits": bits,
        "objective": f"mean log-perplexity of TTQ (r={settings['r']}, {bits} bits, group {settings['group_size']}) "
        f"over {settings['windows']} windows x {settings['seqlen']} tokens spread over each of "
        f"{', '.join(settings['texts'])} (validation splits)",
        "best": trial(done[0]) if done else None,
        "baseline": {"params": SPEC_START, **(trial(base[0]) if base else {})},
        "n_trials": len(study.trials),
        "n_complete": len(done),
        "importances": importances,
        "top_trials": [trial(t) for t in done[:10]],
        "settings": settings,
    }


def markdown(s: dict) -> str:
    """A study summary as markdown."""
    st = s["settings"]
    out = [f"# TTQ hyper-parameter search, {s['bits']} bits", "",
           f"Objective: {s['objective']}; model {st['model']}.",
           f"Study `{s['study']}`: {s['n_complete']} complete of {s['n_trials']} trials.", ""]  # fmt: skip
    if s["best"]:
        b, base = s["best"], s["baseline"]
        keys = [k for k in ("alpha", "lam", "p", "beta") if k in b]
        out += [f"Best (trial {b['number']}): perplexity **{b['ppl']:.3f}** (per text: {b['domain_ppl']}) with "
                + ", ".join(f"{k} = {b[k]:.6g}" for k in keys) + ".",
                f"Spec starting values {base['params']}: perplexity "
                + (f"{base['ppl']:.3f} (per text: {base['domain_ppl']})." if "ppl" in base else "not run."), ""]  # fmt: skip
    out += ["Parameter importances (fANOVA):", ""]
    out += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in s["importances"].items()] + [""]
    keys = [k for k in ("alpha", "lam", "p", "beta") if any(k in t for t in s["top_trials"])]
    out += ["Best trials:", "", "| trial | ppl | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for t in s["top_trials"]:
        out.append(f"| {t['number']} | {t['ppl']:.3f} | " + " | ".join(f"{t.get(k, '—'):.4g}" for k in keys) + " |")
    out += ["", "Commands that fed this study:", ""] + [f"- `{c}`" for c in s["study_commands"]] + [""]
    out.append(records.record_markdown(s["run"]))
    return "\n".join(out) + "\n"


def ship_defaults(s: dict, results: Path, path: Path = defaults.DEFAULTS_FILE) -> Path:
    """Write the study's best alpha / lam / p and where they came from into ``ttqkern/defaults.json``."""
    b = s["best"]
    if b is None:
        raise RuntimeError(f"study {s['study']} has no complete trial: nothing to ship")
    prov = {
        "results": str(results), "study": s["study"], "commands": s["study_commands"], "objective": s["objective"],
        "trial": b["number"], "ppl": b["ppl"], "domain_ppl": b["domain_ppl"], "n_complete": s["n_complete"],
        "baseline_ppl": s["baseline"].get("ppl"),
        "shipped": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": s["run"]["git"],
    }  # fmt: skip
    path.write_text(
        json.dumps({"alpha": b["alpha"], "lam": b["lam"], "p": b["p"], "provenance": prov}, indent=1) + "\n"
    )
    return path


def main(argv=None) -> int:
    """Run (or only summarise) one study per bit width; print progress; write the summaries."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    try:
        optuna = _require_optuna()
    except RuntimeError as e:
        print(f"python -m ttqkern.tune: error: {e}", file=sys.stderr)
        return 2
    from ..eval.methods import quantized_copy
    from ..eval.models import auto_group_size, load_causal_lm
    from ..eval.perplexity import perplexity
    from ..eval.windows import token_ids, windows

    if a.threads:
        set_threads(a.threads)
    command = records.command_line("python -m ttqkern.tune --hparams", argv)
    storage_spec = a.storage or default_storage()
    storage = open_storage(optuna, storage_spec)
    model, tok, name = load_causal_lm(a.model, progress=True)
    g = auto_group_size(model) if a.group_size == "auto" else a.group_size[0]
    wins = {t: windows(token_ids(tok, data.read_text(t)), a.seqlen, a.windows, spread=True) for t in a.texts}
    print(f"tuning TTQ r={a.r} on {', '.join(f'{t} ({len(w)} windows)' for t, w in wins.items())} x {a.seqlen}, "
          f"group {g}; storage {storage_spec}", flush=True)  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    tag = "+".join(Path(t).name for t in a.texts)
    for bits in a.bits:
        settings = {"model": name, "texts": a.texts, "windows": a.windows, "seqlen": a.seqlen, "group_size": g,
                    "r": a.r, "bits": bits, "beta_searched": a.beta, "backend": a.backend, "storage": storage_spec}  # fmt: skip
        study_name = (a.study or f"ttq-{name}-r{a.r}-g{g}-{tag}-{a.windows}x{a.seqlen}") + f"-b{bits}"
        study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                    sampler=optuna.samplers.TPESampler(seed=a.seed, n_startup_trials=a.startup_trials),
                                    load_if_exists=True)  # fmt: skip
        t_start = time.perf_counter()
        if a.trials:
            # Several runs (or workers) may feed one study: keep every command that did.
            study.set_user_attr("commands", [*study.user_attrs.get("commands", []), command])
            if not any(_is_baseline(t.params) for t in study.trials):
                # the spec's starting values and the shipped defaults, so the report compares both
                beta = {"beta": 1.0} if a.beta else {}
                study.enqueue_trial({**SPEC_START, **beta})
                shipped = {"alpha": defaults.ALPHA, "lam": defaults.LAM, "p": defaults.P}
                if all(SPACE[k][0] <= v <= SPACE[k][1] for k, v in shipped.items()):
                    study.enqueue_trial({**shipped, **beta})
            # Build once (SVD split included); trials only change hparams on the layers.
            qmodel = quantized_copy(model, "ttq", bits=bits, group_size=g, r=a.r, backend=a.backend)

            def objective(trial, bits=bits, qmodel=qmodel):
                hp = {"alpha": trial.suggest_float("alpha", *SPACE["alpha"]),
                      "lam": trial.suggest_float("lam", *SPACE["lam"], log=True),
                      "p": trial.suggest_float("p", *SPACE["p"])}  # fmt: skip
                if a.beta:
                    hp["beta"] = trial.suggest_float("beta", *SPACE["beta"])
                set_hparams(qmodel, **hp)
                res = {t: perplexity(qmodel, w, desc=f"b{bits} trial {trial.number} {t}",
                                     progress=not a.no_progress) for t, w in wins.items()}  # fmt: skip
                nll = {t: r.nll for t, r in res.items()}
                # per-window NLLs: two trials can be compared by a paired interval later
                trial.set_user_attr("window_nll", {t: r.window_nll for t, r in res.items()})
                trial.set_user_attr(
                    "domain_ppl", {t: round(math.exp(v), 4) if v < 700 else None for t, v in nll.items()}
                )
                value = sum(nll.values()) / len(nll)  # every text weighs the same
                # A diverged model (inf/nan) is a bad trial, not a crash: give TPE a large finite value.
                return value if math.isfinite(value) else 1e3

            def report(study, trial, bits=bits, t_start=t_start):
                best = study.best_trial
                print(f"[b{bits}] trial {trial.number}: ppl {math.exp(trial.value):.3f} "
                      + " ".join(f"{k}={v:.4g}" for k, v in trial.params.items())
                      + f" | best {math.exp(best.value):.3f} (trial {best.number}) | {time.perf_counter() - t_start:.0f} s",
                      flush=True)  # fmt: skip

            study.optimize(objective, n_trials=a.trials, timeout=a.timeout, callbacks=[report])
        s = summary(study, optuna, bits, settings)
        s["run"] = records.run_record(command, seconds=time.perf_counter() - t_start)
        md = markdown(s)
        paths = records.write_report(f"{a.out}_b{bits}", s, md)
        print(md)
        print("wrote " + " and ".join(map(str, paths)))
        if a.ship_defaults:
            print(f"wrote {ship_defaults(s, paths[0])}")
    return 0
