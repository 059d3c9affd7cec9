"""The statistics behind a capsule's summary, checked on data whose answer is known."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from zmlx.bench import stats


def test_percentile_matches_linear_interpolation():
    xs = [7.0, 1.0, 3.0, 5.0]  # sorted 1 3 5 7
    assert stats.percentile(xs, 0) == 1.0
    assert stats.percentile(xs, 100) == 7.0
    assert stats.percentile(xs, 50) == 4.0
    assert stats.percentile(xs, 25) == pytest.approx(2.5)  # pos 0.75 between 1 and 3
    assert stats.iqr(xs) == (pytest.approx(2.5), pytest.approx(5.5))
    assert stats.spread(xs) == (1.0, 7.0)
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_constant_samples_give_a_degenerate_interval():
    lo, hi = stats.bootstrap_ratio_ci([121.0] * 5, [110.0] * 5, seed=3, resamples=200)
    assert lo == hi == 121.0 / 110.0
    assert stats.excludes((lo, hi), 1.0)


def test_interval_of_three_point_sample_is_known():
    # Patched {90, 100, 110} over a constant 100: a resampled median of 3 is 90 with probability 7/27, 110 with
    # 7/27 and 100 with 13/27, so the 2.5% and 97.5% quantiles of the ratio are exactly 0.9 and 1.1.
    lo, hi = stats.bootstrap_ratio_ci([90.0, 100.0, 110.0], [100.0] * 4, seed=0, resamples=4000)
    assert (lo, hi) == (0.9, 1.1)
    assert not stats.excludes((lo, hi), 1.0)


def _exact_quantiles(num, den, q_lo, q_hi):
    """Quantiles of the exact bootstrap distribution, enumerating every resample (tiny n only)."""
    def medians(xs):
        return [statistics.median(s) for s in itertools.product(xs, repeat=len(xs))]

    ratios = sorted(a / b for a in medians(num) for b in medians(den))
    return stats.percentile(ratios, q_lo), stats.percentile(ratios, q_hi)


def test_interval_matches_exact_bootstrap_distribution():
    num, den = [104.0, 109.0, 111.0, 118.0], [99.0, 100.0, 102.0, 103.0]
    exact_lo, exact_hi = _exact_quantiles(num, den, 2.5, 97.5)
    lo, hi = stats.bootstrap_ratio_ci(num, den, seed=0, resamples=20_000)
    # Monte Carlo error of a 2.5% quantile at 20k resamples is well under 0.5%.
    assert lo == pytest.approx(exact_lo, rel=5e-3)
    assert hi == pytest.approx(exact_hi, rel=5e-3)
    assert lo > 1.0 and stats.excludes((lo, hi))


def test_interval_is_deterministic_given_seed_and_covers_the_point_estimate():
    num = [131.2, 128.9, 133.0, 130.4, 129.7]
    den = [120.1, 122.4, 119.8, 121.0, 123.3]
    a = stats.bootstrap_ratio_ci(num, den, seed=7, resamples=3000)
    b = stats.bootstrap_ratio_ci(num, den, seed=7, resamples=3000)
    assert a == b
    point = statistics.median(num) / statistics.median(den)
    assert a[0] <= point <= a[1]
    # The ratio of medians can never leave [min/max, max/min] of the samples.
    assert min(num) / max(den) <= a[0] and a[1] <= max(num) / min(den)


def test_overlapping_samples_do_not_exclude_one():
    same = [100.0, 103.0, 98.0, 101.0, 99.5]
    lo, hi = stats.bootstrap_ratio_ci(list(reversed(same)), same, seed=0, resamples=2000)
    assert lo < 1.0 < hi
    assert not stats.excludes((lo, hi))
    assert math.isclose(statistics.median(same) / statistics.median(same), 1.0)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        stats.bootstrap_ratio_ci([], [1.0])
    with pytest.raises(ValueError):
        stats.bootstrap_ratio_ci([1.0], [0.0])
