"""Predictors: fast vs des agreement, legacy determinism, the capacity model, input errors."""
from __future__ import annotations

import numpy as np
import pytest

import dtlab
from dtlab.model import cluster_from_dict, job_from_dict
from dtlab.predict import sample_latencies, score_plan
from dtlab.timing import TimingModel

TIMING = TimingModel()


def cluster(nodes, links=()):
    return cluster_from_dict({"apiVersion": "dtlab/v1", "kind": "Cluster", "nodes": list(nodes), "links": list(links)})


def two_zone():
    return cluster(
        [{"name": "edge-0", "arch": "arm64", "cores": 4, "speed": 0.6, "zone": "edge", "formats": ["native", "wasm"]},
         {"name": "edge-1", "arch": "amd64", "cores": 2, "speed": 0.8, "zone": "edge", "formats": ["native", "wasm"]},
         {"name": "cloud-0", "arch": "amd64", "cores": 8, "speed": 1.0, "zone": "cloud", "formats": ["native", "wasm"]},
         {"name": "cloud-1", "arch": "amd64", "cores": 8, "speed": 1.2, "zone": "cloud"}],
        [{"a": "edge", "b": "cloud", "latency_ms": 30, "bandwidth_mbps": 100, "loss": 0.02, "jitter_ms": 8}])


def snapshot_of(c, events=()):
    st = dtlab.ClusterState(c)
    if events:
        st.apply_many(events)
    return st.snapshot()


def pipeline_job():
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job",
                          "metadata": {"name": "pipe", "origin": {"zone": "edge"}},
                          "spec": {"input_mb": 0.05, "stages": [
                              {"id": "a", "compute": {"cpu": 1, "duration_ms": 300}, "output_mb": 0.1},
                              {"id": "b", "after": ["a"], "compute": {"cpu": 2, "duration_ms": 600}, "output_mb": 0.05},
                              {"id": "c", "after": ["b"], "compute": {"cpu": 1, "duration_ms": 100},
                               "constraints": {"arch": ["arm64"]}}]}})


def fanout_job():
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "fan"},
                          "spec": {"stages": [
                              {"id": "split", "compute": {"cpu": 1, "duration_ms": 200}, "output_mb": 2},
                              {"id": "m0", "after": ["split"], "compute": {"cpu": 1, "duration_ms": 800}, "output_mb": 1},
                              {"id": "m1", "after": ["split"], "compute": {"cpu": 1, "duration_ms": 700}, "output_mb": 1},
                              {"id": "m2", "after": ["split"], "compute": {"cpu": 1, "duration_ms": 900}, "output_mb": 1},
                              {"id": "reduce", "after": ["m0", "m1", "m2"], "compute": {"cpu": 2, "duration_ms": 300}}]}})


def single_job(cpu=2, duration=500):
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "one"},
                          "spec": {"stages": [{"id": "s", "compute": {"cpu": cpu, "duration_ms": duration}}]}})


def scenarios():
    """(name, snapshot, job, placement, shadow): the regimes fast and des must agree on."""
    c = two_zone()
    busy = snapshot_of(c, [{"kind": "telemetry", "node": "edge-0", "cpu_util": 0.7, "ts": 0.0}])
    failing = cluster(
        [{"name": "a", "cores": 4, "zone": "z1", "fail_prob": 0.2}, {"name": "b", "cores": 4, "speed": 0.7, "zone": "z2"}],
        [{"a": "z1", "b": "z2", "latency_ms": 20, "bandwidth_mbps": 200, "loss": 0.005}])
    return [
        # one stage, wasm on arm64, capacity cut to 1.2 cores by background load: slowdown 2/1.2
        ("single stage, background load", busy, single_job(), {"s": "edge-0"}, {}),
        # edge -> cloud -> edge over a lossy (2%: RTO tail, Mathis-capped bulk) and jittery link, input from origin
        ("pipeline across zones, lossy link", snapshot_of(c), pipeline_job(),
         {"a": "edge-1", "b": "cloud-0", "c": "edge-0"}, {}),
        # fan-out/fan-in: max over branches; two maps share a node within its capacity
        ("fan-out DAG", snapshot_of(c), fanout_job(),
         {"split": "cloud-0", "m0": "cloud-0", "m1": "cloud-0", "m2": "cloud-1", "reduce": "cloud-1"}, {}),
        # failures (20% per job): lost work, detection, restart on the shadow in the other zone
        ("node failure with shadow", snapshot_of(failing), single_job(cpu=1), {"s": "a"}, {"s": "b"}),
        # failures without shadow: detection + re-plan, rerun on an equivalent node
        ("node failure, re-plan", snapshot_of(failing), single_job(cpu=1), {"s": "a"}, {}),
    ]


