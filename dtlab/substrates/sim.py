"""The ``sim`` substrate: a ground truth in virtual time that deliberately differs from the twin.

If the "observed" numbers came from the twin's own model, V2's prediction error would
be the twin compared with itself. So the ground truth runs the same SimPy engine with a
different world, each difference a parameter (``SIM_DEFAULTS``, overridable per run):

* **Heavier-tailed service times**: log-sd ``service_sigma`` (twin: 0.10) and, with
  probability ``tail_prob`` per stage, an extra factor ``1 + tail_scale * Pareto(tail_alpha)``.
* **Calibration error and drift**: true format overheads are the twin's defaults times
  ``overhead_bias``; each node's true speed is its spec speed times a LogNormal(0,
  ``speed_sigma``) draw, and all speeds change linearly by ``speed_drift_per_min``
  (fraction of the spec speed per virtual minute; negative = nodes get slower).
* **Workload drift**: a job submitted at minute ``m`` runs ``1 + workload_drift_per_min * m``
  times its nominal work (the twin plans with the nominal job).
* **Background load**: per-node mean-reverting random walk of utilisation (``background_*``),
  applied on a ``background_step_s`` grid; the twin only sees it through telemetry sampled
  every ``telemetry_period_s``, ``telemetry_delay_s`` late, with Gaussian ``telemetry_noise``.
* **Node failures**: Poisson per node at ``failure_rate_per_h``, down for Exp(``repair_s``);
  the engine moves the lost stages to the plan's shadow (or retries) like the real thing.
* **Link variability**: every ``link_step_s`` each spec link's latency is multiplied by a
  LogNormal(0, ``link_sigma``) draw (bandwidth divided by its square root); the twin is not told.

The world (background, failures, links) is drawn from its own random stream on a fixed time
grid, so every policy run with the same seed meets the same world; the engine's service
draws use a second stream. Same options + seed => identical numbers.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..energy import cpu_ms_of_attempts
from ..errors import SpecError
from ..model import Cluster, Job
from ..plan import Plan
from ..timing import DEFAULT_OVERHEADS, TimingModel
from . import register
from .base import JOB_COLUMNS, STAGE_COLUMNS, SubstrateBase

SIM_DEFAULTS: dict[str, Any] = {
    "service_sigma": 0.35,
    "tail_prob": 0.05,
    "tail_alpha": 2.5,
    "tail_scale": 1.0,
    "overhead_bias": {"native": 1.0, "qemu-amd64": 1.15, "qemu-arm64": 1.2, "qemu-riscv64": 1.3, "wasm": 1.15},
    "speed_sigma": 0.10,
    "speed_drift_per_min": 0.0,
    "workload_drift_per_min": 0.0,
    "background_mean": 0.15,
    "background_step_sd": 0.05,
    "background_max": 0.8,
    "background_step_s": 5.0,
    "telemetry_period_s": 5.0,
    "telemetry_delay_s": 2.0,
    "telemetry_noise": 0.05,
    "failure_rate_per_h": 1.0,
    "repair_s": 30.0,
    "link_sigma": 0.2,
    "link_step_s": 10.0,
    "drain_limit_s": 3600.0,
}
_HIDDEN_KINDS = {"telemetry", "link", "link-reset", "job-submit"}   # the substrate reports its own


def sim_options(opts: Mapping[str, Any] | None) -> dict[str, Any]:
    """SIM_DEFAULTS overlaid with ``opts``; unknown keys and bad values are SpecErrors naming the key."""
    opts = dict(opts or {})
    unknown = sorted(set(opts) - set(SIM_DEFAULTS))
    if unknown:
        raise SpecError(f"substrate_opts.{unknown[0]}", f"unknown sim option (known: {sorted(SIM_DEFAULTS)})")
    out = {**SIM_DEFAULTS, **opts}
    for k, v in out.items():
        if k == "overhead_bias":
            if not isinstance(v, Mapping) or not all(isinstance(x, (int, float)) and x > 0 for x in v.values()):
                raise SpecError(f"substrate_opts.{k}", "must map format keys to positive factors")
            out[k] = {**SIM_DEFAULTS[k], **v}
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"substrate_opts.{k}", f"must be a number, got {v!r}")
        elif k not in ("speed_drift_per_min", "workload_drift_per_min") and v < 0:
            raise SpecError(f"substrate_opts.{k}", "must be >= 0")
    for k in ("tail_prob", "telemetry_noise"):
        if out[k] > 1:
            raise SpecError(f"substrate_opts.{k}", "must be <= 1")
    if not 0 <= out["background_mean"] <= out["background_max"] < 1:
        raise SpecError("substrate_opts.background_max", "need 0 <= background_mean <= background_max < 1")
    for k in ("background_step_s", "telemetry_period_s", "link_step_s", "drain_limit_s"):
        if out[k] <= 0:
            raise SpecError(f"substrate_opts.{k}", "must be > 0")
    if out["tail_alpha"] <= 1:
        raise SpecError("substrate_opts.tail_alpha", "must be > 1 (finite mean)")
    return out


@dataclass(frozen=True)
class TruthTiming(TimingModel):
    """The ground truth's timing: the twin's shapes with a heavier (Pareto-mixture) service tail."""
    tail_prob: float = 0.0
    tail_alpha: float = 2.5
    tail_scale: float = 1.0

    def service_noise(self, rng: np.random.Generator, size) -> np.ndarray:
        x = super().service_noise(rng, size)
        if self.tail_prob > 0:
            hit = rng.random(size) < self.tail_prob
            x = x * np.where(hit, 1.0 + self.tail_scale * rng.pareto(self.tail_alpha, size), 1.0)
        return x


def truth_world(cluster: Cluster, opts: Mapping[str, Any], rng: np.random.Generator,
                twin: TimingModel | None = None) -> tuple[TruthTiming, Cluster, dict[str, float]]:
    """(true timing, cluster with true node speeds, per-node speed factor) of one ground truth."""
    twin = twin or TimingModel()
    overheads = {k: twin.overheads.get(k, DEFAULT_OVERHEADS.get(k, 1.0)) * opts["overhead_bias"].get(k, 1.0)
                 for k in sorted(set(twin.overheads) | set(opts["overhead_bias"]))}
    sigma = opts["speed_sigma"]
    factors = {n.name: float(rng.lognormal(0.0, sigma)) if sigma > 0 else 1.0 for n in cluster.nodes}
    timing = TruthTiming(overheads=overheads, service_sigma=opts["service_sigma"], detect_ms=twin.detect_ms,
                         replan_ms=twin.replan_ms, tail_prob=opts["tail_prob"], tail_alpha=opts["tail_alpha"],
                         tail_scale=opts["tail_scale"])
    true_cluster = cluster.with_nodes(replace(n, speed=n.speed * factors[n.name]) for n in cluster.nodes)
    return timing, true_cluster, factors


class SimSubstrate(SubstrateBase):
    """Ground truth on the dtlab.des Engine, in virtual ms from 0."""

    name = "sim"

    def __init__(self, cluster: Cluster, seed: int = 0, **opts: Any):
        from ..des.engine import Engine    # local: SimPy only when a sim substrate is made

        self.opts = sim_options(opts)
        self._cluster = cluster
        self.seed = int(seed)
        root = np.random.SeedSequence([self.seed, 0x51A])
        world_seq, engine_seq, truth_seq = root.spawn(3)
        # one stream per world process, so how finely advance() steps cannot reorder the draws
        self._world_bg, self._world_tel, self._world_link = (np.random.default_rng(q) for q in world_seq.spawn(3))
        self.timing, self._true_cluster, self._speed_factor = truth_world(
            cluster, self.opts, np.random.default_rng(truth_seq))
        self._engine = Engine(self._true_cluster, self.timing, np.random.default_rng(engine_seq))
        self._engine.listeners.append(self._on_engine_event)
        self._now = 0.0
        self._pending: list[tuple[float, int, dict[str, Any]]] = []   # (deliver_ms, seq, event)
        self._seq = 0
        self._submitted: dict[str, dict[str, Any]] = {}
        # world state, generated lazily on the grid
        self._util = {n.name: self.opts["background_mean"] for n in cluster.nodes}
        self._down_until = {n.name: -1.0 for n in cluster.nodes}
        self._next_bg = 0.0
        self._next_tel = 0.0
        self._next_link = self.opts["link_step_s"] * 1000.0
        self._fault_windows: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self._util_log: list[tuple[float, str, float]] = []
        self._util_steps: list[dict[str, float]] = []   # background per grid step, for telemetry

    # ------------------------------------------------------------ protocol
    def cluster(self) -> Cluster:
        return self._cluster

    def now_ms(self) -> float:
        return self._now

    def submit(self, plan: Plan, job: Job) -> None:
        if job.name in self._submitted:
            raise SpecError("job", f"job {job.name!r} was already submitted")
        for sid, node in plan.placement.items():
            if node not in self._cluster.by_name:
                raise SpecError(f"placement.{sid}", f"unknown node {node!r}")
        # workload drift (bigger jobs) and speed drift (all nodes slower/faster) both act on the work of a
        # job from its arrival on; the engine reads node speeds once, so drift enters through ``scale``
        scale = self.work_factor(self._now) / self.speed_drift(self._now)
        self._submitted[job.name] = {"arrival_ms": self._now, "deadline_ms": job.deadline_ms, "scale": scale}
        self._push(self._now, {"kind": "job-submit", "job": job.name, "ts": self._now / 1000.0,
                               "deadline_ms": job.deadline_ms,
                               "stage_cpu": {s.id: s.compute.cpu for s in job.stages}})
        self._engine.submit(job, dict(plan.placement), shadow=dict(plan.shadow or {}) or None,
                            at_ms=self._now, scale=scale, prestage=getattr(plan, "prestage", None) or None)

    def advance(self, until_ms: float | None) -> None:
        """Run the world and the engine to ``until_ms`` (None: until every submitted job has finished)."""
        if until_ms is None:
            # a job that can never finish (all its nodes gone, no shadow) must not hang the run
            limit = self._now + self.opts["drain_limit_s"] * 1000.0
            while not self._all_done() and self._now < limit:
                self.advance(min(limit, self._now + 10_000.0))
            return
        if until_ms <= self._now:
            return
        self._generate_world(until_ms)
        self._engine.run(until_ms=until_ms)
        self._now = float(until_ms)

    def events(self) -> list[dict[str, Any]]:
        out = []
        while self._pending and self._pending[0][0] <= self._now:
            out.append(heapq.heappop(self._pending)[2])
        return out

    def inject(self, fault: Mapping[str, Any]) -> None:
        """Realise a FaultScenario fault (``at_s`` absolute substrate time, clamped to now)."""
        from ..chaos.realise import as_event, on_engine
        from ..chaos.spec import to_state_events

        ev = as_event(fault, self._cluster)
        if ev.start_s * 1000.0 < self._now:
            ev = replace(ev, start_s=self._now / 1000.0)
        on_engine(self._engine, self._cluster, ev)
        for a, b in ev.pairs:
            end = ev.end_s * 1000.0 if ev.duration_s is not None else math.inf
            for key in ((a, b), (b, a)):
                self._fault_windows.setdefault(key, []).append((ev.start_s * 1000.0, end))
        for e in to_state_events(ev):
            self._push(e["ts"] * 1000.0, dict(e))

    def results(self) -> dict[str, pd.DataFrame]:
        jobs = pd.DataFrame(self._engine.job_columns())
        jobs["ok"] = ~jobs["lost"].astype(bool) if len(jobs) else pd.Series(dtype=bool)
        stages = pd.DataFrame(self._engine.stage_records())
        if len(stages):
            stages["duration_ms"] = stages["end_ms"] - stages["start_ms"]
            stages["ok"] = stages["outcome"] == "ok"
            stages["cpu_ms"] = cpu_ms_of_attempts(stages)   # simulated CPU time (energy proxy input)
        return {"jobs": _conform(jobs, JOB_COLUMNS), "stages": _conform(stages, STAGE_COLUMNS)}

    def close(self) -> None:
        self._pending.clear()
        super().close()

    # ------------------------------------------------------------ ground-truth introspection (V3, V6)
    def set_replan(self, fn) -> None:
        """Re-plan-on-failure hook (V4): ``fn(job, stage_id, failed_node) -> node | None`` is asked when a
        stage without a usable shadow lost its node (after detection + replan time); None: wait for it."""
        self._engine.replan = fn

    def node_up(self, name: str) -> bool:
        """Whether ``name`` is up now (what the node-down/up notifications have told the twin)."""
        return self._engine.node_view(name)[0]

    def true_overheads(self) -> dict[str, float]:
        return dict(self.timing.overheads)

    def speed_drift(self, at_ms: float) -> float:
        """Multiplier of every node's true speed at ``at_ms`` (1 at time 0)."""
        return max(0.05, 1.0 + self.opts["speed_drift_per_min"] * at_ms / 60_000.0)

    def work_factor(self, at_ms: float) -> float:
        """Multiplier of a job's work when it arrives at ``at_ms`` (workload drift)."""
        return max(0.05, 1.0 + self.opts["workload_drift_per_min"] * at_ms / 60_000.0)

    def true_speed(self, node: str, at_ms: float | None = None) -> float:
        at = self._now if at_ms is None else at_ms
        return self._cluster.node(node).speed * self._speed_factor[node] * self.speed_drift(at)

    def background_log(self) -> pd.DataFrame:
        return pd.DataFrame(self._util_log, columns=["t_ms", "node", "cpu_util"])

    # ------------------------------------------------------------ internals
    def _push(self, deliver_ms: float, event: dict[str, Any]) -> None:
        heapq.heappush(self._pending, (deliver_ms, self._seq, event))
        self._seq += 1

    def _on_engine_event(self, event: Mapping[str, Any]) -> None:
        if event.get("kind") in _HIDDEN_KINDS:
            return
        ts = event.get("ts")
        self._push(self._now if ts is None else float(ts) * 1000.0, dict(event))

    def _all_done(self) -> bool:
        c = self._engine.counts()
        return c["in_flight"] == 0 and c["completed"] + c["lost"] >= len(self._submitted)

    def _generate_world(self, until_ms: float) -> None:
        """Draw and schedule the world on its grid up to ``until_ms`` (inclusive), in grid order."""
        o = self.opts
        nodes = self._cluster.nodes
        bg_step = o["background_step_s"] * 1000.0
        while self._next_bg <= until_ms:
            t = self._next_bg
            p_fail = 1.0 - math.exp(-o["failure_rate_per_h"] * bg_step / 3_600_000.0)
            for n in nodes:
                u = self._util[n.name]
                u += 0.1 * (o["background_mean"] - u) + o["background_step_sd"] * self._world_bg.standard_normal()
                u = float(min(o["background_max"], max(0.0, u)))
                self._util[n.name] = u
                self._engine.set_background(n.name, u, at_ms=t)
                self._util_log.append((t, n.name, u))
                if p_fail > 0 and self._world_bg.random() < p_fail and t > self._down_until[n.name]:
                    at = t + self._world_bg.random() * bg_step
                    dur = float(self._world_bg.exponential(o["repair_s"] * 1000.0)) + 1.0
                    self._down_until[n.name] = at + dur
                    self._engine.fail_node(n.name, at, dur)
            self._util_steps.append(dict(self._util))
            self._next_bg += bg_step
        tel_step = o["telemetry_period_s"] * 1000.0
        while self._next_tel <= until_ms:
            t = self._next_tel
            truth = self._util_steps[min(int(t // bg_step), len(self._util_steps) - 1)]
            for n in nodes:
                u = truth[n.name]
                noisy = float(min(1.0, max(0.0, u + o["telemetry_noise"] * self._world_tel.standard_normal())))
                self._push(t + o["telemetry_delay_s"] * 1000.0,
                           {"kind": "telemetry", "node": n.name, "cpu_util": noisy, "ts": t / 1000.0})
            self._next_tel += tel_step
        link_step = o["link_step_s"] * 1000.0
        while self._next_link <= until_ms:
            t = self._next_link
            for link in self._cluster.links:
                m = float(self._world_link.lognormal(0.0, o["link_sigma"])) if o["link_sigma"] > 0 else 1.0
                if self._in_fault((link.a, link.b), t):
                    continue
                varied = replace(link, latency_ms=link.latency_ms * m, bandwidth_mbps=link.bandwidth_mbps / math.sqrt(m))
                self._engine.set_link(link.a, link.b, varied, at_ms=t)
            self._next_link += link_step

    def _in_fault(self, pair: tuple[str, str], t: float) -> bool:
        return any(s <= t < e for s, e in self._fault_windows.get(pair, ()))


def _conform(df: pd.DataFrame, columns) -> pd.DataFrame:
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan
    return df[list(columns) + [c for c in df.columns if c not in columns]]


def _available() -> tuple[bool, str]:
    try:
        import simpy  # noqa: F401
    except ImportError:
        return False, "simpy is not installed"
    return True, ""


register("sim", lambda cluster, **opts: SimSubstrate(cluster, **opts), _available)
