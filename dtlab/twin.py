"""Twin: the cluster mirror (ClusterState) + predictors + policies behind one object.

``twin.plan(job)`` takes one snapshot, lets the policy choose placement and shadow, then
scores the chosen plan with the selected predictor; everything random comes from
generators spawned from ``seed``, so the same seed on the same state gives the same plan
and the same prediction. ``twin.simulate(workload)`` runs the SimPy engine over a whole
workload with this twin's policy in the loop.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from . import energy, policies
from .errors import SpecError
from .model import Cluster, Job
from .plan import Plan
from .predict import PREDICTORS, score_plan, stage_table
from .state import ClusterState
from .timing import TimingModel

SIMULATE_SAMPLES = 32   # samples per plan inside simulate(): plans are many, each needs only a ranking


def _check_samples(samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise SpecError("samples", f"must be an integer >= 1, got {samples!r}")
    return int(samples)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError("seed", f"must be a non-negative integer, got {seed!r}")
    return int(seed)


class Twin:
    def __init__(self, cluster_or_state: Cluster | ClusterState, timing: TimingModel | None = None):
        if isinstance(cluster_or_state, ClusterState):
            self.state = cluster_or_state
        elif isinstance(cluster_or_state, Cluster):
            self.state = ClusterState(cluster_or_state)
        else:
            raise SpecError("cluster", f"must be a Cluster or ClusterState, got {type(cluster_or_state).__name__}")
        self.timing = timing or TimingModel()
        self._policies: dict[str, object] = {}

    def policy(self, name: str):
        """This twin's instance of a registered policy (created on first use, so stateful ones persist)."""
        if name not in self._policies:
            self._policies[name] = policies.get(name)
        return self._policies[name]

    # ------------------------------------------------------------------ planning
    def plan(self, job: Job, policy: str = "greedy", samples: int = 256, seed: int = 0,
             predictor: str = "fast", snapshot=None) -> Plan:
        """Place ``job`` with ``policy`` on the current state and predict its latency with ``predictor``."""
        t0 = time.perf_counter()
        samples, seed = _check_samples(samples), _check_seed(seed)
        if predictor not in PREDICTORS:
            raise SpecError("predictor", f"must be one of {list(PREDICTORS)}, got {predictor!r}")
        pol = self.policy(policy)
        snap = snapshot if snapshot is not None else self.state.snapshot()
        plan_rng, pred_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        ctx = policies.PlanContext(snapshot=snap, job=job, timing=self.timing, rng=plan_rng, samples=samples,
                                   predictor=predictor, deadline_ms=job.deadline_ms)
        placement, shadow = pol.plan(ctx)
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
                predictor: str = "fast", samples: int = 256, seed: int = 0) -> dict:
        """Prediction dict for a placement chosen elsewhere (e.g. by the real scheduler)."""
        samples, seed = _check_samples(samples), _check_seed(seed)
        return score_plan(self.state.snapshot(), job, placement, shadow, predictor=predictor, samples=samples,
                          rng=np.random.default_rng(seed), timing=self.timing)

    # ------------------------------------------------------------------ simulation
    def plan_fn(self, policy: str = "greedy", samples: int = SIMULATE_SAMPLES):
        """``plan_fn(job, snapshot, rng) -> (placement, shadow)`` as :func:`dtlab.des.simulate.simulate` calls it.

        Cheap enough to run at every arrival: the policy alone, no final prediction, and
        ``samples`` (default 32) for policies that sample (cvar) - they only need a ranking.
        """
        pol = self.policy(policy)
        timing = self.timing

        def plan_fn(job, snapshot, rng):
            ctx = policies.PlanContext(snapshot=snapshot, job=job, timing=timing, rng=rng, samples=samples,
                                       predictor="fast", deadline_ms=job.deadline_ms)
            return pol.plan(ctx)
        return plan_fn

    def simulate(self, workload, policy: str = "greedy", seed: int = 0):
        """Run ``workload`` through the SimPy engine with ``policy`` placing each job; one DataFrame row per job."""
        from .des.simulate import simulate  # SimPy engine: imported on demand
        seed = _check_seed(seed)
        self.policy(policy)  # unknown names fail before the run starts
        return simulate(self.state, workload, self.plan_fn(policy), seed, self.timing)
