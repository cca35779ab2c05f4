"""e2e: real kubelet nodes on containerd next to a KWOK node, on the local plane.

Four real nodes (amd64 native, arm64 and riscv64 through binfmt QEMU, one wasm node) and one
KWOK node: a job whose five stages are pinned one per node runs as real containers that exit 0
on the intended nodes; each worker reports `uname -m` from inside its container (checked
against the node's arch: the kubelet itself always reports the host's amd64), its exec path
(wazero for wasm) and its own ns start/end, which become the stage's observed times; the KWOK
stage says node_kind kwok. `dtlab submit --wait --json` prints the same per stage. A kubelet
SIGKILLed mid-stage -> node NotReady -> the stage moves to its shadow and the job completes.
`cluster down` leaves no process, mount, netns, bridge, cgroup or binfmt entry.

Needs root and `make cluster-deps` (else skipped; failed under DTLAB_REQUIRE_HEAVY=1).
Run: `pytest tests/e2e/test_realnodes.py -v` (about 1-2 minutes).
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

from tests.e2e.planes import core_api, local_plane

from dtlab.model import load_cluster, load_job
from dtlab.plan import Plan

REPO = Path(__file__).resolve().parents[2]
PLANE = f"rn{os.getpid() % 100000}"
GRACE_S = 8
CLUSTER_DOC = {
    "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "real-e2e"},
    "nodes": [
        {"name": "rn-amd", "arch": "amd64", "cores": 2, "speed": 1.0, "mem_gb": 4, "formats": ["native"], "zone": "za"},
        {"name": "rn-arm", "arch": "arm64", "cores": 2, "speed": 0.8, "mem_gb": 4, "formats": ["native"], "zone": "zb"},
        {"name": "rn-rv", "arch": "riscv64", "cores": 2, "speed": 0.5, "mem_gb": 4, "formats": ["native"],
         "zone": "zb"},
        {"name": "rn-wasm", "arch": "amd64", "cores": 2, "speed": 1.0, "mem_gb": 4, "formats": ["wasm"], "zone": "za"},
        {"name": "kw-0", "arch": "amd64", "cores": 4, "speed": 1.0, "mem_gb": 8, "formats": ["native"], "zone": "za"},
    ],
    "links": [{"a": "za", "b": "zb", "latency_ms": 10, "bandwidth_mbps": 100}]}
CLUSTER = load_cluster(CLUSTER_DOC)
REAL = ["rn-amd", "rn-arm", "rn-rv", "rn-wasm"]
UNAME = {"rn-amd": "x86_64", "rn-arm": "aarch64", "rn-rv": "riscv64", "rn-wasm": "x86_64"}
KERNEL_ARCH = {"rn-amd": "amd64", "rn-arm": "arm64", "rn-rv": "riscv64", "rn-wasm": "wasm32"}

pytestmark = pytest.mark.timeout(600)


def _job(name, stages):
    return load_job({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name},
                     "spec": {"stages": stages}}, CLUSTER)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    t0 = time.monotonic()
    with local_plane(tmp_path_factory, CLUSTER, PLANE, timeout=240, real_nodes=REAL, node_grace_s=GRACE_S) as st:
        print(f"\nplane with {len(REAL)} real nodes up in {time.monotonic() - t0:.1f} s "
              f"(real nodes Ready {st['real_ready_s']} s after their start)")
        yield st


@pytest.fixture(scope="module")
def core(plane):
    return core_api(plane)


def _substrate(plane):
    from dtlab.substrates.kube import KubeSubstrate
    return KubeSubstrate(CLUSTER, seed=0, kubeconfig=plane["kubeconfig"], plane=PLANE, start_plane=False,
                         drain_limit_s=180)


def test_status_says_which_node_is_which(plane, core):
    from dtlab.kube import localplane as lp
    s = lp.status(PLANE)
    assert s["running"] and s["node_kinds"] == {**{n: "real" for n in REAL}, "kw-0": "kwok"}
    assert all(p["alive"] for procs in s["real_nodes"].values() for p in procs.values())
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for name in REAL:
        n = nodes[name]
        assert n.metadata.labels["dtlab.io/node-kind"] == "real"
        assert n.metadata.labels["dtlab.io/arch"] == CLUSTER.node(name).arch      # the spec's, not the host's
        assert n.status.node_info.architecture == "amd64"                           # what the kubelet reports
        print(name, "kubernetes.io/arch label:", n.metadata.labels.get("kubernetes.io/arch"))
        assert n.status.node_info.kubelet_version == "v1.36.3"                          # a real kubelet
        assert n.status.node_info.container_runtime_version.startswith("containerd://")
    assert nodes["kw-0"].metadata.annotations.get("kwok.x-k8s.io/node") == "fake"


def test_job_runs_real_containers_on_the_intended_nodes(plane):
    stages = [{"id": f"s-{n}", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 300}}
              for n in [*REAL, "kw-0"]]
    job = _job("rn-all", stages)
    placement = {f"s-{n}": n for n in [*REAL, "kw-0"]}
    formats = {f"s-{n}": ("wasm" if n == "rn-wasm" else "native") for n in [*REAL, "kw-0"]}
    sub = _substrate(plane)
    try:
        sub.submit(Plan(job.name, "pinned", placement, {}, formats), job)
        sub.advance(None)
        status = sub.job_status(job.name)
        res = sub.results()
    finally:
        sub.close()
    assert status["ok"] is True, json.dumps(status, indent=1, default=str)
    for n in REAL:
        s = status["stages"][f"s-{n}"]
        assert s["phase"] == "succeeded" and s["node"] == n and s["node_kind"] == "real", s
        assert s["uname_m"] == UNAME[n], (n, s)
        assert s["kernel_arch"] == KERNEL_ARCH[n], (n, s)
        assert s["exec"] == ("wazero" if n == "rn-wasm" else "direct")
        # measured by the worker (ns clock), not the 1-s container status times
        assert 1.0 < s["observed_ms"] < 120_000 and s["observed_ms"] != round(s["observed_ms"] / 1000) * 1000
        assert s["startup_ms"] is not None and s["startup_ms"] > 0
        print(f"{n}: observed {s['observed_ms']:.1f} ms, start-up {s['startup_ms']:.0f} ms, uname {s['uname_m']}")
    kw = status["stages"]["s-kw-0"]
    assert kw["node_kind"] == "kwok" and kw["uname_m"] is None and kw["phase"] == "succeeded"
    assert res["jobs"]["node_kind"].tolist() == ["mixed"]
    assert set(res["stages"]["node_kind"]) == {"real", "kwok"}
    # energy proxy input (issue 23): a real native worker's own kernel CPU clock, as node-equivalent ms;
    # KWOK runs no code and keeps the planned time
    rows = res["stages"].set_index("node")
    for n in REAL:
        print(f"{n}: cpu_ms {rows.loc[n, 'cpu_ms']:.1f} ({rows.loc[n, 'cpu_source']}), "
              f"kernel_cpu_ms {rows.loc[n, 'kernel_cpu_ms']}")
        if n != "rn-wasm":
            assert rows.loc[n, "cpu_source"] == "measured" and rows.loc[n, "cpu_ms"] > 0, rows.loc[n].to_dict()
    assert rows.loc["kw-0", "cpu_source"] == "planned"


def test_submit_cli_prints_node_kind_observed_and_uname(plane, tmp_path):
    spec = {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "rn-cli"},
            "spec": {"stages": [{"id": "a", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 200},
                                 "constraints": {"nodes": ["rn-arm"]}},
                                {"id": "b", "after": ["a"], "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 200},
                                 "constraints": {"nodes": ["rn-amd"]}}]}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "dtlab.cli", "submit", str(path), "--substrate", "kube", "--plane", PLANE,
                        "--policy", "greedy", "--wait", "--json", "--timeout", "120"],
                       capture_output=True, text=True, timeout=240, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["ok"] is True
    a, b = out["stages"]["a"], out["stages"]["b"]
    assert (a["node"], a["node_kind"], a["uname_m"]) == ("rn-arm", "real", "aarch64")
    assert (b["node"], b["node_kind"], b["uname_m"]) == ("rn-amd", "real", "x86_64")
    assert a["observed_ms"] > 0 and b["start_ms"] >= a["end_ms"]


def test_kube_scheduler_policy_lets_the_real_scheduler_place_pods(plane, core):
    from dtlab.twin import Twin
    stages = [{"id": f"u{i}", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 200},
               "constraints": {"nodes": ["rn-amd", "rn-arm", "rn-rv"]}} for i in range(3)]
    job = _job("rn-sched", stages)
    plan = Twin(CLUSTER).plan(job, policy="kube-scheduler", samples=16, seed=0)
    sub = _substrate(plane)
    try:
        sub.submit(plan, job)
        sub.advance(None)
        status = sub.job_status(job.name)
        pods = {s["pod"]: core.read_namespaced_pod(s["pod"], "dtlab") for s in status["stages"].values()}
    finally:
        sub.close()
    assert status["ok"] is True, status
    for sid, s in status["stages"].items():
        pod = pods[s["pod"]]
        assert pod.spec.scheduler_name == "default-scheduler" and pod.spec.node_name == s["node"]
        assert s["node"] in ("rn-amd", "rn-arm", "rn-rv") and s["node_kind"] == "real"
        assert s["uname_m"] == UNAME[s["node"]], s          # dtlab/worker:node is each node's own arch
    print("kube-scheduler placed:", {k: v["node"] for k, v in status["stages"].items()})


def test_kube_scheduler_with_the_dt_extender_in_its_loop(plane, core, tmp_path):
    import socket
    import urllib.request
    from dtlab.kube import localplane as lp
    from dtlab.twin import Twin
    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump(CLUSTER_DOC))
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    srv = subprocess.Popen([sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(spec), "--port", str(port),
                            "--extender", "--insecure-dev", "--kubeconfig", plane["kubeconfig"]],
                           cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and srv.poll() is None, "dtlab serve did not start"
                time.sleep(0.3)
        lp.start_extender_scheduler(f"http://127.0.0.1:{port}", PLANE)
        job = _job("rn-ext", [{"id": "e", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 200},
                               "constraints": {"nodes": ["rn-amd", "rn-arm"]}}])
        plan = Twin(CLUSTER).plan(job, policy="kube-scheduler+extender", samples=16, seed=0)
        sub = _substrate(plane)
        try:
            sub.submit(plan, job)
            sub.advance(None)
            status = sub.job_status(job.name)
            pod = core.read_namespaced_pod(status["stages"]["e"]["pod"], "dtlab")
        finally:
            sub.close()
    finally:
        lp.stop_extender_scheduler(PLANE)
        srv.terminate()
        srv.wait(timeout=30)
    assert status["ok"] is True, status
    assert pod.spec.scheduler_name == "dtlab-extender" and pod.spec.node_name in ("rn-amd", "rn-arm")
    expl = (pod.metadata.annotations or {}).get("dtlab.io/explanation")
    assert expl, "the extender did not annotate its decision on the pod"
    print("extender placed e on", pod.spec.node_name, "explanation:", expl[:200])


def test_killed_kubelet_moves_the_stage_to_its_shadow(plane, core):
    """node-failure on a real node = SIGKILL its kubelet (through the substrate's inject); the
    substrate restarts it when it closes (the fault had no duration) and the node is Ready again."""
    job = _job("rn-kill", [{"id": "long", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 6000}}])
    sub = _substrate(plane)
    try:
        sub.submit(Plan(job.name, "pinned", {"long": "rn-wasm"}, {"long": "rn-amd"}, {"long": "wasm"}), job)
        deadline = time.monotonic() + 90
        while sub.job_status(job.name)["stages"]["long"]["phase"] != "running":
            assert time.monotonic() < deadline, sub.job_status(job.name)
            time.sleep(0.1)
        t_kill = time.monotonic()
        sub.inject({"kind": "node-failure", "at_s": 0, "selector": {"names": ["rn-wasm"]}})
        sub.advance(None)
        status = sub.job_status(job.name)
        res = sub.results()
        ready = {c.type: c.status for c in core.read_node("rn-wasm").status.conditions}["Ready"]
    finally:
        sub.close()
    print(f"kubelet killed -> job done in {time.monotonic() - t_kill:.1f} s")
    assert status["ok"] is True, status
    s = status["stages"]["long"]
    assert s["node"] == "rn-amd" and s["attempt"] == 1 and s["node_kind"] == "real" and s["uname_m"] == "x86_64"
    first = res["stages"][res["stages"]["attempt"] == 0].iloc[0]
    assert first["node"] == "rn-wasm" and first["reason"] == "node-down"
    assert ready != "True"
    after = {c.type: c.status for c in core.read_node("rn-wasm").status.conditions}["Ready"]
    assert after == "True", "the substrate did not restart the kubelet it killed"


def test_zz_down_leaves_nothing(plane):
    from dtlab.kube import localplane as lp
    from dtlab.kube import realnodes
    recs, binfmt = plane["real_nodes"], lp.load_state(PLANE)["binfmt"]
    assert binfmt["entries"], "the plane registered no binfmt entry"
    lp.down(PLANE)
    assert realnodes.leftovers(recs, binfmt) == []
    wd = plane["workdir"]
    procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    mine = []
    for p in procs:
        try:
            if wd.encode() in (p / "cmdline").read_bytes():
                mine.append(p.name)
        except OSError:
            pass
    assert mine == []
    assert not [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if wd in ln]
    for r in recs:
        assert not Path(f"/sys/class/net/{r['bridge']}").exists()
        assert not any(Path(c).exists() for c in r["cgroups"])
    for e in binfmt["entries"]:
        assert not (realnodes.BINFMT_DIR / e).exists()
    assert list(Path("/sys/fs/cgroup").glob(f"*/dtlab-{PLANE}-*")) == []     # every hierarchy, unified too
