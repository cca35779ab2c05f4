"""What every policy gets (PlanContext) and the vectorised bookkeeping they share (Builder).

Policies build a plan stage by stage in topological order. For the stage at hand the
Builder gives, as arrays over *all* nodes at once, the mean time its inputs arrive
(predecessor end + mean transfer from the predecessor's node) and its mean service time
(speed, format overhead and the static processor-sharing slowdown of
:mod:`dtlab.predict`, including this job's already-placed overlapping stages). Nodes that
are not candidates (down, cordoned, infeasible) or unreachable get ``inf``, so one
``argmin`` never picks them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Protocol, cast

import numpy as np

from ..errors import InfeasibleError
from ..model import Job
from ..predict import node_slowdown, node_table, stage_table
from ..state import Snapshot
from ..timing import MAX_BACKGROUND, TimingModel
from .load import LoadForecast, toll_ms


@dataclass(frozen=True)
class PlanContext:
    snapshot: Snapshot
    job: Job
    timing: TimingModel
    rng: np.random.Generator
    samples: int = 256
    predictor: str = "fast"
    deadline_ms: float | None = None
    load: LoadForecast | None = None   # the twin's arrival-process estimate (None: plan myopically)

    @cached_property
    def nodes(self):
        """Per-snapshot node arrays (:class:`dtlab.predict.NodeTable`)."""
        return node_table(self.snapshot)

    @cached_property
    def stages(self):
        """Per-(job, snapshot) stage x node arrays (:class:`dtlab.predict.StageTable`)."""
        return stage_table(self.snapshot, self.job, self.timing)


class Policy(Protocol):
    name: str

    def plan(self, ctx: PlanContext) -> tuple[dict[str, str], dict[str, str]]: ...


class Builder:
    """Incremental plan under construction: node and mean end time of each placed stage."""

    def __init__(self, ctx: PlanContext):
        self.ctx = ctx
        self.nt = ctx.nodes
        self.st = ctx.stages
        self.node = np.full(self.st.t, -1, dtype=np.int64)
        self.fin_mean = np.zeros(self.st.t)
        self.toll_total = 0.0          # opportunity cost of the stages placed so far (ms)
        load = ctx.load
        self._offered = load.offered(self.nt.names) if load is not None else None
        # the offered load already counts the running stages: utilisation is against cores minus background
        self._bg_capacity = self.nt.cores * (1.0 - np.minimum(self.nt.util, MAX_BACKGROUND))

    def ready_mean(self, i: int) -> np.ndarray:
        """Mean time all inputs of stage i would arrive at each node (inf: unreachable)."""
        return self._inputs_mean(i, after_finish=True)

    def resend_mean(self, i: int) -> np.ndarray:
        """Mean time to (re-)send stage i's inputs to each node once its predecessors are done."""
        return self._inputs_mean(i, after_finish=False)

    def _inputs_mean(self, i: int, after_finish: bool) -> np.ndarray:
        st, nt = self.st, self.nt
        out = np.zeros(nt.n)
        if not st.preds[i]:
            orow = nt.origin_row(self.ctx.job.origin_zone)
            if orow is not None:
                out = orow.mean_ms(self.ctx.job.input_mb)
        for p in st.preds[i]:
            start = self.fin_mean[p] if after_finish else 0.0
            out = np.maximum(out, start + nt.row(int(self.node[p])).mean_ms(st.out_mb[p]))
        return out

    def extra_demand(self, i: int) -> np.ndarray:
        """Cores this job's placed stages that may overlap stage i claim on each node."""
        extra = np.zeros(self.nt.n)
        placed = (self.node >= 0) & ~self.st.related[i]
        if placed.any():
            np.add.at(extra, self.node[placed], self.st.cpu[placed])
        return extra

    def svc_mean(self, i: int) -> np.ndarray:
        st = self.st
        return st.base_svc[i] * node_slowdown(self.nt, st.cpu[i], self.extra_demand(i), st.base_svc[i])

    def finish_mean(self, i: int) -> np.ndarray:
        """Mean end time of stage i on each node; inf where it may not or cannot run."""
        f = self.ready_mean(i) + self.svc_mean(i)
        return np.where(self.st.candidates[i], f, np.inf)

    def toll(self, i: int) -> np.ndarray:
        """Per node, the delay placing stage i there imposes on other jobs (ms; zeros without a load
        forecast): :func:`dtlab.policies.load.toll_ms` of its *bare* mean service (full allocation:
        congestion enters through the node's utilisation, not twice) and the node's offered load."""
        if self._offered is None:
            return np.zeros(self.nt.n)
        svc = self.st.base_svc[i]
        t = toll_ms(np.where(np.isfinite(svc), svc, 0.0), self._offered, self._bg_capacity, float(self.st.cpu[i]),
                    cast(LoadForecast, self.ctx.load).weight)   # _offered is set only with a forecast
        return np.where(np.isfinite(svc), t, np.inf)

    def require(self, i: int, values: np.ndarray) -> None:
        """Raise InfeasibleError naming stage i when no node has a finite value."""
        if np.isfinite(values).any():
            return
        st, nt = self.st, self.nt
        sid = st.ids[i]
        feasible = int(st.feasible[i].sum())
        sched = int(st.candidates[i].sum())
        raise InfeasibleError(
            f"job {self.ctx.job.name!r}: no node for stage {sid!r} "
            f"({nt.n} nodes, {feasible} satisfy its constraints, {sched} of those are schedulable, "
            f"none reachable from its inputs)" if sched else
            f"job {self.ctx.job.name!r}: no node for stage {sid!r} "
            f"({nt.n} nodes, {feasible} satisfy its constraints, none schedulable: down or cordoned)")

    def place(self, i: int, node: int, fin_mean: float, toll: float = 0.0) -> None:
        self.node[i] = node
        self.fin_mean[i] = fin_mean
        self.toll_total += toll

    def copy(self) -> "Builder":
        """An independent copy of the plan so far (for rollouts)."""
        other = copy.copy(self)
        other.node, other.fin_mean = self.node.copy(), self.fin_mean.copy()
        return other

    def placement(self) -> dict[str, str]:
        return {sid: self.nt.names[int(self.node[i])] for i, sid in enumerate(self.st.ids)}


