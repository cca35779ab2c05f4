"""Typed specs: Cluster, Job, Workload (ARCHITECTURE section 2).

Specs are frozen dataclasses so a snapshot, a plan or a worker process can hold
them without copying. Loaders validate once, up front, and raise
:class:`dtlab.SpecError` naming the field path and the broken rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from .errors import SpecError
from .spec_reader import Fields, join, read_documents
from .strict_json import short

API_VERSION = "dtlab/v1"
LEGACY_JOB_API = "fabric.dt/v1"
ARCHES = ("amd64", "arm64", "riscv64")
MAX_WORKLOAD_JOBS = 1_000_000
MAX_STAGES = 1_000
NODE_FORMATS = ("native", "qemu", "wasm")
OPTIMIZE_FOR = ("latency", "energy")   # Job spec.policy.optimize_for -> default policy greedy | energy
# Intra-zone links are not listed in specs: a datacentre/LAN default.
DEFAULT_INTRA_ZONE = {"latency_ms": 0.2, "bandwidth_mbps": 10_000.0, "loss": 0.0}
# The rules of a link's numbers, shared by Cluster specs and `link` state events.
LINK_RULES = {"latency_ms": {"ge": 0}, "bandwidth_mbps": {"gt": 0}, "loss": {"ge": 0, "lt": 1},
              "jitter_ms": {"ge": 0}}


@dataclass(frozen=True)
class Power:
    """A node's power model (``spec.nodes[i].power``): watts per core when idle and when busy.

    Any value left out comes from the defaults of the node's ``node_class`` (``server`` or ``edge``;
    inferred from the core count when not given) and arch, see :mod:`dtlab.energy` and
    ``docs/energy.md``. The model is an assumption applied to CPU time, never a measurement.
    """
    node_class: str | None = None
    idle_w_per_core: float | None = None
    busy_w_per_core: float | None = None


@dataclass(frozen=True)
class Node:
    name: str
    arch: str
    cores: int
    speed: float = 1.0
    mem_gb: float = 8.0
    formats: tuple[str, ...] = ("native",)
    zone: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    fail_prob: float = 0.0  # probability the node fails while one job runs (twin's risk input)
    power: Power | None = None  # None: the defaults of dtlab.energy for this arch and class

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Link:
    """A network path between two zones or two nodes (endpoint names are resolved nodes-first)."""
    a: str
    b: str
    latency_ms: float
    bandwidth_mbps: float
    loss: float = 0.0
    jitter_ms: float = 0.0
    directed: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...] = ()

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def zones(self) -> tuple[str, ...]:
        return tuple(sorted({n.zone for n in self.nodes}))

    def node(self, name: str) -> Node:
        try:
            return self.by_name[name]
        except KeyError:
            raise SpecError("node", f"unknown node {short(name)}") from None

    @cached_property
    def link_index(self) -> dict[tuple[str, str], Link]:
        """The spec's links by (a, b), both directions of an undirected link (read-only by convention)."""
        index: dict[tuple[str, str], Link] = {}
        for link in self.links:
            index[(link.a, link.b)] = link
            if not link.directed:
                index.setdefault((link.b, link.a), replace(link, a=link.b, b=link.a))
        return index

    def link(self, src: str, dst: str) -> Link | None:
        """The link data crosses from node ``src`` to node ``dst``; None when they are the same node.

        :func:`resolve_link` without overrides; unknown nodes raise SpecError, zones with no
        listed link raise :class:`LinkCutError` (``cut`` False).
        """
        self.node(src)
        self.node(dst)
        return resolve_link(self, _NO_OVERRIDES, src, dst)

    def with_nodes(self, nodes) -> "Cluster":
        return replace(self, nodes=tuple(nodes))


# ---------------------------------------------------------------- link resolution (the one rule)

_NO_OVERRIDES: Mapping[tuple[str, str], "Link | None"] = {}


