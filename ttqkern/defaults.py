"""Default TTQ hyper-parameters: alpha, lam and p, read from the shipped data file ``defaults.json``.

The file is written by ``python -m ttqkern.tune --hparams ... --ship-defaults`` from the
best trial of an Optuna study, never typed by hand, and says which study produced the
values (`PROVENANCE`: study name, commands, objective, trial, date, commit; the
study's report is the ``results`` file it names).  AWQ does not use these: it keeps
p = 2, lam = 0 and searches alpha per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULTS_FILE = Path(__file__).with_name("defaults.json")


def load(path: Path = DEFAULTS_FILE) -> dict:
    """The data file as a dict: ``{"alpha", "lam", "p", "provenance"}``."""
    d = json.loads(path.read_text(encoding="utf-8"))
    missing = {"alpha", "lam", "p", "provenance"} - set(d)
    if missing:
        raise ValueError(
            f"{path} lacks {sorted(missing)}: rewrite it with python -m ttqkern.tune --hparams --ship-defaults"
        )
    return d


_DATA = load()
ALPHA: float = float(_DATA["alpha"])
LAM: float = float(_DATA["lam"])
P: float = float(_DATA["p"])
PROVENANCE: dict = _DATA["provenance"]
