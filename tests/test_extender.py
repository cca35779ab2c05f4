"""Scheduler extender protocol: filter drops what the twin knows cannot run, prioritize follows predictions."""
import json
from pathlib import Path

import pytest

import dtlab
from dtlab.api import create_app
from dtlab.extender import Extender, parse_cpu, parse_mem_gb, pod_to_job, score_from_latency

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def pod(cpu="1", duration_ms=2000, arch=None, name="p"):
    spec = {"containers": [{"name": "w", "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]}
    if arch:
        spec["nodeSelector"] = {"kubernetes.io/arch": arch}
    return {"metadata": {"name": name, "namespace": "default",
                         "annotations": {"dtlab.io/duration-ms": str(duration_ms)}}, "spec": spec}


@pytest.fixture()
def client():
    twin = dtlab.Twin(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))
    notes = []
    app = create_app(twin, extender=Extender(twin, samples=32, annotate=lambda p, e: notes.append(e)))
    c = app.test_client()
    c.twin, c.notes = twin, notes
    return c


def test_quantities():
    assert parse_cpu("250m") == 0.25 and parse_cpu("2") == 2
    assert parse_mem_gb("512Mi") == 0.5 and parse_mem_gb("1Gi") == 1
    job = pod_to_job(pod(cpu="1500m", arch="arm64"))
    assert job.stages[0].compute.cpu == 1.5 and job.stages[0].constraints.arch == ("arm64",)


def test_filter_with_node_names_drops_down_cordoned_unknown_and_infeasible(client):
    client.twin.state.apply_many([{"kind": "node-down", "node": "cloud-0"},
                                  {"kind": "node-cordon", "node": "cloud-1"}])
    names = [n.name for n in client.twin.state.cluster.nodes] + ["ghost"]
    r = client.post("/extender/filter", json={"Pod": pod(cpu="3", arch="amd64"), "NodeNames": names})
    body = r.get_json()
    assert r.status_code == 200
    assert body["NodeNames"] == ["edge-b-0"]  # the only up, uncordoned amd64 node with >= 3 cores
    assert body["FailedNodes"]["cloud-0"].startswith("down")
    assert body["FailedNodes"]["cloud-1"] == "cordoned"
    assert body["FailedNodes"]["ghost"] == "unknown to the twin"
    assert "edge-b-1" in body["FailedNodes"]


def test_filter_with_full_node_objects(client):
    items = [{"metadata": {"name": n}} for n in ("cloud-0", "edge-a-1")]
    body = client.post("/extender/filter", json={"Pod": pod(arch="amd64"), "Nodes": {"items": items}}).get_json()
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == ["cloud-0"]


def test_prioritize_prefers_fast_idle_nodes_and_explains(client):
    client.twin.state.apply({"kind": "telemetry", "node": "cloud-1", "cpu_util": 0.9})
    r = client.post("/extender/prioritize", json={"Pod": pod(), "NodeNames": ["cloud-0", "cloud-1", "edge-a-1"]})
    scores = {h["Host"]: h["Score"] for h in r.get_json()}
    assert scores["cloud-0"] == 10 and scores["cloud-0"] > scores["cloud-1"] > scores["edge-a-1"] >= 0
    explanation = client.notes[-1]
    assert explanation["cloud-0"]["predicted_mean_ms"] < explanation["cloud-1"]["predicted_mean_ms"]


def test_bad_extender_input_is_400(client):
    assert client.post("/extender/filter", data=b"nope", content_type="application/json").status_code == 400
    bad = pod()
    bad["metadata"]["annotations"]["dtlab.io/duration-ms"] = "soon"
    r = client.post("/extender/prioritize", json={"Pod": bad, "NodeNames": ["cloud-0"]})
    assert r.status_code == 400 and "duration-ms" in r.get_json()["Error"]


def test_scores_are_linear_in_predicted_latency():
    assert score_from_latency({"a": 100, "b": 200, "c": 150}) == {"a": 10, "b": 0, "c": 5}
    assert score_from_latency({"a": 5, "b": 5}) == {"a": 10, "b": 10}


def _reference(twin, job, samples):
    """What prioritize/filter computed before they were vectorised: one twin.predict per node."""
    from dtlab.timing import exec_format
    snap = twin.state.snapshot()
    means, verdict = {}, {}
    for name, status in snap.nodes.items():
        stage = job.stages[0]
        if not status.up:
            verdict[name] = "down in the twin's state"
        elif status.cordoned:
            verdict[name] = "cordoned"
        elif exec_format(stage, status.node, twin.timing.overheads) is None:
            verdict[name] = "cannot run the pod (arch/format/resources)"
        else:
            verdict[name] = None
            means[name] = twin.predict(job, {"main": name}, predictor="fast", samples=samples, seed=0)["mean_ms"]
    return means, verdict


@pytest.mark.parametrize("cpu,arch", [("1", None), ("3", "amd64"), ("500m", "arm64"), ("12", None)])
def test_vectorised_scores_equal_one_prediction_per_node(cpu, arch):
    """The per-(pod shape, snapshot) table gives the numbers of one twin.predict per node, on a
    busy 300-node state (telemetry, running stages with known work, down and cordoned nodes)."""
    from dtlab.experiments.loop import synthetic_cluster
    cluster = synthetic_cluster(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"), 300, seed=3)
    twin = dtlab.Twin(cluster)
    names = [n.name for n in cluster.nodes]
    events = [{"kind": "telemetry", "node": n, "cpu_util": (i % 10) / 10} for i, n in enumerate(names[::3])]
    for i, n in enumerate(names[1::7]):   # running stages: half with known work (they leave), half staying
        known = {"stage_ms": {"s": 800.0 * (1 + i % 3)}} if i % 2 else {}
        events += [{"kind": "job-submit", "job": f"j{i}", "stage_cpu": {"s": 1.0 + i % 2}, **known},
                   {"kind": "stage-start", "job": f"j{i}", "stage": "s", "node": n, "ts": 1.0}]
    events.append({"kind": "telemetry", "node": names[0], "cpu_util": 0.1, "ts": 1.5})
    events += [{"kind": "node-down", "node": names[5]}, {"kind": "node-cordon", "node": names[8]}]
    twin.state.apply_many(events)
    ext = Extender(twin, samples=48)
    job = pod_to_job(pod(cpu=cpu, arch=arch))
    means, verdict = _reference(twin, job, 48)
    table = ext._table(job)
    assert table.verdict == verdict
    assert set(table.mean_ms) == set(means) and means
    for name, m in means.items():
        assert table.mean_ms[name] == pytest.approx(m, rel=1e-9), name


def test_cached_table_follows_the_state(client):
    """A second pod of the same shape reuses the table; a state change invalidates it."""
    ext = Extender(client.twin, samples=32)
    job = pod_to_job(pod(name="a"))
    first = ext._table(job)
    assert ext._table(pod_to_job(pod(name="b"))) is first
    before = first.mean_ms["cloud-0"]
    client.twin.state.apply({"kind": "telemetry", "node": "cloud-0", "cpu_util": 0.95})
    second = ext._table(job)
    assert second is not first and second.mean_ms["cloud-0"] > before


def test_extender_calls_are_timed_in_metrics(client):
    for _ in range(3):
        assert client.post("/extender/filter", json={"Pod": pod(), "NodeNames": ["cloud-0"]}).status_code == 200
    assert client.post("/extender/prioritize", json={"Pod": pod(), "NodeNames": ["cloud-0"]}).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'dtlab_extender_latency_ms_count{verb="filter"} 3.0' in text
    assert 'dtlab_extender_latency_ms_count{verb="prioritize"} 1.0' in text


def test_prioritize_json_equals_the_per_node_scores():
    """The route's prebuilt JSON (vectorised scores, per-node fragments) says what score_from_latency
    over the table's means says: unknown, down, cordoned and infeasible names score 0, duplicates and
    names needing JSON escapes included; and it parses to exactly ``prioritize``'s answer."""
    from dtlab.experiments.loop import synthetic_cluster
    cluster = synthetic_cluster(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"), 200, seed=5)
    twin = dtlab.Twin(cluster)
    names = [n.name for n in cluster.nodes]
    twin.state.apply_many([{"kind": "telemetry", "node": n, "cpu_util": (i % 7) / 7} for i, n in enumerate(names)]
                          + [{"kind": "node-down", "node": names[3]}, {"kind": "node-cordon", "node": names[4]}])
    ext = Extender(twin, samples=32)
    for p in (pod(), pod(cpu="3", arch="arm64")):
        asked = names[::-1] + ["ghost", 'we"ird\u00e9', names[10], names[10]]
        args = {"Pod": p, "NodeNames": asked}
        table = ext._table(pod_to_job(p))
        expected = score_from_latency({n: table.mean_ms[n] for n in asked if n in table.mean_ms})
        answer = json.loads(ext.prioritize_json(args))
        assert answer == ext.prioritize(args) == [{"Host": n, "Score": expected.get(n, 0)} for n in asked]
        assert {h["Score"] for h in answer} - {0} and answer[-4:-2] == [{"Host": "ghost", "Score": 0},
                                                                       {"Host": 'we"ird\u00e9', "Score": 0}]
    assert json.loads(ext.prioritize_json({"Pod": pod(), "NodeNames": []})) == []
    assert json.loads(ext.prioritize_json({"Pod": pod(), "NodeNames": ["ghost"]})) == [{"Host": "ghost", "Score": 0}]
