"""ClusterState: the twin's mirror of the world, fed by events, read through snapshots.

Writers (observer threads, the API, the controller) call :meth:`ClusterState.apply`
with plain-dict events; readers (planners) take :meth:`ClusterState.snapshot`, an
immutable view carrying the version it was taken at. An apply touches only the
objects the event names (O(changed)); a snapshot is rebuilt only when the
version moved since the last one, so a burst of plans shares one copy. Nodes and
stages live in :class:`dtlab.cowmap.CowMap`, a bucketed map whose snapshot shares every bucket
an event did not touch: taking a snapshot after an event costs O(buckets) pointer
copies plus O(bucket size) per touched bucket, not O(cluster). Per-node load is also
kept as column arrays, which the planner's node table reads without one Python
step per node (``status_arrays``).

Event kinds (every event may carry ``ts``, seconds since the epoch or virtual seconds):

==================  =====================================================================
node-add            ``node``: a Node spec dict (as in a Cluster spec)
node-remove         ``node``: name
node-down/node-up   ``node``: name (fail-stop failure / recovery)
node-cordon/-uncordon ``node``: name (no new work; running work continues)
telemetry           ``node``, ``cpu_util`` in [0,1] (background share of cores busy), ``ts``;
                    optional ``mem_bytes`` (the node's memory in use, recorded, not yet planned on)
telemetry-sources   ``nodes``: every node that has a telemetry source (a scrape target); the others
                    have none (KWOK nodes: no cgroup to read). Names the state does not know are
                    ignored. Before the first such event every node counts as having one.
link                ``a``, ``b`` (zones or nodes); any of latency_ms, bandwidth_mbps,
                    loss, jitter_ms; ``up: false`` cuts the link (partition)
link-reset          ``a``, ``b``: back to the spec's link
job-submit          ``job``: name; optional ``deadline_ms``, ``stage_cpu`` {stage: cores} and
                    ``stage_ms`` {stage: the twin's predicted service ms at full allocation on the
                    planned node}; a later job-submit for the same job merges (a missing key keeps
                    the earlier value), so the controller's and the substrate's events can both arrive;
                    optional ``transfers`` [[from stage or null (the job's input), to stage, src node
                    or zone, dst node, MB], ...]: the plan's transfers between different endpoints
stage-start         ``job``, ``stage``, ``node``
stage-end           ``job``, ``stage``, ``node``, ``ok`` (default true)
chaos               ``fault``: a FaultScenario fault dict (recorded; its effects come as the events above)
==================  =====================================================================

**Co-runners.** Each NodeStatus also lists the stages running on it (``corunners``: job,
stage, cpu, start_ts, service_ms), so a predictor can estimate when each will leave
(:meth:`CoRunner.remaining_ms`); ``service_ms`` is None for stages the twin did not plan (no
``stage_ms``), which predictors treat as staying. ``Snapshot.clock`` is the newest event
``ts`` applied (the state's notion of now; ``Snapshot.at`` pins it to a known time).

**Transfers in flight** (issue 18: links are shared). From a job-submit's ``transfers`` and the
stage events the state keeps each job's transfers whose receiving stage has not started;
``Snapshot.flows`` lists them as :class:`Flow` (src, dst, MB, when it started or is expected to):
the job's input from submission, a succeeded stage's output from its end, a running stage's
output from its start + planned ``stage_ms`` (expected). A transfer leaves when its receiving
stage starts. Predictors share a link's bandwidth with these flows.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .cowmap import CowMap, FrozenMap
from .errors import SpecError
from .model import (LINK_RULES, Cluster, Link, LinkCutError, Node, base_for_change, cluster_from_dict,
                    resolve_link)
from .spec_reader import check_number
from .strict_json import short

MAX_STAGE_CPU = 1e4  # cores one stage may claim: more than any node has, far from overflow

LINK_FIELDS = ("latency_ms", "bandwidth_mbps", "loss", "jitter_ms")


class _Layout:
    """Positions of the node columns; caches name->position index arrays per names list (planner tables)."""

    def __init__(self):
        self.perms: dict[int, tuple[list, np.ndarray]] = {}


class NodeMap(FrozenMap):
    """A snapshot's nodes: name -> NodeStatus, plus ``status_arrays`` for the planner (dtlab.predict.NodeTable)."""

    __slots__ = ("_cols", "_layout")

    def __init__(self, view: tuple, cols: tuple[np.ndarray, ...], layout: _Layout):
        super().__init__(view)
        self._cols, self._layout = cols, layout

    def status_arrays(self, names) -> tuple[np.ndarray, ...]:
        """(up, cordoned, cpu_util, running_cpu) in ``names`` order: fancy indexing, no per-node Python."""
        hit = self._layout.perms.get(id(names))
        if hit is None or hit[0] is not names:
            perm = np.fromiter((self.pos(k) for k in names), dtype=np.int64,
                               count=len(names))
            if len(self._layout.perms) > 8:
                self._layout.perms.clear()
            hit = self._layout.perms[id(names)] = (names, perm)
        perm = hit[1]
        return tuple(c[perm] for c in self._cols)

    def __setstate__(self, state):
        m = CowMap(state.items())
        cols = _columns(m)
        NodeMap.__init__(self, m.freeze(), cols, _Layout())


