"""What the 1 s freshness assumption costs (issue 20, item 4): telemetry age and refused plans under V1's load.

On the fabric (real processes, one cgroup per node) with its per-node cgroup exporters and a real
Prometheus (dtlab.telemetry), for each scrape interval (``--scrape``, default 0.25, 0.5, 1.0 s;
the poll interval follows it, capped at 0.5 s):

* the controller runs V1's fabric load (params/V1.yaml ``fabric:``: examples/cluster-hetero.yaml,
  examples/workload.yaml at 2 jobs/s, 20 jobs, ``greedy``, time scale 1 so the fabric clock is the
  wall clock) with ``freshness_s`` = ``--freshness`` (1 s) and the poller as its telemetry source;
* **scrape + query + apply latency**: for every telemetry event, wall time from the sample's scrape
  (its Prometheus timestamp) to its application in the twin's state (p50/p99; the controller applies
  at its next sync, i.e. the next arrival, so this includes waiting for it), beside ``scrape_to_poll``
  (scrape to the poller holding the answer) and the query time alone;
* **age at plan**: the oldest telemetry among each plan's nodes when it is gated (what the rule
  compares with the budget), and the **share of plans refused** as stale.

Needs root (the fabric) and ``prometheus``; otherwise prints why and exits 0 (``make bench`` goes on).
Run: .venv/bin/python benchmarks/bench_telemetry.py [--scrape 0.25 0.5 1.0] [--jobs 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlab.controller import REFUSED_STALE, Controller  # noqa: E402
from dtlab.experiments.params import load_cluster_param, load_workload_param  # noqa: E402
from dtlab.telemetry import PrometheusClient, PrometheusProcess, TelemetryPoller  # noqa: E402
from dtlab.twin import Twin  # noqa: E402
from dtlab.workload.stream import job_stream  # noqa: E402


class TimedPoller(TelemetryPoller):
    """The poller, recording for every event handed to the controller its age (wall s since its scrape)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.apply_ages: list[float] = []
        self._epoch: dict[int, float] = {}

    def poll_once(self):
        events = super().poll_once()
        stamps = self.client.last_stamps
        for ev in events:
            self._epoch[id(ev)] = max(stamps) if stamps else time.time()
        return events

    def events(self):
        out = super().events()
        now = time.time()      # the controller applies them right after this call (Controller.sync)
        self.apply_ages += [now - self._epoch.pop(id(ev), now) for ev in out]
        return out


def quantiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": float(np.quantile(xs, 0.5)), "p99": float(np.quantile(xs, 0.99)), "n": len(xs)}


