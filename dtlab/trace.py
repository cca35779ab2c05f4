"""Record what a Kubernetes cluster did (list + watch), and replay it offline through the twin.

**Recording** (:func:`record`): one thread per resource (nodes; pods, all namespaces or one)
LISTs, remembers the list's ``resourceVersion`` and WATCHes from it with bookmarks, always
resuming from the newest version seen; ``410 Gone`` relists (marked in the trace). It stops
after ``duration_s``. The official ``kubernetes`` client does the HTTP.

**Trace format** ``dtlab-trace/v1``: JSON Lines, one record per line.

* line 1, the header: ``{"format": "dtlab-trace/v1", "server": URL, "namespace": NS or null,
  "started_s": epoch seconds, "duration_s": S}``
* then records ``{"t": seconds since started_s, "resource": "nodes"|"pods", "type": T,
  "resourceVersion": RV, "object": OBJ}`` with ``T`` one of
  ``LISTED`` (an object of a LIST; ``RELIST`` records precede the items of a relist after 410),
  ``SYNCED`` (the LIST's own resourceVersion, no object), ``ADDED`` / ``MODIFIED`` / ``DELETED``
  (watch events, in the order received);
* the last line ``{"type": "END", "t": S, "counters": {...}}``.

``OBJ`` is the API object trimmed to what replay and users need (name, namespace, uid, labels,
annotations, creation/deletion timestamps and resourceVersion; for nodes capacity, allocatable,
conditions, unschedulable, architecture; for pods nodeName, nodeSelector, container requests,
phase, startTime, conditions and container states), so the file stays small and keeps no
secrets (no env, no volumes, no images' pull secrets).

**Replay** (:func:`replay`): the recorded nodes become the twin's cluster
(:func:`dtlab.kube.observer.node_spec`: cores, arch, zone, ``dtlab.io/speed``, formats); every
recorded pod becomes a one-stage job with its recorded requests and duration
(:func:`dtlab.extender.pod_to_job`: ``dtlab.io/duration-ms``, else 1 s) arriving at its
recorded creation time. Each arrival is planned by ``policy`` on the twin's state, which
carries the replayed pods still running (a job-submit + stage-start per placement, a stage-end
when its predicted p50 has elapsed). The result has, per pod, the recorded node and the
replayed one, and the twin's predicted latency for both placements. With ``substrate="kube"``
the same arrivals go onto a live cluster with the recorded nodes through the controller (pods
created, observed to completion).
"""
from __future__ import annotations

import heapq
import json
from dataclasses import replace
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import SpecError
from .kube.observer import Gone, watch_events

FORMAT = "dtlab-trace/v1"
RECORD_TYPES = ("LISTED", "RELIST", "SYNCED", "ADDED", "MODIFIED", "DELETED")


# ------------------------------------------------------------------ trimming
def _pick(d: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, Any]:
    d = d or {}
    return {k: d[k] for k in keys if d.get(k) is not None}


