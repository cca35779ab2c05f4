"""Statistics used by experiments, calibration, plots and results: the one home for each rule.

Why one module: the 95 % t-quantile used to live in three places, each rounding differently, so
figure error bars disagreed with metrics.json. Everything that summarises seeds or samples comes
from here.

Conventions
- ``CI(mean, low, high, n)``: a point estimate and a two-sided 95 % interval.
- Intervals of bounded quantities (rates in [0, 1], latencies >= 0) are clipped to the possible
  range with ``bounds``; a t-interval over two seeds can otherwise say a miss rate is -0.8 … 2.4.
- Seeds share random streams across policies, so two policies are compared with
  :func:`paired_diff_ci` on per-seed differences, not by overlapping two intervals.
- Bootstrap intervals (percentile method) for quantiles and rates of pooled samples, seeded with a
  ``numpy.random.Generator`` so the same data give the same interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

# two-sided 95 % Student t quantiles t_{0.975, df} (no scipy dependency); between tabulated
# degrees of freedom the next smaller one is used (conservative); beyond 120, the normal 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}

Bounds = tuple[float, float]
RATE: Bounds = (0.0, 1.0)
NONNEG: Bounds = (0.0, math.inf)
UNBOUNDED: Bounds = (-math.inf, math.inf)


def t975(df: int) -> float:
    """Two-sided 95 % t quantile (table lookup, conservative: the next smaller tabulated df)."""
    if df < 1:
        return math.nan
    if df in _T975:
        return _T975[df]
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


@dataclass(frozen=True)
class CI:
    mean: float
    low: float
    high: float
    n: int


def _finite(values: Iterable[float | None] | np.ndarray) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)] if x.size else x


def clip_ci(ci: CI, bounds: Bounds) -> CI:
    """The interval cut to the quantity's possible range (the estimate is left as it is)."""
    lo, hi = bounds
    low = ci.low if math.isnan(ci.low) else min(max(ci.low, lo), hi)
    high = ci.high if math.isnan(ci.high) else min(max(ci.high, lo), hi)
    return CI(ci.mean, low, high, ci.n)


def diff_bounds(bounds: Bounds) -> Bounds:
    """The possible range of a difference ``b - a`` of two quantities that each lie in ``bounds``
    (two miss rates in [0, 1] differ by at most 1 either way; an unbounded side stays unbounded)."""
    lo, hi = bounds
    span = hi - lo
    return (-span, span) if math.isfinite(span) else UNBOUNDED


def mean_ci(values: Iterable[float | None], bounds: Bounds = UNBOUNDED) -> CI:
    """Mean and 95 % t-interval of per-seed values (NaNs dropped; one value gives a zero-width
    interval), clipped to ``bounds``."""
    x = _finite(values)
    if x.size == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if x.size == 1:
        return CI(m, m, m, 1)
    half = t975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return clip_ci(CI(m, m - half, m + half, int(x.size)), bounds)


def geo_ci(ratios: Sequence[float]) -> CI:
    """Geometric mean and 95 % CI (t-interval on logs) of positive ratios (NaN interval for n=1)."""
    logs = np.log(np.asarray([r for r in ratios if r > 0], dtype=float))
    n = int(logs.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    m = float(logs.mean())
    if n == 1:
        return CI(math.exp(m), math.nan, math.nan, 1)
    half = t975(n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    return CI(math.exp(m), math.exp(m - half), math.exp(m + half), n)


def paired_diff_ci(a: Sequence[float], b: Sequence[float]) -> CI:
    """Mean of the per-seed differences ``a - b`` with a 95 % t-interval. ``a`` and ``b`` are aligned
    by seed (same random streams); pairs with a NaN on either side are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return mean_ci(x[np.isfinite(x)].tolist())


def welch_diff_ci(a: Sequence[float], b: Sequence[float]) -> CI:
    """Difference of means ``mean(a) - mean(b)`` of two *independent* samples (different seeds, so
    no pairing) with a 95 % Welch t-interval (Welch-Satterthwaite degrees of freedom, rounded down).
    NaNs are dropped; fewer than two values on either side gives a NaN interval."""
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    d = float(x.mean() - y.mean())
    n = int(min(x.size, y.size))
    if x.size < 2 or y.size < 2:
        return CI(d, math.nan, math.nan, n)
    vx, vy = float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return CI(d, d, d, n)
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))
    half = t975(max(1, int(math.floor(df)))) * se
    return CI(d, d - half, d + half, n)


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
                 bounds: Bounds = UNBOUNDED, reps: int = 2000, seed: int = 0) -> CI:
    """Percentile-bootstrap 95 % interval of ``stat`` over ``values`` (quantiles, rates of pooled
    samples), clipped to ``bounds``. Deterministic for a given ``seed``."""
    x = _finite(values)
    if x.size == 0:
        return CI(math.nan, math.nan, math.nan, 0)
    est = float(stat(x))
    if x.size == 1:
        return clip_ci(CI(est, est, est, 1), bounds)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(reps, x.size))
    boots = np.array([stat(x[i]) for i in idx], dtype=float)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return clip_ci(CI(est, float(lo), float(hi), int(x.size)), bounds)


def quantile_ci(values: Sequence[float], q: float, bounds: Bounds = NONNEG, seed: int = 0) -> CI:
    """Bootstrap CI of the ``q`` quantile (0 < q < 1) of pooled samples."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return bootstrap_ci(values, lambda x: float(np.quantile(x, q)), bounds=bounds, seed=seed)


def rate_ci(successes: int, n: int) -> CI:
    """Wilson score 95 % interval of a proportion (stays inside [0, 1] by construction)."""
    if n <= 0:
        return CI(math.nan, math.nan, math.nan, 0)
    z = 1.959964
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return CI(p, max(0.0, centre - half), min(1.0, centre + half), n)


def seeds_needed(sd: float, margin: float, z: float = 1.96) -> int:
    """Seeds for a 95 % interval of half-width ``margin`` given a per-seed standard deviation
    ``sd`` (normal approximation; use it to say how many seeds a claim needs)."""
    if margin <= 0 or not math.isfinite(sd):
        return 0
    return max(2, math.ceil((z * sd / margin) ** 2))


def paired_seeds_needed(a: Sequence[float], b: Sequence[float], fraction: float = 0.5) -> int | None:
    """Seeds for a paired 95 % interval of ``a - b`` whose half-width is ``fraction`` of the observed
    mean difference (per-seed sd of the differences, :func:`seeds_needed`); None without an effect
    or with fewer than two pairs. How an experiment says how many seeds its headline needs."""
    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2 or not float(x.mean()):
        return None
    return seeds_needed(float(x.std(ddof=1)), abs(float(x.mean())) * fraction) or None

def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup |F_a - F_b|`` of two samples (NaN/inf dropped;
    NaN if either is empty). V2 compares predicted and observed job-latency distributions with it."""
    x, y = np.sort(_finite(a)), np.sort(_finite(b))
    if x.size == 0 or y.size == 0:
        return math.nan
    grid = np.concatenate([x, y])
    fa = np.searchsorted(x, grid, side="right") / x.size
    fb = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fa - fb)))


def ks_critical(n: int, m: int, alpha: float = 0.05) -> float:
    """Asymptotic two-sample KS critical value ``c(alpha) * sqrt((n + m) / (n m))``: the statistic two
    samples of the *same* distribution stay below with probability 1 - alpha (sampling noise alone)."""
    if n <= 0 or m <= 0:
        return math.nan
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))