def assert_fast_matches_des(name, snap, j, placement, shadow, rel=0.05, timing=TIMING):
    """p50 and p95 of the fast path within ``rel`` of the SimPy reference on the same scenario."""
    pytest.importorskip("simpy")
    fast = sample_latencies(snap, j, placement, shadow, predictor="fast", samples=20000,
                            rng=np.random.default_rng(1), timing=timing)
    des = sample_latencies(snap, j, placement, shadow, predictor="des", samples=3000,
                           rng=np.random.default_rng(2), timing=timing)
    f50, f95 = np.percentile(fast, [50, 95])
    d50, d95 = np.percentile(des, [50, 95])
    assert f50 == pytest.approx(d50, rel=rel), (name, f50, d50)
    assert f95 == pytest.approx(d95, rel=rel), (name, f95, d95)


@pytest.mark.parametrize("name,snap,j,placement,shadow", scenarios(), ids=[s[0] for s in scenarios()])
def test_fast_agrees_with_des(name, snap, j, placement, shadow):
    """fast vs des: p50 and p95 within 5%.

    Regimes covered: a single stage under background load (capacity model, format
    overhead, service noise); a 3-stage pipeline crossing zones over a lossy, jittery
    link (transfers incl. RTO tail and Mathis-capped bandwidth, origin input); a fan-out
    DAG (critical path = max over branches) with two concurrent stages sharing a node
    within its capacity; node failures with a shadow (failover after detection, inputs
    re-sent) and without (re-plan). Not covered, on purpose: a job's own stages
    oversubscribing a node, where fast is a documented static approximation
    (test_fast_is_pessimistic_when_own_stages_oversubscribe).
    """
    assert_fast_matches_des(name, snap, j, placement, shadow)


def test_fast_is_pessimistic_when_own_stages_oversubscribe():
    """Three 1-core maps on a 2-core node: static slowdown 1.5 for all vs PS freeing capacity early."""
    pytest.importorskip("simpy")
    c = two_zone()
    snap = snapshot_of(c)
    placement = {"split": "edge-1", "m0": "edge-1", "m1": "edge-1", "m2": "edge-1", "reduce": "cloud-0"}
    j = fanout_job()
    fast = sample_latencies(snap, j, placement, predictor="fast", samples=4000, rng=np.random.default_rng(1))
    des = sample_latencies(snap, j, placement, predictor="des", samples=1000, rng=np.random.default_rng(2))
    f50, d50 = np.median(fast), np.median(des)
    assert f50 >= d50 * 0.99
    assert f50 <= d50 * 1.25  # the approximation is bounded, not wild


def test_fast_mean_matches_capacity_model():
    """Mean service = duration * overhead / speed * max(1, cpu / (cores * (1 - util - running/cores)))."""
    c = cluster([{"name": "n", "arch": "arm64", "cores": 4, "speed": 0.5, "formats": ["qemu"]}])
    st = dtlab.ClusterState(c)
    st.apply_many([{"kind": "telemetry", "node": "n", "cpu_util": 0.25, "ts": 0.0},
                   {"kind": "job-submit", "job": "other", "stage_cpu": {"x": 2}},
                   {"kind": "stage-start", "job": "other", "stage": "x", "node": "n"}])
    j = single_job(cpu=2, duration=400)   # binary for any arch: qemu-amd64 (3.0) on arm64
    lat = sample_latencies(st.snapshot(), j, {"s": "n"}, samples=40000, rng=np.random.default_rng(0))
    capacity = 4 * (1 - (0.25 + 2 / 4))
    expected = 400 * 3.0 / 0.5 * max(1.0, 2 / capacity)
    assert lat.mean() == pytest.approx(expected, rel=0.01)


