"""Policies: sensible choices, only schedulable/feasible/reachable nodes, determinism, the registry."""
from __future__ import annotations

import numpy as np
import pytest

import dtlab
from dtlab import policies
from dtlab.model import cluster_from_dict, job_from_dict
from dtlab.policies import PlanContext
from dtlab.policies.rl_stub import RLStub
from dtlab.timing import TimingModel

ALL = ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"]
EXAMPLES = "examples"


def cluster(nodes, links=()):
    return cluster_from_dict({"apiVersion": "dtlab/v1", "kind": "Cluster", "nodes": list(nodes), "links": list(links)})


def jobd(stages, name="j", **meta):
    spec = {"stages": stages}
    if "input_mb" in meta:
        spec["input_mb"] = meta.pop("input_mb")
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name, **meta}, "spec": spec})


ONE = [{"id": "s", "compute": {"cpu": 1, "duration_ms": 400}}]


def hetero():
    return dtlab.load_cluster(f"{EXAMPLES}/cluster-hetero.yaml")


def test_greedy_avoids_slow_and_busy_nodes():
    c = cluster([{"name": "slow", "cores": 4, "speed": 0.2}, {"name": "busy", "cores": 4, "speed": 1.5},
                 {"name": "ok", "cores": 4, "speed": 1.0}])
    st = dtlab.ClusterState(c)
    twin = dtlab.Twin(st)
    assert twin.plan(jobd(ONE), policy="greedy").placement == {"s": "busy"}
    st.apply({"kind": "telemetry", "node": "busy", "cpu_util": 0.9, "ts": 0.0})  # 0.4 cores left: 2.5x slower
    assert twin.plan(jobd(ONE), policy="greedy").placement == {"s": "ok"}


def test_greedy_keeps_a_pipeline_near_its_data():
    """The example pipeline starts in edge-a; its 5 MB input over the lossy edge-a link costs seconds: stay in edge-a."""
    c = hetero()
    plan = dtlab.Twin(c).plan(dtlab.load_job(f"{EXAMPLES}/job-pipeline.yaml", c), policy="greedy")
    zones = {c.node(n).zone for n in plan.placement.values()}
    assert zones == {"edge-a"}
    least = dtlab.Twin(c).plan(dtlab.load_job(f"{EXAMPLES}/job-pipeline.yaml", c), policy="least-allocated")
    assert plan.prediction["mean_ms"] < least.prediction["mean_ms"] / 2


def test_resilient_shadows_every_stage_in_another_zone():
    c = hetero()
    twin = dtlab.Twin(c)
    for name in ("job-single", "job-pipeline", "job-fanout", "job-legacy"):
        job = dtlab.load_job(f"{EXAMPLES}/{name}.yaml", c)
        plan = twin.plan(job, policy="resilient")
        assert set(plan.shadow) == set(plan.placement) == {s.id for s in job.stages}
        for sid, node in plan.placement.items():
            assert c.node(plan.shadow[sid]).zone != c.node(node).zone, (name, sid)


def test_resilient_prefers_the_reliable_node_greedy_ignores_risk():
    c = cluster([{"name": "flaky", "cores": 4, "zone": "a", "fail_prob": 0.5},
                 {"name": "solid", "cores": 4, "zone": "a"},
                 {"name": "far", "cores": 4, "zone": "b"}],
                [{"a": "a", "b": "b", "latency_ms": 5, "bandwidth_mbps": 1000}])
    twin = dtlab.Twin(c)
    assert twin.plan(jobd(ONE), policy="greedy").placement == {"s": "flaky"}   # tie on the mean: first node
    plan = twin.plan(jobd(ONE), policy="resilient")
    assert plan.placement == {"s": "solid"} and plan.shadow == {"s": "far"}


def jitter_cluster():
    """Same node speed behind two links of about the same mean: one jittery, one steady."""
    return cluster([{"name": "o", "cores": 1, "zone": "origin"},
                    {"name": "jittery", "cores": 4, "zone": "z1"},
                    {"name": "steady", "cores": 4, "zone": "z2"}],
                   [{"a": "origin", "b": "z1", "latency_ms": 30, "jitter_ms": 40, "bandwidth_mbps": 1000},
                    {"a": "origin", "b": "z2", "latency_ms": 63, "bandwidth_mbps": 1000}])


