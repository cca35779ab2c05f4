"""Issue 17, the HTTP half, against a REAL `dtlab serve` (uvicorn with dtlab.api.asgi in front) on loopback.

Every reproducer of the issue gets a 4xx within a second and a valid /plan right after still
answers 200; /healthz answers within a second while plans saturate the server or idle
connections pile up; no response carries a non-finite number.
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import dtlab
from dtlab import strict_json
from dtlab.api import ApiConfig, create_app
from tests.netutil import free_port, stop_group, wait_for

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-hetero.yaml"
TOKEN = "hardening-token"
SECRET = "extender-secret-0123456789"
JOB = yaml.safe_load((ROOT / "examples" / "job-pipeline.yaml").read_text())


class Server:
    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, body: bytes | str | None = None, token: str | None = None,
             timeout: float = 30):
        """(status, parsed JSON or raw text, seconds) of one request on a fresh connection."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        elapsed = time.monotonic() - t0
        try:
            data = strict_json.loads(raw)  # every JSON body must be strict JSON (no bare Infinity)
        except strict_json.StrictJSONError:
            data = raw.decode(errors="replace")
        return resp.status, data, elapsed

    def plan(self, body, token=None):
        return self.call("POST", "/plan", body if isinstance(body, (str, bytes)) else json.dumps(body), token)

    def assert_still_plans(self):
        status, data, _ = self.plan({"job": JOB, "policy": "cvar", "samples": 64})
        assert status == 200, data
        assert data["placement"] and all(isinstance(v, float) for v in data["prediction"].values()
                                         if not isinstance(v, int))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "DTLAB_API_TOKEN": TOKEN, "DTLAB_EXTENDER_SECRET": SECRET}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER),
                                 "--port", str(port), "--extender"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)
    srv = Server(port)
    try:
        wait_for(lambda: srv.call("GET", "/healthz", timeout=2)[0] == 200, 60, "dtlab serve /healthz",
                 procs=[("dtlab serve", proc)])
        yield srv
    finally:
        stop_group(proc)
        text = log.read_text(errors="replace")
        assert "internal error" not in text and "Traceback" not in text, text[-3000:]


def job_with(**compute) -> dict:
    job = json.loads(json.dumps(JOB))
    job["spec"]["stages"][0]["compute"].update(compute)
    return job


def chain(n: int) -> dict:
    return {"metadata": {"name": f"chain{n}"}, "spec": {"stages": [
        {"id": f"s{i}", "compute": {"duration_ms": 100}, "after": [f"s{i - 1}"] if i else []} for i in range(n)]}}


PLAN_REPRODUCERS = {
    "10,000-deep JSON": "[" * 10_000 + "]" * 10_000,
    "deep inside the job": '{"job": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001,
    "5,000-digit samples": '{"job": %s, "samples": %s}' % (json.dumps(JOB), "9" * 5000),
    "policy rl_stub": json.dumps({"job": JOB, "policy": "rl_stub"}),
    "400-digit duration_ms": json.dumps({"job": job_with(duration_ms="X")}).replace('"X"', "9" * 400),
    "duration_ms 1e308": json.dumps({"job": job_with(duration_ms=1e308)}),
    "NaN literal": '{"job": %s, "seed": NaN}' % json.dumps(JOB),
    "Infinity literal": json.dumps({"job": job_with(duration_ms=float("inf"))}),
    "1e400 float": json.dumps({"job": job_with(duration_ms="X")}).replace('"X"', "1e400"),
    "cpu 1e-300": json.dumps({"job": job_with(cpu=1e-300)}),
    "too many stages": json.dumps({"job": chain(1001)}),
    "not UTF-8": b'{"job": "\xff"}',
    "17 KB des plan without a token": json.dumps({"job": chain(300), "samples": 20_000, "predictor": "des"}),
}


@pytest.mark.parametrize("name", list(PLAN_REPRODUCERS))
def test_plan_reproducers_are_4xx_within_a_second(server, name):
    body = PLAN_REPRODUCERS[name]
    status, data, elapsed = server.plan(body)
    assert 400 <= status < 500 and isinstance(data, dict) and data["error"], (status, data)
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"
    server.assert_still_plans()


def test_nan_literal_reproducer_is_a_real_nan():
    assert "NaN" in PLAN_REPRODUCERS["NaN literal"] and "Infinity" in PLAN_REPRODUCERS["Infinity literal"]


