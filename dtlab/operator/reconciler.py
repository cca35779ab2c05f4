"""Level-triggered reconciliation of DTJobs: the API server holds intent and progress, not memory.

Every pass reads the DTJobs, their stage pods and the nodes, and moves each DTJob one step
towards done from what it *sees*; nothing the operator remembers between passes matters, so
a restarted (or newly elected) operator continues exactly where the last one stopped:

1. **Plan once, before any pod.** A DTJob without ``status.plans`` is planned by the twin on
   the state observed from the cluster (:func:`dtlab.kube.observed.observed_state`; links from
   ``--cluster``) with the DTJob's policy, predictor, samples and seed. Plan version 1 is
   written to status (a PUT with the ``resourceVersion`` just read) and only then are pods
   created. A DTJob that already has plans is never planned again: after a restart the
   recorded plan is used as it is.
2. **Record, then create.** Before a stage's pod is created, status records the attempt:
   node, format, run time, pod name (deterministic: ``<dtjob>-<stage>-<attempt>``), plan
   version. Creating it is idempotent (:meth:`dtlab.kube.actuator.Actuator.create_pod`:
   409 with the same spec hash is our pod), so a crash between the two writes creates the
   same pod, never a second one. The created pod's UID goes into status; a recorded UID
   whose pod is gone (or has another UID) means the pod was deleted: that attempt failed.
3. **Advance from pod phases.** Succeeded -> the stage is done (observed start/end from the
   pod); successors whose predecessors all succeeded get their attempt 0; Failed or deleted
   -> next attempt on the same node, up to ``maxAttempts``.
4. **Fail over to the recorded shadow.** A stage whose node is NotReady (or whose pod failed
   for a node reason) moves to the shadow recorded in its plan: a *new plan version* is
   appended (placement with that stage on the shadow, the reason, who, when); the old
   versions stay. No re-plan happens behind the user's back: without a usable shadow the
   stage fails with that reason.
5. **Finish.** All stages succeeded -> ``Succeeded`` (observed latency from the pods'
   timestamps); any stage out of attempts -> ``Failed``. Terminal DTJobs are not touched again.

A spec the schema admitted but the twin rejects (unknown ``after``, cycle, no feasible node,
unknown policy) gets phase ``Invalid`` and an ``Invalid`` condition naming the field, once;
no retry loop. Status PUTs that hit a 409 (someone wrote in between) skip the DTJob for this
pass; the next pass re-reads it.

``record`` (a text file) gets one JSON line per action (plan, create, delete, failover,
invalid, finish) with the operator's identity, so tests can check who acted when.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, TextIO

from ..errors import DtlabError, InfeasibleError, SpecError
from ..kube.actuator import NAMESPACE, PodSpec, _status, label_value, pod_name
from ..kube.observer import parse_time, pod_info
from .crd import API_VERSION, GROUP, KIND, PLURAL, TERMINAL, VERSION
from .spec import job_of, settings

log = logging.getLogger("dtlab.operator")

DTJOB_LABEL = "dtlab.io/dtjob"
PLAN_VERSION_ANNOTATION = "dtlab.io/plan-version"
NODE_FAIL_REASONS = ("Evicted", "NodeLost", "TaintManagerEviction", "DeletionByTaintManager", "NodeAffinity",
                     "OutOfcpu", "OutOfmemory", "Terminated")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def set_condition(status: dict[str, Any], ctype: str, value: bool, reason: str, message: str = "") -> None:
    """Set condition ``ctype``; lastTransitionTime changes only when its status does."""
    conds = status.setdefault("conditions", [])
    new = "True" if value else "False"
    for c in conds:
        if c["type"] == ctype:
            if c["status"] != new:
                c["lastTransitionTime"] = now_rfc3339()
            c.update(status=new, reason=reason, message=message)
            return
    conds.append({"type": ctype, "status": new, "reason": reason, "message": message,
                  "lastTransitionTime": now_rfc3339()})


class Conflict(Exception):
    """A status write lost an optimistic-concurrency race (409): re-read next pass."""


@dataclass(frozen=True)
class RealNode:
    """What a stage pod on a real node needs of it (labels set by ``dtlab.kube.realnodes``)."""
    name: str
    arch: str
    speed: float
    scale: float            # dtlab.io/cpu-scale: reference ms of work per planned ms on this host


def _float(value: Any, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


class KubeIO:
    """The API calls of the reconciler (official client; retries via the actuator's policy)."""

    def __init__(self, actuator: Any, custom_api: Any, namespace: str = NAMESPACE):
        self.actuator = actuator
        self.custom = custom_api
        self.namespace = namespace
        self._real: dict[str, RealNode] = {}

    def _call(self, what: str, fn: Callable[[], Any], ok_status: tuple[int, ...] = ()) -> Any:
        return self.actuator.call(what, fn, ok_status)   # one retry/backoff policy for every dtlab API call

    def dtjobs(self) -> list[dict[str, Any]]:
        out = self._call("list dtjobs", lambda: self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=self.actuator.timeout_s))
        return list(out.get("items") or [])

    def pods(self) -> list[dict[str, Any]]:
        """Every DTJob stage pod in the namespace, as plain dicts (no model deserialisation)."""
        resp = self._call("list dtjob pods", lambda: self.actuator.core.list_namespaced_pod(
            self.namespace, label_selector=DTJOB_LABEL, _preload_content=False,
            _request_timeout=self.actuator.timeout_s))
        return list(json.loads(resp.data).get("items") or [])

    def nodes_ready(self) -> dict[str, bool]:
        from ..kube.realnodes import CPU_SCALE_LABEL, NODE_KIND_LABEL
        ready, real = {}, {}
        for n in self.actuator.list_nodes():
            ready[n.metadata.name] = any(c.type == "Ready" and c.status == "True"
                                         for c in (n.status.conditions or []))
            labels = n.metadata.labels or {}
            if labels.get(NODE_KIND_LABEL) == "real":
                real[n.metadata.name] = RealNode(n.metadata.name, labels.get("dtlab.io/arch", "amd64"),
                                                 _float(labels.get("dtlab.io/speed"), 1.0),
                                                 _float(labels.get(CPU_SCALE_LABEL), 1.0))
        self._real = real
        return ready

    def real_nodes(self) -> dict[str, RealNode]:
        """The real (kubelet) nodes seen by the last :meth:`nodes_ready`, by name."""
        return dict(self._real)

    def write_status(self, dtjob: dict[str, Any]) -> dict[str, Any]:
        """PUT status with the resourceVersion we read (409 -> Conflict); returns the stored object."""
        name = dtjob["metadata"]["name"]
        out = self._call(f"update status of dtjob {self.namespace}/{name}",
                         lambda: self.custom.replace_namespaced_custom_object_status(
                             GROUP, VERSION, self.namespace, PLURAL, name, dtjob,
                             _request_timeout=self.actuator.timeout_s), ok_status=(409,))
        if _status(out) == 409:
            raise Conflict(name)
        return out

    def create_pod(self, spec: PodSpec, extra: Mapping[str, Any]) -> dict[str, Any]:
        return self.actuator.create_pod(spec, extra)

    def delete_pod(self, name: str) -> bool:
        return self.actuator.delete_pod(name)


