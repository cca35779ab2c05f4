"""``heft``: heterogeneity-aware earliest-finish-time list scheduling (Topcuoglu et al., 2002), no Monte Carlo.

A strong static baseline: it knows what an operator's cost tables would hold -- each
stage's mean service per node (``duration * format overhead / speed``: heterogeneity
aware) and each link's mean transfer time (the twin's link model, mean only) -- but
neither the twin's contention model (processor sharing, background telemetry) nor any
sampling. Settings, fixed before the DT policies were tuned (they are HEFT's own rules):

1. **Priority**: stages in decreasing *upward rank* ``rank(i) = w_i + max_j (c_ij +
   rank(j))`` over successors ``j``, with ``w_i`` the mean service over the nodes that can
   run ``i`` and ``c_ij`` the mean transfer of ``i``'s output over the cluster's node pairs
   (zone-pair links weighted by node counts).
2. **Node**: the one with the earliest finish time ``EFT = max(ready, avail) + w_in``:
   ``ready`` when its inputs arrive (predecessor EFT + mean transfer), ``avail`` the
   earliest time the node has the stage's CPU request free, from the requests of the
   stages running there (each leaves after its known remaining work; stages the twin did
   not plan never leave) and of this job's stages already placed (non-insertion variant:
   a stage waits for cores rather than sharing them, as HEFT's machine model assumes).
3. Nodes that never free enough cores get ``inf``; if no node has a finite EFT (the whole
   cluster is overcommitted by stages that stay), the stage goes to the node with the
   twin's lowest mean end time (the only finite estimate there is).
"""
from __future__ import annotations

import numpy as np

from ..predict import JITTER_MEAN
from . import register
from .base import Builder, PlanContext


def mean_transfer_ms(nt, size_mb: float) -> float:
    """Mean transfer time of ``size_mb`` over the cluster's node pairs (zone links weighted by node counts)."""
    lat, mpm, jit, loss, rto, ok = nt.zparams
    cost = lat + jit * JITTER_MEAN + (size_mb * mpm + loss * rto if size_mb > 0 else 0.0)
    counts = np.bincount(nt.zone_idx, minlength=len(nt.zones)).astype(float)
    w = np.outer(counts, counts) * ok
    same = np.eye(len(nt.zones), dtype=bool)
    # node pairs within a zone include the node with itself (no transfer): count those at 0 ms
    pairs_same = counts * (counts - 1)
    w = np.where(same, pairs_same, w)
    return float((cost * w).sum() / w.sum()) if w.sum() > 0 else 0.0


def upward_ranks(nt, st) -> np.ndarray:
    feas = np.where(st.feasible, st.base_svc, np.nan)
    w = np.array([np.nanmean(r) if np.isfinite(r).any() else 0.0 for r in feas])
    rank = np.zeros(st.t)
    for i in reversed(range(st.t)):
        rank[i] = w[i] + max((mean_transfer_ms(nt, float(st.out_mb[i])) + rank[j] for j in st.succs[i]), default=0.0)
    return rank


def node_avail_ms(nt, n: int, need: float, own: list[tuple[float, float]]) -> float:
    """Earliest time (ms from now) node ``n`` has ``need`` cores free by requests; inf if never."""
    seg = nt.co_at.get(n)
    leaving = [] if seg is None else list(zip(nt.co_rem[seg].tolist(), nt.co_cpu[seg].tolist()))
    leaving += own
    free = float(nt.cores[n] - nt.stay[n]) - sum(c for _, c in leaving)
    if free >= need - 1e-9:
        return 0.0
    for t, c in sorted(leaving):
        free += c
        if free >= need - 1e-9:
            return float(t)
    return float("inf")


@register("heft")
class HEFT:
    name = "heft"

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        nt, st = b.nt, b.st
        rank = upward_ranks(nt, st)
        order = sorted(range(st.t), key=lambda i: (-rank[i], i))    # a topological order (w > 0)
        own: dict[int, list[tuple[float, float]]] = {}
        for i in order:
            ready = b.ready_mean(i)
            ok = st.candidates[i] & np.isfinite(ready)
            b.require(i, np.where(ok, 0.0, np.inf))
            avail = np.zeros(nt.n)
            busy = set(nt.co_at) | set(own) | set(np.flatnonzero(nt.stay > 0).tolist())
            for n in busy:
                if ok[n]:
                    avail[n] = node_avail_ms(nt, n, float(st.cpu[i]), own.get(n, []))
            eft = np.where(ok, np.maximum(ready, avail) + st.base_svc[i], np.inf)
            if not np.isfinite(eft).any():
                eft = b.finish_mean(i)
            n = int(np.argmin(eft))
            b.place(i, n, float(eft[n]))
            own.setdefault(n, []).append((float(eft[n]), float(st.cpu[i])))
        return b.placement(), {}
