"""Predictors: how long will this job take under this placement? A latency distribution.

Three paths, selected by name, all reading the same :class:`~dtlab.timing.TimingModel`:

* ``des`` - the SimPy engine (:mod:`dtlab.des.predict`): the reference model.
* ``fast`` - a vectorised numpy Monte Carlo of the same model, for the planning hot
  path. Every stage is one numpy expression over ``samples`` draws; per-(stage, node)
  arrays are precomputed once per (snapshot, job, timing) and cached.
* ``legacy`` - the heuristic of the lineage this project descends from: the
  critical path of ``duration / speed * overhead`` plus link latencies. Deterministic
  (a constant array), kept only for regression comparisons (experiment V2).

What ``fast`` models - the model of :func:`dtlab.des.predict.sample_latencies_des`, stated
there - and the one place it approximates it (so experiment V2 can judge it):

* **Service**: ``duration * overhead / speed * X``, ``X`` the timing model's lognormal
  noise, one draw per stage per sample.
* **Start-up**: ``timing.stage_delay(format)`` ms (dispatch + the format's start-up; 0 unless
  calibrated) between a stage's inputs arriving and its work starting, on every attempt.
* **Transfers**: each DAG edge between different nodes costs
  ``TimingModel.sample_transfer_ms(output_mb, link)`` (latency, jitter, Mathis-capped
  bulk time, loss -> one RTO); root stages receive ``job.input_mb`` from the origin zone
  when the job has one (even 0 MB pays latency; a zone with no link is unreachable).
  Links are not shared between concurrent transfers.
* **DAG**: topological order; a stage starts at ``max`` over predecessors of (their end
  + transfer) - the exact critical-path recursion, per sample.
* **Capacity**: node n offers ``cores * (1 - b)`` with ``b =
  timing.background_share(cores, cpu_util, R)``: telemetry background is lost outright;
  ``R`` is the co-runners' cores. The des path runs co-runners as PS tasks with their
  remaining work (:func:`dtlab.timing.corunner_work`); here, for a stage of mean
  full-allocation service ``S`` on n, each co-runner with known remaining work ``rem``
  counts ``cpu * min(1, rem / S)`` (:func:`dtlab.timing.overlap_cpu`: present for that part
  of the stage), co-runners the twin did not plan count fully (they stay). First order:
  exact while nothing is oversubscribed or a co-runner outlasts the stage, optimistic when
  a node goes from oversubscribed to not mid-stage (PS slowdown is convex in demand).
* **Contention among this job's stages (the approximation)**: the engine shares a node
  among concurrent stages by processor sharing (water-filling, each capped at its
  ``cpu``). The fast path cannot replay PS per sample, so it applies one *static
  slowdown* per stage, ``max(1, demand / capacity)``, where ``demand`` = the stage's
  ``cpu`` + the ``cpu`` of this job's other stages on the same node that *can* overlap
  it (neither ancestor nor descendant in the DAG), assumed to overlap fully. Exact when
  nothing of the job shares a node, or when concurrent siblings are identical and start
  together; pessimistic otherwise (in PS the first to finish frees capacity).
* **Failures** (as the des path): independently per stage, with probability
  ``1 - (1 - fail_prob) ** (1 / k)`` (k = the job's stages on that node, so the node is
  hit with ``fail_prob`` per job), the node fails after the stage did a fraction ``U ~
  Uniform(0, 1)`` of its work. ``timing.detect_ms`` later the stage restarts on its
  shadow, or without one, after a further ``timing.replan_ms``, on an equivalent
  replacement of the same node; its inputs are sent again, it redoes the full work
  (same ``X``) and does not fail again; successors read from where it finished. A
  stage whose node is down in the snapshot runs on its shadow from the start (and its
  failure draw then applies there, with re-plan); with no shadow it never completes
  (``inf``).
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .errors import SpecError
from .model import DEFAULT_INTRA_ZONE, Job, Link
from .plan import summarize
from .timing import (MAX_BACKGROUND, TimingModel, background_share, overlap_cpu, progress_share, remaining_work_ms, rto_ms,
                     throughput_mbps)

PREDICTORS = ("fast", "legacy", "des")
JITTER_MEAN = math.sqrt(2 / math.pi)  # E|N(0,1)|
_DEFAULT_TIMING = TimingModel()


# ====================================================================== precomputed tables

@dataclass
class LinkRow:
    """Link parameters from one source to every node, as arrays of shape (N,). Same node: all zero."""
    lat: np.ndarray
    ms_per_mb: np.ndarray
    jitter: np.ndarray
    loss: np.ndarray
    rto: np.ndarray
    ok: np.ndarray  # reachable

    def mean_ms(self, size_mb: float) -> np.ndarray:
        """Mean transfer time of ``size_mb`` to every node (inf where unreachable); matches TimingModel.mean_transfer_ms."""
        out = self.lat + self.jitter * JITTER_MEAN
        if size_mb > 0:
            out = out + size_mb * self.ms_per_mb + self.loss * self.rto
        return np.where(self.ok, out, np.inf)

    def sample_ms(self, size_mb: float, z: np.ndarray, u: np.ndarray, cols=None) -> np.ndarray:
        """Samples x len(cols) transfer times with common random numbers ``z`` (normal) and ``u`` (uniform).

        Same formula as TimingModel.sample_transfer_ms; sharing z/u across candidate nodes is what
        makes the cvar policy's comparisons cheap and low-variance.
        """
        sel = slice(None) if cols is None else cols
        lat, mpm, jit, loss, rto = (a[sel] for a in (self.lat, self.ms_per_mb, self.jitter, self.loss, self.rto))
        out = (lat + size_mb * mpm)[None, :] + np.abs(z)[:, None] * jit[None, :]
        if size_mb > 0:
            out = out + (u[:, None] < loss[None, :]) * rto[None, :]
        return out


def _link_params(link: Link | None) -> tuple[float, float, float, float, float, bool]:
    if link is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0, False)
    return (link.latency_ms, 8000.0 / throughput_mbps(link), link.jitter_ms, link.loss, rto_ms(link), True)


def zone_link(snapshot, za: str, zb: str) -> Link | None:
    """The current link between two zones (overrides first, then the spec, intra-zone default); None if none/cut."""
    return _zone_link(snapshot.cluster, snapshot.link_overrides, za, zb)


def _zone_link(cluster, overrides, za: str, zb: str) -> Link | None:
    key = (za, zb)
    if key in overrides:
        return overrides[key]
    idx = cluster._link_index
    if key in idx:
        return idx[key]
    if za == zb:
        return Link(za, zb, **DEFAULT_INTRA_ZONE)
    return None


def origin_link(snapshot, job: Job, node: str) -> tuple[bool, Link | None]:
    """(reachable, link) carrying a root stage's input from ``job.origin_zone`` to ``node`` (no origin: no link)."""
    zone = job.origin_zone
    if zone is None:
        return True, None
    key = (zone, node)
    if key in snapshot.link_overrides:
        link = snapshot.link_overrides[key]
    else:
        link = zone_link(snapshot, zone, snapshot.nodes[node].node.zone)
    return link is not None, link


