"""Run-time tuning data: the device catalog, tuned-config store and parameter tables.

`devices` (roofline figures, compiler targets and config-file names), `store` (the
JSON config files, with where each entry came from), `params` (what a backend may
tune, and the lookup every kernel launch makes) and `lookup` (which config a call
would use, and why).  Nothing here imports optuna: the offline tuners live in
`ttqkern.tune` (``python -m ttqkern.tune``).
"""

from .which import lookup

__all__ = ["lookup"]
