"""Headline tables of a run, ready for a paper: LaTeX (booktabs), Markdown or CSV, numbers rounded to their CI.

The table is built from ``metrics.json`` alone (the experiment's own summary: means with 95 % CIs
over seeds from :mod:`dtlab.stats`), so it needs no re-run and says exactly what the run reported.
Metric keys ``<group>.<metric>`` (e.g. ``greedy.r1.latency_mean_ms``) become a row ``<group>`` and a
column ``<metric>``; keys without a CI (``X.ci_low``/``X.ci_high``) are left out when any key has one.

Rounding rule (:func:`fmt_ci`): the CI half-width is kept to 2 significant digits when it starts
with a 1, else 1, and the estimate and bounds are rounded to that decimal place (tens or hundreds
for wide intervals: 2661 [1121, 4200] is shown as 2700 [1100, 4200]); a number without an interval
keeps 3 significant digits. Intervals are shown clipped to the metric's possible range
(:func:`bounds_of`), as dtlab.stats prescribes, whether or not the experiment clipped them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .. import stats
from ..errors import DtlabError, SpecError
from ..results import atomic_write_text, load, metrics_table

FORMATS = ("latex", "markdown", "csv")
TABLES_DIR = "tables"


def bounds_of(metric: str) -> stats.Bounds:
    """The possible range of a metric, from its name (rates and probabilities in [0, 1]; times,
    energies, counts >= 0): intervals are shown clipped to it (:func:`dtlab.stats.clip_ci`)."""
    m = metric.lower()
    if any(t in m for t in ("rate", "prob", "frac", "share")) and not m.endswith("per_s"):
        return stats.RATE
    if m.endswith(("_ms", "_s", "_j", "_w", "_mb", "jobs", "lost", "count")) or \
            any(t in m for t in ("latency", "factor", "_ms.", "ape", "error", "ratio")):
        return stats.NONNEG
    return stats.UNBOUNDED


def ci_decimals(low: float, high: float) -> int | None:
    """Decimal places the CI's precision supports, negative for tens/hundreds (None: no usable interval)."""
    if any(v is None or not math.isfinite(v) for v in (low, high)):
        return None
    half = (high - low) / 2.0
    if half <= 0:
        return None
    exp = math.floor(math.log10(half))
    lead = int(half / 10 ** exp)
    digits = 2 if lead == 1 else 1
    return -(exp - digits + 1)


def _round(v: float, decimals: int) -> str:
    r = round(v, decimals) + 0.0          # + 0.0 turns -0.0 into 0.0
    return f"{r:.{max(decimals, 0)}f}"


def fmt_ci(value: float, low: float | None = None, high: float | None = None) -> tuple[str, str]:
    """(estimate, "[low, high]") as text, rounded to the interval (see module docstring)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–", ""
    d = ci_decimals(low, high) if low is not None and high is not None else None
    if d is None:
        return (f"{value:.3g}" if isinstance(value, float) else str(value)), ""
    return _round(value, d), f"[{_round(low, d)}, {_round(high, d)}]"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def _group_metric(key: str) -> tuple[str, str]:
    """``"des.mape"`` -> (des, mape): most experiments name the group first. V5 names the metric
    first and ends in a number (``plan_p99_ms.greedy.warm.100``): a metric is never a number, so
    there the first part is the metric and the rest the group."""
    parts = key.split(".")
    if len(parts) > 1 and parts[-1].isdigit():
        return ".".join(parts[1:]), parts[0]
    head, _, last = key.rpartition(".")
    return head, last


def headline_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Long table: group, metric, value, ci_low, ci_high (numeric metrics; with CIs when any has one)."""
    mt = metrics_table(metrics)
    mt["value"] = mt["value"].map(_num)
    mt = mt[mt["value"].notna()].copy()
    for c in ("ci_low", "ci_high"):
        mt[c] = mt[c].map(_num)
    has_ci = mt["ci_low"].notna() & mt["ci_high"].notna()
    if has_ci.any():
        mt = mt[has_ci]
    clipped = [stats.clip_ci(stats.CI(r.value, r.ci_low, r.ci_high, 0), bounds_of(r.metric)) if
               pd.notna(r.ci_low) and pd.notna(r.ci_high) else None for r in mt.itertuples(index=False)]
    split = [_group_metric(k) for k in mt["metric"]]
    mt["group"] = [g for g, _ in split]
    mt["metric"] = [m for _, m in split]
    mt["ci_low"] = [c.low if c else r for c, r in zip(clipped, mt["ci_low"])]
    mt["ci_high"] = [c.high if c else r for c, r in zip(clipped, mt["ci_high"])]
    return mt[["group", "metric", "value", "ci_low", "ci_high"]].reset_index(drop=True)