def _resolve(cluster, overrides, src: str, dst: str) -> Link | None:
    """Snapshot.link without a snapshot: node-pair override, zone-pair override, spec; None when cut or absent."""
    by = cluster.by_name
    for key in ((src, dst), (by[src].zone, by[dst].zone)):
        if key in overrides:
            return overrides[key]
    try:
        return cluster.link(src, dst)
    except SpecError:
        return None


class ClusterTable:
    """What does not change between snapshots of one cluster and link set: node constants, link matrices.

    Cached by (cluster object, link overrides), so a simulation planning at every arrival, or a
    burst of plans between telemetry updates, builds it once.
    """

    def __init__(self, cluster, overrides):
        self.overrides = overrides
        self.nodes = list(cluster.nodes)
        self.names = [n.name for n in self.nodes]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.n = len(self.names)
        self.zones = sorted({n.zone for n in self.nodes})
        self.zone_index = {z: i for i, z in enumerate(self.zones)}
        self.zone_idx = np.array([self.zone_index[n.zone] for n in self.nodes], dtype=np.int64)
        self.speed = np.array([n.speed for n in self.nodes], dtype=float)
        self.cores = np.array([n.cores for n in self.nodes], dtype=float)
        self.mem = np.array([n.mem_gb for n in self.nodes], dtype=float)
        self.fail_prob = np.array([n.fail_prob for n in self.nodes], dtype=float)
        sigs: dict[tuple, int] = {}
        self.sig_idx = np.array([sigs.setdefault((n.arch, n.formats), len(sigs)) for n in self.nodes], dtype=np.int64)
        self.sigs = list(sigs)
        self.sig_probe = [self.nodes[int(np.argmax(self.sig_idx == k))] for k in range(len(self.sigs))]
        z = len(self.zones)
        params = np.zeros((6, z, z))
        for i, za in enumerate(self.zones):
            for j, zb in enumerate(self.zones):
                params[:, i, j] = _link_params(_zone_link(cluster, overrides, za, zb))
        self.zparams = params
        # node-pair links that differ from their zones' link: src -> [(dst, Link | None)]
        self.exceptions: dict[int, list[tuple[int, Link | None]]] = {}
        pairs = {k for k in overrides if k[0] in self.index and k[1] in self.index}
        for (a, b) in cluster._link_index:
            if a in self.index and b in self.index:
                if (self.nodes[self.index[a]].zone, self.nodes[self.index[b]].zone) not in overrides:
                    pairs.add((a, b))
        for a, b in pairs:
            if a != b:
                self.exceptions.setdefault(self.index[a], []).append((self.index[b], _resolve(cluster, overrides, a, b)))
        self._rows: dict[int, LinkRow] = {}
        self._origin_rows: dict[str | None, LinkRow] = {}

    def _row_from_zone(self, zi: int) -> LinkRow:
        p = self.zparams[:, zi, :][:, self.zone_idx]
        return LinkRow(p[0].copy(), p[1].copy(), p[2].copy(), p[3].copy(), p[4].copy(), p[5].astype(bool))

    def row(self, src: int) -> LinkRow:
        """Links from node ``src`` to every node (cached)."""
        r = self._rows.get(src)
        if r is None:
            r = self._row_from_zone(int(self.zone_idx[src]))
            for dst, link in self.exceptions.get(src, ()):
                lat, mpm, jit, loss, rto, ok = _link_params(link)
                r.lat[dst], r.ms_per_mb[dst], r.jitter[dst], r.loss[dst], r.rto[dst], r.ok[dst] = lat, mpm, jit, loss, rto, ok
            r.lat[src] = r.ms_per_mb[src] = r.jitter[src] = r.loss[src] = r.rto[src] = 0.0
            r.ok[src] = True
            self._rows[src] = r
        return r

    def origin_row(self, zone: str | None) -> LinkRow | None:
        """Links from the origin zone to every node (as dtlab.des.links.origin_link); None: no origin, no transfer."""
        if zone is None:
            return None
        r = self._origin_rows.get(zone)
        if r is None:
            if zone in self.zone_index:
                r = self._row_from_zone(self.zone_index[zone])
            else:  # a zone without nodes cannot have links: unreachable
                r = LinkRow(*(np.zeros(self.n) for _ in range(5)), np.zeros(self.n, dtype=bool))
            for (a, b), link in self.overrides.items():
                if a == zone and b in self.index:
                    vals = _link_params(link)
                    for arr, v in zip((r.lat, r.ms_per_mb, r.jitter, r.loss, r.rto, r.ok), vals):
                        arr[self.index[b]] = v
            self._origin_rows[zone] = r
        return r


