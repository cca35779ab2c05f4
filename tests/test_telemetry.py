"""Unit tests of the telemetry pieces (issue 20) that need no root and no Prometheus.

The real thing (exporters reading fabric cgroups, a real Prometheus, the controller refusing
stale plans) is tested in tests/e2e/test_telemetry_fabric.py; here the exporter reads a
directory laid out like a cgroup, and the poller a stub client.
"""
import urllib.request

import pytest

from dtlab.controller import REFUSED_STALE, SUBMITTED, Controller
from dtlab.errors import DtlabError, SpecError
from dtlab.fabric.exporter import NodeReader, serve
from dtlab.model import cluster_from_dict, job_from_dict
from dtlab.state import ClusterState
from dtlab.substrates import make_substrate
from dtlab.telemetry import TelemetryError, TelemetryPoller, prometheus_config
from dtlab.twin import Twin

CLUSTER = {"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "t"},
           "nodes": [{"name": "a", "arch": "amd64", "cores": 1, "speed": 1.0, "formats": ["native"], "zone": "z"}]}


def _usage(d, seconds):
    d.mkdir(exist_ok=True)
    (d / "cpuacct.usage").write_text(str(int(seconds * 1e9)))


def test_exporter_placed_counter_survives_vanishing_stage_groups(tmp_path):
    node = tmp_path / "a"
    _usage(node, 10.0)
    _usage(node / "stage-1", 3.0)
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "memory.usage_in_bytes").write_text("4096")
    r = NodeReader("a", node, 0.25, tmp_path / "mem")
    text = r.metrics()
    assert 'dtlab_node_cpu_seconds_total{node="a"} 10.0' in text
    assert 'dtlab_node_placed_cpu_seconds_total{node="a"} 3.0' in text
    assert 'dtlab_node_cpu_capacity_cores{node="a"} 0.25' in text
    assert 'dtlab_node_memory_bytes{node="a"} 4096' in text
    # the stage finished and its group was removed: its CPU stays counted as placed
    _usage(node, 11.0)
    (node / "stage-1" / "cpuacct.usage").unlink()
    (node / "stage-1").rmdir()
    _usage(node / "stage-2", 0.5)
    assert r.placed_s() == pytest.approx(3.5)
    # the node's cgroup gone: no samples at all (Prometheus marks the series stale)
    for f in node.rglob("cpuacct.usage"):
        f.unlink()
    assert r.metrics() == ""


def test_exporter_serves_metrics_over_http_on_loopback(tmp_path):
    _usage(tmp_path / "a", 2.0)
    server = serve(NodeReader("a", tmp_path / "a", 1.0), 0)
    import threading
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "dtlab_node_cpu_seconds_total" in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_exporter_refuses_to_start_without_cpu_accounting(tmp_path, capsys):
    """A node dir without cpuacct.usage/cpu.stat (cgroup v1 without cpuacct) is an error at start,
    not an exporter that exports nothing and leaves the node stale for ever."""
    from dtlab.fabric.exporter import main
    (tmp_path / "a").mkdir()
    assert main(["--node", "a", "--cpu-dir", str(tmp_path / "a"), "--capacity-cores", "1", "--max-s", "1"]) == 2
    assert "no CPU accounting" in capsys.readouterr().err


def test_prometheus_config_scrapes_every_node_at_the_interval():
    text = prometheus_config({"b": "127.0.0.1:2", "a": "127.0.0.1:1"}, 0.25)
    assert "scrape_interval: 250ms" in text
    assert text.index("127.0.0.1:1") < text.index("127.0.0.1:2") and "dtlab_node: 'a'" in text


class StubClient:
    def __init__(self):
        self.fail = False
        self.last_stamps: list[float] = []
        self.stamp = 100.0

    def node_events(self, window, clock=None):
        if self.fail:
            raise TelemetryError("Prometheus at http://x unreachable: refused")
        self.last_stamps = [self.stamp]
        return [{"kind": "telemetry", "node": "a", "cpu_util": 0.4, "ts": clock(self.stamp) if clock else self.stamp}]


