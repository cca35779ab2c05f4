"""The ``des`` predictor path: Monte Carlo over tiny SimPy runs of ONE job on the current snapshot.

This is the accurate, slow reference; the vectorised ``fast`` path in
:mod:`dtlab.predict.fast` models the same world and is tested against it. Everything the
two must agree on is stated in :func:`sample_latencies_des` and exported as helpers.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..model import Cluster, Compute, Job, Stage
from ..state import NodeStatus, Snapshot
from ..model import LinkCutError, resolve_link
from ..timing import TimingModel, background_share, bulk_ms, corunner_work
from .engine import Engine

STAY_MS = 1e12        # work of a co-runner that stays (not planned by the twin): outlasts any prediction
_PHANTOM = "\x00co-runner-"   # phantom job names: cannot clash with a job name from a spec


def effective_background(status: NodeStatus) -> float:
    """Share of a node's cores lost if every running stage stayed (:func:`dtlab.timing.background_share`).

    Kept for callers that want one number per node; :func:`sample_latencies_des` itself runs
    the co-runners as tasks (:func:`corunner_tasks`) and uses only telemetry as background.
    """
    return float(background_share(status.node.cores, status.cpu_util, status.running_cpu))


def corunner_tasks(status: NodeStatus, now: float | None) -> list[tuple[float, float]]:
    """(cpu, remaining ms at full allocation) of the stages running on a node; STAY_MS for those that stay.

    From :func:`dtlab.timing.corunner_work` (the fast path reads the same); co-runners
    already done by the estimate (remaining 0) are left out.
    """
    known, stays = corunner_work(status, now)
    tasks = [(cpu, rem) for cpu, rem in known if rem > 0]
    if stays > 1e-9:
        tasks.append((stays, STAY_MS))
    return tasks


def _phantoms(snapshot: Snapshot, used, timing: TimingModel) -> tuple[list[tuple[Job, str, float]], dict[str, float]]:
    """Co-runners as one-stage jobs ``(job, node, scale)`` whose service is their remaining work.

    A phantom stage has ``duration_ms`` 1, so ``scale = remaining * speed / overhead`` makes the
    engine's service ``remaining * X`` (X the timing model's noise, mean 1). No transfers (no
    origin), no failures. A co-runner that cannot be expressed (no format for it on its node)
    is folded into the node's background instead (its cores, returned per node).
    """
    out, extra = [], {}
    now = getattr(snapshot, "clock", None)
    for name in sorted(used):
        status = snapshot.nodes[name]
        node = status.node
        for cpu, rem in corunner_tasks(status, now):
            cpu = min(cpu, float(node.cores))
            stage = Stage("co", Compute(cpu=cpu, mem_gb=0.0, duration_ms=1.0))
            fmt = timing.exec_format(stage, node) if cpu > 0 else None
            if fmt is None:
                extra[name] = extra.get(name, 0.0) + cpu
                continue
            out.append((Job(f"{_PHANTOM}{len(out)}", (stage,)), name, rem * node.speed / fmt[1]))
    return out, extra


def phantom_flows(snapshot: Snapshot, used, origin: str | None) -> list[tuple[str, str, float, float]]:
    """The snapshot's flows that can share a link with this job, as ``(src, dst, bulk ms alone,
    start ms from now)`` for :meth:`Engine.occupy_link`: a flow that started ``t`` ms ago has
    ``bulk - t`` left (as if it ran alone so far); one expected later starts then. None without a clock."""
    now = getattr(snapshot, "clock", None)
    if now is None:
        return []
    ends = set(used) | ({origin} if origin else set())
    out = []
    for f in getattr(snapshot, "flows", ()):
        if f.dst not in used or f.src not in ends:
            continue
        try:
            link = resolve_link(snapshot.cluster, snapshot.link_overrides, f.src, f.dst)
        except LinkCutError:
            continue
        if link is None:
            continue
        a = (f.start_ts - now) * 1000.0
        left = bulk_ms(f.mb, link) + min(0.0, a)
        if left > 0:
            out.append((f.src, f.dst, left, max(0.0, a)))
    return out


def stage_failure_probs(job: Job, placement: Mapping[str, str], cluster: Cluster) -> dict[str, float]:
    """Per-stage failure probability such that a node hosting k stages of the job fails with ``fail_prob``.

    ``1 - (1 - p) ** (1 / k)`` per stage, drawn independently, keeps the chance that at
    least one of the node's stages is hit equal to the node's ``fail_prob``.
    """
    counts: dict[str, int] = {}
    for s in job.stages:
        counts[placement[s.id]] = counts.get(placement[s.id], 0) + 1
    out = {}
    for s in job.stages:
        node = placement[s.id]
        p = cluster.node(node).fail_prob
        out[s.id] = 0.0 if p <= 0 else (1.0 if p >= 1 else 1.0 - (1.0 - p) ** (1.0 / counts[node]))
    return out


def sample_latencies_des(snapshot: Snapshot, job: Job, placement: Mapping[str, str],
                         shadow: Mapping[str, str] | None = None, *, samples: int,
                         rng: np.random.Generator, timing: TimingModel | None = None,
                         prestage=None) -> np.ndarray:
    """End-to-end latency samples (ms) of ``job`` under ``placement`` on ``snapshot``; inf = never completes.

    The model (shared with the ``fast`` path):

    * **Capacity.** Node n offers ``cores * (1 - min(cpu_util, 0.95))``: telemetry load
      is lost outright. Stages already running there (the snapshot's co-runners) are
      submitted as one-stage phantom jobs on n at time 0 whose work is their remaining
      work (:func:`corunner_tasks`; ``STAY_MS`` for co-runners the twin did not plan,
      which stay), capped at their ``cpu``, without transfers or failures. Stages of this
      job and the phantoms share n by processor sharing (water-filling), each capped at
      its ``cpu``, so co-runners that finish free their cores exactly as in the engine.
    * **Links are shared**: transfers on one directed link share its bandwidth (the engine's
      ``des/linkshare.py``), this job's with each other and with the other jobs' flows the
      snapshot reports (:func:`phantom_flows`, added with ``Engine.occupy_link``).
    * **Service** of stage s on node n: ``duration_ms * overhead(format) / speed * X``,
      ``X`` = ``timing.service_noise`` drawn once per stage per sample.
    * **Transfers**: ``timing.sample_transfer_ms`` over ``snapshot``'s links for each
      predecessor output (skipped on the same node) and, for root stages, ``input_mb``
      from the origin zone (:func:`dtlab.model.resolve_link` from the zone; no origin: no
      transfer). A stage starts when all predecessors ended and all inputs arrived. A
      cut link makes the sample ``inf``; so does a stage placed on a node that is down
      in the snapshot with no usable shadow.
    * **Failures.** Independently per stage, with probability
      :func:`stage_failure_probs` (node ``fail_prob`` split over the job's stages on that
      node), the stage's node fails after the stage completed a fraction ``U ~
      Uniform(0, 1)`` of its work (so at ``start + U * service`` when uncontended). The
      attempt is lost. If the stage has a shadow node, it restarts there ``detect_ms``
      after the failure, its inputs sent again from the predecessors' nodes (root:
      from the origin zone) to the shadow, and its successors then read from the
      shadow. Without a shadow it restarts on the same node (a replacement of equal
      speed) after ``detect_ms + replan_ms``. The restart redoes the full work with the
      same ``X`` (scaled by the new node's speed/overhead) and does not fail again.
      ``prestage`` stages (with a shadow) had their inputs copied to the shadow at dispatch
      (:class:`dtlab.des.engine.Engine`): the restart waits for that copy instead.
    """
    timing = timing or TimingModel()
    shadow = dict(shadow or {})
    staged = [sid for sid in (prestage or ()) if shadow.get(sid) not in (None, placement.get(sid))] or None
    full = snapshot.cluster
    used = set(placement.values()) | set(shadow.values())
    sub = Cluster(full.name, tuple(n for n in full.nodes if n.name in used), full.links)
    nodes = snapshot.nodes
    phantoms, folded = _phantoms(snapshot, used, timing)
    pflows = phantom_flows(snapshot, used, job.origin_zone)
    background = {name: float(background_share(nodes[name].node.cores, nodes[name].cpu_util, folded.get(name, 0.0)))
                  for name in used}
    down = [name for name in used if not nodes[name].up]
    p_fail = stage_failure_probs(job, placement, sub)
    risky = [sid for sid, p in p_fail.items() if p > 0]
    links = snapshot.link_overrides
    formats: dict = {}
    out = np.empty(samples)
    for i in range(samples):
        failures = {}
        for sid in risky:
            if rng.random() < p_fail[sid]:
                failures[sid] = float(rng.random())
        eng = Engine(sub, timing, rng, background=background, links=links, down=down,
                     record_stages=False, formats=formats)
        eng.replan = _same_node
        for pj, node, scale in phantoms:
            eng.submit(pj, {"co": node}, scale=scale)
        for src, dst, left, at in pflows:
            eng.occupy_link(src, dst, left, at_ms=at)
        eng.submit(job, placement, shadow, stage_failures=failures, prestage=staged)
        eng.run()
        out[i] = eng.latency_ms(job.name)
    return out


def _same_node(job: Job, stage_id: str, failed_node: str) -> str:
    """Prediction's replan: an equivalent replacement for the failed node."""
    return failed_node