class NodeTable:
    """Per-snapshot view: the static :class:`ClusterTable` arrays plus current load and up/cordon state.

    A ``snapshot.nodes`` mapping may offer ``status_arrays(names) -> (up, cordoned, cpu_util,
    running_cpu)`` (four sequences in ``names`` order) to skip building one NodeStatus per node.

    ``capacity`` counts every running stage as staying; :meth:`capacity_for` /
    :meth:`capacity_at` give the capacity a stage of a given service time sees, with
    co-runners of known remaining work (read once here, only for nodes with running work,
    at ``snapshot.clock``) counted for their overlap only.
    """

    def __init__(self, snapshot):
        ct = cluster_table(snapshot.cluster, snapshot.link_overrides)
        self.static = ct
        for name in ("nodes", "names", "index", "n", "zones", "zone_index", "zone_idx", "speed", "cores", "mem",
                     "fail_prob", "sig_idx", "sigs", "zparams", "row", "origin_row"):
            setattr(self, name, getattr(ct, name))
        arrays = getattr(snapshot.nodes, "status_arrays", None)
        if arrays is not None:
            # optional fast path for live mappings (e.g. a running engine): skip building NodeStatus objects
            up, cordoned, util, running = (np.asarray(a) for a in arrays(ct.names))
        else:
            statuses = [snapshot.nodes[name] for name in ct.names]
            up = np.array([s.up for s in statuses], dtype=bool)
            cordoned = np.array([s.cordoned for s in statuses], dtype=bool)
            util = np.array([s.cpu_util for s in statuses], dtype=float)
            running = np.array([s.running_cpu for s in statuses], dtype=float)
        self.running = running.astype(float)
        self.util = np.asarray(util, dtype=float)
        self.capacity = self.cores * (1.0 - background_share(self.cores, self.util, self.running))
        self.up = up.astype(bool)
        self.schedulable = self.up & ~cordoned.astype(bool)
        self._read_corunners(snapshot)

    def _read_corunners(self, snapshot) -> None:
        """Flatten co-runners with known remaining work: per co-runner node/cpu/remaining, per node staying cores.

        One Python step per co-runner on a node with running work (attribute reads only); the
        remaining work (:func:`dtlab.timing.remaining_work_ms`, progress share of each node) is
        vectorised. Same rule as :func:`dtlab.timing.corunner_work`, which the des path reads.
        """
        self.stay = self.running                   # cores that stay for any stage, per node
        self.co_nodes = np.empty(0, dtype=np.int64)  # nodes with at least one leaving co-runner
        self._co_at: dict[int, slice] = {}
        busy = np.flatnonzero(self.running > 0)
        if not busy.size:
            return
        nodes, names, nan = snapshot.nodes, self.names, math.nan
        rows, cpu, start, svc = [], [], [], []
        for n in busy.tolist():
            for c in getattr(nodes[names[n]], "corunners", ()):
                if c.service_ms is not None:
                    rows.append(n)
                    cpu.append(c.cpu)
                    start.append(nan if c.start_ts is None else c.start_ts)
                    svc.append(c.service_ms)
        if not rows:
            return
        co_node = np.array(rows, dtype=np.int64)     # ascending (busy is sorted): one segment per node
        co_cpu = np.array(cpu, dtype=float)
        share = progress_share(self.cores[co_node], self.util[co_node], self.running[co_node])
        co_rem = remaining_work_ms(np.array(svc, dtype=float), np.array(start, dtype=float),
                                   getattr(snapshot, "clock", None), share)
        self.stay = np.maximum(0.0, self.running - np.bincount(co_node, co_cpu, minlength=self.n))
        self.co_nodes, first, counts = np.unique(co_node, return_index=True, return_counts=True)
        self.co_local = np.repeat(np.arange(self.co_nodes.size), counts)
        self.co_node, self.co_cpu, self.co_rem = co_node, co_cpu, co_rem
        self._co_at = {n: slice(f, f + k) for n, f, k in zip(self.co_nodes.tolist(), first.tolist(), counts.tolist())}
        nodes = self.co_nodes
        self._co_stay, self._co_cores = self.stay[nodes], self.cores[nodes]
        self._co_avail = self._co_cores * (1.0 - np.minimum(self.util[nodes], MAX_BACKGROUND))
        self._co_min = self._co_cores * (1.0 - MAX_BACKGROUND)   # background_share's clip, as capacity

    def capacity_for(self, svc: np.ndarray) -> np.ndarray:
        """Capacity of every node for a stage whose mean full-allocation service there is ``svc`` (shape (N,)).

        ``cores * (1 - background_share(cores, util, stay + sum overlap_cpu))`` on the nodes with
        leaving co-runners (inlined, with the per-node constants precomputed: the planner's hot path).
        """
        nodes = self.co_nodes
        if not nodes.size:
            return self.capacity
        s = svc[self.co_node]
        frac = np.minimum(1.0, np.divide(self.co_rem, s, out=np.full(s.shape, np.inf), where=s > 0))
        running = self._co_stay + np.bincount(self.co_local, self.co_cpu * frac, minlength=nodes.size)
        avail = self._co_avail
        usable = np.maximum(avail - running, avail / (running + 1.0))
        cap = self.capacity.copy()
        cap[nodes] = np.clip(usable, self._co_min, self._co_cores)
        return cap

    def capacity_at(self, n: int, svc: float) -> float:
        """Capacity of node ``n`` for a stage of mean full-allocation service ``svc`` (ms)."""
        seg = self._co_at.get(n)
        if seg is None:
            return float(self.capacity[n])
        running = self.stay[n] + float(overlap_cpu(self.co_cpu[seg], self.co_rem[seg], svc).sum())
        return float(self.cores[n] * (1.0 - background_share(self.cores[n], self.util[n], running)))


