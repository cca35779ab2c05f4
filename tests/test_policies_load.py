"""Strong baselines (k8s-default, load-risk-balancing, heft) and the load-aware DT policies."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import dtlab
from dtlab.policies.heft import mean_transfer_ms, upward_ranks
from dtlab.policies.load import ArrivalEstimator, LoadForecast, erlang_c, toll_ms
from dtlab.predict import node_table, stage_table
from dtlab.timing import TimingModel
from tests.test_policies import cluster, hetero, jobd

PIPE = "examples/job-pipeline.yaml"
BASELINES = ["k8s-default", "load-risk-balancing", "heft"]


def pipeline(c):
    return dtlab.load_job(PIPE, c)


@pytest.mark.parametrize("policy", BASELINES)
def test_new_baselines_are_registered_and_deterministic(policy):
    c = hetero()
    assert policy in dtlab.policies.names()
    a = dtlab.Twin(c).plan(pipeline(c), policy=policy, seed=3)
    b = dtlab.Twin(c).plan(pipeline(c), policy=policy, seed=3)
    assert a.placement == b.placement and a.shadow == {}


def test_k8s_default_keeps_data_local_and_spills_by_requests():
    """Locality preferences put the pipeline in its input's zone; when its requests no longer fit
    there, the NodeResourcesFit filter sends the stage elsewhere (least-allocated never stays local)."""
    c = hetero()
    plan = dtlab.Twin(c).plan(pipeline(c), policy="k8s-default")
    assert {c.node(n).zone for n in plan.placement.values()} == {"edge-a"}
    la = dtlab.Twin(c).plan(pipeline(c), policy="least-allocated")
    assert {c.node(n).zone for n in la.placement.values()} != {"edge-a"}
    st = dtlab.ClusterState(c)
    for node in ("edge-a-0", "edge-a-1"):      # both edge-a nodes' cores requested by running stages
        for k in range(4):
            st.apply({"kind": "job-submit", "job": f"busy-{node}-{k}", "stage_cpu": {"s": 1}})
            st.apply({"kind": "stage-start", "job": f"busy-{node}-{k}", "stage": "s", "node": node})
    full = dtlab.Twin(st).plan(pipeline(c), policy="k8s-default")
    assert not any(c.node(n).zone == "edge-a" for n in full.placement.values())


def test_k8s_default_scores_follow_least_allocated_without_locality():
    c = cluster([{"name": "small", "cores": 2, "mem_gb": 4}, {"name": "big", "cores": 8, "mem_gb": 16}])
    assert dtlab.Twin(c).plan(jobd([{"id": "s", "compute": {"cpu": 1, "duration_ms": 100}}]),
                              policy="k8s-default").placement == {"s": "big"}


def test_load_risk_balancing_avoids_the_node_with_a_high_and_variable_load():
    c = cluster([{"name": "a", "cores": 4}, {"name": "b", "cores": 4}])
    st = dtlab.ClusterState(c)
    twin = dtlab.Twin(st)
    job = jobd([{"id": "s", "compute": {"cpu": 1, "duration_ms": 100}}])
    for k, u in enumerate([0.1, 0.9, 0.2, 0.8, 0.1, 0.9]):     # a: high mean and variance, b: steady 0.3
        st.apply_many([{"kind": "telemetry", "node": "a", "cpu_util": u, "ts": float(k)},
                       {"kind": "telemetry", "node": "b", "cpu_util": 0.3, "ts": float(k)}])
        plan = twin.plan(job, policy="load-risk-balancing")
    assert plan.placement == {"s": "b"}
    pol = twin.policy("load-risk-balancing")
    assert len(pol.history) == 6


def test_heft_ranks_and_earliest_finish_on_heterogeneous_nodes():
    c = cluster([{"name": "slow", "cores": 4, "speed": 0.5}, {"name": "fast", "cores": 4, "speed": 2.0}])
    job = jobd([{"id": "a", "compute": {"cpu": 1, "duration_ms": 400}, "output_mb": 1},
                {"id": "b", "after": ["a"], "compute": {"cpu": 1, "duration_ms": 400}}])
    snap = dtlab.ClusterState(c).snapshot()
    nt, st = node_table(snap), stage_table(snap, job, TimingModel())
    ranks = upward_ranks(nt, st)
    assert ranks[0] > ranks[1] > 0                      # a predecessor ranks above its successor
    assert mean_transfer_ms(nt, 0.0) >= 0
    assert dtlab.Twin(c).plan(job, policy="heft").placement == {"a": "fast", "b": "fast"}
    # all of fast's cores requested by a stage the twin did not plan (it never leaves): heft waits nowhere,
    # it picks the node whose cores are free
    state = dtlab.ClusterState(c)
    state.apply({"kind": "job-submit", "job": "x", "stage_cpu": {"s": 4}})
    state.apply({"kind": "stage-start", "job": "x", "stage": "s", "node": "fast"})
    assert dtlab.Twin(state).plan(job, policy="heft").placement == {"a": "slow", "b": "slow"}


# ---------------------------------------------------------------- the load model

def test_arrival_estimator_recovers_a_poisson_rate_and_offered_load():
    rng = np.random.default_rng(0)
    est = ArrivalEstimator(window=400)
    t = 0.0
    for _ in range(400):
        t += rng.exponential(1 / 2.0)
        est.observe(t, {"n": 3000.0})            # 3 core-s per job on node n
    fc = est.forecast(t + rng.exponential(0.5))
    assert fc.rate_per_s == pytest.approx(2.0, rel=0.12)
    assert fc.offered_cores["n"] == pytest.approx(fc.rate_per_s * 3.0, rel=1e-9)   # Little: lambda x work
    assert ArrivalEstimator().forecast(1.0) is None                     # no evidence: no forecast
    stale = ArrivalEstimator(horizon_s=10)
    for k in range(5):
        stale.observe(float(k), {"n": 1.0})
    assert stale.forecast(100.0) is None                                # old evidence expires
    with pytest.raises(ValueError):
        ArrivalEstimator(window=1)


def test_toll_is_the_mm1_externality_and_smaller_with_more_servers():
    rho = np.array([0.0, 0.5, 0.8])
    assert toll_ms(np.ones(3), rho, np.ones(3)) == pytest.approx(rho / (1 - rho) ** 2, rel=1e-5)
    one = toll_ms(np.array([1.0]), np.array([2.0]), np.array([4.0]), cpu=4.0)
    four = toll_ms(np.array([1.0]), np.array([2.0]), np.array([4.0]), cpu=1.0)
    assert four[0] < one[0]
    assert erlang_c(np.array([1]), np.array([0.5]))[0] == pytest.approx(0.5)
    assert np.isfinite(toll_ms(np.ones(1), np.array([10.0]), np.ones(1)))[0]    # saturated: large, finite


def test_load_aware_greedy_spills_from_a_node_the_arrival_stream_saturates():
    """Same snapshot, same job: without a forecast greedy takes the fastest node; with the twin having
    seen 2 jobs/s put 3.8 cores of work on it, the toll sends the job to the next node."""
    c = cluster([{"name": "near", "cores": 4, "speed": 1.0}, {"name": "far", "cores": 4, "speed": 0.8}])
    job = jobd([{"id": "s", "compute": {"cpu": 1, "duration_ms": 1000}}])
    myopic = dtlab.Twin(c, load_aware=False)
    twin = dtlab.Twin(c)
    for k in range(10):
        for t in (myopic, twin):
            t.observe_submission(replace(job, name=f"j{k}"), {"s": "near"}, k * 0.5)
    snap = twin.state.snapshot().at(5.0)
    assert myopic.plan(job, policy="greedy", snapshot=snap).placement == {"s": "near"}
    fc = twin.load_forecast(snap)
    assert fc is not None and fc.offered_cores["near"] == pytest.approx(2.0, rel=0.01)
    for policy in ("greedy", "resilient", "cvar"):
        assert twin.plan(job, policy=policy, snapshot=snap).placement == {"s": "far"}, policy
    # a light stream leaves the choice alone
    light = dtlab.Twin(c)
    for k in range(10):
        light.observe_submission(replace(job, name=f"j{k}"), {"s": "near"}, k * 10.0)
    assert light.plan(job, policy="greedy", snapshot=light.state.snapshot().at(100.0)).placement == {"s": "near"}


def test_load_forecast_in_the_plan_context_is_used_by_builders():
    c = cluster([{"name": "a", "cores": 2}])
    job = jobd([{"id": "s", "compute": {"cpu": 1, "duration_ms": 100}}])
    snap = dtlab.ClusterState(c).snapshot()
    ctx = dtlab.policies.PlanContext(snapshot=snap, job=job, timing=TimingModel(), rng=np.random.default_rng(0),
                                     load=LoadForecast(1.0, {"a": 1.0}, 5))
    from dtlab.policies.base import Builder
    assert Builder(ctx).toll(0)[0] > 0
    assert Builder(replace(ctx, load=None)).toll(0)[0] == 0


def test_load_aware_twin_misses_fewer_deadlines_past_saturation():
    """The example workload at 2 jobs/s saturates edge-a: the twin's own simulation shows the toll's effect."""
    c = hetero()
    wl = replace(dtlab.load_workload("examples/workload.yaml"), count=60)
    aware = dtlab.Twin(c).simulate(wl, "greedy", seed=1)
    myopic = dtlab.Twin(c, load_aware=False).simulate(wl, "greedy", seed=1)
    assert aware["missed"].mean() < myopic["missed"].mean() - 0.1
