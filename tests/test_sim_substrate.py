"""The sim substrate honours the substrate protocol and really differs from the twin."""
import numpy as np
import pandas as pd
import pytest

import dtlab
from dtlab import ClusterState, SpecError
from dtlab.model import Compute, Job, Stage
from dtlab.plan import Plan
from dtlab.substrates import JOB_COLUMNS, STAGE_COLUMNS, Substrate, available, make_substrate, names
from dtlab.substrates.sim import SIM_DEFAULTS, TruthTiming
from dtlab.timing import TimingModel
from dtlab.experiments.params import REPO_ROOT

CLUSTER = dtlab.load_cluster(REPO_ROOT / "examples/cluster-hetero.yaml")
QUIET = {"failure_rate_per_h": 0.0, "link_sigma": 0.0}


def one_stage(name, ms=1000.0, cpu=1.0):
    return Job(name=name, stages=(Stage(id="s", compute=Compute(cpu=cpu, mem_gb=0.1, duration_ms=ms)),))


def pinned(job, node, shadow=None):
    return Plan(job=job.name, policy="pinned", placement={"s": node}, shadow={"s": shadow} if shadow else {})


def run_batch(seed, **opts):
    sub = make_substrate("sim", CLUSTER, seed=seed, **opts)
    for i in range(30):
        sub.advance(i * 300.0)
        node = CLUSTER.nodes[i % len(CLUSTER.nodes)].name
        job = one_stage(f"j{i}")
        sub.submit(pinned(job, node), job)
    sub.advance(None)
    return sub


def test_registry_and_protocol():
    assert "sim" in names() and available("sim") == (True, "")
    with make_substrate("sim", CLUSTER, seed=0) as sub:
        assert isinstance(sub, Substrate)
        assert sub.cluster() is CLUSTER and sub.now_ms() == 0.0
    assert sub.closed
    with pytest.raises(SpecError) as e:
        make_substrate("nope", CLUSTER)
    assert e.value.field == "substrate"


def test_unknown_or_bad_option_names_the_key():
    with pytest.raises(SpecError) as e:
        make_substrate("sim", CLUSTER, seed=0, telemetry_dealy_s=1.0)
    assert e.value.field == "substrate_opts.telemetry_dealy_s"
    with pytest.raises(SpecError) as e:
        make_substrate("sim", CLUSTER, seed=0, tail_prob=2.0)
    assert e.value.field == "substrate_opts.tail_prob"


def test_results_have_protocol_columns_and_every_job():
    sub = run_batch(0)
    res = sub.results()
    assert list(res["jobs"].columns[:len(JOB_COLUMNS)]) == list(JOB_COLUMNS)
    assert list(res["stages"].columns[:len(STAGE_COLUMNS)]) == list(STAGE_COLUMNS)
    assert sorted(res["jobs"]["job"]) == sorted(f"j{i}" for i in range(30))
    assert res["jobs"]["ok"].all()
    ok = res["stages"][res["stages"]["ok"]]
    assert (ok["duration_ms"] > 0).all()


def test_same_seed_identical_other_seed_differs():
    a = run_batch(3, failure_rate_per_h=30.0).results()
    b = run_batch(3, failure_rate_per_h=30.0).results()
    c = run_batch(4, failure_rate_per_h=30.0).results()
    pd.testing.assert_frame_equal(a["jobs"], b["jobs"])
    pd.testing.assert_frame_equal(a["stages"], b["stages"])
    assert not np.allclose(a["jobs"].sort_values("job")["latency_ms"], c["jobs"].sort_values("job")["latency_ms"])


def test_events_mirror_the_engine_into_cluster_state():
    sub = make_substrate("sim", CLUSTER, seed=1, **QUIET)
    state = ClusterState(CLUSTER)
    seen_running = False
    for i in range(10):
        sub.advance(i * 200.0)
        state.apply_many(sub.events())
        if any(s.running_cpu > 0 for s in state.snapshot().nodes.values()):
            seen_running = True
        job = one_stage(f"m{i}", ms=800.0, cpu=2.0)
        sub.submit(pinned(job, "cloud-arm-0"), job)
    sub.advance(None)
    state.apply_many(sub.events())
    snap = state.snapshot()
    assert seen_running
    assert {(f"m{i}", "s") for i in range(10)} <= set(snap.stages)
    assert all(snap.stages[(f"m{i}", "s")].phase == "succeeded" for i in range(10))
    assert all(s.running_cpu == 0 for s in snap.nodes.values())


