"""Load-aware planning: the twin's estimate of the arrival process and the opportunity cost of capacity.

Why: a DT policy that only sees the work running *now* is myopic. Under load it keeps
sending every job to the node that looks fastest for that job alone (the example
pipeline's input zone), each job slowing all the others there, until that node is so
slow that the next-best zone (seconds away over a lossy uplink) looks equal: every job
then takes about as long as the far zone (a Wardrop equilibrium), and nearly every
deadline is missed, while a placement that keeps the near zone below saturation and
sends the overflow away would let most jobs finish in time.

The design (documented here once; the DT policies call :meth:`Builder.toll
<dtlab.policies.base.Builder.toll>`):

1. **Arrival process, estimated from the submissions the twin observed**
   (:class:`ArrivalEstimator`). The controller reports every job it submitted
   (``Twin.observe_submission``) with its time and placement. Over the last ``window``
   submissions, the arrival rate is ``lambda = k / (now - t_1)`` (k submissions since the
   oldest one in the window, ``now`` the planning time), and each node's **offered load**
   in cores is ``u_n = lambda * mean core-ms per job placed on n / 1000`` (core-ms: each
   stage's cores x its predicted service at full allocation there). By Little's law
   ``u_n`` is the mean number of cores the arrival stream keeps busy on ``n`` if the
   twin goes on placing as it did. Fewer than ``min_jobs`` submissions, or none within
   ``horizon_s``: no estimate, no toll (the policies plan as before, myopically).
2. **Opportunity cost of the capacity a placement consumes** (:func:`toll_ms`). Placing a
   stage of mean service ``S`` on node ``n`` also delays the jobs that share ``n`` with it
   now and those that arrive while it runs. For a processor-sharing node of utilisation
   ``rho`` the mean response time is ``S / (1 - rho)`` (M/M/1-PS); the total delay of all
   jobs grows with one more unit of arrival rate by ``d(lambda T)/d lambda = S / (1 -
   rho)^2``, of which ``S / (1 - rho)`` is the job's own (already in the policies' end
   time) and the rest, ``S * rho / (1 - rho)^2``, is the delay it imposes on others: the
   toll. With ``rho = min(rho_max, u_n / capacity_n)``, ``capacity_n`` the node's cores
   minus the telemetry background (not minus the running stages: the offered load counts them). A node of many cores serves several stages at once
   without slowing any of them, so the node is taken as ``m = floor(capacity / cpu)``
   servers (M/M/m, Erlang C): the toll is ``S * rho * q'(rho)`` with ``q`` the mean wait in
   units of ``S`` -- the M/M/1 formula above when ``m = 1``, much smaller at moderate load
   when ``m`` is large. The policies minimise *own end time + toll*: the
   marginal social cost (the classic congestion toll that turns a Wardrop equilibrium into
   the system optimum), so the near zone runs at the utilisation where its marginal cost
   equals the far zone's, instead of saturating.

Approximations, stated: PS with per-stage caps is approximated by M/M/m with exponential
service (the tail of real service times is lighter, so the toll errs high); the
future jobs are assumed to be like the recent ones; ``rho_max`` (0.95) keeps the toll
finite on a saturated node (20^2 x S), which is then avoided whenever anything else is
reachable. ``weight`` scales the toll (1 = the M/M/1 externality; 0 = the myopic policies).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np

RHO_MAX = 0.95


@dataclass(frozen=True)
class LoadForecast:
    """What the policies read: arrival rate (jobs/s) and per-node offered load (cores) by node name."""
    rate_per_s: float
    offered_cores: Mapping[str, float]
    jobs: int                     # submissions the estimate rests on
    weight: float = 1.0

    def offered(self, names) -> np.ndarray:
        return np.array([self.offered_cores.get(n, 0.0) for n in names], dtype=float)


class ArrivalEstimator:
    """Sliding-window estimate of the arrival rate and each node's offered load (module docstring, step 1)."""

    def __init__(self, window: int = 30, min_jobs: int = 3, horizon_s: float = 300.0, weight: float = 1.0):
        if window < 2 or min_jobs < 2 or horizon_s <= 0 or weight < 0:
            raise ValueError("window >= 2, min_jobs >= 2, horizon_s > 0 and weight >= 0 are required")
        self.window, self.min_jobs, self.horizon_s, self.weight = int(window), int(min_jobs), float(horizon_s), float(weight)
        self._subs: deque[tuple[float, dict[str, float]]] = deque(maxlen=self.window)

    def observe(self, ts: float, core_ms: Mapping[str, float]) -> None:
        """One submitted job at ``ts`` (seconds) that placed ``core_ms[node]`` core-ms of work on each node."""
        if self._subs and ts < self._subs[-1][0]:
            ts = self._subs[-1][0]            # out-of-order reports: keep the window monotone
        self._subs.append((float(ts), {k: float(v) for k, v in core_ms.items()}))

    def __len__(self) -> int:
        return len(self._subs)

    def forecast(self, now: float | None) -> LoadForecast | None:
        """The forecast at ``now`` (seconds); None when there is too little recent evidence."""
        subs = [s for s in self._subs if now is None or now - s[0] <= self.horizon_s]
        k = len(subs)
        if k < self.min_jobs or self.weight == 0:
            return None
        t1 = subs[0][0]
        end = subs[-1][0] if now is None else max(float(now), subs[-1][0])
        span = end - t1
        if span <= 0:
            return None
        # k arrivals after t1 when `now` is the next arrival; (k - 1) over the span of the window otherwise
        rate = (k if now is not None and now > subs[-1][0] else k - 1) / span
        total: dict[str, float] = {}
        for _, work in subs:
            for node, w in work.items():
                total[node] = total.get(node, 0.0) + w
        offered = {node: rate * w / k / 1000.0 for node, w in total.items()}
        return LoadForecast(rate, offered, k, self.weight)


