"""The sense-simulate-act loop end to end on the sim substrate."""

import numpy as np
import pytest

import dtlab
from dtlab.calibration.online import OnlineCalibrator
from dtlab.controller import Arrival, Controller, arrivals
from dtlab.experiments.params import REPO_ROOT, load_workload_param
from dtlab.model import Compute, Constraints, Job, Stage
from dtlab.substrates import make_substrate
from dtlab.twin import Twin
from dtlab.workload.stream import job_stream

CLUSTER = dtlab.load_cluster(REPO_ROOT / "examples/cluster-hetero.yaml")
QUIET = {"failure_rate_per_h": 0.0, "link_sigma": 0.0}


def tiny_run(policy="greedy", seed=0, jobs=12, **opts):
    wl = load_workload_param("examples/workload.yaml", jobs, 1.0)
    twin = Twin(CLUSTER)
    with make_substrate("sim", CLUSTER, seed=seed, **opts) as sub:
        ctl = Controller(twin, sub, policy=policy, predictor="fast", samples=32, seed=seed)
        df = ctl.run_workload(job_stream(wl, np.random.default_rng(seed)))
    return df, ctl


def test_end_to_end_records_plans_and_observations():
    df, ctl = tiny_run("resilient")
    assert len(df) == 12 and df["ok"].all() and not df["rejected"].any()
    assert (df["latency_ms"] > 0).all() and (df["pred_mean_ms"] > 0).all()
    assert df["placement"].str.contains("decode=").all()
    assert (df["shadow"] != "").all()                       # resilient keeps shadows
    # the twin's state mirrors the substrate: every stage of every job ended, nothing left running
    snap = ctl.twin.state.snapshot()
    assert sum(1 for s in snap.stages.values() if s.phase == "succeeded") == 12 * 3
    assert all(s.running_cpu == 0 for s in snap.nodes.values())
    assert ctl.events_applied > 12 * 6


def test_same_seed_same_records():
    a, _ = tiny_run("cvar", seed=4)
    b, _ = tiny_run("cvar", seed=4)
    assert a.drop(columns=["plan_ms"]).equals(b.drop(columns=["plan_ms"]))


def test_shadows_answer_failures():
    job = Job(name="long", stages=(Stage(id="s", compute=Compute(duration_ms=20_000.0)),))
    twin = Twin(CLUSTER)
    with make_substrate("sim", CLUSTER, seed=0, **QUIET) as sub:
        ctl = Controller(twin, sub, policy="resilient", samples=16)
        plan = ctl.step(job, 0.0)
        assert plan.shadow["s"] != plan.placement["s"]
        sub.inject({"kind": "node-failure", "at_s": 1.0, "duration_s": 3600.0,
                    "selector": {"names": [plan.placement["s"]]}})
        df = ctl.run_workload([])
    assert bool(df.loc[0, "ok"]) and df.loc[0, "failed_over"] == 1
    assert df.loc[0, "nodes"] == plan.shadow["s"]
    assert df.loc[0, "latency_ms"] < 3_600_000.0


def test_infeasible_job_is_rejected_not_crashing():
    twin = Twin(CLUSTER)
    with make_substrate("sim", CLUSTER, seed=0, **QUIET) as sub:
        ctl = Controller(twin, sub, policy="greedy", samples=16)
        sub.inject({"kind": "node-failure", "at_s": 0.0, "duration_s": 600.0,
                    "selector": {"names": ["edge-a-1"]}})
        job = Job(name="rv", stages=(Stage(id="s", compute=Compute(duration_ms=100.0),
                                           constraints=Constraints(arch=("riscv64",), formats=("native",))),))
        assert ctl.step(job, 5_000.0) is None
        df = ctl.results()
    assert bool(df.loc[0, "rejected"]) and bool(df.loc[0, "missed"]) and not bool(df.loc[0, "ok"])


def test_arrivals_accepts_pairs_and_objects():
    job = Job(name="x", stages=(Stage(id="s"),))
    got = list(arrivals([(5, job), Arrival(7.0, job)]))
    assert [a.at_ms for a in got] == [5.0, 7.0]


def test_online_calibration_tracks_a_slowing_world():
    opts = {**QUIET, "speed_drift_per_min": -0.2, "service_sigma": 0.02, "tail_prob": 0.0, "speed_sigma": 0.0,
            "background_mean": 0.0, "background_step_sd": 0.0,
            "overhead_bias": {"wasm": 1.0, "qemu-arm64": 1.0, "qemu-amd64": 1.0, "qemu-riscv64": 1.0}}
    wl = load_workload_param("examples/workload.yaml", 60, 0.3)
    twin = Twin(CLUSTER)
    with make_substrate("sim", CLUSTER, seed=0, **opts) as sub:
        cal = OnlineCalibrator(twin, alpha=0.3)
        ctl = Controller(twin, sub, policy="greedy", samples=32, recalibrator=cal)
        ctl.run_workload(job_stream(wl, np.random.default_rng(0)))
        now = sub.now_ms()
    assert cal.history, "no correction was made"
    node = cal.history[-1]["node"]
    believed = twin.state.snapshot().nodes[node].node.speed
    true_late = CLUSTER.node(node).speed * (1 - 0.2 * cal.history[-1]["ts"] / 60.0)
    spec = CLUSTER.node(node).speed
    assert abs(believed - true_late) < 0.5 * abs(spec - true_late)


def test_calibrator_rejects_bad_alpha():
    with pytest.raises(dtlab.SpecError) as e:
        OnlineCalibrator(Twin(CLUSTER), alpha=0.0)
    assert e.value.field == "ewma_alpha"