def test_cvar_avoids_the_jittery_link_when_the_mean_is_similar():
    st = dtlab.ClusterState(jitter_cluster())
    st.apply({"kind": "node-cordon", "node": "o"})
    twin = dtlab.Twin(st)
    job = jobd(ONE, origin={"zone": "origin"})
    greedy = twin.plan(job, policy="greedy", samples=512)
    cvar = twin.plan(job, policy="cvar", samples=512)
    assert greedy.placement == {"s": "jittery"}   # mean 30 + 40*0.80 = 61.9 ms < 63 ms
    assert cvar.placement == {"s": "steady"}
    assert cvar.prediction["cvar95_ms"] < greedy.prediction["cvar95_ms"]


def test_cvar_is_deadline_aware():
    """A: always 10 ms late (lowest CVaR). B: on time 97% of the time, 400 ms RTO tail. Deadline -> B."""
    c = cluster([{"name": "o", "cores": 1, "zone": "origin"},
                 {"name": "A", "cores": 4, "zone": "za"},
                 {"name": "B", "cores": 4, "zone": "zb", "speed": 1005 / 800}],
                [{"a": "origin", "b": "za", "latency_ms": 5, "bandwidth_mbps": 1000},
                 {"a": "origin", "b": "zb", "latency_ms": 100, "bandwidth_mbps": 1000, "loss": 0.03}])
    st = dtlab.ClusterState(c)
    st.apply({"kind": "node-cordon", "node": "o"})
    twin = dtlab.Twin(st, timing=TimingModel(service_sigma=0.0))
    stages = [{"id": "s", "compute": {"cpu": 1, "duration_ms": 1005}}]
    no_deadline = jobd(stages, origin={"zone": "origin"}, input_mb=0.001)
    deadline = jobd(stages, origin={"zone": "origin"}, input_mb=0.001, deadline_ms=1000)
    assert twin.plan(no_deadline, policy="cvar", samples=1000).placement == {"s": "A"}
    plan = twin.plan(deadline, policy="cvar", samples=1000)
    assert plan.placement == {"s": "B"}
    assert plan.prediction["deadline_miss_prob"] < 0.05


@pytest.mark.parametrize("policy", ALL)
def test_down_and_cordoned_nodes_are_never_chosen(policy):
    c = hetero()
    st = dtlab.ClusterState(c)
    st.apply_many([{"kind": "node-down", "node": "edge-a-0"}, {"kind": "node-cordon", "node": "cloud-0"},
                   {"kind": "node-cordon", "node": "edge-b-0"}])
    twin = dtlab.Twin(st)
    banned = {"edge-a-0", "cloud-0", "edge-b-0"}
    for name in ("job-single", "job-pipeline", "job-fanout"):
        job = dtlab.load_job(f"{EXAMPLES}/{name}.yaml", c)
        for seed in range(3):
            plan = twin.plan(job, policy=policy, seed=seed, samples=64)
            used = set(plan.placement.values()) | set(plan.shadow.values())
            assert not used & banned, (policy, name, used)
            assert np.isfinite(plan.prediction["mean_ms"])


@pytest.mark.parametrize("policy", ALL)
def test_infeasible_raises_naming_the_stage(policy):
    c = hetero()
    st = dtlab.ClusterState(c)
    # map-2 needs riscv64 (native or qemu): edge-a-1 (native) and the qemu nodes edge-a-0, edge-b-0, cloud-1
    st.apply_many([{"kind": "node-down", "node": n} for n in ("edge-a-1", "edge-a-0", "edge-b-0")]
                  + [{"kind": "node-cordon", "node": "cloud-1"}])
    job = dtlab.load_job(f"{EXAMPLES}/job-fanout.yaml", c)
    with pytest.raises(dtlab.InfeasibleError, match="map-2"):
        dtlab.Twin(st).plan(job, policy=policy)


