"""Observer: list + watch nodes and dtlab pods, turned into :mod:`dtlab.state` events.

One thread per resource (nodes; pods labelled ``app.kubernetes.io/managed-by=dtlab`` in
the namespace) runs the informer pattern by hand: LIST (remember ``resourceVersion``),
then WATCH from it with bookmarks, always resuming from the newest version seen. A
dropped connection (apiserver restart, timeout) resumes the watch from that version
after a backoff; ``410 Gone`` (the version was compacted away) relists.

**No lost and no double-counted events.** Events are derived from *state transitions
per object*, not from watch event types: the observer keeps the last facts it reported
for every node (ready, cordoned) and every pod uid (started, ended). A relist is
diffed against those facts (objects missing from the list count as deleted), and the
same transition is never reported twice, so replays after a resume or a relist are
harmless and a change that happened while the watch was down is still reported once.

Node facts -> ``node-add`` (only for nodes the caller does not know yet), ``node-down`` /
``node-up`` (Ready condition), ``node-cordon`` / ``node-uncordon`` (``spec.unschedulable``),
``node-remove``. Pod phases -> ``stage-start`` (Running or later, once per pod) and
``stage-end`` (Succeeded -> ok, Failed -> not ok, deleted before finishing -> not ok
with ``reason``). Stage events carry ``pod``, ``attempt`` and ``reason`` besides the
state fields (ClusterState ignores extra keys; the kube substrate drives the DAG from
them).

**Timestamps and lag.** A transition seen live on the watch is stamped with the time it
was received (ms precision); one found by a relist is stamped with the object's own
time (pod ``startTime`` / container ``finishedAt``), because the receive time would be
late. ``clock(epoch_s)`` maps to the caller's clock (the substrate's seconds since start).
Observe lag = time the sink returned (event applied) minus the Kubernetes timestamp of the
transition; metav1.Time has 1 s resolution, so each lag is an upper bound within +1 s.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .actuator import ATTEMPT_LABEL, JOB_ANNOTATION, JOB_LABEL, MANAGED_BY, NAMESPACE, STAGE_ANNOTATION, \
    STAGE_LABEL

Sink = Callable[[list[dict[str, Any]]], None]
POD_KEYS = ("name", "job", "stage", "attempt", "node", "phase")   # what the observer keeps per pod


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


def watch_events(resp: Any) -> Iterator[tuple[str, dict]]:
    """``(type, object)`` of a raw (``_preload_content=False``) watch stream; an ERROR event with
    code 410 raises :class:`Gone` (relist), any other ERROR a RuntimeError. Shared by the observer
    and the trace recorder, so both read the watch protocol the same way."""
    from kubernetes.watch.watch import iter_resp_lines
    for line in iter_resp_lines(resp):
        if not line:
            continue
        ev = json.loads(line)
        typ, obj = ev.get("type"), ev.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", "410 Gone"))
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        yield typ, obj


def parse_time(value: Any) -> float | None:
    """RFC3339 (``2026-11-27T12:00:00Z``) -> epoch seconds; None if absent or unparsable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _quantity(value: Any, default: float) -> float:
    from kubernetes.utils import parse_quantity
    try:
        return float(parse_quantity(value))
    except (ValueError, TypeError):
        return default


def node_spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A dtlab Node spec dict from a v1 Node (labels written by localplane.node_manifest / NFD)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    cap = status.get("capacity") or {}
    cores = labels.get("dtlab.io/cores") or cap.get("cpu") or "1"
    formats = sorted(k[len("dtlab.io/format-"):] for k, v in labels.items()
                     if k.startswith("dtlab.io/format-") and v == "true") or ["native"]
    return {"name": meta["name"],
            "arch": labels.get("dtlab.io/arch") or labels.get("kubernetes.io/arch") or (status.get("nodeInfo") or {}).get("architecture", "amd64"),
            "cores": max(1, int(round(_quantity(cores, 1.0)))),
            "speed": float(labels.get("dtlab.io/speed", 1.0)),
            "mem_gb": round(_quantity(cap.get("memory", "8Gi"), 8 * 2**30) / 2**30, 3),
            "formats": formats,
            "zone": labels.get("topology.kubernetes.io/zone", "default")}


