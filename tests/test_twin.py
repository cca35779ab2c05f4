"""Twin facade: plan/predict/simulate contracts, determinism, state tracking."""
from __future__ import annotations

import numpy as np
import pytest

import dtlab
from dtlab.energy import ENERGY_KEYS
from dtlab.plan import PREDICTION_KEYS

EX = "examples"


@pytest.fixture
def cluster():
    return dtlab.load_cluster(f"{EX}/cluster-hetero.yaml")


def test_public_api_plan(cluster):
    twin = dtlab.Twin(cluster)
    job = dtlab.load_job(f"{EX}/job-pipeline.yaml", cluster)
    plan = twin.plan(job, policy="cvar", samples=256, seed=0, predictor="fast")
    assert isinstance(plan, dtlab.Plan)
    assert set(plan.placement) == {s.id for s in job.stages}
    assert plan.shadow == {}
    assert set(plan.prediction) == set(PREDICTION_KEYS) | set(ENERGY_KEYS)
    assert plan.prediction["p50_ms"] <= plan.prediction["p95_ms"] <= plan.prediction["p99_ms"]
    assert set(plan.formats) == set(plan.placement) and all(plan.formats.values())
    assert plan.samples == 256 and plan.predictor == "fast" and plan.policy == "cvar"
    assert plan.elapsed_ms > 0 and plan.state_version == twin.state.version
    assert plan.to_dict()["placement"] == plan.placement


def test_formats_follow_the_node(cluster):
    """video-1's decode binary is amd64/arm64 only: on the riscv64 node it can only run as wasm."""
    twin = dtlab.Twin(cluster)
    job = dtlab.load_job(f"{EX}/job-pipeline.yaml", cluster)
    st = twin.state
    for n in cluster.nodes:
        if n.name != "edge-a-1":
            st.apply({"kind": "node-cordon", "node": n.name})
    plan = twin.plan(job)
    assert plan.placement["decode"] == "edge-a-1" and plan.formats["decode"] == "wasm"


def test_plan_is_deterministic_per_seed_and_predictors_differ(cluster):
    job = dtlab.load_job(f"{EX}/job-fanout.yaml", cluster)
    a = dtlab.Twin(cluster).plan(job, seed=3)
    b = dtlab.Twin(cluster).plan(job, seed=3)
    c = dtlab.Twin(cluster).plan(job, seed=4)
    assert a.prediction == b.prediction and a.prediction != c.prediction
    legacy = dtlab.Twin(cluster).plan(job, seed=3, predictor="legacy")
    assert legacy.placement == a.placement
    assert legacy.prediction["p50_ms"] == legacy.prediction["p99_ms"]   # deterministic heuristic


def test_des_predictor_path(cluster):
    pytest.importorskip("simpy")
    job = dtlab.load_job(f"{EX}/job-single.yaml", cluster)
    twin = dtlab.Twin(cluster)
    des = twin.plan(job, samples=400, predictor="des")
    fast = twin.plan(job, samples=4000, predictor="fast")
    assert des.predictor == "des" and des.placement == fast.placement
    assert des.prediction["p50_ms"] == pytest.approx(fast.prediction["p50_ms"], rel=0.05)


def test_twin_over_state_sees_updates(cluster):
    st = dtlab.ClusterState(cluster)
    twin = dtlab.Twin(st)
    job = dtlab.load_job(f"{EX}/job-single.yaml", cluster)
    first = twin.plan(job)
    st.apply({"kind": "node-down", "node": first.placement["resize"]})
    second = twin.plan(job)
    assert second.placement["resize"] != first.placement["resize"]
    assert second.state_version == first.state_version + 1


def test_predict_a_given_placement(cluster):
    twin = dtlab.Twin(cluster)
    job = dtlab.load_job(f"{EX}/job-single.yaml", cluster)
    slow = twin.predict(job, {"resize": "edge-a-1"}, samples=512)
    fast = twin.predict(job, {"resize": "cloud-0"}, samples=512)
    assert slow["mean_ms"] > 2 * fast["mean_ms"]   # speed 0.4 vs 1.0
    assert twin.predict(job, {"resize": "cloud-0"}, seed=1) == twin.predict(job, {"resize": "cloud-0"}, seed=1)


@pytest.mark.parametrize("kwargs,field", [({"samples": 0}, "samples"), ({"seed": -1}, "seed"),
                                          ({"predictor": "x"}, "predictor"), ({"policy": "x"}, "policy")])
def test_bad_arguments(cluster, kwargs, field):
    job = dtlab.load_job(f"{EX}/job-single.yaml", cluster)
    with pytest.raises(dtlab.SpecError) as exc:
        dtlab.Twin(cluster).plan(job, **kwargs)
    assert exc.value.field == field


def test_twin_rejects_non_cluster():
    with pytest.raises(dtlab.SpecError):
        dtlab.Twin({"nodes": []})


def small_workload(count=30, rate=2.0):
    return dtlab.model.workload_from_dict({
        "apiVersion": "dtlab/v1", "kind": "Workload", "arrivals": {"process": "poisson", "rate_per_s": rate},
        "jobs": {"count": count, "template": {
            "apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "w", "deadline_ms": 2000,
                                                                   "origin": {"zone": "edge-b"}},
            "spec": {"stages": [{"id": "a", "compute": {"cpu": 1, "duration_ms": 300}, "output_mb": 0.1},
                                {"id": "b", "after": ["a"], "compute": {"cpu": 1, "duration_ms": 200}}]}}}})


def test_simulate_one_row_per_job_and_deterministic(cluster):
    pytest.importorskip("simpy")
    twin = dtlab.Twin(cluster)
    df = twin.simulate(small_workload(), policy="greedy", seed=0)
    for col in ("job", "arrival_ms", "start_ms", "end_ms", "latency_ms", "wait_ms", "deadline_ms", "missed", "nodes"):
        assert col in df.columns
    assert len(df) == 30 and df["job"].is_unique
    assert (df["latency_ms"] > 0).all() and np.allclose(df["end_ms"] - df["arrival_ms"], df["latency_ms"])
    again = dtlab.Twin(cluster).simulate(small_workload(), policy="greedy", seed=0)
    assert df.equals(again)
    other = dtlab.Twin(cluster).simulate(small_workload(), policy="greedy", seed=1)
    assert not df["latency_ms"].equals(other["latency_ms"])


def test_simulate_policy_matters(cluster):
    """On the example workload the twin's greedy beats placement without a twin (random)."""
    pytest.importorskip("simpy")
    twin = dtlab.Twin(cluster)
    greedy = twin.simulate(small_workload(count=60), policy="greedy", seed=0)["latency_ms"].mean()
    rand = twin.simulate(small_workload(count=60), policy="random", seed=0)["latency_ms"].mean()
    assert greedy < rand


def test_simulate_unknown_policy_fails_first(cluster):
    with pytest.raises(dtlab.SpecError) as exc:
        dtlab.Twin(cluster).simulate(small_workload(), policy="nope")
    assert exc.value.field == "policy"


def test_plan_to_dict_equals_asdict_and_copies_nested_dicts(cluster):
    from dataclasses import asdict
    twin = dtlab.Twin(cluster)
    plan = twin.plan(dtlab.load_job(f"{EX}/job-pipeline.yaml", cluster), policy="cvar", samples=64, seed=1)
    out = plan.to_dict()
    assert out == asdict(plan)
    out["placement"]["x"] = "y"
    out["prediction"]["mean_ms"] = -1.0
    assert "x" not in plan.placement and plan.prediction["mean_ms"] != -1.0