def run_one(sub, scrape_s: float, poll_s: float, jobs: int, rate: float, freshness_s: float, seed: int) -> dict:
    prom = PrometheusProcess(sub.exporter_targets, scrape_s).start()
    poller = TimedPoller(PrometheusClient(prom.url, timeout_s=1.0), poll_s, clock=sub.ts_of_epoch).start()
    try:
        twin = Twin(sub.cluster())
        twin.state.apply_many(sub.events())
        ctl = Controller(twin, sub, policy="greedy", samples=128, seed=seed, freshness_s=freshness_s,
                         telemetry=poller)
        warm = time.monotonic() + 10           # until every node has reported once
        while time.monotonic() < warm:
            ctl.sync()
            if all(s.telemetry_ts is not None for s in twin.state.snapshot().nodes.values()):
                break
            time.sleep(0.05)
        poller.apply_ages.clear()
        workload = load_workload_param("examples/workload.yaml", jobs, rate)
        ages_at_plan = []
        start_ms = sub.now_ms()
        orig_act = ctl.act

        def act(plan, job, snapshot=None):
            now = sub.now_ms() / 1000.0
            snap = twin.state.snapshot()
            used = set(plan.placement.values()) | set(plan.shadow.values())
            ages = [snap.telemetry_age_s(n, now) for n in used]
            ages_at_plan.append(max(float("inf") if a is None else a for a in ages))
            return orig_act(plan, job, snapshot)
        ctl.act = act                                 # type: ignore[method-assign]
        for at_ms, job in job_stream(workload, np.random.default_rng(seed)):
            # one fabric serves every interval: job names must not repeat across runs
            ctl.step(replace(job, name=f"{job.name}-s{scrape_s:g}"), start_ms + at_ms)
        during = list(poller.apply_ages)      # the drain below has no plans: its queued events are not counted
        sub.advance(None)
        ctl.sync()
        decisions = [r["decision"] for r in ctl.records]
        refused = decisions.count(REFUSED_STALE)
        return {"scrape_s": scrape_s, "poll_s": poll_s, "plans": len(decisions), "refused_stale": refused,
                "refused_share": refused / max(1, len(decisions)),
                "scrape_query_apply_s": quantiles(during),
                "scrape_to_poll_s": quantiles([s["age_s"] for s in poller.samples if "age_s" in s]),
                "query_s": quantiles([s["query_s"] for s in poller.samples]),
                "age_at_plan_s": quantiles([a for a in ages_at_plan if a != float("inf")]),
                "query_errors": poller.last_error}
    finally:
        poller.stop()
        prom.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrape", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="scrape intervals (s)")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2.0, help="arrivals per second (V1's fabric rate)")
    ap.add_argument("--freshness", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = ap.parse_args()
    from dtlab.fabric import available
    ok, why = available()
    if not ok or shutil.which("prometheus") is None:
        print(f"bench_telemetry: skipped: {why if not ok else 'prometheus not installed (make test-deps)'}")
        return 0
    from dtlab.substrates import make_substrate
    cluster = load_cluster_param("examples/cluster-hetero.yaml")
    sub = make_substrate("fabric", cluster, seed=args.seed, host_cores=2.0, time_scale=1, telemetry="prometheus",
                         scrape_interval_s=0.5)
    results = []
    load0 = os.getloadavg()[0]
    try:
        sub.prometheus.close()        # each interval gets its own Prometheus on the same exporters
        for scrape in args.scrape:
            results.append(run_one(sub, scrape, min(scrape, 0.5), args.jobs, args.rate, args.freshness, args.seed))
    finally:
        sub.close()
    doc = {"benchmark": "telemetry", "freshness_s": args.freshness, "jobs": args.jobs, "rate_per_s": args.rate,
           "cluster": "examples/cluster-hetero.yaml", "results": results,
           # the numbers depend on what else this host runs: Prometheus, exporters and controller share its cores
           "host_loadavg_1m": {"start": load0, "end": os.getloadavg()[0], "cores": os.cpu_count()},
           "host_noise": {k: (sub.noise or {}).get(k) for k in ("noisy", "reasons")}}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0

    def ms(q: dict, k: str) -> str:
        return "-" if q[k] is None else f"{q[k] * 1000:.0f}"
    print(f"host load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"freshness budget {args.freshness:g} s, V1 fabric load ({args.jobs} jobs at {args.rate:g}/s, greedy)")
    print("scrape_s poll_s  scrape+query+apply p50/p99 ms  scrape->poll p50/p99 ms  query p50/p99 ms  "
          "age at plan p50/p99 ms  refused")
    for r in results:
        a, q, g, sp = r["scrape_query_apply_s"], r["query_s"], r["age_at_plan_s"], r["scrape_to_poll_s"]
        print(f"{r['scrape_s']:8g} {r['poll_s']:6g}  {ms(a, 'p50'):>13} / {ms(a, 'p99'):<13} "
              f"{ms(sp, 'p50'):>10} / {ms(sp, 'p99'):<10} {ms(q, 'p50'):>7} / "
              f"{ms(q, 'p99'):<8} {ms(g, 'p50'):>10} / {ms(g, 'p99'):<10} {r['refused_stale']}/{r['plans']} "
              f"({100 * r['refused_share']:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
