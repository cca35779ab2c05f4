"""``resilient``: a placement plus a shadow in another failure domain, for the lowest expected latency under failures.

For stage i on primary node n with shadow m, the expected end time is

    (1 - p_n) * F_n + p_n * (R_n + S_n / 2 + detect_ms + B_m)

with ``F_n = R_n + S_n`` (mean input arrival + mean service on n), ``p_n`` the node's
``fail_prob``, a failure striking on average halfway through, and ``B_m`` the mean time
to re-send the inputs to m and run there. The best shadow for each primary is the lowest
``B_m`` in a *different zone*, found for all primaries at once from the per-zone best and
second-best ``B`` values. When no other zone can run the stage, the shadow is the best
other node in the same zone; when there is none, the stage has no shadow (a failure then costs ``replan_ms`` and a rerun). Shadow nodes
are assumed not to fail together with the primary (independent failure domains).

Under load the primary minimises ``E`` plus the toll of :mod:`dtlab.policies.load` (the
delay the stage imposes on other jobs); without an arrival estimate the toll is zero.
"""
from __future__ import annotations

import numpy as np

from . import register
from ..predict import node_slowdown
from .base import Builder, PlanContext


def expected_end(finish: np.ndarray, p: np.ndarray, after_failure: np.ndarray) -> np.ndarray:
    """``(1 - p) * finish + p * after_failure`` per node, without NaN: a node that never fails
    (``p = 0``) pays nothing for a failure even when none could be recovered (``after_failure`` inf),
    and a node where the stage cannot finish (``finish`` inf) costs inf. Plain arithmetic gives
    ``0 x inf = NaN`` there, and ``np.argmin`` returns the first NaN, so one such node would win."""
    with np.errstate(invalid="ignore"):
        fail = np.where(p > 0, p * after_failure, 0.0)
        out = (1 - p) * finish + fail
    return np.where(np.isfinite(finish), out, np.inf)


@register("resilient")
class Resilient:
    name = "resilient"

    def plan(self, ctx: PlanContext):
        b = Builder(ctx)
        nt, st = b.nt, b.st
        shadow: dict[str, str] = {}
        detect = ctx.timing.detect_ms
        for i in range(st.t):
            ready = b.ready_mean(i)
            svc = b.svc_mean(i)
            ok = st.candidates[i] & np.isfinite(ready)
            F = np.where(ok, ready + svc, np.inf)
            b.require(i, F)
            # backup cost per node: the stage runs alone there (its primary work is gone)
            B = b.resend_mean(i) + st.base_svc[i] * node_slowdown(nt, st.cpu[i], 0.0)
            B = np.where(st.candidates[i] & np.isfinite(B), B, np.inf)
            zmin = np.full(len(nt.zones), np.inf)
            np.minimum.at(zmin, nt.zone_idx, B)
            order = np.argsort(zmin, kind="stable")
            best_z, second = order[0], (zmin[order[1]] if len(order) > 1 else np.inf)
            other = np.where(nt.zone_idx == best_z, second, zmin[best_z])  # best B outside each node's zone
            p = nt.fail_prob
            # no shadow possible: re-plan onto an equivalent node (as the predictors model it)
            fail_cost = np.where(np.isfinite(other), other, ctx.timing.replan_ms + B)
            E = np.where(ok, expected_end(F, p, ready + 0.5 * svc + detect + fail_cost), np.inf)
            toll = b.toll(i)
            n = int(np.argmin(E + toll))
            b.place(i, n, float(E[n]), float(toll[n]))
            m = self._shadow(nt, B, n)
            if m >= 0:
                shadow[st.ids[i]] = nt.names[m]
        return b.placement(), shadow

    @staticmethod
    def _shadow(nt, B: np.ndarray, n: int) -> int:
        other_zone = np.where(nt.zone_idx != nt.zone_idx[n], B, np.inf)
        m = int(np.argmin(other_zone))
        if np.isfinite(other_zone[m]):
            return m
        same = B.copy()
        same[n] = np.inf
        m = int(np.argmin(same))
        return m if np.isfinite(same[m]) else -1
