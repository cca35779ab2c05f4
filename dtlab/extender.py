"""Kubernetes scheduler extender backed by the twin's predictions.

kube-scheduler (KubeSchedulerConfiguration ``extenders``) POSTs ``ExtenderArgs``
(``{"Pod": ..., "Nodes": {"items": [...]}}`` or ``"NodeNames": [...]`` when
``nodeCacheCapable``) to ``/extender/filter`` and ``/extender/prioritize``.
Filter drops nodes the twin knows cannot run the pod (down, cordoned, unknown,
arch/format/resources); prioritize scores the rest 0..10 from the predicted
mean latency of the pod as a one-stage job on that node, so the scheduler binds
where the twin predicts the pod finishes first. Every decision carries a
per-node explanation: logged, returned to the caller, and (when a Kubernetes
client is given) written to the pod as the ``dtlab.io/explanation`` annotation.

**Input.** Bodies go through the strict JSON reader (``dtlab.strict_json``); every field the
extender reads is checked here (:func:`check_args`, :func:`pod_to_job`) and a malformed one is a
400 ``{"Error": "<field path>: <rule>"}``, never a 500. ``NodeNames``/``Nodes.items`` hold at
most ``max_nodes`` entries (default: the larger of 5,000 and twice the twin's node count);
with ``nodeCacheCapable: true`` the scheduler sends only names, never node objects.

**Caller authentication.** kube-scheduler's extender config can set ``urlPrefix`` and
``tlsConfig`` but no request headers, so a bearer token is impossible. Client certificates
(mutual TLS) need a TLS listener, and the API's port is plain HTTP; so on that port
``dtlab serve --extender`` mounts the routes under a secret path prefix,
``/extender/<DTLAB_EXTENDER_SECRET>/filter``: the scheduler's ``urlPrefix`` carries the secret,
a caller without it gets 404, and the secret is compared in constant time. Without a secret the
routes stay at ``/extender/...`` only with ``--insecure-dev``. Stronger, and the choice when the
scheduler is on another host: ``--extender-tls-cert/--extender-tls-key/--extender-client-ca``
serve the routes on their own port over mutual TLS (``dtlab.api.tls``, stdlib ``ssl``): the
scheduler's ``tlsConfig`` presents a client certificate signed by that CA, nothing else gets
through the handshake, and the plain port no longer serves the extender at all.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import time
from itertools import compress
from json.encoder import encode_basestring_ascii
from operator import getitem
from typing import Any, Callable

import numpy as np
from flask import Blueprint, Response, abort, jsonify, request

from . import strict_json
from .errors import SpecError
from .model import ARCHES, Compute, Constraints, Job, Stage
from .spec_reader import check_number
from .strict_json import short

log = logging.getLogger("dtlab.extender")
MAX_PRIORITY = 10
DURATION_ANNOTATION = "dtlab.io/duration-ms"
EXPLANATION_ANNOTATION = "dtlab.io/explanation"
UNKNOWN = "unknown to the twin"
FORMAT_LABEL = "dtlab.io/format"


def _mapping(parent: dict, key: str, path: str) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}.{key}", f"must be an object, got {short(value)}")
    return value


def _list(parent: dict, key: str, path: str) -> list:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{path}.{key}", f"must be an array, got {short(value)}")
    return value


def pod_to_job(pod: dict[str, Any]) -> Job:
    """A pod as a one-stage Job: cpu/memory from requests, duration from the dtlab annotation (default 1 s).

    Every field read is checked (SpecError with the ``Pod.`` field path): the scheduler sends
    what the API server stored, but the extender must not trust its caller."""
    if not isinstance(pod, dict):
        raise SpecError("Pod", f"must be an object, got {short(pod)}")
    meta = _mapping(pod, "metadata", "Pod")
    spec = _mapping(pod, "spec", "Pod")
    annotations = _mapping(meta, "annotations", "Pod.metadata")
    labels = _mapping(meta, "labels", "Pod.metadata")
    name = meta.get("name") or "pod"
    if not isinstance(name, str):
        raise SpecError("Pod.metadata.name", f"must be a string, got {short(name)}")
    cpu = mem_gb = 0.0
    for i, c in enumerate(_list(spec, "containers", "Pod.spec")):
        path = f"Pod.spec.containers[{i}]"
        if not isinstance(c, dict):
            raise SpecError(path, f"must be an object, got {short(c)}")
        req = _mapping(_mapping(c, "resources", path), "requests", path + ".resources")
        cpu += _quantity(parse_cpu, req.get("cpu", "0"), path + ".resources.requests.cpu")
        mem_gb += _quantity(parse_mem_gb, req.get("memory", "0"), path + ".resources.requests.memory")
    raw = annotations.get(DURATION_ANNOTATION, 1000)
    where = f"Pod.metadata.annotations.{DURATION_ANNOTATION}"
    try:
        duration = float(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else None
    except (ValueError, OverflowError):
        duration = None
    if duration is None:
        raise SpecError(where, f"must be a number of ms, got {short(raw)}")
    duration = check_number(duration, where, gt=0)
    selector = _mapping(spec, "nodeSelector", "Pod.spec")
    arch = selector.get("kubernetes.io/arch")
    fmt = labels.get(FORMAT_LABEL)
    # A nodeSelector on kubernetes.io/arch pins the node's arch, i.e. native execution there,
    # unless the pod says it is an emulated or wasm worker (dtlab.io/format label).
    if fmt in ("native", "qemu", "wasm"):
        formats = (fmt,)
    else:
        formats = ("native",) if arch in ARCHES else None
    constraints = Constraints(arch=(arch,) if arch in ARCHES and fmt != "qemu" else None, formats=formats)
    stage = Stage(id="main", compute=Compute(cpu=max(cpu, 0.1), mem_gb=mem_gb, duration_ms=max(duration, 1.0)),
                  constraints=constraints)
    return Job(name=name, stages=(stage,))


def _quantity(parse, value: Any, path: str) -> float:
    """A resource quantity (``"500m"``, ``"2Gi"``, a number) as a finite float within range."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or len(str(value)) > 40:
        raise SpecError(path, f"must be a Kubernetes quantity, got {short(value)}")
    try:
        number = parse(value)
    except (ValueError, OverflowError):
        raise SpecError(path, f"must be a Kubernetes quantity, got {short(value)}") from None
    return check_number(number, path, ge=0)