def _columns(nodes: CowMap) -> tuple[np.ndarray, ...]:
    """Column arrays (up, cordoned, cpu_util, running_cpu) indexed by position, rebuilt from scratch."""
    size = max(64, nodes.used)
    cols = (np.zeros(size, dtype=bool), np.zeros(size, dtype=bool), np.zeros(size), np.zeros(size))
    for name, s in nodes.items():
        _put_cols(cols, nodes.pos(name), s)
    return cols


def _put_cols(cols, pos: int, s: "NodeStatus") -> None:
    cols[0][pos], cols[1][pos], cols[2][pos], cols[3][pos] = s.up, s.cordoned, s.cpu_util, s.running_cpu


MAX_TRANSFERS = 10_000   # transfers one job-submit may list (a DAG's edges; bounds the work per event)
MAX_OPEN_JOBS = 100_000  # jobs whose transfers are tracked; the oldest go first (a lost job never starts)


@dataclass(frozen=True)
class Flow:
    """A transfer in flight (or expected) on the directed link ``src -> dst`` (node or origin zone -> node)."""
    job: str
    src: str
    dst: str
    mb: float
    start_ts: float       # seconds, the state's clock: when it started (or is expected to)
    expected: bool        # True: its sending stage is still running (start = start + planned ms)


@dataclass(frozen=True)
class CoRunner:
    """A stage running on a node, with what the twin planned for it (to estimate when it leaves)."""
    job: str
    stage: str
    cpu: float
    start_ts: float | None         # stage-start ts (seconds); None: unknown
    service_ms: float | None       # predicted service at full allocation; None: not planned by the twin

    def remaining_ms(self, now: float | None, share: float = 1.0) -> float:
        """Work left (ms at full allocation): ``max(0, service_ms - elapsed * share)``; inf if unknown.

        ``share`` is the fraction of its ``cpu`` the stage got while running (1 on a node
        that was not oversubscribed). Unknown start or clock: nothing elapsed (an upper bound).
        """
        if self.service_ms is None:
            return math.inf
        if now is None or self.start_ts is None:
            return self.service_ms
        elapsed_ms = max(0.0, (now - self.start_ts) * 1000.0)
        return max(0.0, self.service_ms - elapsed_ms * share)


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    up: bool = True
    cordoned: bool = False
    cpu_util: float = 0.0          # background utilisation from telemetry
    telemetry_ts: float | None = None
    mem_bytes: float | None = None  # memory in use from telemetry (recorded; placement does not use it yet)
    telemetry_source: bool | None = None   # has a telemetry source (None: not said, counts as yes)
    running_cpu: float = 0.0       # cores claimed by stages the twin knows are running
    corunners: tuple[CoRunner, ...] = ()   # those stages (start order)

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
    clock: float | None = None              # newest event ts applied (seconds); None: no ts seen
    flows: tuple["Flow", ...] = ()          # transfers in flight or expected (module docstring)

    def at(self, now: float) -> "Snapshot":
        """This snapshot with ``clock`` pinned to ``now`` (e.g. the substrate's time at planning).

        Event ts lag the present (telemetry is stamped when sampled, and nothing happens
        between events), so the planner passes the time it knows; co-runners' elapsed time
        is measured against it.
        """
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise SpecError("now", f"must be a finite number of seconds, got {now!r}")
        return replace(self, clock=float(now))

    def link(self, src: str, dst: str) -> Link | None:
        """Current link from node ``src`` to ``dst`` (None for same node): :func:`dtlab.model.resolve_link`
        with this snapshot's overrides; raises :class:`~dtlab.model.LinkCutError` when there is no path."""
        return resolve_link(self.cluster, self.link_overrides, src, dst)

    def reachable(self, src: str, dst: str) -> bool:
        try:
            self.link(src, dst)
            return True
        except LinkCutError:
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
                 "cpu_util": s.cpu_util, "telemetry_ts": s.telemetry_ts, "telemetry_source": s.telemetry_source,
                 "running_cpu": s.running_cpu}
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
        self._nodes = CowMap((n.name, NodeStatus(n)) for n in cluster.nodes)
        self._cols = _columns(self._nodes)
        self._cols_layout = self._nodes.layout
        self._cols_shared = False     # handed to a snapshot: copy before the next write
        self._node_layout = _Layout()
        self._links: dict[tuple[str, str], Link | None] = {}
        self._stages = CowMap()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._chaos: list[dict[str, Any]] = []
        self._version = 0
        self._snap: Snapshot | None = None
        self._nodes_changed = False
        self._clock: float | None = None      # newest event ts applied
        self._open: dict[str, tuple[tuple, ...]] = {}   # job -> its transfers whose receiver has not started

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
                self._cols_shared = True
                self._snap = Snapshot(
                    version=self._version, taken_at=time.time(), cluster=cluster,
                    nodes=NodeMap(self._nodes.freeze(), self._cols, self._node_layout),
                    link_overrides=MappingProxyType(dict(self._links)),   # a handful of entries
                    stages=FrozenMap(self._stages.freeze()),
                    clock=self._clock,
                    flows=self._flows(),
                )
            return self._snap

    def _flows(self) -> tuple[Flow, ...]:
        """The open transfers as flows (O(open transfers): the jobs in flight)."""
        out = []
        for job, transfers in self._open.items():
            info = self._jobs.get(job, {})
            for frm, _to, src, dst, mb in transfers:
                if frm is None:
                    ts, expected = info.get("submitted_ts"), False
                else:
                    st = self._stages.get((job, frm))
                    if st is None:
                        continue
                    if st.phase == "succeeded":
                        ts, expected = st.end_ts, False
                    elif st.phase == "running" and st.start_ts is not None:
                        ms = info.get("stage_ms", {}).get(frm)
                        if ms is None:
                            continue
                        ts, expected = st.start_ts + ms / 1000.0, True
                    else:
                        continue
                if ts is not None:
                    out.append(Flow(job, src, dst, mb, float(ts), expected))
        return tuple(out)

    # ------------------------------------------------------------ writing
    def apply(self, event: Mapping[str, Any]) -> int:
        """Apply one event; returns the new version. Invalid events raise SpecError and change nothing."""
        return self.apply_many([event])

    def _sync_cols(self, changed: list[tuple[int, NodeStatus]]) -> None:
        """Write the ``changed`` (position, status) pairs into the node columns (copied first if a snapshot holds them)."""
        if self._cols_layout is not self._nodes.layout:     # positions moved (compaction): rebuild
            self._cols, self._cols_layout, self._cols_shared = _columns(self._nodes), self._nodes.layout, False
            self._node_layout = _Layout()
            return
        cols = self._cols
        if self._nodes.used > len(cols[0]):
            size = max(2 * len(cols[0]), self._nodes.used)
            cols = tuple(np.concatenate([c, np.zeros(size - len(c), dtype=c.dtype)]) for c in cols)
            self._cols, self._cols_shared = cols, False
        elif self._cols_shared:
            cols = self._cols = tuple(c.copy() for c in cols)
            self._cols_shared = False
        up, cordoned, util, running = cols
        for pos, s in changed:
            up[pos], cordoned[pos], util[pos], running[pos] = s.up, s.cordoned, s.cpu_util, s.running_cpu

    def apply_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply a batch atomically: all events are validated first, then applied under one lock."""
        events = list(events)
        with self._lock:
            staged = _Staging(self)
            for i, event in enumerate(events):
                staged.apply(event, f"[{i}]" if len(events) > 1 else "")
            if staged.changed:
                staged.commit()
                if staged.clock is not None and (self._clock is None or staged.clock > self._clock):
                    self._clock = staged.clock
                self._version += 1
            return self._version


def _stage_ms(value: Any, path: str) -> dict[str, float]:
    """``stage_ms`` of a job-submit: {stage id: finite service ms >= 0}."""
    if not isinstance(value, Mapping):
        raise SpecError(path, "must map stage ids to predicted service ms")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise SpecError(path, f"keys must be stage ids, got {short(k)}")
        out[k] = check_number(v, f"{path}.{k}", ge=0)
    return out


def _transfers(value: Any, path: str) -> tuple[tuple, ...]:
    """``transfers`` of a job-submit: [[from stage or None, to stage, src, dst, MB >= 0], ...]."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_TRANSFERS:
        raise SpecError(path, f"must be a list of at most {MAX_TRANSFERS} [from, to, src, dst, mb] entries")
    out = []
    for i, t in enumerate(value):
        if not isinstance(t, (list, tuple)) or len(t) != 5:
            raise SpecError(f"{path}[{i}]", f"must be [from stage or null, to stage, src, dst, mb], got {short(t)}")
        frm, to, src, dst, mb = t
        if not (frm is None or isinstance(frm, str)) or not all(isinstance(x, str) for x in (to, src, dst)):
            raise SpecError(f"{path}[{i}]", "from must be a stage id or null; to, src and dst strings")
        out.append((frm, to, src, dst, check_number(mb, f"{path}[{i}][4]", ge=0)))
    return tuple(out)


