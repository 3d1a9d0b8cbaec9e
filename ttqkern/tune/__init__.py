"""Offline tuning command line: ``python -m ttqkern.tune --<mode> [options]``.

Modes (one per run):

- ``--hparams``: Optuna search of TTQ's alpha / lam / p (optionally beta) on
  *validation* perplexity, per bit width (`ttqkern.tune.hparams`); results go to
  ``results/hparams/`` and the chosen values into `ttqkern.defaults`.

Adding a mode (e.g. ``--gpu`` for kernel tile tuning, whose results belong in the
run-time config store `ttqkern.tuning`): write a module with ``main(argv) -> int`` and
register it in `MODES`; `PLANNED` lists modes that are named but not built yet, so
asking for one gives a clear error instead of "unrecognized argument".
"""

from __future__ import annotations

# mode -> (module implementing ``main(argv) -> int``, one-line help)
MODES: dict[str, tuple[str, str]] = {
    "hparams": ("ttqkern.tune.hparams", "Optuna search of TTQ alpha/lam/p on validation perplexity"),
}
# mode -> why it is not available yet
PLANNED: dict[str, str] = {
    "gpu": "GPU kernel tile tuning is not implemented in this version (planned: it will write "
    "per-device configs for ttqkern.tuning)",
}