def parse_cpu(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text or 0)


def parse_mem_gb(value: Any) -> float:
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix] / 2**30
    return float(text or 0) / 2**30


def check_args(args: Any, max_nodes: int) -> list[str]:
    """Validate ``ExtenderArgs`` and return the candidate node names (SpecError with the field path)."""
    if not isinstance(args, dict):
        raise SpecError("body", "must be an ExtenderArgs object")
    if "Pod" not in args or not isinstance(args["Pod"], dict):
        raise SpecError("Pod", f"is required: a Pod object, got {short(args.get('Pod'))}")
    if args.get("NodeNames") is not None:
        names, path = args["NodeNames"], "NodeNames"
        if not isinstance(names, list):
            raise SpecError(path, f"must be an array of node names, got {short(names)}")
    else:
        nodes = _mapping(args, "Nodes", "")
        items = _list(nodes, "items", "Nodes")
        path = "Nodes.items"
        names = []
        for i, n in enumerate(items[: max_nodes + 1]):
            meta = n.get("metadata") if isinstance(n, dict) else None
            if not isinstance(meta, dict):
                raise SpecError(f"{path}[{i}].metadata", "is required: an object with the node name")
            names.append(meta.get("name"))
        names += [None] * max(0, len(items) - len(names))
    if len(names) > max_nodes:
        raise SpecError(path, f"at most {max_nodes:,} nodes per call (got {len(names):,}); "
                              "use nodeCacheCapable: true or raise --extender-max-nodes")
    # fast path, C loops only (a 1,000-name call is ~0.1 ms instead of ~0.2): every name a valid string
    if not names or (set(map(type, names)) == {str} and 0 < min(map(len, names)) and max(map(len, names)) <= 253):
        return names
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name or len(name) > 253:
            raise SpecError(f"{path}[{i}]" + ("" if path == "NodeNames" else ".metadata.name"),
                            f"must be a node name, got {short(name)}")
    return names


def candidate_names(args: dict[str, Any]) -> list[str]:
    if args.get("NodeNames") is not None:
        return list(args["NodeNames"])
    items = ((args.get("Nodes") or {}).get("items")) or []
    return [((n.get("metadata") or {}).get("name")) for n in items]


