"""Confidence intervals over windows: the percentile bootstrap, paired for comparisons.

Every window of an evaluation has the same length, so a model's log-perplexity is
the mean of its per-window NLLs, and the log of a perplexity ratio between two
models run on the *same* windows is the mean of the per-window NLL differences.
Resampling windows with replacement (keeping each window's pair together) gives the
interval of that difference; the pairing removes the window-to-window variation in
difficulty that both models share, which is most of it.  A claim "A beats B" is
made only when the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95
SEED = 0  # fixed: a re-run on the same windows gives the same interval


@dataclass(frozen=True)
class Interval:
    """A mean over windows (``estimate``, nats) with its bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> int:
        """-1: significantly below 0 (the first model is better), +1: above, 0: not resolved."""
        return -1 if self.high < 0 else (1 if self.low > 0 else 0)

    def as_percent(self) -> tuple[float, float, float]:
        """A log-ratio interval as a perplexity change in percent: ``100 * (exp(v) - 1)``."""
        return tuple(100.0 * math.expm1(v) for v in (self.estimate, self.low, self.high))

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero, "percent": list(self.as_percent())}


def bootstrap_mean(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED):
    """Percentile-bootstrap `Interval` of the mean of ``values`` (one per window, fp64)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {v.shape}")
    if not np.isfinite(v).all():
        inf = float(v.mean())
        return Interval(inf, inf, inf, level, int(v.size))
    rng = np.random.Generator(np.random.PCG64(seed))
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), level, int(v.size))


def paired_difference(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """Interval of ``mean(a - b)`` over windows: the log-perplexity ratio of model a to model b.

    a, b: per-window mean NLLs of two models on the same windows, in the same order.
    Negative: a has the lower perplexity.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired windows must match: {a.shape} vs {b.shape}")
    return bootstrap_mean(a - b, **kw)


def fmt_percent(iv: Interval, digits: int = 1) -> str:
    """``"-3.1 % [-4.0, -2.2]"``: a paired log-ratio interval as a perplexity change."""
    e, lo, hi = iv.as_percent()
    if not all(map(math.isfinite, (e, lo, hi))):
        return "n/a (inf)"
    return f"{e:+.{digits}f} % [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def fmt_ppl(iv: Interval, digits: int = 2) -> str:
    """``"62.94 [60.1, 65.9]"``: a log-perplexity interval as perplexity."""
    if not math.isfinite(iv.estimate):
        return "inf"
    e, lo, hi = (math.exp(v) if v < 700 else math.inf for v in (iv.estimate, iv.low, iv.high))
    return f"{e:,.{digits}f} [{lo:,.{max(0, digits - 1)}f}, {hi:,.{max(0, digits - 1)}f}]"