def test_over_budget_names_the_budget_and_a_token_raises_it(server):
    status, data, _ = server.plan({"job": chain(10), "samples": 3000, "predictor": "des"})
    assert status == 413 and "work budget" in data["error"] and "without a token" in data["error"]
    status, data, _ = server.plan({"job": chain(10), "samples": 3000, "predictor": "des"}, token=TOKEN)
    assert status == 200, data


def observe(server, events):
    return server.call("POST", "/observe", json.dumps(events), token=TOKEN)


@pytest.mark.parametrize("events", [
    [{"kind": "link", "a": "edge-a", "b": "cloud", "latency_ms": 1e308}],
    [{"kind": "link", "a": "edge-a", "b": "cloud", "bandwidth_mbps": 1e-300}],
    [{"kind": "job-submit", "job": "j", "stage_cpu": {"a": -64}}, {"kind": "stage-start", "job": "j", "stage": "a",
                                                                    "node": "cloud-0"}],
    [{"kind": "job-submit", "job": "j", "stage_cpu": {"a": "lots"}}],
    [{"kind": "job-submit", "job": "j", "stage_cpu": {"a": 1e9}}],
    [{"kind": "job-submit", "job": "j", "deadline_ms": -1}],
    [{"kind": "telemetry", "node": "cloud-0", "cpu_util": 0.5, "ts": 1e300}],
    [{"kind": "stage-end", "job": "j", "stage": "a", "ok": "yes"}],
    [{"kind": "node-add", "node": {"name": "x", "cores": 10**12}}],
    [{"kind": "node-add", "node": {"name": "x", "speed": 1e-300}}],
])
def test_observe_cannot_poison_the_state(server, events):
    before = server.call("GET", "/snapshot")[1]
    status, data, elapsed = observe(server, [{"kind": "node-cordon", "node": "cloud-1"}] + events)
    assert status == 400 and data["field"].startswith("events[1]"), data
    assert elapsed < 1.0
    assert server.call("GET", "/snapshot")[1] == before  # the whole batch was rejected
    server.assert_still_plans()


def test_observe_rejects_non_finite_json_literals(server):
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = '[{"kind": "job-submit", "job": "j", "stage_cpu": {"a": %s}}]' % literal
        status, data, _ = server.call("POST", "/observe", body, token=TOKEN)
        assert status == 400 and data["field"] == "body", data


EXTENDER_BAD = [
    b"nope", b"[]", b"null", b"{}", b'{"Pod": "x"}', b'{"Pod": {"metadata": []}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"annotations": "x"}}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"annotations": {"dtlab.io/duration-ms": "abc"}}}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"annotations": {"dtlab.io/duration-ms": "nan"}}}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"annotations": {"dtlab.io/duration-ms": "1e400"}}}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"annotations": {"dtlab.io/duration-ms": []}}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": "x"}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": ["x"]}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": [{"resources": []}]}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": [{"resources": {"requests": {"cpu": "lots"}}}]}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": [{"resources": {"requests": {"memory": {}}}}]}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"containers": [{"resources": {"requests": {"cpu": "1e999"}}}]}}, "NodeNames": []}',
    b'{"Pod": {"spec": {"nodeSelector": []}}, "NodeNames": []}',
    b'{"Pod": {"metadata": {"name": 5}}, "NodeNames": []}',
    b'{"Pod": {}, "NodeNames": "cloud-0"}', b'{"Pod": {}, "NodeNames": [1]}',
    b'{"Pod": {}, "Nodes": {"items": "x"}}', b'{"Pod": {}, "Nodes": {"items": [{}]}}',
    b'{"Pod": {}, "Nodes": {"items": [{"metadata": {"name": 5}}]}}', b'{"Pod": {}, "Nodes": []}',
    b'{"Pod": {}, "NodeNames": [' + b",".join([b'"n"'] * 6000) + b"]}",
    b'{"Pod": {}, "NodeNames": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@pytest.mark.parametrize("verb", ["filter", "prioritize"])
def test_extender_bad_input_is_400(server, verb):
    for body in EXTENDER_BAD:
        status, data, elapsed = server.call("POST", f"/extender/{SECRET}/{verb}", body)
        assert status == 400 and isinstance(data, dict) and data["Error"], (body[:80], status, data)
        assert elapsed < 1.0
    status, data, _ = server.call("POST", f"/extender/{SECRET}/{verb}",
                                  json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["cloud-0"]}))
    assert status == 200, data


