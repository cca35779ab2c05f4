"""e2e: `dtlab trace record` a local control plane while a workload runs on it, then `dtlab trace replay` it.

The local plane (KWOK nodes from examples/cluster-hetero.yaml) runs 6 jobs through the kube
substrate while `dtlab trace record` (a subprocess, the real CLI) lists and watches it. The trace
must hold every node, every pod the workload created with its node, and each pod's transitions in
resourceVersion order; `dtlab trace replay` must replay every recorded pod through the twin and
report the recorded and the replayed node with the twin's predicted latency of both; `--substrate kube`
must re-create every recorded pod on the plane through the controller and see each complete.

Needs the binaries of `bash cluster/localplane/build.sh` (else skipped; failed under
DTLAB_REQUIRE_HEAVY=1). About a minute.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.planes import local_plane

from dtlab import load_cluster
from dtlab.controller import Controller
from dtlab.model import load_job
from dtlab.trace import objects, read_trace, recorded_pods
from dtlab.twin import Twin

REPO = Path(__file__).resolve().parents[2]
PLANE = f"trace-e2e-{os.getpid()}"
CLUSTER = load_cluster(REPO / "examples" / "cluster-hetero.yaml")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with local_plane(tmp_path_factory, CLUSTER, PLANE) as st:
        yield st


def test_record_a_running_workload_and_replay_it(plane, tmp_path):
    from dtlab.substrates import make_substrate

    trace = tmp_path / "run.trace"
    rec = subprocess.Popen([sys.executable, "-m", "dtlab.cli", "trace", "record", "--kubeconfig", plane["kubeconfig"],
                            "--duration", "40", "--out", str(trace)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60                  # start the workload once the recorder has listed pods
    while '"resource":"pods","resourceVersion"' not in (trace.read_text() if trace.exists() else ""):
        assert time.monotonic() < deadline and rec.poll() is None, rec.communicate()
        time.sleep(0.2)
    base = load_job(REPO / "examples" / "job-pipeline.yaml", CLUSTER)
    jobs = [base.scaled(0.3, name=f"trace-{i}") for i in range(6)]
    with make_substrate("kube", CLUSTER, kubeconfig=plane["kubeconfig"], start_plane=False, seed=1) as sub:
        ctl = Controller(Twin(CLUSTER), sub, policy="greedy", samples=32)
        ctl.run_workload([(300.0 * i, j) for i, j in enumerate(jobs)])
        assert sub.results()["jobs"]["ok"].all()
    assert rec.poll() is None, "the workload must finish while the recorder still runs (its lines are flushed as written)"
    out, err = rec.communicate(timeout=120)
    assert rec.returncode == 0, err
    assert "recorded" in out

    header, records = read_trace(trace)
    assert header["format"] == "dtlab-trace/v1" and header["duration_s"] == 40
    nodes = objects(records, "nodes")
    assert set(nodes) == {n.name for n in CLUSTER.nodes}
    pods = objects(records, "pods")
    mine = {uid: h for uid, h in pods.items()
            if (h[-1][2]["metadata"].get("annotations") or {}).get("dtlab.io/job-name", "").startswith("trace-")}
    end = trace.read_text().splitlines()[-1]
    assert len(mine) == sum(len(j.stages) for j in jobs), (len(pods), end, out, err[-2000:])  # every stage's pod once
    for uid, hist in mine.items():
        types = [t for _, t, _ in hist]
        assert types[0] == "ADDED" and "MODIFIED" in types             # created and moved while recording
        rvs = [int(o["metadata"]["resourceVersion"]) for _, _, o in hist]
        assert rvs == sorted(rvs), "transitions in resourceVersion order"
        assert hist[-1][2]["status"].get("phase") == "Succeeded"
        assert hist[-1][2]["spec"].get("nodeName") in CLUSTER.by_name
    df = recorded_pods(header, records)
    assert set(df["uid"]) >= set(mine)

    csv = tmp_path / "replay.csv"
    p = subprocess.run([sys.executable, "-m", "dtlab.cli", "trace", "replay", str(trace), "--policy", "cvar",
                        "--out", str(csv)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "pods replayed with cvar" in p.stdout
    rep = pd.read_csv(csv)
    ours = rep[rep["pod"].isin(df.loc[df["uid"].isin(mine), "pod"])]
    assert len(ours) == len(mine)
    assert ours["recorded_node"].isin(CLUSTER.by_name).all() and ours["replayed_node"].isin(CLUSTER.by_name).all()
    assert (ours["recorded_p95_ms"] > 0).all() and (ours["replayed_p95_ms"] > 0).all()
    # and onto the live plane: every recorded pod re-created there by the controller, and completed
    csv2 = tmp_path / "replay-kube.csv"
    p = subprocess.run([sys.executable, "-m", "dtlab.cli", "trace", "replay", str(trace), "--policy", "greedy",
                        "--substrate", "kube", "--kubeconfig", plane["kubeconfig"], "--out", str(csv2)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "onto the cluster" in p.stdout and "completed on the cluster" in p.stdout, p.stdout
    live = pd.read_csv(csv2)
    assert len(live) == len(rep) and live["ok"].all(), live[~live["ok"]]
    assert live["replayed_node"].isin(CLUSTER.by_name).all() and (live["observed_ms"] > 0).all()
    # the pods carry the twin's duration annotation, which the replay uses as the job's duration
    assert set(ours["duration_ms"]) <= {round(s.compute.duration_ms) for s in base.scaled(0.3).stages} | \
        {s.compute.duration_ms for s in base.scaled(0.3).stages}
