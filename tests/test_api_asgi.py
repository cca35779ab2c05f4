"""dtlab serve's event-loop front (dtlab.api.asgi) on a real uvicorn server in this process: the same
answers as the Flask app, plans handed to the planning thread past the inline size, and the limits
waitress used to enforce (read time, connections). The hardening suite (test_hardening_http.py)
checks the same front through `dtlab serve` in a subprocess."""
import http.client
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

import dtlab
from dtlab import strict_json
from dtlab.api import ApiConfig, create_app
from dtlab.api.asgi import BackgroundServer, ServiceFront
from dtlab.extender import Extender
from tests.netutil import wait_for

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster-hetero.yaml"
JOB = yaml.safe_load((ROOT / "examples" / "job-pipeline.yaml").read_text())
TOKEN, SECRET = "front-token", "front-secret-0123456789"


class Front:
    """A ServiceFront on uvicorn in a thread, bound to a free loopback port."""

    def __init__(self, read_timeout_s: float = 30.0, connection_limit: int = 500, **config):
        self.twin = dtlab.Twin(dtlab.load_cluster(CLUSTER))
        self.config = ApiConfig(token=TOKEN, extender_secret=SECRET, **config)
        self.extender = Extender(self.twin)
        self.app = create_app(self.twin, self.config, extender=self.extender)
        self.front = ServiceFront(self.app, extender=self.extender, wsgi_threads=4, read_timeout_s=read_timeout_s)
        self.background = BackgroundServer(self.front, "127.0.0.1", 0, connection_limit)
        self.port = self.background.port
        wait_for(lambda: self.background.server.started, 10, "uvicorn in a thread")

    def stop(self):
        self.background.close()

    def call(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def front():
    f = Front()
    yield f
    f.stop()


def without_clock(data: bytes) -> bytes:
    """The answer without ``elapsed_ms`` (each plan's own wall-clock time)."""
    return re.sub(rb'"elapsed_ms":[-+0-9.eE]+,', b"", data)


def flask_answer(front, method, path, body=None, headers=None):
    r = front.app.test_client().open(path, method=method, data=body, headers=headers or {},
                                     content_type="application/json")
    return r.status_code, r.headers, r.data


@pytest.mark.parametrize("body, headers", [
    ({"job": JOB, "policy": "greedy", "samples": 64}, {}),
    ({"job": JOB, "policy": "cvar", "samples": 32, "seed": 7}, {}),
    ({"job": JOB, "samples": 0}, {}),                                  # 400 samples
    ({"job": JOB, "policy": "nope"}, {}),                              # 400 policy
    ({"job": JOB, "dry_run": False}, {}),                              # 401 + WWW-Authenticate
    ({"job": JOB, "dry_run": False}, {"Authorization": f"Bearer {TOKEN}"}),   # 409: no controller
    ({"job": {"spec": {"stages": []}}}, {}),                           # 400 job.*
])
def test_plan_answers_are_the_flask_apps_byte_for_byte(front, body, headers):
    raw = json.dumps(body).encode()
    status, head, data = front.call("POST", "/plan", raw, headers)
    f_status, f_head, f_data = flask_answer(front, "POST", "/plan", raw, headers)
    assert (status, without_clock(data)) == (f_status, without_clock(f_data)), (status, data[:300], f_data[:300])
    assert head["content-type"] == "application/json"
    for name in ("WWW-Authenticate", "Retry-After"):
        assert head.get(name.lower()) == f_head.get(name), name


def test_extender_answers_are_the_blueprints_and_a_wrong_secret_is_404(front):
    body = json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["cloud-0", "edge-a-0", "nowhere"]})
    for verb in ("filter", "prioritize"):
        path = f"/extender/{SECRET}/{verb}"
        status, _, data = front.call("POST", path, body)
        assert (status, data) == flask_answer(front, "POST", path, body)[::2], data[:300]
        assert status == 200 and strict_json.loads(data)
    assert front.call("POST", f"/extender/{SECRET}x/filter", body)[0] == 404
    status, _, data = front.call("POST", f"/extender/{SECRET}/filter", "{")
    assert status == 400 and "Error" in strict_json.loads(data)
    metrics = front.call("GET", "/metrics")[2].decode()
    assert 'dtlab_extender_latency_ms_count{verb="prioritize"}' in metrics


