"""``cvar``: the lowest CVaR_alpha (mean of the worst 1 - alpha of outcomes) of end-to-end latency, deadline-aware.

Stage by stage in topological order, with common random numbers so candidates are
compared on the same luck:

1. the mean end time of the stage on every node (as ``greedy``) shortlists the
   ``top_k`` best nodes (a node much slower on average cannot win on the tail cheaply
   enough to be worth sampling; the shortlist keeps the work at samples x top_k);
2. for the shortlist, a samples x top_k matrix of end times: predecessor end samples +
   transfer samples (one shared normal/uniform draw per edge drives jitter and loss on
   every candidate link) + service (one shared lognormal draw scaled per node) + failure
   (one shared uniform against each node's ``fail_prob``: lost work, ``detect_ms`` and
   ``replan_ms``, and a rerun on an equivalent node, as the predictors model it);
3. add the lower bound of the remaining critical path; with a deadline, candidates whose
   probability to meet it is at least ``alpha`` compete on CVaR; if none does, the
   highest meet probability wins (CVaR breaks ties). Without a deadline: lowest CVaR.

Under load (the twin has an arrival-rate estimate, :mod:`dtlab.policies.load`) every
candidate's samples are shifted by its toll -- the delay the stage would impose on other
jobs -- so the rule compares *social* latency: a node whose capacity is worth more to the
jobs still to come loses, even when this job alone would meet its deadline there.

Finally the stage-wise plan and the greedy (mean) plan are both scored by the fast
predictor on the same random numbers (plus each plan's toll) and the better one by the same rule is returned,
so ``cvar`` is never worse than ``greedy`` on its own objective.
"""
from __future__ import annotations

import numpy as np

from ..predict import sample_latencies
from . import register
from .base import Builder, PlanContext, greedy_placement


def cvar_columns(x: np.ndarray, alpha: float) -> np.ndarray:
    """CVaR_alpha of each column of a samples x k matrix (same estimator as dtlab.plan.summarize)."""
    s = np.sort(x, axis=0)
    return s[int(np.floor(alpha * s.shape[0])):].mean(axis=0)


def choose(total: np.ndarray, alpha: float, deadline: float | None) -> int:
    """Column index by the deadline-aware CVaR rule above."""
    cv = cvar_columns(total, alpha)
    if not deadline:
        return int(np.argmin(cv))
    meet = (total <= deadline).mean(axis=0)
    ok = meet >= alpha
    if ok.any():
        return int(np.argmin(np.where(ok, cv, np.inf)))
    return int(np.lexsort((cv, -meet))[0])


@register("cvar")
class CVaR:
    name = "cvar"
    alpha = 0.95
    top_k = 24

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        nt, st, tm, rng = b.nt, b.st, ctx.timing, ctx.rng
        S = max(int(ctx.samples), 16)
        deadline = ctx.deadline_ms
        fin_s: list[np.ndarray | None] = [None] * st.t
        for i in range(st.t):
            f = b.finish_mean(i)
            b.require(i, f)
            toll_all = b.toll(i)
            key = f + toll_all                                    # shortlist on mean end time + toll
            finite = int(np.isfinite(key).sum())
            k = min(self.top_k, finite)
            cand = np.argpartition(key, k - 1)[:k] if k < key.size else np.arange(key.size)
            cand = cand[np.lexsort((cand, key[cand]))][:k]       # deterministic: by mean, then index
            ready = np.zeros((S, k))
            if not st.preds[i]:
                orow = nt.origin_row(ctx.job.origin_zone)
                if orow is not None:
                    ready = orow.sample_ms(ctx.job.input_mb, rng.standard_normal(S), rng.random(S), cand)
            for p in st.preds[i]:
                row = nt.row(int(b.node[p]))
                t = row.sample_ms(st.out_mb[p], rng.standard_normal(S), rng.random(S), cand)
                ready = np.maximum(ready, fin_s[p][:, None] + t)
            svc_mean = b.svc_mean(i)[cand]
            svc = tm.service_noise(rng, S)[:, None] * svc_mean[None, :]
            fin = ready + svc
            pf = nt.fail_prob[cand]
            if (pf > 0).any():
                u_fail, u_when = rng.random(S), rng.random(S)
                penalty = u_when[:, None] * svc + tm.detect_ms + tm.replan_ms + svc
                fin = np.where(u_fail[:, None] < pf[None, :], fin + penalty, fin)
            toll = toll_all[cand]
            j = choose(fin + st.remaining_lb[i] + toll[None, :], self.alpha, deadline)
            b.place(i, int(cand[j]), float(f[cand[j]]), float(toll[j]))
            fin_s[i] = fin[:, j]
        placement = b.placement()
        gb, greedy = greedy_placement(ctx)
        if greedy != placement:
            seed = int(rng.integers(2**63))
            lat = [sample_latencies(ctx.snapshot, ctx.job, pl, predictor="fast", samples=S,
                                    rng=np.random.default_rng(seed), timing=tm) + toll
                   for pl, toll in ((placement, b.toll_total), (greedy, gb.toll_total))]
            if choose(np.stack(lat, axis=1), self.alpha, deadline) == 1:
                placement = greedy
        return placement, {}
