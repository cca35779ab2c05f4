"""The sense-simulate-act loop: substrate events -> twin state -> plan -> substrate.

Kept small and free of I/O so the REST service, the CLI controller and the experiments
share it: each arrival is ``sync`` (drain the substrate's events into
``twin.state.apply_many``), ``plan`` (the twin's policy + predictor on the fresh
snapshot) and ``submit`` (the plan with its shadow placement, so a node failure is
answered by the substrate switching to the shadow rather than by planning from scratch).

``on_plan`` callbacks see ``(job, plan, snapshot, arrival_ms)`` (V2 re-predicts the
chosen placement with other predictors on the same snapshot); ``recalibrator`` (see
:mod:`dtlab.calibration.online`) sees every plan and every event batch and may return
correction events that are applied together with the batch; ``on_events`` callbacks see
every applied batch after it is in the state (the service reacts to node-down there).

``telemetry`` (optional, e.g. :class:`dtlab.telemetry.TelemetryPoller`) is a second event source
drained at every sync beside the substrate's (``events()``; its ``last_error``, when set, is added
to the reason of a stale refusal: "Prometheus unreachable" says more than an age).

``freshness_s`` (None: off) is the telemetry freshness budget: a plan whose placement or
shadow relies on a node with older telemetry (in the substrate's clock) is *refused*, not
submitted, and recorded with decision ``refused-stale`` and the reason. Nodes with no telemetry
source (``telemetry-sources`` events, e.g. KWOK nodes beside real ones) are exempt; a submitted
plan that relied on them names them in its record's ``untelemetered``. ``act(plan, job)``
is the gate + submit half of ``step`` on its own, for plans made elsewhere (the REST API).
A submit that raises is rolled back (``substrate.cancel(job)`` when the substrate has it)
so no job is left half-submitted.

After a successful submit the controller tells its own state what it planned: a
``job-submit`` event with ``stage_ms`` (each stage's predicted service at full allocation
on its planned node, :func:`planned_stage_ms`), so when the stages run the predictors know
how long each co-runner still has (the substrate's own job-submit merges with it). Plans
are made on the snapshot pinned to the substrate's clock (``Snapshot.at``), against which
co-runners' elapsed time is measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

if TYPE_CHECKING:  # pandas costs ~1 s of start-up; every `dtlab` command imports this module
    import pandas as pd

from .errors import InfeasibleError
from .model import Job
from .plan import Plan
from .state import Snapshot
from .telemetry import StaleTelemetry, check_fresh
from .timing import TimingModel

SUBMITTED, INFEASIBLE, REFUSED_STALE, ROLLED_BACK = "submitted", "infeasible", "refused-stale", "rolled-back"


class EventSource(Protocol):
    def events(self) -> list[dict[str, Any]]: ...


class Recalibrator(Protocol):
    def expect(self, job: Job, plan: Plan) -> None: ...

    def observe(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Arrival:
    at_ms: float
    job: Job


def arrivals(stream: Iterable[Any]) -> Iterable[Arrival]:
    """Accept ``(at_ms, job)`` pairs, objects with ``at_ms``/``arrival_ms`` and ``job``, or Arrival."""
    for item in stream:
        if isinstance(item, Arrival):
            yield item
        elif isinstance(item, tuple) and len(item) == 2:
            yield Arrival(float(item[0]), item[1])
        else:
            at = getattr(item, "at_ms", None)
            if at is None:
                at = getattr(item, "arrival_ms")
            yield Arrival(float(at), item.job)


class Controller:
    """One twin acting on one substrate with one policy and predictor."""

    def __init__(self, twin, substrate, policy: str = "greedy", predictor: str = "fast", samples: int = 128,
                 seed: int = 0, on_plan: Iterable[Callable[[Job, Plan, Snapshot, float], None]] = (),
                 recalibrator: Recalibrator | None = None, freshness_s: float | None = None,
                 on_events: Iterable[Callable[[list[dict[str, Any]]], None]] = (),
                 telemetry: EventSource | None = None):
        self.twin = twin
        self.substrate = substrate
        self.policy = policy
        self.predictor = predictor
        self.samples = int(samples)
        self.seed = int(seed)
        self.on_plan = list(on_plan)
        self.recalibrator = recalibrator
        self.freshness_s = None if freshness_s is None else float(freshness_s)
        self.on_events = list(on_events)
        self.telemetry = telemetry
        self.records: list[dict[str, Any]] = []
        self.events_applied = 0
        self.last_refusal: StaleTelemetry | None = None   # the newest stale-telemetry refusal (nodes and ages)
        self._n = 0

    # ------------------------------------------------------------ the loop, one step at a time
    def sync(self) -> int:
        """Drain substrate events into the twin's state (atomically, with any recalibration); returns the count."""
        events = self.substrate.events()
        if self.telemetry is not None:
            events = events + self.telemetry.events()
        if self.recalibrator is not None:
            events = events + self.recalibrator.observe(events)
        if events:
            self.twin.state.apply_many(events)
            for callback in self.on_events:
                callback(events)
        self.events_applied += len(events)
        return len(events)

    def step(self, job: Job, at_ms: float | None = None) -> Plan | None:
        """Advance to ``at_ms``, sync, plan ``job``, record and submit; None if no placement exists."""
        if at_ms is not None:
            self.substrate.advance(at_ms)
        self.sync()
        arrival = self.substrate.now_ms()
        seed = self.seed * 1_000_003 + self._n
        self._n += 1
        snap = self.twin.state.snapshot().at(arrival / 1000.0)
        t0 = time.perf_counter()
        try:
            plan = self.twin.plan(job, policy=self.policy, samples=self.samples, seed=seed,
                                  predictor=self.predictor, snapshot=snap)
        except InfeasibleError as exc:
            self.records.append(self._record(job, None, arrival, (time.perf_counter() - t0) * 1000, str(exc),
                                             INFEASIBLE))
            return None
        for callback in self.on_plan:
            callback(job, plan, snap, arrival)
        return plan if self.act(plan, job, snap) == SUBMITTED else None

    def act(self, plan: Plan, job: Job, snapshot: Snapshot | None = None) -> str:
        """Submit ``plan`` unless it relies on stale telemetry; record the decision and return it.

        Either the whole job is submitted or, if ``substrate.submit`` raises, it is cancelled
        again (when the substrate can) and the exception propagates after recording ``rolled-back``.
        """
        arrival = self.substrate.now_ms()
        untele: list[str] = []
        if self.freshness_s is not None:
            snap = snapshot if snapshot is not None else self.twin.state.snapshot()
            try:
                untele = check_fresh(plan, snap, self.freshness_s, now=arrival / 1000.0)
            except StaleTelemetry as exc:
                self.last_refusal = exc
                reason = str(exc)
                why = getattr(self.telemetry, "last_error", None)
                if why:
                    reason += f"; telemetry source: {why}"
                self.records.append(self._record(job, plan, arrival, plan.elapsed_ms, reason, REFUSED_STALE))
                return REFUSED_STALE
        if self.recalibrator is not None:
            self.recalibrator.expect(job, plan)
        try:
            self.substrate.submit(plan, job)
        except BaseException as exc:
            cancel = getattr(self.substrate, "cancel", None)
            note = "substrate has no cancel(); it may hold part of the job"
            if cancel is not None:
                cancel(job.name)
                note = "cancelled"
            self.records.append(self._record(job, plan, arrival, plan.elapsed_ms,
                                             f"submit failed ({note}): {exc!r}", ROLLED_BACK))
            raise
        self.twin.state.apply({"kind": "job-submit", "job": job.name, "ts": arrival / 1000.0,
                               "deadline_ms": job.deadline_ms,
                               "stage_cpu": {s.id: s.compute.cpu for s in job.stages},
                               "stage_ms": planned_stage_ms(job, plan.placement, self.twin, snapshot),
                               "transfers": planned_transfers(job, plan.placement)})
        observe = getattr(self.twin, "observe_submission", None)
        if observe is not None:        # the twin's arrival-process estimate (dtlab.policies.load)
            observe(job, plan.placement, arrival / 1000.0, snapshot)
        rec = self._record(job, plan, arrival, plan.elapsed_ms, "", SUBMITTED)
        rec["untelemetered"] = ",".join(untele)
        self.records.append(rec)
        return SUBMITTED

    def run_workload(self, stream: Iterable[Any], drain: bool = True) -> pd.DataFrame:
        """Run every arrival of ``stream`` through the loop; returns plans joined with observed outcomes."""
        for a in arrivals(stream):
            self.step(a.job, a.at_ms)
        if drain:
            self.substrate.advance(None)
            self.sync()
        return self.results()

    # ------------------------------------------------------------ records
    def _record(self, job: Job, plan: Plan | None, arrival_ms: float, loop_ms: float, error: str,
                decision: str = SUBMITTED) -> dict[str, Any]:
        pred = plan.prediction if plan is not None else {}
        return {
            "job": job.name, "planned_ms": arrival_ms, "policy": self.policy, "predictor": self.predictor,
            "placement": _fmt(plan.placement) if plan else "", "shadow": _fmt(plan.shadow) if plan else "",
            "pred_mean_ms": pred.get("mean_ms"), "pred_p50_ms": pred.get("p50_ms"),
            "pred_p95_ms": pred.get("p95_ms"), "pred_miss_prob": pred.get("deadline_miss_prob"),
            "plan_ms": plan.elapsed_ms if plan else loop_ms, "state_version": plan.state_version if plan else None,
            "rejected": decision != SUBMITTED, "decision": decision, "error": error, "untelemetered": "",
        }

    def plans(self) -> pd.DataFrame:
        import pandas as pd
        return pd.DataFrame(self.records)

    def results(self) -> pd.DataFrame:
        """One row per planned job: the plan record plus the substrate's observed job record.

        A rejected job (no feasible placement) counts as missed with NaN latency.
        """
        plans = self.plans()
        observed = self.substrate.results()["jobs"]
        if plans.empty:
            return plans
        df = plans.merge(observed, on="job", how="left", suffixes=("", "_obs"))
        df["missed"] = df["missed"].astype("boolean").fillna(True).astype(bool)
        df["ok"] = df["ok"].astype("boolean").fillna(False).astype(bool)
        return df


