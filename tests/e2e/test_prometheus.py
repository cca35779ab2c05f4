"""A real Prometheus scrapes dtlab's /metrics and a node exporter; the twin reads CPU telemetry back.

Needs Debian's `prometheus` and `prometheus-node-exporter` (installed by `make test-deps`).
"""
import shutil
import subprocess
from pathlib import Path

import pytest

import dtlab
from dtlab.api import ApiConfig, create_app
from dtlab.plan import Plan
from dtlab.telemetry import PrometheusClient, StaleTelemetry, check_fresh
from tests.heavy import require
from tests.netutil import free_port, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(shutil.which("prometheus") is not None and shutil.which("prometheus-node-exporter") is not None,
            "Prometheus not installed (apt-get install prometheus prometheus-node-exporter)")
    from dtlab.api.asgi import BackgroundServer, ServiceFront

    tmp = tmp_path_factory.mktemp("prom")
    twin = dtlab.Twin(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))
    api_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    server = BackgroundServer(ServiceFront(create_app(twin, ApiConfig(token="t"))), "127.0.0.1", api_port)
    procs = [subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{exporter_port}",
                               "--collector.disable-defaults", "--collector.cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    config = tmp / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: dtlab
    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]
  - job_name: node
    static_configs: [{{targets: ['127.0.0.1:{exporter_port}'], labels: {{dtlab_node: cloud-0}}}}]
""")
    procs.append(subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    client = PrometheusClient(f"http://127.0.0.1:{prom_port}")
    try:
        wait_for(lambda: len([r for r in client.query("up == 1")]) == 2, 40, "both targets up")
        yield twin, client, exporter_port
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.close()


def test_prometheus_scrapes_dtlab_metrics(stack):
    twin, client, _ = stack
    twin.state.apply({"kind": "node-cordon", "node": "edge-b-1"})
    version = twin.state.version
    result = wait_for(lambda: [v for _, _, v in client.query("dtlab_state_version") if v == version], 20,
                      "state version scraped")
    assert result == [version]


def test_node_cpu_telemetry_reaches_the_state_and_freshness_is_enforced(stack):
    twin, client, exporter_port = stack
    mapping = {f"127.0.0.1:{exporter_port}": "cloud-0"}
    events = wait_for(lambda: client.node_cpu_events(mapping, window="5s"), 30, "node cpu rate")
    assert len(events) == 1 and 0.0 <= events[0]["cpu_util"] <= 1.0
    twin.state.apply_many(events)
    snap = twin.state.snapshot()
    assert snap.nodes["cloud-0"].telemetry_ts == events[0]["ts"]
    plan = Plan(job="j", policy="greedy", placement={"s": "cloud-0"})
    check_fresh(plan, snap, budget_s=30.0)  # fresh: no error
    with pytest.raises(StaleTelemetry, match=r"cloud-0 \(\d+\.\d s old\)"):
        check_fresh(plan, snap, budget_s=1.0, now=events[0]["ts"] + 5)
    with pytest.raises(StaleTelemetry, match="edge-a-0 \\(never reported\\)"):
        check_fresh(Plan(job="j", policy="greedy", placement={"s": "edge-a-0"}), snap)


def test_prometheus_errors_are_clear(stack):
    _, client, _ = stack
    from dtlab.telemetry import TelemetryError
    with pytest.raises(TelemetryError, match="query failed"):
        client.query("rate(")
    with pytest.raises(TelemetryError, match="unreachable"):
        PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=1).query("up")