class Extender:
    def __init__(self, twin, samples: int = 64, annotate: Callable[[dict, dict], None] | None = None,
                 max_nodes: int | None = None):
        self.twin = twin
        self.samples = samples
        self.annotate = annotate  # (pod, explanation) -> None; e.g. a kubernetes client patch
        self._max_nodes = max_nodes
        self._tables: dict[tuple, _PodTable] = {}
        self._frags: dict[str, tuple[str, ...]] = {}   # node name -> its prioritize JSON per score 0..10

    @property
    def max_nodes(self) -> int:
        """Names per call: at least the twin's node count (so a full cluster always fits)."""
        n = len(self.twin.state.snapshot().nodes)
        return max(self._max_nodes or max(5000, 2 * n), n)

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        names = check_args(args, self.max_nodes)
        job = pod_to_job(args.get("Pod") or {})
        table = self._table(job)
        get = table.verdict.get
        keep = list(compress(names, map(table.ok.__contains__, names)))
        failed = {n: get(n, UNKNOWN) for n in names if get(n, UNKNOWN) is not None} if len(keep) < len(names) else {}
        if log.isEnabledFor(logging.DEBUG):
            log.debug("filter pod=%s keep=%s failed=%s", job.name, keep, failed)
        log.info("filter pod=%s kept %d of %d nodes", job.name, len(keep), len(keep) + len(failed))
        return self._nodes_result(args, keep, failed)

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """``HostPriorityList``: every candidate with its 0..10 score (0 for nodes the twin cannot place)."""
        names, scores = self._priorities(args)
        return [{"Host": n, "Score": s} for n, s in zip(names, scores)]

    def prioritize_json(self, args: dict[str, Any]) -> str:
        """:meth:`prioritize` as compact JSON, built from per-node fragments (what the route sends).

        Why: at 1,000 nodes, building 1,000 dicts and encoding them cost ~2 ms of a ~2.3 ms call
        (cProfile of the extender's HTTP path); the fragments ``{"Host":"<name>","Score":<s>}``
        for the eleven scores are built once per node name and joined."""
        names, scores = self._priorities(args)
        return "[" + ",".join(map(getitem, self._fragments(names), scores)) + "]"

    def _fragments(self, names: list[str]) -> list[tuple[str, ...]]:
        frags = self._frags
        out: list[Any] = list(map(frags.get, names))
        if None in out:   # names seen for the first time (bounded: cleared past 4x the nodes per call)
            if len(frags) > 4 * self.max_nodes:
                frags.clear()
            for i, name in enumerate(names):
                if out[i] is None:
                    host = encode_basestring_ascii(name)
                    out[i] = frags[name] = tuple(f'{{"Host":{host},"Score":{s}}}' for s in range(MAX_PRIORITY + 1))
        return out

    def _priorities(self, args: dict[str, Any]) -> tuple[list[str], list[int]]:
        """The candidate names and their scores (:func:`score_from_latency` over the nodes the
        twin can place the pod on, vectorised; 0 for the others)."""
        names = check_args(args, self.max_nodes)
        pod = args.get("Pod") or {}
        job = pod_to_job(pod)
        table = self._table(job)
        vals = table.means[list(map(table.index.__getitem__, names))] if names else np.empty(0)
        known = ~np.isnan(vals)
        if not known.any():
            return names, [0] * len(names)
        lo, hi = vals[known].min(), vals[known].max()
        if hi - lo < 1e-9:
            scores = np.where(known, MAX_PRIORITY, 0)
        else:    # the rounding of score_from_latency: int(round(x)) and np.rint both round half to even
            scores = np.where(known, np.rint(MAX_PRIORITY * (hi - np.where(known, vals, hi)) / (hi - lo)), 0)
        score_list = scores.astype(int).tolist()
        best = int(np.nanargmin(vals))
        log.info("prioritize pod=%s %d nodes scored, best %s (%.1f ms)", job.name, int(known.sum()), names[best],
                 vals[best])
        debug = log.isEnabledFor(logging.DEBUG)
        if self.annotate is not None or debug:   # the per-node explanation, built when someone reads it
            explanation = {n: {"predicted_mean_ms": round(float(v), 1), "score": sc}
                           for n, v, sc in zip(names, vals.tolist(), score_list) if math.isfinite(v)}
            if debug:
                log.debug("prioritize pod=%s %s", job.name, json.dumps(explanation, sort_keys=True))
            if self.annotate is not None and explanation:
                try:
                    self.annotate(pod, explanation)
                except Exception as exc:  # an explanation must never block scheduling
                    log.warning("could not annotate pod %s: %s", job.name, exc)
        return names, score_list

    def _table(self, job: Job) -> "_PodTable":
        """The filter verdicts and predicted means of pods shaped like ``job`` on the current snapshot.

        Why cached: the scheduler calls filter then prioritize for every pod, and pods of one
        workload share their shape (requests, duration, constraints); the answer only changes when
        the twin's state does. Keyed by the stage (the job name does not enter the prediction) and
        valid while the snapshot is the state's current one."""
        snap = self.twin.state.snapshot()
        key = (job.stages, self.samples)
        hit = self._tables.get(key)
        if hit is not None and hit.snapshot is snap:
            return hit
        table = _PodTable(snap, job, self.twin.timing, self.samples)
        if len(self._tables) >= 64:
            self._tables.clear()
        self._tables[key] = table
        return table

    @staticmethod
    def _nodes_result(args, keep, failed):
        if args.get("NodeNames") is not None:
            return {"NodeNames": keep, "FailedNodes": failed, "Error": ""}
        kept = set(keep)
        items = [n for n in (args.get("Nodes") or {}).get("items", []) if n["metadata"]["name"] in kept]
        return {"Nodes": {"items": items}, "FailedNodes": failed, "Error": ""}


