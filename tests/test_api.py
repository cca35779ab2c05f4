"""REST API: contract (responses match openapi.json), bad input -> 4xx JSON, auth, atomic observe."""
import json
import logging
from pathlib import Path

import pytest

import dtlab
from dtlab.api import ApiConfig, create_app
from tests.openapi_check import check

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOKEN = "s3cret-token-for-tests"


def job_dict():
    import yaml
    return yaml.safe_load((EXAMPLES / "job-pipeline.yaml").read_text())


class Acts:
    def __init__(self):
        self.plans = []

    def act(self, plan, job):
        self.plans.append((plan, job))


@pytest.fixture()
def twin():
    return dtlab.Twin(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))


@pytest.fixture()
def controller():
    return Acts()


@pytest.fixture()
def client(twin, controller):
    app = create_app(twin, ApiConfig(token=TOKEN, max_body_bytes=20_000), controller=controller)
    return app.test_client()


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_health_snapshot_metrics_openapi(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    check(r, "/healthz")
    r = client.get("/snapshot")
    assert r.status_code == 200 and len(r.get_json()["nodes"]) == 7
    check(r, "/snapshot")
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.")
    text = client.get("/metrics").get_data(as_text=True)
    assert "dtlab_state_version" in text


def test_dry_run_plan_matches_contract_and_is_counted(client):
    r = client.post("/plan", json={"job": job_dict(), "policy": "cvar", "samples": 64, "seed": 3})
    assert r.status_code == 200, r.get_json()
    check(r, "/plan", "POST")
    body = r.get_json()
    assert set(body["placement"]) == {"decode", "infer", "publish"}
    assert body["dry_run"] is True and body["prediction"]["p95_ms"] >= body["prediction"]["p50_ms"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'dtlab_plans_total{dry_run="true",policy="cvar"} 1.0' in metrics
    assert "dtlab_plan_latency_ms_bucket" in metrics


@pytest.mark.parametrize("payload,status,field", [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b"[1, 2]", 400, "body"),
    (json.dumps({"job": job_dict(), "policy": "oracle"}).encode(), 400, "policy"),
    (json.dumps({"job": job_dict(), "samples": "many"}).encode(), 400, "samples"),
    (json.dumps({"job": job_dict(), "samples": 0}).encode(), 400, "samples"),
    (json.dumps({"job": job_dict(), "predictor": "crystal-ball"}).encode(), 400, "predictor"),
    (json.dumps({"job": job_dict(), "colour": 1}).encode(), 400, "colour"),
    (json.dumps({"policy": "greedy"}).encode(), 400, "job"),
    (json.dumps({"job": {**job_dict(), "spec": {"stages": [{"id": "a", "compute": {"duration_ms": -1}}]}}}).encode(),
     400, "job.spec.stages[0].compute.duration_ms"),
    (json.dumps({"job": {"metadata": {"name": "big"}, "spec": {"stages": [
        {"id": "a", "compute": {"cpu": 500, "duration_ms": 1}}]}}}).encode(), 422, "job"),
    (json.dumps({"job": job_dict(), "pad": "x" * 30_000}).encode(), 413, "body"),
])
def test_bad_plan_requests_get_4xx_json(client, payload, status, field):
    r = client.post("/plan", data=payload, content_type="application/json")
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.get_json()["field"] == field
    assert r.get_json()["error"]
    check(r, "/plan", "POST")


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404
    r = client.get("/plan")
    assert r.status_code == 405 and "error" in r.get_json()


def test_observe_needs_a_token_and_applies_atomically(client, twin):
    events = [{"kind": "node-down", "node": "cloud-0"}, {"kind": "telemetry", "node": "edge-a-0", "cpu_util": 0.5}]
    assert client.post("/observe", json=events).status_code == 401
    assert client.post("/observe", json=events, headers=auth("wrong")).status_code == 401
    v0 = twin.state.version
    bad = events + [{"kind": "telemetry", "node": "edge-a-0", "cpu_util": 7}]
    r = client.post("/observe", json=bad, headers=auth())
    assert r.status_code == 400 and r.get_json()["field"] == "events[2].cpu_util"
    check(r, "/observe", "POST")
    assert twin.state.version == v0 and twin.state.snapshot().nodes["cloud-0"].up
    r = client.post("/observe", json={"events": events}, headers=auth())
    assert r.status_code == 200
    check(r, "/observe", "POST")
    snap = twin.state.snapshot()
    assert not snap.nodes["cloud-0"].up and snap.nodes["edge-a-0"].cpu_util == 0.5
    single = client.post("/observe", json=[{"kind": "node-up", "node": "ghost"}], headers=auth())
    assert single.status_code == 400 and single.get_json()["field"] == "events[0].node"


def test_plans_after_observe_avoid_a_down_node(client):
    client.post("/observe", json=[{"kind": "node-down", "node": n} for n in ("cloud-0", "cloud-1")], headers=auth())
    body = client.post("/plan", json={"job": job_dict(), "samples": 32}).get_json()
    assert not {"cloud-0", "cloud-1"} & set(body["placement"].values())


def test_non_dry_run_plan_needs_token_and_reaches_controller(client, controller):
    req = {"job": job_dict(), "dry_run": False, "samples": 32}
    assert client.post("/plan", json=req).status_code == 401
    r = client.post("/plan", json=req, headers=auth())
    assert r.status_code == 200 and r.get_json()["dry_run"] is False
    assert len(controller.plans) == 1 and controller.plans[0][1].name == "video-1"


def test_without_token_mutations_are_refused_unless_insecure_dev(twin):
    locked = create_app(twin, ApiConfig(token=None)).test_client()
    r = locked.post("/observe", json=[{"kind": "node-cordon", "node": "cloud-0"}])
    assert r.status_code == 403 and "DTLAB_API_TOKEN" in r.get_json()["error"]
    dev = create_app(twin, ApiConfig(token=None, insecure_dev=True)).test_client()
    assert dev.post("/observe", json=[{"kind": "node-cordon", "node": "cloud-0"}]).status_code == 200


def test_token_is_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    client.post("/observe", json=[{"kind": "node-cordon", "node": "cloud-0"}], headers=auth())
    client.post("/observe", json=[{"kind": "node-cordon", "node": "cloud-0"}], headers=auth("guess-" + TOKEN))
    assert TOKEN not in caplog.text


def test_serve_feeds_the_state_from_a_substrate():
    """`dtlab serve --substrate sim`: the observer's events keep reaching the twin's state."""
    import threading

    from dtlab.api.serve import build_twin, feed

    twin, substrate = build_twin(str(EXAMPLES / "cluster-hetero.yaml"), "sim")
    stop = threading.Event()
    thread = threading.Thread(target=feed, args=(substrate, twin.state, stop, 0.05), daemon=True)
    thread.start()
    try:
        import time
        deadline = time.monotonic() + 10
        while twin.state.snapshot().nodes["cloud-0"].telemetry_ts is None:
            assert time.monotonic() < deadline, "no telemetry from the sim substrate reached the state"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
        substrate.close()
    assert not thread.is_alive()
