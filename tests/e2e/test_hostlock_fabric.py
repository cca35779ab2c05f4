"""Measurement isolation on the real fabric (issue 14): exclusive runs, cpusets, time scale, host noise.

* two ``dtlab run`` of a tiny V2 on the fabric started together: the second waits for the first,
  says so on stderr and records it in run.json (``host_lock.waited_s``); both carry ``host_noise``;
* a fabric puts its nodes on their own cpuset and this process on the others while open, and
  back when closed; a stage's kernel time in reference ms matches the twin's service time under the
  time scale; the noise record has CPU by part and the calibration re-check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import dtlab.fabric
from dtlab.fabric import cgroups
from tests.heavy import require

ROOT = Path(__file__).resolve().parents[2]
DTLAB = Path(sys.executable).with_name("dtlab")


@pytest.fixture(scope="module")
def fabric_ok():
    ok, why = dtlab.fabric.available()
    require(ok, f"fabric substrate unavailable: {why}")


def test_two_fabric_runs_started_together_the_second_waits(fabric_ok, tmp_path):
    params = {"substrate": "fabric", "fabric": {}, "jobs": 2, "seeds": [0], "samples": 8,
              "predictors": ["fast", "none"], "rate_per_s": 2.0, "substrate_opts": {"time_scale": 1.0}}
    pfile = tmp_path / "v2-tiny.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("DTLAB_HOSTLOCK_HELD",)}
    env["DTLAB_ROOT"] = str(ROOT)
    procs = [subprocess.Popen([str(DTLAB), "run", "V2", "-p", str(pfile), "--out", str(tmp_path / name), "-q",
                               "--force", "--lock-timeout", "600"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for name in ("a", "b")]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    infos = [json.loads(next((tmp_path / name / "V2").glob("*/run.json")).read_text()) for name in ("a", "b")]
    for info in infos:
        lock = info["host_lock"]
        assert lock["exclusive"] is True and lock["mode"] == "own" and "fabric" in lock["why"]
        assert info["substrate"] == "fabric" and info["substrate_metadata"]["exclusive"] is True
        noise = info["host_noise"]
        assert isinstance(noise["noisy"], bool) and noise["cpu_s"]["nodes"] > 0
    waited = [i for i, info in enumerate(infos) if info["host_lock"]["waited_s"] > 0]
    assert len(waited) == 1, [info["host_lock"] for info in infos]
    w = waited[0]
    other_pid = procs[1 - w].pid
    assert "waiting for the host lock" in outs[w][1] and "got the host lock after waiting" in outs[w][1]
    assert f"pid {other_pid}: dtlab run V2" in infos[w]["host_lock"]["waited_for"]
    # the waiter started measuring only after the first had finished
    first_end = infos[1 - w]["finished"]
    assert infos[w]["host_lock"]["waited_s"] >= 5 and first_end is not None


CLUSTER = {"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "iso"},
           "nodes": [{"name": "fast", "arch": "amd64", "cores": 2, "speed": 1.0, "formats": ["native", "wasm"], "zone": "z"},
                     {"name": "slow", "arch": "amd64", "cores": 1, "speed": 0.5, "formats": ["native", "wasm"], "zone": "z"}]}


def test_fabric_isolates_nodes_on_their_cpuset_and_records_noise(fabric_ok):
    from dtlab.model import cluster_from_dict, job_from_dict
    from dtlab.plan import Plan
    from dtlab.substrates import make_substrate

    cpus = cgroups.host_cpus()
    home = Path("/proc/self/cpuset").read_text().strip()
    cluster = cluster_from_dict(CLUSTER)
    job = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "iso-1"},
                         "spec": {"stages": [{"id": "a", "compute": {"cpu": 1, "duration_ms": 300}}]}})
    sub = make_substrate("fabric", cluster, seed=0, network=False, time_scale=2.0)
    try:
        meta = sub.metadata()
        assert meta["time_scale"] == 2.0 and meta["exclusive"] is True
        nodes, rest = cgroups.parse_cpus(meta["node_cpus"]), cgroups.parse_cpus(meta["rest_cpus"])
        if len(cpus) >= 2:
            assert meta["isolated"] is True and not set(nodes) & set(rest) and sorted(nodes + rest) == cpus
            assert os.sched_getaffinity(0) == set(rest)                 # the controller left the nodes' cores
            if sub._zygote is not None:                                 # the Wasm launcher lives on the nodes' cores
                status = Path(f"/proc/{sub._zygote.proc.pid}/status").read_text()
                allowed = next(l.split(":", 1)[1].strip() for l in status.splitlines() if l.startswith("Cpus_allowed_list"))
                assert cgroups.parse_cpus(allowed) == nodes
            assert meta["budget_cores"] <= len(nodes)                   # the node quotas fit their cores
        else:
            assert meta["isolated"] is False and "one core" in meta["isolation"]
        t0 = time.monotonic()
        sub.submit(Plan(job=job.name, policy="test", placement={"a": "slow"}, shadow={}, formats={"a": "native"}),
                   job)
        sub.advance(None)
        wall_s = time.monotonic() - t0
        stages = sub.results()["stages"]
    finally:
        sub.close()
    rec = stages.iloc[0]
    assert bool(rec["ok"])
    # 300 reference ms at speed 0.5 = 600 ms in reference time, 1200 ms of wall time at time scale 2
    assert 600 * 0.6 < rec["kernel_ms"] < 600 * 1.5, rec.to_dict()
    assert wall_s > 1.2 * 0.6
    assert Path("/proc/self/cpuset").read_text().strip() == home and os.sched_getaffinity(0) == set(cpus)
    for ctl in ("cpuset", "cpuacct"):
        base = cgroups.controller_dir(ctl)
        if base is not None:
            assert not [d for d in base.iterdir() if d.name.startswith(f"dtlab-{sub.fid}")]
    noise = sub.noise
    assert set(noise["cpu_s"]) == {"nodes", "relay", "controller", "plane"}
    # the stage's CPU work (300 ms x scale x time scale) was accounted to the nodes
    assert noise["cpu_s"]["nodes"] >= 0.3 * sub.scale * 2.0 * 0.8
    cal = noise["calibration"]
    assert cal["start"]["cpu_ratio"] > 0 and cal["end"]["cpu_ratio"] > 0 and "drift" in cal
    assert isinstance(noise["noisy"], bool) and noise["noisy"] == bool(noise["reasons"])
    from dtlab import energy                     # measured energy only where RAPL exists, else why not
    assert noise["rapl"]["available"] == energy.rapl_status()[0] and noise["rapl"]["why"]


def test_without_isolation_the_twin_is_told_the_shared_host(fabric_ok):
    from dtlab.model import cluster_from_dict
    from dtlab.substrates import make_substrate

    cluster = cluster_from_dict(CLUSTER)
    with make_substrate("fabric", cluster, seed=0, network=False, node_cpus="off") as sub:
        meta = sub.metadata()
        events = sub.events()
    assert meta["isolated"] is False and "isolation off" in meta["isolation"]
    slowdown = meta["shared_host_slowdown"]
    assert slowdown is not None and slowdown >= 1.0
    adds = {e["node"]["name"]: e["node"]["speed"] for e in events if e["kind"] == "node-add"}
    if slowdown > 1.02:     # a busy host: every node slower by the measured factor
        assert adds == {n.name: pytest.approx(n.speed / slowdown, rel=1e-3) for n in cluster.nodes}
    else:
        assert adds == {}
