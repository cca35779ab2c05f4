"""`dtlab controller` (flags: :mod:`dtlab.cli.controller`): the sense-simulate-act loop as a long-running service.

:class:`ControllerService` wraps one :class:`dtlab.controller.Controller` and adds what a
service needs and an experiment does not:

* **A clock.** Each tick lets the substrate's time pass (virtual-clock substrates - sim -
  advance ``speed`` substrate-seconds per wall second; real ones run on their own) and
  senses (drains events into the twin); due arrivals are planned and acted on.
* **Shadow failover without re-planning.** On a ``node-down`` event every in-flight stage
  planned on that node (not yet succeeded) is moved to its recorded shadow node. The move
  is the substrate's: a substrate with ``failover(job, stage, node)`` is told to move it;
  ``sim`` and ``fabric`` already received the shadow with the plan and move the stage
  themselves (``shadow_failover = "native"``); a substrate that can do neither is reported
  (log + ``result="unsupported"``), never silently re-planned. The twin is not asked again.
* **The freshness rule.** With ``freshness_s`` set, a plan that relies on a node whose
  telemetry is older than the budget is refused (:func:`dtlab.telemetry.check_fresh`); the
  refusal, the stale nodes and their ages are logged, recorded and counted.
* **Metrics** in its own registry: loop latency, decisions, failovers, stale refusals per
  node, in-flight jobs, state version (``--port`` serves them at ``/metrics``).
* **Clean stop.** SIGTERM/SIGINT only set a flag; the step in progress finishes (a submit
  either completes or is rolled back by the Controller), a final ``stopped`` line is
  written to the record and the process exits 0.
* ``act(plan, job)``: the entry point for plans made elsewhere (``dtlab.api`` non-dry-run
  ``/plan``); thread-safe against the loop.

The record (``--record PATH``) is JSON lines written and flushed as decisions happen:
``{"type": "decision", ...}``, ``{"type": "failover", ...}``, last ``{"type": "stopped", ...}``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .controller import REFUSED_STALE, SUBMITTED, Arrival, Controller, arrivals
from .errors import SpecError
from .model import Job
from .plan import Plan

log = logging.getLogger("dtlab.controller")

NATIVE_SHADOW_SUBSTRATES = ("sim", "fabric")   # they keep plan.shadow and move lost stages themselves
VIRTUAL_CLOCK_SUBSTRATES = ("sim",)
LOOP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServiceConfig:
    policy: str = "greedy"
    predictor: str = "fast"
    samples: int = 64
    seed: int = 0
    freshness_s: float | None = None   # telemetry freshness budget; None: no check
    speed: float = 1.0                 # substrate seconds per wall second (virtual-clock substrates)
    tick_s: float = 0.05               # wall seconds between senses when nothing is due
    drain_s: float = 0.0               # on stop: let in-flight work finish for this many substrate seconds

    def __post_init__(self):
        if self.freshness_s is not None and not self.freshness_s > 0:
            raise SpecError("freshness_s", f"must be > 0 seconds, got {self.freshness_s!r}")
        if not self.speed > 0:
            raise SpecError("speed", f"must be > 0, got {self.speed!r}")
        if not self.tick_s > 0:
            raise SpecError("tick_s", f"must be > 0, got {self.tick_s!r}")
        if self.drain_s < 0:
            raise SpecError("drain_s", f"must be >= 0, got {self.drain_s!r}")


class ControllerMetrics:
    """The service's Prometheus metrics, in a registry of their own (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.loop = Histogram("dtlab_controller_loop_seconds",
                              "Sense-simulate-act latency of one arrival (sync, plan, gate, submit)",
                              buckets=LOOP_BUCKETS, registry=r)
        self.decisions = Counter("dtlab_controller_decisions_total", "Plans by what the controller did with them",
                                 ["decision"], registry=r)
        self.failovers = Counter("dtlab_controller_failovers_total",
                                 "Stages hit by a node-down, by how they were answered", ["result"], registry=r)
        self.stale = Counter("dtlab_controller_stale_refusals_total",
                             "Refused plans, per node whose telemetry was too old", ["node"], registry=r)
        self.events = Counter("dtlab_controller_events_total", "State events applied to the twin", registry=r)
        self.in_flight = Gauge("dtlab_controller_in_flight_jobs", "Submitted jobs not finished yet", registry=r)
        self.version = Gauge("dtlab_controller_state_version", "Version of the twin's state", registry=r)