class LinkCutError(SpecError):
    """No path from ``src`` to ``dst``: the one convention for an unreachable pair, raised by :func:`resolve_link`.

    ``cut`` is True when an override cut the path (a partition, ``link`` event with ``up:
    false``; it may come back) and False when the spec lists no link between the two zones
    (it never will). Callers that need a flag catch it; nobody returns None or a pair instead.
    """

    def __init__(self, src: str, dst: str, cut: bool = True):
        self.src, self.dst, self.cut = src, dst, cut
        super().__init__("links", f"link {src}->{dst} is cut" if cut
                         else f"no link between zone {short(src)} and zone {short(dst)}")


def endpoint_zone(cluster: Cluster, name: str) -> str:
    """The zone of a link endpoint: a node's zone, or the name itself (a zone, e.g. a job's origin)."""
    node = cluster.by_name.get(name)
    return name if node is None else node.zone


def link_keys(cluster: Cluster, src: str, dst: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The keys that can govern the path ``src -> dst``, most specific first: the endpoints, then their zones."""
    return (src, dst), (endpoint_zone(cluster, src), endpoint_zone(cluster, dst))


def resolve_link(cluster: Cluster, overrides: Mapping[tuple[str, str], "Link | None"], src: str, dst: str) -> Link | None:
    """The link data crosses from ``src`` to ``dst``: THE link rule of the package (one definition).

    Endpoints are node names or zones (a job's input comes from its origin *zone*). The same
    node is no transfer (None). Otherwise the first that applies wins:

    1. an override (``Snapshot.link_overrides`` shape: ``{(a, b): Link | None}``) for the
       endpoints, then for their zones; an override of None is a cut;
    2. the spec's link for the endpoints, then for their zones (:attr:`Cluster.link_index`);
    3. the intra-zone default :data:`DEFAULT_INTRA_ZONE` when both are in one zone.

    A cut, or two zones with no link, raise :class:`LinkCutError`.

    **Job input.** A job's ``input_mb`` comes from its origin *zone* (devices/clients there,
    not a particular node): callers pass the zone as ``src``. A job with no origin zone has
    its input in place (no transfer); with one, the transfer happens even when ``input_mb``
    is 0 (the request itself crosses the link: latency and jitter, no bulk or loss-tail term).
    """
    if src == dst and src in cluster.by_name:
        return None
    keys = link_keys(cluster, src, dst)
    if overrides:
        for key in keys:
            if key in overrides:
                link = overrides[key]
                if link is None:
                    raise LinkCutError(*key)
                return link
    idx = cluster.link_index
    for key in keys:
        if key in idx:
            return idx[key]
    za, zb = keys[1]
    if za == zb:
        return _intra_zone(za, zb)
    raise LinkCutError(za, zb, cut=False)


def _intra_zone(a: str, b: str) -> Link:
    d = DEFAULT_INTRA_ZONE
    return Link(a, b, latency_ms=d["latency_ms"], bandwidth_mbps=d["bandwidth_mbps"], loss=d["loss"])


def spec_link(cluster: Cluster, a: str, b: str) -> Link | None:
    """The spec's link between two endpoints (zones or nodes) with no override; None when there is none."""
    try:
        return resolve_link(cluster, _NO_OVERRIDES, a, b)
    except LinkCutError:
        return None


def base_for_change(cluster: Cluster, a: str, b: str) -> Link:
    """The link a change to the pair ``(a, b)`` starts from (a ``link`` event, a link degradation).

    The spec's link (:func:`spec_link`), else the intra-zone default: changing a pair the
    spec does not connect creates a link from the default's numbers.
    """
    return spec_link(cluster, a, b) or _intra_zone(a, b)


@dataclass(frozen=True)
class Compute:
    cpu: float = 1.0
    mem_gb: float = 0.5
    duration_ms: float = 100.0  # on one core of speed 1.0, native amd64, per unit of `cpu`


@dataclass(frozen=True)
class Constraints:
    arch: tuple[str, ...] | None = None      # archs the stage's binary exists for (None: any)
    formats: tuple[str, ...] | None = None   # allowed node execution formats (None: any)
    zones: tuple[str, ...] | None = None
    nodes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Stage:
    id: str
    compute: Compute = Compute()
    after: tuple[str, ...] = ()
    output_mb: float = 0.0
    constraints: Constraints = Constraints()
    # fields a spec carried that the twin does not model (older job files: type, size_mb, gpu_vram_gb);
    # kept for the user, ignored by every predictor, and left out of equality and hashing
    carried: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Job:
    name: str
    stages: tuple[Stage, ...]
    deadline_ms: float | None = None
    origin_zone: str | None = None
    input_mb: float = 0.0  # data sent from the origin zone to every root stage
    # job-level fields the twin does not model (older job files: priority, redundancy); see Stage.carried
    carried: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    optimize_for: str | None = None  # spec.policy.optimize_for: latency | energy (picks the default policy)

    @cached_property
    def stage_index(self) -> dict[str, int]:
        return {s.id: i for i, s in enumerate(self.stages)}

    @cached_property
    def topo_order(self) -> tuple[str, ...]:
        """Stage ids in an order where predecessors come first (validated acyclic on load)."""
        return _topo_order(self.stages, "spec.stages")

    def successors(self, stage_id: str) -> tuple[str, ...]:
        return tuple(s.id for s in self.stages if stage_id in s.after)

    def scaled(self, factor: float, name: str | None = None) -> "Job":
        """The same job with every stage duration multiplied by ``factor``."""
        stages = tuple(replace(s, compute=replace(s.compute, duration_ms=s.compute.duration_ms * factor))
                       for s in self.stages)
        return replace(self, stages=stages, name=name or self.name)


@dataclass(frozen=True)
class Arrivals:
    process: str = "poisson"          # poisson | constant | trace
    rate_per_s: float = 1.0
    trace: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # process-specific (e.g. mmpp, diurnal)


@dataclass(frozen=True)
class DurationScale:
    dist: str = "constant"            # constant | exponential | lognormal
    sigma: float = 0.0


@dataclass(frozen=True)
class Workload:
    name: str
    arrivals: Arrivals
    template: Job
    count: int
    duration_scale: DurationScale = DurationScale()


# ---------------------------------------------------------------- loading

def load_cluster(source) -> Cluster:
    """Load a Cluster spec from a path or dict (the first ``kind: Cluster`` document of a file)."""
    return _load_kind(source, "Cluster", cluster_from_dict)


def load_job(source, cluster: Cluster | None = None) -> Job:
    """Load a Job (dtlab/v1 or the older fabric.dt/v1 layout); with ``cluster``, also check it fits."""
    job = _load_kind(source, "Job", job_from_dict)
    if cluster is not None:
        check_job_fits(job, cluster)
    return job


def load_workload(source) -> Workload:
    base = Path(source).parent if isinstance(source, (str, Path)) else None
    return _load_kind(source, "Workload", lambda d: workload_from_dict(d, base_dir=base))


def _load_kind(source, kind: str, build):
    docs = read_documents(source)
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") == kind:
            return build(doc)
    if len(docs) == 1 and isinstance(docs[0], dict) and "kind" not in docs[0]:
        return build({**docs[0], "kind": kind})
    raise SpecError("kind", f"no document with kind: {kind} in {source if not isinstance(source, (dict, list)) else 'input'}")


def _header(f: Fields, kind: str, versions=(API_VERSION,)) -> str:
    version = f.str("apiVersion", API_VERSION)
    if version not in versions:
        raise SpecError("apiVersion", f"must be one of {list(versions)}, got {short(version)}")
    f.str("kind", kind, choices=[kind])
    return version


def cluster_from_dict(data: dict) -> Cluster:
    f = Fields(data)
    _header(f, "Cluster")
    meta = f.sub("metadata")
    name = (meta.str("name", "cluster") if meta else None) or f.str("name", "cluster")
    if meta:
        meta.done(ignore=("labels", "annotations"))
    nodes = []
    seen: set[str] = set()
    for i, raw in enumerate(f.list("nodes", required=True)):
        n = Fields(raw, join("nodes", i))
        node = Node(
            name=n.str("name", required=True),
            arch=n.str("arch", "amd64", choices=ARCHES),
            cores=n.int("cores", 1, ge=1),
            speed=n.num("speed", 1.0, gt=0),
            mem_gb=n.num("mem_gb", 8.0, gt=0),
            formats=n.str_list("formats", NODE_FORMATS, default=("native",)),
            zone=n.str("zone", "default"),
            labels=tuple(sorted(n.str_map("labels").items())),
            fail_prob=n.num("fail_prob", 0.0, ge=0, le=1),
            power=_power(n.sub("power"), n.int("cores", 1, ge=1)),
        )
        n.done()
        if node.name in seen:
            raise SpecError(n.at("name"), f"duplicate node name {short(node.name)}")
        seen.add(node.name)
        nodes.append(node)
    zones = {n.zone for n in nodes}
    links = []
    for i, raw in enumerate(f.list("links")):
        l = Fields(raw, join("links", i))
        link = Link(
            a=l.str("a", required=True), b=l.str("b", required=True),
            latency_ms=l.num("latency_ms", required=True, **LINK_RULES["latency_ms"]),
            bandwidth_mbps=l.num("bandwidth_mbps", required=True, **LINK_RULES["bandwidth_mbps"]),
            loss=l.num("loss", 0.0, **LINK_RULES["loss"]),
            jitter_ms=l.num("jitter_ms", 0.0, **LINK_RULES["jitter_ms"]),
            directed=l.bool("directed", False),
        )
        l.done()
        for end in ("a", "b"):
            value = getattr(link, end)
            if value not in zones and value not in seen:
                raise SpecError(l.at(end), f"{short(value)} is neither a zone nor a node of this cluster")
        links.append(link)
    f.done()
    return Cluster(name=name, nodes=tuple(nodes), links=tuple(links))


POWER_CLASSES = ("server", "edge")


def node_to_dict(n: Node) -> dict[str, Any]:
    """A Node as its Cluster-spec mapping (what a ``node-add`` event carries); ``cluster_from_dict``
    reads it back to an equal Node, power model included."""
    out: dict[str, Any] = {"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed, "mem_gb": n.mem_gb,
                           "formats": list(n.formats), "zone": n.zone, "labels": dict(n.labels),
                           "fail_prob": n.fail_prob}
    if n.power is not None:
        out["power"] = {k: v for k, v in (("node_class", n.power.node_class),
                                          ("idle_w_per_core", n.power.idle_w_per_core),
                                          ("busy_w_per_core", n.power.busy_w_per_core)) if v is not None}
    return out


def _power(p: Fields | None, cores: int) -> Power | None:
    """``power: {node_class, idle_w, busy_w}`` (whole node) or ``{idle_w_per_core, busy_w_per_core}``."""
    if p is None:
        return None
    node_class = p.str("node_class", None, choices=POWER_CLASSES)
    per_node = {k: p.num(k, None, ge=0) for k in ("idle_w", "busy_w")}
    per_core = {k: p.num(k, None, ge=0) for k in ("idle_w_per_core", "busy_w_per_core")}
    for kind in ("idle", "busy"):
        if per_node[f"{kind}_w"] is not None and per_core[f"{kind}_w_per_core"] is not None:
            raise SpecError(p.at(f"{kind}_w"), f"give {kind}_w (whole node) or {kind}_w_per_core, not both")
        if per_node[f"{kind}_w"] is not None:
            per_core[f"{kind}_w_per_core"] = per_node[f"{kind}_w"] / cores
    idle, busy = per_core["idle_w_per_core"], per_core["busy_w_per_core"]
    if idle is not None and busy is not None and busy < idle:
        raise SpecError(p.at("busy_w" if per_node["busy_w"] is not None else "busy_w_per_core"),
                        f"busy power must be >= idle power ({busy:g} < {idle:g} W per core)")
    p.done()
    return Power(node_class=node_class, idle_w_per_core=idle, busy_w_per_core=busy)


def _constraints(c: Fields | None) -> Constraints:
    if c is None:
        return Constraints()
    out = Constraints(
        arch=c.str_list("arch", ARCHES),
        formats=c.str_list("formats", NODE_FORMATS),
        zones=c.str_list("zones"),
        nodes=c.str_list("nodes"),
    )
    c.done()
    return out


def job_from_dict(data: dict) -> Job:
    f = Fields(data)
    version = _header(f, "Job", versions=(API_VERSION, LEGACY_JOB_API))
    meta = f.sub("metadata", required=True)
    name = meta.str("name", required=True)
    deadline = meta.num("deadline_ms", None, gt=0)
    origin_zone = None
    origin = meta.raw("origin")
    if origin is not None:
        if isinstance(origin, str):  # legacy files sometimes give the zone directly
            origin_zone = origin
        else:
            o = Fields(origin, meta.at("origin"))
            origin_zone = o.str("zone")
            o.done(ignore=("node",))
    meta.done(ignore=("labels", "annotations", "namespace"))
    spec = f.sub("spec", required=True)
    input_mb = spec.num("input_mb", 0.0, ge=0)
    optimize_for = None
    pol = spec.sub("policy")
    if pol is not None:
        optimize_for = pol.str("optimize_for", None, choices=OPTIMIZE_FOR)
        pol.done()
    stages = []
    raw_stages = spec.list("stages", required=True)
    if len(raw_stages) > MAX_STAGES:
        raise SpecError("spec.stages", f"at most {MAX_STAGES:,} stages per job, got {len(raw_stages):,} "
                                       "(placement and prediction cost grow with every stage)")
    for i, raw in enumerate(raw_stages):
        s = Fields(raw, join("spec.stages", i))
        c = s.sub("compute", required=True)
        compute = Compute(cpu=c.num("cpu", 1.0, gt=0), mem_gb=c.num("mem_gb", 0.5, ge=0),
                          duration_ms=c.num("duration_ms", required=True, gt=0))
        c.done()
        after = s.raw("after", [])
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise SpecError(s.at("after"), "must be a list of stage ids")
        stage = Stage(id=s.str("id", required=True), compute=compute, after=tuple(after),
                      output_mb=s.num("output_mb", 0.0, ge=0),
                      constraints=_constraints(s.sub("constraints")))
        # the legacy layout carried an image name and labels per stage; accept and ignore them there
        s.done(ignore=("image", "labels", "name") if version == LEGACY_JOB_API else ())
        stages.append(stage)
    spec.done()
    f.done()
    ids = [s.id for s in stages]
    for i, sid in enumerate(ids):
        if sid in ids[:i]:
            raise SpecError(f"spec.stages[{i}].id", f"duplicate stage id {short(sid)}")
    for i, s in enumerate(stages):
        for j, dep in enumerate(s.after):
            if dep not in ids:
                raise SpecError(f"spec.stages[{i}].after[{j}]", f"unknown stage id {short(dep)}")
            if dep == s.id:
                raise SpecError(f"spec.stages[{i}].after[{j}]", "a stage cannot come after itself")
    _topo_order(tuple(stages), "spec.stages")
    return Job(name=name, stages=tuple(stages), deadline_ms=deadline, origin_zone=origin_zone, input_mb=input_mb,
               optimize_for=optimize_for)


def _topo_order(stages: tuple[Stage, ...], path: str) -> tuple[str, ...]:
    remaining = {s.id: set(s.after) for s in stages}
    position = {s.id: i for i, s in enumerate(stages)}
    order: list[str] = []
    while remaining:
        ready = [sid for sid in remaining if not remaining[sid]]
        if not ready:
            cycle = sorted(remaining)
            raise SpecError(path, f"stages form a cycle through {cycle}")
        ready.sort(key=position.__getitem__)
        for sid in ready:
            order.append(sid)
            del remaining[sid]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)


