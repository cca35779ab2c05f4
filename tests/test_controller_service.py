"""`dtlab controller` as a service on the sim substrate: freshness refusal, shadow failover
without re-planning, metrics, the API hand-off, submit rollback and a clean SIGTERM stop."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import dtlab
from dtlab.api import ApiConfig, create_app
from dtlab.controller_service import ControllerService, ServiceConfig
from dtlab.errors import SpecError
from dtlab.experiments.params import load_workload_param
from dtlab.model import Compute, Job, Stage
from dtlab.substrates import make_substrate
from dtlab.workload.stream import job_stream
from tests.heavy import require

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILE = REPO / "examples" / "cluster-hetero.yaml"
CLUSTER = dtlab.load_cluster(CLUSTER_FILE)
QUIET = {"failure_rate_per_h": 0.0, "link_sigma": 0.0}
FAST_TELEMETRY = {"telemetry_period_s": 0.25, "telemetry_delay_s": 0.05}


def metric(registry, name, **labels) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def service(sub_opts=None, seed=0, **cfg):
    sub = make_substrate("sim", CLUSTER, seed=seed, **{**QUIET, **(sub_opts or {})})
    record = io.StringIO()
    cfg = {"samples": 16, "speed": 1000.0, "tick_s": 0.01, **cfg}
    return ControllerService(dtlab.Twin(CLUSTER), sub, ServiceConfig(**cfg), record=record), record


def workload(jobs=8, rate=2.0, seed=0):
    wl = load_workload_param("examples/workload.yaml", jobs, rate)
    return job_stream(wl, np.random.default_rng(seed))


def lines(record: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in record.getvalue().splitlines()]


def test_runs_a_workload_and_records_every_decision():
    svc, record = service(policy="resilient")
    summary = svc.run(workload(8))
    rec = lines(record)
    assert summary == rec[-1] and summary["type"] == "stopped" and summary["reason"] == "done"
    decisions = [r for r in rec if r["type"] == "decision"]
    assert [r["decision"] for r in decisions] == ["submitted"] * 8
    assert summary["submitted"] == 8 and summary["in_flight"] == []
    assert all(r["shadow"] for r in decisions)              # shadows are recorded with each placement
    done = svc.substrate.results()["jobs"]
    assert sorted(done["job"]) == sorted(r["job"] for r in decisions) and done["ok"].all()
    assert metric(svc.metrics.registry, "dtlab_controller_decisions_total", decision="submitted") == 8
    assert metric(svc.metrics.registry, "dtlab_controller_loop_seconds_count") == 8
    assert metric(svc.metrics.registry, "dtlab_controller_events_total") == svc.controller.events_applied > 0
    assert metric(svc.metrics.registry, "dtlab_controller_state_version") == svc.twin.state.version


def test_stale_telemetry_is_refused_and_explained():
    # sim telemetry every 5 s, 2 s late: never within a 1 s budget
    svc, record = service(freshness_s=1.0, sub_opts={"telemetry_period_s": 5.0, "telemetry_delay_s": 2.0})
    summary = svc.run(workload(6))
    decisions = [r for r in lines(record) if r["type"] == "decision"]
    assert summary["submitted"] == 0 and summary["refused-stale"] == 6
    assert all(r["decision"] == "refused-stale" and "freshness budget" in r["error"] for r in decisions)
    assert svc.substrate.results()["jobs"].empty                       # nothing was actuated
    named = r"([\w-]+) \((?:never reported|[\d.]+ s old)"
    refused_nodes = {n for r in decisions for n in re.findall(named, r["error"])}
    assert refused_nodes
    for node in refused_nodes:
        assert metric(svc.metrics.registry, "dtlab_controller_stale_refusals_total", node=node) >= 1
    assert metric(svc.metrics.registry, "dtlab_controller_decisions_total", decision="refused-stale") == 6


def test_fresh_telemetry_is_actuated():
    # same budget, telemetry every 0.25 s and 0.05 s late: every job after the first sample runs
    svc, record = service(freshness_s=1.0, sub_opts=FAST_TELEMETRY)
    summary = svc.run(workload(6))
    assert summary["refused-stale"] == 0 and summary["submitted"] == 6


def test_node_down_moves_stages_to_shadows_without_replanning():
    svc, record = service(policy="resilient")
    plans = []
    real_plan = svc.twin.plan
    svc.twin.plan = lambda *a, **k: plans.append(1) or real_plan(*a, **k)
    job = Job(name="long", stages=(Stage(id="s", compute=Compute(duration_ms=20_000.0)),))
    svc.step(job, 0.0)
    plan = svc.in_flight["long"]
    assert plan.shadow["s"] != plan.placement["s"]
    svc.substrate.inject({"kind": "node-failure", "at_s": 1.0, "duration_s": 3600.0,
                          "selector": {"names": [plan.placement["s"]]}})
    summary = svc.run([])
    moves = [r for r in lines(record) if r["type"] == "failover"]
    assert moves == [{**moves[0], "job": "long", "stage": "s", "failed_node": plan.placement["s"],
                      "shadow": plan.shadow["s"], "result": "moved"}]
    assert summary["failovers"] == 1 and len(plans) == 1                 # answered by the shadow, not a re-plan
    assert metric(svc.metrics.registry, "dtlab_controller_failovers_total", result="moved") == 1
    done = svc.substrate.results()["jobs"].set_index("job").loc["long"]
    assert bool(done["ok"]) and done["failed_over"] == 1 and done["nodes"] == plan.shadow["s"]


@pytest.mark.parametrize("one_batch", [False, True])
def test_moved_stage_is_not_moved_again_when_its_planned_node_fails_again(one_batch):
    svc, record = service(policy="resilient")
    job = Job(name="long", stages=(Stage(id="s", compute=Compute(duration_ms=20_000.0)),))
    svc.step(job, 0.0)
    plan = svc.in_flight["long"]
    for at in (1.0, 8.0):    # down, up at 4 s, down again while the stage runs on its shadow
        svc.substrate.inject({"kind": "node-failure", "at_s": at, "duration_s": 3.0,
                              "selector": {"names": [plan.placement["s"]]}})
    svc.substrate.inject({"kind": "node-failure", "at_s": 12.0, "duration_s": 60.0,
                          "selector": {"names": [plan.shadow["s"]]}})   # then the shadow itself fails
    if one_batch:       # all three failures reach the twin in one batch: still answered in event order
        svc.sense(20_000.0)
    svc.run([], duration_s=30)
    moves = [(r["failed_node"], r["result"]) for r in lines(record) if r["type"] == "failover"]
    assert moves == [(plan.placement["s"], "moved"), (plan.shadow["s"], "no-shadow")]


def test_fabric_node_down_moves_the_running_stage_to_its_shadow():
    """The same failover with real processes (heavy: the fabric substrate's cgroups)."""
    from dtlab.substrates import available
    ok, why = available("fabric")
    require(ok, f"fabric substrate unavailable: {why}")
    record = io.StringIO()
    with make_substrate("fabric", CLUSTER, seed=0, network=False) as sub:
        svc = ControllerService(dtlab.Twin(CLUSTER), sub, ServiceConfig(policy="resilient", samples=16),
                                record=record)
        svc.step(Job(name="long", stages=(Stage(id="s", compute=Compute(duration_ms=3000.0)),)))
        plan = svc.in_flight["long"]
        sub.inject({"kind": "node-failure", "at_s": sub.now_ms() / 1000 + 0.5, "duration_s": 60.0,
                    "selector": {"names": [plan.placement["s"]]}})
        summary = svc.run([], duration_s=60)
        stages = sub.results()["stages"]
    assert summary["reason"] == "done" and summary["failovers"] == 1
    assert [(r["failed_node"], r["shadow"], r["result"]) for r in lines(record) if r["type"] == "failover"] == [
        (plan.placement["s"], plan.shadow["s"], "moved")]
    finished = stages[stages["ok"].astype(bool)]
    assert list(finished["node"]) == [plan.shadow["s"]]                  # it really finished on the shadow


def test_node_down_without_shadow_is_reported_not_replanned():
    svc, record = service(policy="greedy")
    job = Job(name="long", stages=(Stage(id="s", compute=Compute(duration_ms=20_000.0)),))
    svc.step(job, 0.0)
    plan = svc.in_flight["long"]
    assert not plan.shadow
    svc.substrate.inject({"kind": "node-failure", "at_s": 1.0, "duration_s": 5.0,
                          "selector": {"names": [plan.placement["s"]]}})
    svc.run([])
    moves = [r for r in lines(record) if r["type"] == "failover"]
    assert [m["result"] for m in moves] == ["no-shadow"]
    assert metric(svc.metrics.registry, "dtlab_controller_failovers_total", result="no-shadow") == 1


def test_api_non_dry_run_plan_is_handed_to_the_controller():
    svc, record = service(sub_opts=FAST_TELEMETRY, freshness_s=1.0)
    client = create_app(svc.twin, ApiConfig(token=None, insecure_dev=True), controller=svc).test_client()
    def job(name):
        return {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"stages": [{"id": "s", "compute": {"duration_ms": 100}}]}}
    # no telemetry yet: refused with a 409 that says why, and nothing submitted
    r = client.post("/plan", json={"job": job("api-job"), "dry_run": False, "samples": 8})
    assert r.status_code == 409 and "freshness budget" in r.get_json()["error"]
    svc.sense(1000.0)                                                      # a second of telemetry
    r = client.post("/plan", json={"job": job("api-job-2"), "dry_run": False, "samples": 8})
    assert r.status_code == 200, r.get_json()
    assert svc.counts["submitted"] == 1 and "api-job-2" in svc.in_flight
    svc.substrate.advance(None)
    assert list(svc.substrate.results()["jobs"]["job"]) == ["api-job-2"]
    svc.stop("test")
    assert client.post("/plan", json={"job": job("late"), "dry_run": False}).status_code == 409


