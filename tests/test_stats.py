"""Bootstrap intervals (`ttqkern.eval.stats`) on synthetic data with a known answer."""

import math

import numpy as np
import pytest

from ttqkern.eval.stats import bootstrap_mean, fmt_percent, paired_difference


def test_constant_differences_give_a_zero_width_interval_at_the_difference():
    a = [3.0, 4.0, 2.5, 5.0]
    iv = paired_difference(a, [x - 0.1 for x in a])
    assert iv.estimate == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.excludes_zero and iv.verdict == 1 and iv.n == 4
    assert fmt_percent(iv) == f"+{100 * math.expm1(0.1):.1f} % [+10.5, +10.5]"


def test_interval_covers_the_true_mean_95_percent_of_the_time_with_the_normal_width():
    # windows' NLL differences ~ N(mu, sd): the interval must contain mu in ~95 % of replications
    rng = np.random.default_rng(123)
    mu, sd, n, reps = 0.03, 0.05, 64, 400
    hits, widths = 0, []
    for _ in range(reps):
        d = rng.normal(mu, sd, n)
        iv = bootstrap_mean(d, n_boot=2000)
        hits += iv.low <= mu <= iv.high
        widths.append(iv.high - iv.low)
    assert 0.91 <= hits / reps <= 0.98, hits / reps
    # the percentile interval's width is ~ 2 * 1.96 * sd / sqrt(n)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sd / math.sqrt(n), rel=0.08)


def test_pairing_removes_the_shared_window_difficulty():
    rng = np.random.default_rng(7)
    difficulty = rng.normal(4.0, 1.0, 50)  # windows differ a lot, both models alike
    a = difficulty + 0.02 + rng.normal(0, 0.01, 50)
    b = difficulty
    paired = paired_difference(a, b)
    unpaired_width = (bootstrap_mean(a).high - bootstrap_mean(a).low) + (bootstrap_mean(b).high - bootstrap_mean(b).low)
    assert paired.excludes_zero and paired.low > 0 and paired.high - paired.low < unpaired_width / 50


def test_same_seed_same_interval_and_bad_inputs():
    d = np.random.default_rng(0).normal(0, 1, 30)
    assert bootstrap_mean(d) == bootstrap_mean(d)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="paired windows must match"):
        paired_difference([1.0, 2.0], [1.0])