def workload_from_dict(data: dict, base_dir: Path | None = None) -> Workload:
    f = Fields(data)
    _header(f, "Workload")
    meta = f.sub("metadata")
    name = (meta.str("name", "workload") if meta else None) or "workload"
    if meta:
        meta.done(ignore=("labels", "annotations"))
    a = f.sub("arrivals", required=True)
    process = a.str("process", "poisson" if not a.has("trace") else "trace",
                    choices=("poisson", "constant", "mmpp", "diurnal", "trace"))
    rate = a.num("rate_per_s", None if process == "trace" else 1.0, gt=0)
    trace = a.raw("trace")
    if trace is not None and not isinstance(trace, dict):
        raise SpecError(a.at("trace"), "must be a mapping with format and path")
    extra = {k: v for k, v in a.data.items() if k not in ("process", "rate_per_s", "trace")}
    arrivals = Arrivals(process=process, rate_per_s=rate or 0.0, trace=trace, extra=extra)
    j = f.sub("jobs", required=True)
    template_raw = j.raw("template", required=True)
    if isinstance(template_raw, str):
        path = Path(template_raw)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        try:
            template = load_job(path)
        except SpecError as exc:
            raise SpecError(j.at("template") + (f" ({path}): " + exc.field if exc.field else ""), exc.rule) from None
    else:
        try:
            template = job_from_dict(template_raw)
        except SpecError as exc:
            raise SpecError(join(j.at("template"), exc.field) if exc.field else j.at("template"), exc.rule) from None
    count = j.int("count", 100, ge=1, le=MAX_WORKLOAD_JOBS,
                  why="every job is simulated in memory; split larger workloads")
    ds = j.sub("duration_scale")
    scale = DurationScale()
    if ds is not None:
        dist = ds.str("dist", "constant", choices=("constant", "exponential", "lognormal"))
        scale = DurationScale(dist=dist, sigma=ds.num("sigma", 0.5 if dist == "lognormal" else 0.0, ge=0))
        ds.done()
    j.done()
    f.done()
    return Workload(name=name, arrivals=arrivals, template=template, count=count, duration_scale=scale)


