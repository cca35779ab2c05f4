"""V1: does the DT controller beat placement without a twin?

Each policy drives the same controller loop on the same substrate, world and workload
(per seed: identical arrivals, background load, failures and link variation), so the
difference in observed latency and deadline misses is the policy's. DT policies
(greedy, resilient, cvar) plan with the twin's predictor; baselines (least-allocated,
random, round-robin) place without one. Means carry 95% t-intervals over seeds.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .common import (SUBSTRATE_DEFAULTS, ExperimentResult, load_cluster_param, load_workload_param,
                     metrics_from_summary, require_choices, require_positive, run_controller,
                     latency_stats, summarize_seeds, validate)

DEFAULTS: dict[str, Any] = {
    **SUBSTRATE_DEFAULTS,
    "workload": "examples/workload.yaml",
    "jobs": 200,
    "rate_per_s": None,
    "policies": ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"],
    "predictor": "fast",
    "samples": 128,
    "seeds": [0, 1, 2, 3, 4],
}
METRICS = ("latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate")
DT_POLICIES = ("greedy", "resilient", "cvar")


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies

    p = validate(params, DEFAULTS, "V1")
    require_choices(p, "policies", policies.names())
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "jobs")
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    rows, jobs = [], []
    for seed in p["seeds"]:
        for policy in p["policies"]:
            df, _ = run_controller(p, cluster, workload, seed, policy, p["predictor"], p["samples"])
            rows.append({"policy": policy, "seed": seed, "dt": policy in DT_POLICIES, **latency_stats(df)})
            jobs.append(df)
    table = pd.DataFrame(rows)
    summary = summarize_seeds(table, ["policy"], METRICS)
    metrics = metrics_from_summary(summary, ["policy"])
    metrics["substrate"] = p["substrate"]
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"summary": summary, "jobs": pd.concat(jobs, ignore_index=True)}, params=p)