def _wide(long: pd.DataFrame) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[str, str]]]:
    groups = list(dict.fromkeys(long["group"]))
    metrics = list(dict.fromkeys(long["metric"]))
    cells = {(r.group, r.metric): fmt_ci(r.value, r.ci_low, r.ci_high) for r in long.itertuples(index=False)}
    return groups, metrics, cells


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def to_latex(long: pd.DataFrame, caption: str = "") -> str:
    """A booktabs ``tabular`` (no float: \\input it inside your own table environment)."""
    groups, metrics, cells = _wide(long)
    lines = []
    if caption:
        lines.append(f"% {caption}")
    lines.append("% estimate [95 % CI], rounded to the interval; needs \\usepackage{booktabs}")
    lines.append("\\begin{tabular}{l" + "r" * len(metrics) + "}")
    lines.append("\\toprule")
    lines.append(" & ".join(["setting"] + [tex_escape(m) for m in metrics]) + " \\\\")
    lines.append("\\midrule")
    for g in groups:
        row = [tex_escape(g or "all")]
        for m in metrics:
            est, ci = cells.get((g, m), ("", ""))
            est = est.replace("–", "--")
            row.append(f"{est} {{\\scriptsize {ci}}}" if ci else est)
        lines.append(" & ".join(row) + " \\\\")
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def to_markdown(long: pd.DataFrame) -> str:
    groups, metrics, cells = _wide(long)
    out = ["| setting | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for g in groups:
        vals = [" ".join(x for x in cells.get((g, m), ("", "")) if x) for m in metrics]
        out.append(f"| {g or 'all'} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def to_csv(long: pd.DataFrame) -> str:
    """Long CSV with the rounded text next to the raw numbers (for scripts that re-format)."""
    out = long.copy()
    text = [fmt_ci(r.value, r.ci_low, r.ci_high) for r in long.itertuples(index=False)]
    out["estimate"] = [t[0] for t in text]
    out["ci"] = [t[1] for t in text]
    return out.to_csv(index=False, lineterminator="\n")


def render(long: pd.DataFrame, fmt: str, caption: str = "") -> str:
    if fmt == "latex":
        return to_latex(long, caption)
    if fmt == "markdown":
        return to_markdown(long)
    if fmt == "csv":
        return to_csv(long)
    raise DtlabError(f"unknown table format {fmt!r}; one of {', '.join(FORMATS)}")


def run_table(run_dir: str | Path, fmt: str = "latex") -> str:
    """The headline table of a saved run directory."""
    run = load(run_dir)
    if not run.metrics:
        # a wrong path from the user, as in `dtlab compare`: exit 2
        raise SpecError("run_dir", f"{run_dir}: no metrics.json (is this a finished run directory?)")
    long = headline_frame(run.metrics)
    if long.empty:
        raise DtlabError(f"{run_dir}: metrics.json has no numeric metrics")
    return render(long, fmt, caption=f"{run.experiment} run {run.run_id}")


def save_tables(metrics: Mapping[str, Any], out_dir: str | Path, name: str = "headline") -> list[Path]:
    """``tables/<name>.tex`` and ``.md`` of a run's metrics (called by :func:`dtlab.results.save`)."""
    long = headline_frame(metrics)
    if long.empty:
        return []
    d = Path(out_dir) / TABLES_DIR
    return [atomic_write_text(d / f"{name}.tex", to_latex(long)),
            atomic_write_text(d / f"{name}.md", to_markdown(long))]