def test_unreachable_nodes_are_never_chosen():
    c = hetero()
    st = dtlab.ClusterState(c)
    st.apply({"kind": "link", "a": "edge-a", "b": "cloud", "up": False})
    job = dtlab.load_job(f"{EXAMPLES}/job-single.yaml", c)     # origin edge-b: all zones reachable
    pipe = dtlab.load_job(f"{EXAMPLES}/job-pipeline.yaml", c)  # origin edge-a: cloud unreachable
    snap = st.snapshot()
    for policy in ALL:
        plan = dtlab.Twin(st).plan(pipe, policy=policy, samples=64)
        assert c.node(plan.placement["decode"]).zone != "cloud", policy   # input comes from edge-a
        for s in pipe.stages:
            for p in s.after:
                assert snap.reachable(plan.placement[p], plan.placement[s.id]), (policy, p, s.id)
        assert np.isfinite(plan.prediction["p99_ms"])
        dtlab.Twin(st).plan(job, policy=policy, samples=64)


@pytest.mark.parametrize("policy", ["random", "cvar", "greedy", "resilient"])
def test_same_seed_same_plan(policy):
    c = hetero()
    job = dtlab.load_job(f"{EXAMPLES}/job-fanout.yaml", c)
    a = dtlab.Twin(c).plan(job, policy=policy, seed=7)
    b = dtlab.Twin(c).plan(job, policy=policy, seed=7)
    assert (a.placement, a.shadow, a.prediction) == (b.placement, b.shadow, b.prediction)


def test_random_depends_on_the_seed_and_round_robin_cycles():
    c = hetero()
    job = dtlab.load_job(f"{EXAMPLES}/job-single.yaml", c)
    twin = dtlab.Twin(c)
    picks = {twin.plan(job, policy="random", seed=s).placement["resize"] for s in range(20)}
    assert len(picks) >= 4
    rr = [twin.plan(job, policy="round-robin").placement["resize"] for _ in range(len(c.nodes))]
    assert sorted(rr) == sorted(n.name for n in c.nodes)   # every node once per cycle


def test_least_allocated_spreads_by_requests():
    c = cluster([{"name": "a", "cores": 4, "mem_gb": 8}, {"name": "b", "cores": 4, "mem_gb": 8}])
    st = dtlab.ClusterState(c)
    twin = dtlab.Twin(st)
    two = jobd([{"id": "x", "compute": {"cpu": 1, "duration_ms": 10}},
                {"id": "y", "compute": {"cpu": 1, "duration_ms": 10}}])
    assert set(twin.plan(two, policy="least-allocated").placement.values()) == {"a", "b"}
    st.apply_many([{"kind": "job-submit", "job": "other", "stage_cpu": {"z": 2}},
                   {"kind": "stage-start", "job": "other", "stage": "z", "node": "a"}])
    assert twin.plan(jobd(ONE), policy="least-allocated").placement == {"s": "b"}


def test_registry_user_policy_function_and_class():
    @policies.register("test-first-node")
    def first(ctx):
        node = sorted(n.name for n in ctx.snapshot.schedulable_nodes())[0]
        return {s.id: node for s in ctx.job.stages}, {}

    @policies.register("test-counting")
    class Counting:
        def __init__(self):
            self.calls = 0

        def plan(self, ctx):
            self.calls += 1
            return first(ctx)

    assert {"test-first-node", "test-counting"} <= set(policies.names())
    c = hetero()
    twin = dtlab.Twin(c)
    job = dtlab.load_job(f"{EXAMPLES}/job-single.yaml", c)
    plan = twin.plan(job, policy="test-first-node")
    assert plan.placement == {"resize": "cloud-0"} and plan.policy == "test-first-node"
    twin.plan(job, policy="test-counting")
    twin.plan(job, policy="test-counting")
    assert twin.policy("test-counting").calls == 2   # one instance per twin


def test_unknown_policy_is_a_spec_error_listing_known_ones():
    with pytest.raises(dtlab.SpecError) as exc:
        policies.get("nope")
    assert exc.value.field == "policy"
    assert "greedy" in str(exc.value) and "cvar" in str(exc.value)


