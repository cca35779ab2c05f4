"""Telemetry: node CPU utilisation from a Prometheus server, and the freshness rule.

The twin plans on telemetry; telemetry that is older than the freshness budget
(default 1 s, the design's figure) makes a node *stale*. The controller must not
actuate a plan that relies on a stale node, and must say which and why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping


from .errors import DtlabError

DEFAULT_FRESHNESS_S = 1.0
NODE_CPU_QUERY = '1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{window}]))'


class TelemetryError(DtlabError):
    """Prometheus could not be queried or answered with an error."""


class StaleTelemetry(DtlabError):
    """A plan relies on nodes whose telemetry is older than the freshness budget."""

    def __init__(self, stale: Mapping[str, float | None], budget_s: float):
        self.stale = dict(stale)
        self.budget_s = budget_s
        ages = ", ".join(f"{n} ({'never reported' if a is None else f'{a:.1f} s old'})" for n, a in sorted(stale.items()))
        super().__init__(f"not actuating: telemetry of {ages} is older than the {budget_s:g} s freshness budget")


@dataclass
class PrometheusClient:
    """Minimal client of the Prometheus HTTP API (``/api/v1/query``)."""
    base_url: str
    timeout_s: float = 5.0

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float, float]]:
        """Instant query: list of (labels, sample timestamp, value)."""
        import requests  # imported here: every `dtlab` command loads this module, few query Prometheus

        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            resp = requests.get(f"{self.base_url.rstrip('/')}/api/v1/query", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TelemetryError(f"Prometheus at {self.base_url} unreachable: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            raise TelemetryError(f"Prometheus answered HTTP {resp.status_code} with a non-JSON body") from None
        if body.get("status") != "success":
            raise TelemetryError(f"Prometheus query failed: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "vector":
            return [(r["metric"], float(r["value"][0]), float(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][0]), float(data["result"][1]))]
        raise TelemetryError(f"unsupported result type {data['resultType']!r}")

    def node_cpu_events(self, instance_to_node: Mapping[str, str], window: str = "30s") -> list[dict]:
        """Telemetry events (dtlab.state) of node CPU utilisation, timestamped with the sample time."""
        events = []
        for labels, ts, value in self.query(NODE_CPU_QUERY.format(window=window)):
            node = instance_to_node.get(labels.get("instance", ""))
            if node is not None:
                events.append({"kind": "telemetry", "node": node, "cpu_util": min(1.0, max(0.0, value)), "ts": ts})
        return events


def stale_nodes(snapshot, nodes: Iterable[str], budget_s: float = DEFAULT_FRESHNESS_S,
                now: float | None = None) -> dict[str, float | None]:
    """Nodes among ``nodes`` whose newest telemetry is older than ``budget_s`` (None: never reported)."""
    now = time.time() if now is None else now
    out = {}
    for name in set(nodes):
        age = snapshot.telemetry_age_s(name, now)
        if age is None or age > budget_s:
            out[name] = age
    return out


def check_fresh(plan, snapshot, budget_s: float = DEFAULT_FRESHNESS_S, now: float | None = None) -> None:
    """Raise StaleTelemetry if the plan (placement or shadow) relies on a stale node."""
    used = set(plan.placement.values()) | set(plan.shadow.values())
    stale = stale_nodes(snapshot, used, budget_s, now)
    if stale:
        raise StaleTelemetry(stale, budget_s)
