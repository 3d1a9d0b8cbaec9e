"""Offline tuning command line: ``python -m ttqkern.tune --<mode> [options]``.

Modes (one per run):

- ``--hparams``: Optuna search of TTQ's alpha / lam / p (optionally beta) on
  *validation* perplexity, per bit width (`ttqkern.tune.hparams`); results go to
  ``results/hparams/`` and the chosen values into `ttqkern.defaults`.

- ``--cpu`` / ``--gpu``: Optuna search of a backend's kernel parameters on this
  machine (Numba on the CPU; Triton or CuPy on a GPU): `ttqkern.tune.kernels` is
  the command line, `ttqkern.tune.tuner` the tuner (generic over backends: it reads
  each backend's `ConfigTable`); the best configs go into the run-time config store
  (`ttqkern.tuning.store`).  ``--storage`` shares studies between processes and
  machines (`ttqkern.tune.storage`).

Adding a mode: write a module with ``main(argv) -> int`` and register it in `MODES`.
"""

from __future__ import annotations

# mode -> (module implementing ``main(argv) -> int``, one-line help)
MODES: dict[str, tuple[str, str]] = {
    "hparams": ("ttqkern.tune.hparams", "Optuna search of TTQ alpha/lam/p on validation perplexity"),
    "cpu": ("ttqkern.tune.cpu", "Optuna search of the CPU (Numba) kernels' parameters on this machine"),
    "gpu": ("ttqkern.tune.gpu", "Optuna search of a GPU backend's (Triton, CuPy) kernel parameters on this GPU"),
    "compile-check": ("ttqkern.tune.compile_check", "compile every default and shipped config for each catalog GPU"),
}
