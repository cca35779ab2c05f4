"""dtlab.stats: the one home of the CI rules (t-quantile, clipping, paired differences, bootstrap)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dtlab import stats


def test_t975_table_and_tail():
    assert stats.t975(11) == 2.201
    assert stats.t975(35) == 2.042          # conservative: next smaller tabulated df
    assert stats.t975(500) == 1.96
    assert math.isnan(stats.t975(0))


def test_mean_ci_clipped_to_bounds():
    raw = stats.mean_ci([0.0, 1.0])         # two seeds: t-interval far outside [0, 1]
    assert raw.low < 0 and raw.high > 1
    ci = stats.mean_ci([0.0, 1.0], bounds=stats.RATE)
    assert (ci.low, ci.mean, ci.high) == (0.0, 0.5, 1.0)


def test_paired_diff_removes_shared_noise():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 10, 20)     # what both policies share through common streams
    a = 100 + seed_effect + rng.normal(0, 0.5, 20)
    b = 98 + seed_effect + rng.normal(0, 0.5, 20)
    d = stats.paired_diff_ci(a.tolist(), b.tolist())
    assert d.low > 0                        # the paired interval sees the 2-unit difference
    ua, ub = stats.mean_ci(a.tolist()), stats.mean_ci(b.tolist())
    assert ua.low < ub.high                 # the unpaired intervals overlap
    with pytest.raises(ValueError):
        stats.paired_diff_ci([1.0], [1.0, 2.0])


def test_bootstrap_quantile_deterministic_and_bounded():
    x = np.random.default_rng(0).exponential(100.0, 400)
    a = stats.quantile_ci(x.tolist(), 0.95, seed=3)
    b = stats.quantile_ci(x.tolist(), 0.95, seed=3)
    assert a == b
    assert 0 <= a.low <= a.mean <= a.high
    assert a.mean == pytest.approx(np.quantile(x, 0.95))


def test_rate_ci_wilson_inside_unit_interval():
    for k, n in [(0, 5), (5, 5), (3, 10)]:
        ci = stats.rate_ci(k, n)
        assert 0.0 <= ci.low <= ci.mean <= ci.high <= 1.0
    assert stats.rate_ci(0, 5).high > 0.0   # zero successes is not certainty


def test_geo_ci_and_seeds_needed():
    ci = stats.geo_ci([2.0, 2.0, 2.0])
    assert ci.mean == pytest.approx(2.0) and ci.low == pytest.approx(2.0)
    assert math.isnan(stats.geo_ci([2.0]).low)
    assert stats.seeds_needed(sd=10.0, margin=5.0) == 16


def test_welch_diff_ci_independent_samples():
    from dtlab.stats import welch_diff_ci
    ci = welch_diff_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0])
    # mean diff -3; se^2 = 1/3 + (20/3)/4 = 2; Welch df = 4 / ((1/3)^2/2 + (5/3)^2/3) = 4.08 -> 4: t = 2.776
    assert ci.mean == pytest.approx(-3.0)
    assert (ci.low, ci.high) == pytest.approx((-3 - 2.776 * 2 ** 0.5, -3 + 2.776 * 2 ** 0.5))
    assert ci.n == 3
    one = welch_diff_ci([1.0], [2.0, 3.0])
    assert one.mean == pytest.approx(-1.5) and math.isnan(one.low)
    same = welch_diff_ci([2.0, 2.0], [1.0, 1.0])
    assert (same.mean, same.low, same.high) == (1.0, 1.0, 1.0)


def test_diff_bounds():
    """B - A of two quantities in [lo, hi] lies in [-(hi - lo), hi - lo]; an unbounded side stays so."""
    assert stats.diff_bounds(stats.RATE) == (-1.0, 1.0)
    assert stats.diff_bounds(stats.NONNEG) == stats.UNBOUNDED
    ci = stats.clip_ci(stats.CI(0.2, -1.4, 1.8, 2), stats.diff_bounds(stats.RATE))
    assert (ci.mean, ci.low, ci.high) == (0.2, -1.0, 1.0)
