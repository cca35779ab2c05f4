"""The extender over mutual TLS called by a REAL kube-scheduler (issue 17, item 4).

Same stack as test_extender_kube.py (local control plane with KWOK nodes, a second
kube-scheduler profile with the extender), but the extender is served only by the mutual-TLS
listener of `dtlab serve` and the scheduler's extender config authenticates the way it can:
``enableHTTPS`` + ``tlsConfig`` (client certificate, key, CA). The pod is bound where the twin
scores highest, and the extender logged the scheduler's filter and prioritize calls.
"""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time

import yaml

import dtlab
from dtlab.kube import localplane
from tests.e2e.test_extender_kube import BIG, BUSY, CLUSTER_FILE, SCHEDULER, http_ok, pod_manifest, start, stop, tail
from tests.heavy import require
from tests.netutil import free_port, wait_for
from tests.test_extender_mtls import make_pki

PLANE = "dtlab-extender-mtls-e2e"
TOKEN = "mtls-e2e"


def post(url: str, body, token: str | None = None) -> dict:
    import urllib.request
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_real_scheduler_calls_the_extender_over_mutual_tls(tmp_path, monkeypatch):
    ok, why = localplane.binaries_available()
    require(ok, f"local control plane unavailable: {why}")
    require(shutil.which("openssl") is not None, "the openssl CLI is needed to make test certificates")
    from kubernetes import client, config as kconfig

    pki = make_pki(tmp_path)
    monkeypatch.setenv("DTLAB_API_TOKEN", TOKEN)          # dtlab serve inherits it: /observe needs it
    monkeypatch.delenv("DTLAB_EXTENDER_SECRET", raising=False)
    procs: list[tuple[str, subprocess.Popen]] = []
    plane = localplane.up(dtlab.load_cluster(CLUSTER_FILE), name=PLANE, timeout=240)
    serve_log, sched_log = tmp_path / "dtlab-serve.log", tmp_path / "kube-scheduler.log"
    name = "twin-picks-over-mtls"
    core = None
    try:
        kc = plane["kubeconfig"]
        api_port, tls_port, sched_port = free_port(), free_port(), free_port()
        procs.append(("dtlab serve", start(
            [sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER_FILE), "--extender",
             "--kubeconfig", kc, "--host", "127.0.0.1", "--port", str(api_port),
             "--extender-tls-cert", str(pki / "server.crt"), "--extender-tls-key", str(pki / "server.key"),
             "--extender-client-ca", str(pki / "ca.crt"), "--extender-port", str(tls_port)], serve_log)))
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: http_ok(f"{base}/healthz"), 60, "dtlab serve /healthz", procs=procs)

        sched_cfg = tmp_path / "dtlab-scheduler.yaml"
        sched_cfg.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kc}, "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": SCHEDULER}],
            "extenders": [{"urlPrefix": f"https://127.0.0.1:{tls_port}/extender", "filterVerb": "filter",
                           "prioritizeVerb": "prioritize", "weight": 100, "nodeCacheCapable": True,
                           "enableHTTPS": True,
                           "tlsConfig": {"certFile": str(pki / "scheduler.crt"), "keyFile": str(pki / "scheduler.key"),
                                         "caFile": str(pki / "ca.crt")},
                           "httpTimeout": "10s", "ignorable": False}],
        }))
        binary = str(localplane.find_binaries()["kube-scheduler"])
        procs.append(("kube-scheduler", start(
            [binary, f"--config={sched_cfg}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
             "--bind-address=127.0.0.1", f"--secure-port={sched_port}", "--profiling=false", "--v=2"], sched_log)))
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        wait_for(lambda: http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure), 90,
                 "the dtlab-scheduler kube-scheduler /healthz", procs=procs)

        # the twin's telemetry (plain port, bearer token) makes cloud-1 the only idle big node
        target = "cloud-1"
        core = client.CoreV1Api(kconfig.new_client_from_config(config_file=kc))
        now = time.time()
        events = [{"kind": "telemetry", "node": n, "cpu_util": 0.0 if n == target else BUSY, "ts": now} for n in BIG]
        post(f"{base}/observe", events, TOKEN)
        core.create_namespaced_pod("default", pod_manifest(name))

        def node_name():
            return core.read_namespaced_pod(name, "default").spec.node_name
        try:
            bound = wait_for(node_name, 90, f"pod {name} bound", procs=procs)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- serve:\n{tail(serve_log)}\n--- scheduler:\n{tail(sched_log)}") from None
        assert bound == target
        served = serve_log.read_text(errors="replace")
        assert f"filter pod={name}" in served and f"prioritize pod={name}" in served
    finally:
        if core is not None:
            try:
                core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
            except Exception:  # noqa: BLE001 - the plane goes down next anyway
                pass
        for _, p in reversed(procs):
            stop(p)
        localplane.down(PLANE)
