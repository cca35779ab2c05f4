"""FaultScenario: one fault language for every substrate (ARCHITECTURE section 2).

A scenario lists faults in scenario time (seconds from the start of the run)::

    apiVersion: dtlab/v1
    kind: FaultScenario
    metadata: {name: bad-day}
    cluster: ../../examples/cluster-hetero.yaml     # optional: default cluster for validate/export
    faults:
      - {kind: node-failure, at_s: 30, duration_s: 60, selector: {zone: edge-a}}    # zone blackout
      - {kind: node-failure, at_s: 5, duration_s: 10, selector: {names: [edge-b-0]},
         repeat: {every_s: 40, times: 3}}
      - {kind: link-degradation, at_s: 10, duration_s: 30, between: [edge-a, cloud],
         latency_ms: 200, jitter_ms: 20, loss: 0.05, bandwidth_mbps: 10}
      - {kind: partition, at_s: 90, duration_s: 20, between: [edge-a, edge-b]}
      - {kind: pod-kill, at_s: 45, selector: {job: video-1, stage: infer}}
      - kind: sequence                # steps run back to back, `gap_s` apart (Chaos Mesh: Serial)
        at_s: 120
        gap_s: 5
        steps:
          - {kind: node-failure, duration_s: 15, selector: {names: [cloud-0]}}
          - {kind: node-failure, duration_s: 15, selector: {names: [cloud-1]}}

Kinds and their fields:

* ``node-failure``: fail-stop of the selected nodes for ``duration_s`` (omitted at top level:
  permanent, the nodes never come back -- decommissioned hardware). ``selector`` takes
  ``names`` (list), ``labels`` (mapping; ``topology.kubernetes.io/zone``,
  ``kubernetes.io/arch`` and ``kubernetes.io/hostname`` match the node's zone, arch and name)
  and/or ``zone`` (string or list: a zone blackout). Several keys intersect.
* ``partition``: ``between: [A, B]`` cuts every path between the two sides. A side is a zone
  name, a node name, a list of node names, or a selector mapping as above.
* ``link-degradation``: ``between: [A, B]`` plus at least one of ``latency_ms``,
  ``jitter_ms``, ``loss`` (fraction in [0, 1)) and ``bandwidth_mbps``. The values are what
  the link *is* during the fault (the same meaning as a Cluster link and a state ``link``
  event); the Chaos Mesh export turns them into the extra delay/loss to add on top of the
  cluster's link when the cluster is known.
* ``pod-kill``: ``selector: {job, stage?}`` kills the running pod(s) of that job (stage);
  instantaneous, so no ``duration_s``.
* ``sequence``: ``steps`` (faults without ``at_s``/``repeat``) run one after another.

Every top-level fault needs ``at_s``; any top-level fault (a sequence too) may carry
``repeat: {every_s, times}`` (occurrences must not overlap themselves).

:func:`expand` resolves selectors against a cluster into concrete :class:`FaultEvent` s in
time order; :meth:`FaultEvent.to_dict` is again a valid fault mapping (names instead of
selectors, no repeat), and it is what ``Substrate.inject(fault)`` takes. What ``inject``
does on each substrate:

* ``sim``: virtual-time engine events (:mod:`dtlab.chaos.realise`): node-failure ->
  ``engine.fail_node(name, at_ms, duration_ms)`` per node; partition ->
  ``engine.set_link(a, b, None, at_ms)`` and, at the end, ``set_link(a, b, <spec link>)``;
  link-degradation -> ``set_link(a, b, <degraded link>, at_ms)`` then the spec link back;
  pod-kill -> ``engine.kill_stage(job, stage, at_ms)`` (the stage restarts on its node).
* ``fabric``: node-failure -> SIGKILL every worker process in the node's cgroup and refuse
  new work until ``duration_s`` has passed (fail-stop; the node's cgroup stays); partition ->
  drop traffic between the two sides' network namespaces (tc/nft ``drop`` on the veth pair,
  or the link taken down), restored at the end; link-degradation -> ``tc netem`` on the
  link's veth pair with delay/jitter/loss/rate, restored to the cluster link at the end;
  pod-kill -> SIGKILL the job (stage) worker process, which the fabric runner restarts.
* ``kube``: node-failure -> the KWOK node goes NotReady (KWOK stops renewing its Lease /
  the node-not-ready stage; ``kubectl cordon`` is not a failure), its pods are evicted by
  the node lifecycle controller, and after ``duration_s`` the node is Ready again;
  (a real node: its kubelet is SIGKILLed); partition and link-degradation -> the twin's link
  model (state ``link`` events) and, between real nodes of the local plane, the shaping of the
  pod-network links their stage data crosses (:mod:`dtlab.kube.links`), restored at the end; on
  other clusters the netem daemonset (``cluster/netem``) where hosts have netem; pod-kill -> delete the pods
  labelled ``dtlab.io/job`` (and ``dtlab.io/stage``) with grace period 0.

Whatever the substrate, :func:`to_state_events` gives the state events the twin must see
(``chaos`` notification, node-down/up, link cut/degrade/reset) so chaos reaches the twin via
``/observe`` or the observer exactly as real failures do.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import SpecError
from ..strict_json import short
from ..model import API_VERSION, Cluster, Link, base_for_change, load_cluster, spec_link
from ..spec_reader import Fields, join, read_documents

MAX_REPEAT = 10_000  # occurrences of one repeated fault

FAULT_KINDS = ("node-failure", "partition", "link-degradation", "pod-kill")
LINK_CHANGE_FIELDS = ("latency_ms", "jitter_ms", "loss", "bandwidth_mbps")
ZONE_LABEL = "topology.kubernetes.io/zone"
ARCH_LABEL = "kubernetes.io/arch"
HOST_LABEL = "kubernetes.io/hostname"
JOB_LABEL = "dtlab.io/job"
STAGE_LABEL = "dtlab.io/stage"


# ---------------------------------------------------------------- spec dataclasses

@dataclass(frozen=True)
class NodeSelector:
    """Which nodes: by names, labels and/or zones (intersection of the keys given)."""
    names: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] | None = None
    zones: tuple[str, ...] | None = None

    def matches(self, node) -> bool:
        if self.names is not None and node.name not in self.names:
            return False
        if self.zones is not None and node.zone not in self.zones:
            return False
        if self.labels is not None:
            have = {**node.label_map, ZONE_LABEL: node.zone, ARCH_LABEL: node.arch, HOST_LABEL: node.name}
            if any(have.get(k) != v for k, v in self.labels):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.names is not None:
            out["names"] = list(self.names)
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        if self.zones is not None:
            out["zone"] = self.zones[0] if len(self.zones) == 1 else list(self.zones)
        return out


@dataclass(frozen=True)
class Side:
    """One side of a partition / degraded link: a name (zone or node) or a node selector."""
    ref: str | None = None
    selector: NodeSelector | None = None

    def to_spec(self) -> Any:
        return self.ref if self.ref is not None else self.selector.to_dict()


@dataclass(frozen=True)
class Repeat:
    every_s: float
    times: int


@dataclass(frozen=True)
class Fault:
    """One fault as written (selectors unresolved). ``path`` is its field path in the scenario."""
    kind: str                                   # a FAULT_KINDS entry or "sequence"
    path: str
    at_s: float = 0.0                           # offset from the enclosing start (0 inside sequences)
    duration_s: float | None = None             # None: instantaneous (pod-kill) or permanent (node-failure)
    selector: NodeSelector | None = None        # node-failure
    between: tuple[Side, Side] | None = None    # partition, link-degradation
    link: tuple[tuple[str, float], ...] = ()    # link-degradation fields
    job: str | None = None                      # pod-kill
    stage: str | None = None
    repeat: Repeat | None = None
    steps: tuple["Fault", ...] = ()             # sequence
    gap_s: float = 0.0

    @property
    def length_s(self) -> float:
        """How long one occurrence lasts (a sequence: its steps and gaps)."""
        if self.kind == "sequence":
            return sum(s.length_s for s in self.steps) + self.gap_s * (len(self.steps) - 1)
        return self.duration_s or 0.0

    @property
    def link_map(self) -> dict[str, float]:
        return dict(self.link)


@dataclass(frozen=True)
class FaultScenario:
    name: str
    faults: tuple[Fault, ...]
    description: str = ""
    cluster_path: str | None = None     # resolved path of the scenario's `cluster:` (may not exist)

    @property
    def end_s(self) -> float:
        """When the last fault occurrence is over."""
        return max((start + f.length_s for start, f, _ in occurrences(self)), default=0.0)

    def cluster(self) -> Cluster | None:
        return load_cluster(self.cluster_path) if self.cluster_path else None


# ---------------------------------------------------------------- loading

def load_scenario(source: str | Path | Mapping) -> FaultScenario:
    """Load and validate a FaultScenario from a path or a dict; errors name the field path."""
    docs = read_documents(dict(source) if isinstance(source, Mapping) else source)
    base = Path(source).parent if isinstance(source, (str, Path)) else None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind", "FaultScenario") == "FaultScenario":
            return scenario_from_dict(doc, base_dir=base,
                                      default_name=Path(source).stem if base is not None else "scenario")
    raise SpecError("kind", "no document with kind: FaultScenario")


def scenario_from_dict(data: Mapping, base_dir: Path | None = None, default_name: str = "scenario") -> FaultScenario:
    f = Fields(dict(data))
    version = f.str("apiVersion", API_VERSION)
    if version != API_VERSION:
        raise SpecError("apiVersion", f"must be {short(API_VERSION)}, got {short(version)}")
    f.str("kind", "FaultScenario", choices=["FaultScenario"])
    meta = f.sub("metadata")
    name, description = default_name, ""
    if meta is not None:
        name = meta.str("name", default_name)
        description = meta.str("description") or ""
        meta.done(ignore=("labels", "annotations"))
    _check_dns_name(name, "metadata.name")
    cluster_path = f.str("cluster")
    if cluster_path is not None:
        p = Path(cluster_path)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        cluster_path = str(p)
    faults = tuple(_fault(Fields(raw, join("faults", i)), top=True)
                   for i, raw in enumerate(f.list("faults", required=True)))
    f.done()
    return FaultScenario(name=name, faults=faults, description=description, cluster_path=cluster_path)


def _check_dns_name(name: str, path: str) -> None:
    import re
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?", name):
        raise SpecError(path, "must be a lowercase DNS label (a-z, 0-9, '-'; <= 30 chars): "
                              "it names the exported Chaos Mesh objects")


def _selector(s: Fields, with_job: bool = False) -> NodeSelector:
    names = s.str_list("names")
    labels = None
    if s.has("labels"):
        labels = tuple(sorted(s.str_map("labels").items()))
        if not labels:
            raise SpecError(s.at("labels"), "must not be empty")
    zones = s.str_list("zone")
    if names is None and labels is None and zones is None:
        raise SpecError(s.path, "needs at least one of names, labels, zone")
    s.done()
    return NodeSelector(names=names, labels=labels, zones=zones)


def _side(raw: Any, path: str) -> Side:
    if isinstance(raw, str) and raw:
        return Side(ref=raw)
    if isinstance(raw, list):
        if not raw or not all(isinstance(x, str) and x for x in raw):
            raise SpecError(path, "a list side must be a non-empty list of node names")
        return Side(selector=NodeSelector(names=tuple(raw)))
    if isinstance(raw, dict):
        return Side(selector=_selector(Fields(raw, path)))
    raise SpecError(path, f"must be a zone or node name, a list of node names, or a selector mapping; got {short(raw)}")


def _fault(f: Fields, top: bool) -> Fault:
    kind = f.str("kind", required=True, choices=FAULT_KINDS + ("sequence",))
    if top:
        at_s = f.num("at_s", required=True, ge=0)
    else:
        if f.has("at_s"):
            raise SpecError(f.at("at_s"), "not allowed in a sequence step (steps run back to back; use gap_s)")
        at_s = 0.0
    repeat = None
    r = f.sub("repeat")
    if r is not None:
        if not top:
            raise SpecError(r.path, "not allowed in a sequence step (repeat the whole sequence)")
        repeat = Repeat(every_s=r.num("every_s", required=True, gt=0),
                        times=r.int("times", required=True, ge=1, le=MAX_REPEAT,
                                    why="each occurrence is a timed fault event"))
        r.done()
    fault = Fault(kind=kind, path=f.path, at_s=at_s, repeat=repeat)
    if kind == "sequence":
        steps = tuple(_fault(Fields(raw, join(f.at("steps"), i)), top=False)
                      for i, raw in enumerate(f.list("steps", required=True)))
        for st in steps:
            if st.kind == "sequence":
                raise SpecError(join(st.path, "kind"), "sequences do not nest")
        fault = replace(fault, steps=steps, gap_s=f.num("gap_s", 0.0, ge=0))
    elif kind == "pod-kill":
        if f.has("duration_s"):
            raise SpecError(f.at("duration_s"), "pod-kill is instantaneous; use node-failure for an outage")
        s = f.sub("selector", required=True)
        fault = replace(fault, job=s.str("job", required=True), stage=s.str("stage"))
        s.done()
    else:
        permanent_ok = kind == "node-failure" and top
        fault = replace(fault, duration_s=f.num("duration_s", required=not permanent_ok, gt=0))
        if fault.duration_s is None and fault.repeat is not None:
            raise SpecError(f.at("duration_s"), "a permanent node-failure (no duration_s) cannot repeat")
        if kind == "node-failure":
            fault = replace(fault, selector=_selector(f.sub("selector", required=True)))
        else:
            between = f.raw("between", required=True)
            if not isinstance(between, list) or len(between) != 2:
                raise SpecError(f.at("between"), "must be a list of exactly two sides [A, B]")
            fault = replace(fault, between=(_side(between[0], join(f.at("between"), 0)),
                                            _side(between[1], join(f.at("between"), 1))))
            if kind == "link-degradation":
                change = []
                for key in LINK_CHANGE_FIELDS:
                    if key == "loss":
                        v = f.num(key, None, ge=0, lt=1)
                    elif key == "bandwidth_mbps":
                        v = f.num(key, None, gt=0)
                    else:
                        v = f.num(key, None, ge=0)
                    if v is not None:
                        change.append((key, v))
                if not change:
                    raise SpecError(f.path, f"link-degradation needs at least one of {', '.join(LINK_CHANGE_FIELDS)}")
                fault = replace(fault, link=tuple(change))
    f.done()
    if repeat is not None and repeat.times > 1 and repeat.every_s < fault.length_s:
        raise SpecError(join(f.path, "repeat.every_s"),
                        f"must be >= the fault's length {fault.length_s:g} s (occurrences would overlap)")
    return fault


# ---------------------------------------------------------------- timing and resolution

def occurrences(scenario: FaultScenario) -> list[tuple[float, Fault, str]]:
    """(start_s, top-level fault, origin id) for every repetition, in time order."""
    out = []
    for fault in scenario.faults:
        times = fault.repeat.times if fault.repeat else 1
        every = fault.repeat.every_s if fault.repeat else 0.0
        for k in range(times):
            origin = fault.path + (f"#{k}" if fault.repeat else "")
            out.append((fault.at_s + k * every, fault, origin))
    out.sort(key=lambda t: t[0])
    return out


@dataclass(frozen=True)
class FaultEvent:
    """One concrete fault: selectors resolved to node names, absolute scenario time."""
    kind: str
    start_s: float
    duration_s: float | None
    origin: str                                        # field path (+ #k for repeats, /steps for sequences)
    nodes: tuple[str, ...] = ()                        # node-failure: the nodes that fail
    pairs: tuple[tuple[str, str], ...] = ()            # partition/link: endpoint pairs (zones or nodes)
    sides: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # node names on each side
    link: tuple[tuple[str, float], ...] = ()
    job: str | None = None
    stage: str | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + (self.duration_s or 0.0)

    @property
    def link_map(self) -> dict[str, float]:
        return dict(self.link)

    def to_dict(self) -> dict[str, Any]:
        """A concrete fault mapping (valid FaultScenario fault) — what ``Substrate.inject`` takes."""
        d: dict[str, Any] = {"kind": self.kind, "at_s": self.start_s}
        if self.duration_s is not None:
            d["duration_s"] = self.duration_s
        if self.kind == "node-failure":
            d["selector"] = {"names": list(self.nodes)}
        elif self.kind == "pod-kill":
            d["selector"] = {"job": self.job, **({"stage": self.stage} if self.stage else {})}
        else:
            if len(self.pairs) == 1:
                d["between"] = list(self.pairs[0])
            else:
                d["between"] = [list(self.sides[0]), list(self.sides[1])]
            d.update(self.link_map)
        return d


def resolve_selector(sel: NodeSelector, cluster: Cluster, path: str) -> tuple[str, ...]:
    if sel.names is not None:
        for i, n in enumerate(sel.names):
            if n not in cluster.by_name:
                raise SpecError(join(join(path, "names"), i), f"unknown node {short(n)} in cluster {short(cluster.name)}")
    if sel.zones is not None:
        for i, z in enumerate(sel.zones):
            if z not in cluster.zones:
                raise SpecError(join(path, "zone") + (f"[{i}]" if len(sel.zones) > 1 else ""),
                                f"unknown zone {z!r} (zones: {', '.join(cluster.zones)})")
    nodes = tuple(n.name for n in cluster.nodes if sel.matches(n))
    if not nodes:
        raise SpecError(path, f"selects no node of cluster {short(cluster.name)}")
    return nodes


def _resolve_side(side: Side, cluster: Cluster, path: str) -> tuple[str | None, tuple[str, ...]]:
    """(endpoint name usable in a state link event or None, node names)."""
    if side.ref is not None:
        if side.ref in cluster.zones:
            return side.ref, tuple(n.name for n in cluster.nodes if n.zone == side.ref)
        if side.ref in cluster.by_name:
            return side.ref, (side.ref,)
        raise SpecError(path, f"{short(side.ref)} is neither a zone nor a node of cluster {short(cluster.name)}")
    return None, resolve_selector(side.selector, cluster, path)


def _concrete(fault: Fault, start_s: float, origin: str, cluster: Cluster) -> FaultEvent:
    ev = FaultEvent(kind=fault.kind, start_s=start_s, duration_s=fault.duration_s, origin=origin)
    if fault.kind == "node-failure":
        return replace(ev, nodes=resolve_selector(fault.selector, cluster, join(fault.path, "selector")))
    if fault.kind == "pod-kill":
        return replace(ev, job=fault.job, stage=fault.stage)
    (ref_a, nodes_a), (ref_b, nodes_b) = (
        _resolve_side(s, cluster, join(join(fault.path, "between"), i)) for i, s in enumerate(fault.between))
    overlap = set(nodes_a) & set(nodes_b)
    if overlap:
        raise SpecError(join(fault.path, "between"), f"the two sides share nodes {sorted(overlap)}")
    if ref_a is not None and ref_b is not None:
        pairs = ((ref_a, ref_b),)
    else:
        pairs = tuple((a, b) for a in nodes_a for b in nodes_b)
    return replace(ev, pairs=pairs, sides=(nodes_a, nodes_b), link=fault.link)


def expand(scenario: FaultScenario, cluster: Cluster) -> list[FaultEvent]:
    """Concrete timed fault events of a scenario on a cluster, ordered by start time.

    Raises SpecError (with the fault's field path) when a selector names an unknown node or
    zone or selects nothing, or when the two sides of a partition overlap.
    """
    events: list[FaultEvent] = []
    for start, fault, origin in occurrences(scenario):
        if fault.kind == "sequence":
            t = start
            for i, step in enumerate(fault.steps):
                events.append(_concrete(step, t, f"{origin}/steps[{i}]", cluster))
                t += step.length_s + fault.gap_s
        else:
            events.append(_concrete(fault, start, origin, cluster))
    events.sort(key=lambda e: (e.start_s, e.origin))
    return events


def fault_event_from_dict(data: Mapping, cluster: Cluster, path: str = "fault") -> FaultEvent:
    """Parse one concrete fault mapping (as passed to ``Substrate.inject``) into a FaultEvent."""
    fault = _fault(Fields(dict(data), path), top=True)
    if fault.kind == "sequence" or fault.repeat is not None:
        raise SpecError(path, "inject takes one concrete fault (expand sequences and repeats first)")
    return _concrete(fault, fault.at_s, path, cluster)


# ---------------------------------------------------------------- links and state events

def degraded_link(cluster: Cluster, a: str, b: str, change: Mapping[str, float]) -> Link:
    """The link between ``a`` and ``b`` (:func:`dtlab.model.base_for_change`) with ``change`` applied."""
    base = base_for_change(cluster, a, b)
    return replace(base, a=a, b=b, **{k: float(v) for k, v in change.items()})


def to_state_events(fault: FaultEvent) -> list[dict[str, Any]]:
    """The ClusterState events (``ts`` in scenario seconds) that tell the twin about ``fault``.

    A ``chaos`` notification opens and closes every fault (``phase`` start/end) so the twin
    and the results know the fault window; the effect events follow the state.py vocabulary.
    """
    spec = fault.to_dict()
    start, end = fault.start_s, fault.end_s
    out: list[dict[str, Any]] = [{"kind": "chaos", "ts": start, "fault": {**spec, "phase": "start"}}]
    if fault.kind == "node-failure":
        out += [{"kind": "node-down", "node": n, "ts": start} for n in fault.nodes]
        if fault.duration_s is not None:
            out += [{"kind": "node-up", "node": n, "ts": end} for n in fault.nodes]
    elif fault.kind == "partition":
        out += [{"kind": "link", "a": a, "b": b, "up": False, "ts": start} for a, b in fault.pairs]
        out += [{"kind": "link-reset", "a": a, "b": b, "ts": end} for a, b in fault.pairs]
    elif fault.kind == "link-degradation":
        out += [{"kind": "link", "a": a, "b": b, **fault.link_map, "ts": start} for a, b in fault.pairs]
        out += [{"kind": "link-reset", "a": a, "b": b, "ts": end} for a, b in fault.pairs]
    if fault.duration_s is not None:
        out.append({"kind": "chaos", "ts": end, "fault": {**spec, "phase": "end"}})
    out.sort(key=lambda e: e["ts"])
    return out


def timeline(events: Iterable[FaultEvent]) -> list[dict[str, Any]]:
    """All state events of several faults merged in time order (stable for equal times)."""
    merged = [e for f in events for e in to_state_events(f)]
    merged.sort(key=lambda e: e["ts"])
    return merged


SCENARIO_DIR = Path(__file__).resolve().parents[2] / "chaos" / "scenarios"


def scenario_path(name_or_path: str | Path) -> Path:
    """A scenario file path from a path, or a name shipped in ``chaos/scenarios/``."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for candidate in (SCENARIO_DIR / f"{name_or_path}.yaml", SCENARIO_DIR / str(name_or_path)):
        if candidate.exists():
            return candidate
    shipped = sorted(q.stem for q in SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.exists() else []
    raise SpecError("scenario", f"{str(name_or_path)!r} is neither a file nor a shipped scenario "
                                f"(shipped: {', '.join(shipped) or 'none'})")


def shipped_scenarios() -> list[str]:
    return sorted(q.stem for q in SCENARIO_DIR.glob("*.yaml"))


def fault_links(cluster: Cluster, ev: "FaultEvent", start: bool) -> list[tuple[str, str, Link | None]]:
    """(src, dst, link) for both directions of every node pair across the two sides of a
    ``partition`` / ``link-degradation`` FaultEvent, as the substrates that shape links (fabric, real
    kube nodes) realise them: the degraded link (None = cut; a pair without a spec link is cut) at
    its start, the spec's link at its end."""
    left, right = ev.sides or ((), ())
    out: list[tuple[str, str, Link | None]] = []
    for a in left:
        for b in right:
            for x, y in ((a, b), (b, a)):
                base = spec_link(cluster, x, y)
                if not start:
                    new = base
                elif ev.kind == "partition" or base is None:
                    new = None
                else:
                    new = replace(base, **ev.link_map)
                out.append((x, y, new))
    return out
