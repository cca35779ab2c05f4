"""V2: how good are the twin's predictions?

The controller plans every job (``policy`` with ``plan_predictor``) and submits it to the
ground truth; at planning time, on the very snapshot the plan was made from, the chosen
placement is also predicted by every predictor in ``predictors``:

* ``des``, ``fast``, ``legacy``: the twin's predictors (mean of the predicted distribution);
* ``none``: no model at all -- the job's critical path of reference ``duration_ms`` (no node
  speed, format, load, links or queueing), i.e. what one would say without a twin.

Each prediction is compared with the job's observed latency (arrival to end) on the
substrate: absolute percentage error per job; MAPE, median APE and p95 APE per seed,
with 95% t-intervals over seeds. Jobs that did not complete are left out of the errors
(their count is reported).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..model import Job
from .common import (SUBSTRATE_DEFAULTS, ExperimentResult, child_seed, load_cluster_param, load_workload_param,
                     metrics_from_summary, require_choices, require_positive, run_controller, summarize_seeds,
                     validate)

DEFAULTS: dict[str, Any] = {
    **SUBSTRATE_DEFAULTS,
    "workload": "examples/workload.yaml",
    "jobs": 150,
    "rate_per_s": 1.0,
    "policy": "greedy",
    "plan_predictor": "fast",
    "predictors": ["des", "fast", "legacy", "none"],
    "samples": 128,
    "seeds": [0, 1, 2],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"jobs": 15, "seeds": [0, 1], "samples": 32}
PREDICTORS = ("des", "fast", "legacy", "none")
METRICS = ("mape", "median_ape", "p95_ape")


def critical_path_ms(job: Job) -> float:
    """Longest chain of reference durations through the DAG: the 'no prediction' estimate."""
    finish: dict[str, float] = {}
    by_id = {s.id: s for s in job.stages}
    for sid in job.topo_order:
        s = by_id[sid]
        finish[sid] = max((finish[p] for p in s.after), default=0.0) + s.compute.duration_ms
    return max(finish.values())


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies
    from ..predict import sample_latencies

    p = validate(params, DEFAULTS, "V2")
    require_choices(p, "policy", policies.names())
    require_choices(p, "plan_predictor", ("fast", "des", "legacy"))
    require_choices(p, "predictors", PREDICTORS)
    require_positive(p, "samples", "jobs")
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    rows = []
    for seed in p["seeds"]:
        predicted: list[dict[str, Any]] = []
        holder: dict[str, Any] = {}

        def on_plan(job, plan, snap, arrival_ms, seed=seed):
            timing = getattr(holder.get("twin"), "timing", None)
            for k, name in enumerate(p["predictors"]):
                if name == "none":
                    value = critical_path_ms(job)
                else:
                    rng = np.random.default_rng(child_seed(seed, job.name, name))
                    lat = sample_latencies(snap, job, plan.placement, plan.shadow, predictor=name,
                                           samples=p["samples"], rng=rng, timing=timing)
                    value = float(np.mean(lat))
                predicted.append({"job": job.name, "predictor": name, "predicted_ms": value})

        df, _ = run_controller(p, cluster, workload, seed, p["policy"], p["plan_predictor"], p["samples"],
                               on_plan=[on_plan], before=lambda twin: holder.__setitem__("twin", twin))
        obs = df[["job", "planned_ms", "latency_ms", "ok"]].rename(columns={"planned_ms": "arrival_ms",
                                                                           "latency_ms": "observed_ms"})
        pred = pd.DataFrame(predicted).merge(obs, on="job", how="left")
        pred.insert(0, "seed", seed)
        rows.append(pred)
    table = pd.concat(rows, ignore_index=True)
    table["ape"] = (table["predicted_ms"] - table["observed_ms"]).abs() / table["observed_ms"]
    table.loc[~table["ok"].astype(bool), "ape"] = np.nan
    table = table[["seed", "job", "arrival_ms", "observed_ms", "predictor", "predicted_ms", "ape", "ok"]]
    per_seed = (table.dropna(subset=["ape"]).groupby(["predictor", "seed"], sort=False)["ape"]
                .agg(mape="mean", median_ape="median", p95_ape=lambda x: float(np.percentile(x, 95)), jobs="size")
                .reset_index())
    summary = summarize_seeds(per_seed, ["predictor"], METRICS)
    metrics = metrics_from_summary(summary, ["predictor"])
    metrics["jobs_not_completed"] = int((~table.drop_duplicates(["seed", "job"])["ok"].astype(bool)).sum())
    metrics["substrate"] = p["substrate"]
    cdf = []
    for name, g in table.dropna(subset=["ape"]).groupby("predictor", sort=False):
        x = np.sort(g["ape"].to_numpy())
        cdf.append(pd.DataFrame({"predictor": name, "ape": x, "cdf": np.arange(1, x.size + 1) / x.size}))
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"summary": summary, "per_seed": per_seed,
                                   "cdf": pd.concat(cdf, ignore_index=True) if cdf else pd.DataFrame()},
                            params=p)
