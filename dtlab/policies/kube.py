"""Strong twin-less baselines modelled on what a Kubernetes operator would actually run.

``k8s-default``
    A faithful emulation of the default kube-scheduler profile's *scoring* for one pod per
    stage, with the data-locality preferences a user would write into the pod spec. Settings
    (fixed before any DT policy was tuned; they are the upstream defaults, not knobs):

    * **Filter** NodeResourcesFit: the stage's CPU/memory requests must fit beside the
      requests of the stages running on the node (``running_cpu``) and of this job's stages
      already placed. When no candidate fits, the real scheduler leaves the pod Pending; the
      twin's substrates have no pending queue, so all candidates stay in (the stage then
      shares an overcommitted node) -- the same rule as ``least-allocated``.
    * **Score**, each plugin normalised to 0..100 and weighted as in the default profile
      (kube-scheduler v1.2x ``KubeSchedulerConfiguration`` defaults):
      NodeResourcesFit ``LeastAllocated`` (weight 1; mean of free CPU and memory fractions
      after adding the request), NodeResourcesBalancedAllocation (weight 1; ``1 - std`` of the
      CPU and memory request fractions), NodeAffinity (weight 2) and InterPodAffinity
      (weight 1). TaintToleration and ImageLocality add the same score to every node here (no
      taints, no image cache model), so they cannot change a choice and are left out;
      PodTopologySpread's system default only spreads pods of one Service/ReplicaSet, which
      one job's stages are not.
    * **Locality a user would set**: every stage prefers (``preferredDuringScheduling``,
      weight 100) nodes in the zone the job's input comes from (``metadata.origin.zone``) --
      NodeAffinity -- and, for a stage with predecessors, pods of its predecessors in the same
      zone (podAffinity, ``topologyKey: topology.kubernetes.io/zone``, weight 100 each) --
      InterPodAffinity. Without these, least-allocated ships the example pipeline's input
      over the lossy edge uplink, which no operator would do.
    * Ties among the top score go to a random node (kube-scheduler's ``selectHost``),
      drawn from the plan's seeded rng.

``load-risk-balancing``
    Trimaran's LoadVariationRiskBalancing score plug-in in the same profile (its upstream
    example profile replaces the NodeResourcesFit/BalancedAllocation scores by it; filter and
    locality preferences stay as above). Per node and resource, ``risk = (mu + k * sigma) / 2``
    with ``mu``/``sigma`` the mean and standard deviation of the node's utilisation over a
    sliding window plus the pod's request, ``score = (1 - risk) * 100``; the node's score is
    the minimum over CPU and memory. Settings: the plug-in's defaults ``safeVarianceMargin``
    k = 1 and ``safeVarianceSensitivity`` 1; the window is the last ``window`` (30) plans' views
    of the node's utilisation (telemetry background + cores of running stages / cores) -- the
    load-watcher's 5-minute window at the experiments' arrival rates. Memory utilisation is
    the requests of this job's placed stages (the twin has no memory telemetry).
"""
from __future__ import annotations

from collections import deque

import numpy as np

from . import register
from .base import Builder, PlanContext

LOCALITY_WEIGHT = 100.0          # preferred term weight (the maximum a pod spec allows)
WEIGHTS = {"fit": 1.0, "balanced": 1.0, "node_affinity": 2.0, "pod_affinity": 1.0, "lvrb": 1.0}