def test_poller_queues_events_and_records_errors():
    client = StubClient()
    p = TelemetryPoller(client, interval_s=0.5, clock=lambda e: e - 100.0)
    assert p.poll_once()[0]["ts"] == 0.0
    assert p.events()[0]["cpu_util"] == 0.4 and p.events() == []
    client.fail = True
    assert p.poll_once() == [] and "unreachable" in p.last_error
    client.fail = False
    p.poll_once()
    assert p.last_error is None and p.polls == 2 and len(p.samples) == 2
    with pytest.raises(DtlabError, match="poll interval"):
        TelemetryPoller(client, interval_s=0)


def test_controller_refuses_stale_plans_with_the_source_error_then_resumes():
    cluster = cluster_from_dict(CLUSTER)
    sub = make_substrate("sim", cluster, seed=0)
    twin = Twin(sub.cluster())
    twin.state.apply_many(sub.events())
    client = StubClient()
    poller = TelemetryPoller(client, clock=lambda e: sub.now_ms() / 1000.0)   # stamped "now" in the sim clock
    ctl = Controller(twin, sub, freshness_s=1.0, telemetry=poller)
    job = lambda i: job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": f"j{i}"},  # noqa: E731
                                   "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 10}}]}})
    poller.poll_once()
    assert ctl.step(job(0), 100.0) is not None and ctl.records[-1]["decision"] == SUBMITTED
    client.fail = True
    poller.poll_once()
    ctl.step(job(1), 2000.0)
    rec = ctl.records[-1]
    assert rec["decision"] == REFUSED_STALE and "telemetry source: Prometheus at http://x unreachable" in rec["error"]
    client.fail = False
    poller.poll_once()
    assert ctl.step(job(2), 2100.0) is not None and ctl.records[-1]["decision"] == SUBMITTED


def test_memory_in_telemetry_events_is_recorded_and_checked():
    state = ClusterState(cluster_from_dict(CLUSTER))
    state.apply({"kind": "telemetry", "node": "a", "cpu_util": 0.1, "mem_bytes": 2e9, "ts": 1.0})
    assert state.snapshot().nodes["a"].mem_bytes == 2e9
    state.apply({"kind": "telemetry", "node": "a", "cpu_util": 0.2, "ts": 2.0})     # absent: kept
    assert state.snapshot().nodes["a"].mem_bytes == 2e9
    with pytest.raises(SpecError, match="mem_bytes"):
        state.apply({"kind": "telemetry", "node": "a", "cpu_util": 0.2, "mem_bytes": -1})


def test_fabric_telemetry_options_are_checked_before_anything_starts():
    from dtlab.substrates.fabric import FabricSubstrate
    cluster = cluster_from_dict(CLUSTER)
    with pytest.raises(SpecError, match="substrate_opts.telemetry"):
        FabricSubstrate(cluster, telemetry="statsd")
    with pytest.raises(SpecError, match="substrate_opts.scrape_interval_s"):
        FabricSubstrate(cluster, telemetry="prometheus", scrape_interval_s=0.001)


def test_api_refuses_plans_on_stale_telemetry_with_503_naming_the_nodes():
    import time as _time

    from dtlab.api import ApiConfig, create_app
    twin = Twin(cluster_from_dict(CLUSTER))
    app = create_app(twin, ApiConfig(token="t", freshness_s=1.0)).test_client()
    job = {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 10}}]}}
    r = app.post("/plan", json={"job": job, "samples": 16})
    assert r.status_code == 503 and r.get_json()["field"] == "telemetry"
    assert "a (never reported)" in r.get_json()["error"]
    twin.state.apply({"kind": "telemetry", "node": "a", "cpu_util": 0.1, "ts": _time.time()})
    assert app.post("/plan", json={"job": job, "samples": 16}).status_code == 200
    assert b"dtlab_plans_refused_stale_total 1.0" in app.get("/metrics").data


