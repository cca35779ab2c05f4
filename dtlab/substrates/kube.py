"""The ``kube`` substrate: jobs run as pods on a real API server (the local KWOK plane or any cluster).

Behind the substrate protocol (:mod:`dtlab.substrates.base`), so V1/V4/V5 run on it with
``substrate: kube`` in params. Options (``substrate_opts``): ``kubeconfig`` (else the local
plane ``plane``, started from the Cluster when none runs and ``start_plane`` allows it;
then it is stopped again by ``close``), ``namespace`` (dtlab), ``time_scale`` (wall seconds per
substrate second: 0.2 runs five times faster than the twin's clock; pods run ``time_scale`` times
their predicted time and the substrate clock, events and results are divided back, so every
number stays in the twin's milliseconds; Kubernetes' own delays - KWOK's 1-2 s node-not-ready,
watch latency - are not scaled), ``noise`` (seeded LogNormal service
noise on top of the predicted time, so the observed world is not the twin's mean),
``pinning`` (nodeName | affinity, see :mod:`dtlab.kube.actuator`), ``dry_run``,
``max_attempts`` per stage, ``drain_limit_s``, ``real_nodes`` ("all" or a list of node names: when
this substrate starts its own plane, those nodes run real kubelets, :mod:`dtlab.kube.realnodes`),
``node_grace_s`` (that plane's node-monitor grace period), ``shape_links`` (default true: between
real nodes of the local plane, stage data moves over the shaped pod network, see below).

* **Clock**: wall time since the substrate was made, divided by ``time_scale``; ``advance`` sleeps/polls.
* **DAG order**: a stage's pod is created when all its predecessors' pods Succeeded
  (observed by :class:`dtlab.kube.observer.Observer`, not assumed). The pod's run time
  (the KWOK completion-delay annotation) is the stage's predicted service time on its
  node in its format (:class:`dtlab.timing.TimingModel`) times the seeded noise, plus
  the predicted transfer time of its inputs from predecessors on other nodes, times
  ``time_scale``. On a real cluster the annotation is inert and the worker image runs.
* **Failures**: a node that the observer sees NotReady (or a pod that failed/was evicted
  there) moves the node's unfinished stages to the plan's shadow node at once (the old pod
  is deleted with grace 0, a new attempt is created: ``<job>-<stage>-<attempt>``); a pod
  deleted while its node is fine (pod-kill) is retried on the same node. After
  ``max_attempts`` the stage, and its job, fail.
* **Real nodes** (``dtlab.io/node-kind=real``, ``dtlab cluster up --real-nodes``): the pod runs the
  stage's real work in the worker image (:func:`dtlab.kube.actuator.pod_spec_for`), and the stage's
  start/end are the worker's own ns timestamps from its termination message, so observed stage and
  job latencies there are measured, not annotated. Stage rows carry ``node_kind`` (real | kwok),
  ``observed_ms`` (worker end - start on real nodes; the annotated delay as observed on KWOK),
  ``uname_m`` and ``exec`` (what the worker saw inside its container) and ``startup_ms`` (pod
  create -> worker start: sandbox, image and runtime start-up, reported apart). ``time_scale``
  must stay 1 with real nodes (their work is not scaled).
* **Links between real nodes** (:mod:`dtlab.kube.links`): a stage on a real node whose predecessor
  ran on another real node of the local plane first reads the predecessor's ``output_mb`` over the
  pod network, inside its container, through the cluster's link between the two nodes (htb + the
  fabric's relay, or netem); ``transfer_ms`` (and ``fetch_mb``) on the stage row is that read as the
  worker timed it, inside ``observed_ms``. A root stage there first reads its job's ``input_mb``
  from the job's origin zone the same way, through the zone -> node link. Partitions and link degradations change this shaping
  while they last (and still reach the twin as link events).
* **inject**: node-failure -> on a real node, SIGKILL its kubelet (restarted after ``duration_s``);
  partition / link-degradation -> the links between real nodes are re-shaped for the fault's window;
  on KWOK the node-not-ready label (``localplane.set_node_failed``
  does the same for the local plane) and removed after ``duration_s``; pod-kill -> delete
  the job's (stage's) pods with grace 0; partition / link-degradation -> the twin's link
  events only (a KWOK plane has no data path; the netem DaemonSet in cluster/manifests
  realises them on real nodes). The twin learns node-down/up from the observer, as it
  would of a real failure; the ``chaos`` notifications come from ``to_state_events``.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..energy import cpu_ms_of_attempts
from ..errors import DtlabError, SpecError, SubstrateUnavailable
from ..model import Cluster, Job, spec_link
from ..plan import Plan
from ..timing import TimingModel
from . import register
from .base import JOB_COLUMNS, STAGE_COLUMNS, WallClockSubstrate

KUBE_DEFAULTS: dict[str, Any] = {
    "kubeconfig": None, "plane": "default", "start_plane": True, "namespace": "dtlab", "time_scale": 1.0,
    "noise": True, "pinning": "nodeName", "dry_run": False, "max_attempts": 3, "drain_limit_s": 600.0,
    "poll_s": 0.05, "keep_pods": False, "image": None, "real_nodes": None, "node_grace_s": None,
    # exclusive: this cluster's nodes really execute work on this host (real kubelets): take the host
    # lock (dtlab/hostlock.py) for the substrate's life and record host noise (dtlab/hostnoise.py)
    "exclusive": False, "lock_timeout_s": None, "shape_links": True,
}
_NODE_FAIL_REASONS = {"Evicted", "NodeLost", "TaintManagerEviction", "DeletionByTaintManager", "NodeAffinity",
                      "OutOfcpu", "OutOfmemory", "Terminated"}


def kube_options(opts: Mapping[str, Any] | None) -> dict[str, Any]:
    """KUBE_DEFAULTS overlaid with ``opts``; unknown keys and bad values are SpecErrors naming the key."""
    opts = dict(opts or {})
    unknown = sorted(set(opts) - set(KUBE_DEFAULTS))
    if unknown:
        raise SpecError(f"substrate_opts.{unknown[0]}", f"unknown kube option (known: {sorted(KUBE_DEFAULTS)})")
    out = {**KUBE_DEFAULTS, **opts}
    for k in ("time_scale", "drain_limit_s", "poll_s"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise SpecError(f"substrate_opts.{k}", f"must be a number > 0, got {v!r}")
    if isinstance(out["max_attempts"], bool) or not isinstance(out["max_attempts"], int) or out["max_attempts"] < 1:
        raise SpecError("substrate_opts.max_attempts", "must be an integer >= 1")
    rn = out["real_nodes"]
    if rn is not None and rn != "all" and not (isinstance(rn, list) and all(isinstance(x, str) for x in rn)):
        raise SpecError("substrate_opts.real_nodes", f"must be 'all' or a list of node names, got {rn!r}")
    g = out["node_grace_s"]
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not 1 <= g <= 3600):
        raise SpecError("substrate_opts.node_grace_s", f"must be a number of seconds in [1, 3600], got {g!r}")
    if out["pinning"] not in ("nodeName", "affinity"):
        raise SpecError("substrate_opts.pinning", "must be 'nodeName' or 'affinity'")
    return out


class KubeSubstrate(WallClockSubstrate):
    """Jobs as pods on a Kubernetes API server, observed through list+watch."""

    name = "kube"

    def __init__(self, cluster: Cluster, seed: int = 0, timing: TimingModel | None = None, *,
                 actuator: Any = None, observer_factory: Any = None, **opts: Any):
        """``actuator`` / ``observer_factory(sink, known_nodes, clock)``: injected in unit tests (fakes);
        by default both are built on the kubeconfig."""
        from ..kube import localplane
        from ..kube.actuator import DEFAULT_IMAGE, Actuator
        from ..kube.observer import Observer

        self.opts = kube_options(opts)
        self._hold = self._noise = None
        self.noise: dict[str, Any] | None = None
        if self.opts["exclusive"]:
            import resource
            import sys

            from .. import hostlock, hostnoise
            self._hold = hostlock.acquire(f"kube substrate (pid {os.getpid()})", self.opts["lock_timeout_s"],
                                          on_wait=lambda msg: print(msg, file=sys.stderr, flush=True))
            self._rusage0 = resource.getrusage(resource.RUSAGE_SELF)
            plane0 = hostnoise.pids_cpu_s(self._plane_pids())
            self._noise = hostnoise.NoiseMonitor(parts=lambda: self._cpu_parts(plane0))
        self._cluster = cluster
        self.seed = int(seed)
        self.timing = timing or TimingModel()
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x6B75]))
        self._lock = threading.RLock()
        self._events: list[dict[str, Any]] = []
        self._jobs: dict[str, dict[str, Any]] = {}
        self._stages: list[dict[str, Any]] = []          # one record per attempt
        self._by_pod: dict[str, dict[str, Any]] = {}      # pod name -> attempt record
        self._down: set[str] = set()
        self._failed_nodes: set[str] = set()              # nodes this substrate marked failed (restored by close)
        self._timers: list[threading.Timer] = []
        self._errors: list[str] = []
        self._owns_plane = False
        self._real: dict[str, float] = {}
        self.host_slowdown: float | None = None     # see _shared_host_slowdown
        self.emulation: dict[str, dict[str, Any]] = {}     # real node -> {factor, source}: set_emulation
        self._speed_adds: list[dict[str, Any]] = []        # the node-add events of _speed_events
        self.links = None
        self.observer = None
        try:
            kc = self.opts["kubeconfig"] or (None if actuator is not None else localplane.kubeconfig(self.opts["plane"]))
            if kc is None and actuator is None:
                if not self.opts["start_plane"]:
                    raise SubstrateUnavailable(f"no kubeconfig given and local plane {self.opts['plane']!r} is not "
                                               "running (`dtlab cluster up`)")
                localplane.up(cluster, name=self.opts["plane"], timeout=240, real_nodes=self.opts["real_nodes"],
                              node_grace_s=self.opts["node_grace_s"])
                self._owns_plane = True
                kc = localplane.kubeconfig(self.opts["plane"])
        except BaseException:
            if self._hold is not None:
                from .. import hostlock
                self._noise and self._noise.finish()
                hostlock.release(self._hold)
                self._hold = None
            raise
        self.kubeconfig = kc
        try:
            self.actuator = actuator or Actuator(kc, namespace=self.opts["namespace"], dry_run=self.opts["dry_run"],
                                                 pinning=self.opts["pinning"], seed=self.seed)
            self.image = self.opts["image"] or DEFAULT_IMAGE
            self.actuator.ensure_namespace()
            listed = self.actuator.list_nodes()
            present = {n.metadata.name for n in listed}
            self._real = real_nodes_of(listed)
            if self._real and self._noise is None:
                # real kubelets run the work on this host: a wall-clock run, so record its host noise
                # (issue 14) even when the substrate was not asked to take the lock itself (`dtlab run`
                # takes it for params with real_nodes, dtlab.hostlock.wall_clock)
                import resource

                from .. import hostnoise
                self._rusage0 = resource.getrusage(resource.RUSAGE_SELF)
                plane_start = hostnoise.pids_cpu_s(self._plane_pids())
                self._noise = hostnoise.NoiseMonitor(parts=lambda: self._cpu_parts(plane_start))
            if self._real and self.opts["time_scale"] != 1.0:
                raise SpecError("substrate_opts.time_scale", "must be 1 on a cluster with real nodes "
                                f"({sorted(self._real)}): their work runs in real time")
            missing = [n.name for n in cluster.nodes if n.name not in present]
            if missing:
                raise SpecError("cluster.nodes", f"nodes not in the Kubernetes cluster: {missing}")
            if kc is not None and any("wasm" in n.formats for n in cluster.nodes):
                _ensure_runtime_class(self.actuator)
            self.links = self._open_links(kc)
            self._t0 = time.time()
            self.host_slowdown = self._shared_host_slowdown(cluster)
            self._speed_events()
            factory = observer_factory or (lambda sink, known_nodes, clock: Observer(
                kc, sink=sink, namespace=self.opts["namespace"], known_nodes=known_nodes, clock=clock))
            self.observer = factory(self._on_events, [n.name for n in cluster.nodes],
                                    lambda epoch: (epoch - self._t0) / self.opts["time_scale"]).start()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ protocol
    def cluster(self) -> Cluster:
        return self._cluster

    def now_ms(self) -> float:
        return (time.time() - self._t0) * 1000.0 / self.opts["time_scale"]

    def ts_of_epoch(self, epoch_s: float) -> float:
        """Wall-clock epoch seconds -> this substrate's clock (seconds since start), for telemetry."""
        return max(0.0, (epoch_s - self._t0) / self.opts["time_scale"])

    @property
    def prometheus_url(self) -> str | None:
        """The Prometheus of the local plane's real nodes (``dtlab cluster up --telemetry prometheus``),
        when this substrate runs on that plane; None otherwise (``--prometheus auto`` then refuses)."""
        from ..kube import localplane
        st = localplane.load_state(self.opts["plane"]) or {}
        if not st or self.kubeconfig != st.get("kubeconfig"):
            return None
        return (st.get("telemetry") or {}).get("prometheus_url")

    def submit(self, plan: Plan, job: Job) -> None:
        self._check_open()
        if job.name in self._jobs:
            raise SpecError("job", f"job {job.name!r} was already submitted")
        for s in job.stages:
            node = plan.placement.get(s.id)
            if node is None:
                raise SpecError(f"placement.{s.id}", "stage has no node in the plan")
            if node not in self._cluster.by_name:
                raise SpecError(f"placement.{s.id}", f"unknown node {node!r}")
        now = self.now_ms()
        noise = self.timing.service_noise(self._rng, len(job.stages)) if self.opts["noise"] \
            else np.ones(len(job.stages))
        rec = {"job": job.name, "arrival_ms": now, "start_ms": None, "end_ms": None,
               "deadline_ms": job.deadline_ms, "ok": None, "nodes": sorted(set(plan.placement.values())),
               "failed_over": 0}
        state = {"job": job, "plan": plan, "rec": rec, "noise": dict(zip([s.id for s in job.stages], noise)),
                 "stages": {s.id: {"phase": "waiting", "attempt": -1, "node": None, "tried": []}
                            for s in job.stages}}
        with self._lock:
            self._jobs[job.name] = state
            self._events.append({"kind": "job-submit", "job": job.name, "ts": now / 1000.0,
                                 "deadline_ms": job.deadline_ms,
                                 "stage_cpu": {s.id: s.compute.cpu for s in job.stages}})
            actions = [a for s in job.stages if not s.after for a in self._launch(state, s.id)]
        self._run(actions)

    def advance(self, until_ms: float | None) -> None:
        """Wait in wall time until ``until_ms`` (None: until every submitted job ended, at most drain_limit_s)."""
        self._check_open()
        if until_ms is None:
            deadline = time.monotonic() + self.opts["drain_limit_s"]
            while not self.all_done() and time.monotonic() < deadline:
                time.sleep(self.opts["poll_s"])
            return
        while self.now_ms() < until_ms:
            time.sleep(min(self.opts["poll_s"],
                           max(0.0, (until_ms - self.now_ms()) / 1000.0 * self.opts["time_scale"])))

    def _open_links(self, kc: str | None):
        """The shaped pod-network links between this cluster's real nodes of the local plane (or None:
        fewer than two of them, ``shape_links`` off, or a cluster that is not the local plane)."""
        if not self.opts["shape_links"] or len(self._real) < 2 or kc is None:
            return None
        from ..kube import links, localplane
        if kc != localplane.kubeconfig(self.opts["plane"]):
            return None
        nets = links.node_nets((localplane.load_state(self.opts["plane"]) or {}).get("real_nodes", []),
                               [n for n in self._real if n in self._cluster.by_name])
        if len(nets) < 2:
            return None
        try:
            return links.PodLinks(nets, self._cluster, seed=self.seed)
        except DtlabError as exc:   # e.g. another process on this plane holds the data path: run unshaped, say so
            import warnings
            self._links_unavailable = f"links between real nodes not shaped: {exc}"
            self._errors.append(self._links_unavailable)
            warnings.warn(self._links_unavailable, RuntimeWarning, stacklevel=2)
            return None

    def _fetch_args(self, st: dict[str, Any], sid: str, node: str) -> tuple[str, ...]:
        """``--fetch`` values of stage ``sid`` on real node ``node``: each predecessor's output from the
        real node it ran on (same node: nothing to move); a root stage's job input from the job's
        origin zone (over the zone -> node link, as the twin counts it).

        A predecessor that ran on a KWOK node produced no bytes (no container ran there): the worker
        fetches the predecessor's ``output_mb`` of synthetic data from that KWOK node's *zone* source
        over the zone -> ``node`` link (the one the twin charges between the two nodes: the zones' link,
        or the intra-zone default in one zone), so the transfer is measured and charged as on a real
        predecessor; only the store it comes from is a stand-in."""
        if self.links is None or node not in self.links.nodes:
            return ()
        out = []
        for src, mb, is_zone in self._inputs(st, sid):
            if src == node:
                continue
            arg = self.links.input_fetch_arg(src, node, mb) if is_zone else self.links.fetch_arg(src, node, mb)
            if arg:
                out.append(arg)
        return tuple(out)

    def _fetch_args_any(self, st: dict[str, Any], sid: str) -> tuple[str, ...]:
        """``--fetch`` values of a stage the real kube-scheduler places (its node is unknown now): the same
        inputs as :meth:`_fetch_args`, each from its source's any-node endpoint, which works out the node
        from the pod's address at fetch time (:meth:`dtlab.kube.links.PodLinks.fetch_arg_any`)."""
        if self.links is None:
            return ()
        args = (self.links.fetch_arg_any(src, mb) for src, mb, _ in self._inputs(st, sid))
        return tuple(a for a in args if a)

    def _inputs(self, st: dict[str, Any], sid: str) -> list[tuple[str, float, bool]]:
        """(source, MB, source is a zone) of what stage ``sid`` reads: the job's input from its origin zone
        (root stage); each predecessor's output from the real node it ran on, or, after a KWOK stage
        (no bytes exist), from that node's zone source."""
        job: Job = st["job"]
        out: list[tuple[str, float, bool]] = []
        stage = job.stages[job.stage_index[sid]]
        if not stage.after and job.origin_zone is not None:
            out.append((job.origin_zone, job.input_mb, True))
        for p in stage.after:
            src = st["stages"][p]["node"]
            prev = job.stages[job.stage_index[p]]
            if not src or prev.output_mb <= 0 or self.links is None:
                continue
            if src in self.links.nodes:
                out.append((src, prev.output_mb, False))
            elif src not in self._real and src in self._cluster.by_name:     # a KWOK predecessor
                out.append((self._cluster.node(src).zone, prev.output_mb, True))
        return out

    def _set_links(self, ev: Any, start: bool) -> None:
        from ..chaos.spec import fault_links
        if self.links is None or self._closed_links:
            return
        for a, b, link in fault_links(self._cluster, ev, start):
            try:
                self.links.set_link(a, b, link)
            except DtlabError as exc:
                self._errors.append(f"shape {a}->{b}: {exc}")

    _closed_links = False

    def inject(self, fault: Mapping[str, Any]) -> None:
        """Realise a FaultScenario fault at ``at_s`` seconds of the substrate clock (clamped to now)."""
        # node-down/up come from the observer, when they really happen
        ev = self._timed_fault(fault, observed=("node-down", "node-up"))
        if ev.kind in ("partition", "link-degradation") and self.links is not None:
            self._at(ev.start_s, lambda: self._set_links(ev, True))
            if ev.duration_s is not None:
                self._at(ev.end_s, lambda: self._set_links(ev, False))
        if ev.kind == "node-failure":
            self._at(ev.start_s, lambda: [self._fail_node(n, True) for n in ev.nodes])
            if ev.duration_s is not None:
                self._at(ev.end_s, lambda: [self._fail_node(n, False) for n in ev.nodes])
        elif ev.kind == "pod-kill":
            self._at(ev.start_s, lambda: self.kill(ev.job, ev.stage))

    def results(self) -> dict[str, pd.DataFrame]:
        with self._lock:
            jobs = pd.DataFrame([dict(s["rec"]) for s in self._jobs.values()], columns=[*JOB_COLUMNS, "failed_over"])
            stages = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in self._stages])
        with self._lock:
            kinds = {name: sorted({self._stages_kind(r) for r in self._stages if r["job"] == name})
                     for name in self._jobs}
        jobs["node_kind"] = [(k[0] if len(k) == 1 else "mixed") if k else None
                             for k in (kinds.get(j, []) for j in jobs["job"])]
        if len(jobs):
            jobs["latency_ms"] = jobs["end_ms"] - jobs["arrival_ms"]
            jobs["missed"] = [bool(d) and (lat != lat or lat > d) or ok is False
                              for d, lat, ok in zip(jobs["deadline_ms"], jobs["latency_ms"], jobs["ok"])]
        if len(stages):
            stages["duration_ms"] = stages["end_ms"] - stages["start_ms"]
            # KWOK runs no code: the "CPU time" behind energy_proxy_j is the planned service time x cpu;
            # a real node's worker measured its kernel's CPU clock: that, as node-equivalent ms
            stages["cpu_ms"], stages["cpu_source"] = self._cpu_ms(stages)
        for c in STAGE_COLUMNS:
            if c not in stages.columns:
                stages[c] = pd.Series(dtype=object)
        stages = stages[list(STAGE_COLUMNS) + [c for c in stages.columns if c not in STAGE_COLUMNS]]
        return {"jobs": jobs, "stages": stages}

    def _cpu_ms(self, stages: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """CPU time (node-equivalent ms) per stage attempt behind ``energy_proxy_j``, and where it came from.

        ``planned``: cpu x the planned service time (KWOK, or a real worker that reported no CPU clock).
        ``measured``: the real worker's kernel CPU clock, divided by the node's cpu scale x speed as the
        fabric does (the pod runs ``duration x scale`` reference ms of work capped at ``speed x scale``
        CPUs), so it is the stage's CPU time on the node it stands for."""
        cpu = cpu_ms_of_attempts(stages, work_col="planned_ms")
        source = pd.Series("planned", index=stages.index, dtype=object)
        if "kernel_cpu_ms" not in stages.columns:
            return cpu, source
        for i, node, k in zip(stages.index, stages["node"], pd.to_numeric(stages["kernel_cpu_ms"], errors="coerce")):
            scale = self._real.get(node) if isinstance(node, str) else None
            if scale and k > 0 and node in self._cluster.by_name:
                cpu.loc[i] = float(k) / (scale * self._cluster.node(node).speed)
                source.loc[i] = "measured"
        return cpu, source

    def close(self) -> None:
        """Stop the observer and timers, delete this substrate's pods, stop an owned plane. Idempotent."""
        if getattr(self, "_close_done", False):
            return
        self._close_done = True
        for t in self._timers:
            t.cancel()
        if self.observer is not None:
            self.observer.stop()
        if self.links is not None:
            self._closed_links = True
            self.links.close()
        errors = []
        restored = sorted(getattr(self, "_failed_nodes", ()))
        for n in restored:   # a run's faults do not outlive it on a shared plane
            try:
                if n in self._real:
                    self._fail_node(n, False)
                    continue
                self.actuator.set_node_failed(n, False)
            except DtlabError as exc:
                errors.append(str(exc))
        if restored and not self._owns_plane:
            self._wait_ready(restored, errors)
        if not self.opts["keep_pods"] and hasattr(self, "actuator"):
            for name in list(self._jobs):
                try:
                    self.actuator.delete_job(name)
                except DtlabError as exc:
                    errors.append(str(exc))
        if self._noise is not None:
            self.noise = self._noise.finish()
        if self._owns_plane:
            from ..kube import localplane
            localplane.down(self.opts["plane"])
        if self._hold is not None:
            from .. import hostlock
            hostlock.release(self._hold)
            self._hold = None
        super().close()
        if errors:
            raise DtlabError("kube close: " + "; ".join(errors[:3]))

    def _plane_pids(self) -> list[int]:
        from ..kube import localplane
        st = localplane.load_state(self.opts["plane"]) or {}
        return [int(p["pid"]) for p in (st.get("processes") or {}).values() if p.get("pid")]

    def _cpu_parts(self, plane0: float) -> dict[str, float]:
        """Host noise by part: this process (controller, twin, watch), the local plane's processes
        (kubelets on real nodes come with their own plane state; KWOK nodes cost no node CPU) and, with
        real nodes, ``nodes``: the CPU their workers' kernels measured (a lower bound of the nodes' CPU)."""
        import resource

        from .. import hostnoise
        ru = resource.getrusage(resource.RUSAGE_SELF)
        own = (ru.ru_utime + ru.ru_stime) - (self._rusage0.ru_utime + self._rusage0.ru_stime)
        out = {"controller": own, "plane": max(0.0, hostnoise.pids_cpu_s(self._plane_pids()) - plane0)}
        if self._real:      # the real workers' own kernel CPU (their container/emulator start-up not included)
            with self._lock:
                out["nodes"] = sum(float(r["kernel_cpu_ms"]) for r in self._stages
                                   if r.get("node") in self._real and r.get("kernel_cpu_ms")) / 1000.0
        return out

    # ------------------------------------------------------------ extras (controller, CLI, tests)
    def cancel(self, job: str) -> None:
        """Delete every pod of ``job`` and mark it failed (the controller's rollback)."""
        with self._lock:
            st = self._jobs.get(job)
            if st is not None:
                for s in st["stages"].values():
                    s["phase"] = "cancelled"
                self._finish(st, ok=False)
        self.actuator.delete_job(job)

    def kill(self, job: str, stage: str | None = None) -> list[str]:
        """pod-kill: delete the job's (stage's) current pods with grace 0; the substrate retries them."""
        return self.actuator.delete_job(job, stage)

    def set_replan(self, fn) -> None:
        """Re-plan-on-failure hook (V4): ``fn(job, stage_id, failed_node) -> node | None`` is asked when a
        stage lost its node and has no usable shadow; None (or no hook) fails the stage."""
        self._replan = fn

    @staticmethod
    def _stages_kind(rec: Mapping[str, Any]) -> str:
        return rec.get("node_kind") or "kwok"

    def real_nodes(self) -> dict[str, float]:
        """Real (kubelet) nodes of the cluster and their CPU scale."""
        return dict(self._real)

    def node_up(self, name: str) -> bool:
        """Whether ``name`` is up as observed (Ready, not NotReady)."""
        with self._lock:
            return name not in self._down

    def all_done(self) -> bool:
        with self._lock:
            return all(s["rec"]["ok"] is not None for s in self._jobs.values())

    def job_status(self, job: str) -> dict[str, Any]:
        """Per-stage view: node, pod, attempt, phase, start/end ms (CLI output)."""
        with self._lock:
            st = self._jobs[job]
            out = {}
            for sid, s in st["stages"].items():
                r = s.get("record") or {}
                out[sid] = {"node": s["node"], "pod": r.get("pod"), "attempt": s["attempt"], "phase": s["phase"],
                            "start_ms": r.get("start_ms"), "end_ms": r.get("end_ms"),
                            **{k: r.get(k) for k in ("node_kind", "format", "observed_ms", "uname_m", "exec",
                                                     "kernel_arch", "startup_ms", "transfer_ms", "fetch_mb")}}
            return {"job": job, **{k: st["rec"][k] for k in ("arrival_ms", "start_ms", "end_ms", "ok")},
                    "stages": out}

    def _shared_host_slowdown(self, cluster: Cluster) -> float | None:
        """Real kubelet nodes cannot get cores of their own on this host (dtlab.kube.realnodes: the
        kubelet refuses a narrower cpuset), so their pods share the cores with the kubelets, containerd,
        the plane and this controller. As the fabric does without a cpuset split, the twin is told:
        each real node's speed divided by the slowdown the opening calibration check measured
        (:func:`dtlab.hostnoise.shared_host_slowdown`; :meth:`speed_divisor`). KWOK nodes run no
        code and keep their speed. Returns the slowdown (None: no real nodes or not measured)."""
        from .. import hostnoise

        if not self._real or self._noise is None:
            return None
        return hostnoise.shared_host_slowdown(self._noise.cal0)

    def set_emulation(self, doc: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        """Each real node's emulation factor from a kube start-up calibration document
        (:func:`dtlab.kube.startup.factors_for`: a foreign-arch node's "native" worker runs through
        QEMU, 5-9x slower than the twin's native model), applied to the twin's speeds
        (:meth:`_speed_events`). Returns node -> {factor, source} (also in ``metadata()``)."""
        from ..kube.startup import factors_for

        self.emulation = factors_for(dict(doc or {}), {n: self._cluster.node(n).arch for n in sorted(self._real)
                                                        if n in self._cluster.by_name})
        self._speed_events()
        return self.emulation

    def speed_divisor(self, node: str) -> float:
        """The one rule for what divides a node's speed in the twin: on a real node the shared-host
        slowdown (when above :data:`dtlab.hostnoise.SLOWDOWN_TOLERANCE`) times its emulation factor
        (:meth:`set_emulation`); 1 on KWOK nodes (they run no code)."""
        from .. import hostnoise

        if node not in self._real:
            return 1.0
        slow = self.host_slowdown if self.host_slowdown is not None and \
            self.host_slowdown > hostnoise.SLOWDOWN_TOLERANCE else 1.0
        return float(slow) * float((self.emulation.get(node) or {}).get("factor", 1.0))

    def twin_cluster(self) -> Cluster:
        """The cluster as the twin sees it: each node's speed over :meth:`speed_divisor` (what the
        node-add events at ts 0 tell it), for estimates made outside the twin's state (V4's deadline)."""
        from dataclasses import replace
        return replace(self._cluster, nodes=tuple(replace(n, speed=n.speed / self.speed_divisor(n.name))
                                                  for n in self._cluster.nodes))

    def _speed_events(self) -> None:
        """One node-add at ts 0 per real node whose twin speed differs from the spec
        (:meth:`speed_divisor`); replaces the ones sent before if the twin has not read them yet."""
        from ..model import node_to_dict

        with self._lock:
            sent = {id(e) for e in self._speed_adds}
            self._events = [e for e in self._events if id(e) not in sent]
            self._speed_adds = [{"kind": "node-add", "ts": 0.0, "node": node_to_dict(n)}
                                for n in self.twin_cluster().nodes
                                if n.name in self._real and self.speed_divisor(n.name) != 1.0]
            self._events.extend(self._speed_adds)

    def metadata(self) -> dict[str, Any]:
        return {"substrate": "kube", "kubeconfig": self.kubeconfig, "namespace": self.opts["namespace"],
                "shared_host_slowdown": self.host_slowdown,
                "emulation_factors": {n: dict(v) for n, v in self.emulation.items()},
                "time_scale": self.opts["time_scale"], "pinning": self.opts["pinning"],
                "owns_plane": self._owns_plane, "observer": self.observer.stats() if self.observer else None,
                "actuator_retries": self.actuator.retries, "errors": list(self._errors),
                "links": dict(self.links.mechanism) if self.links is not None else
                getattr(self, "_links_unavailable", None)}

    # ------------------------------------------------------------ DAG driver
    def _duration_ms(self, st: dict[str, Any], sid: str, node_name: str, fmt: str | None) -> tuple[str, float]:
        job: Job = st["job"]
        stage = job.stages[job.stage_index[sid]]
        node = self._cluster.node(node_name)
        choice = self.timing.exec_format(stage, node)
        if fmt and fmt in self.timing.overheads:
            factor = self.timing.overheads[fmt]
        elif choice is not None:
            fmt, factor = choice
        else:
            fmt, factor = fmt or "native", 1.0
        service = self.timing.mean_service_ms(stage, node, factor) * float(st["noise"][sid])
        transfer = 0.0
        for p in stage.after:
            src = st["stages"][p]["node"]
            prev = job.stages[job.stage_index[p]]
            if src and src != node_name and prev.output_mb > 0:
                try:
                    transfer = max(transfer, self.timing.mean_transfer_ms(prev.output_mb,
                                                                          self._cluster.link(src, node_name)))
                except SpecError:
                    pass
        if not stage.after and job.origin_zone is not None:     # the job's input from its origin zone
            transfer = self.timing.mean_transfer_ms(job.input_mb, spec_link(self._cluster, job.origin_zone, node_name))
        return fmt, (service + transfer) * self.opts["time_scale"]

    def _launch(self, st: dict[str, Any], sid: str, node: str | None = None, reason: str = "") -> list[tuple]:
        """(Under the lock.) The next attempt of ``sid``: choose the node, record it, return the create action."""
        from ..kube.actuator import pod_spec_for

        plan: Plan = st["plan"]
        s = st["stages"][sid]
        if node is None:
            node = plan.placement[sid]
            shadow = plan.shadow.get(sid)
            if node in self._down and shadow and shadow not in self._down:
                node = shadow
        s["attempt"] += 1
        s["node"] = node
        s["phase"] = "pending"
        s["tried"].append(node)
        fmt = plan.formats.get(sid) if node == plan.placement[sid] else None
        fmt, dur = self._duration_ms(st, sid, node, fmt)
        from ..policies.baselines import UNPINNED
        scheduler = UNPINNED.get(plan.policy)
        if scheduler:        # the real scheduler places it: the node is known once observed
            real = next(iter(self._real.values()), None)
            spec = pod_spec_for(st["job"], sid, self._cluster.node(node), fmt, s["attempt"], dur, self.image,
                                real_scale=real, seed=self.seed + 1, scheduler=scheduler,
                                fetch=self._fetch_args_any(st, sid) if real is not None else ())
            node = s["node"] = None
            s["tried"][-1] = None
        else:
            real = self._real.get(node)
            fetch = self._fetch_args(st, sid, node) if real is not None else ()
            spec = pod_spec_for(st["job"], sid, self._cluster.node(node), fmt, s["attempt"], dur, self.image,
                                real_scale=real, seed=self.seed + 1, fetch=fetch)
        record = {"job": st["job"].name, "stage": sid, "node": node, "format": fmt, "start_ms": None,
                  "end_ms": None, "duration_ms": None, "ok": None, "pod": spec.name, "attempt": s["attempt"],
                  "planned_ms": dur / self.opts["time_scale"], "reason": reason or None, "_current": True,
                  "cpu": st["job"].stages[st["job"].stage_index[sid]].compute.cpu,
                  "node_kind": None if scheduler else ("real" if real is not None else "kwok"), "observed_ms": None, "uname_m": None,
                  "exec": None, "startup_ms": None, "created_ms": None, "transfer_ms": None, "fetch_mb": None,
                  "seen_ms": None, "kernel_cpu_ms": None}
        s["record"] = record
        self._stages.append(record)
        self._by_pod[spec.name] = record
        return [("create", spec)]

    def _on_events(self, batch: list[dict[str, Any]]) -> None:
        """Observer sink (watch threads): queue state events for the twin and drive the DAG."""
        actions: list[tuple] = []
        with self._lock:
            for ev in batch:
                kind = ev["kind"]
                if kind in ("stage-start", "stage-end"):
                    rec = self._by_pod.get(ev.get("pod"))
                    if rec is None or not rec["_current"]:
                        continue       # not ours, or an attempt we already replaced (its end was reported)
                    self._events.append(ev)
                    actions += self._stage_event(ev, rec)
                else:
                    name = ev["node"]["name"] if kind == "node-add" else ev.get("node")
                    if kind.startswith("node") and name not in self._cluster.by_name:
                        continue       # nodes outside the Cluster spec (control plane, others' nodes)
                    self._events.append(ev)
                    if kind == "node-down":
                        self._down.add(ev["node"])
                        actions += self._node_down(ev["node"])
                    elif kind == "node-up":
                        self._down.discard(ev["node"])
        self._run(actions)

    def _stage_event(self, ev: dict[str, Any], rec: dict[str, Any]) -> list[tuple]:
        st = self._jobs.get(rec["job"])
        if st is None:
            return []
        s = st["stages"][rec["stage"]]
        t_ms = ev["ts"] * 1000.0
        if rec["node"] is None and ev.get("node"):       # unpinned: where the scheduler put it
            rec["node"] = s["node"] = ev["node"]
            rec["node_kind"] = "real" if ev["node"] in self._real else "kwok"
        if ev["kind"] == "stage-start":
            rec["start_ms"] = t_ms
            s["phase"] = "running"
            if st["rec"]["start_ms"] is None or t_ms < st["rec"]["start_ms"]:
                st["rec"]["start_ms"] = t_ms
            return []
        w = ev.get("worker")
        if w:      # the real worker's own clock (ns), not the 1-s container status times
            rec["start_ms"], t_ms = w["start_ts"] * 1000.0, w["end_ts"] * 1000.0
            ev["ts"] = w["end_ts"]
            rec["observed_ms"] = t_ms - rec["start_ms"]
            rec.update(uname_m=w.get("uname_m"), exec=w.get("exec"), kernel_arch=w.get("kernel_arch"),
                       kernel_cpu_ms=w.get("kernel_cpu_ms"))
            if w.get("fetch_bytes"):
                rec.update(transfer_ms=w.get("fetch_ms"), fetch_mb=w["fetch_bytes"] / 1e6)
            if rec.get("created_ms") is not None:
                rec["startup_ms"] = rec["start_ms"] - rec["created_ms"]
        elif rec["start_ms"] is not None:      # relisted ends carry 1-s Kubernetes timestamps
            t_ms = max(t_ms, rec["start_ms"])
        if not w and rec["start_ms"] is not None:
            rec["observed_ms"] = t_ms - rec["start_ms"]
        rec["end_ms"], rec["ok"], rec["reason"] = t_ms, bool(ev.get("ok", True)), ev.get("reason")
        rec["seen_ms"] = self.now_ms()       # when the end reached us: the successor's pod is made now
        rec["_current"] = False
        if s["phase"] == "cancelled":
            return []
        if rec["ok"]:
            s["phase"] = "succeeded"
            return self._successors(st, rec["stage"])
        node_failed = rec["node"] in self._down or (ev.get("reason") in _NODE_FAIL_REASONS)
        return self._retry(st, rec["stage"], node_failed, ev.get("reason") or "failed")

    def _successors(self, st: dict[str, Any], sid: str) -> list[tuple]:
        job: Job = st["job"]
        actions: list[tuple] = []
        for succ in job.successors(sid):
            stage = job.stages[job.stage_index[succ]]
            if st["stages"][succ]["phase"] == "waiting" and \
                    all(st["stages"][p]["phase"] == "succeeded" for p in stage.after):
                actions += self._launch(st, succ)
        if all(s["phase"] == "succeeded" for s in st["stages"].values()):
            self._finish(st, ok=True)
        return actions

    def _retry(self, st: dict[str, Any], sid: str, node_failed: bool, reason: str) -> list[tuple]:
        """Next attempt: the shadow when the node failed (if usable), else the same node; or fail the job."""
        s = st["stages"][sid]
        if s["attempt"] + 1 >= self.opts["max_attempts"]:
            s["phase"] = "failed"
            self._finish(st, ok=False)
            return []
        node = s["node"]
        if node_failed:
            plan: Plan = st["plan"]
            candidates = [plan.shadow.get(sid), plan.placement[sid]]
            usable = [c for c in candidates if c and c != node and c not in self._down]
            replan = getattr(self, "_replan", None)
            if not usable and replan is not None:
                try:
                    alt = replan(st["job"], sid, node)
                except Exception as exc:  # noqa: BLE001 - a failing hook fails the stage, not the watch
                    self._errors.append(f"replan {st['job'].name}/{sid}: {exc!r}")
                    alt = None
                if alt is not None and alt in self._cluster.by_name and alt not in self._down:
                    usable = [alt]
            if not usable:
                s["phase"] = "failed"
                self._finish(st, ok=False)
                return []
            node = usable[0]
            st["rec"]["failed_over"] += 1     # moved off its lost node (shadow or re-plan): the engine's count
        return self._launch(st, sid, node, reason=f"retry after {reason}")

    def _node_down(self, node: str) -> list[tuple]:
        """Shadow failover: replace every unfinished attempt on ``node`` now (do not wait for eviction)."""
        actions: list[tuple] = []
        for st in self._jobs.values():
            if st["rec"]["ok"] is not None:
                continue
            for sid, s in st["stages"].items():
                rec = s.get("record")
                if s["node"] != node or s["phase"] not in ("pending", "running") or rec is None:
                    continue
                rec["_current"] = False
                rec["ok"], rec["reason"] = False, "node-down"
                rec["end_ms"] = self.now_ms()
                if rec["start_ms"] is not None:   # tell the twin the attempt ended, before the new one starts
                    self._events.append({"kind": "stage-end", "job": rec["job"], "stage": sid, "node": node,
                                         "ok": False, "reason": "node-down", "pod": rec["pod"],
                                         "attempt": rec["attempt"], "ts": rec["end_ms"] / 1000.0})
                actions.append(("delete", rec["pod"]))
                actions += self._retry(st, sid, True, "node-down")
        return actions

    def _finish(self, st: dict[str, Any], ok: bool) -> None:
        if st["rec"]["ok"] is None:
            st["rec"]["ok"] = ok
            st["rec"]["end_ms"] = self.now_ms() if not ok else max(
                (s["record"]["end_ms"] for s in st["stages"].values() if s.get("record")), default=self.now_ms())

    def _run(self, actions: list[tuple]) -> None:
        """Do API calls outside the lock (the actuator retries through an apiserver outage)."""
        for op, arg in actions:
            try:
                if op == "create":
                    with self._lock:
                        rec = self._by_pod.get(arg.name)
                        if rec is not None:
                            rec["created_ms"] = self.now_ms()
                    self.actuator.create_pod(arg)
                    expect = getattr(self.observer, "expect", None)
                    if expect is not None:
                        expect(arg.name, arg.job, arg.stage, arg.node, arg.attempt)
                else:
                    self.actuator.delete_pod(arg)
            except DtlabError as exc:
                self._errors.append(str(exc))
                if op == "create":
                    with self._lock:
                        rec = self._by_pod.get(arg.name)
                        st = self._jobs.get(arg.job)
                        if rec is not None and st is not None and rec["_current"]:
                            rec.update(_current=False, ok=False, reason=f"create failed: {exc}")
                            st["stages"][arg.stage]["phase"] = "failed"
                            self._finish(st, ok=False)

    def _fail_node(self, node: str, failed: bool) -> None:
        """Real node: kill (restart) its kubelet; KWOK: the label, remembered so ``close`` can restore
        nodes whose recovery timer never fired."""
        if node in self._real:
            from ..kube import localplane
            try:
                (localplane.kill_kubelet if failed else localplane.restart_kubelet)(node, self.opts["plane"])
            except localplane.LocalPlaneError as exc:
                raise DtlabError(str(exc)) from None
            with self._lock:
                (self._failed_nodes.add if failed else self._failed_nodes.discard)(node)
            return
        self.actuator.set_node_failed(node, failed)
        with self._lock:
            (self._failed_nodes.add if failed else self._failed_nodes.discard)(node)

    def _wait_ready(self, nodes: list[str], errors: list[str], timeout_s: float = 30.0) -> None:
        """After restoring nodes at close: wait (bounded) until the API reports them Ready again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ready = {n.metadata.name for n in self.actuator.list_nodes()
                         if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))}
            except (DtlabError, AttributeError):
                return
            if set(nodes) <= ready:
                return
            time.sleep(0.2)
        errors.append(f"nodes not Ready {timeout_s:.0f} s after restoring them: {nodes}")

    def _at(self, at_s: float, fn) -> None:
        def safe():
            try:
                fn()
            except DtlabError as exc:
                self._errors.append(str(exc))
        timer = threading.Timer(max(0.0, (at_s - self.now_ms() / 1000.0) * self.opts["time_scale"]), safe)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()


def real_nodes_of(nodes: list[Any]) -> dict[str, float]:
    """{name: cpu scale} of the nodes labelled ``dtlab.io/node-kind=real`` (V1Node objects)."""
    from ..kube.realnodes import CPU_SCALE_LABEL, NODE_KIND_LABEL
    out = {}
    for n in nodes:
        labels = (getattr(n.metadata, "labels", None) or {}) if hasattr(n, "metadata") else \
            ((n.get("metadata") or {}).get("labels") or {})
        name = n.metadata.name if hasattr(n, "metadata") else n["metadata"]["name"]
        if labels.get(NODE_KIND_LABEL) == "real":
            try:
                out[name] = float(labels.get(CPU_SCALE_LABEL, 1.0))
            except ValueError:
                out[name] = 1.0
    return out


def _ensure_runtime_class(actuator) -> None:
    """Create the ``wasm`` RuntimeClass if missing (pods naming a missing one are rejected); 403 is fine."""
    from kubernetes import client
    from ..kube.actuator import KubeError, WASM_RUNTIME_CLASS
    node_api = client.NodeV1Api(actuator.core.api_client)
    body = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": WASM_RUNTIME_CLASS},
            "handler": "wasmtime", "scheduling": {"nodeSelector": {"dtlab.io/format-wasm": "true"}}}
    try:
        actuator.call("create RuntimeClass wasm", lambda: node_api.create_runtime_class(
            body, _request_timeout=actuator.timeout_s), ok_status=(409, 403))
    except KubeError:
        pass


def _available() -> tuple[bool, str]:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return False, "the `kubernetes` Python client is not installed"
    from ..kube import localplane
    if localplane.kubeconfig("default"):
        return True, ""
    ok, why = localplane.binaries_available()
    return (True, "") if ok else (False, f"no local plane running and it cannot be started: {why}")


register("kube", lambda cluster, **opts: KubeSubstrate(cluster, **opts), _available)