def test_rl_stub_documents_the_interface_and_refuses_to_plan():
    c = hetero()
    job = dtlab.load_job(f"{EXAMPLES}/job-fanout.yaml", c)
    ctx = PlanContext(snapshot=dtlab.ClusterState(c).snapshot(), job=job, timing=TimingModel(),
                      rng=np.random.default_rng(0), deadline_ms=job.deadline_ms)
    stub = policies.get("rl_stub")
    obs = stub.observation(ctx)
    n, t = len(c.nodes), len(job.stages)
    assert obs["nodes"].shape == (n, 8) and obs["stages"].shape == (t, 5)
    assert obs["mask"].shape == (t, n) and obs["mean_service_ms"].shape == (t, n)
    assert obs["edges"].shape == (6, 2)
    with pytest.raises(NotImplementedError, match="subclass"):
        stub.plan(ctx)

    class FirstAllowed(RLStub):
        def act(self, observation):
            return observation["mask"].argmax(axis=1)

    placement, shadow = FirstAllowed().plan(ctx)
    assert set(placement) == {s.id for s in job.stages} and shadow == {}


def test_least_allocated_filters_nodes_whose_requests_are_full():
    """'big' scores higher on the mean free fraction but cannot take 1 more core: the fit filter sends it to 'small'."""
    c = cluster([{"name": "big", "cores": 100, "mem_gb": 1000}, {"name": "small", "cores": 2, "mem_gb": 2}])
    st = dtlab.ClusterState(c)
    st.apply_many([{"kind": "job-submit", "job": "hog", "stage_cpu": {"z": 99.5}},
                   {"kind": "stage-start", "job": "hog", "stage": "z", "node": "big"}])
    job = jobd([{"id": "s", "compute": {"cpu": 1, "mem_gb": 1.2, "duration_ms": 10}}])
    assert dtlab.Twin(st).plan(job, policy="least-allocated").placement == {"s": "small"}
    st.apply({"kind": "node-cordon", "node": "small"})   # nothing fits: overcommit rather than refuse
    assert dtlab.Twin(st).plan(job, policy="least-allocated").placement == {"s": "big"}


from hypothesis import HealthCheck, given, settings, strategies as hs  # noqa: E402

_HETERO = dtlab.load_cluster(f"{EXAMPLES}/cluster-hetero.yaml")
_JOBS = [dtlab.load_job(f"{EXAMPLES}/{n}.yaml") for n in ("job-single", "job-pipeline", "job-fanout", "job-legacy")]
_NAMES = [n.name for n in _HETERO.nodes]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(down=hs.sets(hs.sampled_from(_NAMES)), cordoned=hs.sets(hs.sampled_from(_NAMES)),
       job=hs.sampled_from(_JOBS), policy=hs.sampled_from(ALL), seed=hs.integers(0, 2**16))
def test_property_plans_use_only_allowed_nodes_or_raise_for_a_reason(down, cordoned, job, policy, seed):
    """Any mix of down/cordoned nodes: a plan uses only schedulable feasible nodes; InfeasibleError only if some
    stage really has no schedulable feasible node (every zone pair of the example cluster is linked)."""
    st = dtlab.ClusterState(_HETERO)
    st.apply_many([{"kind": "node-down", "node": n} for n in down] + [{"kind": "node-cordon", "node": n} for n in cordoned])
    banned = down | cordoned
    tm = TimingModel()
    allowed = {s.id: {n.name for n in _HETERO.nodes if n.name not in banned and tm.exec_format(s, n)} for s in job.stages}
    try:
        plan = dtlab.Twin(st).plan(job, policy=policy, seed=seed, samples=32)
    except dtlab.InfeasibleError as exc:
        empty = [sid for sid, nodes in allowed.items() if not nodes]
        assert empty and any(repr(sid) in str(exc) for sid in empty)
        return
    for sid, node in plan.placement.items():
        assert node in allowed[sid]
    for sid, node in plan.shadow.items():
        assert node in allowed[sid] and node != plan.placement[sid]


def test_resilient_expected_end_has_no_nan_for_nodes_that_never_fail_or_cannot_finish():
    """0 x inf is NaN in plain arithmetic and np.argmin returns the first NaN: a node with p = 0 and no
    recoverable failure, or one where the stage cannot finish, must not win the argmin by NaN."""
    import warnings

    import numpy as np

    from dtlab.policies.resilient import expected_end
    inf = np.inf
    finish = np.array([100.0, inf, 120.0, 50.0])
    p = np.array([0.0, 0.0, 0.5, 1.0])
    after = np.array([inf, inf, 300.0, inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no RuntimeWarning either
        e = expected_end(finish, p, after)
    assert e.tolist() == [100.0, inf, 210.0, inf]
    assert int(np.argmin(e)) == 0
