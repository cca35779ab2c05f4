"""Property-based fuzz (hypothesis) of the hostile input classes of issue 17.

A valid document (a /plan body, an /observe batch, ExtenderArgs, a Cluster or Job spec) gets
one value replaced by something hostile: non-finite, huge, deep, wrong-typed, a long string, a
directory path, an alias bomb. Properties: the HTTP app answers < 500 with strict JSON and the
state stays finite and unchanged on a 4xx; the CLI returns 0 or 2 with a short stderr, never a
traceback. Bounded: a few hundred examples in all, derandomised so CI sees the same cases.
The schemathesis run (tests/test_api_fuzz.py, `make fuzz`) covers the schema-shaped inputs.
"""
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import dtlab
from dtlab import strict_json
from dtlab.api import ApiConfig, create_app
from dtlab.cli import main
from dtlab.extender import Extender

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "examples" / "cluster-hetero.yaml"
CLUSTER = yaml.safe_load(CLUSTER_FILE.read_text())
JOB = yaml.safe_load((ROOT / "examples" / "job-pipeline.yaml").read_text())
TOKEN = "fuzz"
SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

DEEP, HUGE, BOMB = "@@DEEP@@", "@@HUGE@@", "@@BOMB@@"
HOSTILE = st.sampled_from([
    math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-300, 10**40, -64, 0, -1, 2**63,
    "lots", "", "x" * 10_000, "nan", "1e999", [], {}, None, True, [1, [2, [3]]], {"a": {"b": {}}},
    DEEP, HUGE,
])


def paths(doc, prefix=()):
    """Every (path) to a value inside a JSON-like document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, prefix + (i,))


def mutate(doc, path, value):
    doc = json.loads(json.dumps(doc))
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def to_json(doc) -> bytes:
    text = json.dumps(doc, allow_nan=True)  # NaN/Infinity literals on purpose
    return text.replace(f'"{DEEP}"', "[" * 5000 + "]" * 5000).replace(f'"{HUGE}"', "9" * 5000).encode()


@st.composite
def hostile(draw, doc):
    all_paths = list(paths(doc))
    path = draw(st.sampled_from(all_paths))
    return mutate(doc, path, draw(HOSTILE))


@pytest.fixture(scope="module")
def app():
    twin = dtlab.Twin(dtlab.load_cluster(CLUSTER_FILE))
    return create_app(twin, ApiConfig(token=TOKEN), extender=Extender(twin, samples=8)).test_client(), twin


def check_response(resp) -> None:
    assert resp.status_code < 500, resp.get_data()[:300]
    strict_json.loads(resp.get_data())  # valid, strict JSON whatever the status


def check_state_finite(twin) -> None:
    snap = twin.state.snapshot()
    text = json.dumps(snap.to_dict(), allow_nan=True)
    assert "NaN" not in text and "Infinity" not in text


@SETTINGS
@given(body=hostile({"job": JOB, "policy": "cvar", "samples": 32, "seed": 1, "predictor": "fast"}))
def test_fuzz_plan(app, body):
    client, twin = app
    resp = client.post("/plan", data=to_json(body), content_type="application/json")
    check_response(resp)
    if resp.status_code == 200:
        assert all(math.isfinite(v) for v in resp.get_json()["prediction"].values() if isinstance(v, float))


EVENTS = [{"kind": "telemetry", "node": "cloud-0", "cpu_util": 0.3, "ts": 100.0},
          {"kind": "link", "a": "edge-a", "b": "cloud", "latency_ms": 20, "bandwidth_mbps": 100, "loss": 0.01},
          {"kind": "job-submit", "job": "j", "deadline_ms": 5000, "stage_cpu": {"a": 1.5}, "stage_ms": {"a": 300}},
          {"kind": "stage-start", "job": "j", "stage": "a", "node": "cloud-0", "ts": 101.0},
          {"kind": "node-add", "node": {"name": "new-0", "arch": "arm64", "cores": 4, "speed": 0.8, "zone": "cloud"}}]


@SETTINGS
@given(batch=hostile(EVENTS))
def test_fuzz_observe(app, batch):
    client, twin = app
    before = twin.state.version
    resp = client.post("/observe", data=to_json(batch), content_type="application/json",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    check_response(resp)
    if resp.status_code != 200:
        assert twin.state.version == before  # a rejected batch changes nothing
    check_state_finite(twin)
    assert client.post("/plan", json={"job": JOB, "samples": 16}).status_code in (200, 422)


POD = {"metadata": {"name": "p", "annotations": {"dtlab.io/duration-ms": "500"}, "labels": {}},
       "spec": {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
                "nodeSelector": {"kubernetes.io/arch": "amd64"}}}


@SETTINGS
@given(args=st.one_of(hostile({"Pod": POD, "NodeNames": ["cloud-0", "edge-a-0"]}),
                      hostile({"Pod": POD, "Nodes": {"items": [{"metadata": {"name": "cloud-1"}}]}})),
       verb=st.sampled_from(["filter", "prioritize"]))
def test_fuzz_extender(app, args, verb):
    client, _ = app
    check_response(client.post(f"/extender/{verb}", data=to_json(args), content_type="application/json"))


def bomb_prefix(levels: int = 6) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def to_yaml(doc) -> str:
    text = json.dumps(doc, allow_nan=True).replace("NaN", ".nan").replace("-Infinity", "-.inf") \
        .replace("Infinity", ".inf")  # JSON is YAML flow style; YAML spells the non-finite floats so
    text = text.replace(f'"{DEEP}"', "[" * 5000 + "]" * 5000).replace(f'"{HUGE}"', "9" * 5000)
    if f'"{BOMB}"' in text:
        text = bomb_prefix() + "doc: " + text.replace(f'"{BOMB}"', "*a5")
    return text


@st.composite
def cli_case(draw):
    which = draw(st.sampled_from(["cluster", "job", "policy", "samples"]))
    cluster, job, extra = CLUSTER, JOB, []
    if which == "cluster":
        cluster = mutate(CLUSTER, draw(st.sampled_from(list(paths(CLUSTER)))), draw(st.one_of(HOSTILE, st.just(BOMB))))
    elif which == "job":
        job = mutate(JOB, draw(st.sampled_from(list(paths(JOB)))), draw(st.one_of(HOSTILE, st.just(BOMB))))
    elif which == "policy":
        extra = ["--policy", draw(st.sampled_from(["rl_stub", "nope", "", "cvar"]))]
    else:
        extra = ["--samples", draw(st.sampled_from(["0", "-5", "9" * 400, "1000001", "16"]))]
    as_dir = draw(st.sampled_from([None, "cluster", "job"]))
    return cluster, job, extra, as_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-cli")


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=cli_case())
def test_fuzz_cli_plan(workdir, capsys, case):
    cluster, job, extra, as_dir = case
    cpath, jpath = workdir / "cluster.yaml", workdir / "job.yaml"
    cpath.write_text(to_yaml(cluster))
    jpath.write_text(to_yaml(job))
    args = ["plan", str(workdir if as_dir == "job" else jpath), "--cluster",
            str(workdir if as_dir == "cluster" else cpath), *extra]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse rejects a malformed --samples with exit 2 itself
        code = exc.code
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, err[-500:])
    assert len(err) <= 4096 and "Traceback" not in err
    if code == 0:
        assert "placement" in out or "->" in out
