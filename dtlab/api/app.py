"""Flask app of the DT service.

Every client mistake becomes a 4xx JSON body ``{"error": ..., "field": ...}``; a
500 means a bug in dtlab. Mutating calls (``/observe``, ``/plan`` with
``dry_run: false``) need ``Authorization: Bearer <token>``; without a configured
token they are refused unless the operator explicitly chose ``insecure_dev``.
``dtlab serve`` serves it on uvicorn behind :mod:`dtlab.api.asgi` (which answers /plan, /healthz and the
extender on its event loop through the same objects), never Flask's development server.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

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
    ``app.extensions["dtlab"]["core"]`` is the app's :class:`ServiceCore`: ``dtlab serve``'s
    event-loop front (:mod:`dtlab.api.asgi`) answers /plan through the same one.
    """
    config = config or ApiConfig()
    app = Flask("dtlab")
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    metrics = ServiceMetrics(twin.state)
    core = ServiceCore(twin, config, metrics, controller)
    app.extensions["dtlab"] = {"twin": twin, "metrics": metrics, "config": config, "controller": controller,
                               "core": core}
    if extender is not None:
        from ..extender import blueprint
        app.register_blueprint(blueprint(extender, config.extender_secret,
                                         observe=lambda verb, ms: metrics.extender_latency.labels(verb).observe(ms)))

    def _client_error(exc: Exception) -> tuple[Response, int]:
        status, body, headers = core.error_answer(exc, request.path)
        resp = jsonify(body)
        resp.headers.update(headers)
        return resp, status

    for client_error in (ClientError, SpecError, InfeasibleError):
        app.register_error_handler(client_error, _client_error)

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
        return jsonify(health(twin))

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
        call = core.prepare(request.get_data(cache=True), request.headers.get("Authorization", ""))
        return jsonify(core.finish(call, core.gate.run(call.compute, config.request_timeout_s)))

    @app.post("/observe")
    def observe():
        core.authorize(request.headers.get("Authorization", ""))
        data = read_json_body()
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


def health(twin: Any) -> dict[str, Any]:
    """/healthz's answer: the service is up, and the version of the state it plans on."""
    return {"status": "ok", "version": twin.state.version}


PLAN_KEYS = frozenset({"job", "policy", "dry_run", "samples", "seed", "predictor"})


@dataclass(frozen=True)
class PlanCall:
    """A validated /plan request: what to compute (``compute``), its cost estimate, its flags."""
    compute: Callable[[], Any]
    policy: str
    predictor: str
    dry_run: bool
    job: Job
    work: float


