"""The SimPy engine: invariants on random DAGs/clusters (hypothesis), processor sharing, failures,
links, listeners; plus the des predictor, simulate() and the synthetic job stream."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import dtlab
from dtlab import SpecError
from dtlab.des.engine import Engine
from dtlab.model import resolve_link
from dtlab.des.sampling import sample_latencies_des
from dtlab.des.simulate import COLUMNS, simulate
from dtlab.model import cluster_from_dict, job_from_dict, workload_from_dict
from dtlab.timing import TimingModel, bulk_ms
from dtlab.workload.stream import job_stream

EPS = 1e-6
TIMING = TimingModel(service_sigma=0.2, detect_ms=300.0, replan_ms=20.0)


# ---------------------------------------------------------------- random scenarios
@st.composite
def scenarios(draw, min_nodes=1):
    zones = [f"z{i}" for i in range(draw(st.integers(1, 3)))]
    nodes = []
    for z in zones:
        for k in range(draw(st.integers(1, 2))):
            nodes.append({"name": f"{z}-n{k}", "cores": draw(st.integers(1, 4)),
                          "speed": draw(st.sampled_from([0.5, 1.0, 2.0])), "zone": z})
    assume(len(nodes) >= min_nodes)
    links = [{"a": a, "b": b, "latency_ms": draw(st.sampled_from([0.0, 0.5, 10.0, 50.0])),
              "bandwidth_mbps": draw(st.sampled_from([10, 100, 1000])),
              "loss": draw(st.sampled_from([0.0, 0.01])), "jitter_ms": draw(st.sampled_from([0.0, 2.0]))}
             for i, a in enumerate(zones) for b in zones[i + 1:]]
    cluster = cluster_from_dict({"nodes": nodes, "links": links})
    jobs = []
    for j in range(draw(st.integers(1, 5))):
        stages, placement = [], {}
        for i in range(draw(st.integers(1, 5))):
            node = draw(st.sampled_from(nodes))
            after = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
            stages.append({"id": f"s{i}", "after": [f"s{a}" for a in after],
                           "compute": {"cpu": draw(st.sampled_from([c for c in (0.5, 1, 2) if c <= node["cores"]])),
                                       "duration_ms": draw(st.floats(10, 500))},
                           "output_mb": draw(st.sampled_from([0, 1, 5]))})
            placement[f"s{i}"] = node["name"]
        origin = draw(st.sampled_from([None, *zones]))
        meta = {"name": f"j{j}", **({"origin": {"zone": origin}} if origin else {})}
        job = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": meta,
                             "spec": {"input_mb": draw(st.sampled_from([0, 2])), "stages": stages}})
        jobs.append((job, placement, draw(st.floats(0, 1000))))
    return cluster, jobs


def run(cluster, jobs, seed, shadow=None, failures=(), timing=TIMING):
    eng = Engine(cluster, timing, np.random.default_rng(seed))
    for job, placement, at in jobs:
        eng.submit(job, placement, (shadow or {}).get(job.name), at_ms=at)
    for node, at, duration in failures:
        eng.fail_node(node, at, duration)
    eng.run()
    return eng


def min_transfer_ms(cluster, src, dst, size_mb):
    link = cluster.link(src, dst)
    return 0.0 if link is None else link.latency_ms + bulk_ms(size_mb, link)


FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(scenarios(), st.integers(0, 2**16))
def test_invariants_precedence_capacity_conservation(scenario, seed):
    cluster, jobs = scenario
    eng = run(cluster, jobs, seed)
    stages = pd.DataFrame(eng.stage_records())
    records = pd.DataFrame(eng.job_records())
    by_name = {job.name: (job, placement, at) for job, placement, at in jobs}

    # conservation: every submitted job finished exactly once, none lost without failures
    counts = eng.counts()
    assert counts == {"submitted": len(jobs), "completed": len(jobs), "lost": 0, "in_flight": 0}
    assert sorted(records["job"]) == sorted(by_name)
    assert (stages["outcome"] == "ok").all()
    assert len(stages) == sum(len(job.stages) for job, _, _ in jobs)

    # precedence: a stage starts after every predecessor ended plus the minimum transfer time
    ok = {(r.job, r.stage): r for r in stages.itertuples()}
    for (jname, sid), r in ok.items():
        job, placement, at = by_name[jname]
        stage = next(s for s in job.stages if s.id == sid)
        assert r.node == placement[sid]
        assert r.ready_ms <= r.start_ms + EPS
        if not stage.after:
            assert r.ready_ms == pytest.approx(at)
            if job.origin_zone:
                link = resolve_link(cluster, {}, job.origin_zone, r.node)
                assert r.start_ms >= at + link.latency_ms + bulk_ms(job.input_mb, link) - EPS
        for p in stage.after:
            pr = ok[(jname, p)]
            out = next(s for s in job.stages if s.id == p).output_mb
            assert r.ready_ms >= pr.end_ms - EPS
            assert r.start_ms >= pr.end_ms + min_transfer_ms(cluster, pr.node, r.node, out) - EPS
        row = records[records.job == jname].iloc[0]
        assert row.end_ms >= r.end_ms - EPS

    # capacity: no stage runs faster than its cap, and in any window the node did no more
    # core-ms of work than its cores allow
    for node in cluster.nodes:
        mine = stages[stages.node == node.name]
        assert ((mine.end_ms - mine.start_ms) >= mine.service_ms - EPS).all()
        work = (mine.cpu * mine.service_ms).to_numpy()
        s, e = mine.start_ms.to_numpy(), mine.end_ms.to_numpy()
        for a in s:
            for b in e[e > a]:
                inside = (s >= a - EPS) & (e <= b + EPS)
                assert work[inside].sum() <= node.cores * (b - a) + 1e-6
    assert max(eng.capacity_overshoot().values()) <= 1e-9
    # job records are consistent
    assert (records.latency_ms == records.end_ms - records.arrival_ms).all()
    assert (records.wait_ms >= -EPS).all() and not records.lost.any()


@FAST
@given(scenarios(), st.integers(0, 2**16))
def test_determinism(scenario, seed):
    cluster, jobs = scenario
    a, b = run(cluster, jobs, seed), run(cluster, jobs, seed)
    assert pd.DataFrame(a.job_records()).equals(pd.DataFrame(b.job_records()))
    assert pd.DataFrame(a.stage_records()).equals(pd.DataFrame(b.stage_records()))


@FAST
@given(scenarios(min_nodes=2), st.integers(0, 2**16), st.data())
def test_failure_with_shadow_is_never_lost_and_failover_is_recorded(scenario, seed, data):
    cluster, jobs = scenario
    failed = data.draw(st.sampled_from([n.name for n in cluster.nodes]))
    fail_at = data.draw(st.floats(0, 1500))
    shadow = {}
    for job, placement, _ in jobs:
        sh = {}
        for s in job.stages:
            options = [n.name for n in cluster.nodes if n.name != failed and n.cores >= s.compute.cpu]
            assume(options)
            sh[s.id] = data.draw(st.sampled_from(options))
        shadow[job.name] = sh
    eng = run(cluster, jobs, seed, shadow=shadow, failures=[(failed, fail_at, None)])
    records = pd.DataFrame(eng.job_records()).set_index("job")
    stages = pd.DataFrame(eng.stage_records())
    assert eng.counts() == {"submitted": len(jobs), "completed": len(jobs), "lost": 0, "in_flight": 0}
    assert not records.lost.any()
    # attempts cut short by the failure were on the failed node, at the failure time
    bad = stages[stages.outcome != "ok"]
    assert (bad.node == failed).all() and (bad.end_ms == fail_at).all()
    assert set(bad.outcome) <= {"failed", "lost"}
    ok = stages[stages.outcome == "ok"]
    assert not ok.duplicated(["job", "stage"]).any() and len(ok) == sum(len(j.stages) for j, _, _ in jobs)
    assert (ok[ok.node == failed].end_ms <= fail_at + EPS).all()
    for job, placement, _ in jobs:
        mine = ok[ok.job == job.name]
        moved = mine[mine.node != mine.stage.map(placement)]
        # a stage moved only off the failed node, to its shadow, once the failure was detected
        assert (moved.stage.map(placement) == failed).all()
        assert (moved.node == moved.stage.map(shadow[job.name])).all()
        assert (moved.ready_ms >= fail_at + TIMING.detect_ms - EPS).all()
        assert records.loc[job.name, "failed_over"] == len(moved)
        for r in bad[bad.job == job.name].itertuples():
            assert r.stage in set(moved.stage)
            assert mine[mine.stage == r.stage].attempt.iloc[0] == r.attempt + 1


# ---------------------------------------------------------------- processor sharing, by hand
def one_node(cores=1, **node):
    return cluster_from_dict({"nodes": [{"name": "n", "cores": cores, **node}]})


def stage_job(name, cpu=1.0, duration=100.0, **meta):
    return job_from_dict({"metadata": {"name": name, **meta},
                          "spec": {"stages": [{"id": "s", "compute": {"cpu": cpu, "duration_ms": duration}}]}})


EXACT = TimingModel(service_sigma=0.0, detect_ms=300.0, replan_ms=20.0)


def ends(eng):
    return {r["job"]: r["end_ms"] for r in eng.job_records()}


def test_processor_sharing_splits_a_core_and_caps_each_stage():
    eng = Engine(one_node(1), EXACT, np.random.default_rng(0))
    eng.submit(stage_job("a"), {"s": "n"})
    eng.submit(stage_job("b"), {"s": "n"})
    eng.submit(stage_job("c"), {"s": "n"}, at_ms=150)   # joins when a and b are 3/4 done
    eng.run()
    # a, b: 150 ms at half rate (75 each), then 25 left at third rate -> +75 ms
    assert ends(eng) == pytest.approx({"a": 225.0, "b": 225.0, "c": 300.0})

    eng = Engine(one_node(4), EXACT, np.random.default_rng(0), background={"n": 0.75})
    eng.submit(stage_job("big", cpu=2), {"s": "n"})     # capacity 1 core for a 2-core stage
    eng.run()
    assert ends(eng)["big"] == pytest.approx(200.0)

    # water-filling on 3 cores: the 0.5-core stage gets its cap, the two 2-core stages 1.25 each
    eng = Engine(one_node(3), EXACT, np.random.default_rng(0))
    eng.submit(stage_job("small", cpu=0.5, duration=100), {"s": "n"})
    eng.submit(stage_job("x", cpu=2, duration=100), {"s": "n"})
    eng.submit(stage_job("y", cpu=2, duration=100), {"s": "n"})
    eng.run()
    e = ends(eng)
    assert e["small"] == pytest.approx(100.0)
    # x, y: 100 ms at 1.25/2 of full rate (62.5 done), then 1.5 cores each -> 37.5 / 0.75
    assert e["x"] == pytest.approx(150.0) and e["y"] == pytest.approx(150.0)


def test_background_change_slows_running_work():
    eng = Engine(one_node(2), EXACT, np.random.default_rng(0))
    eng.submit(stage_job("a", cpu=2, duration=100), {"s": "n"})
    eng.set_background("n", 0.5, at_ms=50)   # half done, then half speed
    eng.run()
    assert ends(eng)["a"] == pytest.approx(150.0)


# ---------------------------------------------------------------- failures and links
TWO = cluster_from_dict({"nodes": [{"name": "a", "cores": 1, "zone": "z1"}, {"name": "b", "cores": 1, "zone": "z2"}],
                         "links": [{"a": "z1", "b": "z2", "latency_ms": 10, "bandwidth_mbps": 100}]})


def test_failure_without_shadow_waits_for_recovery_or_is_lost():
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.submit(stage_job("j"), {"s": "a"})
    eng.fail_node("a", at_ms=40, duration_ms=1000)
    eng.run()
    rec = eng.job_records()[0]
    assert not rec["lost"] and rec["end_ms"] == pytest.approx(1040 + 100)
    assert rec["extra_work_ms"] == pytest.approx(40) and rec["failed_over"] == 0

    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.submit(stage_job("j"), {"s": "a"})
    eng.fail_node("a", at_ms=40)               # never comes back, nowhere else to go
    eng.run()
    rec = eng.job_records()[0]
    assert rec["lost"] and rec["missed"] and math.isnan(rec["latency_ms"])
    assert eng.counts() == {"submitted": 1, "completed": 0, "lost": 1, "in_flight": 0}


def test_replan_callback_moves_the_stage_after_detect_and_replan():
    calls = []
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.replan = lambda job, sid, failed: calls.append((job.name, sid, failed)) or "b"
    eng.submit(stage_job("j"), {"s": "a"})
    eng.fail_node("a", at_ms=40)
    eng.run()
    assert calls == [("j", "s", "a")]
    rec = eng.job_records()[0]
    assert rec["end_ms"] == pytest.approx(40 + 300 + 20 + 100) and rec["failed_over"] == 1


def test_cut_link_blocks_transfers_until_restored():
    job = job_from_dict({"metadata": {"name": "p"}, "spec": {"stages": [
        {"id": "x", "compute": {"duration_ms": 100}, "output_mb": 1},
        {"id": "y", "after": ["x"], "compute": {"duration_ms": 100}}]}})
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.submit(job, {"x": "a", "y": "b"})
    eng.set_link("z1", "z2", None, at_ms=50)
    eng.reset_link("z1", "z2", at_ms=500)
    eng.run()
    y = next(r for r in eng.stage_records() if r["stage"] == "y")
    assert y["ready_ms"] == pytest.approx(100)
    assert y["start_ms"] == pytest.approx(500 + 10 + bulk_ms(1, TWO.link("a", "b")))

    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.submit(job, {"x": "a", "y": "b"})
    eng.set_link("z1", "z2", None, at_ms=50)   # never restored: the job can never finish
    eng.run()
    assert eng.job_records()[0]["lost"]


def test_listeners_mirror_a_cluster_state():
    state = dtlab.ClusterState(TWO)
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.listeners.append(state.apply)
    eng.submit(stage_job("j", cpu=1, duration=100), {"s": "a"})
    eng.submit(stage_job("k", cpu=0.5, duration=100), {"s": "b"}, at_ms=10)
    eng.run(until_ms=50)
    snap = state.snapshot()
    assert {n: s.running_cpu for n, s in snap.nodes.items()} == eng.node_running_cpu() == {"a": 1.0, "b": 0.5}
    assert snap.stages[("j", "s")].phase == "running" and snap.stages[("j", "s")].start_ts == 0.0
    eng.fail_node("b", at_ms=60, duration_ms=100)
    eng.run()
    snap = state.snapshot()
    assert all(s.running_cpu == 0 for s in snap.nodes.values()) and snap.nodes["b"].up
    assert snap.stages[("j", "s")].phase == "succeeded" and snap.stages[("j", "s")].end_ts == pytest.approx(0.1)
    assert snap.stages[("k", "s")].phase == "succeeded"


def test_submit_rejects_bad_placements():
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    with pytest.raises(SpecError, match="placement.s"):
        eng.submit(stage_job("j"), {"s": "nope"})
    with pytest.raises(SpecError, match="placement.s"):
        eng.submit(stage_job("j", cpu=2), {"s": "a"})     # 2 cores on a 1-core node
    with pytest.raises(SpecError, match="placement.s"):
        eng.submit(stage_job("j"), {})
    eng.submit(stage_job("j"), {"s": "a"})
    with pytest.raises(SpecError, match="duplicate"):
        eng.submit(stage_job("j"), {"s": "a"})


# ---------------------------------------------------------------- des predictor
def test_des_predictor_matches_hand_computed_latencies():
    cluster = cluster_from_dict({"nodes": [
        {"name": "a", "cores": 2, "speed": 2.0, "zone": "z1", "fail_prob": 1.0},
        {"name": "b", "cores": 2, "speed": 1.0, "zone": "z1"}]})
    state = dtlab.ClusterState(cluster)
    job = stage_job("j", cpu=2, duration=400)
    rng = np.random.default_rng(1)
    # no failure on b, with 50% background: 2 cores needed, 1 available -> twice the service time
    state.apply({"kind": "telemetry", "node": "b", "cpu_util": 0.5})
    lat = sample_latencies_des(state.snapshot(), job, {"s": "b"}, samples=20, rng=rng, timing=EXACT)
    assert lat == pytest.approx(np.full(20, 800.0))
    # a always fails at U * 200 ms; the shadow b restarts after detect: U*200 + 300 + 800
    lat = sample_latencies_des(state.snapshot(), job, {"s": "a"}, {"s": "b"}, samples=4000, rng=rng, timing=EXACT)
    assert lat.min() >= 1100 - EPS and lat.max() <= 1300 + EPS
    assert lat.mean() == pytest.approx(1200, rel=0.01)
    # without a shadow: same node again after detect + replan: U*200 + 320 + 200
    lat = sample_latencies_des(state.snapshot(), job, {"s": "a"}, samples=4000, rng=rng, timing=EXACT)
    assert lat.mean() == pytest.approx(620, rel=0.01)
    # a node down in the snapshot with no shadow: never completes
    state.apply({"kind": "node-down", "node": "b"})
    lat = sample_latencies_des(state.snapshot(), job, {"s": "b"}, samples=3, rng=rng, timing=EXACT)
    assert np.isinf(lat).all()


def test_des_predictor_is_seeded():
    cluster = dtlab.load_cluster("examples/cluster-hetero.yaml")
    job = dtlab.load_job("examples/job-fanout.yaml", cluster)
    placement = {"split": "edge-a-0", "map-0": "edge-a-0", "map-1": "edge-a-0", "map-2": "edge-a-1",
                 "reduce": "edge-a-0"}
    snap = dtlab.ClusterState(cluster).snapshot()
    a = sample_latencies_des(snap, job, placement, samples=50, rng=np.random.default_rng(3), timing=TimingModel())
    b = sample_latencies_des(snap, job, placement, samples=50, rng=np.random.default_rng(3), timing=TimingModel())
    assert (a == b).all() and np.isfinite(a).all() and a.std() > 0


# ---------------------------------------------------------------- simulate and streams
def workload(process="poisson", rate=2.0, count=50, dist="exponential", template=None, **scale):
    return workload_from_dict({
        "apiVersion": "dtlab/v1", "kind": "Workload", "arrivals": {"process": process, "rate_per_s": rate},
        "jobs": {"count": count, "duration_scale": {"dist": dist, **scale},
                 "template": template or {"metadata": {"name": "t"},
                                          "spec": {"stages": [{"id": "s", "compute": {"duration_ms": 100}}]}}}})


def test_simulate_calls_the_planner_only_when_there_is_a_choice():
    calls = []

    def plan(job, snap, rng):
        calls.append((job.name, snap.nodes["a"].running_cpu + snap.nodes["b"].running_cpu))
        return ({"s": "a" if len(calls) % 2 else "b"}, {})

    df = simulate(TWO, workload(count=40), plan, seed=5, timing=EXACT)
    assert list(df.columns[:len(COLUMNS)]) == list(COLUMNS) and len(df) == 40
    assert [c[0] for c in calls] == [f"t-{i}" for i in range(40)]
    assert set(df.nodes) == {"a", "b"} and (df.arrival_ms.diff().dropna() >= 0).all()
    again = simulate(TWO, workload(count=40), plan, seed=5, timing=EXACT)
    assert df.equals(again)
    one = simulate(one_node(2), workload(count=40), None, seed=5, timing=EXACT)
    assert set(one.nodes) == {"n"}
    with pytest.raises(SpecError, match="plan_fn"):
        simulate(TWO, workload(count=5), None, seed=5)


def test_job_stream_processes_and_scales():
    rng = np.random.default_rng(0)
    items = list(job_stream(workload(rate=4.0, count=20000, dist="lognormal", sigma=0.5), rng))
    times = np.array([t for t, _ in items])
    scales = np.array([job.stages[0].compute.duration_ms / 100 for _, job in items])
    assert [j.name for _, j in items[:3]] == ["t-0", "t-1", "t-2"]
    assert np.diff(times).mean() == pytest.approx(250, rel=0.03) and (np.diff(times) >= 0).all()
    assert scales.mean() == pytest.approx(1.0, rel=0.02) and np.log(scales).std() == pytest.approx(0.5, rel=0.03)
    const = [t for t, _ in job_stream(workload("constant", rate=2.0, count=5, dist="constant"), rng)]
    assert const == pytest.approx([500, 1000, 1500, 2000, 2500])
    a = [t for t, _ in job_stream(workload(count=10), np.random.default_rng(9))]
    assert a == [t for t, _ in job_stream(workload(count=10), np.random.default_rng(9))]
    bogus = dataclasses.replace(workload(), arrivals=dataclasses.replace(workload().arrivals, process="bogus"))
    with pytest.raises(SpecError, match="arrivals.process"):
        next(job_stream(bogus, rng))