def node_facts(obj: Mapping[str, Any]) -> tuple[bool, bool]:
    """(ready, cordoned) of a v1 Node dict."""
    conds = (obj.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    return ready, bool((obj.get("spec") or {}).get("unschedulable"))


def pod_info(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a dtlab pod the observer needs (job/stage from the unsanitised annotations)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    labels, ann = meta.get("labels") or {}, meta.get("annotations") or {}
    started = finished = None
    report = None
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        run, term = state.get("running") or {}, state.get("terminated") or {}
        started = started or parse_time(run.get("startedAt")) or parse_time(term.get("startedAt"))
        finished = max(filter(None, [finished, parse_time(term.get("finishedAt"))]), default=None)
        report = report or worker_report(term.get("message"))
    return {"uid": meta.get("uid") or meta.get("name"), "name": meta.get("name"),
            "job": ann.get(JOB_ANNOTATION) or labels.get(JOB_LABEL),
            "stage": ann.get(STAGE_ANNOTATION) or labels.get(STAGE_LABEL),
            "attempt": int(labels.get(ATTEMPT_LABEL, 0) or 0),
            "node": spec.get("nodeName"), "phase": status.get("phase") or "Pending",
            "reason": status.get("reason"), "deleting": bool(meta.get("deletionTimestamp")),
            "start_ts": parse_time(status.get("startTime")) or started, "end_ts": finished,
            "worker": report, "container_started_ts": started}


def worker_report(message: str | None) -> dict[str, Any] | None:
    """The real worker's own report from its termination message (images/worker/launcher.c):
    ``{start_ts, end_ts}`` in epoch seconds with ns resolution, ``uname_m``, ``format``, ``exec``,
    ``exit``, the kernel's wall and CPU ms (``kernel_cpu_ms``: None where the kernel cannot read its CPU
    clock); None when the message is not one (KWOK pods, a crashed worker)."""
    if not message or "dtlab_worker" not in message:
        return None
    try:
        d = json.loads(message.strip().splitlines()[-1])
        out = {"start_ts": int(d["start_ns"]) / 1e9, "end_ts": int(d["end_ns"]) / 1e9,
               "uname_m": str(d.get("uname_m", "")), "format": d.get("format"), "exec": d.get("exec"),
               "exit": int(d.get("exit", -1))}
        if "fetch_ns" in d:     # inputs read over the pod network before the work (dtlab.kube.links)
            out.update(fetch_ms=int(d["fetch_ns"]) / 1e6, fetch_bytes=int(d.get("fetch_bytes", 0)),
                       fetch_failed=int(d.get("fetch_failed", 0)))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    k = d.get("kernel")
    if isinstance(k, dict):
        out["kernel_arch"] = k.get("arch")
        out["kernel_ms"] = k.get("wall_ms")
        cpu = k.get("cpu_ms")      # the kernel's own process CPU clock (-1 where unsupported, e.g. WASI)
        out["kernel_cpu_ms"] = float(cpu) if isinstance(cpu, (int, float)) and cpu > 0 else None
    return out


def _shutdown(resp: Any) -> None:
    import socket
    for path in (("_fp", "fp", "raw", "_sock"), ("_connection", "sock"), ("connection", "sock")):
        obj = resp
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, socket.socket):
            try:
                obj.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001
        pass


class Observer:
    """Watches one cluster and feeds ``sink(events)`` (e.g. ``ClusterState.apply_many``).

    ``known_nodes``: names the sink already knows (no ``node-add`` for them). ``core``: a
    CoreV1Api or a fake with ``list_node`` / ``list_namespaced_pod`` accepting
    ``watch``/``_preload_content`` like the official client; else built from ``kubeconfig``.
    """

    def __init__(self, kubeconfig: str | None = None, *, core: Any = None, sink: Sink,
                 namespace: str = NAMESPACE, known_nodes: Iterable[str] = (),
                 clock: Callable[[float], float] = lambda t: t, watch_timeout_s: int = 20,
                 backoff_s: float = 0.2, backoff_max_s: float = 2.0, pods: bool = True):
        if core is None:
            from kubernetes import client, config
            core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        self.core = core
        self.sink = sink
        self.namespace = namespace
        self.clock = clock
        self.watch_timeout_s = int(watch_timeout_s)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.kinds = ("nodes", "pods") if pods else ("nodes",)
        self._known = set(known_nodes)
        self._lock = threading.Lock()
        # Only the facts the twin uses are kept per object, never the v1 objects themselves (a KWOK
        # Node is ~20 kB as Python dicts: ~100 MB at 5,000 nodes; see benchmarks/bench_scale.py --observer).
        self._nodes: dict[str, tuple[bool, bool]] = {}     # name -> (ready, cordoned) reported
        self._pods: dict[str, dict[str, Any]] = {}          # uid -> POD_KEYS + started, ended, gone
        self._rv: dict[str, str | None] = {k: None for k in self.kinds}
        self._resp: dict[str, Any] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counters = {"lists": 0, "watches": 0, "gone": 0, "errors": 0, "events": 0, "sink_errors": 0,
                         "bookmarks": 0}
        self.last_error: str | None = None
        self._lags: list[float] = []
        self._synced = {k: threading.Event() for k in self.kinds}
        self._expected: dict[str, tuple[float, dict[str, Any]]] = {}   # pod name -> (registered, stage fields)

    # ------------------------------------------------------------ lifecycle
    def start(self, wait_s: float = 30.0) -> "Observer":
        """List nodes (then pods) synchronously, then watch both in background threads."""
        for kind in self.kinds:
            t = threading.Thread(target=self._run, args=(kind,), daemon=True, name=f"dtlab-observe-{kind}")
            self._threads.append(t)
            t.start()
            if not self._synced[kind].wait(wait_s):
                self.stop()
                from .actuator import KubeError
                raise KubeError(f"observe {kind}", f"initial list did not succeed within {wait_s:.0f}s: "
                                                   f"{self.last_error}")
        return self

    def list_once(self) -> "Observer":
        """One synchronous LIST of every resource (no watch): a snapshot for one-shot planning."""
        for kind in self.kinds:
            self._relist(kind)
        return self

    def stop(self) -> None:
        """Stop both threads now: shut the watch sockets down (a plain close does not wake a blocked read)."""
        self._stop.set()
        for resp in list(self._resp.values()):
            _shutdown(resp)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def expect(self, pod: str, job: str, stage: str, node: str | None, attempt: int = 0) -> None:
        """Register a pod the caller created. If a later relist neither finds it nor has ever seen it
        (created and deleted while the watch was down, then compacted away), a failed ``stage-end``
        with reason ``vanished`` is reported instead of waiting for it forever."""
        with self._lock:
            if not any(p["name"] == pod for p in self._pods.values()):
                self._expected[pod] = (time.time(), {"job": job, "stage": stage, "node": node, "pod": pod,
                                                     "attempt": attempt})

    # ------------------------------------------------------------ views
    def nodes(self) -> dict[str, dict[str, bool]]:
        """Last seen facts per node name: ``{"ready": bool, "cordoned": bool}`` (the v1 objects are not kept)."""
        with self._lock:
            return {n: {"ready": r, "cordoned": c} for n, (r, c) in self._nodes.items()}

    def lag_stats(self) -> dict[str, float]:
        """Observe lag (applied - Kubernetes timestamp of the transition), seconds: n, p50, p95, max."""
        with self._lock:
            lags = np.array(self._lags)
        if not len(lags):
            return {"n": 0, "p50_s": float("nan"), "p95_s": float("nan"), "max_s": float("nan")}
        return {"n": int(len(lags)), "p50_s": float(np.percentile(lags, 50)),
                "p95_s": float(np.percentile(lags, 95)), "max_s": float(lags.max())}

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "resource_versions": dict(self._rv), "lag": self.lag_stats()}

    # ------------------------------------------------------------ loop
    def _list_fn(self, kind: str):
        if kind == "nodes":
            return lambda **kw: self.core.list_node(**kw)
        return lambda **kw: self.core.list_namespaced_pod(self.namespace, label_selector=f"{MANAGED_BY}=dtlab", **kw)

    def _run(self, kind: str) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                if self._rv[kind] is None:
                    self._relist(kind)
                    self._synced[kind].set()
                self._watch(kind)
                delay = self.backoff_s
            except Gone:
                self.counters["gone"] += 1
                self._rv[kind] = None          # relist at once
            except Exception as exc:  # noqa: BLE001 - connection drops, 5xx: resume after a backoff
                if self._stop.is_set():
                    break
                self.counters["errors"] += 1
                self.last_error = f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"
                self._stop.wait(delay)
                delay = min(self.backoff_max_s, delay * 2)

    def _relist(self, kind: str) -> None:
        t_req = time.time()
        resp = self._list_fn(kind)(_preload_content=False, _request_timeout=10)
        data = json.loads(resp.data)
        self.counters["lists"] += 1
        items = data.get("items") or []
        recv = time.time()
        events: list[tuple[dict, float | None]] = []
        if kind == "nodes":
            seen = set()
            for obj in items:
                seen.add(obj["metadata"]["name"])
                events += self._node_change(obj, recv, live=False)
            for name in [n for n in self._nodes if n not in seen]:
                events += self._node_deleted(name, recv)
        else:
            seen = set()
            for obj in items:
                seen.add(obj["metadata"].get("uid"))
                events += self._pod_change(obj, recv, live=False)
            for uid in [u for u, p in self._pods.items() if u not in seen and not p.get("gone")]:
                events += self._pod_deleted(uid, recv, live=False)
            with self._lock:   # expected before this LIST was sent, never seen, not listed: it vanished
                for name in [n for n, (t, _) in self._expected.items() if t < t_req]:
                    base = self._expected.pop(name)[1]
                    events.append(({"kind": "stage-end", **base, "ok": False, "reason": "vanished", "ts": recv},
                                   None))
        self._rv[kind] = (data.get("metadata") or {}).get("resourceVersion")
        self._emit(events)

    def _watch(self, kind: str) -> None:
        resp = self._list_fn(kind)(watch=True, resource_version=self._rv[kind], allow_watch_bookmarks=True,
                                   timeout_seconds=self.watch_timeout_s, _preload_content=False,
                                   _request_timeout=(5, self.watch_timeout_s + 10))
        self._resp[kind] = resp
        self.counters["watches"] += 1
        try:
            if self._stop.is_set():     # stop() ran before the socket was registered
                return
            for typ, obj in watch_events(resp):
                if self._stop.is_set():
                    return
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if typ == "BOOKMARK":
                    self.counters["bookmarks"] += 1
                    self._rv[kind] = rv or self._rv[kind]
                    continue
                recv = time.time()
                if kind == "nodes":
                    evs = self._node_deleted(obj["metadata"]["name"], recv) if typ == "DELETED" \
                        else self._node_change(obj, recv, live=True)
                else:
                    evs = self._pod_deleted(obj["metadata"].get("uid"), recv, live=True, obj=obj) \
                        if typ == "DELETED" else self._pod_change(obj, recv, live=True)
                self._emit(evs)
                self._rv[kind] = rv or self._rv[kind]    # only after the event is applied
        finally:
            self._resp.pop(kind, None)
            try:
                resp.close()
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------ transitions
    def _node_change(self, obj: Mapping[str, Any], recv: float, live: bool) -> list[tuple[dict, float | None]]:
        name = obj["metadata"]["name"]
        ready, cordoned = node_facts(obj)
        out: list[tuple[dict, float | None]] = []
        with self._lock:
            prev = self._nodes.get(name)
            if prev is None:
                if name not in self._known:
                    try:
                        out.append(({"kind": "node-add", "node": node_spec(obj), "ts": recv}, None))
                    except (KeyError, ValueError, TypeError):
                        return out
                    self._known.add(name)
                prev = (True, False)      # ClusterState's defaults for a node it knows
            if ready != prev[0]:
                out.append(({"kind": "node-up" if ready else "node-down", "node": name, "ts": recv}, None))
            if cordoned != prev[1]:
                out.append(({"kind": "node-cordon" if cordoned else "node-uncordon", "node": name, "ts": recv},
                            None))
            self._nodes[name] = (ready, cordoned)
        return out

    def _node_deleted(self, name: str, recv: float) -> list[tuple[dict, float | None]]:
        with self._lock:
            if self._nodes.pop(name, None) is None:
                return []
            self._known.discard(name)
        return [({"kind": "node-remove", "node": name, "ts": recv}, None)]

    def _pod_change(self, obj: Mapping[str, Any], recv: float, live: bool) -> list[tuple[dict, float | None]]:
        info = pod_info(obj)
        if not info["job"] or not info["stage"]:
            return []
        out: list[tuple[dict, float | None]] = []
        base = {"job": info["job"], "stage": info["stage"], "node": info["node"], "pod": info["name"],
                "attempt": info["attempt"]}
        with self._lock:
            self._expected.pop(info["name"], None)
            rec = self._pods.get(info["uid"])
            if rec is None:
                rec = self._pods[info["uid"]] = {k: info[k] for k in POD_KEYS}
                rec.update(started=False, ended=False)
            rec.update(node=info["node"], phase=info["phase"])
            if info["phase"] in ("Running", "Succeeded", "Failed") and not rec["started"] and info["node"]:
                rec["started"] = True
                k8s_ts = info["start_ts"]
                ts = recv if live or k8s_ts is None else k8s_ts
                out.append(({"kind": "stage-start", **base, "ts": ts}, k8s_ts))
            if info["phase"] in ("Succeeded", "Failed") and not rec["ended"]:
                rec["ended"] = True
                k8s_ts = info["end_ts"]
                ts = recv if live or k8s_ts is None else k8s_ts
                end = {"kind": "stage-end", **base, "ok": info["phase"] == "Succeeded",
                       "reason": info["reason"] or info["phase"], "ts": ts}
                w = info.get("worker")
                if w:   # a real worker measured itself: its clock, not the 1-s container status times
                    end["worker"] = {**w, "start_ts": self.clock(w["start_ts"]), "end_ts": self.clock(w["end_ts"]),
                                     "container_started_ts": (self.clock(info["container_started_ts"])
                                                              if info.get("container_started_ts") else None),
                                     "pod_start_ts": self.clock(info["start_ts"]) if info.get("start_ts") else None}
                out.append((end, k8s_ts))
        return out

    def _pod_deleted(self, uid: str, recv: float, live: bool, obj: Mapping[str, Any] | None = None
                     ) -> list[tuple[dict, float | None]]:
        out: list[tuple[dict, float | None]] = []
        if obj is not None:     # the final state may carry a transition we have not reported yet
            out += self._pod_change(obj, recv, live)
        with self._lock:
            rec = self._pods.get(uid)
            if rec is None or rec.get("gone"):
                return out
            rec["gone"] = True
            if not rec["ended"]:
                rec["ended"] = True
                out.append(({"kind": "stage-end", "job": rec["job"], "stage": rec["stage"], "node": rec["node"],
                             "pod": rec["name"], "attempt": rec["attempt"], "ok": False, "reason": "deleted",
                             "ts": recv}, None))
        return out

    def _emit(self, events: list[tuple[dict, float | None]]) -> None:
        if not events:
            return
        batch = []
        for ev, _ in events:
            ev = dict(ev)
            ev["ts"] = self.clock(ev["ts"])
            batch.append(ev)
        try:
            self.sink(batch)
        except Exception as exc:  # noqa: BLE001 - a sink error must not kill the watch
            self.counters["sink_errors"] += 1
            self.last_error = f"sink: {type(exc).__name__}: {exc}"
        applied = time.time()
        with self._lock:
            self.counters["events"] += len(batch)
            self._lags += [applied - k for _, k in events if k is not None]
