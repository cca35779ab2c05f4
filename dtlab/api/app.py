"""Flask app of the DT service.

Every client mistake becomes a 4xx JSON body ``{"error": ..., "field": ...}``; a
500 means a bug in dtlab. Mutating calls (``/observe``, ``/plan`` with
``dry_run: false``) need ``Authorization: Bearer <token>``; without a configured
token they are refused unless the operator explicitly chose ``insecure_dev``.
The app is served by waitress (``dtlab serve``), never Flask's development server.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from importlib import resources
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from .. import strict_json
from ..errors import DtlabError, InfeasibleError, SpecError
from ..model import Job, job_from_dict
from .limits import PREDICTOR_COST, STAGE_COST, ApiConfig, plan_work  # noqa: F401 (re-exported)
from .metrics import ServiceMetrics

log = logging.getLogger("dtlab.api")
# the predictors /plan offers: those with a measured cost (the work budget needs one), by name
PREDICTORS = tuple(sorted(PREDICTOR_COST))
EPOCH_2001 = 1e9  # event timestamps above this are wall-clock seconds; below, virtual time (no lag)


class StrictJSONProvider(DefaultJSONProvider):
    """Responses are valid JSON: a NaN/Infinity in a response is a ValueError, never written."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return strict_json.dumps(obj, **kwargs)


class ClientError(DtlabError):
    def __init__(self, status: int, error: str, field: str | None = None):
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("dtlab.api").joinpath("openapi.json").read_text())


