"""e2e: `dtlab operator` on real nodes (containerd + kubelet) next to a KWOK node, on the local plane.

A stage the plan puts on a real node must run the worker image doing the stage's work (the pod
`dtlab submit` makes there), not the KWOK delay pod, which a kubelet cannot complete. One DTJob
whose first stage is pinned to the real node and whose second is pinned to the KWOK node: it
reaches Succeeded, the real node's pod ran the worker image and exited 0, the KWOK pod is a delay.

Needs root and `make cluster-deps` (else skipped; failed under DTLAB_REQUIRE_HEAVY=1). About 1-2 minutes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.planes import local_plane

from dtlab.model import load_cluster, load_job
from dtlab.operator.crd import GROUP, PLURAL, VERSION
from dtlab.operator.spec import dtjob_for

REPO = Path(__file__).resolve().parents[2]
PLANE = f"opr{os.getpid() % 100000}"
NS = "dtlab"
CLUSTER_DOC = {
    "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "op-real"},
    "nodes": [
        {"name": "rn-amd", "arch": "amd64", "cores": 2, "speed": 1.0, "mem_gb": 4, "formats": ["native"], "zone": "za"},
        {"name": "kw-0", "arch": "amd64", "cores": 4, "speed": 1.0, "mem_gb": 8, "formats": ["native"], "zone": "za"},
    ]}
CLUSTER = load_cluster(CLUSTER_DOC)
JOB = load_job({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "op-real"}, "spec": {"stages": [
    {"id": "work", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 300}, "constraints": {"nodes": ["rn-amd"]}},
    {"id": "tail", "after": ["work"], "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 200},
     "constraints": {"nodes": ["kw-0"]}}]}}, CLUSTER)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with local_plane(tmp_path_factory, CLUSTER, PLANE, timeout=240, real_nodes=["rn-amd"]) as st:
        yield st


def test_operator_runs_the_worker_on_a_real_node_and_a_delay_on_kwok(plane, tmp_path):
    from kubernetes import client, config
    from dtlab.kube.realnodes import image_for

    a = config.new_client_from_config(config_file=plane["kubeconfig"])
    core, custom = client.CoreV1Api(a), client.CustomObjectsApi(a)
    try:
        core.create_namespace({"metadata": {"name": NS}})
    except client.ApiException as exc:
        assert exc.status == 409, exc
    log = open(tmp_path / "operator.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dtlab.cli", "operator", "--kubeconfig", plane["kubeconfig"],
                             "--identity", "op-real", "--resync-s", "0.3"], cwd=REPO, stdout=log, stderr=log,
                            env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        deadline = time.monotonic() + 60             # the operator installs the CRD at start
        while True:
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, dtjob_for(JOB, name="op-real"))
                break
            except client.ApiException as exc:
                assert exc.status == 404 and time.monotonic() < deadline and proc.poll() is None, \
                    (exc.status, (tmp_path / "operator.log").read_text()[-2000:])
                time.sleep(0.5)
        deadline, phase = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            d = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "op-real")
            phase = (d.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed", "Invalid"):
                break
            time.sleep(0.5)
        out = (tmp_path / "operator.log").read_text()[-3000:]
        assert phase == "Succeeded", (phase, d.get("status"), out)
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(NS, label_selector="dtlab.io/dtjob").items}
        real, kwok = pods["op-real-work-0"], pods["op-real-tail-0"]
        assert real.spec.node_name == "rn-amd" and kwok.spec.node_name == "kw-0"
        assert real.spec.containers[0].image == image_for("amd64", "native")
        assert "--iters" in (real.spec.containers[0].args or [])
        term = real.status.container_statuses[0].state.terminated
        assert term is not None and term.exit_code == 0, real.status
        assert not (kwok.spec.containers[0].args or [])
        st = d["status"]["stages"]
        print(f"\noperator on a real node: DTJob Succeeded; work on rn-amd ran {real.spec.containers[0].image} "
              f"(exit 0, observed {st['work'].get('observedMs')} ms), tail on kw-0 a KWOK delay "
              f"({st['tail'].get('observedMs')} ms)")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
