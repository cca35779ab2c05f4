"""Seed summaries of the experiments: CI tables and the flat metrics convention.

The statistics themselves live in :mod:`dtlab.stats` (the one home of the t-quantile and the
intervals); this module only shapes them: one row per group and metric (:func:`summarize_seeds`),
``name``/``name.ci_low``/``name.ci_high`` in metrics.json (:func:`put_ci`), each interval clipped to
the metric's possible range (:func:`metric_bounds`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ..stats import CI, NONNEG, RATE, UNBOUNDED, Bounds, mean_ci

__all__ = ["CI", "metric_bounds", "mean_ci", "metrics_from_summary", "put_ci", "summarize_seeds"]


def metric_bounds(name: str) -> Bounds:
    """The possible range of a metric, from its name: rates/shares/probabilities in [0, 1], times
    (``_ms``, ``_s``), counts and error magnitudes (``ape``, ``mape``) >= 0, anything else unbounded.
    CIs are clipped to it (a t-interval over few seeds otherwise leaves the range)."""
    n = name.lower()
    if n.endswith(("_rate", "rate", "_prob", "_share", "_frac", "_pct_within", "within_10pct")) or "miss" in n:
        return RATE
    if n.endswith(("_ms", "_s", "_ms_mean", "jobs", "_lost", "completed", "ape", "mape", "_count", "_ratio")) \
            or n.startswith(("mape", "ape")):
        return NONNEG
    return UNBOUNDED


def summarize_seeds(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str],
                    bounds: Mapping[str, Bounds] | None = None) -> pd.DataFrame:
    """Tidy CI table: one row per group and metric with mean, ci_low, ci_high, n (rows of ``df`` are seeds).

    Each CI is clipped to the metric's possible range: ``bounds[metric]`` or :func:`metric_bounds`.
    """
    rows = []
    bounds = dict(bounds or {})
    groups = df.groupby(list(by), sort=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            b = (bounds or {}).get(m) or metric_bounds(m)
            ci = mean_ci(g[m].tolist(), bounds=b)
            rows.append({**dict(zip(by, key)), "metric": m, "mean": ci.mean,
                         "ci_low": ci.low, "ci_high": ci.high, "n": ci.n})
    return pd.DataFrame(rows)


def put_ci(metrics: dict[str, Any], name: str, ci: CI) -> None:
    """Flat metrics convention: ``name``, ``name.ci_low``, ``name.ci_high``."""
    metrics[name] = _num(ci.mean)
    metrics[f"{name}.ci_low"] = _num(ci.low)
    metrics[f"{name}.ci_high"] = _num(ci.high)


def metrics_from_summary(summary: pd.DataFrame, key_cols: Sequence[str]) -> dict[str, Any]:
    """:func:`put_ci` of every row of a :func:`summarize_seeds` table, named ``<key cols>.<metric>``."""
    out: dict[str, Any] = {}
    for row in summary.itertuples(index=False):
        r = row._asdict()
        name = ".".join(str(r[k]) for k in key_cols) + "." + r["metric"]
        put_ci(out, name, CI(r["mean"], r["ci_low"], r["ci_high"], r["n"]))
    return out


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)
