"""V1: does the DT controller beat placement without a twin?

Each policy drives the same controller loop on the same substrate, world and workload
(per seed: identical arrivals, background load, failures and link variation), so the
difference in observed latency and deadline misses is the policy's. DT policies
(greedy, resilient, cvar) plan with the twin's predictor; baselines (least-allocated,
random, round-robin) place without one. Means carry 95% t-intervals over seeds.

The load matters: the example workload's edge zone saturates near 2 jobs/s, where a
twin that only sees running work (not the backlog still to come) keeps choosing the
fast-looking edge nodes. So V1 sweeps the arrival rate (``rates_per_s``); metric keys
are ``<policy>.r<rate>.<metric>``.

Substrate: ``substrate: auto`` (default) runs on the ``fabric`` (real processes in cgroups and
network namespaces, twin with this host's calibration) when this host can, else on ``sim``;
metrics ``substrate``/``substrate_note`` say which and why. Fabric runs take wall-clock time
(a job takes ~1.5 s and arrivals are real), so on the fabric the ``fabric`` sizes replace the
top-level ones: 20 jobs at 2 jobs/s (the contended rate where policies differ), 2 seeds, all six
policies -- 12 controller runs of ~12 s, about 3 minutes on this 2-core host.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from ..energy import add_job_energy, energy_stats
from .common import (ExperimentResult, auto_substrate_defaults, check_params, load_cluster_param, load_workload_param,
                     metrics_from_summary, require_choices, require_positive, resolve, run_controller,
                     latency_stats, summarize_seeds)

# on the fabric (wall-clock), these sizes replace the top-level ones (see the module docstring)
FABRIC_SIZES: dict[str, Any] = {"jobs": 20, "rates_per_s": [2.0], "seeds": [0, 1],
                                "substrate_opts": {"host_cores": 2.0}}
DEFAULTS: dict[str, Any] = {
    **auto_substrate_defaults(FABRIC_SIZES),
    "workload": "examples/workload.yaml",
    "jobs": 200,
    "rates_per_s": [0.5, 1.0, 2.0],
    "policies": ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"],
    "predictor": "fast",
    "samples": 128,
    "seeds": [0, 1, 2, 3, 4],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"substrate": "sim", "jobs": 20, "seeds": [0, 1], "rates_per_s": [1.0]}
METRICS = ("latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate")
DT_POLICIES = ("greedy", "resilient", "cvar")
ENERGY_METRICS = ("energy_proxy_j",)   # issue 23: mean per completed job, power model x substrate CPU time


def check(params: dict | None) -> dict[str, Any]:
    """What the runner checks before the kernel starts (see common.check_params)."""
    return check_params(params, DEFAULTS, "V1")[0]


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies

    p, choice = resolve(params, DEFAULTS, "V1")
    require_choices(p, "policies", policies.names())
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "jobs")
    cluster = load_cluster_param(p["cluster"])
    if not p["rates_per_s"]:
        from ..errors import SpecError
        raise SpecError("rates_per_s", "must list at least one arrival rate")
    rows, jobs = [], []
    for rate in p["rates_per_s"]:
        workload = load_workload_param(p["workload"], p["jobs"], rate)
        for seed in p["seeds"]:
            for policy in p["policies"]:
                df, ctl = run_controller(p, cluster, workload, seed, policy, p["predictor"], p["samples"],
                                       choice=choice)
                df.insert(1, "rate_per_s", rate)
                df = add_job_energy(df, ctl.substrate, cluster)       # issue 23: energy per policy
                rows.append({"policy": policy, "rate_per_s": rate, "seed": seed, "dt": policy in DT_POLICIES,
                             **latency_stats(df), **energy_stats(df)})
                jobs.append(df)
    table = pd.DataFrame(rows)
    summary = summarize_seeds(table, ["policy", "rate_per_s"], METRICS + ENERGY_METRICS)
    summary["rate"] = "r" + summary["rate_per_s"].map(lambda r: f"{r:g}")
    metrics = metrics_from_summary(summary, ["policy", "rate"])
    summary = summary.drop(columns="rate")
    metrics.update(choice.metrics())
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"summary": summary, "jobs": pd.concat(jobs, ignore_index=True)}, params=p)