def test_serve_telemetry_options_are_checked():
    import argparse

    from dtlab.cli.serve import telemetry_options
    ns = lambda **kw: argparse.Namespace(**{"prometheus": None, "poll_s": 0.5, "freshness_s": None, **kw})  # noqa: E731
    assert telemetry_options(ns()) is None
    assert telemetry_options(ns(prometheus="http://127.0.0.1:9090")) == 1.0
    assert telemetry_options(ns(prometheus="http://127.0.0.1:9090", freshness_s=2.5)) == 2.5
    with pytest.raises(SpecError, match="--prometheus"):
        telemetry_options(ns(prometheus="127.0.0.1:9090"))
    with pytest.raises(SpecError, match="--poll-s"):
        telemetry_options(ns(poll_s=0))
    with pytest.raises(SpecError, match="--freshness-s"):
        telemetry_options(ns(freshness_s=-1))


# ---------------------------------------------------------------- nodes without a telemetry source (KWOK)
MIXED = {"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "mixed"},
         "nodes": [{"name": "real", "arch": "amd64", "cores": 1, "speed": 1.0, "formats": ["native"], "zone": "z"},
                   {"name": "kw", "arch": "amd64", "cores": 2, "speed": 1.0, "formats": ["wasm"], "zone": "z"}]}


def _job(name: str, node: str):
    return job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name},
                          "spec": {"stages": [{"id": "s", "constraints": {"nodes": [node]},
                                               "compute": {"cpu": 0.5, "duration_ms": 10}}]}})


def test_telemetry_sources_event_marks_the_others_sourceless_and_is_checked():
    state = ClusterState(cluster_from_dict(MIXED))
    assert state.snapshot().nodes["kw"].telemetry_source is None          # not said yet
    state.apply({"kind": "telemetry-sources", "nodes": ["real", "not-in-the-twin"]})   # unknown names ignored
    snap = state.snapshot()
    assert snap.nodes["real"].telemetry_source is True and snap.nodes["kw"].telemetry_source is False
    assert snap.to_dict()["nodes"][1]["telemetry_source"] is False
    with pytest.raises(SpecError, match="nodes"):
        state.apply({"kind": "telemetry-sources", "nodes": "real"})


def test_freshness_skips_nodes_without_a_source_but_not_one_that_went_silent():
    from dtlab.plan import Plan
    from dtlab.telemetry import StaleTelemetry, check_fresh
    state = ClusterState(cluster_from_dict(MIXED))
    on_kw = Plan(job="j", policy="greedy", placement={"s": "kw"})
    on_real = Plan(job="j", policy="greedy", placement={"s": "real"}, shadow={"s": "kw"})
    with pytest.raises(StaleTelemetry, match="kw \\(never reported\\)"):   # nothing said: every node has a source
        check_fresh(on_kw, state.snapshot(), 1.0, now=10.0)
    state.apply({"kind": "telemetry-sources", "nodes": ["real"]})
    assert check_fresh(on_kw, state.snapshot(), 1.0, now=10.0) == ["kw"]
    with pytest.raises(StaleTelemetry, match="real \\(never reported\\)"):  # has a source, never reported
        check_fresh(on_real, state.snapshot(), 1.0, now=10.0)
    state.apply({"kind": "telemetry", "node": "real", "cpu_util": 0.1, "ts": 9.5})
    assert check_fresh(on_real, state.snapshot(), 1.0, now=10.0) == ["kw"]     # the shadow counts too
    # kw reported once (a source it had went away from the targets): silent now means stale
    state.apply({"kind": "telemetry", "node": "kw", "cpu_util": 0.0, "ts": 5.0})
    with pytest.raises(StaleTelemetry, match="kw \\(5.0 s old\\)"):
        check_fresh(on_kw, state.snapshot(), 1.0, now=10.0)


class SourcesClient(StubClient):
    def __init__(self, sources):
        super().__init__()
        self.targets = set(sources)
        self.asked = 0

    def sources(self):
        self.asked += 1
        if self.fail:
            raise TelemetryError("Prometheus at http://x unreachable: refused")
        return set(self.targets)