class _PodTable:
    """Per (pod shape, snapshot): every node's filter verdict and the twin's predicted mean latency.

    ``verdict[name]``: None (the pod can run there) or the reason it cannot, as the per-node
    checks read (down, cordoned, arch/format/resources). ``mean_ms[name]``: for schedulable,
    feasible nodes, the mean of ``twin.predict(job, {"main": name}, predictor="fast",
    samples=samples, seed=0)`` computed for all nodes at once (:func:`one_stage_means`)."""

    def __init__(self, snap: Any, job: Job, timing: Any, samples: int):
        from .predict import node_table, stage_table
        self.snapshot = snap
        nt = node_table(snap)
        st = stage_table(snap, job, timing)
        feasible = st.feasible[0]
        ok = feasible & nt.schedulable
        reasons = np.where(~nt.up, 1, np.where(~nt.schedulable, 2, np.where(~feasible, 3, 0)))
        text = (None, "down in the twin's state", "cordoned", "cannot run the pod (arch/format/resources)")
        self.verdict: dict[str, str | None] = {n: text[r] for n, r in zip(nt.static.names, reasons.tolist())}
        means = one_stage_means(nt, st, job, timing, samples, ok)
        self.mean_ms: dict[str, float] = {nt.static.names[i]: float(means[i]) for i in np.flatnonzero(ok).tolist()}
        self.ok = frozenset(n for n, v in self.verdict.items() if v is None)
        # for vectorised prioritize: name -> row of ``means`` (NaN: not placeable); unknown names -> the NaN row n
        self.index = _Index(nt.static.names)
        self.means = np.append(np.where(ok, means, np.nan), np.nan)


class _Index(dict):
    """Node name -> row; a name the twin does not know -> the last row (``len(names)``)."""

    def __init__(self, names: list[str]):
        super().__init__((n, i) for i, n in enumerate(names))
        self.missing = len(names)

    def __missing__(self, key: str) -> int:
        return self.missing


def one_stage_means(nt: Any, st: Any, job: Job, timing: Any, samples: int, where: np.ndarray,
                    seed: int = 0) -> np.ndarray:
    """Mean predicted latency (ms) of the one-stage ``job`` placed alone on each node (NaN off ``where``).

    The fast predictor (``dtlab.predict._fast``) for one stage with no shadow and no origin
    transfer, vectorised over nodes: each ``twin.predict`` call seeds a fresh generator with
    ``seed``, so every node sees the same draws (service noise, then failure and failure-time
    uniforms); here they are drawn once, in that order, and applied to all nodes as one
    (nodes x samples) array. Same numbers as the per-node calls (tests/test_extender.py checks).
    """
    if len(job.stages) != 1 or job.origin_zone is not None:
        raise ValueError("one_stage_means: one stage and no origin zone (a pod) only")
    rng = np.random.default_rng(seed)
    x = timing.service_noise(rng, samples)
    fail_u, frac_u = rng.random(samples), rng.random(samples)
    idx = np.flatnonzero(where)
    base = st.base_svc[0]
    capacity = nt.capacity_for(base)[idx]
    svc_first = base[idx] * np.maximum(1.0, st.cpu[0] / capacity)
    svc = svc_first[:, None] * x[None, :]
    p_fail = (1.0 - (1.0 - nt.fail_prob[idx]) ** 1.0)[:, None]   # _fast: fail_prob split over 1 stage
    failed = (p_fail > 0) & (fail_u[None, :] < p_fail)
    end = np.where(failed, frac_u[None, :] * svc + timing.detect_ms + timing.replan_ms + svc, svc)
    out = np.full(nt.n, np.nan)
    out[idx] = end.mean(axis=1)
    return out


