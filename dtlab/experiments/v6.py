"""V6: does the twin stay right when the world drifts?

The ground truth drifts while the controller runs: every node gets slower
(``speed_drift_per_min``), jobs get bigger (``workload_drift_per_min``), and telemetry is
late (``telemetry_delay_s``) and noisy (``telemetry_noise``) -- on top of the sim's static
calibration error. Two modes run on the same world and workload per seed:

* ``static``: the twin keeps its spec speeds and default overheads;
* ``online``: :class:`dtlab.calibration.online.OnlineCalibrator` (EWMA of observed/predicted
  stage service time per node, ``ewma_alpha``) corrects the twin's node speeds as it goes.

Per time window of ``window_s`` (by arrival): prediction error (MAPE of the planned
prediction's mean against observed latency), median APE, median predicted/observed
ratio (bias: < 1 the twin is optimistic) and deadline-miss rate; overall and last-window
means with 95% t-intervals over seeds. MAPE punishes over-prediction harder (an APE can
exceed 1 only when predicting high), so read it next to the median ratio.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .common import (SUBSTRATE_DEFAULTS, ExperimentResult, load_cluster_param, load_workload_param, mean_ci,
                     put_ci, require_choices, require_positive, run_controller, validate)

DEFAULTS: dict[str, Any] = {
    **SUBSTRATE_DEFAULTS,
    "workload": "examples/workload.yaml",
    "jobs": 200,
    "rate_per_s": 0.5,
    "policy": "greedy",
    "predictor": "fast",
    "samples": 64,
    "modes": ["static", "online"],
    "ewma_alpha": 0.2,
    "window_s": 30.0,
    "speed_drift_per_min": -0.08,
    "workload_drift_per_min": 0.04,
    "telemetry_delay_s": 10.0,
    "telemetry_noise": 0.1,
    "seeds": [0, 1, 2],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"jobs": 30, "seeds": [0, 1]}
MODES = ("static", "online")


def _windows(df: pd.DataFrame, window_s: float) -> pd.DataFrame:
    df = df.copy()
    df["window_start_s"] = np.floor(df["planned_ms"] / 1000.0 / window_s) * window_s
    df["ape"] = (df["pred_mean_ms"] - df["latency_ms"]).abs() / df["latency_ms"]
    df["ratio"] = df["pred_mean_ms"] / df["latency_ms"]
    df.loc[~df["ok"], ["ape", "ratio"]] = np.nan
    return (df.groupby("window_start_s").agg(jobs=("job", "size"), mape=("ape", "mean"),
                                             median_ape=("ape", "median"), median_ratio=("ratio", "median"),
                                             miss_rate=("missed", "mean")).reset_index())


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies

    p = validate(params, DEFAULTS, "V6")
    require_choices(p, "policy", [n for n in policies.names() if n != "rl_stub"])
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_choices(p, "modes", MODES)
    require_positive(p, "samples", "jobs", "window_s", "ewma_alpha")
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    drift = {k: p[k] for k in ("speed_drift_per_min", "workload_drift_per_min", "telemetry_delay_s",
                               "telemetry_noise")}
    windows, per_run, corrections = [], [], []
    for seed in p["seeds"]:
        for mode in p["modes"]:
            recal = {"alpha": p["ewma_alpha"]} if mode == "online" else None
            df, ctl = run_controller(p, cluster, workload, seed, p["policy"], p["predictor"], p["samples"],
                                     substrate_extra=drift, recalibrate=recal)
            w = _windows(df, p["window_s"])
            w.insert(0, "seed", seed)
            w.insert(0, "mode", mode)
            windows.append(w)
            ok = df[df["ok"]]
            ape = (ok["pred_mean_ms"] - ok["latency_ms"]).abs() / ok["latency_ms"]
            ratio = ok["pred_mean_ms"] / ok["latency_ms"]
            per_run.append({"mode": mode, "seed": seed, "mape": float(ape.mean()) if len(ape) else math.nan,
                            "median_ape": float(ape.median()) if len(ape) else math.nan,
                            "median_ratio": float(ratio.median()) if len(ratio) else math.nan,
                            "miss_rate": float(df["missed"].mean()),
                            "last_window_mape": float(w["mape"].iloc[-1]) if len(w) else math.nan,
                            "last_window_miss_rate": float(w["miss_rate"].iloc[-1]) if len(w) else math.nan})
            if ctl.recalibrator is not None:
                h = pd.DataFrame(ctl.recalibrator.history)
                if len(h):
                    h.insert(0, "seed", seed)
                    corrections.append(h)
    table = pd.concat(windows, ignore_index=True)
    runs = pd.DataFrame(per_run)
    metrics: dict[str, Any] = {}
    for mode, g in runs.groupby("mode", sort=False):
        for m in ("mape", "median_ape", "median_ratio", "miss_rate", "last_window_mape", "last_window_miss_rate"):
            put_ci(metrics, f"{mode}.{m}", mean_ci(g[m]))
    metrics["substrate"] = p["substrate"]
    extra = {"runs": runs}
    if corrections:
        extra["corrections"] = pd.concat(corrections, ignore_index=True)
    return ExperimentResult(table=table, metrics=metrics, extra=extra, params=p)