def trim(resource: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a Node / Pod object a trace keeps (see the module docstring)."""
    meta = _pick(obj.get("metadata"), ("name", "namespace", "uid", "labels", "annotations", "creationTimestamp",
                                        "deletionTimestamp", "resourceVersion"))
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if resource == "nodes":
        return {"metadata": meta, "spec": _pick(spec, ("unschedulable",)),
                "status": {**_pick(status, ("capacity", "allocatable", "conditions")),
                           "nodeInfo": _pick(status.get("nodeInfo"), ("architecture",))}}
    containers = [{"name": c.get("name"), "resources": _pick(c.get("resources"), ("requests", "limits"))}
                  for c in spec.get("containers") or []]
    return {"metadata": meta,
            "spec": {**_pick(spec, ("nodeName", "nodeSelector", "schedulerName")), "containers": containers},
            "status": _pick(status, ("phase", "reason", "startTime", "conditions", "containerStatuses"))}


# ------------------------------------------------------------------ recording
class Recorder:
    """List + watch nodes and pods into a trace file; :meth:`run` blocks for ``duration_s``."""

    def __init__(self, core: Any, out: str | Path, duration_s: float, namespace: str | None = None,
                 server: str = "", watch_timeout_s: float = 30.0):
        if not duration_s > 0:
            raise SpecError("--duration", f"must be > 0 seconds, got {duration_s}")
        self.core, self.out, self.duration_s, self.namespace = core, Path(out), float(duration_s), namespace
        self.server, self.watch_timeout_s = server, watch_timeout_s
        self.counters = {"records": 0, "lists": 0, "watches": 0, "gone": 0, "errors": 0, "bookmarks": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rv: dict[str, str | None] = {"nodes": None, "pods": None}
        self.last_error: str | None = None

    def _list_fn(self, kind: str):
        if kind == "nodes":
            return lambda **kw: self.core.list_node(**kw)
        if self.namespace:
            return lambda **kw: self.core.list_namespaced_pod(self.namespace, **kw)
        return lambda **kw: self.core.list_pod_for_all_namespaces(**kw)

    def _write(self, rec: dict[str, Any]) -> None:
        rec = {"t": round(time.time() - self.started, 6), **rec}
        line = json.dumps(rec, separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._fh.write(line + "\n")
            self.counters["records"] += 1

    def _relist(self, kind: str, again: bool) -> None:
        resp = self._list_fn(kind)(_preload_content=False, _request_timeout=15)
        data = json.loads(resp.data)
        self.counters["lists"] += 1
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if again:
            self._write({"resource": kind, "type": "RELIST", "resourceVersion": rv})
        for obj in data.get("items") or []:
            self._write({"resource": kind, "type": "LISTED",
                         "resourceVersion": (obj.get("metadata") or {}).get("resourceVersion"),
                         "object": trim(kind, obj)})
        self._write({"resource": kind, "type": "SYNCED", "resourceVersion": rv})
        self._rv[kind] = rv

    def _watch(self, kind: str, deadline: float) -> None:
        timeout = max(1, int(min(self.watch_timeout_s, deadline - time.time()) + 0.999))
        resp = self._list_fn(kind)(watch=True, resource_version=self._rv[kind], allow_watch_bookmarks=True,
                                   timeout_seconds=timeout, _preload_content=False, _request_timeout=(5, timeout + 10))
        self.counters["watches"] += 1
        try:
            for typ, obj in watch_events(resp):
                if self._stop.is_set() or time.time() >= deadline:
                    return
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if typ == "BOOKMARK":
                    self.counters["bookmarks"] += 1
                else:
                    self._write({"resource": kind, "type": typ, "resourceVersion": rv, "object": trim(kind, obj)})
                self._rv[kind] = rv or self._rv[kind]
        finally:
            try:
                resp.close()
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass

    def _run(self, kind: str, deadline: float) -> None:
        listed = False
        while not self._stop.is_set() and time.time() < deadline:
            try:
                if self._rv[kind] is None:
                    self._relist(kind, again=listed)
                    listed = True
                self._watch(kind, deadline)
            except Gone:
                self.counters["gone"] += 1
                self._rv[kind] = None
            except Exception as exc:  # noqa: BLE001 - connection drops: resume from the last version
                self.counters["errors"] += 1
                self.last_error = f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"
                self._stop.wait(min(1.0, max(0.0, deadline - time.time())))

    def run(self) -> dict[str, int]:
        self.started = time.time()
        deadline = self.started + self.duration_s
        self.out.parent.mkdir(parents=True, exist_ok=True)
        # line-buffered: each record is on disk when written, so a reader (or a crash) sees every
        # line so far; block buffering held a short trace's lines until the end of the recording
        with open(self.out, "w", buffering=1) as self._fh:
            self._fh.write(json.dumps({"format": FORMAT, "server": self.server, "namespace": self.namespace,
                                       "started_s": self.started, "duration_s": self.duration_s}) + "\n")
            threads = [threading.Thread(target=self._run, args=(k, deadline), daemon=True, name=f"trace-{k}")
                       for k in ("nodes", "pods")]
            for th in threads:
                th.start()
            for th in threads:
                th.join(self.duration_s + self.watch_timeout_s + 30)
            self._stop.set()
            with self._lock:
                self._fh.write(json.dumps({"type": "END", "t": round(time.time() - self.started, 6),
                                           "counters": self.counters}) + "\n")
        return dict(self.counters)


def record(kubeconfig: str | None, duration_s: float, out: str | Path, namespace: str | None = None) -> dict:
    """Record nodes and pods of the cluster behind ``kubeconfig`` for ``duration_s`` into ``out``."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    if not duration_s > 0:
        raise SpecError("--duration", f"must be > 0 seconds, got {duration_s}")
    if kubeconfig is not None and not Path(kubeconfig).exists():
        raise SpecError("--kubeconfig", f"file not found: {kubeconfig}")
    try:
        api = config.new_client_from_config(config_file=kubeconfig)
    except ConfigException as exc:
        raise SpecError("--kubeconfig", f"no usable kubeconfig: {exc}") from None
    rec = Recorder(client.CoreV1Api(api), out, duration_s, namespace, server=api.configuration.host)
    counters = rec.run()
    if rec.counters["lists"] == 0:
        raise SpecError("--kubeconfig", f"could not list the cluster at {api.configuration.host}: {rec.last_error}")
    return counters


# ------------------------------------------------------------------ reading
def read_trace(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, records) of a trace file; a file that is not one is an error naming the line."""
    p = Path(path)
    if not p.exists():
        raise SpecError(str(p), "file not found")
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    with open(p) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{p}:{i}", f"not JSON: {exc.msg}") from None
            if header is None:
                if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                    raise SpecError(f"{p}:1", f"not a {FORMAT} trace (first line must be its header)")
                header = rec
                continue
            if rec.get("type") == "END":
                continue
            if rec.get("type") not in RECORD_TYPES or rec.get("resource") not in ("nodes", "pods"):
                raise SpecError(f"{p}:{i}", f"unknown record type {rec.get('type')!r} / resource {rec.get('resource')!r}")
            records.append(rec)
    if header is None:
        raise SpecError(str(p), "empty trace")
    return header, records


def objects(records: list[dict[str, Any]], resource: str) -> dict[str, list[tuple[float, str, dict]]]:
    """Per object key (pod uid / node name): its (t, type, object) history in trace order."""
    out: dict[str, list[tuple[float, str, dict]]] = {}
    for rec in records:
        if rec["resource"] != resource or "object" not in rec:
            continue
        meta = rec["object"].get("metadata") or {}
        key = meta.get("uid") or meta.get("name") if resource == "pods" else meta.get("name")
        out.setdefault(key, []).append((float(rec["t"]), rec["type"], rec["object"]))
    return out


def recorded_cluster(records: list[dict[str, Any]], name: str = "recorded"):
    """The twin's Cluster from the recorded nodes (last state of each node seen)."""
    from .kube.observer import node_spec
    from .model import cluster_from_dict

    nodes = [node_spec(hist[-1][2]) for hist in objects(records, "nodes").values()]
    if not nodes:
        raise SpecError("trace", "records no nodes")
    return cluster_from_dict({"metadata": {"name": name}, "nodes": nodes})


def recorded_pods(header: Mapping[str, Any], records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per recorded pod: arrival (s since the trace start), node, requests, duration, run time."""
    from .extender import pod_to_job
    from .kube.observer import parse_time, pod_info

    t0 = float(header["started_s"])
    rows = []
    for uid, hist in objects(records, "pods").items():
        first, last = hist[0][2], hist[-1][2]
        node = next((o.get("spec", {}).get("nodeName") for _, _, o in reversed(hist)
                     if o.get("spec", {}).get("nodeName")), None)
        created = parse_time((first.get("metadata") or {}).get("creationTimestamp"))
        info = pod_info(last)
        job = pod_to_job(last)
        stage = job.stages[0]
        rows.append({"uid": uid, "namespace": (first.get("metadata") or {}).get("namespace"),
                     "pod": (first.get("metadata") or {}).get("name"),
                     "arrival_s": (created - t0) if created is not None else hist[0][0],
                     "first_seen_s": hist[0][0], "seen_as": hist[0][1], "transitions": len(hist),
                     "recorded_node": node, "phase": info["phase"], "cpu": stage.compute.cpu,
                     "mem_gb": stage.compute.mem_gb, "duration_ms": stage.compute.duration_ms,
                     "recorded_run_ms": ((info["end_ts"] - info["start_ts"]) * 1e3
                                         if info["end_ts"] and info["start_ts"] else np.nan)})
    df = pd.DataFrame(rows)
    return df.sort_values(["arrival_s", "pod"], kind="stable").reset_index(drop=True) if len(df) else df


# ------------------------------------------------------------------ replay
def replay(path: str | Path, policy: str = "greedy", substrate: str = "sim", samples: int = 128,
           seed: int = 0, kubeconfig: str | None = None) -> pd.DataFrame:
    """Replay the recorded arrivals with ``policy``; one row per pod (module docstring).

    ``substrate="sim"``: through the twin alone. ``"kube"``: onto the cluster behind ``kubeconfig``
    (which must have the recorded nodes, e.g. the local plane started from the same spec): the
    controller plans each arrival with the twin and creates its pod there, in wall-clock time at
    the recorded arrival offsets; the rows add ``observed_ms`` and ``ok`` from the cluster (on
    KWOK nodes a pod's run time is the delay the twin wrote, not a measurement).
    """
    from . import policies
    from .extender import pod_to_job
    from .state import ClusterState
    from .twin import Twin

    if substrate not in ("sim", "kube"):
        raise SpecError("--substrate", f"must be sim or kube, got {substrate!r}")
    policies.get(policy)
    header, records = read_trace(path)
    cluster = recorded_cluster(records)
    pods = recorded_pods(header, records)
    if substrate == "kube":
        return _replay_kube(cluster, pods, records, policy, samples, seed, kubeconfig)
    last_obj = {uid: hist[-1][2] for uid, hist in objects(records, "pods").items()}
    state = ClusterState(cluster)
    twin = Twin(state)
    running: list[tuple[float, int, str]] = []   # (predicted end, order, job) of replayed pods
    placed: dict[str, str] = {}
    out = []
    for i, row in enumerate(pods.itertuples(index=False)):
        t = max(float(row.arrival_s), 0.0)
        while running and running[0][0] <= t:
            end, _, name = heapq.heappop(running)
            state.apply({"kind": "stage-end", "job": name, "stage": "main", "node": placed[name], "ts": end})
        job = pod_to_job(last_obj[row.uid])
        job = replace(job, name=f"{row.pod}#{i}")
        res: dict[str, Any] = {"pod": row.pod, "namespace": row.namespace, "arrival_s": row.arrival_s,
                               "recorded_node": row.recorded_node, "cpu": row.cpu, "duration_ms": row.duration_ms,
                               "recorded_run_ms": row.recorded_run_ms}
        try:
            plan = twin.plan(job, policy=policy, samples=samples, seed=seed + i)
        except Exception as exc:  # noqa: BLE001 - infeasible on the recorded nodes: reported, not fatal
            res.update(replayed_node=None, error=f"{type(exc).__name__}: {exc}")
            out.append(res)
            continue
        node = plan.placement["main"]
        res.update(replayed_node=node, replayed_p50_ms=plan.prediction["p50_ms"],
                   replayed_p95_ms=plan.prediction["p95_ms"])
        if row.recorded_node in cluster.by_name:
            try:
                pr = twin.predict(job, {"main": row.recorded_node}, samples=samples, seed=seed + i)
                res.update(recorded_p50_ms=pr["p50_ms"], recorded_p95_ms=pr["p95_ms"])
            except SpecError as exc:
                res["error"] = f"recorded placement: {exc}"
        state.apply_many([{"kind": "job-submit", "job": job.name, "stage_cpu": {"main": job.stages[0].compute.cpu},
                           "stage_ms": {"main": plan.prediction["p50_ms"]}, "ts": t},
                          {"kind": "stage-start", "job": job.name, "stage": "main", "node": node, "ts": t}])
        placed[job.name] = node
        heapq.heappush(running, (t + plan.prediction["p50_ms"] / 1e3, i, job.name))
        out.append(res)
    df = pd.DataFrame(out)
    for col in ("replayed_node", "replayed_p50_ms", "replayed_p95_ms", "recorded_p50_ms", "recorded_p95_ms", "error"):
        if col not in df:
            df[col] = np.nan
    df["same_node"] = df["recorded_node"] == df["replayed_node"]
    return df


def _replay_kube(cluster, pods: pd.DataFrame, records, policy: str, samples: int, seed: int,
                 kubeconfig: str | None) -> pd.DataFrame:
    from .controller import Controller
    from .extender import pod_to_job
    from .substrates import make_substrate
    from .twin import Twin

    if kubeconfig is None or not Path(kubeconfig).exists():
        raise SpecError("--kubeconfig", f"replay onto kube needs the cluster's kubeconfig (got {kubeconfig!r})")
    if not len(pods):
        return pd.DataFrame(columns=["pod", "recorded_node", "replayed_node", "same_node"])
    last_obj = {uid: hist[-1][2] for uid, hist in objects(records, "pods").items()}
    t0 = float(pods["arrival_s"].min())
    stream = []
    for i, row in enumerate(pods.itertuples(index=False)):
        job = replace(pod_to_job(last_obj[row.uid]), name=f"replay-{i}")
        stream.append(((float(row.arrival_s) - t0) * 1000.0, job))
    from kubernetes import client, config
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    missing = sorted(set(cluster.by_name) - {n.metadata.name for n in core.list_node().items})
    if missing:
        raise SpecError("--kubeconfig", f"the cluster lacks recorded nodes {missing[:5]}")
    with make_substrate("kube", cluster, kubeconfig=kubeconfig, start_plane=False, seed=seed) as sub:
        ctl = Controller(Twin(cluster), sub, policy=policy, samples=samples)
        df = ctl.run_workload(stream)
    df = df.set_index("job")
    out = []
    for i, row in enumerate(pods.itertuples(index=False)):
        r = df.loc[f"replay-{i}"] if f"replay-{i}" in df.index else None
        placement = dict(kv.split("=", 1) for kv in str(r["placement"]).split(",") if "=" in kv) if r is not None else {}
        out.append({"pod": row.pod, "namespace": row.namespace, "arrival_s": row.arrival_s,
                    "recorded_node": row.recorded_node, "cpu": row.cpu, "duration_ms": row.duration_ms,
                    "recorded_run_ms": row.recorded_run_ms, "replayed_node": placement.get("main"),
                    "replayed_p50_ms": r["pred_p50_ms"] if r is not None else np.nan,
                    "replayed_p95_ms": r["pred_p95_ms"] if r is not None else np.nan,
                    "observed_ms": r.get("latency_ms", np.nan) if r is not None else np.nan,
                    "ok": bool(r["ok"]) if r is not None else False})
    res = pd.DataFrame(out)
    res["same_node"] = res["recorded_node"] == res["replayed_node"]
    for col in ("recorded_p50_ms", "recorded_p95_ms"):
        res[col] = np.nan
    return res
