"""Failover cost as the twin predicts it: which shadow to keep per stage, and whether to pre-stage its inputs.

Why a module: a shadow only pays off if moving a stage there after its node failed is cheaper than
re-planning. That cost is the twin's, from the same timing model the predictors use (mean transfer
times over the spec's links, mean service time per node and format, ``TimingModel.detect_ms``):

* **without pre-staging**, a stage on primary ``n`` that fails over to ``m`` costs, after the
  failure, ``detect_ms + T_m + S_m``: detection, re-sending all its inputs to ``m`` (``T_m``, from
  the origin zone for a root stage, from the predecessors' nodes otherwise), service on ``m``;
* **with pre-staging** the inputs leave for ``m`` when they leave for ``n`` (at the stage's
  dispatch), so at failover time ``T_n + U * S_n + detect_ms`` (``U`` the fraction of the work done
  when the node fails, 1/2 on average) only ``max(0, T_m - (T_n + S_n / 2 + detect_ms))`` is left to
  wait: the copy saves ``min(T_m, T_n + S_n / 2 + detect_ms)``.

Which failure domain: a shadow in the primary's zone is useless when the whole zone fails, and one
outside it pays the zone's uplink (on the example cluster ~20 s to re-send a 5 MB input over edge-a's
lossy uplink, against ~1 s next door). With ``zone_share`` ``q`` (the share of node failures that
take the whole zone down, a parameter: V4's ``zone_failure_share``) a same-zone shadow is priced at
``(1 - q) * C_m + q * (replan_ms + C_best_other_zone)`` (when it is down too, the stage is re-planned,
which lands in another zone at best) and an other-zone shadow at ``C_m``; the shadow is the node
with the lowest price. ``q = 1`` is the classic "shadow in another failure domain" rule. Pre-staging
costs data that is moved whether or not a failure happens (``input MB`` per job, on the links the
copy takes), so the twin pre-staged a stage only when the expected saving ``p * saving_ms`` (``p``:
the primary's ``fail_prob`` per job, the predictors' failure model) is worth at least
``price_ms_per_mb`` per MB copied. The price is the operator's exchange rate between latency and
traffic (not measured: a parameter, V4's ``prestage_price_ms_per_mb``, reported with the run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import SpecError
from ..model import Job, Link, Stage, spec_link
from ..timing import TimingModel


@dataclass
class FailoverPlan:
    """Shadows and pre-staged stages of one plan, with the twin's failover costs (ms, means)."""
    shadow: dict[str, str]
    prestage: list[str] = field(default_factory=list)
    cost_ms: dict[str, float] = field(default_factory=dict)      # stage -> failover cost on its shadow
    saving_ms: dict[str, float] = field(default_factory=dict)    # stage -> what pre-staging saves there
    prestage_mb: float = 0.0                                     # MB copied per job


def _inputs(job: Job, stage: Stage, placement: Mapping[str, str]) -> list[tuple[str, float, bool]]:
    """(source, MB, from the origin zone) of every input of ``stage``."""
    if stage.after:
        return [(placement[p], job.stages[job.stage_index[p]].output_mb, False) for p in stage.after]
    if job.origin_zone is not None:
        return [(job.origin_zone, job.input_mb, True)]
    return []


def inputs_ms(snapshot: Any, job: Job, stage: Stage, placement: Mapping[str, str], dst: str,
              timing: TimingModel) -> float:
    """Mean time for all of ``stage``'s inputs to reach ``dst`` once they leave (inf: no path)."""
    worst = 0.0
    for src, mb, from_zone in _inputs(job, stage, placement):
        link: Link | None
        if from_zone:
            zone = snapshot.cluster.node(dst).zone
            link = spec_link(snapshot.cluster, src, zone)
            if link is None:
                return float("inf")
        elif src == dst:
            continue
        else:
            try:
                link = snapshot.link(src, dst)
            except SpecError:
                return float("inf")
        worst = max(worst, timing.mean_transfer_ms(mb, link))
    return worst


def plan_failover(snapshot: Any, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str],
                  timing: TimingModel, *, prestage: bool = False, price_ms_per_mb: float = 0.0,
                  zone_share: float = 1.0, keep_policy_shadows: bool = False) -> FailoverPlan:
    """Shadow per stage by the twin's expected failover cost, and (``prestage``) the stages worth pre-staging.

    ``keep_policy_shadows``: a shadow the policy chose stays; stages without one get the cheapest.
    Otherwise (default) every shadow is chosen here by the cost with ``zone_share`` and, with
    ``prestage``, the pre-staged cost (the copy changes which node is cheapest).
    """
    if not 0.0 <= zone_share <= 1.0:
        raise SpecError("zone_share", f"must be in [0, 1], got {zone_share!r}")
    nodes = snapshot.schedulable_nodes()
    cluster = snapshot.cluster
    out = FailoverPlan(shadow=dict(shadow) if keep_policy_shadows else {})
    for stage in job.stages:
        primary = cluster.node(placement[stage.id])
        fmt_p = timing.exec_format(stage, primary)
        t_n = inputs_ms(snapshot, job, stage, placement, primary.name, timing)
        s_n = timing.mean_service_ms(stage, primary, fmt_p[1]) if fmt_p else 0.0
        fails_at = t_n + 0.5 * s_n + timing.detect_ms      # after dispatch, on average
        options: list[tuple[str, bool, float, float]] = []   # (node, same zone, plain, pre-staged cost)
        for node in nodes:
            if node.name == primary.name:
                continue
            fmt = timing.exec_format(stage, node)
            if fmt is None:
                continue
            t_m = inputs_ms(snapshot, job, stage, placement, node.name, timing)
            if t_m == float("inf"):
                continue
            svc = timing.mean_service_ms(stage, node, fmt[1])
            plain = timing.detect_ms + t_m + svc
            staged = timing.detect_ms + max(0.0, t_m - fails_at) + svc
            options.append((node.name, node.zone == primary.zone, plain, staged))
        if stage.id in out.shadow or not options:
            continue
        name, plain, _ = _cheapest(options, 2, zone_share, timing.replan_ms)
        if prestage:
            s_name, s_plain, s_cost = _cheapest(options, 3, zone_share, timing.replan_ms)
            saving = s_plain - s_cost
            mb = sum(mb for _s, mb, _z in _inputs(job, stage, placement))
            if mb > 0 and primary.fail_prob * saving >= price_ms_per_mb * mb:
                out.prestage.append(stage.id)
                out.prestage_mb += mb
                out.saving_ms[stage.id] = round(saving, 3)
                name, plain = s_name, s_cost
        if name:
            out.shadow[stage.id] = name
            out.cost_ms[stage.id] = round(plain, 3)
    return out


def _cheapest(options: list[tuple[str, bool, float, float]], col: int, zone_share: float,
              replan_ms: float) -> tuple[str, float, float]:
    """(node, plain cost, cost in column ``col``) of the option with the lowest zone-failure-weighted price
    ("", inf, inf) if none has a finite one."""
    other = min(((o[2] if col == 2 else o[3]) for o in options if not o[1]), default=float("inf"))
    best: tuple[float, str, float, float] = (float("inf"), "", float("inf"), float("inf"))
    for o in options:
        cost = o[2] if col == 2 else o[3]
        if o[1] and zone_share > 0 and other < float("inf"):
            price = (1 - zone_share) * cost + zone_share * (replan_ms + other)
        else:
            price = cost       # other-zone shadow, or no other zone to fall back to
        if (price, o[0]) < best[:2]:
            best = (price, o[0], o[2], cost)
    return best[1], best[2], best[3]