def test_other_routes_reach_the_flask_app(front):
    status, _, data = front.call("GET", "/healthz")
    assert status == 200 and strict_json.loads(data) == {"status": "ok", "version": front.twin.state.version}
    assert front.call("GET", "/snapshot")[0] == 200
    status, _, data = front.call("POST", "/observe", json.dumps([]), {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and strict_json.loads(data)["applied"] == 0
    status, _, data = front.call("GET", "/no-such-route")
    assert status == 404 and set(strict_json.loads(data)) == {"error", "field"}


def test_a_plan_past_the_inline_size_goes_to_the_planning_thread_with_its_time_limit():
    """Work over the inline size is handed to the planning thread: past the time limit it answers 503
    while the computation holds its slot (429), then the slot comes back; a small plan still answers."""
    f = Front(request_timeout_s=0.05, max_inflight=1, max_work=50_000_000)
    try:
        assert f.front.inline_work_us == 0.05e6 / 4   # a quarter of the time limit, under INLINE_WORK_US
        heavy = json.dumps({"job": {"metadata": {"name": "c"}, "spec": {"stages": [
            {"id": f"s{i}", "compute": {"duration_ms": 100}, "after": [f"s{i - 1}"] if i else []}
            for i in range(30)]}}, "samples": 10_000, "predictor": "des"})
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, head, data = f.call("POST", "/plan", heavy, auth)
        assert status == 503 and "time limit" in strict_json.loads(data)["error"] and head["retry-after"] == "1"
        assert f.call("POST", "/plan", json.dumps({"job": JOB, "samples": 8}))[0] == 429
        wait_for(lambda: f.call("POST", "/plan", json.dumps({"job": JOB, "samples": 8}))[0] == 200, 120,
                 "the slot to come back")
    finally:
        f.stop()


def test_a_small_plan_answers_on_the_loop_while_a_large_one_holds_the_planning_thread():
    """The inline path: with one planning thread busy on a large plan, a small plan does not queue
    behind it (it would on the planning thread) and answers while the large one still computes."""
    f = Front(max_inflight=2, max_work=50_000_000)
    try:
        heavy = json.dumps({"job": {"metadata": {"name": "c"}, "spec": {"stages": [
            {"id": f"s{i}", "compute": {"duration_ms": 100}, "after": [f"s{i - 1}"] if i else []}
            for i in range(30)]}}, "samples": 4000, "predictor": "des"})
        done = {}

        def large():
            t0 = time.monotonic()
            done["status"] = f.call("POST", "/plan", heavy, {"Authorization": f"Bearer {TOKEN}"})[0]
            done["at"] = time.monotonic() - t0

        worker = threading.Thread(target=large)
        t0 = time.monotonic()
        worker.start()
        wait_for(lambda: f.front.core.gate.slots._value == 1, 10, "the large plan admitted")
        status, _, _ = f.call("POST", "/plan", json.dumps({"job": JOB, "samples": 64}))
        small_at = time.monotonic() - t0
        assert status == 200 and "at" not in done, (status, done)   # answered while the large one computes
        worker.join(120)
        assert done["status"] == 200 and small_at < done["at"], (small_at, done)
    finally:
        f.stop()


def test_a_head_or_body_that_does_not_arrive_in_time_is_cut_off():
    f = Front(read_timeout_s=1.0)
    try:
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as s:      # a head, unfinished
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            assert s.recv(100) == b"" and time.monotonic() - t0 < 5
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as s:      # a body, unfinished
            s.sendall(b"POST /plan HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"job\"")
            t0 = time.monotonic()
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5, answer
            assert strict_json.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "body"
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as s:      # silent from the start
            t0 = time.monotonic()
            assert s.recv(100) == b"" and time.monotonic() - t0 < 5
        assert f.call("GET", "/healthz")[0] == 200
    finally:
        f.stop()


def test_connections_past_the_limit_are_closed_and_the_held_ones_still_answer():
    f = Front(connection_limit=3)
    socks = []
    try:
        for _ in range(3):
            socks.append(socket.create_connection(("127.0.0.1", f.port), timeout=10))
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", f.port), timeout=10) as extra:
            assert extra.recv(100) == b""                     # closed at once, never served
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert socks[0].recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
        f.stop()


def test_serve_stops_on_sigterm_through_its_cleanup(tmp_path):
    """uvicorn shuts down gracefully on SIGTERM and raises it again: dtlab serve's handler turns that into a
    normal exit (status 0, its finally runs) instead of the default handler's kill."""
    import os
    import signal
    import subprocess
    import sys

    from tests.netutil import free_port
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dtlab.cli", "serve", "--cluster", str(CLUSTER), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "DTLAB_API_TOKEN": TOKEN})
    try:
        wait_for(lambda: _healthz(port), 60, "dtlab serve", procs=[("dtlab serve", proc)])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text()


def _healthz(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