def test_telemetry_is_late_and_noisy_and_hides_truth():
    sub = make_substrate("sim", CLUSTER, seed=2, telemetry_delay_s=7.0, telemetry_noise=0.2, **QUIET)
    sub.advance(60_000.0)
    tel = [e for e in sub.events() if e["kind"] == "telemetry"]
    assert tel and max(e["ts"] for e in tel) <= 60.0 - 7.0 + 1e-9
    truth = sub.background_log().set_index(["t_ms", "node"])["cpu_util"]
    errors = [abs(e["cpu_util"] - truth[(e["ts"] * 1000.0, e["node"])]) for e in tel]
    assert np.mean(errors) > 0.02          # noisy, not the truth
    assert not any(e["kind"] in ("link",) for e in sub.events())   # hidden link variability


def test_node_failure_moves_stage_to_shadow():
    sub = make_substrate("sim", CLUSTER, seed=5, **QUIET)
    job = one_stage("long", ms=20_000.0)
    sub.submit(pinned(job, "edge-a-0", shadow="cloud-0"), job)
    sub.inject({"kind": "node-failure", "at_s": 2.0, "duration_s": 600.0, "selector": {"names": ["edge-a-0"]}})
    sub.advance(None)
    events = sub.events()
    jobs = sub.results()["jobs"].set_index("job")
    stages = sub.results()["stages"]
    assert jobs.loc["long", "ok"] and jobs.loc["long", "failed_over"] == 1
    assert set(stages[stages["ok"]]["node"]) == {"cloud-0"}
    assert jobs.loc["long", "end_ms"] < 600_000.0          # did not wait for the repair
    kinds = [e["kind"] for e in events]
    assert "node-down" in kinds and "chaos" in kinds


def test_without_shadow_the_stage_waits_for_repair():
    sub = make_substrate("sim", CLUSTER, seed=5, **QUIET)
    job = one_stage("long", ms=20_000.0)
    sub.submit(pinned(job, "edge-a-0"), job)
    sub.inject({"kind": "node-failure", "at_s": 2.0, "duration_s": 60.0, "selector": {"names": ["edge-a-0"]}})
    sub.advance(None)
    jobs = sub.results()["jobs"].set_index("job")
    assert jobs.loc["long", "ok"] and jobs.loc["long", "end_ms"] > 62_000.0


def test_ground_truth_differs_from_the_twin():
    sub = make_substrate("sim", CLUSTER, seed=0)
    twin = TimingModel()
    assert sub.true_overheads()["qemu-riscv64"] > twin.overheads["qemu-riscv64"]
    truth = sub.timing
    assert isinstance(truth, TruthTiming) and truth.service_sigma == SIM_DEFAULTS["service_sigma"]
    rng = np.random.default_rng(0)
    x_truth = truth.service_noise(rng, 200_000)
    x_twin = twin.service_noise(np.random.default_rng(0), 200_000)
    assert np.percentile(x_truth, 99) > 1.5 * np.percentile(x_twin, 99)
    speeds = [sub.true_speed(n.name) / n.speed for n in CLUSTER.nodes]
    assert np.std(speeds) > 0.01


def test_drift_slows_jobs_over_time():
    def latency_at(t_ms, drift):
        sub = make_substrate("sim", CLUSTER, seed=9, speed_drift_per_min=drift, service_sigma=0.0, tail_prob=0.0,
                             background_mean=0.0, background_step_sd=0.0, **QUIET)
        sub.advance(t_ms)
        job = one_stage("d", ms=1000.0)
        sub.submit(pinned(job, "cloud-0"), job)
        sub.advance(None)
        return float(sub.results()["jobs"]["latency_ms"].iloc[0])
    assert latency_at(120_000.0, -0.2) == pytest.approx(latency_at(0.0, -0.2) / 0.6, rel=1e-6)


def test_world_does_not_depend_on_how_finely_advance_steps():
    """A wall-clock controller advances in arbitrary steps; the same seed must still mean the same world."""
    import dtlab
    from dtlab.substrates import make_substrate

    cluster = dtlab.load_cluster(REPO_ROOT / "examples" / "cluster-hetero.yaml")

    def observed(step_ms):
        sub = make_substrate("sim", cluster, seed=3, failure_rate_per_h=20.0)
        events, t = [], 0.0
        while t < 60_000:
            t += step_ms
            sub.advance(t)
            events += sub.events()
        return sorted(events, key=lambda e: (e.get("ts") or 0, e["kind"], str(e.get("node"))))

    coarse, fine = observed(10_000), observed(700)
    assert any(e["kind"] == "telemetry" for e in coarse)
    assert coarse == fine