def _stage_cpu(value: Any, path: str) -> dict[str, float]:
    """``stage_cpu`` of a job-submit: {stage id: cores > 0}, finite and at most MAX_STAGE_CPU."""
    if not isinstance(value, Mapping):
        raise SpecError(path, "must map stage ids to cores")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise SpecError(path, f"keys must be stage ids, got {short(k)}")
        out[k] = check_number(v, f"{path}.{k}", gt=0, le=MAX_STAGE_CPU)
    return out


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
        self.clock: float | None = None       # newest ts in the batch

    def node(self, name: Any, path: str) -> NodeStatus:
        if not isinstance(name, str):
            raise SpecError(path, "must be a node name")
        status = self.nodes[name] if name in self.nodes else self.state._nodes.get(name)
        if status is None:
            raise SpecError(path, f"unknown node {short(name)}")
        return status

    def put(self, status: NodeStatus) -> None:
        self.nodes[status.node.name] = status
        self.changed = True

    def apply(self, event: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(event, Mapping):
            raise SpecError(prefix or "event", "must be a mapping")
        kind = event.get("kind")
        if kind not in EVENT_KINDS:
            raise SpecError(f"{prefix}.kind".lstrip("."), f"must be one of {list(EVENT_KINDS)}, got {short(kind)}")
        p = (prefix + ".") if prefix else ""
        ts = event.get("ts")
        if ts is not None:  # wall-clock epoch seconds (~1.7e9) or virtual seconds
            ts = check_number(ts, p + "ts", ge=0, le=1e11)
        if ts is not None and (self.clock is None or ts > self.clock):
            self.clock = float(ts)
        _HANDLERS[kind](self, kind, event, p, ts)

    def _node_add(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``node-add``: a Node spec; an existing node of that name is replaced (its status kept)."""
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

    def _node_remove(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``node-remove``: the node leaves the state."""
        self.node(event.get("node"), p + "node")
        self.nodes[event["node"]] = None
        self.changed = True
        self.state._nodes_changed = True

    def _node_flag(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``node-down``/``-up``/``-cordon``/``-uncordon``: one flag of the node."""
        status = self.node(event.get("node"), p + "node")
        field_, value = {"node-down": ("up", False), "node-up": ("up", True),
                         "node-cordon": ("cordoned", True), "node-uncordon": ("cordoned", False)}[kind]
        self.put(replace(status, **{field_: value}))

    def _telemetry(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``telemetry``: background ``cpu_util`` and when it was sampled."""
        status = self.node(event.get("node"), p + "node")
        util = check_number(event.get("cpu_util"), p + "cpu_util", ge=0, le=1)
        mem = event.get("mem_bytes")
        mem = status.mem_bytes if mem is None else check_number(mem, p + "mem_bytes", ge=0, le=1e15)
        self.put(replace(status, cpu_util=util, mem_bytes=mem,
                         telemetry_ts=float(ts) if ts is not None else time.time()))

    def _telemetry_sources(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``telemetry-sources``: which nodes have a telemetry source; only nodes whose flag changes are touched."""
        names = event.get("nodes")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise SpecError(p + "nodes", f"must be a list of node names, got {short(names)}")
        with_source = set(names)
        known = {name: status for name, status in self.state._nodes.items()}
        known.update(self.nodes)
        for name, status in known.items():
            if status is not None and status.telemetry_source is not (name in with_source):
                self.put(replace(status, telemetry_source=name in with_source))

    def _link(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``link`` (change or cut) and ``link-reset`` (back to the spec), both directions."""
        a, b = event.get("a"), event.get("b")
        zones = self.state._cluster.zones
        for key, value in (("a", a), ("b", b)):
            if not isinstance(value, str) or (value not in zones and value not in self.state._nodes
                                              and self.nodes.get(value) is None):
                raise SpecError(p + key, f"{short(value)} is neither a zone nor a node")
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
                    # the same rules as a Cluster spec's links (model.cluster_from_dict)
                    changes[k] = check_number(event[k], p + k, **LINK_RULES[k])
            link = replace(base, a=a, b=b, **changes)
            self.links[(a, b)] = link
            self.links[(b, a)] = replace(link, a=b, b=a)
        self.changed = True

    def _job_submit(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``job-submit``: deadline, per-stage cores and planned service ms (merged into earlier ones)."""
        job = event.get("job")
        if not isinstance(job, str):
            raise SpecError(p + "job", "must be a job name")
        stage_cpu = _stage_cpu(event.get("stage_cpu", {}), p + "stage_cpu")
        deadline = event.get("deadline_ms")
        if deadline is not None:
            deadline = check_number(deadline, p + "deadline_ms", gt=0)
        info = {"submitted_ts": ts, "deadline_ms": deadline, "stage_cpu": stage_cpu}
        if "stage_ms" in event:
            info["stage_ms"] = _stage_ms(event["stage_ms"], p + "stage_ms")
        if "transfers" in event:
            info["transfers"] = _transfers(event["transfers"], p + "transfers")
        self.jobs.setdefault(job, {}).update(info)
        self.changed = True

    def _stage(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``stage-start``/``stage-end``: the stage's phase and the cores it claims on its node."""
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
            if not isinstance(ok, bool):
                raise SpecError(p + "ok", f"must be true or false, got {short(ok)}")
            new = StageStatus(job, stage, node or (prev.node if prev else None),
                              "succeeded" if ok else "failed",
                              start_ts=prev.start_ts if prev else None, end_ts=ts)
            self._claim(prev, new)
        self.stages[key] = new
        self.changed = True

    def _chaos(self, kind: str, event: Mapping[str, Any], p: str, ts: float | None) -> None:
        """``chaos``: a fault notification, recorded."""
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
            key = (prev.job, prev.stage)
            self.put(replace(s, running_cpu=max(0.0, s.running_cpu - cpu),
                             corunners=tuple(c for c in s.corunners if (c.job, c.stage) != key)))
        if to_running:
            s = self.node(new.node, "node")
            co = CoRunner(new.job, new.stage, cpu, new.start_ts, self._stage_ms(new))
            self.put(replace(s, running_cpu=s.running_cpu + cpu, corunners=s.corunners + (co,)))

    def _stage_ms(self, status: StageStatus) -> float | None:
        """The twin's planned service ms of the stage (staged job-submit first, then the committed one)."""
        for store in (self.jobs, self.state._jobs):
            ms = store.get(status.job, {}).get("stage_ms", {}).get(status.stage)
            if ms is not None:
                return ms
        return None

    def _stage_cpu(self, status: StageStatus) -> float:
        info = self.jobs.get(status.job) or self.state._jobs.get(status.job, {})
        cpu = info.get("stage_cpu", {}).get(status.stage)
        return float(cpu) if cpu is not None else 1.0

    def _current_link(self, a: str, b: str) -> Link:
        """The link a ``link`` event changes: the current override, else the spec's, else the intra-zone default."""
        for store in (self.links, self.state._links):
            if (a, b) in store and isinstance(store[(a, b)], Link):
                return store[(a, b)]
        return base_for_change(self.state._cluster, a, b)

    def commit(self) -> None:
        st = self.state
        if self.nodes:
            changed = []
            for name, status in self.nodes.items():
                if status is None:
                    st._nodes.pop(name, None)
                else:
                    changed.append((st._nodes.put(name, status), status))
            st._sync_cols(changed)
        for key, link in self.links.items():
            if link == "reset":
                st._links.pop(key, None)
            else:
                st._links[key] = link
        for key, stage in self.stages.items():
            st._stages.put(key, stage)
        for job, info in self.jobs.items():
            st._jobs.setdefault(job, {}).update(info)
            if info.get("transfers"):
                st._open.pop(job, None)     # re-submitted: its transfers move to the end (newest)
                st._open[job] = info["transfers"]
        for job, stage in self.stages:      # a receiving stage started (or ended): its inputs arrived
            left = st._open.get(job)
            if left is not None:
                left = tuple(t for t in left if t[1] != stage)
                if left:
                    st._open[job] = left
                else:
                    del st._open[job]
        for job in list(self.jobs):         # transfers to stages that had already started
            left = st._open.get(job)
            if left is not None:
                left = tuple(t for t in left if (job, t[1]) not in st._stages)
                if left:
                    st._open[job] = left
                else:
                    del st._open[job]
        while len(st._open) > MAX_OPEN_JOBS:
            del st._open[next(iter(st._open))]
        st._chaos.extend(self.chaos)


# event kind -> handler (validates the event, stages its effect); the order is the documented one
_HANDLERS: dict[str, Callable[[_Staging, str, Mapping[str, Any], str, float | None], None]] = {
    "node-add": _Staging._node_add,
    "node-remove": _Staging._node_remove,
    "node-down": _Staging._node_flag,
    "node-up": _Staging._node_flag,
    "node-cordon": _Staging._node_flag,
    "node-uncordon": _Staging._node_flag,
    "telemetry": _Staging._telemetry,
    "telemetry-sources": _Staging._telemetry_sources,
    "link": _Staging._link,
    "link-reset": _Staging._link,
    "job-submit": _Staging._job_submit,
    "stage-start": _Staging._stage,
    "stage-end": _Staging._stage,
    "chaos": _Staging._chaos,
}
EVENT_KINDS = tuple(_HANDLERS)