def create_app(twin, config: ApiConfig | None = None, controller=None, extender=None) -> Flask:
    """The REST app over ``twin``.

    ``controller`` (optional) receives non-dry-run plans via ``act(plan, job)``;
    ``extender`` (a :class:`dtlab.extender.Extender`) adds the scheduler-extender routes.
    """
    config = config or ApiConfig()
    app = Flask("dtlab")
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    metrics = ServiceMetrics(twin.state)
    gate = WorkGate(config.max_inflight)
    app.extensions["dtlab"] = {"twin": twin, "metrics": metrics, "config": config, "controller": controller}
    if extender is not None:
        from ..extender import blueprint
        app.register_blueprint(blueprint(extender, config.extender_secret,
                                         observe=lambda verb, ms: metrics.extender_latency.labels(verb).observe(ms)))

    def body() -> Any:
        return read_json_body()

    bodies = PlanBodyCache()

    def authorized() -> bool:
        if config.token is None:
            return False
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), config.token.encode())

    def authorize() -> None:
        if config.token is None:
            if config.insecure_dev:
                return
            raise ClientError(403, "mutating calls are disabled: set DTLAB_API_TOKEN on the server "
                                   "(or start it with --insecure-dev for local experiments)", "Authorization")
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), config.token.encode()):
            raise ClientError(401, "missing or invalid bearer token", "Authorization")

    @app.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        metrics.rejected.labels(request.path, str(exc.status)).inc()
        resp = jsonify({"error": exc.error, "field": exc.field})
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="dtlab"'
        if exc.status in (429, 503):
            resp.headers["Retry-After"] = "1"
        return resp, exc.status

    @app.errorhandler(SpecError)
    def _spec_error(exc: SpecError):
        metrics.rejected.labels(request.path, "400").inc()
        return jsonify({"error": str(exc), "field": exc.field}), 400

    @app.errorhandler(InfeasibleError)
    def _infeasible(exc: InfeasibleError):
        metrics.rejected.labels(request.path, "422").inc()
        return jsonify({"error": str(exc), "field": "job"}), 422

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        metrics.rejected.labels(request.path if exc.code != 404 else "<unknown>", str(exc.code)).inc()
        field_ = "body" if exc.code == 413 else None
        return jsonify({"error": exc.description or exc.name, "field": field_}), exc.code

    @app.errorhandler(Exception)
    def _server_error(exc: Exception):
        log.exception("internal error on %s %s", request.method, request.path)
        return jsonify({"error": "internal server error", "field": None}), 500

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "version": twin.state.version})

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/snapshot")
    def snapshot():
        return jsonify(twin.state.snapshot().to_dict())

    @app.post("/plan")
    def plan():
        raw = request.get_data(cache=True)
        data = bodies.data(raw)
        if not isinstance(data, dict):
            raise ClientError(400, "body must be a JSON object", "body")
        unknown = sorted(set(data) - {"job", "policy", "dry_run", "samples", "seed", "predictor"})
        if unknown:
            raise ClientError(400, "unknown key", unknown[0])
        dry_run = data.get("dry_run", True)
        if not isinstance(dry_run, bool):
            raise ClientError(400, "must be true or false", "dry_run")
        if not dry_run:
            authorize()
        policy = data.get("policy", "greedy")
        if not isinstance(policy, str):
            raise ClientError(400, "must be a policy name", "policy")
        samples = _int(data, "samples", 256, 1, config.max_samples)
        seed = _int(data, "seed", 0, 0, 2**63 - 1)
        predictor = data.get("predictor", "fast")
        if predictor not in PREDICTORS:
            raise ClientError(400, f"must be one of {list(PREDICTORS)}", "predictor")
        if not isinstance(data.get("job"), dict):
            raise ClientError(400, "is required: a Job spec object", "job")
        try:
            job = bodies.job(raw, data["job"])
        except SpecError as exc:
            raise SpecError(f"job.{exc.field}" if exc.field else "job", exc.rule) from None
        twin.policy(policy)  # an unknown policy is a 400 before any work is queued
        work = plan_work(samples, len(job.stages), predictor)
        cap = config.max_work if authorized() else config.max_work_anonymous
        if work > cap:
            raise ClientError(413, f"over the work budget: stages x (500 + samples x predictor cost) = {work:,.0f} > "
                                   f"{cap:,.0f}{'' if authorized() else ' (without a token)'}; "
                                   "use fewer samples, fewer stages or the fast predictor", "samples")
        start = time.perf_counter()
        result = gate.run(lambda: twin.plan(job, policy=policy, samples=samples, seed=seed, predictor=predictor),
                          config.request_timeout_s)
        metrics.plan_latency.labels(policy, predictor).observe((time.perf_counter() - start) * 1000)
        metrics.plans.labels(policy, str(dry_run).lower()).inc()
        out = result.to_dict()
        if not _finite(out["prediction"]):
            raise ClientError(422, "the predicted latency is not a finite number for this job", "job")
        out["dry_run"] = dry_run
        if config.freshness_s is not None:    # not acting, nor advising, on stale telemetry
            from ..telemetry import StaleTelemetry, check_fresh
            try:
                out["untelemetered_nodes"] = check_fresh(result, twin.state.snapshot(), config.freshness_s)
            except StaleTelemetry as exc:
                metrics.stale_refusals.inc()
                raise ClientError(503, str(exc), "telemetry") from None
        if not dry_run:
            if controller is None:
                raise ClientError(409, "this server has no controller attached to act on plans; use dry_run: true",
                                  "dry_run")
            controller.act(result, job)
        return jsonify(out)

    @app.post("/observe")
    def observe():
        authorize()
        data = body()
        events = data.get("events") if isinstance(data, dict) else data
        if not isinstance(events, list):
            raise ClientError(400, "body must be a list of events or {\"events\": [...]}", "events")
        if len(events) > config.max_events:
            raise ClientError(413, f"at most {config.max_events} events per batch", "events")
        try:
            version = twin.state.apply_many(events)
        except SpecError as exc:
            raise SpecError(f"events{exc.field}" if exc.field.startswith("[") else f"events[0].{exc.field}",
                            exc.rule) from None
        now = time.time()
        for event in events:
            metrics.events.labels(event["kind"]).inc()
            ts = event.get("ts")
            if isinstance(ts, (int, float)) and ts > EPOCH_2001:
                metrics.observe_lag.observe(max(0.0, now - ts) * 1000)
        return jsonify({"applied": len(events), "version": version})

    return app


def read_json_body() -> Any:
    """The request body through the one strict JSON reader (NaN/Infinity, depth, huge ints: 400)."""
    raw = request.get_data(cache=True)
    if not raw:
        raise ClientError(400, "request body is empty; expected JSON", "body")
    return strict_json.loads(raw, where="body")