def test_legacy_is_deterministic_critical_path():
    c = two_zone()
    snap = snapshot_of(c)
    j = pipeline_job()
    placement = {"a": "edge-1", "b": "cloud-0", "c": "edge-0"}
    a = sample_latencies(snap, j, placement, predictor="legacy", samples=64, rng=np.random.default_rng(1))
    b = sample_latencies(snap, j, placement, predictor="legacy", samples=64, rng=np.random.default_rng(99))
    assert np.all(a == a[0]) and np.array_equal(a, b) and a.size == 64
    # origin edge -> edge-1 (intra-zone 0.2) + 300/0.8 + 30 + 600/1.0 + 30 + 100/0.6
    assert a[0] == pytest.approx(0.2 + 300 / 0.8 + 30 + 600 + 30 + 100 / 0.6)


def test_same_seed_same_numbers_and_seed_matters():
    snap = snapshot_of(two_zone())
    j, placement = fanout_job(), {"split": "cloud-0", "m0": "cloud-0", "m1": "edge-1", "m2": "cloud-1", "reduce": "cloud-1"}
    x = sample_latencies(snap, j, placement, samples=128, rng=np.random.default_rng(5))
    y = sample_latencies(snap, j, placement, samples=128, rng=np.random.default_rng(5))
    z = sample_latencies(snap, j, placement, samples=128, rng=np.random.default_rng(6))
    assert np.array_equal(x, y) and not np.array_equal(x, z)


def test_score_plan_summarizes_with_deadline():
    snap = snapshot_of(two_zone())
    j = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "d", "deadline_ms": 500},
                       "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 500}}]}})
    pred = score_plan(snap, j, {"s": "cloud-0"}, samples=2000, rng=np.random.default_rng(0))
    assert set(pred) == {"mean_ms", "p50_ms", "p95_ms", "p99_ms", "cvar95_ms", "deadline_miss_prob"}
    assert pred["p50_ms"] <= pred["p95_ms"] <= pred["cvar95_ms"]
    assert 0.35 < pred["deadline_miss_prob"] < 0.65  # deadline = mean service time


def test_cut_link_and_down_node_without_shadow_never_complete():
    c = two_zone()
    snap = snapshot_of(c, [{"kind": "link", "a": "edge", "b": "cloud", "up": False}])
    lat = sample_latencies(snap, pipeline_job(), {"a": "edge-1", "b": "cloud-0", "c": "edge-0"}, samples=8, rng=0)
    assert np.isinf(lat).all()
    down = snapshot_of(c, [{"kind": "node-down", "node": "cloud-0"}])
    assert np.isinf(sample_latencies(down, single_job(), {"s": "cloud-0"}, samples=8, rng=0)).all()
    ok = sample_latencies(down, single_job(), {"s": "cloud-0"}, {"s": "cloud-1"}, samples=8, rng=0)
    assert np.isfinite(ok).all()


@pytest.mark.parametrize("kwargs,field", [
    ({"predictor": "magic"}, "predictor"),
    ({"samples": 0}, "samples"),
    ({"placement": {}}, "placement.s"),
    ({"placement": {"s": "nope"}}, "placement.s"),
    ({"placement": {"s": "cloud-1"}, "job": "wasm"}, "placement.s"),
])
def test_bad_input_names_the_field(kwargs, field):
    snap = snapshot_of(two_zone())
    j = single_job()
    if kwargs.pop("job", None) == "wasm":  # cloud-1 offers native only and the stage needs wasm
        j = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "w"},
                           "spec": {"stages": [{"id": "s", "compute": {"duration_ms": 10},
                                                "constraints": {"formats": ["wasm"]}}]}})
    placement = kwargs.pop("placement", {"s": "cloud-0"})
    with pytest.raises(dtlab.SpecError) as exc:
        sample_latencies(snap, j, placement, rng=0, **kwargs)
    assert exc.value.field == field