def score_from_latency(predicted: dict[str, float]) -> dict[str, int]:
    """Linear 0..10: the fastest predicted node gets 10, the slowest 0 (all 10 when equal)."""
    if not predicted:
        return {}
    lo, hi = min(predicted.values()), max(predicted.values())
    if hi - lo < 1e-9:
        return {n: MAX_PRIORITY for n in predicted}
    return {n: int(round(MAX_PRIORITY * (hi - v) / (hi - lo))) for n, v in predicted.items()}


def secret_ok(presented: str, secret: str | None) -> bool:
    """Whether a request's path prefix carries the extender's secret (constant time); no secret: any."""
    return secret is None or hmac.compare_digest(presented.encode(), secret.encode())


def verb_name(verb: Callable[..., Any]) -> str:
    """``filter`` / ``prioritize``: the name the latency histogram labels a verb with."""
    return verb.__name__.removesuffix("_json")


def call_verb(verb: Callable[[dict[str, Any]], Any], raw: bytes) -> tuple[int, bytes]:
    """One extender call on the body ``raw``: (status, JSON bytes). A malformed body or field is a 400
    ``{"Error": "<field path>: <rule>"}``. Compact, unsorted JSON: a prioritize answer at 1,000 nodes
    is ~1,000 objects. The one handler of every front (Flask blueprint, mutual-TLS app, dtlab serve's
    event loop)."""
    try:
        answer = verb(strict_json.loads(raw or b"", where="body"))
    except SpecError as exc:
        return 400, strict_json.dumps({"Error": str(exc)[:500], "FailedNodes": {}}).encode()
    return 200, (answer if isinstance(answer, str) else strict_json.dumps(answer, separators=(",", ":"))).encode()


def blueprint(extender: Extender, secret: str | None = None,
              observe: Callable[[str, float], None] | None = None) -> Blueprint:
    """The extender routes: ``/extender/<verb>``, or ``/extender/<secret>/<verb>`` with a secret.

    With a secret, the prefix is matched as a path parameter and compared in constant time, so
    a wrong one is a 404 indistinguishable from a missing route. ``observe(verb, ms)`` receives the
    time of every answered call (the service's ``dtlab_extender_latency_ms`` histogram)."""
    bp = Blueprint("extender", __name__, url_prefix="/extender")

    def handle(verb):
        if not secret_ok((request.view_args or {}).get("secret", ""), secret):
            abort(404)
        t0 = time.perf_counter()
        status, body = call_verb(verb, request.get_data(cache=True))
        if status == 200 and observe is not None:
            observe(verb_name(verb), (time.perf_counter() - t0) * 1e3)
        return Response(body, status=status, mimetype="application/json")

    rule = "/<secret>" if secret is not None else ""
    bp.add_url_rule(rule + "/filter", "filter", lambda **_: handle(extender.filter), methods=["POST"])
    bp.add_url_rule(rule + "/prioritize", "prioritize", lambda **_: handle(extender.prioritize_json),
                    methods=["POST"])
    return bp


def extender_app(extender: Extender, max_body_bytes: int = 1_000_000):
    """A Flask app with only the extender routes at ``/extender/<verb>``, for the mutual-TLS
    listener (``dtlab.api.tls``), where the client certificate authenticates the caller."""
    from flask import Flask
    from werkzeug.exceptions import HTTPException

    from .api.app import StrictJSONProvider

    app = Flask("dtlab-extender")
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.register_blueprint(blueprint(extender))

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        return jsonify({"Error": exc.description or exc.name}), exc.code

    @app.errorhandler(Exception)
    def _server_error(exc):
        log.exception("internal error on %s", request.path)
        return jsonify({"Error": "internal server error"}), 500

    return app


def kube_annotator(core_v1) -> Callable[[dict, dict], None]:
    """Annotate the pod with the per-node explanation (official client ``CoreV1Api``)."""
    def annotate(pod: dict, explanation: dict) -> None:
        meta = pod.get("metadata") or {}
        body = {"metadata": {"annotations": {EXPLANATION_ANNOTATION: json.dumps(explanation, sort_keys=True)}}}
        core_v1.patch_namespaced_pod(meta["name"], meta.get("namespace", "default"), body)
    return annotate
