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

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Protocol

import numpy as np

from ..errors import InfeasibleError
from ..model import Job
from ..predict import node_slowdown, node_table, stage_table
from ..timing import TimingModel


@dataclass(frozen=True)
class PlanContext:
    snapshot: object              # dtlab.state.Snapshot
    job: Job
    timing: TimingModel
    rng: np.random.Generator
    samples: int = 256
    predictor: str = "fast"
    deadline_ms: float | None = None

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

    def place(self, i: int, node: int, fin_mean: float) -> None:
        self.node[i] = node
        self.fin_mean[i] = fin_mean

    def placement(self) -> dict[str, str]:
        return {sid: self.nt.names[int(self.node[i])] for i, sid in enumerate(self.st.ids)}


def greedy_placement(ctx: PlanContext) -> tuple[Builder, dict[str, str]]:
    """Stage by stage, the node with the lowest mean end time (the ``greedy`` policy's core)."""
    b = Builder(ctx)
    for i in range(b.st.t):
        f = b.finish_mean(i)
        b.require(i, f)
        n = int(np.argmin(f))
        b.place(i, n, float(f[n]))
    return b, b.placement()


def as_mapping(placement: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in placement.items()}
