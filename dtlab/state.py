"""ClusterState: the twin's mirror of the world, fed by events, read through snapshots.

Writers (observer threads, the API, the controller) call :meth:`ClusterState.apply`
with plain-dict events; readers (planners) take :meth:`ClusterState.snapshot`, an
immutable view carrying the version it was taken at. An apply touches only the
objects the event names (O(changed)); a snapshot is rebuilt only when the
version moved since the last one, so a burst of plans shares one copy.

Event kinds (every event may carry ``ts``, seconds since the epoch or virtual seconds):

==================  =====================================================================
node-add            ``node``: a Node spec dict (as in a Cluster spec)
node-remove         ``node``: name
node-down/node-up   ``node``: name (fail-stop failure / recovery)
node-cordon/-uncordon ``node``: name (no new work; running work continues)
telemetry           ``node``, ``cpu_util`` in [0,1] (background share of cores busy), ``ts``
link                ``a``, ``b`` (zones or nodes); any of latency_ms, bandwidth_mbps,
                    loss, jitter_ms; ``up: false`` cuts the link (partition)
link-reset          ``a``, ``b``: back to the spec's link
job-submit          ``job``: name; optional ``deadline_ms`` and ``stage_cpu`` {stage: cores}
stage-start         ``job``, ``stage``, ``node``
stage-end           ``job``, ``stage``, ``node``, ``ok`` (default true)
chaos               ``fault``: a FaultScenario fault dict (recorded; its effects come as the events above)
==================  =====================================================================
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import SpecError
from .model import Cluster, Link, Node, cluster_from_dict

EVENT_KINDS = ("node-add", "node-remove", "node-down", "node-up", "node-cordon", "node-uncordon",
               "telemetry", "link", "link-reset", "job-submit", "stage-start", "stage-end", "chaos")
LINK_FIELDS = ("latency_ms", "bandwidth_mbps", "loss", "jitter_ms")


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    up: bool = True
    cordoned: bool = False
    cpu_util: float = 0.0          # background utilisation from telemetry
    telemetry_ts: float | None = None
    running_cpu: float = 0.0       # cores claimed by stages the twin knows are running

    @property
    def schedulable(self) -> bool:
        return self.up and not self.cordoned


@dataclass(frozen=True)
class StageStatus:
    job: str
    stage: str
    node: str | None
    phase: str                     # pending | running | succeeded | failed
    start_ts: float | None = None
    end_ts: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the state at one version."""
    version: int
    taken_at: float
    cluster: Cluster                        # spec nodes as currently known (incl. added nodes)
    nodes: Mapping[str, NodeStatus]
    link_overrides: Mapping[tuple[str, str], Link | None]   # None = cut
    stages: Mapping[tuple[str, str], StageStatus]

    def link(self, src: str, dst: str) -> Link | None:
        """Current link from node ``src`` to ``dst`` (None for same node); raises if cut."""
        if src == dst:
            return None
        za, zb = self.nodes[src].node.zone, self.nodes[dst].node.zone
        for key in ((src, dst), (za, zb)):
            if key in self.link_overrides:
                link = self.link_overrides[key]
                if link is None:
                    raise SpecError("links", f"link {key[0]}->{key[1]} is cut")
                return link
        return self.cluster.link(src, dst)

    def reachable(self, src: str, dst: str) -> bool:
        try:
            self.link(src, dst)
            return True
        except SpecError:
            return False

    def telemetry_age_s(self, name: str, now: float | None = None) -> float | None:
        ts = self.nodes[name].telemetry_ts
        return None if ts is None else (time.time() if now is None else now) - ts

    def schedulable_nodes(self) -> list[Node]:
        return [s.node for s in self.nodes.values() if s.schedulable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cluster": self.cluster.name,
            "nodes": [
                {"name": s.node.name, "arch": s.node.arch, "zone": s.node.zone, "cores": s.node.cores,
                 "speed": s.node.speed, "formats": list(s.node.formats), "up": s.up, "cordoned": s.cordoned,
                 "cpu_util": s.cpu_util, "telemetry_ts": s.telemetry_ts, "running_cpu": s.running_cpu}
                for s in self.nodes.values()
            ],
            "links": [
                {"a": a, "b": b, "up": l is not None,
                 **({k: getattr(l, k) for k in LINK_FIELDS} if l is not None else {})}
                for (a, b), l in self.link_overrides.items()
            ],
            "stages": [
                {"job": s.job, "stage": s.stage, "node": s.node, "phase": s.phase,
                 "start_ts": s.start_ts, "end_ts": s.end_ts}
                for s in self.stages.values()
            ],
        }


