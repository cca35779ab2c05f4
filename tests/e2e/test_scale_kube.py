"""e2e (issue 9): the twin watches a local plane of 500 KWOK nodes while 2,000 pinned pods run.

V5's kube path end to end (:func:`dtlab.experiments.v5.kube_scale`): the plane comes up
with 500 KWOK nodes, the twin lists + watches it (dtlab.kube.observer) and plans every
job, a spawned load generator creates the 2,000 planned pods. Checked: every pod ends
Running or Succeeded (none Failed or Pending), the twin's state matches the API server's
(node count, pod phases) once the pods are done, the observe-lag probes were applied
(p99 within the design's 1 s freshness budget) and the plane leaves no process behind.
Bounded to a few minutes; needs the control-plane binaries (`bash cluster/localplane/build.sh`).
"""
from __future__ import annotations

import importlib.util
import os

import pytest

from tests.heavy import require  # tests/ is importable: pytest pythonpath = ["."]

from dtlab.experiments import v5
from dtlab.experiments.params import load_cluster_param, validate
from dtlab.kube import localplane as lp
from dtlab.model import load_job

pytestmark = pytest.mark.timeout(420)
NODES, PODS = 500, 2000


def test_500_nodes_2000_pods_twin_matches_api():
    ok, why = lp.binaries_available()
    require(ok, why)
    require(importlib.util.find_spec("kubernetes") is not None, "the `kubernetes` client is not installed")
    p = validate({"substrate": "kube", "pods": PODS, "pod_ms": 2000.0, "policies": ["greedy"],
                  "samples": 64, "kube_timeout_s": 300.0}, v5.DEFAULTS, "V5")
    plane = f"e2e-scale-{os.getpid()}"
    try:
        r = v5.kube_scale(load_cluster_param(p["cluster"]), load_job(v5.resolve_path(p["job"], "job")),
                          NODES, 0, p, plane=plane)
    finally:
        lp.down(plane, keep_workdir=False)          # no-op when kube_scale already brought it down
    assert r["pod_errors"] == 0 and r["pods_created"] == PODS
    assert r["api_nodes"] == r["twin_nodes"] == NODES
    assert r["api_pods"] == PODS
    assert r["api_failed"] == 0 and r["api_pending"] == 0
    assert r["api_succeeded"] + r["api_running"] == PODS
    assert (r["twin_succeeded"], r["twin_running"], r["twin_failed"]) == \
        (r["api_succeeded"], r["api_running"], r["api_failed"])
    assert r["state_matches"]
    assert r["sink_errors"] == 0, "every observed batch must apply to the twin's state"
    assert r["probes"] >= 5 and r["observe_lag_p99_ms"] < 1000.0, (r["probes"], r["observe_lag_p99_ms"])
    assert len(r["plan_ms"]) >= PODS // 3
    assert not lp.status(plane)["running"]
