"""``python -m ttqkern.tune --hparams``: Optuna search of TTQ's alpha, lam, p (and beta).

Objective: perplexity of the TTQ-quantized model (``prompt`` mode: each window is
quantized from its own activations) on the first windows of a *validation* split;
test splits are refused.  One study per bit width, stored in SQLite under the cache
dir by default (``--storage`` takes any Optuna RDB URL, so many workers can share a
study by running the same command).  Writes ``PREFIX_b<bits>.json`` / ``.md`` with the
best values, the baseline (the spec's starting values, always trial 0), the best
trials and parameter importances.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import __version__, backends, data
from ..nn import TTQLinear

TEST_SPLITS = ("wikitext2", "wikitext2-raw", "ptb")
# The spec's starting values (spec §2), enqueued first so every study reports the baseline.
SPEC_START = {"alpha": 0.25, "lam": 1.0, "p": 2.0}
SPACE = {"alpha": (0.0, 1.0), "lam": (1e-3, 1e2), "p": (0.5, 4.0), "beta": (0.8, 1.2)}


def _require_optuna():
    try:
        import optuna
    except ImportError as e:
        raise RuntimeError(f"--hparams needs optuna ({e}): install the tune extra: pip install 'ttqkern[tune]'") from e
    return optuna


def build_parser() -> argparse.ArgumentParser:
    """The ``--hparams`` mode's argument parser."""
    p = argparse.ArgumentParser(prog="python -m ttqkern.tune --hparams", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local HF folder or .gguf (default: bundled SmolLM2-135M)")
    p.add_argument(
        "--text",
        default="wikitext2-valid",
        help="validation text: name or path (default wikitext2-valid; test splits are refused)",
    )
    p.add_argument("--bits", default="3", help="bit widths, comma list; one study each (default 3)")
    p.add_argument("--group-size", default="auto", help="group size or 'auto' (as python -m ttqkern.eval)")
    p.add_argument("--r", type=int, default=16, help="TTQ low-rank r of the tuned model (default 16)")
    p.add_argument("--seqlen", type=int, default=512, help="window length (default 512)")
    p.add_argument("--max-windows", type=int, default=4, help="validation windows per trial (default 4)")
    p.add_argument("--trials", type=int, default=20, help="trials to run in this process (default 20)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--beta", action="store_true", help="also search the range expansion beta in [0.8, 1.2]")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (default sqlite:///<cache>/tune/hparams.db; share it across workers)",
    )
    p.add_argument("--study", default=None, help="study name prefix (default derived from the settings)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default 0)")
    p.add_argument("--backend", default="auto", help="ttqkern backend (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--out",
        default="results/hparams/ttq_hparams",
        help="output prefix: writes PREFIX_b<bits>.json/.md (default %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-window progress bars")
    return p


def parse_args(argv) -> argparse.Namespace:
    """Parse and validate the ``--hparams`` flags (errors name the flag)."""
    from ..eval.cli import _group_sizes, _int_list

    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.bits = _int_list("--bits", allowed={2, 3, 4, 8})(a.bits)
        a.group_size = _group_sizes(a.group_size)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if a.group_size != "auto" and len(a.group_size) != 1:
        p.error("--group-size takes one value here")
    for flag, v, lo in (("--trials", a.trials, 1), ("--max-windows", a.max_windows, 1), ("--seqlen", a.seqlen, 2),
                        ("--r", a.r, 0)):  # fmt: skip
        if v < lo:
            p.error(f"{flag} must be >= {lo}, got {v}")
    if a.timeout is not None and not a.timeout > 0:
        p.error(f"--timeout must be > 0 seconds, got {a.timeout}")
    if a.text in TEST_SPLITS:
        p.error(f"--text {a.text}: that is a test split; tune on a validation split (wikitext2-valid, ptb-valid)")
    try:
        data.resolve(a.text)
        backends.check_name(a.backend)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    return a


def default_storage() -> str:
    """``sqlite:///<cache>/tune/hparams.db`` (directory created)."""
    from ..eval import cache_dir

    d = cache_dir() / "tune"
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'hparams.db'}"


def set_hparams(model: torch.nn.Module, **hp) -> None:
    """Set alpha/lam/p/beta on every `TTQLinear` and drop its packed weight (next window requantizes)."""
    for m in model.modules():
        if isinstance(m, TTQLinear):
            for k, v in hp.items():
                setattr(m, k, v)
            m.reset()


def _summary(study, optuna, bits: int, settings: dict, command: str, elapsed: float) -> dict:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    done.sort(key=lambda t: t.value)
    base = [t for t in done if all(t.params.get(k) == v for k, v in SPEC_START.items())]
    try:
        importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as e:  # noqa: BLE001 -- too few trials or a flat objective: report it, keep the results
        importances = {"error": f"{type(e).__name__}: {e}"}
    best = done[0] if done else None
    return {
        "command": command,
        "study_commands": study.user_attrs.get("commands", [command]),
        "bits": bits,
        "objective": f"perplexity of TTQ (r={settings['r']}) on {settings['text']}, "
        f"{settings['windows']} windows x {settings['seqlen']} tokens",
        "best": dict(best.params) if best else None,
        "best_ppl": best.value if best else None,
        "best_trial": best.number if best else None,
        "baseline": {"params": SPEC_START, "ppl": base[0].value if base else None},
        "n_trials": len(study.trials),
        "n_complete": len(done),
        "importances": importances,
        "top_trials": [{"number": t.number, "ppl": t.value, **t.params} for t in done[:10]],
        "settings": {**settings, "study": study.study_name, "seconds": round(elapsed, 1)},
    }


