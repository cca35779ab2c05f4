"""The ``fabric`` substrate: jobs run as real processes on this host; observed times are measured.

Each Cluster node becomes a CPU cgroup (quota ``cores * speed * scale``, see fabric/cgroups.py) with
its own network namespace joined to a bridge (fabric/netns.py). ``submit`` runs every stage, in
DAG order, as a real kernel process (native / ``qemu-<arch>-static`` / Wasm, fabric/worker.py) in
its planned node's cgroup and netns, then sends ``output_mb`` to each successor's node over the
shaped link (htb for bandwidth; netem, or the user-space relay when the kernel has no netem, for
latency and loss). The events and records carry measured wall-clock timestamps (ms since the
substrate started). ``close()`` kills every process and removes every cgroup, namespace and veth;
it also runs at interpreter exit and on SIGINT/SIGTERM, and ``dtlab fabric cleanup`` sweeps leftovers
of crashed runs by name prefix.

A stage's work is ``cpu * duration_ms`` reference CPU-ms split over ``ceil(cpu)`` single-threaded
workers in a stage cgroup capped at ``cpu * speed * scale`` cores, inside the node's quota: the
twin's processor sharing with a per-stage cap. A job's ``input_mb`` is sent to its root stages from
the first up node of its origin zone (the twin's origin link); not modelled: memory limits.

**Measurement isolation** (issue 14; what this host can and cannot keep out):

* *Exclusive*: opening a fabric takes the host lock (dtlab/hostlock.py; ``exclusive: false`` opts
  out) so two wall-clock runs never measure each other; ``dtlab run`` already holds it for the run.
* *CPU split* (``node_cpus``): the emulated nodes' cgroups get their own cpuset, this process (the
  controller, the twin, the relay threads) the other cores. ``auto``: 1 core -> no split; 2-3 cores
  -> core 0 for the rest, the others for the nodes (this 2-core host: nodes on core 1); 4+ cores -> a
  quarter for the rest. ``off`` or a CPU list (``"2-7"``) choose by hand. Other users' processes can
  still run on the nodes' cores: the fabric's top cgroup has the maximum CPU weight, and the foreign
  share of those cores is measured (host noise, dtlab/hostnoise.py).
* *Quotas fit the cores*: ``scale = budget / sum(cores * speed)`` with ``budget`` = 0.9 x the nodes'
  cores (10 % headroom for start-up and the Wasm launcher); a larger ``host_cores`` is clamped (the
  metadata says so). On a 2-core host the 7-node example cluster (38.6 core-equivalents) gets
  ``scale`` 0.023: a 1-cpu stage on a speed-0.4 node is capped at ~1 % of a core.
* *Time scale, not just shrinking*: quotas that small make CFS granularity dominate a stage (the
  minimum quota is 1 ms, so the slowest node's period is ~100 ms, and the bandwidth timer is enforced
  per 4 ms tick). So the fabric **stretches time**: ``time_scale`` T (``auto``: one tick of CPU at most
  20 % of a 100 ms stage's work and the slowest CFS period at most 25 reference ms; 9 on this host
  for that cluster, see :func:`auto_time_scale`) multiplies every stage's work,
  every link latency/jitter (bandwidth divided by T) and every wait, and the substrate clock
  (``now_ms``, all records, ``kernel_ms``) runs in reference ms = wall ms / T. The twin needs no change:
  it sees reference time. A run takes T times longer in wall time.
* *What error it leaves*: (1) the quota is enforced per scheduler tick, so a stage runs its quota
  plus up to one tick (4 ms CPU) before it is throttled and repays the overrun later; its time is
  quantised in steps of about one tick of CPU work: ~4 ms against ``100 * scale * T`` ms of work for a
  100 ms 1-cpu stage (~20 % by construction of ``auto``, shrinking as 1/T); (2) process and emulator start-up
  are real wall time and shrink by 1/T in reference time (the twin models the measured start-up);
  (3) a period phase of up to one CFS period per stage: each stage's cgroup is fresh and gets its quota
  per period, so it ends ahead of the fluid time; the twin models the expected half period
  (:class:`dtlab.timing.CpuQuota`, from :meth:`FabricSubstrate.cpu_quota`); (4) other users' processes on
  the nodes' cores.
* *Where isolation is impossible* (one core, ``node_cpus: off``, no cpuset controller) the metadata
  says ``isolated: false`` and the twin models the emulation host as a shared resource under the
  nodes: the opening calibration check (native kernel at the fabric's CPU weight) measures the
  slowdown the host imposes, and node-add events divide every node's speed by it
  (``shared_host_slowdown`` in the metadata); the host-noise record measures the rest.
"""
from __future__ import annotations

import atexit
import math
import resource
import shutil
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import replace
from typing import Any, Mapping

import pandas as pd

from .. import hostnoise
from ..chaos.spec import fault_links
from ..errors import DtlabError, SpecError, SubstrateUnavailable
from ..model import Cluster, Job, Link
from ..plan import Plan
from ..timing import CpuQuota, TimingModel
from . import register
from .base import JOB_COLUMNS, STAGE_COLUMNS, WallClockSubstrate

_LIVE: "weakref.WeakSet[FabricSubstrate]" = weakref.WeakSet()
OPTIONS = ("seed", "host_cores", "kernel", "network", "timing", "calibration", "drain_limit_s", "node_cpus",
           "time_scale", "exclusive", "lock_timeout_s", "noise_limits", "noise_recheck", "telemetry",
           "scrape_interval_s", "cpu_drift", "neighbours")
TELEMETRY = (None, "none", "prometheus")
MAX_DRIFT_STEPS = 1000
MAX_NEIGHBOURS = 8            # CPU hogs (one process each) on a 2-core host: more only measures the host
NODE_HEADROOM = 0.9          # node quotas fill 90 % of their cores: start-up, the Wasm launcher, the kernel's own work
AUTO_PERIOD_REF_MS = 25.0    # time_scale auto: the slowest node's CFS period <= 25 reference ms, and
TICK_MS = 4.0                # (CONFIG_HZ=250) CPU a stage may overrun its quota by before it is throttled
AUTO_TICK_ERROR = 0.2        # ... one tick <= 20 % of a 100 ms 1-cpu stage's CPU work
AUTO_MAX = 20.0
_HANDLERS_INSTALLED = False


