"""``greedy``: minimum predicted mean latency, stage by stage.

In topological order each stage goes to the node with the lowest mean end time: its
inputs' arrival (predecessor end + mean transfer from the predecessor's node) plus its
mean service time under the node's current load (background util, running stages, this
job's overlapping stages). One vectorised ``argmin`` over all nodes per stage, so a
1,000-node cluster costs little more than a 10-node one. Ignores failure risk and tails.

Under load it minimises mean end time *plus the toll* of :mod:`dtlab.policies.load`: the
delay the stage would impose on the jobs sharing the node now and arriving while it runs,
from the twin's estimate of the arrival process (zero until the twin has seen a few
submissions, so a single what-if plan is the plain mean-latency choice).
"""
from __future__ import annotations

from . import register
from .base import PlanContext, greedy_placement


@register("greedy")
class Greedy:
    name = "greedy"

    def plan(self, ctx: PlanContext):
        return greedy_placement(ctx)[1], {}