class ServiceCore:
    """The service without a web framework: the bearer-token rule, /plan (validation, the work budget,
    the gate, the answer) and the rendering of every client error.

    Why its own class: the Flask view (tests, ``create_app`` users) and ``dtlab serve``'s event-loop
    front (:mod:`dtlab.api.asgi`) answer /plan alike through this one object: the same checks, the
    same metrics, the same JSON errors. Every method raises :class:`ClientError`, ``SpecError`` or
    ``InfeasibleError`` for the client's mistakes; :meth:`error_answer` turns them into the answer."""

    def __init__(self, twin: Any, config: ApiConfig, metrics: ServiceMetrics, controller: Any = None):
        self.twin, self.config, self.metrics, self.controller = twin, config, metrics, controller
        self.gate = WorkGate(config.max_inflight)
        self.bodies = PlanBodyCache()

    def authorized(self, header: str) -> bool:
        token = self.config.token
        if token is None:
            return False
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())

    def authorize(self, header: str) -> None:
        """Mutating calls: a valid bearer token, or no token configured and ``insecure_dev``."""
        if self.config.token is None:
            if self.config.insecure_dev:
                return
            raise ClientError(403, "mutating calls are disabled: set DTLAB_API_TOKEN on the server "
                                   "(or start it with --insecure-dev for local experiments)", "Authorization")
        if not self.authorized(header):
            raise ClientError(401, "missing or invalid bearer token", "Authorization")

    def prepare(self, raw: bytes, authorization: str) -> PlanCall:
        """The checked request in ``raw`` (the body's bytes), or the client's error."""
        bodies, config = self.bodies, self.config
        data = bodies.data(raw)
        if not isinstance(data, dict):
            raise ClientError(400, "body must be a JSON object", "body")
        unknown = sorted(set(data) - PLAN_KEYS)
        if unknown:
            raise ClientError(400, "unknown key", unknown[0])
        dry_run = data.get("dry_run", True)
        if not isinstance(dry_run, bool):
            raise ClientError(400, "must be true or false", "dry_run")
        if not dry_run:
            self.authorize(authorization)
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
        twin = self.twin
        twin.policy(policy)  # an unknown policy is a 400 before any work is queued
        work = plan_work(samples, len(job.stages), predictor)
        with_token = self.authorized(authorization)
        cap = config.max_work if with_token else config.max_work_anonymous
        if work > cap:
            raise ClientError(413, f"over the work budget: stages x (500 + samples x predictor cost) = {work:,.0f} > "
                                   f"{cap:,.0f}{'' if with_token else ' (without a token)'}; "
                                   "use fewer samples, fewer stages or the fast predictor", "samples")
        metrics = self.metrics

        def compute() -> Any:
            start = time.perf_counter()
            result = twin.plan(job, policy=policy, samples=samples, seed=seed, predictor=predictor)
            metrics.plan_latency.labels(policy, predictor).observe((time.perf_counter() - start) * 1000)
            return result

        return PlanCall(compute, policy, predictor, dry_run, job, work)

    def finish(self, call: PlanCall, result: Any) -> dict[str, Any]:
        """The answer's JSON object for ``call``'s computed ``result`` (acting on it unless a dry run)."""
        self.metrics.plans.labels(call.policy, str(call.dry_run).lower()).inc()
        out = result.to_dict()
        if not _finite(out["prediction"]):
            raise ClientError(422, "the predicted latency is not a finite number for this job", "job")
        out["dry_run"] = call.dry_run
        if self.config.freshness_s is not None:    # not acting, nor advising, on stale telemetry
            from ..telemetry import StaleTelemetry, check_fresh
            try:
                out["untelemetered_nodes"] = check_fresh(result, self.twin.state.snapshot(), self.config.freshness_s)
            except StaleTelemetry as exc:
                self.metrics.stale_refusals.inc()
                raise ClientError(503, str(exc), "telemetry") from None
        if not call.dry_run:
            if self.controller is None:
                raise ClientError(409, "this server has no controller attached to act on plans; use dry_run: true",
                                  "dry_run")
            self.controller.act(result, call.job)
        return out

    def error_answer(self, exc: Exception, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) of a client error on ``path``, counted in ``dtlab_requests_rejected``:
        the one rendering of ClientError / SpecError / InfeasibleError for every front."""
        headers: dict[str, str] = {}
        if isinstance(exc, ClientError):
            status, body = exc.status, {"error": exc.error, "field": exc.field}
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="dtlab"'
            if status in (429, 503):
                headers["Retry-After"] = "1"
        elif isinstance(exc, SpecError):
            status, body = 400, {"error": str(exc), "field": exc.field}
        elif isinstance(exc, InfeasibleError):
            status, body = 422, {"error": str(exc), "field": "job"}
        else:
            raise TypeError(f"not a client error: {type(exc).__name__}")
        self.metrics.rejected.labels(path, str(status)).inc()
        return status, body, headers


def read_json_body() -> Any:
    """The Flask request's body through :func:`parse_body`."""
    return parse_body(request.get_data(cache=True))


def parse_body(raw: bytes) -> Any:
    """A request body through the one strict JSON reader (NaN/Infinity, depth, huge ints: 400)."""
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
        data = parse_body(raw)
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
    only take turns on the GIL and thrash it (and the server threads parsing the next requests wait
    behind them). Under waitress, /plan from 4 / 8 keep-alive clients, 3 alternating pairs: 581 / 810
    req/s on one planning thread against 496 / 677 on four (2026-12-05); running cheap plans on
    waitress's request threads was worse still (535 req/s at 4 clients). ``dtlab serve`` now runs
    cheap plans on its event loop (:meth:`run_here`, see :mod:`dtlab.api.asgi`): one thread, no handoff.
    """

    def __init__(self, slots: int, threads: int | None = None):
        self.slots = threading.BoundedSemaphore(max(1, slots))
        workers = max(1, min(slots, PLAN_THREADS if threads is None else threads))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dtlab-plan")

    def submit(self, fn: Callable[[], Any]) -> "Future[Any]":
        """Admit ``fn`` (429 without a free slot) and start it on the planning thread; the slot comes
        back when it ends."""
        if not self.slots.acquire(blocking=False):
            raise ClientError(429, "too many plans in flight; retry shortly", None)
        try:
            future = self.pool.submit(fn)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _f: self.slots.release())
        return future

    def run_here(self, fn: Callable[[], Any]) -> Any:
        """Admit ``fn`` (429 without a free slot) and run it on the calling thread: for a plan too
        small to be worth a handoff (see :mod:`dtlab.api.asgi`); the caller bounds its cost."""
        if not self.slots.acquire(blocking=False):
            raise ClientError(429, "too many plans in flight; retry shortly", None)
        try:
            return fn()
        finally:
            self.slots.release()

    def run(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        future = self.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise timed_out(timeout_s) from None


def timed_out(timeout_s: float) -> ClientError:
    return ClientError(503, f"the plan took longer than the {timeout_s:g} s request time limit; "
                            "use fewer samples or stages", None)


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
