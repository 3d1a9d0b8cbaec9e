"""Run-time tuning data: the device catalog, tuned-config store and parameter tables.

`devices` (roofline figures and config-file names), `store` (the JSON config files)
and `params` (what a backend may tune, and the lookup every kernel launch makes).
Nothing here imports optuna: the offline tuners live in `ttqkern.tune`
(``python -m ttqkern.tune``).
"""
