"""/plan remembers what a body parses to (dtlab.api.app.PlanBodyCache): same answers, same errors, bounded."""
import json
from pathlib import Path

import pytest
import yaml

import dtlab
from dtlab.api import create_app
from dtlab.api.app import PlanBodyCache

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture()
def client():
    twin = dtlab.Twin(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))
    return create_app(twin).test_client()


def body(**extra) -> bytes:
    return json.dumps({"job": yaml.safe_load((EXAMPLES / "job-pipeline.yaml").read_text()), "samples": 32,
                       **extra}).encode()


def post(client, raw: bytes):
    return client.post("/plan", data=raw, headers={"Content-Type": "application/json"})


def test_a_repeated_body_plans_the_same_and_a_changed_one_differently(client):
    first, again = post(client, body()).get_json(), post(client, body()).get_json()
    first.pop("elapsed_ms"), again.pop("elapsed_ms")
    assert first == again and first["placement"]
    other = post(client, body(policy="cvar")).get_json()
    assert other["policy"] == "cvar" and first["policy"] == "greedy"


def test_an_invalid_job_is_the_same_400_every_time(client):
    doc = json.loads(body())
    doc["job"]["spec"]["stages"][0]["compute"]["cpu"] = -1
    raw = json.dumps(doc).encode()
    answers = [post(client, raw) for _ in range(3)]
    assert {r.status_code for r in answers} == {400}
    assert len({json.dumps(r.get_json(), sort_keys=True) for r in answers}) == 1
    assert answers[0].get_json()["field"] == "job.spec.stages[0].compute.cpu"


def test_a_body_that_is_not_json_stays_a_400_and_unknown_keys_still_count(client):
    for _ in range(2):
        r = post(client, b"{not json")
        assert r.status_code == 400 and r.get_json()["field"] == "body"
    for _ in range(2):
        r = post(client, body(sample=3))
        assert r.status_code == 400 and r.get_json()["field"] == "sample"


def test_the_cache_shares_jobs_and_stays_bounded():
    from flask import Flask
    cache = PlanBodyCache(size=2, max_body=10_000)
    app = Flask("t")
    raws = [body(seed=i) for i in range(3)]
    jobs = []
    for raw in raws:
        with app.test_request_context("/plan", method="POST", data=raw):
            data = cache.data(raw)
            jobs.append(cache.job(raw, data["job"]))
    with app.test_request_context("/plan", method="POST", data=raws[2]):
        assert cache.job(raws[2], cache.data(raws[2])["job"]) is jobs[2]   # remembered: the same frozen Job
    assert len(cache._entries) == 2 and raws[0] not in cache._entries     # least recently used went first
    big = PlanBodyCache(size=2, max_body=10)
    with app.test_request_context("/plan", method="POST", data=raws[0]):
        data = big.data(raws[0])
        assert big.job(raws[0], data["job"]) == jobs[0] and not big._entries   # too big to keep
