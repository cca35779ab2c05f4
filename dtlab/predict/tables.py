"""The planner's precomputed arrays: node and link tables per cluster, per snapshot, per job template.

Every predictor and policy reads the same tables, built once and cached: :class:`ClusterTable`
(what does not change between snapshots of one cluster and link set: node constants, zone x
zone link parameters, node-pair exceptions), :class:`NodeTable` (a snapshot's load and up/cordon
state, co-runners' remaining work) and :class:`StageTable` (stage x node mean service, formats,
feasibility, DAG relations). Caches are small LRUs keyed by object identity; each entry holds
the object it is keyed by, so the id stays unique while cached.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from ..model import Job, Link, LinkCutError, resolve_link
from ..timing import (MAX_BACKGROUND, TimingModel, background_share, overlap_cpu, progress_share, remaining_work_ms, rto_ms,
                      throughput_mbps)

JITTER_MEAN = math.sqrt(2 / math.pi)  # E|N(0,1)|

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


def _resolve(cluster, overrides, src: str, dst: str) -> Link | None:
    """:func:`dtlab.model.resolve_link` with unreachable as None (the tables mark it ``ok`` False)."""
    try:
        return resolve_link(cluster, overrides, src, dst)
    except LinkCutError:
        return None


class ClusterTable:
    """What does not change between snapshots of one cluster and link set: node constants, link matrices.

    Cached by (cluster object, link overrides), so a simulation planning at every arrival, or a
    burst of plans between telemetry updates, builds it once.
    """

    def __init__(self, cluster, overrides):
        self.cluster = cluster
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
                params[:, i, j] = _link_params(_resolve(cluster, overrides, za, zb))
        self.zparams = params
        # node-pair links that differ from their zones' link: src -> [(dst, Link | None)]
        self.exceptions: dict[int, list[tuple[int, Link | None]]] = {}
        pairs = {k for k in overrides if k[0] in self.index and k[1] in self.index}
        for (a, b) in cluster.link_index:
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
        """Links from the origin zone to every node (:func:`dtlab.model.resolve_link` from a zone); None: no origin."""
        if zone is None:
            return None
        r = self._origin_rows.get(zone)
        if r is None:
            if zone in self.zone_index:
                r = self._row_from_zone(self.zone_index[zone])
            else:  # a zone without nodes: only its overrides to zones can reach anything
                p = np.array([_link_params(_resolve(self.cluster, self.overrides, zone, z)) for z in self.zones]).T
                p = p.reshape(6, len(self.zones))[:, self.zone_idx]
                r = LinkRow(p[0].copy(), p[1].copy(), p[2].copy(), p[3].copy(), p[4].copy(), p[5].astype(bool))
            # nodes named by an override or a spec link from this zone: the full rule, per node
            named = {b for (a, b) in (*self.overrides, *self.cluster.link_index) if a == zone and b in self.index}
            for b in sorted(named):
                vals = _link_params(_resolve(self.cluster, self.overrides, zone, b))
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
        # the static table's constants, read through this view (named, so readers and type checks see them)
        self.nodes, self.names, self.index, self.n = ct.nodes, ct.names, ct.index, ct.n
        self.zones, self.zone_index, self.zone_idx = ct.zones, ct.zone_index, ct.zone_idx
        self.speed, self.cores, self.mem, self.fail_prob = ct.speed, ct.cores, ct.mem, ct.fail_prob
        self.sig_idx, self.sigs, self.zparams = ct.sig_idx, ct.sigs, ct.zparams
        self.row, self.origin_row = ct.row, ct.origin_row
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
        self.co_at: dict[int, slice] = {}
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
        self.co_at = {n: slice(f, f + k) for n, f, k in zip(self.co_nodes.tolist(), first.tolist(), counts.tolist())}
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
        seg = self.co_at.get(n)
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
        self.cpu_svc = np.full((t, nt.n), np.inf)    # the fluid service: CPU-busy time (energy)
        self.startup = np.zeros((t, nt.n))      # start-up delay of the stage's format on each node (ms)
        self.fmt_by_sig: list[list[str | None]] = []
        self.feasible = np.zeros((t, nt.n), dtype=bool)
        for i, s in enumerate(stages):
            # the format depends only on (arch, formats) of a node: ask the timing model once per signature,
            # with the resource/zone checks neutralised; those are vectorised below (same rules as model.fits).
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
            fluid = s.compute.duration_ms * f[ok] / nt.speed[ok]
            self.cpu_svc[i, ok] = fluid
            self.base_svc[i, ok] = fluid if timing.cpu_quota is None else \
                fluid - timing.quota_saving_ms([nt.names[k] for k in np.flatnonzero(ok)], s.compute.cpu, fluid)
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