class StageTable:
    """Per-(stages, cluster, timing) arrays: stage x node mean service, formats, feasibility, DAG relations.

    Static: jobs from one template share it. :func:`stage_table` adds ``candidates`` (feasible and
    schedulable now) for a snapshot.
    """

    candidates: np.ndarray

    def __init__(self, nt: "ClusterTable", job: Job, timing: TimingModel):
        self.ids = list(job.topo_order)
        self.index = {sid: i for i, sid in enumerate(self.ids)}
        stages = [job.stages[job.stage_index[sid]] for sid in self.ids]
        self.stages = stages
        t = len(stages)
        self.t = t
        self.preds = [[self.index[p] for p in s.after] for s in stages]
        self.succs = [[j for j in range(t) if i in self.preds[j]] for i in range(t)]
        self.out_mb = np.array([s.output_mb for s in stages], dtype=float)
        self.cpu = np.array([s.compute.cpu for s in stages], dtype=float)
        self.base_svc = np.full((t, nt.n), np.inf)
        self.startup = np.zeros((t, nt.n))      # start-up delay of the stage's format on each node (ms)
        self.fmt_by_sig: list[list[str | None]] = []
        self.feasible = np.zeros((t, nt.n), dtype=bool)
        for i, s in enumerate(stages):
            # the format depends only on (arch, formats) of a node: ask the timing model once per signature,
            # with the resource/zone checks neutralised; those are vectorised below (same rules as timing.fits).
            free = replace(s, compute=replace(s.compute, cpu=0.0, mem_gb=0.0),
                           constraints=replace(s.constraints, zones=None, nodes=None))
            fmts, factors = [], np.full(len(nt.sigs), np.nan)
            for k, (arch, formats) in enumerate(nt.sigs):
                res = timing.exec_format(free, nt.sig_probe[k])
                fmts.append(None if res is None else res[0])
                if res is not None:
                    factors[k] = res[1]
            self.fmt_by_sig.append(fmts)
            self.startup[i] = np.array([timing.stage_delay(fm) if fm else 0.0 for fm in fmts], dtype=float)[nt.sig_idx]
            f = factors[nt.sig_idx]
            ok = ~np.isnan(f) & (s.compute.cpu <= nt.cores) & (s.compute.mem_gb <= nt.mem)
            c = s.constraints
            if c.zones is not None:
                ok &= np.isin(nt.zone_idx, [nt.zone_index[z] for z in c.zones if z in nt.zone_index])
            if c.nodes is not None:
                ok &= np.isin(np.arange(nt.n), [nt.index[n] for n in c.nodes if n in nt.index])
            self.feasible[i] = ok
            self.base_svc[i, ok] = s.compute.duration_ms * f[ok] / nt.speed[ok]
        # ancestor relation (topo order: predecessors have smaller indices)
        anc = np.zeros((t, t), dtype=bool)
        for i in range(t):
            for p in self.preds[i]:
                anc[i, p] = True
                anc[i] |= anc[p]
        self.ancestor = anc                       # anc[i, j]: j is an ancestor of i
        self.related = anc | anc.T | np.eye(t, dtype=bool)
        # lower bound of the time still needed after stage i ends (fastest feasible node, no transfers)
        best = np.where(self.feasible, self.base_svc, np.inf).min(axis=1)
        best = np.where(np.isfinite(best), best, 0.0)
        rem = np.zeros(t)
        for i in reversed(range(t)):
            rem[i] = max((best[j] + rem[j] for j in self.succs[i]), default=0.0)
        self.remaining_lb = rem

    def format_of(self, nt: NodeTable, i: int, node: int) -> str | None:
        return self.fmt_by_sig[i][int(nt.sig_idx[node])]


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, build):
        if key in self:
            self.move_to_end(key)
            return self[key][-1]
        value = build()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value[-1]


