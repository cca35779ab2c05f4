"""V5: does the twin scale? Pure-twin plan latency and state throughput vs cluster size.

Synthetic clusters of ``node_counts`` nodes are drawn from the example cluster's node
types (same zones, links, arch/format mix; :func:`dtlab.experiments.common.synthetic_cluster`).
For each size and policy, ``plans`` wall-clock ``Twin.plan`` calls are timed twice:

* ``warm``:  consecutive plans on an unchanged state (the snapshot and its node tables are reused);
* ``fresh``: one telemetry event is applied before every plan, so each plan pays the snapshot
  rebuild and table refresh a live controller pays when the world keeps changing.

State costs per size: ``apply_events`` single-event ``ClusterState.apply`` calls (telemetry
on random nodes; events/s) and ``snapshots`` snapshot rebuilds after a change (ms).
The ``kube`` variant (real API server with KWOK nodes) plugs in later.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ..model import load_job
from ..state import ClusterState
from .common import (ExperimentResult, child_seed, load_cluster_param, mean_ci, put_ci, require_choices,
                     require_positive, resolve_path, synthetic_cluster, validate)

DEFAULTS: dict[str, Any] = {
    "cluster": "examples/cluster-hetero.yaml",
    "node_counts": [10, 100, 1000, 10000],
    "policies": ["greedy", "cvar"],
    "predictor": "fast",
    "samples": 256,
    "plans": 30,
    "job": "examples/job-pipeline.yaml",
    "apply_events": 20000,
    "snapshots": 20,
    "seeds": [0, 1, 2, 3, 4],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"node_counts": [10, 100], "plans": 3, "seeds": [0, 1], "apply_events": 2000, "snapshots": 5}


def _plan_times(twin, job, policy, predictor, samples, plans, seed, fresh, rng, names) -> list[float]:
    out = []
    for i in range(plans):
        if fresh:
            twin.state.apply({"kind": "telemetry", "node": names[int(rng.integers(len(names)))],
                              "cpu_util": float(rng.random() * 0.5), "ts": float(i)})
        t0 = time.perf_counter()
        twin.plan(job, policy=policy, samples=samples, seed=child_seed(seed, policy, i), predictor=predictor)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def state_costs(cluster, events: int, snapshots: int, seed: int) -> dict[str, float]:
    """(events/s of single applies, ms per snapshot rebuild) on a fresh ClusterState of ``cluster``."""
    rng = np.random.default_rng(child_seed(seed, "state"))
    names = [n.name for n in cluster.nodes]
    idx = rng.integers(len(names), size=events)
    util = rng.random(events) * 0.5
    state = ClusterState(cluster)
    batch = [{"kind": "telemetry", "node": names[i], "cpu_util": float(u), "ts": float(k)}
             for k, (i, u) in enumerate(zip(idx, util))]
    t0 = time.perf_counter()
    for e in batch:
        state.apply(e)
    apply_s = time.perf_counter() - t0
    snap_ms = []
    for k in range(snapshots):
        state.apply(batch[k % len(batch)])
        t0 = time.perf_counter()
        state.snapshot()
        snap_ms.append((time.perf_counter() - t0) * 1000.0)
    return {"apply_events_per_s": events / apply_s if apply_s > 0 else float("nan"),
            "snapshot_ms": float(np.mean(snap_ms)) if snap_ms else float("nan")}


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies
    from ..twin import Twin

    p = validate(params, DEFAULTS, "V5")
    require_choices(p, "policies", [n for n in policies.names() if n != "rl_stub"])
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "plans", "apply_events", "snapshots")
    if not p["node_counts"] or not all(isinstance(n, int) and n >= 1 for n in p["node_counts"]):
        from ..errors import SpecError
        raise SpecError("node_counts", "must be a non-empty list of integers >= 1")
    template = load_cluster_param(p["cluster"])
    job = load_job(resolve_path(p["job"], "job"))
    rows, state_rows = [], []
    for nodes in p["node_counts"]:
        for seed in p["seeds"]:
            cluster = synthetic_cluster(template, nodes, seed=seed)
            names = [n.name for n in cluster.nodes]
            for policy in p["policies"]:
                for mode in ("warm", "fresh"):
                    twin = Twin(cluster)
                    rng = np.random.default_rng(child_seed(seed, nodes, policy, mode))
                    twin.plan(job, policy=policy, samples=p["samples"], seed=0, predictor=p["predictor"])  # warm-up
                    ms = np.asarray(_plan_times(twin, job, policy, p["predictor"], p["samples"], p["plans"],
                                                seed, mode == "fresh", rng, names))
                    rows.append({"nodes": nodes, "policy": policy, "mode": mode, "seed": seed,
                                 "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                                 "mean_ms": float(ms.mean()), "plans": int(ms.size)})
            state_rows.append({"nodes": nodes, "seed": seed,
                               **state_costs(cluster, p["apply_events"], p["snapshots"], seed)})
    table = pd.DataFrame(rows)
    state = pd.DataFrame(state_rows)
    metrics: dict[str, Any] = {}
    for (nodes, policy, mode), g in table.groupby(["nodes", "policy", "mode"], sort=False):
        put_ci(metrics, f"plan_p50_ms.{policy}.{mode}.{nodes}", mean_ci(g["p50_ms"]))
        put_ci(metrics, f"plan_p99_ms.{policy}.{mode}.{nodes}", mean_ci(g["p99_ms"]))
    for nodes, g in state.groupby("nodes", sort=False):
        put_ci(metrics, f"apply_events_per_s.{nodes}", mean_ci(g["apply_events_per_s"]))
        put_ci(metrics, f"snapshot_ms.{nodes}", mean_ci(g["snapshot_ms"]))
    return ExperimentResult(table=table, metrics=metrics, extra={"state": state}, params=p)
