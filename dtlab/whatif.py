"""What-if evaluation: the pure computation behind the dashboard.

``evaluate(cluster, job, policies, knobs)`` rebuilds the cluster and timing
model with the knobs applied and plans the job with every policy using the
``fast`` predictor. It has no widgets and no state, so notebooks, tests and the
dashboard all call the same function.

Knobs (all optional):

- ``arrival_rate_per_s``: other jobs of the same kind arriving per second. Their
  load is spread over the cluster in proportion to capacity, so every node sees
  background utilisation ``rate * core-seconds per job / total core-speed``
  (capped at 0.95); a first-order model, stated as such.
- ``fail_prob``: probability that any node fails during the job (overrides the spec).
- ``latency_scale``: multiplies every link's latency.
- ``links``: ``{"zoneA|zoneB": {"latency_ms": .., "loss": ..}}`` per zone pair.
- ``overheads``: execution-format overhead factors (``qemu-arm64``, ``wasm``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .model import Cluster, Job, Link
from .timing import MAX_BACKGROUND, TimingModel


def pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def zone_pairs(cluster: Cluster) -> list[str]:
    """Zone pairs with a listed link, as ``a|b`` keys (the sliders' names)."""
    zones = set(cluster.zones)
    return sorted({pair_key(l.a, l.b) for l in cluster.links if l.a in zones and l.b in zones})


def apply_knobs(cluster: Cluster, job: Job, knobs: Mapping[str, Any]) -> tuple[Cluster, TimingModel, dict[str, float]]:
    """The cluster, timing model and per-node background utilisation the knobs describe."""
    scale = float(knobs.get("latency_scale", 1.0))
    per_pair = knobs.get("links") or {}
    links = []
    for link in cluster.links:
        changes = dict(per_pair.get(pair_key(link.a, link.b), {}))
        latency = changes.pop("latency_ms", link.latency_ms) * scale
        links.append(replace(link, latency_ms=latency, **changes))
    nodes = cluster.nodes
    if knobs.get("fail_prob") is not None:
        nodes = tuple(replace(n, fail_prob=float(knobs["fail_prob"])) for n in nodes)
    out = replace(cluster, nodes=tuple(nodes), links=tuple(links))
    timing = TimingModel().with_overheads(knobs.get("overheads") or {})
    rate = float(knobs.get("arrival_rate_per_s", 0.0))
    core_seconds = sum(s.compute.duration_ms * s.compute.cpu for s in job.stages) / 1000.0
    capacity = sum(n.cores * n.speed for n in nodes)
    util = min(MAX_BACKGROUND, rate * core_seconds / capacity) if capacity else 0.0
    return out, timing, {n.name: util for n in nodes}


@dataclass
class PolicyOutcome:
    policy: str
    prediction: dict[str, float]
    placement: dict[str, str]
    shadow: dict[str, str]
    latencies_ms: np.ndarray
    error: str | None = None


def evaluate(cluster: Cluster, job: Job, policies: Sequence[str], knobs: Mapping[str, Any] | None = None,
             samples: int = 256, seed: int = 0) -> dict[str, PolicyOutcome]:
    """Plan ``job`` with each policy under ``knobs``; same knobs and seed give the same numbers."""
    from .predict import sample_latencies
    from .twin import Twin

    knobs = knobs or {}
    what_cluster, timing, background = apply_knobs(cluster, job, knobs)
    twin = Twin(what_cluster, timing=timing)
    twin.state.apply_many([{"kind": "telemetry", "node": n, "cpu_util": u, "ts": 0.0} for n, u in background.items()])
    snap = twin.state.snapshot()
    out: dict[str, PolicyOutcome] = {}
    for policy in policies:
        try:
            plan = twin.plan(job, policy=policy, samples=samples, seed=seed, predictor="fast")
        except Exception as exc:  # one infeasible policy must not blank the others
            out[policy] = PolicyOutcome(policy, {}, {}, {}, np.array([]), error=str(exc))
            continue
        lat = sample_latencies(snap, job, plan.placement, plan.shadow or None, predictor="fast", samples=samples,
                               rng=np.random.default_rng(seed), timing=timing)
        out[policy] = PolicyOutcome(policy, dict(plan.prediction), dict(plan.placement), dict(plan.shadow),
                                    np.sort(np.asarray(lat)))
    return out


def link_for(cluster: Cluster, a: str, b: str) -> Link | None:
    for link in cluster.links:
        if pair_key(link.a, link.b) == pair_key(a, b):
            return link
    return None