class Reconciler:
    """See the module docstring. ``planner(dtjob, job, settings) -> plan entry`` is injectable (unit tests)."""

    def __init__(self, io: KubeIO, identity: str, planner: Callable[..., dict[str, Any]] | None = None,
                 record: TextIO | None = None):
        self.io = io
        self.identity = identity
        self.planner = planner
        self.record = record
        self._real: dict[str, RealNode] = {}     # real (kubelet) nodes seen this pass: their pods do real work
        self.counts = {"plans": 0, "creates": 0, "deletes": 0, "failovers": 0, "invalid": 0, "finished": 0,
                       "conflicts": 0, "errors": 0}

    # ------------------------------------------------------------ one pass
    def pass_once(self, may_act: Callable[[], bool] = lambda: True) -> int:
        """Reconcile every non-terminal DTJob once (oldest first) while ``may_act()``; returns how many were open."""
        dtjobs = sorted(self.io.dtjobs(), key=lambda d: (d["metadata"].get("creationTimestamp") or "",
                                                          d["metadata"]["name"]))
        open_jobs = [d for d in dtjobs if (d.get("status") or {}).get("phase") not in TERMINAL]
        if not open_jobs:
            return 0
        pods: dict[str, dict[str, Any]] = {p["metadata"]["name"]: p for p in self.io.pods()}
        ready = self.io.nodes_ready()
        self._real = self.io.real_nodes() if hasattr(self.io, "real_nodes") else {}
        for d in open_jobs:
            if not may_act():
                break
            try:
                self.reconcile(d, pods, ready)
            except Conflict:
                self.counts["conflicts"] += 1
            except DtlabError as exc:    # an API call failed for good: log, go on with the others
                self.counts["errors"] += 1
                log.error("dtjob %s: %s", d["metadata"]["name"], exc)
        return len(open_jobs)

    def reconcile(self, d: dict[str, Any], pods: Mapping[str, Mapping[str, Any]], ready: Mapping[str, bool]) -> None:
        name = d["metadata"]["name"]
        status = copy.deepcopy(d.get("status") or {})
        if status.get("phase") in TERMINAL:
            return
        try:
            job = job_of(d)
            cfg = settings(d)
            if not status.get("plans"):
                entry = self.planner(d, job, cfg)
        except SpecError as exc:
            self._invalid(d, status, exc)
            return
        except InfeasibleError as exc:   # may change when nodes come back: stay Pending, retry next pass
            if status.get("message") != str(exc):
                status.update(phase="Pending", message=str(exc))
                set_condition(status, "Planned", False, "Infeasible", str(exc))
                self._put(d, status)
            return
        if not status.get("plans"):
            entry.update(version=1, reason="initial plan", by=self.identity, at=now_rfc3339())
            status = {"phase": "Planned", "plans": [entry], "message": "",
                      "stages": {s.id: {"phase": "Waiting", "attempt": -1} for s in job.stages},
                      "conditions": status.get("conditions", [])}
            self._summarise(status)
            set_condition(status, "Planned", True, "Planned",
                          f"plan v1 by {entry.get('policy')}: {_fmt(entry['placement'])}")
            d = self._put(d, status)          # the plan is in the API server before any pod exists
            self.counts["plans"] += 1
            self.note("plan", name, version=1, placement=entry["placement"], shadow=entry.get("shadow", {}))
            status = copy.deepcopy(d["status"])
        self._progress(d, job, cfg, status, pods, ready)

    # ------------------------------------------------------------ stages
    def _progress(self, d, job, cfg, status, pods, ready) -> None:
        name = d["metadata"]["name"]
        stages = status["stages"]
        before = json.dumps(status, sort_keys=True)
        deletes: list[str] = []
        for sid in job.topo_order:     # predecessors first: a stage done in this pass launches its successors
            st = stages[sid]
            stage = job.stages[job.stage_index[sid]]
            if st["phase"] == "Waiting":
                if all(stages[p]["phase"] == "Succeeded" for p in stage.after):
                    self._launch(status, sid, node=status["plans"][-1]["placement"][sid], attempt=0)
                continue
            if st["phase"] not in ("Pending", "Running") or not st.get("uid"):
                continue
            pod = pods.get(st["pod"])
            if pod is None or pod["metadata"].get("uid") != st["uid"]:
                self._failed(status, sid, "pod deleted", node_failed=not ready.get(st["node"], False), cfg=cfg)
                continue
            info = pod_info(pod)
            if info["phase"] == "Succeeded":
                start, end = info["start_ts"], info["end_ts"] or parse_time(
                    (pod.get("status") or {}).get("conditions", [{}])[-1].get("lastTransitionTime"))
                st.update(phase="Succeeded", startTime=_iso(start), endTime=_iso(end),
                          observedMs=None if start is None or end is None else round((end - start) * 1000.0, 1))
            elif info["phase"] == "Failed":
                reason = info["reason"] or "Failed"
                self._failed(status, sid, reason, cfg=cfg,
                             node_failed=reason in NODE_FAIL_REASONS or not ready.get(st["node"], False))
            elif not ready.get(st["node"], False):
                deletes.append(st["pod"])
                self._failed(status, sid, f"node {st['node']} NotReady", node_failed=True, cfg=cfg)
            elif info["phase"] == "Running" and st["phase"] != "Running":
                st.update(phase="Running", startTime=_iso(info["start_ts"]))
        for st in stages.values():    # superseded attempts still alive (a crash came before their delete)
            for h in st.get("history", []):
                old = pods.get(h.get("pod"))
                if old is not None and h["pod"] not in deletes and not old["metadata"].get("deletionTimestamp") \
                        and (old.get("status") or {}).get("phase") in ("Pending", "Running", None):
                    deletes.append(h["pod"])
        self._finish(status, job)
        if json.dumps(status, sort_keys=True) != before:
            d = self._put(d, status)          # record attempts before their pods exist
            status = copy.deepcopy(d["status"])
        for pod_name_ in deletes:
            self.io.delete_pod(pod_name_)
            self.counts["deletes"] += 1
            self.note("delete", name, pod=pod_name_)
        created = False
        for sid in job.topo_order:
            st = status["stages"][sid]
            if st["phase"] in ("Pending", "Running") and not st.get("uid"):
                out = self.io.create_pod(self._pod_spec(d, job, cfg, sid, st), self._extra(d, st))
                st["uid"] = out.get("uid")
                created = True
                self.counts["creates"] += int(bool(out.get("created")))
                self.note("create", name, stage=sid, pod=out["name"], node=st["node"], attempt=st["attempt"],
                          new=bool(out.get("created")), uid=out.get("uid"))
        if created:
            if status.get("phase") == "Planned":
                status["phase"] = "Running"
            self._put(d, status)

    def _launch(self, status: dict[str, Any], sid: str, node: str, attempt: int) -> None:
        plan = status["plans"][-1]
        on_primary = node == plan["placement"].get(sid)
        fmt = (plan.get("formats") if on_primary else plan.get("shadowFormats") or {}).get(sid) or "native"
        ms = (plan.get("stageMs") if on_primary else plan.get("shadowStageMs") or {}).get(sid)
        st = status["stages"][sid]
        history = st.get("history", [])
        status["stages"][sid] = {"phase": "Pending", "attempt": attempt, "node": node, "format": fmt,
                                 "arch": (plan.get("nodeArch") or {}).get(node, "amd64"),
                                 "durationMs": ms, "pod": None, "planVersion": plan["version"],
                                 **({"history": history} if history else {})}
        status["stages"][sid]["pod"] = pod_name(plan["job"], sid, attempt)
        if status.get("phase") == "Planned":
            status["phase"] = "Running"

    def _failed(self, status: dict[str, Any], sid: str, reason: str, node_failed: bool, cfg: Mapping[str, Any]) -> None:
        st = status["stages"][sid]
        hist = st.setdefault("history", [])
        hist.append({"attempt": st["attempt"], "node": st["node"], "pod": st["pod"], "uid": st.get("uid"),
                     "reason": reason})
        if st["attempt"] + 1 >= int(cfg["maxAttempts"]):
            st.update(phase="Failed", reason=f"{reason}; out of attempts ({cfg['maxAttempts']})")
            return
        node = st["node"]
        plan = status["plans"][-1]
        if node_failed:
            shadow = (plan.get("shadow") or {}).get(sid)
            if not shadow or shadow == node:
                st.update(phase="Failed", reason=f"{reason}; no recorded shadow to fail over to (no re-plan)")
                return
            new = copy.deepcopy(plan)
            new["placement"][sid] = shadow
            new["shadow"].pop(sid, None)
            for a, b in (("formats", "shadowFormats"), ("stageMs", "shadowStageMs")):
                if sid in (new.get(b) or {}):
                    new.setdefault(a, {})[sid] = new[b].pop(sid)
            new.update(version=plan["version"] + 1, by=self.identity, at=now_rfc3339(),
                       reason=f"failover: stage {sid} lost node {node} ({reason}); moved to its recorded shadow "
                              f"{shadow}")
            status["plans"].append(new)
            self._summarise(status)
            self.counts["failovers"] += 1
            self.note("failover", plan["job"], stage=sid, node=node, shadow=shadow,
                      version=new["version"])
            node = shadow
        self._launch(status, sid, node=node, attempt=st["attempt"] + 1)
        status["stages"][sid]["history"] = hist

    def _finish(self, status: dict[str, Any], job) -> None:
        phases = [status["stages"][s.id]["phase"] for s in job.stages]
        if "Failed" in phases:
            failed = [s.id for s in job.stages if status["stages"][s.id]["phase"] == "Failed"]
            why = "; ".join(f"{sid}: {status['stages'][sid].get('reason')}" for sid in failed)
            status.update(phase="Failed", message=why)
            set_condition(status, "Succeeded", False, "StageFailed", why)
        elif all(p == "Succeeded" for p in phases):
            starts = [parse_time(status["stages"][s.id].get("startTime")) for s in job.stages]
            ends = [parse_time(status["stages"][s.id].get("endTime")) for s in job.stages]
            if all(starts) and all(ends):
                status["observedLatencyMs"] = round((max(ends) - min(starts)) * 1000.0, 1)
            status.update(phase="Succeeded", message="")
            set_condition(status, "Succeeded", True, "AllStagesSucceeded",
                          f"{len(phases)} stages, plan v{status['plans'][-1]['version']}")
        else:
            return
        self.counts["finished"] += 1
        self.note("finish", status["plans"][0]["job"], phase=status["phase"])

    # ------------------------------------------------------------ helpers
    def _invalid(self, d: dict[str, Any], status: dict[str, Any], exc: SpecError) -> None:
        status.update(phase="Invalid", message=str(exc))
        set_condition(status, "Invalid", True, "InvalidSpec", str(exc))
        self._put(d, status)
        self.counts["invalid"] += 1
        self.note("invalid", d["metadata"]["name"], error=str(exc))

    def _put(self, d: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": d["metadata"], "spec": d.get("spec"),
                "status": status}
        return self.io.write_status(body)

    @staticmethod
    def _summarise(status: dict[str, Any]) -> None:
        plan = status["plans"][-1]
        status["planVersion"] = plan["version"]
        p95 = (plan.get("prediction") or {}).get("p95_ms")
        if p95 is not None:
            status["predictedP95Ms"] = round(float(p95), 1)
        status["nodes"] = ",".join(sorted(set(plan["placement"].values())))

    def _pod_spec(self, d, job, cfg, sid: str, st: Mapping[str, Any]) -> PodSpec:
        stage = job.stages[job.stage_index[sid]]
        ms = st.get("durationMs") or stage.compute.duration_ms
        real = self._real.get(st["node"])
        if real is not None:      # a kubelet runs it: the worker image does the stage's work, as `dtlab submit` does
            from ..kube.actuator import pod_spec_for
            spec = pod_spec_for(job, sid, real, st.get("format") or "native", int(st["attempt"]), float(ms),
                                real_scale=real.scale, seed=int(cfg["seed"]) + 1)
            return replace(spec, job=d["metadata"]["name"])
        return PodSpec(job=d["metadata"]["name"], stage=sid, node=st["node"], attempt=int(st["attempt"]),
                       arch=st.get("arch") or "amd64", format=st.get("format") or "native", cpu=stage.compute.cpu,
                       mem_gb=stage.compute.mem_gb, duration_ms=float(ms) * float(cfg["timeScale"]),
                       nominal_ms=stage.compute.duration_ms)

    @staticmethod
    def _extra(d: Mapping[str, Any], st: Mapping[str, Any]) -> dict[str, Any]:
        meta = d["metadata"]
        return {"labels": {DTJOB_LABEL: label_value(meta["name"])},
                "annotations": {PLAN_VERSION_ANNOTATION: str(st["planVersion"])},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": False}]}

    def note(self, action: str, dtjob: str, **fields: Any) -> None:
        line = {"t": time.time(), "by": self.identity, "action": action, "dtjob": dtjob, **fields}
        log.info("%s %s %s", action, dtjob, json.dumps(fields, default=str, sort_keys=True))
        if self.record is not None:
            self.record.write(json.dumps(line, default=str, sort_keys=True) + "\n")
            self.record.flush()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fmt(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def twin_planner(kubeconfig: str, namespace: str, links_from: str | None = None) -> Callable[..., dict[str, Any]]:
    """The real planner: the twin on the state observed from the cluster right now (one LIST per plan)."""
    from ..kube.observed import observed_state
    from ..controller import planned_stage_ms
    from ..model import check_job_fits
    from ..twin import Twin

    def plan(d: Mapping[str, Any], job, cfg: Mapping[str, Any]) -> dict[str, Any]:
        from .. import policies
        policies.get(cfg["policy"])          # SpecError('policy', ...) for an unknown name
        state = observed_state(kubeconfig, namespace, links_from)
        snap = state.snapshot()
        try:
            check_job_fits(job, snap.cluster)
        except SpecError as exc:
            raise SpecError(exc.field.replace("spec.", "spec.job.", 1), exc.rule) from None
        twin = Twin(state)
        p = twin.plan(job, policy=cfg["policy"], samples=int(cfg["samples"]), seed=int(cfg["seed"]),
                      predictor=cfg["predictor"])
        shadow_formats = {}
        for sid, node in p.shadow.items():
            choice = twin.timing.exec_format(job.stages[job.stage_index[sid]], snap.nodes[node].node)
            if choice is not None:
                shadow_formats[sid] = choice[0]
        used = set(p.placement.values()) | set(p.shadow.values())
        return {"job": job.name, "policy": p.policy, "predictor": p.predictor, "samples": p.samples,
                "seed": int(cfg["seed"]), "placement": dict(p.placement), "shadow": dict(p.shadow),
                "formats": dict(p.formats), "shadowFormats": shadow_formats,
                "stageMs": {k: round(v, 3) for k, v in planned_stage_ms(job, p.placement, twin, snap).items()},
                "shadowStageMs": {k: round(v, 3) for k, v in planned_stage_ms(job, p.shadow, twin, snap).items()},
                "nodeArch": {n: snap.nodes[n].node.arch for n in sorted(used)},
                "prediction": {k: round(float(v), 3) for k, v in p.prediction.items() if v is not None and v == v},
                "stateVersion": int(p.state_version), "planMs": round(float(p.elapsed_ms), 2)}
    return plan