def planned_stage_ms(job: Job, placement: dict[str, str], twin, snapshot: Snapshot | None = None) -> dict[str, float]:
    """{stage: duration * overhead / speed} on its planned node (dtlab.timing); stages that cannot run there are left out."""
    timing = getattr(twin, "timing", None) or TimingModel()
    nodes = (snapshot if snapshot is not None else twin.state.snapshot()).nodes
    out = {}
    for s in job.stages:
        status = nodes.get(placement.get(s.id)) if placement.get(s.id) is not None else None
        fmt = timing.exec_format(s, status.node) if status is not None else None
        if fmt is not None:
            out[s.id] = timing.mean_service_ms(s, status.node, fmt[1])
    return out


def planned_transfers(job: Job, placement: dict[str, str]) -> list[list]:
    """The plan's transfers between different endpoints, as ``job-submit`` carries them (dtlab.state):
    ``[from stage or None (the job's input from its origin zone), to stage, src, dst, MB]``."""
    out: list[list] = []
    for s in job.stages:
        dst = placement.get(s.id)
        if dst is None:
            continue
        if not s.after and job.origin_zone is not None:
            out.append([None, s.id, job.origin_zone, dst, float(job.input_mb)])
        for p in s.after:
            src = placement.get(p)
            if src is not None and src != dst:
                out.append([p, s.id, src, dst, float(job.stages[job.stage_index[p]].output_mb)])
    return out


def _fmt(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())