def fits(stage: Stage, node: Node) -> bool:
    """Static fit: resources and zone/node constraints (not current load)."""
    c = stage.constraints
    if stage.compute.cpu > node.cores or stage.compute.mem_gb > node.mem_gb:
        return False
    if c.zones is not None and node.zone not in c.zones:
        return False
    if c.nodes is not None and node.name not in c.nodes:
        return False
    return True


def format_keys(stage: Stage, node: Node) -> list[str]:
    """The ways ``stage`` can run on ``node`` (``native``, ``qemu-<arch>``, ``wasm``); [] when it cannot.

    A spec rule (the stage's binary archs and allowed formats against the node's arch and
    formats, after :func:`fits`); :func:`dtlab.timing.exec_format` picks the cheapest by overhead.
    """
    if not fits(stage, node):
        return []
    allowed = stage.constraints.formats or node.formats
    binary_arches = stage.constraints.arch or ARCHES
    keys: list[str] = []
    if "native" in node.formats and "native" in allowed and node.arch in binary_arches:
        keys.append("native")
    if "qemu" in node.formats and "qemu" in allowed:
        keys += [f"qemu-{arch}" for arch in binary_arches if arch != node.arch]
    if "wasm" in node.formats and "wasm" in allowed:
        keys.append("wasm")
    return keys


def feasible(stage: Stage, node: Node) -> bool:
    """``stage`` can run on ``node`` at all (whatever the load)."""
    return bool(format_keys(stage, node))


def check_job_fits(job: Job, cluster: Cluster) -> None:
    """Every stage must have at least one node it may run on (arch/format/zone/resources)."""
    for i, stage in enumerate(job.stages):
        if not any(feasible(stage, node) for node in cluster.nodes):
            raise SpecError(f"spec.stages[{i}].constraints",
                            f"no node of cluster {cluster.name!r} satisfies stage {stage.id!r} "
                            f"(arch={stage.constraints.arch}, formats={stage.constraints.formats}, "
                            f"cpu={stage.compute.cpu:g}, mem_gb={stage.compute.mem_gb:g})")