def _normalise_max(score: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """DefaultNormalizeScore: scale so the best feasible node gets 100 (all 0 stays 0)."""
    top = score[ok].max() if ok.any() else 0.0
    return score * (100.0 / top) if top > 0 else np.zeros_like(score)


def _normalise_minmax(score: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """InterPodAffinity's normalisation: (s - min) / (max - min) * 100 over the feasible nodes."""
    if not ok.any():
        return np.zeros_like(score)
    lo, hi = score[ok].min(), score[ok].max()
    return (score - lo) * (100.0 / (hi - lo)) if hi > lo else np.zeros_like(score)


class KubeProfile:
    """Filter + locality scores shared by ``k8s-default`` and ``load-risk-balancing``.

    Subclasses give :meth:`resource_score` (0..100 per node, plus its weight). The plan goes
    stage by stage in topological order, updating the requests claimed by this job's stages.
    """
    name = "kube-profile"

    def resource_score(self, ctx: PlanContext, b: Builder, i: int, cpu_used: np.ndarray,
                       mem_used: np.ndarray, mem_req: float) -> np.ndarray:
        raise NotImplementedError

    def before_plan(self, ctx: PlanContext) -> None:
        """Hook called once per plan (load-risk-balancing records the utilisation it observes)."""

    def plan(self, ctx: PlanContext):
        self.before_plan(ctx)
        b = Builder(ctx)
        nt, st = b.nt, b.st
        mem_req = np.array([s.compute.mem_gb for s in st.stages])
        cpu_used = nt.running.copy()
        mem_used = np.zeros(nt.n)
        origin = nt.zone_index.get(ctx.job.origin_zone) if ctx.job.origin_zone else None
        for i in range(st.t):
            ok = np.isfinite(b.finish_mean(i))
            b.require(i, np.where(ok, 0.0, np.inf))
            fits = ok & (cpu_used + st.cpu[i] <= nt.cores) & (mem_used + mem_req[i] <= nt.mem)
            if fits.any():
                ok = fits
            score = self.resource_score(ctx, b, i, cpu_used, mem_used, float(mem_req[i]))
            if origin is not None:
                na = np.where(nt.zone_idx == origin, LOCALITY_WEIGHT, 0.0)
                score = score + WEIGHTS["node_affinity"] * _normalise_max(na, ok)
            if st.preds[i]:
                pa = np.zeros(nt.n)
                for p in st.preds[i]:
                    pa += np.where(nt.zone_idx == nt.zone_idx[int(b.node[p])], LOCALITY_WEIGHT, 0.0)
                score = score + WEIGHTS["pod_affinity"] * _normalise_minmax(pa, ok)
            score = np.where(ok, score, -np.inf)
            best = np.flatnonzero(score >= score.max() - 1e-9)
            n = int(best[0] if best.size == 1 else ctx.rng.choice(best))
            b.place(i, n, 0.0)
            cpu_used[n] += st.cpu[i]
            mem_used[n] += mem_req[i]
        return b.placement(), {}


@register("k8s-default")
class K8sDefault(KubeProfile):
    __doc__ = "Default kube-scheduler scoring + user data-locality preferences (see the module docstring)."
    name = "k8s-default"

    def resource_score(self, ctx, b, i, cpu_used, mem_used, mem_req):
        nt, st = b.nt, b.st
        cpu_frac = np.minimum(1.0, (cpu_used + st.cpu[i]) / nt.cores)
        mem_frac = np.minimum(1.0, (mem_used + mem_req) / nt.mem)
        least = ((1 - cpu_frac) + (1 - mem_frac)) / 2 * 100.0
        balanced = (1.0 - np.abs(cpu_frac - mem_frac) / 2) * 100.0       # 1 - std of two fractions
        return WEIGHTS["fit"] * least + WEIGHTS["balanced"] * balanced


@register("load-risk-balancing")
class LoadRiskBalancing(KubeProfile):
    __doc__ = "Trimaran LoadVariationRiskBalancing (mean + k*std of node load) + locality preferences (module docstring)."
    name = "load-risk-balancing"
    margin = 1.0          # safeVarianceMargin (plug-in default)
    sensitivity = 1.0     # safeVarianceSensitivity (plug-in default)
    window = 30

    def __init__(self):
        self.history: deque[np.ndarray] = deque(maxlen=self.window)

    def before_plan(self, ctx):
        nt = ctx.nodes
        self.history.append(np.clip(np.minimum(nt.util, 1.0) + nt.running / nt.cores, 0.0, 1.0))

    def resource_score(self, ctx, b, i, cpu_used, mem_used, mem_req):
        nt, st = b.nt, b.st
        h = [x for x in self.history if x.shape == (nt.n,)]
        load = np.stack(h) if h else np.zeros((1, nt.n))
        # this job's own placed requests (not yet in any observation) and the pod's request
        own = (cpu_used - nt.running + st.cpu[i]) / nt.cores
        mu = np.clip(load.mean(axis=0) + own, 0.0, 1.0)
        sigma = load.std(axis=0) ** (1.0 / self.sensitivity)
        cpu_score = (1.0 - np.clip((mu + self.margin * sigma) / 2, 0.0, 1.0)) * 100.0
        mem_mu = np.clip((mem_used + mem_req) / nt.mem, 0.0, 1.0)
        mem_score = (1.0 - mem_mu / 2) * 100.0
        return WEIGHTS["lvrb"] * np.minimum(cpu_score, mem_score)
