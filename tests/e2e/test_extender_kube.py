"""The twin as a scheduler extender of a REAL kube-scheduler (issue 6, item 4).

A local control plane (dtlab.kube.localplane, KWOK nodes named as in the example cluster)
runs; ``dtlab serve --extender`` serves the twin of the same cluster on loopback; a SECOND
kube-scheduler process (profile ``dtlab-scheduler``) is configured with the extender. The
twin's telemetry makes all but one big node busy, so the twin's prediction - and not the
scheduler's own LeastAllocated scoring, which prefers the 16-core node - decides where
unpinned pods go. Then the telemetry flips and the next pod follows it.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import dtlab
from dtlab.extender import EXPLANATION_ANNOTATION
from dtlab.kube import localplane
from tests.heavy import require
from tests.netutil import free_port, stop_group, wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILE = REPO / "examples" / "cluster-hetero.yaml"
PLANE = "dtlab-extender-e2e"
SCHEDULER = "dtlab-scheduler"
BIG = ("cloud-0", "cloud-1", "cloud-arm-0")   # the only nodes with > 4 cores: a 4.5-core pod fits nowhere else
BUSY = 0.95


def http_ok(url: str, ctx=None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        return r.status == 200


def post(url: str, body) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start(cmd, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log.parent)


def stop(p: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL after 10 s; reaped either way."""
    stop_group(p, grace_s=10)


def tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ok, why = localplane.binaries_available()
    require(ok, f"local control plane unavailable: {why}")
    from kubernetes import client, config as kconfig

    tmp = tmp_path_factory.mktemp("extender-e2e")
    cluster = dtlab.load_cluster(CLUSTER_FILE)
    procs: list[tuple[str, subprocess.Popen]] = []
    plane = localplane.up(cluster, name=PLANE, timeout=240)
    try:
        kc = plane["kubeconfig"]
        api_port, sched_port = free_port(), free_port()
        serve_log = tmp / "dtlab-serve.log"
        procs.append(("dtlab serve", start(
            [sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER_FILE), "--extender",
             "--kubeconfig", kc, "--insecure-dev", "--host", "127.0.0.1", "--port", str(api_port)], serve_log)))
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: http_ok(f"{base}/healthz"), 60, "dtlab serve /healthz", procs=procs)

        sched_cfg = tmp / "dtlab-scheduler.yaml"
        sched_cfg.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kc},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": SCHEDULER}],
            "extenders": [{"urlPrefix": f"{base}/extender", "filterVerb": "filter", "prioritizeVerb": "prioritize",
                           "weight": 100, "nodeCacheCapable": True, "enableHTTPS": False,
                           "httpTimeout": "10s", "ignorable": False}],
        }))
        sched_log = tmp / "kube-scheduler.log"
        binary = str(localplane.find_binaries()["kube-scheduler"])
        procs.append(("kube-scheduler", start(
            [binary, f"--config={sched_cfg}", f"--authentication-kubeconfig={kc}",
             f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
             "--profiling=false", "--v=2"], sched_log)))
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # its self-signed serving cert
        wait_for(lambda: http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure), 90,
                 "the dtlab-scheduler kube-scheduler /healthz", procs=procs)
        core = client.CoreV1Api(kconfig.new_client_from_config(config_file=kc))
        yield {"core": core, "base": base, "procs": procs, "logs": (serve_log, sched_log), "nodes": plane["nodes"]}
    finally:
        for _, p in reversed(procs):
            stop(p)
        localplane.down(PLANE)
    for name, p in procs:
        assert p.poll() is not None, f"{name} (pid {p.pid}) still running"
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)


def prefer(base: str, node: str) -> None:
    """Telemetry via the real /observe: every big node but ``node`` is busy."""
    now = time.time()
    body = post(f"{base}/observe", [{"kind": "telemetry", "node": n, "cpu_util": 0.0 if n == node else BUSY, "ts": now}
                                    for n in BIG])
    assert body["applied"] == len(BIG)


def pod_manifest(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "annotations": {"dtlab.io/duration-ms": "2000"}},
        "spec": {
            "schedulerName": SCHEDULER,   # unpinned: no nodeName, no nodeSelector
            "tolerations": [{"operator": "Exists"}],   # whatever KWOK/node-lifecycle taints a node with
            "containers": [{"name": "work", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "4500m", "memory": "256Mi"}}}],
        },
    }


def twin_scores(base: str, manifest: dict, nodes) -> dict[str, int]:
    prio = post(f"{base}/extender/prioritize", {"Pod": manifest, "NodeNames": list(nodes)})
    return {h["Host"]: h["Score"] for h in prio}


def bound_node(core, name: str, stack) -> str:
    def node_name():
        return core.read_namespaced_pod(name, "default").spec.node_name
    try:
        return wait_for(node_name, 60, f"pod {name} bound", procs=stack["procs"])
    except AssertionError as exc:
        logs = "\n".join(f"--- {p.name}:\n{tail(p)}" for p in stack["logs"])
        raise AssertionError(f"{exc}\n{logs}") from None


@pytest.mark.parametrize("target", ["cloud-1", "cloud-0"])
def test_pods_bound_where_the_twin_scores_highest(stack, target):
    core, base = stack["core"], stack["base"]
    prefer(base, target)
    name = f"twin-picks-{target}"
    manifest = pod_manifest(name)
    scores = twin_scores(base, manifest, stack["nodes"])
    best = max(scores.values())
    assert [n for n, s in scores.items() if s == best] == [target], scores   # the twin's unique favourite
    # the 16-core node is what the scheduler's own LeastAllocated scoring would pick; the twin says otherwise
    assert scores["cloud-arm-0"] < best

    core.create_namespaced_pod("default", manifest)
    try:
        assert bound_node(core, name, stack) == target
        pod = core.read_namespaced_pod(name, "default")
        explanation = json.loads(pod.metadata.annotations[EXPLANATION_ANNOTATION])
        # the annotation is the twin's per-node reasoning: only the feasible (filtered) big nodes, target best
        assert set(explanation) == set(BIG)
        assert max(explanation, key=lambda n: explanation[n]["score"]) == target
        assert explanation[target]["predicted_mean_ms"] < min(
            explanation[n]["predicted_mean_ms"] for n in BIG if n != target)
        # and it was the scheduler that asked: the extender logged both verbs for this pod
        served = stack["logs"][0].read_text(errors="replace")
        assert f"filter pod={name}" in served and f"prioritize pod={name}" in served
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