ROLLOUT_K = 6   # candidates per stage a load-aware greedy completes to the end of the job


def _greedy_step(b: Builder, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean end time, toll) of stage i on every node (inf where it may not or cannot run)."""
    svc = b.svc_mean(i)
    f = np.where(b.st.candidates[i], b.ready_mean(i) + svc, np.inf)
    b.require(i, f)
    return f, b.toll(i)


def _complete(b: Builder, start: int) -> float:
    """Greedily place stages ``start``.. (lowest end time + toll each); the job's cost: end + total toll."""
    for j in range(start, b.st.t):
        f, toll = _greedy_step(b, j)
        n = int(np.argmin(f + toll))
        b.place(j, n, float(f[n]), float(toll[n]))
    sinks = [j for j in range(b.st.t) if not b.st.succs[j]]
    return float(max(b.fin_mean[j] for j in sinks)) + b.toll_total


def greedy_placement(ctx: PlanContext) -> tuple[Builder, dict[str, str]]:
    """Stage by stage, the node with the lowest mean end time (the ``greedy`` policy's core).

    Under load (``ctx.load``: the toll of :mod:`dtlab.policies.load` is not zero) each stage's
    ``ROLLOUT_K`` best nodes by end time + toll are each completed greedily to the end of the job
    and the one with the lowest *job* cost (end time + total toll) is kept: stage by stage alone,
    a first stage placed where it is cheap could strand its successors where their own toll is
    prohibitive (the pipeline's 20 MB intermediate then crosses a lossy uplink).
    """
    b = Builder(ctx)
    for i in range(b.st.t):
        f, toll = _greedy_step(b, i)
        key = f + toll
        if ctx.load is None or i == b.st.t - 1:
            n = int(np.argmin(key))
        else:
            k = min(ROLLOUT_K, int(np.isfinite(key).sum()))
            cand = np.argsort(key, kind="stable")[:k]
            costs = []
            for c in cand:
                trial = b.copy()
                trial.place(i, int(c), float(f[c]), float(toll[c]))
                costs.append(_complete(trial, i + 1))
            n = int(cand[int(np.argmin(costs))])
        b.place(i, n, float(f[n]), float(toll[n]))
    return b, b.placement()


def as_mapping(placement: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in placement.items()}
