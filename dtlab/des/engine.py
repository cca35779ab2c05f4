"""The twin's discrete-event engine: jobs as stage DAGs on a SimPy clock (virtual ms).

The model is the one documented in :mod:`dtlab.timing`; this module adds *how*
draws combine in time:

* **CPU: processor sharing per node.** Every stage that runs on a node shares its
  capacity ``cores * (1 - background utilisation)``; each stage is capped at its
  ``cpu`` cores and the rest is split max-min fairly (water-filling). That is what
  the Linux CFS scheduler approximates for CPU-bound work under cgroup quotas: a
  busy node slows everyone down rather than queueing jobs. With ``cpu: 1`` stages
  on a ``c``-core node the number in system follows the M/M/c birth-death process
  (rate ``min(n, c) * mu``), so Erlang C still gives the mean sojourn time
  (tests/test_queueing.py checks it).
* **Efficient PS.** Each node is a :class:`dtlab.des.ps.PSNode` (grouped by cpu cap,
  virtual clocks, lazily advanced work, one live completion timeout per node); the
  engine adds, removes and fails runs on it and finishes the runs it completes.
* **DAG.** A stage is *dispatched* (``ready_ms``) when all its predecessors ended;
  then every predecessor's ``output_mb`` travels from the node it ran on (and, for
  root stages, the job's ``input_mb`` from the origin zone; links resolved by
  :func:`dtlab.model.resolve_link`); the stage *starts* (``start_ms``) when the last input
  arrived, and its work joins the node's processor sharing ``timing.stage_delay(format)``
  ms later (dispatch + process/runtime start-up; 0 unless calibrated). Transfer times come from
  ``TimingModel.sample_transfer_parts`` for the link
  in force when the transfer starts. A cut link blocks the transfer until restored;
  a transfer during which its link was cut is sent again.
* **Links are shared** (``des/linkshare.py``): the bulk part of concurrent transfers on one
  directed link (source node or origin zone -> destination node) shares its bandwidth by
  processor sharing; latency, jitter and the loss tail follow the bulk phase, per transfer.
  ``occupy_link`` adds flows of work outside the engine's jobs (the des predictor's phantoms
  for transfers a snapshot reports in flight).
* **Service.** ``duration_ms * scale * overhead / speed * X``; the noise ``X`` is
  drawn once per stage at submission, so a restarted stage redoes the same work
  (scaled by its new node's speed and format).
* **Fail-stop failures.** ``fail_node`` loses every stage running on the node or
  receiving inputs for it. Such a stage moves to its shadow node once the failure is
  detected (``detect_ms`` after the failure); without a shadow the ``replan``
  callback ``(job, stage_id, failed_node) -> node | None`` is asked after
  ``detect_ms + replan_ms``; otherwise (or on None) it waits for the node to come
  back, and a job waiting for a node that never returns is recorded lost. Outputs of
  stages that already ended are kept (sent on completion / persisted), even if their
  node fails later.
* **Pre-staging** (``submit(..., prestage=stages)``). When such a stage is dispatched
  to its primary, each of its inputs is also copied to its shadow node, a transfer
  drawn like any other that starts at once. If the stage later fails over to the
  shadow, an input whose copy has landed is already there and one still in flight is
  waited for, instead of being sent again after detection; a copy whose link was cut
  before it landed is void. The copy's cost is counted whether or not it is used
  (``prestaged_mb`` per job). The copy's time is drawn alone (it does not join the
  link's sharing), so it does not slow the primary's own transfers here; on a
  substrate whose links are shared it would.

Events for a mirroring :class:`dtlab.state.ClusterState` go to ``listeners`` as
plain dicts (``job-submit``, ``stage-start``, ``stage-end`` with ``ok``,
``node-down``, ``node-up``, ``telemetry``, ``link``/``link-reset``), ``ts`` in
virtual seconds.
"""
from __future__ import annotations

import math
from functools import partial
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np
import simpy
from simpy.events import Timeout

from ..errors import SpecError
from ..model import Cluster, Job, Link, LinkCutError, link_keys, resolve_link
from ..timing import TimingModel
from .linkshare import SharedLink
from .ps import EPS_MS, Group, PSNode

_EMPTY: Mapping = {}

Replan = Callable[[Job, str, str], "str | None"]


class _Node(PSNode):
    """A node of the engine: its processor sharing plus failure state and the runs waiting for it."""
    __slots__ = ("name", "node", "up", "down_at", "permanent", "waiters", "inbound")

    def __init__(self, node, bg: float, env: simpy.Environment, on_done: Callable[["_Run"], None]):
        super().__init__(env, node.cores, bg, on_done)
        self.name = node.name
        self.node = node
        self.up = True
        self.down_at = -math.inf
        self.permanent = False
        self.waiters: list[tuple[_JobRun, str]] = []   # stages waiting for this node to come back
        self.inbound = _OrderedSet()                    # runs receiving inputs for this node


