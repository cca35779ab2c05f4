"""Twin: the cluster mirror (ClusterState) + predictors + policies behind one object.

``twin.plan(job)`` takes one snapshot, lets the policy choose placement and shadow, then
scores the chosen plan with the selected predictor; everything random comes from
generators spawned from ``seed``, so the same seed on the same state gives the same plan
and the same prediction. ``twin.simulate(workload)`` runs the SimPy engine over a whole
workload with this twin's policy in the loop.

Load awareness: the twin keeps an :class:`~dtlab.policies.load.ArrivalEstimator` fed by
:meth:`Twin.observe_submission` (the controller reports every job it submitted; ``simulate``
reports its own), and every plan's policy sees its forecast (arrival rate, offered load per
node) as ``PlanContext.load``; see :mod:`dtlab.policies.load` for what the DT policies do
with it. ``load_aware=False`` turns it off (the myopic policies of earlier versions).
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from . import energy, policies
from .errors import SpecError
from .strict_json import short
from .model import Cluster, Job, Workload
from .policies.base import Policy
from .policies.load import ArrivalEstimator, LoadForecast
from .plan import Plan
from . import predict
from .predict import score_plan, stage_table
from .state import ClusterState, Snapshot
from .timing import TimingModel

SIMULATE_SAMPLES = 32   # samples per plan inside simulate(): plans are many, each needs only a ranking


MAX_SAMPLES = 1_000_000    # the fast predictor holds samples x stages floats per array
MAX_SEED = 2**128 - 1      # SeedSequence entropy; seeds derived inside experiments exceed 2**64


# what the simulator calls at every arrival: (job, snapshot, rng) -> (placement, shadow)
PlanFn = Callable[[Job, Snapshot, np.random.Generator], tuple[dict[str, str], dict[str, str]]]


def _check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= MAX_SAMPLES:
        raise SpecError("samples", f"must be an integer in [1, {MAX_SAMPLES:,}], got {short(samples)}")
    return int(samples)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise SpecError("seed", f"must be an integer in [0, 2**128 - 1], got {short(seed)}")
    return int(seed)


def _run_policy(pol, ctx, name: str):
    """``pol.plan(ctx)``; an interface-only policy (rl_stub) is a SpecError naming it, not a traceback."""
    try:
        return pol.plan(ctx)
    except NotImplementedError as exc:
        raise SpecError("policy", f"{name!r} cannot plan: {str(exc)[:300]}") from None


class Twin:
    def __init__(self, cluster_or_state: Cluster | ClusterState, timing: TimingModel | None = None,
                 load_aware: bool = True):
        if isinstance(cluster_or_state, ClusterState):
            self.state = cluster_or_state
        elif isinstance(cluster_or_state, Cluster):
            self.state = ClusterState(cluster_or_state)
        else:
            raise SpecError("cluster", f"must be a Cluster or ClusterState, got {type(cluster_or_state).__name__}")
        self.timing = timing or TimingModel()
        self._policies: dict[str, Policy] = {}
        self.load_aware = bool(load_aware)
        self.arrivals = ArrivalEstimator()

    def observe_submission(self, job: Job, placement: Mapping[str, str], ts: float,
                           snapshot: Snapshot | None = None) -> None:
        """Record that ``job`` was submitted at ``ts`` (seconds) with ``placement``: one sample of the
        arrival process, carrying the core-ms of work it put on each node (cores x the twin's mean
        service at full allocation there)."""
        snap = snapshot if snapshot is not None else self.state.snapshot()
        st = stage_table(snap, job, self.timing)
        nt_index = {n.name: k for k, n in enumerate(snap.cluster.nodes)}
        work: dict[str, float] = {}
        for sid, node in placement.items():
            i, k = st.index.get(sid), nt_index.get(node)
            if i is None or k is None or k >= st.base_svc.shape[1]:
                continue
            svc = float(st.base_svc[i, k])
            if np.isfinite(svc):
                work[node] = work.get(node, 0.0) + float(st.cpu[i]) * svc
        self.arrivals.observe(float(ts), work)

    def load_forecast(self, snapshot: Snapshot) -> LoadForecast | None:
        """The arrival forecast policies plan with at ``snapshot`` (None when off or too little evidence)."""
        if not self.load_aware:
            return None
        now = snapshot.clock if snapshot.clock is not None else None
        return self.arrivals.forecast(now)

    def policy(self, name: str) -> Policy:
        """This twin's instance of a registered policy (created on first use, so stateful ones persist)."""
        if name not in self._policies:
            self._policies[name] = policies.get(name)
        return self._policies[name]

    # ------------------------------------------------------------------ planning
    def plan(self, job: Job, policy: str = "greedy", samples: int = 256, seed: int = 0,
             predictor: str = "fast", snapshot: Snapshot | None = None) -> Plan:
        """Place ``job`` with ``policy`` on the current state and predict its latency with ``predictor``."""
        t0 = time.perf_counter()
        samples, seed = _check_samples(samples), _check_seed(seed)
        predict.check(predictor)
        pol = self.policy(policy)
        snap = snapshot if snapshot is not None else self.state.snapshot()
        plan_rng, pred_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        ctx = policies.PlanContext(snapshot=snap, job=job, timing=self.timing, rng=plan_rng, samples=samples,
                                   predictor=predictor, deadline_ms=job.deadline_ms, load=self.load_forecast(snap))
        placement, shadow = _run_policy(pol, ctx, policy)
        prediction = score_plan(snap, job, placement, shadow, predictor=predictor, samples=samples,
                                rng=pred_rng, timing=self.timing)
        prediction.update(energy.predict(snap, job, placement, self.timing, samples, seed))  # issue 23
        st = stage_table(snap, job, self.timing)
        nt = ctx.nodes
        formats = {sid: st.format_of(nt, st.index[sid], nt.index[node]) for sid, node in placement.items()}
        return Plan(job=job.name, policy=policy, placement=dict(placement), shadow=dict(shadow), formats=formats,
                    prediction=prediction, predictor=predictor, samples=samples,
                    elapsed_ms=(time.perf_counter() - t0) * 1e3, state_version=snap.version)

    def predict(self, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None,
                predictor: str = "fast", samples: int = 256, seed: int = 0) -> dict[str, float]:
        """Prediction dict for a placement chosen elsewhere (e.g. by the real scheduler)."""
        samples, seed = _check_samples(samples), _check_seed(seed)
        return score_plan(self.state.snapshot(), job, placement, shadow, predictor=predictor, samples=samples,
                          rng=np.random.default_rng(seed), timing=self.timing)

    # ------------------------------------------------------------------ simulation
    def plan_fn(self, policy: str = "greedy", samples: int = SIMULATE_SAMPLES) -> PlanFn:
        """``plan_fn(job, snapshot, rng) -> (placement, shadow)`` as :func:`dtlab.des.simulate.simulate` calls it.

        Cheap enough to run at every arrival: the policy alone, no final prediction, and
        ``samples`` (default 32) for policies that sample (cvar) - they only need a ranking.
        """
        pol = self.policy(policy)
        timing = self.timing

        def plan_fn(job: Job, snapshot: Snapshot, rng: np.random.Generator) -> tuple[dict[str, str], dict[str, str]]:
            now = snapshot.clock if snapshot.clock is not None else snapshot.taken_at
            load = self.arrivals.forecast(now) if self.load_aware else None
            ctx = policies.PlanContext(snapshot=snapshot, job=job, timing=timing, rng=rng, samples=samples,
                                       predictor="fast", deadline_ms=job.deadline_ms, load=load)
            placement, shadow = _run_policy(pol, ctx, policy)
            self.observe_submission(job, placement, now, snapshot)
            return placement, shadow
        return plan_fn

    def simulate(self, workload: Workload, policy: str = "greedy", seed: int = 0) -> pd.DataFrame:
        """Run ``workload`` through the SimPy engine with ``policy`` placing each job; one DataFrame row per job."""
        from .des.simulate import simulate  # SimPy engine: imported on demand
        seed = _check_seed(seed)
        self.policy(policy)  # unknown names fail before the run starts
        return simulate(self.state, workload, self.plan_fn(policy), seed, self.timing)
