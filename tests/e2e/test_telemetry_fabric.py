"""Telemetry in the loop on the fabric (issue 20): per-node cgroup exporters, a real Prometheus, the poller.

* A CPU hog started in one fabric node's cgroup *outside dtlab* shows up in the twin's state
  within 2 s via Prometheus, and the next plan avoids that node.
* Prometheus stopped -> plans are refused as stale within ``freshness_s`` (with the reason),
  and resume when it is back.

Needs root (the fabric) and Debian's ``prometheus`` (``make test-deps``). Time scale 1, so the
fabric's clock is the wall clock and the 1 s budget means one wall second.
"""
import shutil
import subprocess
import sys
import time

import pytest

from dtlab.controller import REFUSED_STALE, SUBMITTED, Controller
from dtlab.model import cluster_from_dict, job_from_dict
from dtlab.telemetry import PrometheusClient, TelemetryPoller
from dtlab.twin import Twin
from tests.heavy import require

CLUSTER = {
    "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "tele2"},
    "nodes": [
        {"name": "fast-0", "arch": "amd64", "cores": 1, "speed": 1.0, "formats": ["native"], "zone": "cloud"},
        {"name": "slow-0", "arch": "amd64", "cores": 1, "speed": 0.7, "formats": ["native"], "zone": "cloud"},
    ],
}
FRESHNESS_S = 1.0


def job(i: int):
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": f"j{i}"},
                          "spec": {"stages": [{"id": "s", "compute": {"cpu": 0.5, "duration_ms": 50}}]}})


@pytest.fixture(scope="module")
def loop():
    from dtlab.fabric import available
    ok, why = available()
    require(ok, f"fabric unavailable: {why}")
    require(shutil.which("prometheus") is not None, "Prometheus not installed (make test-deps)")
    from dtlab.substrates import make_substrate

    sub = make_substrate("fabric", cluster_from_dict(CLUSTER), seed=1, host_cores=0.5, network=False,
                         time_scale=1, telemetry="prometheus", scrape_interval_s=0.5, lock_timeout_s=600)
    poller = None
    try:
        twin = Twin(sub.cluster())
        twin.state.apply_many(sub.events())
        poller = TelemetryPoller(PrometheusClient(sub.prometheus_url, timeout_s=1.0), interval_s=0.5,
                                 clock=sub.ts_of_epoch).start()
        ctl = Controller(twin, sub, policy="greedy", predictor="fast", samples=64, freshness_s=FRESHNESS_S,
                         telemetry=poller)
        deadline = time.monotonic() + 30
        while True:          # both nodes reporting, fresh
            ctl.sync()
            snap = twin.state.snapshot()
            ages = [snap.telemetry_age_s(n, sub.now_ms() / 1000) for n in ("fast-0", "slow-0")]
            if all(a is not None and a <= FRESHNESS_S for a in ages):
                break
            assert time.monotonic() < deadline, f"no fresh telemetry within 30 s (ages {ages}, {poller.last_error})"
            time.sleep(0.1)
        yield sub, twin, ctl, poller
    finally:
        if poller is not None:
            poller.stop()
        sub.close()


