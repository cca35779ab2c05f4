"""Saved experiment results: one directory per run, plain files that pandas and humans can read.

A run directory (``outputs/<exp>/<run-id>/``) holds ``results.csv`` (the experiment's main tidy
table), one ``<name>.csv`` per extra table, ``metrics.json`` (headline numbers), ``figures/`` and
``run.json`` (provenance, written by the runner). Figures are drawn from the CSVs, never from
in-memory objects, so ``dtlab figures`` can redraw them without re-running anything.

Every write goes to a temporary file in the same directory and is renamed into place, so a crash
never leaves a half-written table next to good ones.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .errors import DtlabError
from .experiments.result import ExperimentResult

MAIN_TABLE = "results"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
FIGURES_DIR = "figures"


def jsonable(value: Any, nonfinite: str = "null") -> Any:
    """Plain-JSON version of ``value``: numpy scalars/arrays unwrapped, NaN/inf -> null, keys as str.

    ``nonfinite="text"`` keeps NaN, inf and -inf apart as the strings "NaN", "Infinity",
    "-Infinity" (run ids and recorded params must not merge distinct values)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, nonfinite) for v in items]
    if isinstance(value, np.ndarray):
        return [jsonable(v, nonfinite) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isfinite(value):
            return value
        if nonfinite == "text":
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return None
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


RUN_ID_HEX = 10   # hex digits of a run id: a collision needs ~10^6 runs of one experiment


def run_id(experiment: str, params: Mapping[str, Any]) -> str:
    """The id of a run (``dtlab run``) or a sweep point: a short content hash of (experiment, params).

    Equal params give an equal id, so a finished run is skipped. The one rule for both, so a sweep
    point and a run of the same params have the same id. Non-finite numbers are hashed as text
    ("NaN", "Infinity") so distinct values never share an id.
    """
    blob = json.dumps({"experiment": str(experiment), "params": jsonable(dict(params), nonfinite="text")},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:RUN_ID_HEX]


def dumps(value: Any, sort_keys: bool = False) -> str:
    """Deterministic JSON text (fixed indent, NaN -> null): same numbers in the same order -> same bytes.

    Keys keep the producer's order by default: an experiment lists its most important metric first.
    """
    return json.dumps(jsonable(value), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"


def result_tables(result: ExperimentResult) -> dict[str, pd.DataFrame]:
    """The tables of an experiment result: ``{"results": result.table, **result.extra}``."""
    if not isinstance(result.table, pd.DataFrame):
        raise DtlabError(f"experiment result's `.table` is not a DataFrame (got {type(result.table).__name__})")
    tables = {MAIN_TABLE: result.table}
    for name, df in result.extra.items():
        key = str(name)
        if not isinstance(df, pd.DataFrame):
            raise DtlabError(f"experiment result's extra table {key!r} is not a DataFrame (got {type(df).__name__})")
        if key == MAIN_TABLE or key in tables:
            raise DtlabError(f"experiment result has two tables named {key!r}")
        tables[key] = df
    return tables


def save(result: ExperimentResult, out_dir: str | os.PathLike) -> Path:
    """Write an experiment result's tables (CSV), metrics (JSON) and headline tables into ``out_dir``;
    returns the dir. The one way results are saved: notebooks call it (the runner adds ``run.json``
    afterwards) and so does a sweep point (``dtlab.sweep.run_point``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in result_tables(result).items():
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False, lineterminator="\n"))
    metrics = result.metrics
    if not isinstance(metrics, Mapping):
        raise DtlabError(f"experiment result's `.metrics` is not a dict (got {type(metrics).__name__})")
    atomic_write_text(out / METRICS_FILE, dumps(metrics))
    from .report.tables import save_tables  # tables/headline.tex|md for the paper (dtlab table prints the same)
    save_tables(metrics, out)
    return out


def load_tables(run_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Every ``*.csv`` of a run directory as ``{stem: DataFrame}`` (``"results"`` is the main table)."""
    run = Path(run_dir)
    paths = sorted(run.glob("*.csv"))
    if not any(p.stem == MAIN_TABLE for p in paths):
        raise DtlabError(f"{run}: no {MAIN_TABLE}.csv (was the experiment saved?)")
    return {p.stem: pd.read_csv(p) for p in paths}


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise DtlabError(f"{path}: not valid JSON ({exc})") from exc


@dataclass(frozen=True)
class SavedRun:
    """One finished run read back from disk."""

    run_dir: Path
    experiment: str
    run_id: str
    info: dict            # run.json
    metrics: dict         # metrics.json

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    def tables(self) -> dict[str, pd.DataFrame]:
        return load_tables(self.run_dir)


def load(run_dir: str | os.PathLike) -> SavedRun:
    """Read a run directory back (tables are loaded lazily by ``SavedRun.tables()``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DtlabError(f"{run}: no such run directory")
    info = read_json(run / RUN_FILE)
    return SavedRun(run_dir=run, experiment=str(info.get("experiment", run.parent.name)),
                    run_id=str(info.get("run_id", run.name)), info=info,
                    metrics=read_json(run / METRICS_FILE))


def iter_runs(out_root: str | os.PathLike = "outputs", experiments: Iterable[str] | None = None):
    """Finished-or-not runs under ``out_root/<exp>/<run-id>/run.json``, oldest first."""
    root = Path(out_root)
    wanted = {e.upper() for e in experiments} if experiments else None
    runs = []
    for info_path in root.glob(f"*/*/{RUN_FILE}"):
        run_dir = info_path.parent
        if run_dir.name.startswith((".", "_")) or (wanted and run_dir.parent.name.upper() not in wanted):
            continue
        runs.append(load(run_dir))
    runs.sort(key=lambda r: (str(r.info.get("started", "")), r.experiment, r.run_id))
    return runs


def headline(metrics: Mapping[str, Any], limit: int = 4) -> dict[str, Any]:
    """The first ``limit`` scalar metrics, in the experiment's own order (its most important first).

    Confidence bounds (``X.ci_low``/``X.ci_high``) are left out: they belong with ``X`` in the CSVs.
    """
    out = {}
    for key, value in metrics.items():
        if str(key).endswith((".ci_low", ".ci_high")):
            continue
        if isinstance(value, (int, float, str, bool)) or value is None:
            out[key] = value
        if len(out) >= limit:
            break
    return out


COMPARE_PREFIX = "vs_best_baseline."


def comparison_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """V1's paired comparison (``vs_best_baseline.r<rate>.<metric>``): one row per rate and metric with
    the best DT policy, the best baseline, the mean paired difference (DT - baseline) and its 95 % CI,
    the non-inferiority margin and verdict, and the seeds it rests on. Empty for other experiments."""
    import re

    pattern = re.compile(r"^" + re.escape(COMPARE_PREFIX) + r"(r\d+(?:\.\d+)?)\.([a-z_][a-z0-9_]*)$")
    rows = []
    for key, value in metrics.items():
        key = str(key)
        match = pattern.match(key)
        if match is None:
            continue
        rate, metric = match.groups()
        get = lambda suffix: metrics.get(f"{key}.{suffix}")  # noqa: E731
        rows.append({"rate": rate, "metric": metric, "dt_policy": get("dt_policy"),
                     "baseline_policy": get("baseline_policy"), "diff": value, "ci_low": get("ci_low"),
                     "ci_high": get("ci_high"), "margin": get("margin"), "noninferior": get("noninferior"),
                     "seeds": get("seeds"), "ci_narrower_than_diff": get("ci_narrower_than_diff"),
                     "seeds_for_noninferiority": get("seeds_for_noninferiority")})
    cols = ["rate", "metric", "dt_policy", "baseline_policy", "diff", "ci_low", "ci_high", "margin", "noninferior",
            "seeds", "ci_narrower_than_diff", "seeds_for_noninferiority"]
    table = pd.DataFrame(rows, columns=cols)
    if not table.empty:
        table["_r"] = table["rate"].str[1:].astype(float)
        table = table.sort_values(["_r", "metric"]).drop(columns="_r").reset_index(drop=True)
    return table


def comparison_line(metrics: Mapping[str, Any]) -> str:
    """``dtlab results``' one-line summary of :func:`comparison_table` ('' when there is none)."""
    table = comparison_table(metrics)
    parts = []
    for row in table.itertuples(index=False):
        verdict = "non-inferior" if row.noninferior else "non-inferiority not shown"
        if not row.noninferior and f"{COMPARE_PREFIX}{row.rate}.{row.metric}.seeds_for_noninferiority" in metrics:
            verdict += _needs(row.seeds_for_noninferiority)
        parts.append(f"{row.rate} {row.metric}: {row.dt_policy}-{row.baseline_policy} {_fmt(row.diff)} "
                     f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] {verdict}")
    return ("DT vs best baseline (paired, n=" + str(table["seeds"].iloc[0]) + "): " + "; ".join(parts)) if parts else ""


def _needs(seeds: Any) -> str:
    """' (needs ~N seeds)' at the measured mean and sd; ' (mean past the margin)' when no number of seeds
    can show it (the key is None)."""
    if seeds is None or seeds != seeds:
        return " (mean past the margin)"
    return f" (needs ~{int(seeds)} seeds)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def list_runs(out_root: str | os.PathLike = "outputs", experiments: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per run: experiment, run id, status, start, duration, substrate and headline metrics."""
    rows = []
    for run in iter_runs(out_root, experiments):
        info = run.info
        rows.append({
            "experiment": run.experiment, "run_id": run.run_id, "status": run.status,
            "started": info.get("started"), "duration_s": info.get("duration_s"),
            "substrate": info.get("substrate"), "path": str(run.run_dir),
            "headline": "  ".join(f"{k}={_fmt(v)}" for k, v in headline(run.metrics).items()),
            "noise": noise_flag(info, run.metrics),
            "comparison": comparison_line(run.metrics),
        })
    return pd.DataFrame(rows, columns=["experiment", "run_id", "status", "started", "duration_s",
                                       "substrate", "path", "headline", "noise", "comparison"])


def noise_flag(info: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """"" for a run without a host-noise record (sim), "clean", or "NOISY: <limits exceeded>"."""
    noise = info.get("host_noise") or metrics.get("host_noise")
    if not isinstance(noise, Mapping) or "noisy" not in noise:
        return ""
    if not noise["noisy"]:
        return "clean"
    return "NOISY: " + "; ".join(str(r) for r in noise.get("reasons") or [])


def format_runs(table: pd.DataFrame) -> str:
    """Human one-line-per-run text of ``list_runs`` output."""
    if table.empty:
        return "no runs found"
    lines = []
    for row in table.itertuples(index=False):
        started = str(row.started or "")[:19].replace("T", " ")
        dur = f"{row.duration_s:7.1f}s" if isinstance(row.duration_s, (int, float)) else "       -"
        noise = getattr(row, "noise", "") or ""
        lines.append(f"{row.experiment:<4} {row.run_id:<12} {row.status:<7} {started:<19} {dur} "
                     f"{row.substrate or '-':<7} {row.headline}" + (f"\n     host noise: {noise}" if noise else ""))
        if getattr(row, "comparison", ""):
            lines.append(f"     {row.comparison}")
    return "\n".join(lines)


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Flat metrics (``X``, ``X.ci_low``, ``X.ci_high``) as one row per ``X``: metric, value, ci_low, ci_high.

    The same key table for every experiment, so notebooks and ``dtlab results`` read alike.
    """
    rows: dict[str, dict] = {}
    for key, value in metrics.items():
        key = str(key)
        for suffix in (".ci_low", ".ci_high"):
            if key.endswith(suffix):
                rows.setdefault(key[: -len(suffix)], {})[suffix[1:]] = value
                break
        else:
            rows.setdefault(key, {})["value"] = value
    table = pd.DataFrame([{"metric": k, **v} for k, v in rows.items()],
                         columns=["metric", "value", "ci_low", "ci_high"])
    return table
