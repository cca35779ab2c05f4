"""Prometheus metrics of the DT service, one registry per app so tests and servers do not share counters."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

PLAN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
# extender calls sit in the scheduler's serial loop: sub-ms resolution matters (bench_extender reads p50/p99)
EXTENDER_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 50, 100, 500, 5000)


class ServiceMetrics:
    def __init__(self, state):
        self.registry = CollectorRegistry()
        self.plan_latency = Histogram("dtlab_plan_latency_ms", "Time to plan one job (ms)",
                                      ["policy", "predictor"], buckets=PLAN_BUCKETS, registry=self.registry)
        self.plans = Counter("dtlab_plans", "Plans made, by policy", ["policy", "dry_run"], registry=self.registry)
        self.observe_lag = Histogram("dtlab_observe_lag_ms", "Event timestamp to applied in the state (ms)",
                                     buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000, 30000), registry=self.registry)
        self.events = Counter("dtlab_events_applied", "State events applied, by kind", ["kind"], registry=self.registry)
        self.rejected = Counter("dtlab_requests_rejected", "Client errors, by route and status",
                                ["route", "status"], registry=self.registry)
        self.extender_latency = Histogram("dtlab_extender_latency_ms", "One scheduler-extender call, body read "
                                          "to response built (ms)", ["verb"], buckets=EXTENDER_BUCKETS,
                                          registry=self.registry)
        self.registry.register(_StateCollector(state))


class _StateCollector:
    """State version and per-node telemetry age, read at scrape time so they are never stale."""

    def __init__(self, state):
        self.state = state

    def collect(self):
        snap = self.state.snapshot()
        version = GaugeMetricFamily("dtlab_state_version", "Version of the twin's cluster state")
        version.add_metric([], snap.version)
        yield version
        age = GaugeMetricFamily("dtlab_telemetry_age_seconds", "Age of the newest telemetry sample per node",
                                labels=["node"])
        now = time.time()
        for name, status in snap.nodes.items():
            if status.telemetry_ts is not None:
                age.add_metric([name], max(0.0, now - status.telemetry_ts))
        yield age
