"""``rl_stub``: the interface a learning policy plugs into; no learned policy ships with dtlab.

A learning policy sees the same world as the heuristic ones, as fixed-shape arrays:

``observation(ctx)`` returns a dict of numpy arrays
    ``nodes``      (N, 8) float: speed, cores, capacity (cores x (1 - util)), running_cpu,
                   fail_prob, schedulable (0/1), zone index, mem_gb
    ``stages``     (T, 5) float, in ``stage_ids`` order (topological): cpu, mem_gb,
                   duration_ms, output_mb, number of predecessors
    ``edges``      (E, 2) int: (predecessor, successor) stage indices
    ``mean_service_ms`` (T, N) float: mean service time per stage and node (inf: cannot run)
    ``mask``       (T, N) bool: the node is schedulable and feasible for the stage
    ``zone_latency_ms`` (Z, Z) float: current one-way latency between zones (inf: no link)
    ``deadline_ms`` float (nan when none)
plus ``node_names`` and ``stage_ids`` to map indices back.

The **action** is an int array of shape (T,): a node index per stage, in ``stage_ids``
order, that must satisfy ``mask``; optionally a second (T,) array of shadow node indices
(-1: none). The natural **reward** is ``-latency_ms`` of the job (or ``-missed``), observed
from ``twin.simulate`` or a substrate. Subclass :class:`RLStub`, implement ``act`` and
register the subclass under a new name.
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import PlanContext


@register("rl_stub")
class RLStub:
    name = "rl_stub"

    def observation(self, ctx: PlanContext) -> dict:
        nt, st = ctx.nodes, ctx.stages
        nodes = np.column_stack([nt.speed, nt.cores, nt.capacity, nt.running, nt.fail_prob,
                                 nt.schedulable.astype(float), nt.zone_idx.astype(float), nt.mem])
        stages = np.array([[s.compute.cpu, s.compute.mem_gb, s.compute.duration_ms, s.output_mb, len(s.after)]
                           for s in st.stages], dtype=float)
        edges = np.array([(p, j) for j in range(st.t) for p in st.preds[j]], dtype=np.int64).reshape(-1, 2)
        lat = np.where(nt.zparams[5] > 0, nt.zparams[0], np.inf)
        return {"nodes": nodes, "stages": stages, "edges": edges, "mean_service_ms": st.base_svc.copy(),
                "mask": st.candidates.copy(), "zone_latency_ms": lat,
                "deadline_ms": float(ctx.deadline_ms) if ctx.deadline_ms else float("nan"),
                "node_names": list(nt.names), "stage_ids": list(st.ids)}

    def act(self, observation: dict):
        raise NotImplementedError(
            "rl_stub is an interface, not a policy: subclass dtlab.policies.rl_stub.RLStub, implement "
            "act(observation) -> node index per stage (see the module docstring), and register it under a new name")

    def plan(self, ctx: PlanContext):
        obs = self.observation(ctx)
        action = self.act(obs)
        shadow_idx = None
        if isinstance(action, tuple):
            action, shadow_idx = action
        action = np.asarray(action, dtype=np.int64)
        names, ids = obs["node_names"], obs["stage_ids"]
        if action.shape != (len(ids),) or not obs["mask"][np.arange(len(ids)), action].all():
            from ..errors import InfeasibleError
            raise InfeasibleError(f"{self.name}: action must pick a masked-in node for each of {ids}")
        placement = {sid: names[int(n)] for sid, n in zip(ids, action)}
        shadow = {} if shadow_idx is None else {sid: names[int(n)] for sid, n in zip(ids, shadow_idx) if n >= 0}
        return placement, shadow
