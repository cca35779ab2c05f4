"""Load on the REST API: /plan from a second process over loopback vs the same plans in-process.

Starts `dtlab serve` (uvicorn, dtlab.api.asgi) on 127.0.0.1, sends a bounded number of dry-run /plan requests
(stops at --requests or --seconds, whichever comes first) from client threads in this process,
and prints requests/s with p50/p99 latency next to the same plans made in-process with
Twin.plan, as a ratio: what HTTP, JSON and the WSGI server cost on top of planning.

The two arms alternate in ``--rounds`` rounds (HTTP, then the same number of plans in-process),
so load from other work on the host drifts into both alike. The clients are keep-alive
``http.client`` connections (stdlib): a ``requests`` Session costs more CPU per call than the
server's whole answer, and on a 2-core host a heavy client measures itself. Also printed: the
server's CPU ms per request (from /proc) against the in-process CPU ms per plan, a ratio that
does not depend on the host's load.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netutil import free_port, wait_for  # noqa: E402

import dtlab  # noqa: E402


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def cpu_s(pid: int) -> float:
    """user + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_round(port: int, body: bytes, n: int, clients: int, deadline: float) -> tuple[list[float], int, float]:
    """``n`` POST /plan over ``clients`` keep-alive connections: (latencies ms of the 200s, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [n]
    headers = {"Content-Type": "application/json"}

    def client():
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                conn.request("POST", "/plan", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if resp.status == 200:
                        latencies.append(dt)
                    else:
                        errors += 1
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating HTTP / in-process rounds (default 3)")
    ap.add_argument("--policy", default="greedy")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--json", action="store_true",
                    help="one JSON object (http_per_s, inprocess_per_s, ratio, latencies, CPU, load) instead of text")
    args = ap.parse_args()

    cluster_path = ROOT / "examples" / "cluster-hetero.yaml"
    job_doc = yaml.safe_load((ROOT / "examples" / "job-pipeline.yaml").read_text())
    body = json.dumps({"job": job_doc, "policy": args.policy, "samples": args.samples}).encode()
    twin = dtlab.Twin(dtlab.load_cluster(cluster_path))
    job = dtlab.load_job(ROOT / "examples" / "job-pipeline.yaml")
    twin.plan(job, policy=args.policy, samples=args.samples, seed=0)   # warm, as the server is by round 1

    port = free_port()
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "dtlab"), "serve", "--cluster", str(cluster_path),
                               "--port", str(port), "--threads", str(args.clients + 2),
                               "--max-inflight", str(args.clients)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "DTLAB_API_TOKEN": "bench"})
    url = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    local: list[float] = []
    errors = 0
    wall = local_wall = server_cpu = local_cpu = 0.0
    load = os.getloadavg()[0]
    try:
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 30, "dtlab serve", procs=[("serve", server)])
        http_round(port, body, 20, args.clients, time.monotonic() + 30)    # warm the server too
        deadline = time.monotonic() + args.seconds
        per_round = max(1, args.requests // max(1, args.rounds))
        for _ in range(max(1, args.rounds)):
            c0 = cpu_s(server.pid)
            lat, err, w = http_round(port, body, per_round, args.clients, deadline)
            server_cpu += cpu_s(server.pid) - c0
            latencies += lat
            errors += err
            wall += w
            t_start, c_start = time.perf_counter(), time.process_time()
            for _ in range(len(lat)):
                t0 = time.perf_counter()
                twin.plan(job, policy=args.policy, samples=args.samples, seed=0)
                local.append((time.perf_counter() - t0) * 1000)
            local_wall += time.perf_counter() - t_start
            local_cpu += time.process_time() - c_start
            if time.monotonic() > deadline:
                break
    finally:
        server.terminate()
        server.wait(timeout=10)
    if not latencies:
        print("no /plan answered 200", file=sys.stderr)
        return 1
    http_rps = len(latencies) / wall
    local_rps = len(local) / local_wall
    server_ms, local_ms = server_cpu / len(latencies) * 1e3, local_cpu / len(local) * 1e3
    if args.json:
        print(json.dumps({"http_per_s": http_rps, "inprocess_per_s": local_rps, "ratio": http_rps / local_rps,
                          "server_cpu_ms_per_request": server_ms, "inprocess_cpu_ms_per_plan": local_ms,
                          "cpu_ratio": local_ms / server_ms if server_ms > 0 else float("nan"),
                          "ok": len(latencies), "errors": errors, "clients": args.clients, "policy": args.policy,
                          "samples": args.samples, "http_p50_ms": statistics.median(latencies),
                          "http_p99_ms": percentile(latencies, 99), "inprocess_p50_ms": statistics.median(local),
                          "inprocess_p99_ms": percentile(local, 99), "load_avg": load}))
        return 1 if errors else 0
    print(f"/plan over loopback ({args.clients} keep-alive clients, {args.policy}, {args.samples} samples, "
          f"load {load:.1f}): {len(latencies)} ok, {errors} errors in {wall:.1f} s -> {http_rps:.0f} req/s, "
          f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    print(f"same plans in-process: {local_rps:.0f} plans/s, p50 {statistics.median(local):.2f} ms, "
          f"p99 {percentile(local, 99):.2f} ms")
    print(f"ratio HTTP/in-process throughput: {http_rps / local_rps:.2f}  (CPU per answer: server "
          f"{server_ms:.2f} ms vs in-process {local_ms:.2f} ms -> {local_ms / server_ms:.2f})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