def test_extender_needs_the_secret_prefix(server):
    body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["cloud-0", "edge-a-0"]})
    for path in ("/extender/filter", "/extender/wrong-secret/filter", f"/extender/{SECRET}x/filter"):
        assert server.call("POST", path, body)[0] == 404
    status, data, _ = server.call("POST", f"/extender/{SECRET}/filter", body)
    assert status == 200 and set(data["NodeNames"]) | set(data["FailedNodes"]) == {"cloud-0", "edge-a-0"}


def test_serve_refuses_an_unauthenticated_extender(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DTLAB_EXTENDER_SECRET"}
    proc = subprocess.run([sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER), "--extender",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "DTLAB_EXTENDER_SECRET" in proc.stderr and "Traceback" not in proc.stderr


def raw_request(server, head: bytes, body: bytes = b"") -> tuple[int, str, bytes, float]:
    """(status, content type, body, seconds) of one hand-written request on its own socket."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        data = resp.read()
    return resp.status, resp.getheader("Content-Type", ""), data, time.monotonic() - t0


PLAN_HEAD = b"POST /plan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def test_body_over_the_limit_is_413_json(server):
    """A body announced over the limit is refused from its Content-Length alone, before the client sends
    it: the server answers 413 at once, in the API's JSON (not a server's plain text). Sending the 1.2 MB
    first made the test flaky: a client still writing into a connection the server has answered and
    closed gets a broken pipe (1 run in 4 here), which says nothing about the server."""
    status, ctype, body, elapsed = raw_request(server, PLAN_HEAD + b"Content-Length: 1200000\r\n\r\n")
    assert status == 413 and elapsed < 1.0, (status, body[:200], elapsed)
    assert ctype.startswith("application/json"), (ctype, body[:200])
    data = strict_json.loads(body)
    assert data == {"error": "request body over the limit of 1,000,000 bytes", "field": "body"}, data
    server.assert_still_plans()


def test_body_limit_is_the_same_for_the_server_and_the_app(server):
    """Exactly --max-body-bytes (1,000,000) gets through the server to the app (which parses it: not JSON
    -> 400); one byte more is refused with 413 JSON."""
    at_limit = b"[" + b" " * 999_998 + b"]"
    status, ctype, body, _ = raw_request(server, PLAN_HEAD + b"Content-Length: 1000000\r\n\r\n", at_limit)
    assert status == 400 and ctype.startswith("application/json"), (status, body[:200])
    status, ctype, body, _ = raw_request(server, PLAN_HEAD + b"Content-Length: 1000001\r\n\r\n")
    assert status == 413 and strict_json.loads(body)["field"] == "body", (status, body[:200])


def test_chunked_body_over_the_limit_is_413_json(server):
    """A chunked body (no Content-Length) is counted while it arrives: past the limit, 413 JSON."""
    chunk = b"%x\r\n%s\r\n" % (200_000, b" " * 200_000)
    status, ctype, body, elapsed = raw_request(server, PLAN_HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
                                               chunk * 6 + b"0\r\n\r\n")
    assert status == 413 and ctype.startswith("application/json") and elapsed < 2.0, (status, body[:200])
    assert strict_json.loads(body)["field"] == "body"


@pytest.mark.parametrize("head, code", [
    (b"POST /plan HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n", 400),
    (b"POST /plan HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
])
def test_requests_the_server_refuses_get_json_too(server, head, code):
    """Malformed requests that the server answers itself (the app never runs) carry JSON {error, field}."""
    status, ctype, body, elapsed = raw_request(server, head)
    assert status == code and ctype.startswith("application/json") and elapsed < 1.0, (status, ctype, body[:200])
    data = strict_json.loads(body)
    assert set(data) == {"error", "field"} and data["error"], data


def healthz_latencies(server, stop: threading.Event, out: list, starts: list | None = None) -> None:
    """Probe /healthz until told to stop; `starts` records when each probe began (monotonic)."""
    while not stop.is_set():
        t0 = time.monotonic()
        status, _, elapsed = server.call("GET", "/healthz", timeout=10)
        out.append((status, elapsed))
        if starts is not None:
            starts.append(t0)
        time.sleep(0.02)


def test_healthz_answers_while_plans_saturate_the_server(server):
    """At-budget plans (about 0.6 s each here) sent back to back by four clients for SATURATE_S, plus
    four over-budget ones: two compute at a time, the others are refused at once (429/413), and
    /healthz keeps answering within a second all along.

    The window is a fixed time, not a fixed number of plans: with four plans sent once, a fast host
    finished them in ~1.2 s and only one probe overlapped them (CI failed on "only 1 probe")."""
    saturate_s = 3.0
    heavy = json.dumps({"job": chain(10), "samples": 3900, "predictor": "des"})
    over = PLAN_REPRODUCERS["17 KB des plan without a token"]
    results: list = []
    lat: list = []
    starts: list = []
    stop = threading.Event()
    probe = threading.Thread(target=healthz_latencies, args=(server, stop, lat, starts))
    probe.start()

    def saturate(until: float) -> None:
        while time.monotonic() < until:
            status = server.plan(heavy, token=TOKEN)[0]
            results.append(status)
            if status == 429:
                time.sleep(0.05)      # a slot is busy: come back shortly, as a client would

    try:
        busy_from = time.monotonic()
        workers = [threading.Thread(target=saturate, args=(busy_from + saturate_s,)) for _ in range(4)]
        workers += [threading.Thread(target=lambda: results.append(server.plan(over)[0])) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        busy_until = time.monotonic()
    finally:
        stop.set()
        probe.join(15)
    statuses = sorted(results)
    assert statuses.count(413) == 4 and statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 413, 429}, statuses
    during = [t for t in starts if busy_from <= t < busy_until]
    assert len(during) >= 2, f"only {len(during)} /healthz probes overlapped {busy_until - busy_from:.2f} s of plans"
    assert lat and all(s == 200 for s, _ in lat)
    worst = max(e for _, e in lat)
    print(f"healthz under saturation: {len(during)} probes during {busy_until - busy_from:.1f} s of plans "
          f"({statuses.count(200)} plans computed, {statuses.count(429)} refused), worst {worst * 1000:.0f} ms")
    assert worst < 1.0, f"/healthz took {worst:.2f} s under saturation"
    server.assert_still_plans()


def test_healthz_answers_with_120_idle_connections(server):
    socks = []
    try:
        for _ in range(120):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            socks.append(s)
        time.sleep(0.3)
        status, _, elapsed = server.call("GET", "/healthz", timeout=10)
        assert status == 200 and elapsed < 1.0, elapsed
    finally:
        for s in socks:
            s.close()
    server.assert_still_plans()


def test_a_plan_past_the_time_limit_is_503_and_the_slot_comes_back():
    """The gate in-process (real threads): 503 at the limit, while the computation still runs (the next
    plan finds its slot busy: 429); the computation then finishes and frees its slot.

    The plan computes for ~4 s (80x the limit). No absolute bound on the 503 beyond a loose 10 s: in
    the long-lived test process a garbage collection in the plan thread can hold the GIL for ~1 s
    (CI answered in 1.28 s once); what the gate promises is an answer before the computation ends."""
    twin = dtlab.Twin(dtlab.load_cluster(CLUSTER))
    config = ApiConfig(token=TOKEN, request_timeout_s=0.05, max_inflight=1, max_work=20_000_000)
    client = create_app(twin, config).test_client()
    body = {"job": chain(30), "samples": 10_000, "predictor": "des"}
    t0 = time.monotonic()
    r = client.post("/plan", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    answered = time.monotonic() - t0
    assert r.status_code == 503 and "time limit" in r.get_json()["error"], r.get_json()
    assert client.post("/plan", json={"job": JOB}).status_code == 429  # the slot is still computing
    wait_for(lambda: client.post("/plan", json={"job": JOB}).status_code == 200, 60, "the slot to come back")
    freed = time.monotonic() - t0
    assert answered < freed and answered < 10.0, (answered, freed)


def test_responses_never_carry_non_finite_numbers():
    from dtlab.api.app import StrictJSONProvider
    from flask import Flask
    with pytest.raises(ValueError):
        StrictJSONProvider(Flask("t")).dumps({"x": float("inf")})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -64, "lots", 0, 1e308])
def test_stage_cpu_is_checked_where_events_are_validated(value):
    """The state's own validation (every writer, not only HTTP): a bad stage_cpu names its path
    and leaves running_cpu untouched, so no later stage-start or placement sees it."""
    state = dtlab.ClusterState(dtlab.load_cluster(CLUSTER))
    before = state.snapshot()
    with pytest.raises(dtlab.SpecError) as err:
        state.apply_many([{"kind": "job-submit", "job": "j", "stage_cpu": {"a": value}},
                          {"kind": "stage-start", "job": "j", "stage": "a", "node": "cloud-0"}])
    assert err.value.field == "[0].stage_cpu.a"
    after = state.snapshot()
    assert after.version == before.version and after.nodes["cloud-0"].running_cpu == 0
