"""Tuning: device catalog, tuned-config store (run-time lookup) and the tuners.

Run-time code imports only `devices` and `store`; the Optuna tuners are imported
by `python -m ttqkern.tune` alone, so optuna stays an optional extra.
"""