def _close_all(*_):
    for sub in list(_LIVE):
        try:
            sub.close()
        except Exception:
            pass


def _install_handlers() -> None:
    """atexit + SIGINT/SIGTERM: close every live fabric, then behave as the previous handler would."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        prev = signal.getsignal(sig)

        def handler(signum, frame, prev=prev):
            _close_all()
            if callable(prev):
                return prev(signum, frame)
            if prev == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        signal.signal(sig, handler)


class FabricSubstrate(WallClockSubstrate):
    name = "fabric"

    def __init__(self, cluster: Cluster, seed: int = 0, host_cores: float | None = None, kernel: str = "mix",
                 network: bool = True, timing: TimingModel | None = None, calibration: str | None = None,
                 drain_limit_s: float = 600.0, node_cpus: str = "auto", time_scale: float | str = "auto",
                 exclusive: bool = True, lock_timeout_s: float | None = None,
                 noise_limits: Mapping[str, float] | None = None, noise_recheck: bool = True,
                 telemetry: str | None = None, scrape_interval_s: float = 0.5, cpu_drift: Any = None,
                 neighbours: Any = None, **opts: Any):
        from .. import hostlock
        from ..fabric import available, cgroups, worker

        if opts:
            raise SpecError(f"substrate_opts.{sorted(opts)[0]}", "unknown fabric option (known: " + ", ".join(OPTIONS) + ")")
        if telemetry not in TELEMETRY:
            raise SpecError("substrate_opts.telemetry", f"must be 'prometheus' or 'none' (got {telemetry!r})")
        if isinstance(scrape_interval_s, bool) or not isinstance(scrape_interval_s, (int, float)) \
                or not 0.05 <= scrape_interval_s <= 60:
            raise SpecError("substrate_opts.scrape_interval_s", f"must be a number of seconds in [0.05, 60] "
                                                                f"(got {scrape_interval_s!r})")
        ok, why = available()
        if not ok:
            raise SubstrateUnavailable(f"fabric: {why}")
        if kernel not in worker.KERNELS:
            raise SpecError("substrate_opts.kernel", f"unknown kernel {kernel!r} (known: {worker.KERNELS})")
        if not (time_scale == "auto" or (isinstance(time_scale, (int, float)) and not isinstance(time_scale, bool)
                                         and 0 < time_scale <= 100)):
            raise SpecError("substrate_opts.time_scale", f"must be 'auto' or a number in (0, 100] (got {time_scale!r})")
        if host_cores is not None and not (isinstance(host_cores, (int, float)) and host_cores > 0):
            raise SpecError("substrate_opts.host_cores", f"must be a positive number of cores (got {host_cores!r})")
        try:
            node_set, rest_set, self.isolation_note = cgroups.split_cpus(cgroups.host_cpus(), node_cpus)
        except ValueError as exc:
            raise SpecError("substrate_opts.node_cpus", str(exc)) from None
        self._cluster = cluster
        self.cpu_drift = check_cpu_drift(cpu_drift, cluster)
        self.neighbours = check_neighbours(neighbours, cluster)
        self._neighbour_procs: list[subprocess.Popen] = []
        self.neighbours_started: list[dict[str, Any]] = []
        self.speed_factor: dict[str, float] = {n.name: 1.0 for n in cluster.nodes}
        self.drift_applied: list[dict[str, Any]] = []
        self._stage_cgs: dict[str, dict[Any, float]] = {n.name: {} for n in cluster.nodes}   # live stage cgroup -> cpu
        self.seed = int(seed)
        self.kernel = kernel
        self.drain_limit_s = drain_limit_s
        if timing is None:
            timing = TimingModel()
            try:
                from ..fabric.calibrate import load_overheads
                timing = timing.with_overheads(load_overheads(calibration))
            except DtlabError:
                pass            # no host calibration yet: plan formats with the default factors
        self.timing = timing
        self.fid = secrets.token_hex(3)
        self._lock = threading.RLock()
        self._events: list[dict[str, Any]] = []
        self._jobs: dict[str, dict[str, Any]] = {}
        self._stages: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._procs: dict[str, set] = {n.name: set() for n in cluster.nodes}
        self._down: set[str] = set()
        self._timers: list[threading.Timer] = []
        self._closed = False
        self.net = self.datapath = self._zygote = None
        self._cg_top = self._cg_probe = self._cs_nodes = self._cs_rest = self._acct_nodes = None
        self.host_slowdown: float | None = None
        self.ipms_check: dict[str, Any] | None = None   # worker.recheck_ipms at open
        self._cs_home: str | None = None
        self._hold = None
        self._t0 = time.monotonic()          # restarted when the fabric is ready (events may come before)
        self.noise: dict[str, Any] | None = None
        self._noise = None
        self.telemetry = telemetry if telemetry == "prometheus" else None
        self.prometheus: Any = None            # dtlab.telemetry.PrometheusProcess with telemetry: prometheus
        self.prometheus_url: str | None = None
        self._exporters: dict[str, subprocess.Popen] = {}
        self._acct_node: dict[str, Any] = {}   # per-node CPU accounting groups (cgroup v1 cpuacct)
        self._mem_top: Any = None
        self._mem_node: dict[str, Any] = {}
        # -------- CPU: the nodes' cores, and a budget that fits them (see the module docstring)
        self.node_cpus, self.rest_cpus = node_set, rest_set
        self.isolated = not set(node_set) & set(rest_set)
        fit = len(node_set) * NODE_HEADROOM if self.isolated else max(0.2, min(1.0, len(node_set) * 0.25))
        self.budget_note = ""
        budget = fit
        if host_cores:
            budget = float(host_cores)
            if self.isolated and budget > fit:
                self.budget_note = (f"host_cores {host_cores} > {fit:.2f} (the nodes' {len(node_set)} core(s) x "
                                    f"{NODE_HEADROOM}): clamped so the node quotas fit their cpuset")
                budget = fit
        demand = sum(n.cores * n.speed for n in cluster.nodes)
        self.budget = budget
        self.scale = min(1.0, budget / demand)
        # a stage gets speed*scale of a core; under ~5% the 1 ms minimum quota forces long CFS periods
        # and stage times get coarse (tens of ms of throttling granularity): stretch time instead
        self.min_stage_share = min(n.speed for n in cluster.nodes) * self.scale
        self.cfs_period_ms = cgroups.cores_to_quota(self.min_stage_share)[1] / 1000.0
        self.time_scale = float(auto_time_scale(self.cfs_period_ms, self.scale) if time_scale == "auto" else time_scale)
        self._nsenter = shutil.which("nsenter")
        if network and self._nsenter is None:
            raise SubstrateUnavailable("fabric: `nsenter` not found (apt-get install util-linux)")
        _LIVE.add(self)
        _install_handlers()
        try:
            if exclusive:      # one wall-clock measurement at a time on this host (dtlab/hostlock.py)
                self._hold = hostlock.acquire(f"fabric {self.fid} (pid {os.getpid()})", lock_timeout_s,
                                              on_wait=lambda msg: print(msg, file=sys.stderr, flush=True))
            worker.iterations_per_ms(kernel)      # calibrate (once per host) before the clock starts
            self.ipms_check = worker.recheck_ipms(kernel)   # ... and re-measure if the host's speed moved (once a process)
            fs = cgroups.detect()
            self._cg_top = cgroups.Cgroup(fs, f"{cgroups.PREFIX}{self.fid}", budget / NODE_HEADROOM
                                          if self.isolated else budget)
            self._cg_top.prioritise()
            self._join = [self._cg_top.procs_path]
            cs_base = cgroups.controller_dir("cpuset")
            if self.isolated and cs_base is not None:
                # nodes on their cores; this process (controller, twin, relay threads) on the others
                self._cs_nodes = cgroups.Cpuset(cs_base, f"{cgroups.PREFIX}{self.fid}-nodes", node_set)
                self._cs_rest = cgroups.Cpuset(cs_base, f"{cgroups.PREFIX}{self.fid}-rest", rest_set)
                self._cs_home = cgroups.own_cgroup("cpuset")
                self._cs_rest.attach(os.getpid())
                self._join.append(self._cs_nodes.procs_path)
            elif self.isolated:
                self.isolated = False
                self.isolation_note += "; no cpuset controller: nodes share every core"
            acct_base = cgroups.controller_dir("cpuacct")
            if acct_base is not None and acct_base != cgroups.CGROUP_ROOT:
                self._acct_nodes = cgroups.Cpuacct(acct_base, f"{cgroups.PREFIX}{self.fid}-nodes")
                self._join.append(self._acct_nodes.procs_path)
            # the calibration re-check runs as a stage would (highest CPU weight, nodes' cores) but unthrottled
            self._cg_probe = cgroups.Cgroup(fs, f"{cgroups.PREFIX}{self.fid}-probe", None)
            self._cg_probe.prioritise()
            self._noise = hostnoise.NoiseMonitor(
                self.node_cpus, self._acct_nodes.usage_s if self._acct_nodes else None, self._cpu_parts,
                calibrate_join=":".join([self._cg_probe.procs_path, *self._join[1:2]]), limits=noise_limits,
                recheck=noise_recheck)
            self.host_slowdown = self._shared_host_slowdown(cluster)
            self._rusage0 = resource.getrusage(resource.RUSAGE_SELF)
            if any("wasm" in n.formats for n in cluster.nodes) and worker.missing("wasm") is None:
                # warm launcher in the top cgroup: Wasm start-up costs a fork, as with a real runtime
                self._zygote = worker.WasmZygote([*_join_prefix(self._join)],
                                                 tag=f"{cgroups.PREFIX}{self.fid}")   # names its processes for sweeps
            self._cg_node = {n.name: self._cg_top.child(_safe(n.name), n.cores * n.speed * self.scale,
                                                        cgroups.NODE_MIN_QUOTA_US) for n in cluster.nodes}
            if self.telemetry:
                self._start_telemetry(cluster, float(scrape_interval_s))
            # -------- network
            self._links: dict[tuple[str, str], Link | None] = {}
            self.mechanism: dict[str, str] = {}
            if network:
                from ..fabric.netns import NetFabric
                from ..fabric.relay import DataPath
                self.net = NetFabric(self.fid, [n.name for n in cluster.nodes])
                for a in cluster.nodes:
                    for b in cluster.nodes:
                        if a.name != b.name:
                            try:
                                self._links[(a.name, b.name)] = cluster.link(a.name, b.name)
                            except SpecError:
                                self._links[(a.name, b.name)] = None
                            self._reshape(a.name, b.name)
                self.datapath = DataPath(self.net, lambda s, d: self._wall_link(self._links.get((s, d))),
                                         use_relay=not self.net.netem, seed=self.seed)
        except BaseException:
            self.close()
            raise
        self._t0 = time.monotonic()
        for step in self.cpu_drift:
            self._at(step["at_s"], lambda step=step: self._set_speed_factor(step["node"], step["factor"]))
        for hog in self.neighbours:
            self._at(hog["at_s"], lambda hog=hog: self._start_neighbour(hog["node"]))

    # ------------------------------------------------------------ protocol
    def cluster(self) -> Cluster:
        return self._cluster

    def cpu_quota(self) -> CpuQuota:
        """The twin's model of the stages' CFS quotas (:class:`dtlab.timing.CpuQuota`): each stage's own
        cgroup gets ``cpu x speed x scale`` cores (x the node's drift factor now), with the cgroups'
        period rule, its periods in wall time over ``time_scale``."""
        from ..fabric import cgroups

        return CpuQuota({n.name: n.speed * self.scale * self.speed_factor[n.name] for n in self._cluster.nodes},
                        time_scale=self.time_scale, period_us=cgroups.PERIOD_US, min_quota_us=cgroups.MIN_QUOTA_US,
                        max_period_us=cgroups.MAX_PERIOD_US)

    def now_ms(self) -> float:
        """Substrate time in reference ms: wall time since start divided by ``time_scale``."""
        return (time.monotonic() - self._t0) * 1000.0 / self.time_scale

    def _ms(self, t: float) -> float:
        return (t - self._t0) * 1000.0 / self.time_scale

    def _wall_link(self, link: Link | None) -> Link | None:
        """A link as realised in wall time: latency and jitter stretched, bandwidth shrunk by ``time_scale``."""
        if link is None or self.time_scale == 1.0:
            return link
        k = self.time_scale
        return replace(link, latency_ms=link.latency_ms * k, jitter_ms=link.jitter_ms * k,
                       bandwidth_mbps=link.bandwidth_mbps / k)

    def _cpu_parts(self) -> dict[str, float]:
        """CPU seconds of this run by part: nodes (cpuacct), relay (its threads), controller (the rest of
        this process: twin, controller loop, Python), plane (none on the fabric)."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        own = (ru.ru_utime + ru.ru_stime) - (self._rusage0.ru_utime + self._rusage0.ru_stime)
        relay = self.datapath.cpu_s if self.datapath is not None else 0.0
        nodes = self._acct_nodes.usage_s() if self._acct_nodes else float("nan")
        return {"nodes": nodes, "relay": relay, "controller": max(0.0, own - relay),
                "plane": 0.0}

    def submit(self, plan: Plan, job: Job) -> None:
        self._check_open()
        if job.name in self._jobs:
            raise SpecError("job", f"job {job.name!r} was already submitted")
        for s in job.stages:
            if s.id not in plan.placement:
                raise SpecError(f"placement.{s.id}", "stage has no node in the plan")
            if plan.placement[s.id] not in self._cluster.by_name:
                raise SpecError(f"placement.{s.id}", f"unknown node {plan.placement[s.id]!r}")
        now = self.now_ms()
        rec = {"job": job.name, "arrival_ms": now, "start_ms": None, "end_ms": None, "deadline_ms": job.deadline_ms,
               "ok": None, "nodes": sorted(set(plan.placement.values()))}
        with self._lock:
            self._jobs[job.name] = rec
            self._emit({"kind": "job-submit", "job": job.name, "deadline_ms": job.deadline_ms,
                        "stage_cpu": {s.id: s.compute.cpu for s in job.stages}})
        t = threading.Thread(target=self._run_job, args=(plan, job, rec), daemon=True, name=f"job-{job.name}")
        self._threads.append(t)
        t.start()

    def advance(self, until_ms: float | None) -> None:
        """Wait in real time until ``until_ms`` (None: until all submitted jobs finished, bounded)."""
        self._check_open()
        if until_ms is None:
            deadline = time.monotonic() + self.drain_limit_s * self.time_scale
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))
            return
        delay = (until_ms - self.now_ms()) / 1000.0 * self.time_scale
        if delay > 0:
            time.sleep(delay)

    def inject(self, fault: Mapping[str, Any]) -> None:
        """Realise a FaultScenario fault at ``at_s`` seconds of the substrate clock (clamped to now)."""
        ev = self._timed_fault(fault)
        self._at(ev.start_s, lambda: self._fault(ev, True))
        if ev.duration_s is not None:
            self._at(ev.end_s, lambda: self._fault(ev, False))

    def results(self) -> dict[str, pd.DataFrame]:
        with self._lock:
            jobs = pd.DataFrame([dict(r) for r in self._jobs.values()], columns=list(JOB_COLUMNS))
            stages = pd.DataFrame(list(self._stages))
        if len(jobs):
            jobs["latency_ms"] = jobs["end_ms"] - jobs["arrival_ms"]
            jobs["missed"] = [bool(d) and (l != l or l > d) for d, l in zip(jobs["deadline_ms"], jobs["latency_ms"])]
        for c in STAGE_COLUMNS:
            if c not in stages.columns:
                stages[c] = pd.Series(dtype=object)
        stages = stages[list(STAGE_COLUMNS) + [c for c in stages.columns if c not in STAGE_COLUMNS]]
        return {"jobs": jobs, "stages": stages}

    def metadata(self) -> dict[str, Any]:
        """What run.json should record: how nodes and links were realised on this host."""
        return {"substrate": "fabric", "fabric_id": self.fid, "scale": self.scale, "kernel": self.kernel,
                "min_stage_share": self.min_stage_share, "cfs_period_ms_slowest": self.cfs_period_ms,
                "time_scale": self.time_scale, "budget_cores": self.budget, "budget_note": self.budget_note,
                "node_cpus": cgroups_fmt(self.node_cpus), "rest_cpus": cgroups_fmt(self.rest_cpus),
                "isolated": self.isolated, "isolation": self.isolation_note, "shared_host_slowdown": self.host_slowdown,
                "ipms_check": self.ipms_check, "exclusive": self._hold is not None,
                "cgroup_version": self._cg_top.fs.version if self._cg_top else None,
                "netem": bool(self.net and self.net.netem), "link_shaping": dict(self.mechanism),
                "overheads": dict(self.timing.overheads), "telemetry": self.telemetry,
                "scrape_interval_s": self.prometheus.scrape_interval_s if self.prometheus else None,
                "cpu_drift": list(self.cpu_drift), "neighbours": list(self.neighbours)}

    def close(self) -> None:
        """Kill every stage process, stop the data path, remove namespaces, veths and cgroups. Idempotent."""
        if getattr(self, "_closed_done", False):
            return
        self._closed_done = True
        self._closed = True
        for t in getattr(self, "_timers", []):
            t.cancel()
        for hog in getattr(self, "_neighbour_procs", []):
            _kill(hog)
            hog.wait(timeout=10)      # out of the node's cgroup before it is removed
        for procs in getattr(self, "_procs", {}).values():
            for p in list(procs):
                _kill(p)
        errors = []
        if getattr(self, "_noise", None) is not None:
            try:
                self.noise = self._noise.finish()
            except Exception as exc:  # noqa: BLE001 - noise is a record, never a reason to leak cgroups
                self.noise = {"error": f"{type(exc).__name__}: {exc}", "noisy": True, "reasons": ["noise record failed"]}
        for step in (self._stop_telemetry,
                     lambda: getattr(self, "_zygote", None) and self._zygote.close(),
                     lambda: self.datapath and self.datapath.close(),
                     lambda: self.net and self.net.close(),
                     lambda: self._cg_top and self._cg_top.remove(),
                     lambda: self._cg_probe and self._cg_probe.remove(),
                     self._leave_cpuset,
                     lambda: self._cs_nodes and self._cs_nodes.remove(),
                     lambda: self._cs_rest and self._cs_rest.remove(),
                     lambda: self._acct_nodes and self._acct_nodes.remove(),
                     lambda: getattr(self, "_mem_top", None) and self._mem_top.remove()):
            try:
                step()
            except Exception as exc:     # keep going: leave as little behind as possible
                errors.append(str(exc))
        _LIVE.discard(self)
        if getattr(self, "_hold", None) is not None:
            from .. import hostlock
            hostlock.release(self._hold)
            self._hold = None
        if errors:
            raise DtlabError("fabric close: " + "; ".join(errors))

    # ------------------------------------------------------------ telemetry (issue 20)
    def _start_telemetry(self, cluster: Cluster, scrape_interval_s: float) -> None:
        """Per-node CPU accounting (and memory) groups, one exporter per node, a real Prometheus.

        cgroup v1 keeps CPU accounting and memory in hierarchies of their own, so each node gets a
        ``cpuacct`` group (inside the run's) and a ``memory`` group; every stage joins a
        ``cpuacct`` sub-group of its node (``stage-*``) and its node's memory group. On v2 the
        node's CPU cgroup already accounts (``cpu.stat``) and stages are its sub-groups.
        Whatever runs in a node's group outside the stage sub-groups is background load.
        """
        from ..fabric import cgroups
        from ..fabric import exporter
        from ..telemetry import PrometheusProcess, die_with_parent

        mem_base = cgroups.controller_dir("memory")
        if mem_base is not None and mem_base != cgroups.CGROUP_ROOT:
            self._mem_top = cgroups.Group(mem_base, f"{cgroups.PREFIX}{self.fid}-mem")
        targets = {}
        for n in cluster.nodes:
            if self._acct_nodes is not None:
                self._acct_node[n.name] = cgroups.Group(self._acct_nodes.base,
                                                        f"{cgroups.PREFIX}{self.fid}-nodes/{_safe(n.name)}")
                cpu_dir = self._acct_node[n.name].path
            else:
                cpu_dir = self._cg_node[n.name].path
            if self._mem_top is not None:
                self._mem_node[n.name] = cgroups.Group(self._mem_top.base,
                                                       f"{cgroups.PREFIX}{self.fid}-mem/{_safe(n.name)}")
            mem = self._mem_node[n.name].path if n.name in self._mem_node else None
            argv = exporter.command(n.name, cpu_dir, n.cores * n.speed * self.scale, os.getpid(), mem)
            # the exporters run beside the controller (not on the nodes' cores): a node's agent is not its work
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
            self._exporters[n.name] = proc
        for name, proc in self._exporters.items():
            line = proc.stdout.readline().strip() if proc.stdout else ""
            if not line.isdigit():
                err = proc.stderr.read()[-300:] if proc.poll() is not None and proc.stderr else ""
                raise SubstrateUnavailable(f"fabric telemetry: exporter of {name} did not start: {err or line!r}")
            targets[name] = f"127.0.0.1:{line}"
        self.exporter_targets = targets
        self.prometheus = PrometheusProcess(targets, scrape_interval_s).start()
        self.prometheus_url = self.prometheus.url

    def node_cgroup_procs(self, node: str) -> list[str]:
        """The ``cgroup.procs`` files that put a process into ``node``'s own cgroup (CPU quota, cpuset,
        accounting, memory): how a noisy neighbour outside dtlab lands on a fabric node."""
        paths = [self._cg_node[node].procs_path]
        if self._cs_nodes is not None:
            paths.append(self._cs_nodes.procs_path)
        if node in self._acct_node:
            paths.append(self._acct_node[node].procs_path)
        if node in self._mem_node:
            paths.append(self._mem_node[node].procs_path)
        return paths

    def _start_neighbour(self, node: str) -> None:
        """``neighbours``: one CPU-bound process put into ``node``'s cgroup (:meth:`node_cgroup_procs`)
        outside dtlab, running until the substrate closes: a noisy neighbour the twin learns of only
        through telemetry (its stages then share the node's quota with it)."""
        if self._closed:
            return
        paths = self.node_cgroup_procs(node)
        # spins until its parent (this process) is gone; not PR_SET_PDEATHSIG, which fires when the
        # *thread* that started it ends (a timer thread here)
        spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
        proc = subprocess.Popen(["/bin/sh", "-c", 'for f in $0; do echo $$ > "$f" || exit 3; done; exec "$@"',
                                 " ".join(paths), sys.executable, "-c", spin],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._neighbour_procs.append(proc)
        self.neighbours_started.append({"node": node, "at_ms": self.now_ms(), "pid": proc.pid})

    def ts_of_epoch(self, epoch_s: float) -> float:
        """Wall-clock epoch seconds -> this substrate's clock (reference seconds since start), for telemetry."""
        mono = time.monotonic() - (time.time() - epoch_s)
        return max(0.0, self._ms(mono) / 1000.0)   # sampled before the clock started (set-up): as old as its start

    def _telemetry_joins(self, node: str, stage_group: str) -> list[str]:
        """Extra cgroup.procs a stage joins with telemetry on: its node's accounting sub-group and memory."""
        out = []
        if node in self._acct_node:
            from ..fabric import cgroups
            acct = cgroups.Group(self._acct_node[node].base, str(self._acct_node[node].path.relative_to(
                self._acct_node[node].base) / f"stage-{stage_group}"))
            out.append(acct.procs_path)
        if node in self._mem_node:
            out.append(self._mem_node[node].procs_path)
        return out

    def _retire_stage_acct(self, node: str, stage_group: str) -> None:
        """Remove a finished stage's accounting group after two scrape intervals (the exporter's last
        reading of it is then its total, see dtlab/fabric/exporter.py)."""
        if node not in self._acct_node:
            return
        from ..fabric import cgroups
        path = self._acct_node[node].path / f"stage-{stage_group}"
        base = self._acct_node[node].base
        delay = 2 * (self.prometheus.scrape_interval_s if self.prometheus else 0.5)

        def retire() -> None:
            try:
                cgroups.evacuate_tree(path, base)
            except OSError:
                pass
        timer = threading.Timer(delay, retire)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _stop_telemetry(self) -> None:
        if getattr(self, "prometheus", None) is not None:
            self.prometheus.close()
        for proc in getattr(self, "_exporters", {}).values():
            _kill(proc)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # ------------------------------------------------------------ internals
    def _shared_host_slowdown(self, cluster: Cluster) -> float | None:
        """Without a cpuset split the nodes share the host with the controller, relay and everyone else:
        tell the twin, as every node's speed divided by the slowdown the opening calibration check
        measured (native kernel wall / CPU time at the fabric's CPU weight), through node-add events
        (as the online calibrator does). Returns that slowdown (None when isolated or not measured)."""
        from ..model import node_to_dict

        if self.isolated or self._noise is None:
            return None
        slowdown = hostnoise.shared_host_slowdown(self._noise.cal0)
        if slowdown is not None and slowdown > hostnoise.SLOWDOWN_TOLERANCE:
            for n in cluster.nodes:
                self._emit({"kind": "node-add", "node": node_to_dict(replace(n, speed=n.speed / slowdown)), "ts": 0.0})
        return slowdown

    def _set_speed_factor(self, node: str, factor: float) -> None:
        """Drift: the node's CPU quota (and every running stage's) becomes ``factor`` x its spec quota,
        i.e. the node now runs at ``factor`` x its spec speed. The twin is not told (V6 measures
        whether it notices)."""
        from ..fabric import cgroups

        if self._closed:
            return
        n = self._cluster.node(node)
        with self._lock:
            down = factor < self.speed_factor[node]
            self.speed_factor[node] = factor

            def stages() -> None:
                for cg, cpu in list(self._stage_cgs[node].items()):
                    try:
                        cg.set_cores(self._stage_cores(node, cpu))
                    except OSError:
                        pass          # the stage just ended and its cgroup is going
            if down:          # cgroup v1 refuses a parent quota below a child's: children first
                stages()
            self._cg_node[node].set_cores(self._node_cores(node), cgroups.NODE_MIN_QUOTA_US)
            if not down:
                stages()
            self.drift_applied.append({"node": node, "factor": factor, "at_ms": round(self.now_ms(), 1)})

    def _node_cores(self, node: str) -> float:
        n = self._cluster.node(node)
        return n.cores * n.speed * self.scale * self.speed_factor[node]

    def _stage_cores(self, node: str, cpu: float) -> float:
        """A stage's quota (cores): ``cpu * speed * scale`` x the node's drift factor, kept just under the
        node's own quota as the kernel rounds it (quota/period), since cgroup v1 refuses a child above its
        parent and a stage as large as its node would otherwise sit on the rounding edge."""
        from ..fabric import cgroups

        quota, period = cgroups.cores_to_quota(self._node_cores(node), min_quota_us=cgroups.NODE_MIN_QUOTA_US)
        n = self._cluster.node(node)
        return min(cpu * n.speed * self.scale * self.speed_factor[node], quota / period - 2e-4)

    def true_speed(self, node: str, at_ms: float | None = None) -> float:
        """The node's speed at ``at_ms`` (reference ms; None: now): spec speed x the last drift factor
        applied to it by then (V6 compares the online estimator with it)."""
        factor = 1.0
        with self._lock:
            for step in self.drift_applied:
                if step["node"] == node and (at_ms is None or step["at_ms"] <= at_ms):
                    factor = step["factor"]
        return self._cluster.node(node).speed * factor

    def _leave_cpuset(self) -> None:
        """Put this process back into the cpuset it came from (a cpuset with tasks cannot be removed)."""
        if self._cs_rest is None or self._cs_home is None:
            return
        home = self._cs_rest.base / self._cs_home.lstrip("/")
        with open(home / "cgroup.procs", "w") as fh:
            fh.write(str(os.getpid()))

    def _emit(self, event: dict[str, Any], t: float | None = None) -> None:
        event.setdefault("ts", (self.now_ms() if t is None else self._ms(t)) / 1000.0)
        with self._lock:
            self._events.append(event)

    def _at(self, at_s: float, fn) -> None:
        timer = threading.Timer(max(0.0, at_s - self.now_ms() / 1000.0) * self.time_scale, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _reshape(self, a: str, b: str) -> None:
        link = self._links.get((a, b))
        if self.net is None:
            return
        if link is None:   # cut: the relay holds data; with netem, drop everything
            self.net.shape(a, b, 1e4, 0.0, 0.0, 1.0 if self.net.netem else 0.0)
            self.mechanism[f"{a}->{b}"] = "cut:" + ("netem loss 100%" if self.net.netem else "relay hold")
            return
        wall = self._wall_link(link)
        self.mechanism[f"{a}->{b}"] = self.net.shape(a, b, wall.bandwidth_mbps, wall.latency_ms, wall.jitter_ms, wall.loss)

    def _fault(self, ev, start: bool) -> None:
        if self._closed:
            return
        if ev.kind == "node-failure":
            for n in ev.nodes:
                if start:
                    self._down.add(n)
                    for p in list(self._procs.get(n, ())):
                        _kill(p)
                    self._cg_node[n].kill_all()
                else:
                    self._down.discard(n)
        elif ev.kind in ("partition", "link-degradation"):
            for x, y, new in fault_links(self._cluster, ev, start):
                self._links[(x, y)] = new
                try:
                    self._reshape(x, y)
                except DtlabError:
                    pass
        elif ev.kind == "pod-kill":
            with self._lock:
                for rec in self._stages:
                    if rec["job"] == ev.job and (ev.stage is None or rec["stage"] == ev.stage):
                        for p in rec.get("_procs", ()):
                            _kill(p)

    def _run_job(self, plan: Plan, job: Job, rec: dict[str, Any]) -> None:
        done: dict[str, threading.Event] = {s.id: threading.Event() for s in job.stages}
        where: dict[str, str | None] = {}
        inputs: dict[str, list] = {s.id: [] for s in job.stages}
        ok_all = [True]

        def stage_thread(stage):
            try:
                for p in stage.after:
                    done[p].wait()
                if not all(where.get(p) for p in stage.after):
                    where[stage.id] = None
                    return
                for tr in inputs[stage.id]:
                    tr.done.wait()
                    if tr.error:
                        where[stage.id] = None
                        return
                node = self._run_stage(plan, job, stage)
                where[stage.id] = node
                if node is not None:
                    for succ in job.successors(stage.id):
                        dst = self._target_node(plan, succ)
                        if dst != node and self.datapath is not None and stage.output_mb > 0:
                            inputs[succ].append(self.datapath.send(node, dst, stage.output_mb))
            finally:
                if where.get(stage.id) is None:
                    ok_all[0] = False
                done[stage.id].set()

        origin = self._origin_node(job)
        if origin is not None and self.datapath is not None and job.input_mb > 0:
            for s in job.stages:          # the job's input comes from its origin zone, as the twin models it
                dst = self._target_node(plan, s.id)
                if not s.after and dst != origin:
                    inputs[s.id].append(self.datapath.send(origin, dst, job.input_mb))
        threads = [threading.Thread(target=stage_thread, args=(s,), daemon=True) for s in job.stages]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            rec["end_ms"] = self.now_ms()
            rec["ok"] = ok_all[0]

    def _origin_node(self, job: Job) -> str | None:
        """The node a job's input is sent from: the first node of its origin zone (cluster order) that
        is up; None without an origin zone or when none of its nodes is up."""
        zone = job.origin_zone
        if zone is None:
            return None
        for n in self._cluster.nodes:
            if n.zone == zone and n.name not in self._down:
                return n.name
        return None

    def _target_node(self, plan: Plan, stage_id: str) -> str:
        node = plan.placement[stage_id]
        if node in self._down and plan.shadow.get(stage_id):
            return plan.shadow[stage_id]
        return node

    def _run_stage(self, plan: Plan, job: Job, stage) -> str | None:
        """Run one stage (on its shadow node if the planned node is down or dies); the node it finished on."""
        from ..fabric import worker

        candidates = [plan.placement[stage.id]] + ([plan.shadow[stage.id]] if plan.shadow.get(stage.id) else [])
        for node_name in candidates:
            if self._closed:
                return None
            if node_name in self._down:
                continue
            node = self._cluster.node(node_name)
            fmt = plan.formats.get(stage.id) if node_name == plan.placement[stage.id] else None
            if not fmt:
                choice = self.timing.exec_format(stage, node)
                if choice is None:
                    continue
                fmt = choice[0]
            # duration_ms is the wall time with `cpu` cores: cpu*duration of CPU work, split over
            # ceil(cpu) single-threaded workers that share a stage quota of cpu*speed*scale cores
            # (the twin's processor sharing with a per-stage cap of `cpu` cores)
            cpu = max(stage.compute.cpu, 0.01)
            nproc = max(1, math.ceil(cpu - 1e-9))
            iters = worker.iterations_for(stage.compute.duration_ms * cpu / nproc, self.kernel,
                                          self.scale * self.time_scale)
            argv = worker.command(fmt, self.kernel, iters, seed=self.seed + 1)
            with self._lock:
                cg = self._cg_node[node_name].child(_safe(f"{job.name}-{stage.id}-{secrets.token_hex(2)}"),
                                                    self._stage_cores(node_name, cpu))
                self._stage_cgs[node_name][cg] = cpu
            ns = self.net.ns(node_name) if self.net else None
            # No preexec_fn (forking this big threaded interpreter costs tens of ms; vfork does not).
            # Start-up runs in the fabric's top cgroup (prioritised over host load, capped by the
            # budget); the worker moves itself into the stage cgroup when its kernel starts, so
            # emulator/runtime start-up is not stretched by the fabric scale.
            joins = [cg.procs_path, *self._telemetry_joins(node_name, cg.path.name)]
            env = dict(os.environ, DTLAB_JOIN_CGROUP=os.pathsep.join(joins))
            if ns:
                argv = [self._nsenter, f"--net=/var/run/netns/{ns}", *argv]
            argv = [*_join_prefix(self._join), *argv]
            with self._lock:
                if self._closed:
                    return None
                t_start = time.monotonic()
                procs = []
                for _ in range(nproc):
                    if fmt == "wasm" and self._zygote is not None:
                        procs.append(self._zygote.spawn(argv[-3:], os.pathsep.join(joins)))
                    else:
                        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                      text=True, env=env))
                self._procs[node_name].update(procs)
                srec = {"job": job.name, "stage": stage.id, "node": node_name, "format": fmt,
                        "start_ms": self._ms(t_start), "end_ms": None, "duration_ms": None, "ok": None,
                        "iterations": iters * nproc, "workers": nproc, "_procs": procs}
                self._stages.append(srec)
                if rec := self._jobs.get(job.name):
                    if rec["start_ms"] is None:
                        rec["start_ms"] = srec["start_ms"]
            self._emit({"kind": "stage-start", "job": job.name, "stage": stage.id, "node": node_name}, t_start)
            ok, kernel_ms, errors = True, 0.0, []
            workers_cpu_ms = 0.0      # the workers' own process CPU clocks around their kernels
            for proc in procs:
                out, err = proc.communicate()
                self._procs[node_name].discard(proc)
                if proc.returncode != 0:
                    ok = False
                    errors.append(err.strip()[-200:] or f"exit {proc.returncode}")
                    continue
                try:
                    run = worker.parse_run(fmt, out, 0.0)
                    kernel_ms = max(kernel_ms, run.kernel_ms / self.time_scale)
                    workers_cpu_ms += run.cpu_ms if run.cpu_ms > 0 else 0.0
                except (ValueError, IndexError, KeyError):
                    ok = False
                    errors.append(f"unparsable worker output: {out[-120:]!r}")
            t_end = time.monotonic()
            # measured CPU time of the stage: its cgroup's usage (cgroup v2), else (v1 keeps cpuacct in
            # another hierarchy) the sum of the workers' process CPU clocks; node-equivalent: / (scale x speed)
            try:
                cpu_host_ms = cg.cpu_usage_ms()
            except OSError:
                cpu_host_ms = None
            if not cpu_host_ms:
                cpu_host_ms = workers_cpu_ms or None
            with self._lock:
                # node-equivalent CPU: host CPU over the work's stretch (scale x time_scale) and the node's speed
                srec.update(end_ms=self._ms(t_end), duration_ms=self._ms(t_end) - self._ms(t_start), ok=ok,
                            kernel_ms=kernel_ms if ok else None, error="; ".join(errors) or None,
                            cpu_host_ms=cpu_host_ms,
                            cpu_ms=(cpu_host_ms / (self.scale * self.time_scale * node.speed)
                                    if cpu_host_ms is not None else None))
                srec.pop("_procs", None)
            self._emit({"kind": "stage-end", "job": job.name, "stage": stage.id, "node": node_name, "ok": ok}, t_end)
            with self._lock:
                self._stage_cgs[node_name].pop(cg, None)
            try:
                cg.remove(timeout_s=2.0)
            except OSError:
                pass
            self._retire_stage_acct(node_name, cg.path.name)
            if ok:
                return node_name
        return None