def test_poller_says_which_nodes_have_a_source_once_per_change():
    from dtlab import telemetry
    client = SourcesClient({"a"})
    p = TelemetryPoller(client)
    p.poll_once()
    assert p.events()[0] == {"kind": "telemetry-sources", "nodes": ["a"]}
    p.poll_once()
    assert [e["kind"] for e in p.events()] == ["telemetry"] and client.asked == 1   # asked again only every N polls
    client.targets = {"a", "b"}
    for _ in range(telemetry.SOURCES_EVERY):
        p.poll_once()
    sources = [e for e in p.events() if e["kind"] == "telemetry-sources"]
    assert sources == [{"kind": "telemetry-sources", "nodes": ["a", "b"]}]
    client.targets = set()          # a Prometheus not configured yet says nothing (no node loses its source)
    for _ in range(telemetry.SOURCES_EVERY):
        p.poll_once()
    assert not [e for e in p.events() if e["kind"] == "telemetry-sources"] and p.sources == ["a", "b"]


def test_controller_plans_on_a_sourceless_node_and_records_it_refuses_a_silent_one():
    class Quiet:
        """The sim without its own telemetry: the stub Prometheus below is the only source."""
        def __init__(self, sub):
            self.sub = sub

        def __getattr__(self, name):
            return getattr(self.sub, name)

        def events(self):
            return [e for e in self.sub.events() if e["kind"] != "telemetry"]
    sub = Quiet(make_substrate("sim", cluster_from_dict(MIXED), seed=0))
    twin = Twin(sub.cluster())
    twin.state.apply_many(sub.events())

    class Client(SourcesClient):
        def node_events(self, window, clock=None):
            return [dict(e, node="real") for e in super().node_events(window, clock)]
    client = Client({"real"})
    poller = TelemetryPoller(client, clock=lambda e: sub.now_ms() / 1000.0)
    ctl = Controller(twin, sub, freshness_s=1.0, telemetry=poller)
    poller.poll_once()
    assert ctl.step(_job("w", "kw"), 100.0) is not None
    assert ctl.records[-1]["decision"] == SUBMITTED and ctl.records[-1]["untelemetered"] == "kw"
    assert ctl.step(_job("n", "real"), 150.0) is not None and ctl.records[-1]["untelemetered"] == ""
    client.fail = True          # the real node goes silent: refused; the KWOK node's plans go on
    poller.poll_once()
    ctl.step(_job("n2", "real"), 3000.0)
    assert ctl.records[-1]["decision"] == REFUSED_STALE and "real (" in ctl.records[-1]["error"]
    assert ctl.step(_job("w2", "kw"), 3100.0) is not None and ctl.records[-1]["untelemetered"] == "kw"


def test_api_plans_on_a_sourceless_node_with_200_naming_it():
    import time as _time

    from dtlab.api import ApiConfig, create_app
    from tests.openapi_check import check
    twin = Twin(cluster_from_dict(MIXED))
    app = create_app(twin, ApiConfig(token="t", freshness_s=1.0)).test_client()
    r = app.post("/observe", json={"events": [{"kind": "telemetry-sources", "nodes": ["real"]},
                                              {"kind": "telemetry", "node": "real", "cpu_util": 0.0,
                                               "ts": _time.time()}]}, headers={"Authorization": "Bearer t"})
    assert r.status_code == 200, r.get_json()
    job = {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"stages": [{"id": "s", "constraints": {"nodes": ["kw"]}, "compute": {"cpu": 0.5, "duration_ms": 10}}]}}
    r = app.post("/plan", json={"job": job, "samples": 16})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["placement"] == {"s": "kw"} and r.get_json()["untelemetered_nodes"] == ["kw"]
    check(r, "/plan", "post")