_CLUSTER_TABLES = _LRU(8)
_NODE_TABLES = _LRU(4)
_STAGE_TABLES = _LRU(64)


def cluster_table(cluster, overrides) -> ClusterTable:
    key = (id(cluster), frozenset(overrides.items()))
    return _CLUSTER_TABLES.get_or(key, lambda: (cluster, ClusterTable(cluster, dict(overrides))))


def node_table(snapshot) -> NodeTable:
    # keyed by object identity; the cached entry holds the snapshot so the id stays unique
    return _NODE_TABLES.get_or(id(snapshot), lambda: (snapshot, NodeTable(snapshot)))


def stage_table(snapshot, job: Job, timing: TimingModel) -> StageTable:
    """The static StageTable of ``job``'s stages with this snapshot's ``candidates`` (feasible and schedulable)."""
    nt = node_table(snapshot)
    ct = nt.static
    static = _STAGE_TABLES.get_or((id(ct), job.stages, id(timing)),
                                  lambda: (ct, timing, StageTable(ct, job, timing)))
    view = copy.copy(static)
    view.candidates = static.feasible & nt.schedulable[None, :]
    return view


def node_slowdown(nt: NodeTable, cpu: float, extra_demand, svc: np.ndarray | None = None) -> np.ndarray:
    """Static processor-sharing slowdown ``max(1, demand / capacity)`` (see the module docstring).

    ``svc``: the stage's mean full-allocation service per node (``StageTable.base_svc[i]``), so
    co-runners that leave early count only for their overlap; None: every co-runner stays.
    """
    capacity = nt.capacity if svc is None else nt.capacity_for(svc)
    return np.maximum(1.0, (extra_demand + cpu) / capacity)