def erlang_c(m: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """P(wait) in M/M/m at utilisation ``rho`` (arrays; ``m`` >= 1 integer), by the Erlang B recursion."""
    m = np.asarray(m, dtype=np.int64)
    rho = np.asarray(rho, dtype=float)
    a = m * rho
    b = np.ones_like(a)
    for k in range(1, int(m.max(initial=1)) + 1):
        nb = a * b / (k + a * b)
        b = np.where(k <= m, nb, b)
    return b / (1.0 - rho * (1.0 - b))


def _queue_factor(m: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Mean wait in units of the service time, ``P(wait) / (m (1 - rho))`` (M/M/m)."""
    return erlang_c(m, rho) / (m * (1.0 - rho))


def toll_ms(svc: np.ndarray, offered: np.ndarray, capacity: np.ndarray, cpu: float = 1.0,
            weight: float = 1.0) -> np.ndarray:
    """Delay a stage of mean service ``svc`` and ``cpu`` cores imposes on others (module docstring).

    The node is ``m = floor(capacity / cpu)`` (>= 1) servers at utilisation ``rho = offered /
    capacity``; the mean response is ``T = S (1 + q(rho))`` with ``q`` the M/M/m wait factor, and
    the toll is the part of ``d(lambda T)/d lambda`` that falls on the others: ``S * rho * q'(rho)``
    (``S * rho / (1 - rho)^2`` when m = 1). Times ``weight``.
    """
    svc = np.asarray(svc, dtype=float)
    capacity = np.asarray(capacity, dtype=float)
    h = 1e-4
    rho = np.clip(np.divide(offered, capacity, out=np.full(svc.shape, RHO_MAX), where=capacity > 0),
                  0.0, RHO_MAX)
    m = np.maximum(1, np.floor(capacity / max(cpu, 1e-9))).astype(np.int64)
    lo, hi = np.maximum(rho - h, 0.0), rho + h
    dq = (_queue_factor(m, hi) - _queue_factor(m, lo)) / (hi - lo)
    return weight * svc * rho * dq