def test_prometheus_config_scrapes_kubelets_resource_metrics_with_a_client_cert():
    import yaml
    text = prometheus_config({"rn-0": "127.0.0.1:1"}, 0.5, {"rn-0": "127.0.0.1:10250"}, ("/p/admin.crt", "/p/admin.key"))
    jobs = {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}
    kubelet = jobs["kubelet-resource"]
    assert kubelet["scheme"] == "https" and kubelet["metrics_path"] == "/metrics/resource"
    assert kubelet["tls_config"]["cert_file"] == "/p/admin.crt"
    assert kubelet["static_configs"] == [{"targets": ["127.0.0.1:10250"], "labels": {"kubelet_node": "rn-0"}}]
    assert jobs["dtlab-node"]["static_configs"][0]["labels"] == {"dtlab_node": "rn-0"}
    with pytest.raises(DtlabError, match="client certificate"):
        prometheus_config({}, 0.5, {"rn-0": "127.0.0.1:10250"})


def test_fabric_neighbours_option_is_checked_with_field_paths():
    from dtlab.substrates.fabric import check_neighbours
    cluster = cluster_from_dict(CLUSTER)
    assert check_neighbours([{"node": "a", "at_s": 2}, {"node": "a", "at_s": 0}], cluster) == [
        {"node": "a", "at_s": 0.0}, {"node": "a", "at_s": 2.0}]
    with pytest.raises(SpecError, match=r"neighbours\[0\].node"):
        check_neighbours([{"node": "zz", "at_s": 0}], cluster)
    with pytest.raises(SpecError, match=r"neighbours\[0\].at_s"):
        check_neighbours([{"node": "a", "at_s": -1}], cluster)
    with pytest.raises(SpecError, match=r"neighbours\[0\]"):
        check_neighbours([{"node": "a"}], cluster)
    with pytest.raises(SpecError, match="at most"):
        check_neighbours([{"node": "a", "at_s": 0}] * 9, cluster)


@pytest.mark.parametrize("exp, stem", [("V2", "V2-telemetry"), ("V6", "V6-fabric-telemetry")])
def test_telemetry_params_validate_and_differ_only_in_the_telemetry_switch(exp, stem):
    import yaml

    from dtlab.experiments import get
    on, off = (yaml.safe_load(open(f"params/{stem}{s}.yaml")) for s in ("", "-off"))
    for p in (on, off):
        get(exp).check(p)
    assert on["substrate_opts"].pop("telemetry") == "prometheus" and off["substrate_opts"].pop("telemetry") == "none"
    assert on == off and on["substrate_opts"]["neighbours"]


def test_v2_telemetry_pairs_pairs_single_seed_runs_by_seed(tmp_path):
    """benchmarks/v2_telemetry_pairs.py: per-seed MAPE of both arms, on - off paired with dtlab.stats."""
    import importlib.util
    import json

    import pandas as pd
    spec = importlib.util.spec_from_file_location("v2tp", "benchmarks/v2_telemetry_pairs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    apes = {("none", 0): 0.3, ("prometheus", 0): 0.1, ("none", 1): 0.5, ("prometheus", 1): 0.2, ("none", 2): 0.9}
    for i, ((arm, seed), ape) in enumerate(apes.items()):
        d = tmp_path / "V2" / f"run{i}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"params": {"seeds": [seed], "substrate_opts": {
            "telemetry": arm, "neighbours": [{"node": "a", "at_s": 0}]}}}))
        (d / "metrics.json").write_text("{}")
        pd.DataFrame([{"seed": seed, "predictor": p, "ape": ape if p == "fast" else 0.0} for p in mod.PREDICTORS]
                     + [{"seed": seed, "predictor": "fast", "ape": float("nan")}]).to_csv(d / "results.csv", index=False)
    rep = mod.pair(tmp_path)
    assert rep["seeds"] == [0, 1]          # seed 2 has no "on" run
    assert rep["fast"]["mape_off"] == [0.3, 0.5] and rep["fast"]["mape_on"] == [0.1, 0.2]
    ci = rep["fast"]["on_minus_off"]
    assert ci["mean"] == pytest.approx(-0.25) and ci["low"] < ci["mean"] < ci["high"]
