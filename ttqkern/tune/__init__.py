"""Offline tuning command line: ``python -m ttqkern.tune --<mode> [options]``.

Modes (one per run):

- ``--hparams``: Optuna search of TTQ's alpha / lam / p (optionally beta) on
  *validation* perplexity, per bit width (`ttqkern.tune.hparams`); results go to
  ``results/hparams/`` and the chosen values into `ttqkern.defaults`.

- ``--gpu``: Optuna search of the Triton kernels' launch parameters on this GPU
  (`ttqkern.tune.gpu`); the best configs go into the run-time config store
  (`ttqkern.tuning.store`).

Adding a mode: write a module with ``main(argv) -> int`` and register it in `MODES`.
`tuner` is the Optuna study of kernel parameters that ``--gpu`` runs.
"""

from __future__ import annotations

# mode -> (module implementing ``main(argv) -> int``, one-line help)
MODES: dict[str, tuple[str, str]] = {
    "hparams": ("ttqkern.tune.hparams", "Optuna search of TTQ alpha/lam/p on validation perplexity"),
    "gpu": ("ttqkern.tune.gpu", "Optuna search of the Triton kernels' tiles for this GPU"),
}