def test_failed_submit_is_rolled_back():
    svc, record = service()
    cancelled = []

    class Broken(type(svc.substrate)):
        def submit(self, plan, job):
            raise OSError("connection reset half-way")

        def cancel(self, name):
            cancelled.append(name)

    real_class = svc.substrate.__class__
    svc.substrate.__class__ = Broken
    rec = svc.step(Job(name="j", stages=(Stage(id="s"),)), 0.0)
    assert cancelled == ["j"] and rec["decision"] == "rolled-back" and "connection reset" in rec["error"]
    assert not svc.in_flight and svc.counts["rolled-back"] == 1
    assert [r["decision"] for r in lines(record)] == ["rolled-back"]
    svc.substrate.__class__ = real_class            # the service goes on with the next job
    assert svc.step(Job(name="k", stages=(Stage(id="s"),)), 10.0)["decision"] == "submitted"


def test_sigterm_during_a_submit_lets_that_submit_finish_then_stops():
    svc, record = service()

    class SignalledMidSubmit(type(svc.substrate)):
        def submit(self, plan, job):
            os.kill(os.getpid(), signal.SIGTERM)     # delivered while this submit runs
            time.sleep(0.05)
            super().submit(plan, job)

    svc.substrate.__class__ = SignalledMidSubmit
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        svc.install_signal_handlers()
        summary = svc.run(workload(5))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert summary["reason"] == "SIGTERM" and summary["submitted"] == 1
    first = [r for r in lines(record) if r["type"] == "decision"]
    assert [r["decision"] for r in first] == ["submitted"]
    svc.substrate.advance(None)
    assert list(svc.substrate.results()["jobs"]["job"]) == [first[0]["job"]]   # whole job ran, nothing after