class ClusterState:
    """Thread-safe, versioned mirror of one cluster."""

    def __init__(self, cluster: Cluster):
        self._lock = threading.RLock()
        self._cluster = cluster
        self._nodes: dict[str, NodeStatus] = {n.name: NodeStatus(n) for n in cluster.nodes}
        self._links: dict[tuple[str, str], Link | None] = {}
        self._stages: dict[tuple[str, str], StageStatus] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._chaos: list[dict[str, Any]] = []
        self._version = 0
        self._snap: Snapshot | None = None
        self._nodes_changed = False

    @property
    def version(self) -> int:
        return self._version

    @property
    def cluster(self) -> Cluster:
        return self.snapshot().cluster

    # ------------------------------------------------------------ reading
    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snap is None or self._snap.version != self._version:
                cluster = self._cluster
                if self._nodes_changed:
                    cluster = self._cluster = cluster.with_nodes(s.node for s in self._nodes.values())
                    self._nodes_changed = False
                self._snap = Snapshot(
                    version=self._version, taken_at=time.time(), cluster=cluster,
                    nodes=MappingProxyType(dict(self._nodes)),
                    link_overrides=MappingProxyType(dict(self._links)),
                    stages=MappingProxyType(dict(self._stages)),
                )
            return self._snap

    # ------------------------------------------------------------ writing
    def apply(self, event: Mapping[str, Any]) -> int:
        """Apply one event; returns the new version. Invalid events raise SpecError and change nothing."""
        return self.apply_many([event])

    def apply_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply a batch atomically: all events are validated first, then applied under one lock."""
        events = list(events)
        with self._lock:
            staged = _Staging(self)
            for i, event in enumerate(events):
                staged.apply(event, f"[{i}]" if len(events) > 1 else "")
            if staged.changed:
                staged.commit()
                self._version += 1
            return self._version


class _Staging:
    """Copy-on-write overlay used to validate a batch before any of it touches the state."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.nodes: dict[str, NodeStatus | None] = {}
        self.links: dict[tuple[str, str], Link | None | str] = {}
        self.stages: dict[tuple[str, str], StageStatus] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.chaos: list[dict[str, Any]] = []
        self.changed = False

    def node(self, name: Any, path: str) -> NodeStatus:
        if not isinstance(name, str):
            raise SpecError(path, "must be a node name")
        status = self.nodes[name] if name in self.nodes else self.state._nodes.get(name)
        if status is None:
            raise SpecError(path, f"unknown node {name!r}")
        return status

    def put(self, status: NodeStatus) -> None:
        self.nodes[status.node.name] = status
        self.changed = True

    def apply(self, event: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(event, Mapping):
            raise SpecError(prefix or "event", "must be a mapping")
        kind = event.get("kind")
        if kind not in EVENT_KINDS:
            raise SpecError(f"{prefix}.kind".lstrip("."), f"must be one of {list(EVENT_KINDS)}, got {kind!r}")
        p = (prefix + ".") if prefix else ""
        ts = event.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise SpecError(p + "ts", "must be a number (seconds)")
        if kind == "node-add":
            spec = event.get("node")
            if not isinstance(spec, Mapping):
                raise SpecError(p + "node", "must be a Node spec mapping")
            try:
                node = cluster_from_dict({"nodes": [dict(spec)]}).nodes[0]
            except SpecError as exc:
                raise SpecError(p + exc.field.replace("nodes[0]", "node"), exc.rule) from None
            old = self.nodes.get(node.name) or self.state._nodes.get(node.name)
            self.put(NodeStatus(node) if old is None else replace(old, node=node))
            self.state._nodes_changed = True
        elif kind == "node-remove":
            self.node(event.get("node"), p + "node")
            self.nodes[event["node"]] = None
            self.changed = True
            self.state._nodes_changed = True
        elif kind in ("node-down", "node-up", "node-cordon", "node-uncordon"):
            status = self.node(event.get("node"), p + "node")
            field_, value = {"node-down": ("up", False), "node-up": ("up", True),
                             "node-cordon": ("cordoned", True), "node-uncordon": ("cordoned", False)}[kind]
            self.put(replace(status, **{field_: value}))
        elif kind == "telemetry":
            status = self.node(event.get("node"), p + "node")
            util = event.get("cpu_util")
            if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 <= util <= 1:
                raise SpecError(p + "cpu_util", "must be a number in [0, 1]")
            self.put(replace(status, cpu_util=float(util), telemetry_ts=float(ts) if ts is not None else time.time()))
        elif kind in ("link", "link-reset"):
            a, b = event.get("a"), event.get("b")
            known = set(self.state._cluster.zones) | set(self.state._nodes)
            for key, value in (("a", a), ("b", b)):
                if value not in known:
                    raise SpecError(p + key, f"{value!r} is neither a zone nor a node")
            if kind == "link-reset":
                self.links[(a, b)] = "reset"
                self.links[(b, a)] = "reset"
            elif event.get("up", True) is False:
                self.links[(a, b)] = None
                self.links[(b, a)] = None
            else:
                base = self._current_link(a, b)
                changes = {}
                for k in LINK_FIELDS:
                    if k in event:
                        v = event[k]
                        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "loss" and v >= 1) \
                                or (k == "bandwidth_mbps" and v <= 0):
                            raise SpecError(p + k, "must be a valid non-negative number (loss < 1, bandwidth > 0)")
                        changes[k] = float(v)
                link = replace(base, a=a, b=b, **changes)
                self.links[(a, b)] = link
                self.links[(b, a)] = replace(link, a=b, b=a)
            self.changed = True
        elif kind == "job-submit":
            job = event.get("job")
            if not isinstance(job, str):
                raise SpecError(p + "job", "must be a job name")
            stage_cpu = event.get("stage_cpu", {})
            if not isinstance(stage_cpu, Mapping):
                raise SpecError(p + "stage_cpu", "must map stage ids to cores")
            self.jobs[job] = {"submitted_ts": ts, "deadline_ms": event.get("deadline_ms"),
                              "stage_cpu": dict(stage_cpu)}
            self.changed = True
        elif kind in ("stage-start", "stage-end"):
            job, stage, node = event.get("job"), event.get("stage"), event.get("node")
            if not isinstance(job, str):
                raise SpecError(p + "job", "must be a job name")
            if not isinstance(stage, str):
                raise SpecError(p + "stage", "must be a stage id")
            if node is not None:
                self.node(node, p + "node")
            key = (job, stage)
            prev = self.stages.get(key) or self.state._stages.get(key)
            if kind == "stage-start":
                new = StageStatus(job, stage, node, "running", start_ts=ts)
                self._claim(prev, new)
            else:
                ok = event.get("ok", True)
                new = StageStatus(job, stage, node or (prev.node if prev else None),
                                  "succeeded" if ok else "failed",
                                  start_ts=prev.start_ts if prev else None, end_ts=ts)
                self._claim(prev, new)
            self.stages[key] = new
            self.changed = True
        elif kind == "chaos":
            if not isinstance(event.get("fault"), Mapping):
                raise SpecError(p + "fault", "must be a fault mapping")
            self.chaos.append(dict(event["fault"]))
            self.changed = True

    def _claim(self, prev: StageStatus | None, new: StageStatus) -> None:
        """Keep ``running_cpu`` per node equal to the cores of stages running there."""
        from_running = prev is not None and prev.phase == "running" and prev.node is not None
        to_running = new.phase == "running" and new.node is not None
        if from_running == to_running and (not from_running or prev.node == new.node):
            return
        cpu = self._stage_cpu(new)
        if from_running:
            s = self.node(prev.node, "node")
            self.put(replace(s, running_cpu=max(0.0, s.running_cpu - cpu)))
        if to_running:
            s = self.node(new.node, "node")
            self.put(replace(s, running_cpu=s.running_cpu + cpu))

    def _stage_cpu(self, status: StageStatus) -> float:
        info = self.jobs.get(status.job) or self.state._jobs.get(status.job, {})
        cpu = info.get("stage_cpu", {}).get(status.stage)
        return float(cpu) if cpu is not None else 1.0

    def _current_link(self, a: str, b: str) -> Link:
        for store in (self.links, self.state._links):
            if (a, b) in store and isinstance(store[(a, b)], Link):
                return store[(a, b)]
        cluster = self.state._cluster
        if (a, b) in cluster._link_index:
            return cluster._link_index[(a, b)]
        return Link(a, b, latency_ms=0.2, bandwidth_mbps=10_000.0)

    def commit(self) -> None:
        st = self.state
        for name, status in self.nodes.items():
            if status is None:
                st._nodes.pop(name, None)
            else:
                st._nodes[name] = status
        for key, link in self.links.items():
            if link == "reset":
                st._links.pop(key, None)
            else:
                st._links[key] = link
        st._stages.update(self.stages)
        for job, info in self.jobs.items():
            st._jobs.setdefault(job, {}).update(info)
        st._chaos.extend(self.chaos)
