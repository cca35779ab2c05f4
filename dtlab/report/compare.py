"""``dtlab compare RUN_A RUN_B``: what changed between two runs of one experiment, with CIs.

For each headline metric (the metrics with CIs in ``metrics.json``), the difference B - A of the
per-seed values in ``results.csv``:

* seeds match (both runs list the same seeds): the seeds share random streams, so the difference
  is paired (:func:`dtlab.stats.paired_diff_ci` on per-seed differences);
* otherwise: independent samples, :func:`dtlab.stats.welch_diff_ci`.

Rows of ``results.csv`` are matched on their setting columns: the text/bool columns (policy,
format, ...) plus numeric columns that are constant per setting across seeds and take several
values (an arrival rate); per-run counters such as ``completed`` vary per seed and are not keys.

It also says whether the code revision (``run.json`` git revision, dirty flag) or the params
differ. The exit code is 0 either way; ``--fail-if-worse METRIC`` exits 1 when B is worse than A
on METRIC with the whole interval on the worse side (lower is better unless the name says
otherwise, see :func:`higher_is_better`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .. import stats
from ..errors import SpecError
from ..results import SavedRun, load
from .tables import bounds_of, fmt_ci, headline_frame

SEED = "seed"
_HIGHER = ("throughput", "per_s", "speedup", "accuracy", "events", "coverage", "completed", "jobs_done")


def higher_is_better(metric: str) -> bool:
    """Latency, misses, errors, energy, loss, overhead: lower is better; rates of work done: higher."""
    m = metric.lower()
    return any(h in m for h in _HIGHER) and "miss" not in m


@dataclass
class Row:
    group: str
    metric: str
    a: float
    b: float
    diff: stats.CI
    paired: bool
    verdict: str     # "better" | "worse" | "no clear difference" | "n/a"


COUNTERS = ("jobs", "completed", "n", "lost", "samples")


def _key_columns(df: pd.DataFrame, metric_cols: list[str]) -> list[str]:
    """Setting columns: text/bool ones, and numeric ones each seed lists with the same several values."""
    rest = [c for c in df.columns if c not in metric_cols and c != SEED and c not in COUNTERS]
    keys = [c for c in rest if pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c])
            or pd.api.types.is_bool_dtype(df[c])]     # pandas >= 3 reads text as the str dtype, not object
    for c in rest:
        if c in keys or df[c].nunique(dropna=False) < 2:
            continue
        if SEED in df.columns:
            sets = df.groupby(SEED)[c].agg(lambda s: frozenset(s.dropna().tolist()))
            if len(set(sets)) == 1 and len(sets.iloc[0]) > 1:
                keys.append(c)
    return keys


def _label(keys: list[str], values: tuple) -> str:
    parts = []
    for k, v in zip(keys, values):
        if k in ("dt",):
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        parts.append(f"{v}" if k in ("policy", "format", "arm", "mode") else f"{k}={v}")
    return " ".join(parts) or "all"


def per_seed_table(run_dir: Path, metrics: list[str]) -> tuple[pd.DataFrame | None, list[str], str]:
    """The run's per-seed table for ``metrics``: ``results.csv`` if it has a seed column and metric
    columns, else the ``*per_seed*.csv`` with the most of them (V2 keeps its per-seed MAPEs in
    ``per_seed.csv``, V3 its per-seed format energies in ``format_factors_per_seed.csv``)."""
    best: tuple[pd.DataFrame | None, list[str], str] = (None, [], "")
    for path in [run_dir / "results.csv", *sorted(run_dir.glob("*per_seed*.csv"))]:
        if not path.exists():
            continue
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if SEED not in df.columns:
            continue
        cols = [m for m in metrics if m in df.columns and pd.api.types.is_numeric_dtype(df[m])]
        if len(cols) > len(best[1]):
            best = (df, cols, path.name)
        if cols and path.name == "results.csv":
            break
    return best


def _verdict(metric: str, ci: stats.CI) -> str:
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return "n/a"
    if ci.low <= 0 <= ci.high:
        return "no clear difference"
    up = ci.low > 0
    return "better" if up == higher_is_better(metric) else "worse"


def compare(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """The comparison as a dict: provenance differences and one row per (setting, metric)."""
    a, b = load(run_a), load(run_b)
    for r, p in ((a, run_a), (b, run_b)):
        if not r.metrics:
            raise SpecError("run", f"{p}: no metrics.json (not a finished run directory)")
    if a.experiment.upper() != b.experiment.upper():
        raise SpecError("run", f"runs are of different experiments ({a.experiment} vs {b.experiment}); "
                               "compare runs of one experiment")
    head = headline_frame(a.metrics)
    metric_names = list(dict.fromkeys(head["metric"]))
    da, cols, source = per_seed_table(a.run_dir, metric_names)
    db, cols_b, source_b = per_seed_table(b.run_dir, metric_names)
    if source_b != source:
        db, cols_b = None, []      # two layouts (different code revisions): no common per-seed table
    rows: list[Row] = []
    notes: list[str] = []
    if da is not None and db is not None:
        cols = [c for c in cols if c in cols_b]
        keys = [k for k in _key_columns(da, cols) if k in db.columns]
        seeds_a, seeds_b = sorted(da[SEED].unique().tolist()), sorted(db[SEED].unique().tolist())
        paired = seeds_a == seeds_b
        ga = dict(iter(da.groupby(keys, dropna=False))) if keys else {(): da}
        gb = dict(iter(db.groupby(keys, dropna=False))) if keys else {(): db}
        for key, sa in ga.items():
            kt = key if isinstance(key, tuple) else (key,)
            sb = gb.get(key)
            if sb is None:
                notes.append(f"setting {_label(keys, kt)} only in A")
                continue
            for m in cols:
                if paired:
                    xa = sa.set_index(SEED)[m].groupby(level=0).mean()
                    xb = sb.set_index(SEED)[m].groupby(level=0).mean().reindex(xa.index)
                    ci = stats.paired_diff_ci(xb.tolist(), xa.tolist())
                else:   # one value per seed (rows of one seed averaged), then independent samples
                    ci = stats.welch_diff_ci(sb.groupby(SEED)[m].mean().tolist(), sa.groupby(SEED)[m].mean().tolist())
                ci = stats.clip_ci(ci, stats.diff_bounds(bounds_of(m)))     # a miss-rate change is in [-1, 1]
                rows.append(Row(_label(keys, kt), m, float(sa[m].mean()), float(sb[m].mean()), ci, paired,
                                _verdict(m, ci)))
        for key in gb:
            if key not in ga:
                notes.append(f"setting {_label(keys, key if isinstance(key, tuple) else (key,))} only in B")
        tokens = {t for r in rows for part in r.group.split() for t in part.split("=")}
        missed = sorted({g for g in head["group"] if str(g).split(".")[0] not in tokens and g != "all"})
        if rows and missed:   # headline settings the per-seed table does not hold (pooled, or another table's)
            notes.append("headline settings with no per-seed rows here (not compared): " + ", ".join(missed))
        pooled = [m for m in metric_names if m not in cols]
        if pooled:      # headline metrics with no per-seed column (pooled over seeds): no difference CI here
            notes.append(f"not compared (no per-seed values in {source}, e.g. pooled over seeds): "
                         + ", ".join(pooled) + "; see dtlab table for each run's value and CI")
        seeds_note = (f"seeds match ({seeds_a}): paired differences" if paired else
                      f"seeds differ (A {seeds_a}, B {seeds_b}): unpaired Welch intervals") + f" (per seed: {source})"
    else:
        seeds_note = ("no per-seed table (results.csv or *per_seed*.csv with a seed column and the headline "
                      "metrics): differences of the means only, no CI")
        hb = headline_frame(b.metrics).set_index(["group", "metric"])
        for r in head.itertuples(index=False):
            if (r.group, r.metric) in hb.index:
                vb = float(hb.loc[(r.group, r.metric), "value"])
                rows.append(Row(r.group, r.metric, r.value, vb, stats.CI(vb - r.value, math.nan, math.nan, 0),
                                False, "n/a"))
    return {"experiment": a.experiment, "a": str(a.run_dir), "b": str(b.run_dir),
            "provenance": provenance_diff(a.info, b.info), "seeds": seeds_note, "notes": notes,
            "rows": rows}


def provenance_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Did the code revision, the params or the substrate change between the two run.json files?"""
    ga, gb = a.get("git") or {}, b.get("git") or {}
    pa, pb = a.get("params") or {}, b.get("params") or {}
    changed = {k: (pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)}
    return {
        "code_differs": ga.get("revision") != gb.get("revision") or bool(ga.get("dirty")) or bool(gb.get("dirty")),
        "revision": (ga.get("revision"), gb.get("revision")),
        "dirty": (ga.get("dirty"), gb.get("dirty")),
        "params_differ": bool(changed),
        "params_changed": changed,
        "substrate": (a.get("substrate"), b.get("substrate")),
    }