class _OrderedSet(dict):
    """A set that iterates in insertion order (set order follows ids and would break determinism)."""

    def add(self, item) -> None:
        self[item] = None

    def discard(self, item) -> None:
        self.pop(item, None)


class _Run:
    """One attempt of one stage on one node."""
    __slots__ = ("jr", "sid", "node", "attempt", "fmt", "cpu", "work", "group", "target", "running",
                 "ready_ms", "start_ms", "pending", "doomed", "dead")

    def __init__(self, jr, sid, node, attempt, fmt, cpu, work, ready_ms):
        self.jr = jr
        self.sid = sid
        self.node = node
        self.attempt = attempt
        self.fmt = fmt
        self.cpu = cpu
        self.work = work
        self.group: Group | None = None
        self.target = 0.0
        self.running = False
        self.ready_ms = ready_ms
        self.start_ms = math.nan
        self.pending = 0
        self.doomed = False
        self.dead = False

    @property
    def remaining(self) -> float:
        """Work left (ms at full rate), as of the node's last PS update."""
        return self.work if self.group is None else self.target - self.group.v


class _JobRun:
    __slots__ = ("job", "name", "placement", "shadow", "scale", "arrival_ms", "noise", "waiting",
                 "stage_node", "left", "start_ms", "end_ms", "failed_over", "lost", "extra_work",
                 "failures", "attempts", "runs", "nodes_used", "info", "prestage", "staged", "prestaged_mb")

    def __init__(self, job, name, placement, shadow, scale, arrival_ms, info):
        self.job = job
        self.name = name
        self.placement = placement
        self.shadow = shadow
        self.scale = scale
        self.arrival_ms = arrival_ms
        self.info = info                       # per-template static data (see Engine._template)
        self.noise = None
        self.waiting = dict(info.npred) if len(info.npred) > 1 else None  # stage -> predecessors left
        self.stage_node: dict[str, str] = {}
        self.left = len(info.npred)
        self.start_ms = math.nan
        self.end_ms = math.nan
        self.failed_over = 0
        self.lost = False
        self.extra_work = 0.0
        self.failures: Mapping[str, float] = _EMPTY
        self.attempts: dict[str, int] = {}
        self.runs = _OrderedSet()
        self.nodes_used: list[str] = []
        self.prestage: frozenset[str] = frozenset()   # stages whose inputs are copied to the shadow too
        self.staged: dict[tuple[str, str], tuple[float, float]] = {}   # (stage, source) -> (sent, arrives)
        self.prestaged_mb = 0.0


class _Template:
    """Static per-job-shape data, computed once per distinct ``job.stages`` tuple."""
    __slots__ = ("stages", "by_id", "npred", "succ", "roots", "ids", "refs", "ones", "cost")

    def __init__(self, job: Job):
        self.stages = job.stages
        self.by_id = {s.id: s for s in job.stages}
        self.ids = [s.id for s in job.stages]
        self.npred = {s.id: len(s.after) for s in job.stages}
        self.succ = {s.id: [] for s in job.stages}
        for s in job.stages:
            for p in s.after:
                self.succ[p].append(s.id)
        self.roots = [s.id for s in job.stages if not s.after]
        self.refs = job.stages  # keep the tuple alive so id() stays unique
        self.ones = {sid: 1.0 for sid in self.ids}
        self.cost: dict[tuple[str, str], tuple] = {}   # (stage, node) -> (format, ms per unit scale, cpu, stage)