def test_cli_api_mode_acts_on_non_dry_run_plans_and_stops_on_sigterm(tmp_path):
    import yaml
    record, err = tmp_path / "record.jsonl", tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "dtlab.cli", "controller", "--substrate", "sim", "--cluster", str(CLUSTER_FILE),
           "--api-port", "0", "--insecure-dev", "--record", str(record), "--opt", "failure_rate_per_h=0"]
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"REST API on http://127.0.0.1:(\d+)", err.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        job = yaml.safe_load((REPO / "examples" / "job-single.yaml").read_text())
        req = urllib.request.Request(f"http://127.0.0.1:{m.group(1)}/plan", method="POST",
                                     data=json.dumps({"job": job, "dry_run": False, "samples": 8}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            plan = json.loads(r.read())
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err.read_text()
    rec = [json.loads(x) for x in record.read_text().splitlines()]
    assert [(r["type"], r.get("job"), r.get("decision")) for r in rec[:-1]] == [("decision", job["metadata"]["name"],
                                                                                  "submitted")]
    assert rec[0]["placement"] == ",".join(f"{k}={v}" for k, v in plan["placement"].items())
    assert rec[-1]["type"] == "stopped" and rec[-1]["reason"] == "SIGTERM" and rec[-1]["submitted"] == 1


def test_config_errors_name_the_field():
    with pytest.raises(SpecError, match="freshness_s"):
        ServiceConfig(freshness_s=0)
    with pytest.raises(SpecError, match="speed"):
        ServiceConfig(speed=-1)
    with pytest.raises(SpecError):
        service(policy="no-such-policy")


def test_sigterm_stops_cleanly_with_a_consistent_record(tmp_path):
    record = tmp_path / "record.jsonl"
    err = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "dtlab.cli", "controller", "--substrate", "sim", "--cluster", str(CLUSTER_FILE),
           "--workload", str(REPO / "examples" / "workload.yaml"), "--jobs", "500", "--rate", "4",
           "--policy", "resilient", "--samples", "16", "--speed", "1", "--record", str(record), "--port", "0",
           "--opt", "failure_rate_per_h=0"]
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, err.read_text()
            got = record.read_text().count('"decision": "submitted"') if record.exists() else 0
            if got >= 3:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no decisions within 60 s:\n{err.read_text()}")
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", err.read_text()).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert re.search(r'dtlab_controller_decisions_total\{decision="submitted"\} [1-9]', text)
        assert re.search(r"dtlab_controller_loop_seconds_count [1-9]", text)

        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err.read_text()
    rec = [json.loads(x) for x in record.read_text().splitlines()]       # every line complete JSON
    stop = rec[-1]
    assert stop["type"] == "stopped" and stop["reason"] == "SIGTERM"
    assert [r["type"] for r in rec].count("stopped") == 1
    decisions = [r for r in rec if r["type"] == "decision"]
    submitted = [r["job"] for r in decisions if r["decision"] == "submitted"]
    assert len(submitted) == len(set(submitted)) == stop["submitted"] >= 3
    assert len(decisions) < 500                                           # stopped early, not run to the end
    assert set(stop["in_flight"]) <= set(submitted)
    assert json.loads(out.decode().strip().splitlines()[-1]) == stop
