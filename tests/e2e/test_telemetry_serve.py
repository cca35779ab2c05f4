"""`dtlab serve --prometheus URL` with a real Prometheus scraping a real exporter process (issue 20).

The exporter (dtlab/fabric/exporter.py, its own process) reads a directory laid out like a
node's cgroup, so this needs no root: what is under test is the path exporter -> Prometheus ->
the server's poller -> the twin's state -> /plan refusing on stale telemetry (503) and
answering again when Prometheus is back. The fabric e2e (test_telemetry_fabric.py) covers real cgroups.
"""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import dtlab.fabric.exporter as exporter_module
from dtlab.telemetry import PrometheusProcess
from tests.heavy import require
from tests.netutil import free_port, stop_group, wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTER = {"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "t"},
           "nodes": [{"name": "a", "arch": "amd64", "cores": 1, "speed": 1.0, "formats": ["native"], "zone": "z"}]}
JOB = {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j"},
       "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 10}}]}}


@pytest.fixture
def stack(tmp_path):
    require(shutil.which("prometheus") is not None, "Prometheus not installed (make test-deps)")
    import json
    node = tmp_path / "cg"
    node.mkdir()
    (node / "cpuacct.usage").write_text("0")
    exp = subprocess.Popen([sys.executable, exporter_module.__file__, "--node", "a", "--cpu-dir", str(node),
                            "--capacity-cores", "1", "--max-s", "120"], stdout=subprocess.PIPE, text=True)
    port = exp.stdout.readline().strip()
    prom = PrometheusProcess({"a": f"127.0.0.1:{port}"}, 0.25, workdir=tmp_path / "prom").start()
    (tmp_path / "cluster.json").write_text(json.dumps(CLUSTER))
    api = free_port()
    server = subprocess.Popen([str(REPO / ".venv/bin/dtlab") if (REPO / ".venv/bin/dtlab").exists() else "dtlab",
                               "serve", "--cluster", str(tmp_path / "cluster.json"), "--port", str(api),
                               "--prometheus", prom.url, "--poll-s", "0.25"],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, DTLAB_API_TOKEN="t"))
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{api}/healthz", timeout=1).ok, 30, "dtlab serve up",
                 procs=[("dtlab serve", server)])
        yield f"http://127.0.0.1:{api}", prom, node
    finally:
        stop_group(server)
        prom.close()
        exp.kill()
        exp.wait()


def test_serve_polls_prometheus_and_refuses_plans_on_stale_telemetry(stack):
    url, prom, node = stack
    plan = lambda: requests.post(f"{url}/plan", json={"job": JOB, "samples": 16}, timeout=10)  # noqa: E731
    wait_for(lambda: plan().status_code == 200, 20, "a fresh plan")
    # background load in the node's cgroup (not in a stage sub-group): one core busy from now on
    t = time.time()
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            tmp = node / "usage.tmp"
            tmp.write_text(str(int((time.time() - t) * 1e9)))
            os.replace(tmp, node / "cpuacct.usage")
            time.sleep(0.02)
    threading.Thread(target=busy, daemon=True).start()
    try:
        wait_for(lambda: [n for n in requests.get(f"{url}/snapshot", timeout=5).json()["nodes"]
                          if n["cpu_util"] > 0.8], 10, "background CPU in the snapshot", interval_s=0.05)
        assert time.time() - t < 2.0
    finally:
        stop.set()
    prom.stop()
    t0 = time.monotonic()
    body = wait_for(lambda: (lambda r: r.json() if r.status_code == 503 else None)(plan()), 10, "a stale refusal",
                    interval_s=0.05)      # (a Response is falsy when not ok: return its body)
    assert time.monotonic() - t0 <= 1.0 + 0.6      # the 1 s budget + one poll and one request
    assert body["field"] == "telemetry" and "older than the 1 s freshness budget" in body["error"], body
    prom.start()
    wait_for(lambda: plan().status_code == 200, 30, "plans again after Prometheus is back")