# ====================================================================== predictors

def sample_latencies(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None, *,
                     predictor: str = "fast", samples: int = 256, rng=None,
                     timing: TimingModel | None = None) -> np.ndarray:
    """End-to-end latency samples (ms) of ``job`` under ``placement`` (and optional ``shadow``)."""
    timing = timing or _DEFAULT_TIMING
    rng = _as_rng(rng)
    if predictor not in PREDICTORS:
        raise SpecError("predictor", f"must be one of {list(PREDICTORS)}, got {predictor!r}")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise SpecError("samples", f"must be an integer >= 1, got {samples!r}")
    shadow = dict(shadow or {})
    _check_plan(snapshot, job, placement, shadow)
    if predictor == "fast":
        return _fast(snapshot, job, placement, shadow, int(samples), rng, timing)
    if predictor == "legacy":
        return np.full(int(samples), _legacy(snapshot, job, placement, timing))
    from .des.predict import sample_latencies_des  # SimPy engine: imported on demand
    return np.asarray(sample_latencies_des(snapshot, job, dict(placement), shadow, samples=int(samples),
                                           rng=rng, timing=timing), dtype=float)


def score_plan(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None, *,
               predictor: str = "fast", samples: int = 256, rng=None, timing: TimingModel | None = None) -> dict:
    """Prediction dict (mean/p50/p95/p99/cvar95/deadline-miss) from :func:`sample_latencies`."""
    lat = sample_latencies(snapshot, job, placement, shadow, predictor=predictor, samples=samples,
                           rng=rng, timing=timing)
    return summarize(lat, job.deadline_ms)


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(0 if rng is None else int(rng))
    raise SpecError("rng", f"must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_plan(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str]) -> None:
    for s in job.stages:
        if s.id not in placement:
            raise SpecError(f"placement.{s.id}", "stage has no node")
    for name, mapping in (("placement", placement), ("shadow", shadow)):
        for sid, node in mapping.items():
            if sid not in job.stage_index:
                raise SpecError(f"{name}.{sid}", f"job {job.name!r} has no such stage")
            if node not in snapshot.nodes:
                raise SpecError(f"{name}.{sid}", f"unknown node {node!r}")


def _legacy(snapshot, job: Job, placement: Mapping[str, str], timing: TimingModel) -> float:
    """Critical path of duration/speed*overhead plus link latency (no noise, contention, bandwidth or loss)."""
    finish: dict[str, float] = {}
    for sid in job.topo_order:
        stage = job.stages[job.stage_index[sid]]
        node = snapshot.nodes[placement[sid]].node
        fmt = timing.exec_format(stage, node)
        if fmt is None:
            raise SpecError(f"placement.{sid}", f"stage cannot run on node {node.name!r}")
        start = 0.0
        if not stage.after:
            ok, link = origin_link(snapshot, job, node.name)
            start = (link.latency_ms if link is not None else 0.0) if ok else math.inf
        for p in stage.after:
            if not snapshot.reachable(placement[p], node.name):
                return math.inf
            link = snapshot.link(placement[p], node.name)
            start = max(start, finish[p] + (link.latency_ms if link is not None else 0.0))
        finish[sid] = start + stage.compute.duration_ms * fmt[1] / node.speed
    return max(finish.values())


def _fast(snapshot, job, placement, shadow, S, rng, timing) -> np.ndarray:
    nt = node_table(snapshot)
    st = stage_table(snapshot, job, timing)
    prim = np.array([nt.index[placement[sid]] for sid in st.ids], dtype=np.int64)
    back = np.array([nt.index[shadow[sid]] if sid in shadow else -1 for sid in st.ids], dtype=np.int64)
    for i, sid in enumerate(st.ids):
        if not st.feasible[i, prim[i]]:
            raise SpecError(f"placement.{sid}", f"stage cannot run on node {placement[sid]!r} (constraints/resources)")
        if back[i] >= 0 and not st.feasible[i, back[i]]:
            raise SpecError(f"shadow.{sid}", f"stage cannot run on node {shadow[sid]!r} (constraints/resources)")
    up = nt.up if not nt.up.all() else None
    # per-stage failure probability: the node's fail_prob split over the job's stages on it
    counts = np.bincount(prim, minlength=nt.n)
    p_fail = 1.0 - (1.0 - nt.fail_prob[prim]) ** (1.0 / counts[prim])
    run_on = prim.copy()                      # where the first attempt runs
    restart = np.where((back >= 0) & (back != prim), back, prim)
    replan = restart == prim
    dead = np.zeros(st.t, dtype=bool)         # never completes
    if up is not None:
        for i in range(st.t):
            if back[i] >= 0 and not up[back[i]]:   # a down shadow is no shadow: re-plan instead
                restart[i], replan[i] = prim[i], True
            if not up[prim[i]]:
                if back[i] >= 0 and up[back[i]]:
                    run_on[i] = restart[i] = back[i]
                    replan[i] = True
                else:
                    dead[i] = True
    if dead.any():
        return np.full(S, np.inf)
    # static PS slowdown: this job's stages that may overlap on the same node
    svc_first = np.empty(st.t)
    svc_restart = np.empty(st.t)
    for i in range(st.t):
        n = run_on[i]
        share = (run_on == n) & ~st.related[i]
        base = st.base_svc[i, n]
        svc_first[i] = base * max(1.0, (st.cpu[i] + st.cpu[share].sum()) / nt.capacity_at(n, base))
        r = restart[i]
        svc_restart[i] = svc_first[i] if r == n else \
            st.base_svc[i, r] * max(1.0, st.cpu[i] / nt.capacity_at(r, st.base_svc[i, r]))
    origin = job.origin_zone
    orow = nt.origin_row(origin)
    links: dict[tuple[int, int], tuple[bool, Link | None]] = {}

    def transfer(size: float, src: int, dst: int) -> np.ndarray:
        """Samples of one transfer; src -1 = the origin zone."""
        if src == dst:
            return np.zeros(S)
        key = (src, dst)
        if key not in links:
            if src < 0:
                links[key] = origin_link(snapshot, job, nt.names[dst])
            else:
                try:
                    links[key] = (True, snapshot.link(nt.names[src], nt.names[dst]))
                except SpecError:
                    links[key] = (False, None)
        ok, link = links[key]
        if not ok:
            return np.full(S, np.inf)
        return timing.sample_transfer_ms(size, link, rng, S)

    fin: list[np.ndarray] = [None] * st.t      # type: ignore[list-item]
    moved: list[np.ndarray | None] = [None] * st.t  # per sample: stage finished on its restart node

    def inputs(i: int, dst: int, with_end: bool) -> np.ndarray:
        """Per sample: when (with_end) / how long after its predecessors ended all of i's inputs reach dst."""
        ready = np.zeros(S)
        if not st.preds[i] and orow is not None:
            ready = transfer(job.input_mb, -1, dst)
        for p in st.preds[i]:
            t = transfer(st.out_mb[p], int(run_on[p]), dst)
            if moved[p] is not None:
                t = np.where(moved[p], transfer(st.out_mb[p], int(restart[p]), dst), t)
            if with_end:
                t = t + fin[p]
            ready = np.maximum(ready, t)
        return ready

    for i in range(st.t):
        ready = inputs(i, int(run_on[i]), True)
        x = timing.service_noise(rng, S)
        svc = svc_first[i] * x
        up0 = st.startup[i, run_on[i]]          # process/emulator/runtime start-up, before the work
        end = ready + up0 + svc
        if p_fail[i] > 0:
            failed = rng.random(S) < p_fail[i]
            frac = rng.random(S)
            t_fail = ready + up0 + frac * svc
            again = t_fail + timing.detect_ms + (timing.replan_ms if replan[i] else 0.0) \
                + inputs(i, int(restart[i]), False) + st.startup[i, restart[i]] + svc_restart[i] * x
            end = np.where(failed, again, end)
            if restart[i] != run_on[i]:
                moved[i] = failed
        fin[i] = end
    sinks = [i for i in range(st.t) if not st.succs[i]]
    return np.max(np.stack([fin[i] for i in sinks]), axis=0)