def test_down_shadow_means_replan_as_in_des():
    """Primary fails (p=1) and the shadow is down: restart on the same node after detect + replan."""
    c = cluster([{"name": "a", "cores": 2, "zone": "z1", "fail_prob": 1.0}, {"name": "b", "cores": 2, "zone": "z1"}])
    snap = snapshot_of(c, [{"kind": "node-down", "node": "b"}])
    t = TimingModel(service_sigma=0.0)
    lat = sample_latencies(snap, single_job(cpu=1, duration=100), {"s": "a"}, {"s": "b"}, samples=2000, rng=0, timing=t)
    # lost work U*100 (mean 50), detect, replan, full rerun 100
    assert lat.mean() == pytest.approx(50 + t.detect_ms + t.replan_ms + 100, rel=0.01)
    if pytest.importorskip("simpy"):
        des = sample_latencies(snap, single_job(cpu=1, duration=100), {"s": "a"}, {"s": "b"}, predictor="des",
                               samples=500, rng=1, timing=t)
        assert des.mean() == pytest.approx(lat.mean(), rel=0.02)


def test_legacy_unreachable_is_inf():
    snap = snapshot_of(two_zone(), [{"kind": "link", "a": "edge", "b": "cloud", "up": False}])
    lat = sample_latencies(snap, pipeline_job(), {"a": "edge-1", "b": "cloud-0", "c": "edge-0"},
                           predictor="legacy", samples=4, rng=0)
    assert np.isinf(lat).all()


# ---------------------------------------------------------------- co-runners that leave

def corunner_snapshot(node, corunners, now=100.0, util=0.0, planned=True):
    """State with co-runners on ``node``: (cpu, remaining ms at ``now``) each, planned 3000 ms, started so
    that ``remaining`` is left after running at full speed (the state's estimate when not oversubscribed)."""
    st = dtlab.ClusterState(two_zone())
    events = [{"kind": "telemetry", "node": node, "cpu_util": util, "ts": now - 1}]
    for k, (cpu, rem) in enumerate(corunners):
        submit = {"kind": "job-submit", "job": f"co{k}", "stage_cpu": {"x": cpu}, "ts": now - 5}
        if planned:
            submit["stage_ms"] = {"x": 3000.0}
        events += [submit, {"kind": "stage-start", "job": f"co{k}", "stage": "x", "node": node,
                            "ts": now - (3000.0 - rem) / 1000.0}]
    st.apply_many(events)
    return st.snapshot().at(now)


def corunner_scenarios():
    """Regimes where the first-order overlap rule is exact or nearly so (fast within 5% of des)."""
    return [
        # 2-core edge-1 (S = 500/0.8 = 625 ms): two 1-core co-runners, one leaves after 200 ms of work, one stays
        # past the stage. PS: 3 on 2 cores until the first leaves, then full speed; fast: R_eff = 0.32 + 1.
        ("1-core co-runners, one leaves early", corunner_snapshot("edge-1", [(1, 200), (1, 5000)]),
         single_job(cpu=1, duration=500), {"s": "edge-1"}, {}),
        # 8-core cloud-0 at 10% load: three 2-core co-runners (6 cores, 'stays' would leave 1.2 cores and
        # predict 1.67x), two of them finish during the stage
        ("2-core co-runners, two leave", corunner_snapshot("cloud-0", [(2, 300), (2, 400), (2, 1200)], util=0.1),
         single_job(cpu=2, duration=1000), {"s": "cloud-0"}, {}),
        # a pipeline whose middle stage lands on a node with a co-runner that ends part-way through it
        ("pipeline, co-runner on the middle stage's node", corunner_snapshot("cloud-0", [(8, 300)]),
         pipeline_job(), {"a": "edge-1", "b": "cloud-0", "c": "edge-0"}, {}),
    ]


@pytest.mark.parametrize("name,snap,j,placement,shadow", corunner_scenarios(), ids=[s[0] for s in corunner_scenarios()])
def test_fast_agrees_with_des_when_corunners_leave(name, snap, j, placement, shadow):
    """fast vs des with co-runners of known remaining work: p50 and p95 within 5%.

    5% (not 10%) because these regimes are ones where the overlap rule is exact to first
    order: the node is either not oversubscribed, or only 1-core tasks share it so the
    fair share ``avail / (running + 1)`` is the water-filling share. The looser regime is
    tested separately (test_fast_is_optimistic_when_oversubscription_ends_mid_stage).
    """
    assert_fast_matches_des(name, snap, j, placement, shadow)


