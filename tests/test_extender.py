"""Scheduler extender protocol: filter drops what the twin knows cannot run, prioritize follows predictions."""
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