def _short(rev: Any) -> str:
    return str(rev)[:10] if rev else "unknown"


def format_text(result: Mapping[str, Any]) -> str:
    p = result["provenance"]
    lines = [f"{result['experiment']}: B - A   (A {result['a']}, B {result['b']})"]
    ra, rb = p["revision"]
    dirty = [n for n, d in zip("AB", p["dirty"]) if d]
    if ra != rb:
        lines.append(f"code: differs (A {_short(ra)}{'+dirty' if p['dirty'][0] else ''}, "
                     f"B {_short(rb)}{'+dirty' if p['dirty'][1] else ''})")
    elif dirty:
        lines.append(f"code: same revision {_short(ra)}, but {' and '.join(dirty)} ran from a tree with "
                     "uncommitted changes: the code may differ")
    else:
        lines.append(f"code: same revision {_short(ra)}")
    if p["params_differ"]:
        lines.append("params: differ: " + "; ".join(f"{k}: {va!r} -> {vb!r}" for k, (va, vb) in
                                                     p["params_changed"].items()))
    else:
        lines.append("params: same")
    if p["substrate"][0] != p["substrate"][1]:
        lines.append(f"substrate: {p['substrate'][0]} -> {p['substrate'][1]}")
    lines.append(result["seeds"])
    lines.append(f"{'setting':<24} {'metric':<22} {'A':>11} {'B':>11}  {'B - A [95% CI]':<30} verdict")
    for r in result["rows"]:
        est, ci = fmt_ci(r.diff.mean, r.diff.low, r.diff.high)
        a_txt, b_txt = (f"{v:.6g}" if math.isfinite(v) else "–" for v in (r.a, r.b))
        lines.append(f"{r.group[:24]:<24} {r.metric[:22]:<22} {a_txt:>11} {b_txt:>11}  {(est + ' ' + ci):<30} {r.verdict}")
    lines.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(lines)


def as_json(result: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["rows"] = [{"setting": r.group, "metric": r.metric, "a": r.a, "b": r.b, "diff": r.diff.mean,
                    "ci_low": r.diff.low, "ci_high": r.diff.high, "paired": r.paired, "verdict": r.verdict}
                   for r in result["rows"]]
    return out


def worse_on(result: Mapping[str, Any], metric: str) -> list[Row]:
    """Rows where B is worse than A on ``metric`` (column name, or ``setting.metric``), CI excluding 0."""
    hits = [r for r in result["rows"] if r.metric == metric or f"{r.group}.{r.metric}" == metric]
    if not hits:
        known = sorted({r.metric for r in result["rows"]})
        raise SpecError("--fail-if-worse", f"no metric {metric!r} in this comparison; known: {', '.join(known)}")
    return [r for r in hits if r.verdict == "worse"]

