"""``energy``: least expected energy subject to a deadline-miss probability bound (default 5 %).

Energy is the power model of :mod:`dtlab.energy` applied to the CPU time a stage needs on a node
(cpu x service time with speed and format overhead), so the cheapest node for a stage does not
depend on where the other stages go; the deadline couples them. The policy therefore builds a
short list of plans that trade energy for time, stage by stage in topological order, minimising

    energy_i(node) / E_ref  +  lam * finish_mean_i(node) / T_ref

for a ladder of ``lam`` from 0 (pure least energy) to large (close to ``greedy``), plus the greedy
plan itself. Every distinct plan is scored by the fast predictor on the same random numbers
(common random numbers: candidates compared on the same luck). Among plans whose predicted
deadline-miss probability is <= ``miss_bound``, the least expected energy wins; if none meets the
bound, the lowest miss probability wins (energy breaks ties). Without a deadline: least energy.
"""
from __future__ import annotations

import numpy as np

from ..energy import stage_energy_matrix
from ..predict import sample_latencies
from . import register
from .base import Builder, PlanContext, greedy_placement

LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)


def expected_energy(ctx: PlanContext, placement: dict[str, str], energy: np.ndarray) -> float:
    """Mean energy (J) of a placement, with the failure model of dtlab.energy (half the work lost on a failure)."""
    nt, st = ctx.nodes, ctx.stages
    cols = np.array([nt.index[placement[sid]] for sid in st.ids])
    e = energy[np.arange(st.t), cols]
    return float((e * (1.0 + 0.5 * nt.fail_prob[cols])).sum())


@register("energy")
class Energy:
    name = "energy"
    miss_bound = 0.05

    def _ladder_plan(self, ctx: PlanContext, energy: np.ndarray, lam: float) -> dict[str, str]:
        b = Builder(ctx)
        for i in range(b.st.t):
            f = b.finish_mean(i)
            b.require(i, f)
            ok = np.isfinite(f) & np.isfinite(energy[i])
            if not ok.any():
                ok = np.isfinite(f)
            e_ref = max(float(np.min(energy[i][ok])), 1e-12) if np.isfinite(energy[i][ok]).any() else 1.0
            t_ref = max(float(np.min(f[ok])), 1e-9)
            e = np.where(np.isfinite(energy[i]), energy[i], 0.0)
            score = np.where(ok, e / e_ref + lam * np.where(ok, f, 0.0) / t_ref, np.inf)
            best = float(np.min(score))
            ties = np.flatnonzero(score <= best * (1 + 1e-12))
            n = int(ties[np.argmin(f[ties])])           # equal score: the earlier finish
            b.place(i, n, float(f[n]))
        return b.placement()

    def plan(self, ctx: PlanContext):
        energy = stage_energy_matrix(ctx.nodes, ctx.stages)
        plans: list[dict[str, str]] = []
        for lam in LAMBDAS:
            p = self._ladder_plan(ctx, energy, lam)
            if p not in plans:
                plans.append(p)
        greedy = greedy_placement(ctx)[1]
        if greedy not in plans:
            plans.append(greedy)
        cost = np.array([expected_energy(ctx, p, energy) for p in plans])
        deadline = ctx.deadline_ms
        if not deadline:
            return plans[int(np.argmin(cost))], {}
        samples = max(int(ctx.samples), 64)
        seed = int(ctx.rng.integers(2**63))
        miss = np.array([float((sample_latencies(ctx.snapshot, ctx.job, p, predictor="fast", samples=samples,
                                                 rng=np.random.default_rng(seed), timing=ctx.timing)
                                > deadline).mean()) for p in plans])
        ok = miss <= self.miss_bound
        if ok.any():
            return plans[int(np.argmin(np.where(ok, cost, np.inf)))], {}
        return plans[int(np.lexsort((cost, miss))[0])], {}