class Engine:
    """SimPy model of a cluster running stage DAGs (see the module docstring for the model).

    ``background``: node -> utilisation in [0, 1] taken by work the twin does not run.
    ``links``: initial link overrides (``Snapshot.link_overrides`` shape).
    ``down``: nodes already down (and known to be down) at time 0, never coming back.
    ``record_stages``: keep per-attempt records (off in long simulations to save memory).
    """

    def __init__(self, cluster: Cluster, timing: TimingModel | None, rng: np.random.Generator, *,
                 background: Mapping[str, float] | None = None,
                 links: Mapping[tuple[str, str], Link | None] | None = None,
                 down: Iterable[str] = (), record_stages: bool = True,
                 formats: dict | None = None):
        self.cluster = cluster
        self.timing = timing or TimingModel()
        self.rng = rng
        self.env = simpy.Environment()
        self.listeners: list[Callable[[dict], None]] = []
        self.replan: Replan | None = None
        self.record_stages = record_stages
        bg = dict(background or {})
        for name in bg:
            cluster.node(name)
        self._nodes = {n.name: _Node(n, _check_util(bg.get(n.name, 0.0), f"background.{n.name}"), self.env,
                                     self._finish) for n in cluster.nodes}
        for name in down:
            ns = self._node(name, "down")
            ns.up, ns.permanent = False, True
        self._links: dict[tuple[str, str], Link | None] = dict(links or {})
        self._links_view = MappingProxyType(self._links)
        self._cuts: list[tuple[float, tuple[str, str]]] = []    # (time, key) of every cut
        self._blocked: list[tuple] = []                         # transfers waiting for a cut link
        self._flows: dict[tuple[str, str, Link], SharedLink] = {}  # bandwidth sharing per directed link
        self._formats = formats if formats is not None else {}  # (constraints, cpu, mem, node) -> fmt
        self._templates: dict[int, _Template] = {}
        self._names: set[str] = set()
        self._live: dict[str, _JobRun] = {}
        self._done: list[_JobRun] = []
        self._stage_rows: list[tuple] = []
        self._submitted = 0
        self._checked: tuple = (None, None)
        # skip the noise draw only for the base model with sigma 0 (subclasses may add a tail)
        self._noise_free = (self.timing.service_sigma <= 0
                            and type(self.timing).service_noise is TimingModel.service_noise)
        # timing constants looked up in the hot path
        self._detect = float(self.timing.detect_ms)
        self._replan_ms = float(self.timing.replan_ms)

    # ------------------------------------------------------------ clock
    @property
    def now_ms(self) -> float:
        return self.env.now

    @property
    def link_overrides(self) -> Mapping[tuple[str, str], Link | None]:
        """The links in force now (``Snapshot.link_overrides`` shape): a live, read-only view."""
        return self._links_view

    def run(self, until_ms: float | None = None) -> None:
        """Advance virtual time to ``until_ms`` (or until nothing is left to happen).

        Running to exhaustion also settles stalled jobs: a job that can never finish
        (blocked by a link that stays cut, or a node whose capacity stays 0) is lost.
        """
        if until_ms is None:
            self.env.run()
            for jr in list(self._live.values()):
                self._lose_job(jr)
        elif until_ms > self.env.now:
            self.env.run(until=until_ms)

    def _at(self, at_ms: float | None, fn, *args) -> None:
        now = self.env.now
        if at_ms is None or at_ms <= now:
            if at_ms is not None and at_ms < now - EPS_MS:
                raise SpecError("at_ms", f"{at_ms} is in the past (now {now})")
            fn(*args)
        else:
            ev = Timeout(self.env, at_ms - now)
            ev.callbacks.append(lambda _e: fn(*args))

    def _later(self, delay: float, fn, *args) -> None:
        if delay <= 0:
            fn(*args)
        else:
            ev = Timeout(self.env, delay)
            ev.callbacks.append(lambda _e: fn(*args))

    def _emit(self, event: dict) -> None:
        event["ts"] = self.env.now / 1000.0
        for listener in self.listeners:
            listener(event)

    # ------------------------------------------------------------ inputs
    def _node(self, name: str, field: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise SpecError(field, f"unknown node {name!r}") from None

    def _format(self, stage, ns: _Node):
        c = stage.compute
        key = (stage.constraints, c.cpu, c.mem_gb, ns.name)
        fmt = self._formats.get(key)
        if fmt is None:
            fmt = self.timing.exec_format(stage, ns.node) or False
            self._formats[key] = fmt
        return fmt

    def _template(self, job: Job) -> _Template:
        info = self._templates.get(id(job.stages))
        if info is None or info.refs is not job.stages:
            info = self._templates[id(job.stages)] = _Template(job)
        return info

    def submit(self, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None,
               at_ms: float | None = None, scale: float = 1.0, *, name: str | None = None,
               stage_failures: Mapping[str, float] | None = None,
               prestage: Iterable[str] | None = None) -> None:
        """Run ``job`` with ``placement`` (stage -> node) from ``at_ms`` (default: now).

        ``prestage``: stage ids whose inputs are also copied to their shadow node while the primary
        runs (see the module docstring); each needs a shadow other than its primary.

        ``scale`` multiplies every duration (the workload's per-job draw). ``name``
        overrides ``job.name`` (names must be unique within one engine).
        ``stage_failures`` {stage: fraction in [0, 1)}: the stage's first attempt fails
        after completing that fraction of its work, as if its node failed then (the node
        itself stays up); the predictor uses this to sample failures.
        """
        info = self._template(job)
        name = job.name if name is None else name
        if name in self._names:
            raise SpecError("job", f"duplicate job name {name!r} in one engine")
        if scale <= 0 or not math.isfinite(scale):
            raise SpecError("scale", "must be a finite number > 0")
        if not shadow and not stage_failures and not prestage and placement is self._checked[0] \
                and info is self._checked[1]:
            # the same placement object as last time (a simulation's forced placement): checked already
            self._names.add(name)
            self._submitted += 1
            if at_ms is None:
                self._start_job(job, info, name, placement, _EMPTY, scale, _EMPTY)
            else:
                self._at(at_ms, self._start_job, job, info, name, placement, _EMPTY, scale, _EMPTY)
            return
        for sid in info.ids:
            node = placement.get(sid)
            if node is None:
                raise SpecError(f"placement.{sid}", "stage has no node")
            ns = self._node(node, f"placement.{sid}")
            if not self._format(info.by_id[sid], ns):
                raise SpecError(f"placement.{sid}", f"stage {sid!r} cannot run on node {node!r}")
        shadow = dict(shadow or {})
        for sid, node in shadow.items():
            if sid not in info.by_id:
                raise SpecError(f"shadow.{sid}", "unknown stage id")
            ns = self._node(node, f"shadow.{sid}")
            if not self._format(info.by_id[sid], ns):
                raise SpecError(f"shadow.{sid}", f"stage {sid!r} cannot run on node {node!r}")
        staged = frozenset(prestage or ())
        for sid in sorted(staged):
            if sid not in info.by_id:
                raise SpecError(f"prestage.{sid}", "unknown stage id")
            if shadow.get(sid) in (None, placement[sid]):
                raise SpecError(f"prestage.{sid}", "pre-staging needs a shadow node other than the primary")
        self._names.add(name)
        self._checked = (placement, info)
        failures = dict(stage_failures or {})
        self._submitted += 1
        self._at(at_ms, self._start_job, job, info, name, placement, shadow, scale, failures, staged)

    def _start_job(self, job, info, name, placement, shadow, scale, failures, staged=frozenset()) -> None:
        now = self.env.now
        jr = _JobRun(job, name, placement, shadow, scale, now, info)
        jr.prestage = staged
        if self._noise_free:
            jr.noise = info.ones
        else:
            jr.noise = dict(zip(info.ids, self.timing.service_noise(self.rng, len(info.ids)).tolist()))
        jr.failures = failures
        self._live[name] = jr
        if self.listeners:
            self._emit({"kind": "job-submit", "job": name, "deadline_ms": job.deadline_ms,
                        "stage_cpu": {s.id: s.compute.cpu for s in info.stages}})
        for sid in info.roots:
            self._dispatch(jr, sid, placement[sid])

    # ------------------------------------------------------------ DAG
    def _dispatch(self, jr: _JobRun, sid: str, node: str) -> None:
        """All predecessors of ``sid`` ended: send its inputs to ``node`` (start when they arrive)."""
        if jr.lost:
            return
        ns = self._nodes[node]
        now = self.env.now
        if not ns.up:
            self._failover(jr, sid, ns)
            return
        cost = jr.info.cost.get((sid, node))
        if cost is None:
            stage = jr.info.by_id[sid]
            fmt = self._format(stage, ns)
            if not fmt:
                raise SpecError(f"placement.{sid}", f"stage {sid!r} cannot run on node {node!r}")
            cost = jr.info.cost[(sid, node)] = (
                fmt[0], self.timing.mean_service_ms(stage, ns.node, fmt[1]), float(stage.compute.cpu), stage)
        fmt_key, base_ms, cpu, stage = cost
        attempt = jr.attempts.get(sid, 0) + 1
        jr.attempts[sid] = attempt
        run = _Run(jr, sid, node, attempt, fmt_key, cpu, base_ms * jr.scale * jr.noise[sid], now)
        if attempt == 1 and sid in jr.failures:
            run.work *= jr.failures[sid]
            run.doomed = True
        jr.runs.add(run)
        job = jr.job
        inputs = [(p, jr.stage_node[p], jr.info.by_id[p].output_mb, False) for p in stage.after] if stage.after \
            else ([("", job.origin_zone, job.input_mb, True)] if job.origin_zone is not None else [])
        stage_it = attempt == 1 and sid in jr.prestage and node == jr.placement[sid]
        for _p, src, size, from_zone in inputs:
            if stage_it:
                self._prestage(jr, sid, src, size, from_zone)
            if src == node and not from_zone:
                continue
            staged = jr.staged.get((sid, src)) if node == jr.shadow.get(sid) else None
            if staged is not None and not (self._cuts and self._cut_between(src, node, staged[0], min(now, staged[1]))):
                # the copy made while the primary ran: wait for what is still in flight, send nothing
                run.pending += 1      # through the clock even when landed: all inputs register first
                ev = Timeout(self.env, max(0.0, staged[1] - now))
                ev.callbacks.append(partial(self._staged_arrived, run, src, size, from_zone, now))
            else:
                self._send(run, src, size, from_zone)
        if run.pending == 0:
            self._begin(run)
        else:
            ns.inbound.add(run)

    def _prestage(self, jr: _JobRun, sid: str, src: str, size_mb: float, from_zone: bool) -> None:
        """Copy one input of ``sid`` to its shadow now (while the primary gets and runs it): the copy
        takes a transfer time drawn like any other, is counted in ``prestaged_mb`` whether or not a
        failover uses it, and is lost if its link is cut before it lands (then a failover sends again)."""
        dst = jr.shadow[sid]
        if src == dst and not from_zone:
            return
        try:
            link = resolve_link(self.cluster, self._links, src, dst)
        except LinkCutError:      # cut now (or no link in the spec): no copy, a failover sends again
            return
        delay = 0.0 if link is None else float(self.timing.sample_transfer_ms(size_mb, link, self.rng, 1)[0])
        jr.staged[(sid, src)] = (self.env.now, self.env.now + delay)
        jr.prestaged_mb += size_mb

    def _send(self, run: _Run, src: str, size_mb: float, from_zone: bool) -> None:
        run.pending += 1
        self._transfer(run, src, size_mb, from_zone)

    def _transfer(self, run: _Run, src: str, size_mb: float, from_zone: bool) -> None:
        if run.dead:
            return
        try:   # src: the node a predecessor ran on, or (from_zone) the job's origin zone
            link = resolve_link(self.cluster, self._links, src, run.node)
        except LinkCutError as exc:
            if not exc.cut:
                raise      # the spec has no link there: a plan error, not a partition to wait out
            self._blocked.append((run, src, size_mb, from_zone))
            return
        # link None (same endpoint) still goes through the clock, so a run never starts
        # before all of its inputs have been registered
        t0 = self.env.now
        if link is None:
            ev = Timeout(self.env, 0.0)
            ev.callbacks.append(lambda _e: self._arrived(run, src, size_mb, from_zone, t0))
            return
        fixed, bulk = self.timing.sample_transfer_parts(size_mb, link, self.rng, 1)
        delay = float(fixed[0])

        def through() -> None:     # bulk phase done (shared with the link's other flows); then latency etc.
            ev = Timeout(self.env, delay)
            ev.callbacks.append(lambda _e: self._arrived(run, src, size_mb, from_zone, t0))
        if bulk > 0:
            self._shared(src, run.node, link).add(bulk, through)
        else:
            through()

    def _shared(self, src: str, dst: str, link: Link) -> SharedLink:
        """The bandwidth-sharing group of the directed link ``src -> dst`` as ``link`` is now."""
        key = (src, dst, link)
        sl = self._flows.get(key)
        if sl is None:
            if len(self._flows) > 4 * len(self._nodes) ** 2:   # drop idle groups (links that changed)
                self._flows = {k: v for k, v in self._flows.items() if v.n}
            sl = self._flows[key] = SharedLink(self.env, link)
        return sl

    def occupy_link(self, src: str, dst: str, bulk_ms: float, at_ms: float | None = None) -> None:
        """A transfer outside this engine's jobs (another job's, in flight in a snapshot) uses the
        directed link ``src -> dst`` for ``bulk_ms`` of bulk time alone, from ``at_ms`` (now by default)."""
        def start() -> None:
            try:
                link = resolve_link(self.cluster, self._links, src, dst)
            except LinkCutError:
                return
            if link is not None and bulk_ms > 0:
                self._shared(src, dst, link).add(bulk_ms, lambda: None)
        self._at(at_ms, start)

    def _arrived(self, run: _Run, src, size_mb, from_zone, t0: float) -> None:
        if run.dead:
            return
        now = self.env.now
        if self._cuts and now > t0 and self._cut_between(src, run.node, t0, now):
            self._transfer(run, src, size_mb, from_zone)   # connection broken: send again
            return
        run.pending -= 1
        if run.pending == 0:
            self._nodes[run.node].inbound.discard(run)
            self._begin(run)

    def _staged_arrived(self, run: _Run, src: str, size_mb: float, from_zone: bool, t0: float, _ev: object) -> None:
        self._arrived(run, src, size_mb, from_zone, t0)

    def _cut_between(self, src: str, dst: str, t0: float, t1: float) -> bool:
        keys = link_keys(self.cluster, src, dst)
        for t, key in reversed(self._cuts):
            if t <= t0:
                break
            if t <= t1 and key in keys:
                return True
        return False

    def _begin(self, run: _Run) -> None:
        """Inputs are in: the stage joins its node's processor-sharing set."""
        ns = self._nodes[run.node]
        now = self.env.now
        run.start_ms = now
        jr = run.jr
        if jr.start_ms != jr.start_ms:  # NaN: first stage to start
            jr.start_ms = now
        if self.listeners:
            self._emit({"kind": "stage-start", "job": jr.name, "stage": run.sid, "node": run.node})
        startup = self.timing.stage_delay(run.fmt) if (self.timing.startup_ms or self.timing.dispatch_ms) else 0.0
        if startup > 0:      # process/runtime start-up: a delay outside PS; a node failure meanwhile loses it
            ns.inbound.add(run)
            self._later(startup, self._started, run)
            return
        ns.add(run, now)

    def _started(self, run: _Run) -> None:
        """Start-up over: the run joins its node's processor-sharing set (unless its node died meanwhile)."""
        if run.dead:
            return
        ns = self._nodes[run.node]
        ns.inbound.discard(run)
        ns.add(run, self.env.now)

    def _finish(self, run: _Run) -> None:
        """A run's work is done (called by the PS bookkeeping)."""
        jr = run.jr
        jr.runs.discard(run)
        now = self.env.now
        if run.doomed:
            run.dead = True
            jr.extra_work += run.work
            self._record_stage(run, now, "failed")
            if self.listeners:
                self._emit({"kind": "stage-end", "job": jr.name, "stage": run.sid, "node": run.node, "ok": False})
            self._failover(jr, run.sid, self._nodes[run.node], failed_at=now)
            return
        if self.record_stages:
            self._record_stage(run, now, "ok")
        if self.listeners:
            self._emit({"kind": "stage-end", "job": jr.name, "stage": run.sid, "node": run.node, "ok": True})
        sid = run.sid
        jr.stage_node[sid] = run.node
        if run.node not in jr.nodes_used:
            jr.nodes_used.append(run.node)
        jr.left -= 1
        if jr.left == 0:
            jr.end_ms = now
            del self._live[jr.name]
            self._done.append(jr)
            jr.waiting = jr.stage_node = jr.attempts = jr.noise = None
            jr.staged = {}
            return
        waiting = jr.waiting
        for nxt in jr.info.succ[sid]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                self._dispatch(jr, nxt, jr.placement[nxt])

    def _record_stage(self, run: _Run, end_ms: float, outcome: str) -> None:
        if self.record_stages:
            self._stage_rows.append((run.jr.name, run.sid, run.node, run.fmt, run.ready_ms, run.start_ms,
                                     end_ms, run.attempt, outcome, run.cpu, run.work))

    # ------------------------------------------------------------ failures
    def _failover(self, jr: _JobRun, sid: str, ns: _Node, failed_at: float | None = None) -> None:
        """Stage ``sid`` lost its node ``ns``: act once the loss is detected."""
        if jr.lost:
            return
        down_at = ns.down_at if failed_at is None else failed_at
        detect_at = down_at + self._detect
        self._later(detect_at - self.env.now, self._redirect, jr, sid, ns.name)

    def _redirect(self, jr: _JobRun, sid: str, failed: str) -> None:
        if jr.lost:
            return
        target = jr.shadow.get(sid)
        if target is not None and target != failed and self._nodes[target].up:
            jr.failed_over += 1
            self._dispatch(jr, sid, target)
        elif self.replan is not None:
            self._later(self._replan_ms, self._replanned, jr, sid, failed)
        else:
            self._wait_for(jr, sid, failed)

    def _replanned(self, jr: _JobRun, sid: str, failed: str) -> None:
        if jr.lost:
            return
        target = self.replan(jr.job, sid, failed)
        if target is not None:
            ns = self._node(target, "replan")
            if ns.up:
                if target != failed:
                    jr.failed_over += 1
                self._dispatch(jr, sid, target)
                return
        self._wait_for(jr, sid, failed)

    def _wait_for(self, jr: _JobRun, sid: str, name: str) -> None:
        ns = self._nodes[name]
        if ns.up:
            self._dispatch(jr, sid, name)
        elif ns.permanent:
            self._lose_job(jr)
        else:
            ns.waiters.append((jr, sid))

    def _lose_job(self, jr: _JobRun) -> None:
        if jr.lost:
            return
        jr.lost = True
        now = self.env.now
        for run in list(jr.runs):
            run.dead = True
            ns = self._nodes[run.node]
            if run in ns.inbound:
                ns.inbound.discard(run)
            elif run.running:
                ns.remove(run, now)
                self._record_stage(run, now, "cancelled")
        jr.runs.clear()
        del self._live[jr.name]
        self._done.append(jr)
        jr.waiting = jr.stage_node = jr.attempts = jr.noise = None
        jr.staged = {}

    def fail_node(self, name: str, at_ms: float | None = None, duration_ms: float | None = None) -> None:
        """Fail-stop ``name`` at ``at_ms`` for ``duration_ms`` (None: it never comes back)."""
        ns = self._node(name, "node")
        if duration_ms is not None and duration_ms < 0:
            raise SpecError("duration_ms", "must be >= 0")
        self._at(at_ms, self._down, ns, duration_ms)

    def _down(self, ns: _Node, duration_ms: float | None) -> None:
        now = self.env.now
        if not ns.up:
            return
        ns.advance(now)
        ns.up = False
        ns.down_at = now
        ns.permanent = duration_ms is None
        lost: list[_Run] = []
        for run in ns.running():
            run.running = False
            run.dead = True
            run.jr.extra_work += run.work - max(run.remaining, 0.0)
            self._record_stage(run, now, "failed")
            lost.append(run)
        # sorted: set order follows object ids, which would make failover order (and draws) vary per run
        for run in sorted(ns.inbound, key=lambda r: (r.ready_ms, r.jr.name, r.sid)):
            run.dead = True
            self._record_stage(run, now, "lost")
            lost.append(run)
        ns.clear()
        ns.inbound = _OrderedSet()
        if self.listeners:
            self._emit({"kind": "node-down", "node": ns.name})
            for run in lost:
                if run.start_ms == run.start_ms:
                    self._emit({"kind": "stage-end", "job": run.jr.name, "stage": run.sid,
                                "node": ns.name, "ok": False})
        for run in lost:
            run.jr.runs.discard(run)
            self._failover(run.jr, run.sid, ns)
        if duration_ms is not None:
            self._later(duration_ms, self._up, ns)

    def _up(self, ns: _Node) -> None:
        if ns.up:
            return
        ns.up = True
        ns.permanent = False
        ns.last_t = self.env.now
        if self.listeners:
            self._emit({"kind": "node-up", "node": ns.name})
        waiters, ns.waiters = ns.waiters, []
        for jr, sid in waiters:
            self._dispatch(jr, sid, ns.name)

    def kill_stage(self, job: str, stage: str | None = None, at_ms: float | None = None) -> None:
        """Pod-kill (chaos): at ``at_ms`` the live attempts of ``stage`` (None: every stage) of the job
        named ``job`` -- or of every job made from the template ``job`` (names ``<job>-<i>``) -- die
        and restart at once on the same node (the pod's controller recreates it); the work done is
        wasted (``extra_work``). Added for dtlab.chaos (pod-kill on the sim substrate)."""
        self._at(at_ms, self._kill, job, stage)

    def _kill(self, job: str, stage: str | None) -> None:
        now = self.env.now
        for name, jr in list(self._live.items()):
            if name != job and not (name.startswith(job + "-") and name[len(job) + 1:].isdigit()):
                continue
            for run in [r for r in jr.runs if stage is None or r.sid == stage]:
                ns = self._nodes[run.node]
                run.dead = True
                jr.runs.discard(run)
                if run in ns.inbound:
                    ns.inbound.discard(run)
                    self._record_stage(run, now, "killed")
                    if self.listeners and run.start_ms == run.start_ms:     # killed during its start-up
                        self._emit({"kind": "stage-end", "job": name, "stage": run.sid, "node": run.node,
                                    "ok": False})
                elif run.running:
                    ns.remove(run, now)
                    jr.extra_work += run.work - max(run.remaining, 0.0)
                    self._record_stage(run, now, "killed")
                    if self.listeners:
                        self._emit({"kind": "stage-end", "job": name, "stage": run.sid, "node": run.node,
                                    "ok": False})
                else:
                    continue
                self._dispatch(jr, run.sid, run.node)

    # ------------------------------------------------------------ links and load
    def set_link(self, a: str, b: str, link: Link | None, at_ms: float | None = None) -> None:
        """Replace the link between zones/nodes ``a`` and ``b`` (None cuts it) from ``at_ms``."""
        known = set(self.cluster.zones) | set(self._nodes)
        for key, value in (("a", a), ("b", b)):
            if value not in known:
                raise SpecError(key, f"{value!r} is neither a zone nor a node")
        self._at(at_ms, self._set_link, a, b, link)

    def reset_link(self, a: str, b: str, at_ms: float | None = None) -> None:
        """Back to the spec's link between ``a`` and ``b``."""
        self._at(at_ms, self._set_link, a, b, "reset")

    def _set_link(self, a: str, b: str, link) -> None:
        now = self.env.now
        if link == "reset":
            self._links.pop((a, b), None)
            self._links.pop((b, a), None)
            event = {"kind": "link-reset", "a": a, "b": b}
        elif link is None:
            self._links[(a, b)] = self._links[(b, a)] = None
            self._cuts.append((now, (a, b)))
            self._cuts.append((now, (b, a)))
            event = {"kind": "link", "a": a, "b": b, "up": False}
        else:
            self._links[(a, b)] = link
            if not link.directed:
                self._links[(b, a)] = Link(b, a, link.latency_ms, link.bandwidth_mbps, link.loss,
                                           link.jitter_ms, False)
            event = {"kind": "link", "a": a, "b": b, "latency_ms": link.latency_ms,
                     "bandwidth_mbps": link.bandwidth_mbps, "loss": link.loss, "jitter_ms": link.jitter_ms}
        if self.listeners:
            self._emit(event)
        if link is not None and self._blocked:
            blocked, self._blocked = self._blocked, []
            for run, src, size_mb, from_zone in blocked:
                self._transfer(run, src, size_mb, from_zone)

    def set_background(self, node: str, util: float, at_ms: float | None = None) -> None:
        """Background utilisation of ``node`` (share of its cores busy with others' work) from ``at_ms``."""
        ns = self._node(node, "node")
        util = _check_util(util, "util")
        self._at(at_ms, self._set_bg, ns, util)

    def _set_bg(self, ns: _Node, util: float) -> None:
        now = self.env.now
        ns.advance(now)
        ns.bg = util
        ns.capacity = ns.cores * (1.0 - util)
        if self.listeners:
            self._emit({"kind": "telemetry", "node": ns.name, "cpu_util": util})
        if ns.count:
            ns.schedule(now)

    def node_running_cpu(self) -> dict[str, float]:
        """Cores claimed by stages running on each node right now (for planners)."""
        return {name: ns.claimed for name, ns in self._nodes.items()}

    def node_view(self, name: str) -> tuple[bool, float, float]:
        """(up, background util, running cpu) of one node, cheaply (for simulate's planner view)."""
        ns = self._nodes[name]
        return ns.up, ns.bg, ns.claimed

    # ------------------------------------------------------------ results
    def job_records(self) -> list[dict]:
        """One dict per finished (completed or lost) job, in finishing order."""
        cols = self.job_columns()
        keys = list(cols)
        return [dict(zip(keys, row)) for row in zip(*cols.values())]

    def job_columns(self) -> dict[str, list]:
        """The job records as columns (cheap to turn into a DataFrame)."""
        done = self._done
        nan = math.nan
        arrival = [jr.arrival_ms for jr in done]
        start = [jr.start_ms for jr in done]
        end = [nan if jr.lost else jr.end_ms for jr in done]
        latency = [e - a for a, e in zip(arrival, end)]
        deadline = [nan if jr.job.deadline_ms is None else float(jr.job.deadline_ms) for jr in done]
        missed = [jr.lost or (lat > dl) for jr, lat, dl in zip(done, latency, deadline)]
        joined: dict[tuple, str] = {}
        nodes = []
        for jr in done:
            key = tuple(jr.nodes_used)
            s = joined.get(key)
            if s is None:
                s = joined[key] = ",".join(key)
            nodes.append(s)
        return {
            "job": [jr.name for jr in done],
            "arrival_ms": arrival,
            "start_ms": start,
            "end_ms": end,
            "latency_ms": latency,
            "wait_ms": [s - a for a, s in zip(arrival, start)],
            "deadline_ms": deadline,
            "missed": missed,
            "nodes": nodes,
            "failed_over": [jr.failed_over for jr in done],
            "lost": [jr.lost for jr in done],
            "extra_work_ms": [jr.extra_work for jr in done],
            "prestaged_mb": [jr.prestaged_mb for jr in done],
        }

    def stage_records(self) -> list[dict]:
        """One dict per stage attempt that ended (ok, failed, lost in transit, cancelled).

        ``ready_ms``: dispatched (predecessors ended, inputs start travelling);
        ``start_ms``: inputs arrived, execution began (NaN if it never did);
        ``service_ms``: the attempt's work in ms at full allocation of its ``cpu`` cores.
        """
        keys = ("job", "stage", "node", "format", "ready_ms", "start_ms", "end_ms", "attempt", "outcome",
                "cpu", "service_ms")
        return [dict(zip(keys, row)) for row in self._stage_rows]

    def latency_ms(self, name: str) -> float:
        """End-to-end latency (ms) of the finished job ``name`` (inf when it was lost); SpecError if not finished."""
        for jr in self._done:
            if jr.name == name:
                return math.inf if jr.lost else jr.end_ms - jr.arrival_ms
        raise SpecError("job", f"job {name!r} has not finished")

    def counts(self) -> dict[str, int]:
        """submitted / completed / lost / in flight job counts (conservation check)."""
        lost = sum(1 for jr in self._done if jr.lost)
        return {"submitted": self._submitted, "completed": len(self._done) - lost, "lost": lost,
                "in_flight": len(self._live)}

    def capacity_overshoot(self) -> dict[str, float]:
        """Per node, the largest (allocated cores - capacity) the PS bookkeeping ever produced."""
        return {name: ns.peak for name, ns in self._nodes.items()}


def _check_util(util, field: str) -> float:
    if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 <= util <= 1:
        raise SpecError(field, f"must be a utilisation in [0, 1], got {util!r}")
    return float(util)
