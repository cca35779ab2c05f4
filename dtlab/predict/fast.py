"""The ``fast`` predictor: a vectorised numpy Monte Carlo of the des model, for the planning hot path.

Every stage is one numpy expression over ``samples`` draws; per-(stage, node) arrays come from
:mod:`dtlab.predict.tables` (precomputed once per snapshot, job template and timing model).

What ``fast`` models - the model of :func:`dtlab.des.sampling.sample_latencies_des`, stated
there - and the one place it approximates it (so experiment V2 can judge it):

* **Service**: ``duration * overhead / speed * X``, ``X`` the timing model's lognormal
  noise, one draw per stage per sample.
* **Start-up**: ``timing.stage_delay(format)`` ms (dispatch + the format's start-up; 0 unless
  calibrated) between a stage's inputs arriving and its work starting, on every attempt.
* **Transfers**: each DAG edge between different nodes costs
  ``TimingModel.sample_transfer_ms(output_mb, link)`` (latency, jitter, Mathis-capped
  bulk time, loss -> one RTO); root stages receive ``job.input_mb`` from the origin zone
  when the job has one (even 0 MB pays latency; a zone with no link is unreachable).
  **Link sharing**: a transfer's bulk part shares its directed link with the other jobs'
  transfers the snapshot reports in flight or expected (``Snapshot.flows``), to first order
  (:func:`dtlab.timing.shared_extra_ms`: each overlapping pair, exact for two flows; the other
  flow's start and bulk taken as if alone). Not modelled here: this job's own transfers sharing
  a link with each other (the engine, and so ``des``, shares them exactly).
* **DAG**: topological order; a stage starts at ``max`` over predecessors of (their end
  + transfer) - the exact critical-path recursion, per sample.
* **Capacity**: node n offers ``cores * (1 - b)`` with ``b =
  timing.background_share(cores, cpu_util, R)``: telemetry background is lost outright;
  ``R`` is the co-runners' cores. The des path runs co-runners as PS tasks with their
  remaining work (:func:`dtlab.timing.corunner_work`); here, for a stage of mean
  full-allocation service ``S`` on n, each co-runner with known remaining work ``rem``
  counts ``cpu * min(1, rem / S)`` (:func:`dtlab.timing.overlap_cpu`: present for that part
  of the stage), co-runners the twin did not plan count fully (they stay). First order:
  exact while nothing is oversubscribed or a co-runner outlasts the stage, optimistic when
  a node goes from oversubscribed to not mid-stage (PS slowdown is convex in demand).
* **Contention among this job's stages (the approximation)**: the engine shares a node
  among concurrent stages by processor sharing (water-filling, each capped at its
  ``cpu``). The fast path cannot replay PS per sample, so it applies one *static
  slowdown* per stage, ``max(1, demand / capacity)``, where ``demand`` = the stage's
  ``cpu`` + the ``cpu`` of this job's other stages on the same node that *can* overlap
  it (neither ancestor nor descendant in the DAG), assumed to overlap fully. Exact when
  nothing of the job shares a node, or when concurrent siblings are identical and start
  together; pessimistic otherwise (in PS the first to finish frees capacity).
* **Failures** (as the des path): independently per stage, with probability
  ``1 - (1 - fail_prob) ** (1 / k)`` (k = the job's stages on that node, so the node is
  hit with ``fail_prob`` per job), the node fails after the stage did a fraction ``U ~
  Uniform(0, 1)`` of its work. ``timing.detect_ms`` later the stage restarts on its
  shadow, or without one, after a further ``timing.replan_ms``, on an equivalent
  replacement of the same node; its inputs are sent again, it redoes the full work
  (same ``X``) and does not fail again; successors read from where it finished. A
  stage whose node is down in the snapshot runs on its shadow from the start (and its
  failure draw then applies there, with re-plan); with no shadow it never completes
  (``inf``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import SpecError
from ..model import Job, Link, LinkCutError, resolve_link
from ..timing import TimingModel, bulk_ms, shared_extra_ms
from .registry import register
from .tables import node_table, stage_table


@register("fast")
def predict_fast(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str], S: int,
                 rng: np.random.Generator, timing: TimingModel, prestage: frozenset[str] = frozenset()) -> np.ndarray:
    """``S`` end-to-end latency samples (ms), the model stated in the module docstring; ``prestage``:
    stages whose inputs were copied to their shadow at dispatch (a failover waits for that copy)."""
    nt = node_table(snapshot)
    st = stage_table(snapshot, job, timing)
    prim = np.array([nt.index[placement[sid]] for sid in st.ids], dtype=np.int64)
    back = np.array([nt.index[shadow[sid]] if sid in shadow else -1 for sid in st.ids], dtype=np.int64)
    for i, sid in enumerate(st.ids):
        if not st.feasible[i, prim[i]]:
            raise SpecError(f"placement.{sid}", f"stage cannot run on node {placement[sid]!r} (constraints/resources)")
        if back[i] >= 0 and not st.feasible[i, back[i]]:
            raise SpecError(f"shadow.{sid}", f"stage cannot run on node {shadow[sid]!r} (constraints/resources)")
    up = nt.up if not nt.up.all() else None
    # per-stage failure probability: the node's fail_prob split over the job's stages on it
    counts = np.bincount(prim, minlength=nt.n)
    p_fail = 1.0 - (1.0 - nt.fail_prob[prim]) ** (1.0 / counts[prim])
    run_on = prim.copy()                      # where the first attempt runs
    restart = np.where((back >= 0) & (back != prim), back, prim)
    replan = restart == prim
    dead = np.zeros(st.t, dtype=bool)         # never completes
    if up is not None:
        for i in range(st.t):
            if back[i] >= 0 and not up[back[i]]:   # a down shadow is no shadow: re-plan instead
                restart[i], replan[i] = prim[i], True
            if not up[prim[i]]:
                if back[i] >= 0 and up[back[i]]:
                    run_on[i] = restart[i] = back[i]
                    replan[i] = True
                else:
                    dead[i] = True
    if dead.any():
        return np.full(S, np.inf)
    # static PS slowdown: this job's stages that may overlap on the same node
    svc_first = np.empty(st.t)
    svc_restart = np.empty(st.t)
    for i in range(st.t):
        n = run_on[i]
        share = (run_on == n) & ~st.related[i]
        base = st.base_svc[i, n]
        svc_first[i] = base * max(1.0, (st.cpu[i] + st.cpu[share].sum()) / nt.capacity_at(n, base))
        r = restart[i]
        svc_restart[i] = svc_first[i] if r == n else \
            st.base_svc[i, r] * max(1.0, st.cpu[i] / nt.capacity_at(r, st.base_svc[i, r]))
    origin = job.origin_zone
    orow = nt.origin_row(origin)
    links: dict[tuple[int, int], tuple[bool, Link | None]] = {}
    flows = _flows_by_link(snapshot)
    others: dict[tuple[int, int], list[tuple[float, float]]] = {}

    def transfer(size: float, src: int, dst: int, start=0.0) -> np.ndarray:
        """Samples of one transfer starting at ``start`` ms from now; src -1 = the origin zone."""
        if src == dst:
            return np.zeros(S)
        key = (src, dst)
        if key not in links:
            src_name = nt.names[src] if src >= 0 else str(origin)   # src -1 only when there is an origin
            try:
                links[key] = (True, resolve_link(snapshot.cluster, snapshot.link_overrides, src_name, nt.names[dst]))
            except LinkCutError:
                links[key] = (False, None)
            link = links[key][1]
            others[key] = [(a, bulk_ms(mb, link)) for a, mb in flows.get((src_name, nt.names[dst]), ())] \
                if link is not None else []
        ok, link = links[key]
        if not ok:
            return np.full(S, np.inf)
        t = timing.sample_transfer_ms(size, link, rng, S)
        if others[key] and link is not None and size > 0:
            t = t + shared_extra_ms(bulk_ms(size, link), start, others[key], link)
        return t

    fin: list[np.ndarray] = [None] * st.t      # type: ignore[list-item]
    moved: list[np.ndarray | None] = [None] * st.t  # per sample: stage finished on its restart node

    def inputs(i: int, dst: int, with_end: bool) -> np.ndarray:
        """Per sample: when (with_end) / how long after its predecessors ended all of i's inputs reach dst."""
        ready = np.zeros(S)
        if not st.preds[i] and orow is not None:
            ready = transfer(job.input_mb, -1, dst)
        for p in st.preds[i]:
            t = transfer(st.out_mb[p], int(run_on[p]), dst, fin[p])
            mp = moved[p]
            if mp is not None:
                t = np.where(mp, transfer(st.out_mb[p], int(restart[p]), dst, fin[p]), t)
            if with_end:
                t = t + fin[p]
            ready = np.maximum(ready, t)
        return ready

    for i in range(st.t):
        ready = inputs(i, int(run_on[i]), True)
        x = timing.service_noise(rng, S)
        svc = svc_first[i] * x
        up0 = st.startup[i, run_on[i]]          # dispatch + process/emulator/runtime start-up, before the work
        end = ready + up0 + svc
        if p_fail[i] > 0:
            failed = rng.random(S) < p_fail[i]
            frac = rng.random(S)
            t_fail = ready + up0 + frac * svc
            redo = t_fail + timing.detect_ms + (timing.replan_ms if replan[i] else 0.0)
            if st.ids[i] in prestage and restart[i] != run_on[i]:   # the copy left at dispatch
                again = np.maximum(redo, inputs(i, int(restart[i]), True)) + st.startup[i, restart[i]] \
                    + svc_restart[i] * x
            else:
                again = redo + inputs(i, int(restart[i]), False) + st.startup[i, restart[i]] + svc_restart[i] * x
            end = np.where(failed, again, end)
            if restart[i] != run_on[i]:
                moved[i] = failed
        fin[i] = end
    sinks = [i for i in range(st.t) if not st.succs[i]]
    return np.max(np.stack([fin[i] for i in sinks]), axis=0)


def _flows_by_link(snapshot) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """The snapshot's flows per directed link: (start ms relative to the snapshot's clock, MB);
    none without a clock (their timing is unknown)."""
    now = getattr(snapshot, "clock", None)
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    if now is None:
        return out
    for f in getattr(snapshot, "flows", ()):
        out.setdefault((f.src, f.dst), []).append(((f.start_ts - now) * 1000.0, f.mb))
    return out