class PlanBodyCache:
    """What a /plan body parses to (its JSON, its Job), remembered by the body's bytes: a small,
    thread-safe LRU.

    Why: parsing the body (~0.07 ms) and building and validating its Job (``job_from_dict``,
    ~0.35 ms) cost most of what a greedy 64-sample plan of the example pipeline costs (~0.5 ms
    CPU), and clients re-plan the same body (a controller each period, bench_api every request).
    Through the app in-process: 1.14 -> 0.93 ms CPU per request (bench_api through waitress: 1.60
    -> 1.49 ms, not resolved from the host's noise in 10 alternating runs). Jobs are frozen and
    the parsed JSON is only read, so one of each can serve every request. Only bodies up to
    ``max_body`` bytes are kept: a 16 KB body (230 stages) parses to ~0.1 MB of objects
    (tracemalloc), so with its Job an entry is at most ~0.35 MB and the cache ~22 MB; a ~1 KB job
    body costs ~10 KB. A body that does not parse, or whose job is invalid, is never cached, so its
    error is raised again, the same, on the next request."""

    def __init__(self, size: int = 64, max_body: int = 16 * 1024):
        self.size, self.max_body = size, max_body
        self._entries: OrderedDict[bytes, list[Any]] = OrderedDict()   # raw -> [data, job or None]
        self._lock = threading.Lock()

    def _get(self, raw: bytes) -> list[Any] | None:
        with self._lock:
            entry = self._entries.get(raw)
            if entry is not None:
                self._entries.move_to_end(raw)
            return entry

    def data(self, raw: bytes) -> Any:
        """The parsed body (the strict reader's 400s for bad JSON); read it, never change it."""
        entry = self._get(raw) if len(raw) <= self.max_body else None
        if entry is not None:
            return entry[0]
        data = read_json_body()
        if len(raw) <= self.max_body:
            with self._lock:
                self._entries[raw] = [data, None]
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return data

    def job(self, raw: bytes, doc: Any) -> Job:
        """The Job of ``doc``, the ``job`` member of body ``raw`` (SpecError if invalid)."""
        entry = self._get(raw) if len(raw) <= self.max_body else None
        if entry is not None and entry[1] is not None:
            return entry[1]
        job = job_from_dict(doc)
        if entry is not None:
            entry[1] = job
        return job


PLAN_THREADS = 1     # see WorkGate: plans take turns on the GIL anyway


class WorkGate:
    """At most ``slots`` computations admitted at once, each answered within a time limit; they run
    one after another on ``threads`` planning thread(s) (default :data:`PLAN_THREADS`).

    A request that finds no free slot gets 429 at once (it never queues behind more than ``slots``
    of work); one whose computation (counted from admission, so a wait behind another plan counts)
    outlives ``timeout_s`` gets 503 while the computation, already bounded by the work budget,
    finishes in the background still holding its slot.

    Why one planning thread: a plan is GIL-bound Python and small numpy, so plans on parallel threads
    only take turns on the GIL and thrash it (and the waitress threads parsing the next requests wait
    behind them). /plan from 4 / 8 keep-alive clients, 3 alternating pairs: 581 / 810 req/s on one
    planning thread against 496 / 677 on four (2026-12-05). Also measured, and not kept: running cheap
    plans on the request thread (no handoff): 535 req/s at 4 clients, and more server CPU per request.
    """

    def __init__(self, slots: int, threads: int | None = None):
        self.slots = threading.BoundedSemaphore(max(1, slots))
        workers = max(1, min(slots, PLAN_THREADS if threads is None else threads))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dtlab-plan")

    def run(self, fn, timeout_s: float):
        if not self.slots.acquire(blocking=False):
            raise ClientError(429, "too many plans in flight; retry shortly", None)
        try:
            future = self.pool.submit(fn)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _f: self.slots.release())
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise ClientError(503, f"the plan took longer than the {timeout_s:g} s request time limit; "
                                   "use fewer samples or stages", None) from None


def _finite(values: Any) -> bool:
    if isinstance(values, float):
        return math.isfinite(values)
    if isinstance(values, dict):
        return all(_finite(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return all(_finite(v) for v in values)
    return True


def _int(data: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClientError(400, "must be an integer", key)
    if not lo <= value <= hi:
        raise ClientError(400, f"must be between {lo} and {hi}", key)
    return value
