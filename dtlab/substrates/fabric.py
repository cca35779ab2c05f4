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
"""
from __future__ import annotations

import atexit
import math
import shutil
import os
import secrets
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import replace
from typing import Any, Mapping

import pandas as pd

from ..errors import DtlabError, SpecError, SubstrateUnavailable
from ..model import Cluster, Job, Link
from ..plan import Plan
from ..timing import TimingModel
from . import register
from .base import JOB_COLUMNS, STAGE_COLUMNS, WallClockSubstrate

_LIVE: "weakref.WeakSet[FabricSubstrate]" = weakref.WeakSet()
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
                 drain_limit_s: float = 600.0, **opts: Any):
        from ..fabric import available, cgroups, worker

        if opts:
            raise SpecError(f"substrate_opts.{sorted(opts)[0]}", "unknown fabric option (known: seed, host_cores, "
                            "kernel, network, timing, calibration, drain_limit_s)")
        ok, why = available()
        if not ok:
            raise SubstrateUnavailable(f"fabric: {why}")
        if kernel not in worker.KERNELS:
            raise SpecError("substrate_opts.kernel", f"unknown kernel {kernel!r} (known: {worker.KERNELS})")
        self._cluster = cluster
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
        self._cg_top = None
        # -------- CPU: scale the fabric to the host budget
        demand = sum(n.cores * n.speed for n in cluster.nodes)
        budget = float(host_cores) if host_cores else max(0.2, min(1.0, (os.cpu_count() or 1) * 0.25))
        self.scale = min(1.0, budget / demand)
        # a stage gets speed*scale of a core; under ~5% the 1 ms minimum quota forces long CFS periods
        # and stage times get coarse (tens of ms of throttling granularity)
        self.min_stage_share = min(n.speed for n in cluster.nodes) * self.scale
        worker.iterations_per_ms(kernel)      # calibrate (once per host) before the clock starts
        self._zygote = None
        self._nsenter = shutil.which("nsenter")
        if network and self._nsenter is None:
            raise SubstrateUnavailable("fabric: `nsenter` not found (apt-get install util-linux)")
        _LIVE.add(self)
        _install_handlers()
        try:
            fs = cgroups.detect()
            self._cg_top = cgroups.Cgroup(fs, f"{cgroups.PREFIX}{self.fid}", budget)
            self._cg_top.prioritise()
            if any("wasm" in n.formats for n in cluster.nodes) and worker.missing("wasm") is None:
                # warm launcher in the top cgroup: Wasm start-up costs a fork, as with a real runtime
                self._zygote = worker.WasmZygote(["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self._cg_top.procs_path],
                                                 tag=f"{cgroups.PREFIX}{self.fid}")   # names its processes for sweeps
            self._cg_node = {n.name: self._cg_top.child(_safe(n.name), n.cores * n.speed * self.scale)
                             for n in cluster.nodes}
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
                self.datapath = DataPath(self.net, lambda s, d: self._links.get((s, d)),
                                         use_relay=not self.net.netem, seed=self.seed)
        except BaseException:
            self.close()
            raise
        self._t0 = time.monotonic()

    # ------------------------------------------------------------ protocol
    def cluster(self) -> Cluster:
        return self._cluster

    def now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0

    def _ms(self, t: float) -> float:
        return (t - self._t0) * 1000.0

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
            deadline = time.monotonic() + self.drain_limit_s
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))
            return
        delay = (until_ms - self.now_ms()) / 1000.0
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
                "min_stage_share": self.min_stage_share,
                "cgroup_version": self._cg_top.fs.version if self._cg_top else None,
                "netem": bool(self.net and self.net.netem), "link_shaping": dict(self.mechanism),
                "overheads": dict(self.timing.overheads)}

    def close(self) -> None:
        """Kill every stage process, stop the data path, remove namespaces, veths and cgroups. Idempotent."""
        if getattr(self, "_closed_done", False):
            return
        self._closed_done = True
        self._closed = True
        for t in getattr(self, "_timers", []):
            t.cancel()
        for procs in getattr(self, "_procs", {}).values():
            for p in list(procs):
                _kill(p)
        errors = []
        for step in (lambda: getattr(self, "_zygote", None) and self._zygote.close(),
                     lambda: self.datapath and self.datapath.close(),
                     lambda: self.net and self.net.close(),
                     lambda: self._cg_top and self._cg_top.remove()):
            try:
                step()
            except Exception as exc:     # keep going: leave as little behind as possible
                errors.append(str(exc))
        _LIVE.discard(self)
        if errors:
            raise DtlabError("fabric close: " + "; ".join(errors))

    # ------------------------------------------------------------ internals
    def _emit(self, event: dict[str, Any], t: float | None = None) -> None:
        event.setdefault("ts", (self.now_ms() if t is None else self._ms(t)) / 1000.0)
        with self._lock:
            self._events.append(event)

    def _at(self, at_s: float, fn) -> None:
        timer = threading.Timer(max(0.0, at_s - self.now_ms() / 1000.0), fn)
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
        self.mechanism[f"{a}->{b}"] = self.net.shape(a, b, link.bandwidth_mbps, link.latency_ms, link.jitter_ms, link.loss)

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
            left, right = ev.sides or ((), ())
            for a in left:
                for b in right:
                    for x, y in ((a, b), (b, a)):
                        try:
                            base = self._cluster.link(x, y)
                        except SpecError:
                            base = None
                        if not start:
                            new = base
                        elif ev.kind == "partition" or base is None:
                            new = None
                        else:
                            new = replace(base, **ev.link_map)
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
            iters = worker.iterations_for(stage.compute.duration_ms * cpu / nproc, self.kernel, self.scale)
            argv = worker.command(fmt, self.kernel, iters, seed=self.seed + 1)
            cg = self._cg_node[node_name].child(_safe(f"{job.name}-{stage.id}-{secrets.token_hex(2)}"),
                                                cpu * node.speed * self.scale)
            ns = self.net.ns(node_name) if self.net else None
            # No preexec_fn (forking this big threaded interpreter costs tens of ms; vfork does not).
            # Start-up runs in the fabric's top cgroup (prioritised over host load, capped by the
            # budget); the worker moves itself into the stage cgroup when its kernel starts, so
            # emulator/runtime start-up is not stretched by the fabric scale.
            env = dict(os.environ, DTLAB_JOIN_CGROUP=cg.procs_path)
            if ns:
                argv = [self._nsenter, f"--net=/var/run/netns/{ns}", *argv]
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self._cg_top.procs_path, *argv]
            with self._lock:
                if self._closed:
                    return None
                t_start = time.monotonic()
                procs = []
                for _ in range(nproc):
                    if fmt == "wasm" and self._zygote is not None:
                        procs.append(self._zygote.spawn(argv[-3:], cg.procs_path))
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
            for proc in procs:
                out, err = proc.communicate()
                self._procs[node_name].discard(proc)
                if proc.returncode != 0:
                    ok = False
                    errors.append(err.strip()[-200:] or f"exit {proc.returncode}")
                    continue
                try:
                    kernel_ms = max(kernel_ms, worker.parse_run(fmt, out, 0.0).kernel_ms)
                except (ValueError, IndexError, KeyError):
                    ok = False
                    errors.append(f"unparsable worker output: {out[-120:]!r}")
            t_end = time.monotonic()
            with self._lock:
                srec.update(end_ms=self._ms(t_end), duration_ms=(t_end - t_start) * 1000.0, ok=ok,
                            kernel_ms=kernel_ms if ok else None, error="; ".join(errors) or None)
                srec.pop("_procs", None)
            self._emit({"kind": "stage-end", "job": job.name, "stage": stage.id, "node": node_name, "ok": ok}, t_end)
            try:
                cg.remove(timeout_s=2.0)
            except OSError:
                pass
            if ok:
                return node_name
        return None


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