def _timed_node_steps(value: Any, cluster: Cluster, opt: str, ranges: dict[str, tuple[float, float]],
                      limit: int, noun: str) -> list[dict[str, Any]]:
    """A ``substrate_opts.<opt>`` list of ``{node, <ranges' keys>}`` mappings (one of them ``at_s``),
    checked with field paths and sorted by ``at_s``: the one reader of timed per-node steps."""
    if value is None:
        return []
    keys = ["node", *ranges]
    shape = "{" + ", ".join(keys) + "}"
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise SpecError(f"substrate_opts.{opt}", f"must be a list of at most {limit} {shape} {noun}")
    out = []
    for i, step in enumerate(value):
        where = f"substrate_opts.{opt}[{i}]"
        if not isinstance(step, Mapping) or set(step) != set(keys):
            raise SpecError(where, "must be a mapping with exactly the keys " + ", ".join(keys))
        if step["node"] not in cluster.by_name:
            raise SpecError(f"{where}.node", f"unknown node {step['node']!r}")
        for key, (lo, hi) in ranges.items():
            v = step[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi):
                raise SpecError(f"{where}.{key}", f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
        out.append({"node": str(step["node"]), **{k: float(step[k]) for k in ranges}})
    return sorted(out, key=lambda d: d["at_s"])


def check_cpu_drift(value: Any, cluster: Cluster) -> list[dict[str, Any]]:
    """``cpu_drift``: a list of ``{node, at_s, factor}`` steps (at ``at_s`` seconds of the substrate
    clock the node's CPU quota becomes ``factor`` x its spec quota), checked with field paths; sorted by time."""
    return _timed_node_steps(value, cluster, "cpu_drift", {"at_s": (0.0, 1e7), "factor": (1e-3, 10.0)},
                             MAX_DRIFT_STEPS, "steps")


def check_neighbours(value: Any, cluster: Cluster) -> list[dict[str, Any]]:
    """``neighbours``: a list of ``{node, at_s}`` (a CPU hog joins the node's cgroup at ``at_s`` seconds of
    the substrate clock), checked with field paths; sorted by time."""
    return _timed_node_steps(value, cluster, "neighbours", {"at_s": (0.0, 1e7)}, MAX_NEIGHBOURS, "entries")


def auto_time_scale(period_ms: float, scale: float) -> float:
    """The time stretch ``time_scale: auto`` picks (see the module docstring), the larger of:

    * the slowest node's CFS period is at most ``AUTO_PERIOD_REF_MS`` of reference time, and
    * a 100 ms, 1-cpu stage does at least ``TICK_MS / AUTO_TICK_ERROR`` ms of CPU work
      (``100 * scale * T``), because CFS enforces a quota per scheduler tick: a stage's time is
      quantised in steps of about one tick of CPU work, so this bounds that error at ~20 %.

    Capped at ``AUTO_MAX``; 1.0 (no stretch) when the quotas are large enough already.
    """
    by_period = 2 * period_ms / AUTO_PERIOD_REF_MS
    by_tick = 2 * TICK_MS / AUTO_TICK_ERROR / (100.0 * scale)
    return min(AUTO_MAX, max(1.0, math.ceil(max(by_period, by_tick)) / 2))


def cgroups_fmt(cpus) -> str:
    from ..fabric.cgroups import format_cpus
    return format_cpus(cpus)


def _join_prefix(paths: list[str]) -> list[str]:
    """argv prefix: a shell that writes its pid into every ``cgroup.procs`` of ``paths``, then execs the rest."""
    return ["/bin/sh", "-c", 'for f in $0; do echo $$ > "$f" || exit 3; done; exec "$@"', " ".join(paths)]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _kill(proc) -> None:
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def _available() -> tuple[bool, str]:
    from ..fabric import available
    return available()


register("fabric", lambda cluster, **opts: FabricSubstrate(cluster, **opts), _available)
