"""Small, dependency-free statistics for benchmark runs: medians, percentiles and a seeded bootstrap.

Runs per side are few (3-15), so the headline is a ratio of medians and its uncertainty comes from a
percentile bootstrap: resample each side's runs with replacement (each side on its own: a two-sample bootstrap,
which does not rely on the interleaved runs being paired), take the ratio of the resampled medians, and read the
2.5th and 97.5th percentiles of those ratios. The same seed gives the same interval on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import median

__all__ = ["DEFAULT_RESAMPLES", "MIN_RUNS_FOR_VERDICT", "bootstrap_ratio_ci", "excludes", "iqr", "median", "percentile", "spread"]

DEFAULT_RESAMPLES = 10_000
# Below this many runs per side a bootstrap of the median has too few distinct values to mean anything (with 2
# runs a resampled median takes only 3 values), so no change is called real on fewer runs.
MIN_RUNS_FOR_VERDICT = 5


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    # Exact at the order statistics themselves, so a degenerate sample gives back its value unrounded.
    return xs[lo] if frac == 0.0 else xs[lo] + (xs[hi] - xs[lo]) * frac


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles."""
    return percentile(values, 25.0), percentile(values, 75.0)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Minimum and maximum: with a handful of runs, the honest spread is the whole range."""
    return min(values), max(values)


def bootstrap_ratio_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(numerator) / median(denominator)``.

    Args:
        numerator: per-run values of the side on top (patched decode tok/s for a speedup).
        denominator: per-run values of the side below (baseline decode tok/s); all must be > 0.
        seed: seeds the resampling; equal inputs and seed give an equal interval.
        resamples: bootstrap replicates.
        confidence: two-sided coverage, 0.95 for a 95% interval.

    Examples:
        >>> bootstrap_ratio_ci([110.0, 110.0], [100.0, 100.0])
        (1.1, 1.1)
    """
    if not numerator or not denominator:
        raise ValueError("bootstrap needs at least one value on each side")
    if min(denominator) <= 0:
        raise ValueError("bootstrap ratio: denominator values must be positive")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    rng = random.Random(seed)
    num, den = list(numerator), list(denominator)
    n_num, n_den = len(num), len(den)
    ratios = []
    for _ in range(resamples):
        a = median([num[rng.randrange(n_num)] for _ in range(n_num)])
        b = median([den[rng.randrange(n_den)] for _ in range(n_den)])
        ratios.append(a / b)
    tail = (1.0 - confidence) / 2.0 * 100.0
    return percentile(ratios, tail), percentile(ratios, 100.0 - tail)


def excludes(interval: tuple[float, float], value: float = 1.0) -> bool:
    """Whether ``value`` lies outside the closed interval: the change is larger than the run-to-run noise."""
    lo, hi = interval
    return value < lo or value > hi