def test_fast_is_optimistic_when_oversubscription_ends_mid_stage():
    """Eight 1-core co-runners leaving one by one on 7.2 free cores: PS slowdown is convex in demand, so
    averaging the co-runners' cores over the stage (fast) under-predicts; bounded at 10% here."""
    pytest.importorskip("simpy")
    snap = corunner_snapshot("cloud-0", [(1, r) for r in (150, 300, 600, 700, 800, 900, 1900, 2500)], util=0.1)
    j = single_job(cpu=1, duration=1000)
    fast = sample_latencies(snap, j, {"s": "cloud-0"}, predictor="fast", samples=20000, rng=np.random.default_rng(1))
    des = sample_latencies(snap, j, {"s": "cloud-0"}, predictor="des", samples=3000, rng=np.random.default_rng(2))
    f50, d50 = np.median(fast), np.median(des)
    assert f50 <= d50 * 1.01
    assert f50 >= d50 * 0.90


@pytest.mark.parametrize("predictor", ["fast", "des"])
def test_node_whose_corunners_finish_soon_is_predicted_faster(predictor):
    """Same node, same co-runner cores (4 of 8): leaving after 100 ms vs outlasting the stage.

    Control: without the twin's stage_ms (co-runners it did not plan) both stay, so the two
    predictions are equal - the difference comes from the remaining work alone.
    """
    if predictor == "des":
        pytest.importorskip("simpy")
    j = single_job(cpu=6, duration=1000)
    n = 20000 if predictor == "fast" else 1000

    def p50(corunners, planned=True):
        snap = corunner_snapshot("cloud-0", corunners, planned=planned)
        return np.median(sample_latencies(snap, j, {"s": "cloud-0"}, predictor=predictor, samples=n,
                                          rng=np.random.default_rng(3), timing=TIMING))

    soon, late = p50([(2, 100), (2, 100)]), p50([(2, 2900), (2, 2900)])
    assert soon < 0.8 * late, (soon, late)
    # PS: 4 of its 6 cores for the co-runners' 100 ms (67 ms of work), then alone: 100 + 933 = 1033 (x median noise)
    assert soon == pytest.approx(1033 * 0.995, rel=0.05)
    # staying: 4 free cores for 6 -> 1.5x the service
    assert late == pytest.approx(1500, rel=0.05)
    assert p50([(2, 100), (2, 100)], planned=False) == pytest.approx(p50([(2, 2900), (2, 2900)], planned=False))


def test_greedy_avoids_the_node_whose_corunners_stay():
    """Two identical 8-core nodes carry the same co-runner cores; only on cloud-0 they leave soon."""
    c = cluster([{"name": "a", "cores": 8, "zone": "z"}, {"name": "b", "cores": 8, "zone": "z"}])
    st = dtlab.ClusterState(c)
    events = []
    for node, rem in (("a", 2900.0), ("b", 100.0)):
        events += [{"kind": "job-submit", "job": f"co-{node}", "stage_cpu": {"x": 6}, "stage_ms": {"x": 3000.0}},
                   {"kind": "stage-start", "job": f"co-{node}", "stage": "x", "node": node,
                    "ts": 10.0 - (3000.0 - rem) / 1000.0}]
    st.apply_many(events)
    twin = dtlab.Twin(st)
    plan = twin.plan(single_job(cpu=4, duration=1000), policy="greedy", snapshot=st.snapshot().at(10.0))
    assert plan.placement == {"s": "b"}
    # b's co-runner leaves after 100 ms (0.6 cores on average): the stage keeps its 4 cores
    assert plan.prediction["p50_ms"] == pytest.approx(1000, rel=0.03)
    # 'stays' would have predicted 4 / max(8 - 6, 8 / 7) = 2x on either node
    stays = dtlab.Twin(dtlab.ClusterState(c))
    stays.state.apply_many([{k: v for k, v in e.items() if k != "stage_ms"} for e in events])
    assert stays.plan(single_job(cpu=4, duration=1000), policy="greedy").prediction["p50_ms"] > 1900