class ControllerService:
    """One twin driving one substrate in (wall-clock) time; see the module docstring."""

    def __init__(self, twin, substrate, config: ServiceConfig | None = None, record: TextIO | None = None,
                 registry: CollectorRegistry | None = None, telemetry: Any = None):
        self.config = config or ServiceConfig()
        self.twin = twin
        self.substrate = substrate
        self.twin.policy(self.config.policy)   # unknown policy names fail before anything runs
        self.metrics = ControllerMetrics(registry)
        self.controller = Controller(twin, substrate, policy=self.config.policy, predictor=self.config.predictor,
                                     samples=self.config.samples, seed=self.config.seed,
                                     freshness_s=self.config.freshness_s, on_events=[self._on_events],
                                     telemetry=telemetry)
        self._record = record
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.stop_reason = ""
        self._last_reconcile = 0.0
        self._down = {name for name, st in twin.state.snapshot().nodes.items() if not st.up}
        self._done_stages: set[tuple[str, str]] = set()   # of in-flight jobs, from stage-end events
        self._moved: dict[tuple[str, str], str] = {}   # (job, stage) -> the shadow it was moved to
        self.in_flight: dict[str, Plan] = {}
        self.failovers: list[dict[str, Any]] = []
        self.counts = {"submitted": 0, "refused-stale": 0, "infeasible": 0, "rolled-back": 0}
        self.virtual = substrate.name in VIRTUAL_CLOCK_SUBSTRATES
        self.shadow_failover = getattr(substrate, "shadow_failover", None) or (
            "native" if substrate.name in NATIVE_SHADOW_SUBSTRATES else
            "call" if callable(getattr(substrate, "failover", None)) else "unsupported")
        if self.shadow_failover == "unsupported":
            log.warning("substrate %s cannot move stages to their shadows (no failover(job, stage, node)): "
                        "stages on a failed node will wait for the substrate's own recovery", substrate.name)

    # ------------------------------------------------------------ control
    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop after the step in progress (safe from signal handlers and other threads)."""
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT -> stop(); the handler only sets a flag, so nothing is interrupted half-way."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stop(signal.Signals(signum).name))

    # ------------------------------------------------------------ the loop
    def act(self, plan: Plan, job: Job) -> dict[str, Any]:
        """Gate and submit a plan made elsewhere (the REST API); returns the decision record."""
        with self._lock:
            if self.stopping:
                raise _refused("the controller is stopping; no new work is accepted", "dry_run")
            t0 = time.perf_counter()
            self.controller.sync()
            rec = self._guarded(lambda: self.controller.act(plan, job) and plan, job, t0)
        if rec["decision"] != SUBMITTED:
            raise _refused(f"not actuated ({rec['decision']}): {rec['error']}", "job")
        return rec

    def step(self, job: Job, at_ms: float | None = None) -> dict[str, Any]:
        """Sense, plan and act on one arrival; returns the decision record."""
        with self._lock:
            return self._guarded(lambda: self.controller.step(job, at_ms), job, time.perf_counter())

    def _guarded(self, decide, job: Job, t0: float) -> dict[str, Any]:
        """Run one decision; a submit that failed (and was rolled back) is recorded and the service goes on."""
        n = len(self.controller.records)
        try:
            plan = decide()
        except Exception as exc:
            if len(self.controller.records) == n:     # failed before any decision (e.g. sensing): not ours
                raise
            log.error("job %s: submit failed and was rolled back: %r", job.name, exc)
            plan = None
        except BaseException:
            if len(self.controller.records) > n:
                self._after(job, None, t0)
            raise
        return self._after(job, plan, t0)

    def sense(self, until_ms: float | None = None) -> None:
        """Let substrate time pass to ``until_ms`` (virtual clocks) and drain its events into the twin."""
        with self._lock:
            if until_ms is not None and self.virtual:
                self.substrate.advance(until_ms)
            self.controller.sync()
            self._prune()

    def run(self, stream: Iterable[Any] = (), duration_s: float | None = None) -> dict[str, Any]:
        """Serve until the stream is exhausted and in-flight work is done, ``duration_s`` passed, or stop().

        Arrival times are substrate ms from the start of the run; a virtual clock follows the wall
        clock at ``config.speed``. Returns the summary written as the record's last line.
        """
        it: Iterator[Arrival] = iter(arrivals(stream))
        nxt = next(it, None)
        wall0, sub0 = time.monotonic(), self.substrate.now_ms()
        speed = self.config.speed if self.virtual else 1.0
        while not self.stopping:
            elapsed = time.monotonic() - wall0
            if duration_s is not None and elapsed >= duration_s:
                self.stop("duration")
                break
            target = sub0 + elapsed * speed * 1000.0
            if nxt is not None and sub0 + nxt.at_ms <= (target if self.virtual else self.substrate.now_ms()):
                self.step(nxt.job, sub0 + nxt.at_ms if self.virtual else None)
                nxt = next(it, None)
                continue
            self.sense(target)
            if nxt is None and self.in_flight and time.monotonic() - self._last_reconcile >= 1.0:
                self._reconcile()
            if nxt is None and not self.in_flight:
                self.stop("done")
                break
            wait = self.config.tick_s
            if nxt is not None and self.virtual:
                wait = min(wait, max(0.0, (sub0 + nxt.at_ms - target) / (speed * 1000.0)))
            self._stop.wait(wait)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Optionally drain in-flight work, then write and return the summary (the record's last line)."""
        with self._lock:
            if self.config.drain_s > 0 and self.in_flight:
                limit = self.substrate.now_ms() + self.config.drain_s * 1000.0
                while self.in_flight and self.substrate.now_ms() < limit:
                    if self.virtual:
                        self.substrate.advance(min(limit, self.substrate.now_ms() + 1000.0))
                    else:
                        time.sleep(self.config.tick_s)
                    self.sense()
            summary = {"type": "stopped", "reason": self.stop_reason or "done", **self.counts,
                       "in_flight": sorted(self.in_flight), "failovers": len(self.failovers),
                       "events": self.controller.events_applied, "state_version": self.twin.state.version,
                       "substrate_ms": self.substrate.now_ms()}
            self._write(summary)
            log.info("controller stopped (%s): %s", summary["reason"], json.dumps(self.counts))
            return summary

    # ------------------------------------------------------------ internals
    def _after(self, job: Job, plan: Plan | None, t0: float) -> dict[str, Any]:
        """Book-keeping after one decision: counts, metrics, in-flight set, record line."""
        rec = dict(self.controller.records[-1])
        decision = rec["decision"]
        self.counts[decision] = self.counts.get(decision, 0) + 1
        self.metrics.loop.observe(time.perf_counter() - t0)
        self.metrics.decisions.labels(decision).inc()
        if decision == SUBMITTED:
            self.in_flight[job.name] = plan
        elif decision == REFUSED_STALE:
            refusal = self.controller.last_refusal
            for node in sorted(refusal.stale if refusal is not None else ()):
                self.metrics.stale.labels(node).inc()
            log.warning("job %s: %s", job.name, rec["error"])
        self.metrics.in_flight.set(len(self.in_flight))
        self.metrics.version.set(self.twin.state.version)
        self._write({"type": "decision", **rec})
        return rec

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        """After a batch is in the twin's state: answer node-down events with the shadows.

        Walked in event order (a batch may span many seconds): node up/down and finished
        stages are tracked as the events go, so each failure sees the world as it was then.
        """
        self.metrics.events.inc(len(events))
        for e in events:
            kind, node = e.get("kind"), e.get("node")
            if kind == "stage-end" and e.get("ok", True) and e.get("job") in self.in_flight:
                self._done_stages.add((e["job"], e.get("stage")))
            elif kind in ("node-up", "node-add", "node-remove"):
                self._down.discard(node if isinstance(node, str) else None)
            elif kind == "node-down" and node not in self._down:
                # a failure may be reported twice (chaos notification + observer): act on the transition
                self._down.add(node)
                for job_name, plan in list(self.in_flight.items()):
                    for sid, planned in plan.placement.items():
                        key = (job_name, sid)
                        if self._moved.get(key, planned) == node and key not in self._done_stages:
                            self._failover(job_name, sid, node, plan.shadow.get(sid))

    def _failover(self, job: str, stage: str, node: str, shadow: str | None) -> None:
        if shadow is None:
            result, why = "no-shadow", "no shadow was planned; the substrate retries or waits (no re-plan)"
        elif (job, stage) in self._moved:
            result, why = "no-shadow", "its shadow failed too; the substrate retries or waits (no re-plan)"
        elif shadow in self._down:
            result, why = "shadow-down", f"shadow {shadow} is down too"
        elif self.shadow_failover == "call":
            self.substrate.failover(job, stage, shadow)
            result, why = "moved", f"substrate {self.substrate.name} moved it to the shadow"
        elif self.shadow_failover == "native":
            result, why = "moved", f"substrate {self.substrate.name} runs it on the shadow it was given with the plan"
        else:
            result, why = "unsupported", (f"substrate {self.substrate.name} cannot move stages to shadows; "
                                          f"the stage waits for the substrate's own recovery")
        if result == "moved":
            self._moved[(job, stage)] = shadow   # now runs there: a later failure of the planned node misses it
        entry = {"type": "failover", "job": job, "stage": stage, "failed_node": node, "shadow": shadow,
                 "result": result, "why": why, "substrate_ms": self.substrate.now_ms()}
        self.failovers.append(entry)
        self.metrics.failovers.labels(result).inc()
        (log.info if result == "moved" else log.warning)("failover %s/%s off %s: %s", job, stage, node, why)
        self._write(entry)

    def _prune(self) -> None:
        """Drop jobs whose every stage ended ok (lost jobs: see _reconcile)."""
        if not self.in_flight:
            return
        for name, plan in list(self.in_flight.items()):
            if all((name, sid) in self._done_stages for sid in plan.placement):
                self._forget(name)
        self.metrics.in_flight.set(len(self.in_flight))
        self.metrics.version.set(self.twin.state.version)

    def _forget(self, name: str) -> None:
        plan = self.in_flight.pop(name)
        for sid in plan.placement:
            self._moved.pop((name, sid), None)
            self._done_stages.discard((name, sid))

    def _reconcile(self) -> None:
        """Drop jobs the substrate reports finished (lost jobs never get a successful stage-end)."""
        self._last_reconcile = time.monotonic()
        with self._lock:
            jobs = self.substrate.results()["jobs"]
            done = set(jobs["job"][jobs["ok"].notna()])   # real substrates list running jobs with ok unset
            for name in [n for n in self.in_flight if n in done]:
                self._forget(name)
            self.metrics.in_flight.set(len(self.in_flight))

    def _write(self, line: dict[str, Any]) -> None:
        if self._record is None:
            return
        self._record.write(json.dumps(line, default=json_default, sort_keys=True) + "\n")
        self._record.flush()
        try:
            os.fsync(self._record.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def _refused(message: str, field: str):
    """A refusal the REST API answers with 409 ``{"error", "field"}`` (its ClientError), not a 500."""
    from .api.app import ClientError
    return ClientError(409, message, field)


def json_default(x: Any) -> Any:
    """``json.dumps(default=...)`` for the record and the summary: numpy scalars as numbers, the rest as text."""
    if isinstance(x, float) or hasattr(x, "item"):
        return x.item() if hasattr(x, "item") else float(x)
    return str(x)


def forever() -> Iterator[Arrival]:
    """No arrivals of our own: the loop only senses (plans come in through act())."""
    while True:
        yield Arrival(float("inf"), None)  # type: ignore[arg-type]  # never due


def serve_api(service: ControllerService, host: str, port: int, insecure_dev: bool = False) -> Any:
    """Serve the REST API with ``service`` attached (non-dry-run /plan acts) on a daemon thread; the server."""
    from .api.app import ApiConfig, create_app
    from .api.asgi import BackgroundServer, ServiceFront
    config = ApiConfig(insecure_dev=insecure_dev)
    app = create_app(service.twin, config, controller=service)
    # the same front as `dtlab serve`: bodies capped, /healthz on the loop, the other routes on threads
    server = BackgroundServer(ServiceFront(app, wsgi_threads=config.max_inflight + 2), host, port)
    print(f"dtlab controller: REST API on http://{host}:{server.port}", file=sys.stderr, flush=True)
    return server


def shutdown_server(server: Any) -> None:
    """Stop a server :func:`serve_api` or prometheus_client started."""
    if hasattr(server, "shutdown"):       # wsgiref (prometheus_client)
        server.shutdown()
        server.server_close()
    else:                                 # dtlab.api.asgi.BackgroundServer
        server.close()
