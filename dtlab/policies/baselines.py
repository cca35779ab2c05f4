"""Baselines without a twin: ``least-allocated`` (Kubernetes-default-like), ``random``, ``round-robin``.

They see the same candidate set as the twin's policies (schedulable, feasible, reachable
nodes) but no timing model: that is the point of experiment V1.
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import Builder, PlanContext


def _reachable(b: Builder, i: int) -> np.ndarray:
    ok = np.isfinite(b.finish_mean(i))
    b.require(i, np.where(ok, 0.0, np.inf))
    return ok


@register("least-allocated")
class LeastAllocated:
    """Kubernetes' NodeResourcesFit ``LeastAllocated`` score: mean of free CPU and free memory fractions.

    Requests, not utilisation, as the scheduler does: cores claimed by running stages
    (``running_cpu``) and by this job's stages already placed, plus the stage's own request.
    Nodes whose free requests cannot take the stage are filtered out first, as the scheduler's
    NodeResourcesFit filter does; when no node passes, all candidates stay (the twin has no
    pending queue: the stage then shares an overcommitted node). Ties go to the first node in
    cluster order (kube-scheduler breaks them at random).
    """
    name = "least-allocated"

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        nt, st = b.nt, b.st
        mem_req = np.array([s.compute.mem_gb for s in st.stages])
        cpu_used = nt.running.copy()
        mem_used = np.zeros(nt.n)
        for i in range(st.t):
            ok = _reachable(b, i)
            free_cpu, free_mem = nt.cores - cpu_used - st.cpu[i], nt.mem - mem_used - mem_req[i]
            fits = ok & (free_cpu >= 0) & (free_mem >= 0)     # the NodeResourcesFit filter
            if fits.any():
                ok = fits
            score = (free_cpu / nt.cores + free_mem / nt.mem) / 2
            n = int(np.argmax(np.where(ok, score, -np.inf)))
            b.place(i, n, 0.0)
            cpu_used[n] += st.cpu[i]
            mem_used[n] += mem_req[i]
        return b.placement(), {}


@register("random")
class Random:
    """Uniform over the candidate nodes, drawn from the plan's seeded rng."""
    name = "random"

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        for i in range(b.st.t):
            ok = np.flatnonzero(_reachable(b, i))
            b.place(i, int(ctx.rng.choice(ok)), 0.0)
        return b.placement(), {}


@register("round-robin")
class RoundRobin:
    """The next candidate node in cluster order after the last one used (the cursor lives as long as the Twin)."""
    name = "round-robin"

    def __init__(self):
        self.cursor = 0

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        n_nodes = b.nt.n
        for i in range(b.st.t):
            ok = _reachable(b, i)
            order = (np.arange(n_nodes) + self.cursor) % n_nodes
            n = int(order[np.argmax(ok[order])])
            b.place(i, n, 0.0)
            self.cursor = (n + 1) % n_nodes
        return b.placement(), {}


@register("kube-scheduler")
class KubeScheduler(LeastAllocated):
    """The real kube-scheduler as a baseline (default profile). On ``substrate: kube`` the pods are
    created unpinned and the scheduler of the cluster places them (``UNPINNED``): the node a stage
    ran on is the one observed, not this placement. The placement here is only the twin's guess of
    the scheduler's choice (LeastAllocated, the default profile's main score), used for its
    predictions and, on ``sim``/``fabric`` which have no scheduler, as the placement itself."""
    name = "kube-scheduler"


@register("kube-scheduler+extender")
class KubeSchedulerExtender(LeastAllocated):
    """The real kube-scheduler with ``dtlab serve --extender`` in its loop (a second scheduler,
    ``schedulerName: dtlab-extender``, see :func:`dtlab.kube.localplane.start_extender_scheduler`)."""
    name = "kube-scheduler+extender"


# policy -> schedulerName of the pods it creates unpinned on substrate kube
UNPINNED = {"kube-scheduler": "default-scheduler", "kube-scheduler+extender": "dtlab-extender"}