def test_controller_tells_the_state_its_planned_stage_ms():
    """After submit the controller's job-submit carries stage_ms: the running stage is a co-runner with known work."""
    pytest.importorskip("simpy")
    from dtlab.controller import Controller
    from dtlab.substrates import make_substrate
    c = two_zone()
    twin = dtlab.Twin(c)
    j = single_job(cpu=1, duration=5000)
    with make_substrate("sim", c, seed=0, failure_rate_per_h=0.0, link_sigma=0.0) as sub:
        ctl = Controller(twin, sub, policy="greedy", samples=16)
        plan = ctl.step(j, 0.0)
        sub.advance(1500.0)
        ctl.sync()
        snap = twin.state.snapshot()
    node = snap.nodes[plan.placement["s"]]
    factor = TIMING.exec_format(j.stages[0], node.node)[1]
    [co] = node.corunners
    assert (co.job, co.stage, co.cpu, co.start_ts) == ("one", "s", 1.0, 0.0)
    assert co.service_ms == pytest.approx(5000 * factor / node.node.speed)
    # the state's clock is the newest event ts (<= 1.5 s); pinned to 1.5 s, 1.5 s of work is done
    assert snap.clock <= 1.5
    assert co.remaining_ms(snap.at(1.5).clock) == pytest.approx(co.service_ms - 1500)


def test_capacity_for_is_the_overlap_rule_per_node():
    """The planner's vectorised capacity equals background_share over stay + sum cpu*min(1, rem/S), node by node."""
    from dtlab.predict import node_table
    from dtlab.timing import background_share
    snap = corunner_snapshot("cloud-0", [(2, 300), (2, 1200), (1, 2900)], util=0.2)
    st = dtlab.ClusterState(two_zone())
    st.apply_many([{"kind": "job-submit", "job": "u", "stage_cpu": {"x": 1}},           # not planned: stays
                   {"kind": "stage-start", "job": "u", "stage": "x", "node": "cloud-0", "ts": 99.0}])
    nt = node_table(snap)
    k = nt.index["cloud-0"]
    for s_ms in (0.0, 250.0, 600.0, 2400.0, 10_000.0):
        svc = np.full(nt.n, s_ms)
        running = sum(c * min(1.0, r / s_ms) if s_ms > 0 else c for c, r in ((2, 300), (2, 1200), (1, 2900)))
        expected = 8 * (1 - background_share(8, 0.2, running))
        assert nt.capacity_for(svc)[k] == pytest.approx(expected)
        assert nt.capacity_at(k, s_ms) == pytest.approx(expected)
        others = [i for i in range(nt.n) if i != k]
        assert np.array_equal(nt.capacity_for(svc)[others], nt.capacity[others])
    # a co-runner the twin did not plan stays at any S
    nt2 = node_table(st.snapshot().at(100.0))
    assert nt2.capacity_at(k, 1.0) == pytest.approx(8 * (1 - background_share(8, 0.0, 1.0)))


def test_predictor_registry_offers_a_registered_predictor_everywhere():
    """A new predictor registers by name (like a policy) and the twin, the checks and the CLI see it."""
    from dtlab import predict
    assert predict.names()[:3] == ["fast", "legacy", "des"]
    c = two_zone()
    snap, j = snapshot_of(c), pipeline_job()
    placement = {"a": "edge-0", "b": "cloud-0", "c": "edge-0"}

    @predict.register("constant-test")
    def constant(snapshot, job, placement, shadow, samples, rng, timing):
        return np.full(samples, 123.0)

    try:
        assert "constant-test" in predict.names()
        lat = sample_latencies(snap, j, placement, predictor="constant-test", samples=5, rng=1)
        assert lat.tolist() == [123.0] * 5
        plan = dtlab.Twin(c).plan(j, "greedy", samples=8, predictor="constant-test")
        assert plan.predictor == "constant-test" and plan.prediction["p50_ms"] == 123.0
        # the plan is checked before a registered predictor runs
        with pytest.raises(dtlab.SpecError, match="placement.b"):
            sample_latencies(snap, j, {"a": "edge-0", "c": "edge-0"}, predictor="constant-test")
    finally:
        predict.registry._REGISTRY.pop("constant-test", None)
    with pytest.raises(dtlab.SpecError, match=r"must be one of \['fast', 'legacy', 'des'\]"):
        predict.check("constant-test")
    with pytest.raises(dtlab.SpecError, match="non-empty"):
        predict.register("")
