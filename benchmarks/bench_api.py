"""Load on the REST API: /plan from a second process over loopback vs the same plans in-process.

Starts `dtlab serve` (waitress) on 127.0.0.1, sends a bounded number of dry-run /plan requests
(stops at --requests or --seconds, whichever comes first) from client threads in this process,
and prints requests/s with p50/p99 latency next to the same plans made in-process with
Twin.plan, as a ratio: what HTTP, JSON and the WSGI server cost on top of planning.
"""
from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--policy", default="greedy")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--json", action="store_true",
                    help="one JSON object (http_per_s, inprocess_per_s, ratio, latencies, load) instead of text")
    args = ap.parse_args()

    cluster_path = ROOT / "examples" / "cluster-hetero.yaml"
    job_doc = yaml.safe_load((ROOT / "examples" / "job-pipeline.yaml").read_text())
    body = json.dumps({"job": job_doc, "policy": args.policy, "samples": args.samples})

    port = free_port()
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "dtlab"), "serve", "--cluster", str(cluster_path),
                               "--port", str(port), "--threads", str(args.clients + 2),
                               "--max-inflight", str(args.clients)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "DTLAB_API_TOKEN": "bench"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 30, "dtlab serve", procs=[("serve", server)])
        session_local = threading.local()
        latencies: list[float] = []
        errors = 0
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds
        remaining = [args.requests]

        def client():
            nonlocal errors
            session_local.s = requests.Session()
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                r = session_local.s.post(f"{url}/plan", data=body, headers={"Content-Type": "application/json"},
                                         timeout=30)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=10)

    twin = dtlab.Twin(dtlab.load_cluster(cluster_path))
    job = dtlab.load_job(ROOT / "examples" / "job-pipeline.yaml")
    local = []
    t_start = time.perf_counter()
    for i in range(len(latencies)):
        t0 = time.perf_counter()
        twin.plan(job, policy=args.policy, samples=args.samples, seed=0)
        local.append((time.perf_counter() - t0) * 1000)
    local_wall = time.perf_counter() - t_start

    http_rps = len(latencies) / wall
    local_rps = len(local) / local_wall
    if args.json:
        print(json.dumps({"http_per_s": http_rps, "inprocess_per_s": local_rps, "ratio": http_rps / local_rps,
                          "ok": len(latencies), "errors": errors, "clients": args.clients, "policy": args.policy,
                          "samples": args.samples, "http_p50_ms": statistics.median(latencies),
                          "http_p99_ms": percentile(latencies, 99), "inprocess_p50_ms": statistics.median(local),
                          "inprocess_p99_ms": percentile(local, 99), "load_avg": os.getloadavg()[0]}))
        return 1 if errors else 0
    print(f"/plan over loopback ({args.clients} clients, {args.policy}, {args.samples} samples): "
          f"{len(latencies)} ok, {errors} errors in {wall:.1f} s -> {http_rps:.0f} req/s, "
          f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    print(f"same plans in-process: {local_rps:.0f} plans/s, p50 {statistics.median(local):.2f} ms, "
          f"p99 {percentile(local, 99):.2f} ms")
    print(f"ratio HTTP/in-process throughput: {http_rps / local_rps:.2f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