def test_hog_outside_dtlab_reaches_the_twin_within_2s_and_the_next_plan_avoids_it(loop):
    sub, twin, ctl, _ = loop
    plan = ctl.step(job(0))
    assert plan is not None and plan.placement == {"s": "fast-0"}, ctl.records[-1]
    util0 = twin.state.snapshot().nodes["fast-0"].cpu_util
    assert util0 < 0.3, f"fast-0 busy before the hog: {util0}"
    paths = sub.node_cgroup_procs("fast-0")
    hog = subprocess.Popen(["/bin/sh", "-c", 'for f in $0; do echo $$ > "$f" || exit 3; done; exec "$@"',
                            " ".join(paths), sys.executable, "-c", "while True: pass"])
    t0 = time.monotonic()
    try:
        seen = None
        while time.monotonic() - t0 < 5:
            ctl.sync()
            if twin.state.snapshot().nodes["fast-0"].cpu_util > 0.8:
                seen = time.monotonic() - t0
                break
            time.sleep(0.05)
        assert hog.poll() is None, "the hog did not start in the node's cgroup"
        assert seen is not None and seen <= 2.0, f"hog seen after {seen} s (util {twin.state.snapshot().nodes['fast-0'].cpu_util})"
        assert twin.state.snapshot().nodes["slow-0"].cpu_util < 0.3
        plan = ctl.step(job(1))
        assert plan is not None and plan.placement == {"s": "slow-0"}, ctl.records[-1]
        print(f"hog visible in the twin after {seen:.2f} s (fast-0 cpu_util "
              f"{twin.state.snapshot().nodes['fast-0'].cpu_util:.2f}); next plan on {plan.placement['s']}")
    finally:
        hog.kill()
        hog.wait()


def test_prometheus_stopped_refuses_stale_plans_then_resumes(loop):
    sub, twin, ctl, poller = loop
    sub.advance(None)
    assert ctl.step(job(10)) is not None and ctl.records[-1]["decision"] == SUBMITTED
    sub.prometheus.stop()
    t0 = time.monotonic()
    refused_after = None
    i = 11
    while time.monotonic() - t0 < FRESHNESS_S + 3:
        ctl.step(job(i))
        i += 1
        if ctl.records[-1]["decision"] == REFUSED_STALE:
            refused_after = time.monotonic() - t0
            break
        time.sleep(0.1)
    assert refused_after is not None and refused_after <= FRESHNESS_S + 0.2, refused_after
    print(f"Prometheus stopped: first stale refusal after {refused_after:.2f} s")
    rec = ctl.records[-1]
    assert "older than the 1 s freshness budget" in rec["error"] and "unreachable" in rec["error"], rec["error"]
    sub.prometheus.start()
    t1 = time.monotonic()
    while time.monotonic() - t1 < 30:
        ctl.step(job(i))
        i += 1
        if ctl.records[-1]["decision"] == SUBMITTED:
            break
        time.sleep(0.2)
    assert ctl.records[-1]["decision"] == SUBMITTED, ctl.records[-1]
    assert poller.last_error is None
    print(f"Prometheus back: plans submitted again after {time.monotonic() - t1:.2f} s")


def test_neighbours_option_puts_a_hog_on_the_node_that_telemetry_sees():
    """``substrate_opts.neighbours``: the hog joins fast-0's cgroup at t=0 outside dtlab (what V2's
    with/without-telemetry runs rely on); the exporters see it as fast-0's background, not slow-0's,
    every node is a telemetry source, and closing the substrate ends the hog."""
    import os

    from dtlab.fabric import available
    from dtlab.substrates import make_substrate
    ok, why = available()
    require(ok, f"fabric unavailable: {why}")
    require(shutil.which("prometheus") is not None, "Prometheus not installed (make test-deps)")
    sub = make_substrate("fabric", cluster_from_dict(CLUSTER), seed=2, host_cores=0.5, network=False, time_scale=1,
                         telemetry="prometheus", neighbours=[{"node": "fast-0", "at_s": 0}], lock_timeout_s=600)
    try:
        poller = TelemetryPoller(PrometheusClient(sub.prometheus_url, timeout_s=1.0), clock=sub.ts_of_epoch)
        twin = Twin(sub.cluster())
        deadline, util = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            poller.poll_once()
            twin.state.apply_many(poller.events())
            util = {n: s.cpu_util for n, s in twin.state.snapshot().nodes.items()}
            if util["fast-0"] > 0.8:
                break
            time.sleep(0.2)
        assert util["fast-0"] > 0.8 and util["slow-0"] < 0.3, util
        assert poller.sources == ["fast-0", "slow-0"]
        assert [h["node"] for h in sub.neighbours_started] == ["fast-0"]
        pid = sub.neighbours_started[0]["pid"]
    finally:
        sub.close()
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
