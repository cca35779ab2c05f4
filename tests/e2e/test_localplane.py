"""e2e: the local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, KWOK) comes up, registers labelled KWOK nodes, runs a pinned pod
to completion, and `down` leaves no process and no port behind.

Needs the binaries from `bash cluster/localplane/build.sh` (else skipped, or
failed when DTLAB_REQUIRE_HEAVY=1). Run: `pytest tests/e2e/test_localplane.py -v`.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.heavy import require  # tests/ is importable: pytest pythonpath = ["."]

from dtlab.kube import localplane as lp

NODES = [
    {"name": "cloud-0", "arch": "amd64", "cores": 8, "speed": 1.0, "mem_gb": 32,
     "formats": ["native", "wasm"], "zone": "cloud", "labels": {"dtlab.io/tier": "cloud"}},
    {"name": "cloud-1", "arch": "amd64", "cores": 8, "speed": 1.0, "mem_gb": 32,
     "formats": ["native", "wasm"], "zone": "cloud", "labels": {}},
    {"name": "edge-0", "arch": "arm64", "cores": 4, "speed": 0.6, "mem_gb": 8,
     "formats": ["native", "qemu", "wasm"], "zone": "edge-a", "labels": {}},
    {"name": "edge-1", "arch": "arm64", "cores": 4, "speed": 0.6, "mem_gb": 8,
     "formats": ["native", "qemu", "wasm"], "zone": "edge-a", "labels": {}},
    {"name": "edge-2", "arch": "riscv64", "cores": 2, "speed": 0.3, "mem_gb": 2.5,
     "formats": ["qemu", "wasm"], "zone": "edge-b", "labels": {}},
    {"name": "edge-3", "arch": "riscv64", "cores": 2, "speed": 0.3, "mem_gb": 2,
     "formats": ["qemu"], "zone": "edge-b", "labels": {}},
]

pytestmark = pytest.mark.timeout(600)
PLANE = f"e2e-{os.getpid()}"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    ok, why = lp.binaries_available()
    require(ok, why)
    require(importlib.util.find_spec("kubernetes") is not None, "the `kubernetes` client is not installed")
    workdir = tmp_path_factory.mktemp("localplane")
    st = lp.up(NODES, workdir, name=PLANE, timeout=180)
    try:
        yield st
    finally:
        lp.down(PLANE)  # no-op if test_zz_down_leaves_nothing already did it


@pytest.fixture(scope="module")
def core(plane):
    from kubernetes import client, config
    return client.CoreV1Api(config.new_client_from_config(config_file=plane["kubeconfig"]))


def test_status_and_version(plane):
    s = lp.status(PLANE)
    assert s["running"] and s["apiserver_ready"], s
    assert s["nodes_ready"] == len(NODES)
    out = subprocess.run([plane["bins"]["kubectl"], "--kubeconfig", plane["kubeconfig"],
                          "version", "-o", "json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f'"gitVersion": "v{lp.K8S_VERSION}"' in out.stdout  # client and server


def test_nodes_ready_with_labels(core):
    from kubernetes.utils import parse_quantity
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(nodes) == {n["name"] for n in NODES}
    for spec in NODES:
        n = nodes[spec["name"]]
        lab = n.metadata.labels
        assert lab["kubernetes.io/arch"] == spec["arch"]
        assert lab["topology.kubernetes.io/zone"] == spec["zone"]
        assert lab["feature.node.kubernetes.io/cpu-model.vendor_id"]
        for f in ("native", "qemu", "wasm"):
            assert (lab.get(f"dtlab.io/format-{f}") == "true") == (f in spec["formats"]), (spec, lab)
        for k, v in spec["labels"].items():
            assert lab[k] == v
        assert parse_quantity(n.status.capacity["cpu"]) == spec["cores"]
        assert parse_quantity(n.status.allocatable["memory"]) == int(round(spec["mem_gb"] * 1024)) * 2**20
        assert n.status.node_info.architecture == spec["arch"]
        ready = [c for c in n.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True"


def _wait_phase(core, name, ns, phases, timeout=60):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        p = core.read_namespaced_pod(name, ns)
        if not seen or seen[-1] != p.status.phase:
            seen.append(p.status.phase)
        if p.status.phase in phases:
            return p, seen
        time.sleep(0.2)
    raise AssertionError(f"pod {ns}/{name} never reached {phases}; phases seen: {seen}")


def test_pinned_pod_runs_then_completes(core):
    name = f"stage-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"dtlab.io/job": "e2e"},
                     "annotations": {lp.COMPLETE_DELAY_ANNOTATION: "3s"}},
        "spec": {"nodeName": "edge-0", "restartPolicy": "Never",
                 "containers": [{"name": "work", "image": "busybox"}]},
    }
    core.create_namespaced_pod("default", pod)
    p, seen = _wait_phase(core, name, "default", {"Running", "Succeeded", "Failed"})
    assert p.status.phase == "Running", seen
    t_run = time.monotonic()
    p, seen2 = _wait_phase(core, name, "default", {"Succeeded", "Failed"}, timeout=60)
    assert p.status.phase == "Succeeded", seen + seen2
    assert time.monotonic() - t_run >= 1.5  # the 3 s delay was honoured (poll slack)
    assert p.spec.node_name == "edge-0"
    term = p.status.container_statuses[0].state.terminated
    assert term is not None and term.exit_code == 0


def _node_ready(core, name) -> bool:
    n = core.read_node(name)
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])


def _until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s: {what}")


def test_failed_node_goes_not_ready_and_evicts(core):
    from kubernetes.client.rest import ApiException
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "victim"},
           "spec": {"nodeName": "edge-3", "restartPolicy": "Never",
                    "containers": [{"name": "work", "image": "busybox"}]}}
    core.create_namespaced_pod("default", pod)
    _wait_phase(core, "victim", "default", {"Running"})
    lp.set_node_failed("edge-3", True, name=PLANE)
    _until(lambda: not _node_ready(core, "edge-3"), 20, "edge-3 NotReady")
    taints = core.read_node("edge-3").spec.taints or []
    assert any(t.key == "node.kubernetes.io/not-ready" for t in taints), taints

    def gone():
        try:
            core.read_namespaced_pod("victim", "default")
            return False
        except ApiException as e:
            return e.status == 404
    _until(gone, 30, "pod on the failed node evicted (5 s toleration)")
    lp.set_node_failed("edge-3", False, name=PLANE)
    _until(lambda: _node_ready(core, "edge-3"), 20, "edge-3 Ready again")


def test_apiserver_crash_and_restart(plane, core):
    old = lp.status(PLANE)["components"]["kube-apiserver"]["pid"]
    lp.stop_component("kube-apiserver", name=PLANE)  # SIGKILL
    assert not lp.status(PLANE)["components"]["kube-apiserver"]["alive"]
    lp.start_component("kube-apiserver", name=PLANE)
    s = lp.status(PLANE)
    assert s["components"]["kube-apiserver"]["pid"] != old and s["apiserver_ready"]
    assert s["ports"]["kube-apiserver"] == plane["ports"]["kube-apiserver"]  # same kubeconfig works
    _until(lambda: lp.status(PLANE)["nodes_ready"] == len(NODES), 30, "all nodes Ready after restart")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_zz_down_leaves_nothing(plane):
    """Runs last in this module (name order is file order in pytest; kept last on purpose)."""
    pids = [p["pid"] for p in plane["processes"].values()]
    ports = list(plane["ports"].values())
    lp.down(PLANE)
    assert lp.status(PLANE) == {"running": False, "name": PLANE}
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX", pid
    assert all(_port_free(p) for p in ports), ports