def markdown(s: dict) -> str:
    """A study summary as markdown."""
    out = [f"# TTQ hyper-parameter search, {s['bits']} bits", "",
           f"Objective: {s['objective']} (model {s['settings']['model']}, group {s['settings']['group_size']}).",
           (f"Study `{s['settings']['study']}`: {s['n_complete']} complete of {s['n_trials']} trials "
           f"(this run: {s['settings']['seconds']} s)."), ""]  # fmt: skip
    if s["best"]:
        out += [f"Best (trial {s['best_trial']}): perplexity **{s['best_ppl']:.3f}** with "
                + ", ".join(f"{k} = {v!r}" for k, v in s["best"].items()),
                f"Baseline (spec starting values {s['baseline']['params']}): perplexity "
                + (f"{s['baseline']['ppl']:.3f}" if s["baseline"]["ppl"] is not None else "not run"), ""]  # fmt: skip
    out += ["Parameter importances (fANOVA):", ""]
    imp = s["importances"]
    out += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in imp.items()] + [""]
    keys = [k for k in ("alpha", "lam", "p", "beta") if any(k in t for t in s["top_trials"])]
    out += ["Best trials:", "", "| trial | ppl | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for t in s["top_trials"]:
        out.append(f"| {t['number']} | {t['ppl']:.3f} | " + " | ".join(f"{t.get(k, '—'):.4g}" for k in keys) + " |")
    out += ["", f"Command: `{s['command']}`", ""]
    if len(s.get("study_commands", [])) > 1:
        out += ["Commands that fed this study:", ""] + [f"- `{c}`" for c in s["study_commands"]] + [""]
    return "\n".join(out)


def main(argv=None) -> int:
    """Run one study per bit width; print progress; write the summaries."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    try:
        optuna = _require_optuna()
    except RuntimeError as e:
        print(f"python -m ttqkern.tune: error: {e}", file=sys.stderr)
        return 2
    from ..eval import auto_group_size, load_causal_lm, perplexity, quantized_copy, token_ids, windows

    if a.threads:
        torch.set_num_threads(a.threads)
    command = shlex.join(["python", "-m", "ttqkern.tune", "--hparams", *argv])
    storage = a.storage or default_storage()
    model, tok, name = load_causal_lm(a.model, progress=True)
    g = auto_group_size(model) if a.group_size == "auto" else a.group_size[0]
    wins = windows(token_ids(tok, data.read_text(a.text)), a.seqlen, a.max_windows)
    print(f"tuning TTQ r={a.r} on {a.text} ({len(wins)} windows x {a.seqlen}), group {g}; storage {storage}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    for bits in a.bits:
        settings = {"model": name, "text": a.text, "windows": len(wins), "seqlen": a.seqlen, "group_size": g,
                    "r": a.r, "bits": bits, "beta_searched": a.beta, "backend": a.backend,
                    "threads": torch.get_num_threads(), "storage": storage, "seed": a.seed, "ttqkern": __version__,
                    "torch": torch.__version__, "optuna": optuna.__version__,
                    "python": platform.python_version()}  # fmt: skip
        study_name = (a.study or f"ttq-{name}-r{a.r}-g{g}-{Path(a.text).name}-{len(wins)}x{a.seqlen}") + f"-b{bits}"
        study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                    sampler=optuna.samplers.TPESampler(seed=a.seed), load_if_exists=True)  # fmt: skip
        # Several runs (or workers) may feed one study: keep every command that did.
        study.set_user_attr("commands", [*study.user_attrs.get("commands", []), command])
        if not any(all(t.params.get(k) == v for k, v in SPEC_START.items()) for t in study.trials):
            study.enqueue_trial({**SPEC_START, **({"beta": 1.0} if a.beta else {})})
        # Build once (SVD split included); trials only change hparams on the layers.
        qmodel = quantized_copy(model, "ttq", bits=bits, group_size=g, r=a.r, backend=a.backend)
        t_start = time.perf_counter()

        def objective(trial, bits=bits, qmodel=qmodel):
            hp = {
                "alpha": trial.suggest_float("alpha", *SPACE["alpha"]),
                "lam": trial.suggest_float("lam", *SPACE["lam"], log=True),
                "p": trial.suggest_float("p", *SPACE["p"]),
            }
            if a.beta:
                hp["beta"] = trial.suggest_float("beta", *SPACE["beta"])
            set_hparams(qmodel, **hp)
            res = perplexity(qmodel, wins, desc=f"b{bits} trial {trial.number}", progress=not a.no_progress)
            # A diverged model (inf/nan) is a bad trial, not a crash: give TPE a large finite value.
            return res.ppl if math.isfinite(res.ppl) else 1e30

        def report(study, trial, bits=bits, t_start=t_start):
            best = study.best_trial
            print(f"[b{bits}] trial {trial.number}: ppl {trial.value:.3f} "
                  + " ".join(f"{k}={v:.4g}" for k, v in trial.params.items())
                  + f" | best {best.value:.3f} (trial {best.number}) | {time.perf_counter() - t_start:.0f} s",
                  flush=True)  # fmt: skip

        study.optimize(objective, n_trials=a.trials, timeout=a.timeout, callbacks=[report])
        s = _summary(study, optuna, bits, settings, command, time.perf_counter() - t_start)
        prefix = Path(f"{a.out}_b{bits}")
        prefix.parent.mkdir(parents=True, exist_ok=True)
        js, md = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
        js.write_text(json.dumps(s, indent=1) + "\n")
        md.write_text(markdown(s))
        print(markdown(s))
        print(f"wrote {js} and {md}")
    return 0
