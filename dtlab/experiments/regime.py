"""The regime a run actually got: measured utilisation per zone, link load, deadline slack.

Why: a deadline-miss rate means nothing without the load it was measured at. A policy that
misses 45 % of deadlines with no fault at all is evidence of a saturated world, not of the
policy; a fault that moves nothing may be hidden by generous deadlines. Every experiment calls
:func:`record` so metrics.json says which regime each number comes from, and the regime tests
(``tests/test_regimes.py``) keep the smoke runs in the regime each experiment is designed for.

Definitions (all measured from the substrate's own records, not from the parameters):

* ``regime.util.<zone>``: time-averaged fraction of the zone's cores claimed by the jobs' stages
  over the arrival window (0 .. last arrival). A running stage claims ``cpu`` cores; a node under
  processor sharing delivers ``min(cores, sum of claims)``, so the utilisation of a node is the
  time average of ``min(cores, claims) / cores`` -- exact for the engine's capped processor
  sharing, excluding the sim's hidden background load (``background_mean`` of the sim options,
  recorded separately as ``regime.background_mean`` when known).
* ``regime.link_load.<zoneA>~<zoneB>``: megabits that crossed the zone pair (job inputs from the
  origin zone, stage outputs to a successor in another zone; the completed attempt of each
  stage) divided by what the link's spec bandwidth could carry over the same window. A lossy link's
  TCP throughput is capped far below its spec (1 % loss at 80 ms RTT: ~2 Mbit/s of 100), so a
  load well below 1 can still be a saturated link: read it next to the link's loss.
* ``regime.slack.p10/p50/p90``: per job, deadline / the twin's own predicted mean latency of the
  plan it chose (``pred_mean_ms``): below 1 the twin already expected a miss when it planned.
* ``regime.nominal_slack``: the deadline over the template's isolated latency (see
  :func:`isolated_latency_ms`): the knob an experiment sets with ``deadline_slack``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..model import Cluster, Job
from ..timing import TimingModel

PREFIX = "regime"


def isolated_latency_ms(cluster: Cluster, job: Job, samples: int = 256, seed: int = 0,
                        timing: TimingModel | None = None) -> float:
    """The twin's median latency of ``job`` alone on an idle ``cluster`` (greedy plan, fast predictor).

    The reference a deadline slack is measured against: ``deadline = slack * isolated latency``.
    ``timing``: the twin's timing on the substrate that runs (on kube with real nodes it carries the
    measured container start-up per format, which the default timing leaves at 0).
    """
    from ..twin import Twin

    plan = Twin(cluster, timing=timing).plan(job, policy="greedy", samples=samples, seed=seed, predictor="fast")
    return float(plan.prediction["p50_ms"])


def with_deadline_slack(workload, cluster: Cluster, slack: float | None, timing: TimingModel | None = None):
    """``workload`` whose template deadline is ``slack`` x the isolated latency (None: keep the file's),
    the isolated latency predicted with ``timing`` (see :func:`isolated_latency_ms`).

    Returns ``(workload, isolated_ms)``. The generator then scales each job's work (``duration_scale``)
    but not its deadline, so the per-job slack is spread around ``slack`` by the workload itself.
    """
    from dataclasses import replace

    from ..errors import SpecError

    iso = isolated_latency_ms(cluster, workload.template, timing=timing)
    if slack is None:
        return workload, iso
    if not slack > 0:
        raise SpecError("deadline_slack", f"must be > 0, got {slack!r}")
    template = replace(workload.template, deadline_ms=round(float(slack) * iso, 1))
    return replace(workload, template=template), iso


def zone_utilisation(stages: pd.DataFrame, cluster: Cluster, template: Job, window_ms: float) -> dict[str, float]:
    """Zone -> time-averaged fraction of its cores claimed by stages during ``[0, window_ms]``."""
    cpu = {s.id: float(s.compute.cpu) for s in template.stages}
    used = {z: 0.0 for z in sorted({n.zone for n in cluster.nodes})}
    cores = {z: 0.0 for z in used}
    for n in cluster.nodes:
        cores[n.zone] += n.cores
    if stages is None or stages.empty or not window_ms > 0:
        return {z: math.nan for z in used}
    st = stages.dropna(subset=["start_ms", "end_ms", "node"])
    by_node = {n.name: n for n in cluster.nodes}
    for node_name, g in st.groupby("node"):
        node = by_node.get(node_name)
        if node is None:
            continue
        t0 = np.clip(g["start_ms"].to_numpy(float), 0, window_ms)
        t1 = np.clip(g["end_ms"].to_numpy(float), 0, window_ms)
        c = g["stage"].map(cpu).fillna(1.0).to_numpy(float)
        times = np.concatenate([t0, t1])
        deltas = np.concatenate([c, -c])
        order = np.argsort(times, kind="stable")
        times, deltas = times[order], deltas[order]
        claims = np.cumsum(deltas)[:-1]
        spans = np.diff(times)
        used[node.zone] += float(np.sum(np.minimum(node.cores, np.maximum(claims, 0.0)) * spans))
    return {z: used[z] / (cores[z] * window_ms) if cores[z] > 0 else math.nan for z in used}


def link_load(stages: pd.DataFrame, cluster: Cluster, template: Job, window_ms: float) -> dict[str, float]:
    """``zoneA~zoneB`` -> megabits carried / link capacity over ``[0, window_ms]`` (spec bandwidth)."""
    out: dict[str, float] = {}
    if stages is None or stages.empty or not window_ms > 0 or not cluster.links:
        return out
    zone = {n.name: n.zone for n in cluster.nodes}
    done = stages.dropna(subset=["node"])
    if "outcome" in done.columns:
        done = done[done["outcome"] == "ok"]
    elif "ok" in done.columns:
        done = done[done["ok"].astype("boolean").fillna(False).astype(bool)]
    where = {(r.job, r.stage): zone.get(r.node) for r in done.itertuples()}
    mbit: dict[tuple[str, str], float] = {}

    def add(a, b, mb):
        if a is None or b is None or a == b or not mb:
            return
        key = tuple(sorted((a, b)))
        mbit[key] = mbit.get(key, 0.0) + 8.0 * float(mb)

    sizes = {s.id: s.output_mb for s in template.stages}
    for (job, sid), z in where.items():
        stage = template.stages[template.stage_index[sid]] if sid in template.stage_index else None
        if stage is None:
            continue
        if stage.after:
            for pred in stage.after:
                add(where.get((job, pred)), z, sizes.get(pred, 0.0))
        elif template.origin_zone is not None:
            add(template.origin_zone, z, template.input_mb)
    for link in cluster.links:
        lo, hi = sorted((link.a, link.b))
        key = (lo, hi)
        cap = link.bandwidth_mbps * window_ms / 1000.0
        out[f"{key[0]}~{key[1]}"] = mbit.get(key, 0.0) / cap if cap > 0 else math.nan
    return out


def slack_quantiles(jobs: pd.DataFrame) -> dict[str, float]:
    """p10/p50/p90 of deadline / predicted mean latency over planned jobs (NaN-free rows only)."""
    if jobs is None or jobs.empty or "deadline_ms" not in jobs or "pred_mean_ms" not in jobs:
        return {}
    s = (jobs["deadline_ms"].astype(float) / jobs["pred_mean_ms"].astype(float)).replace([np.inf, -np.inf], np.nan)
    s = s.dropna()
    if s.empty:
        return {}
    q = np.quantile(s.to_numpy(float), [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def measure(jobs: pd.DataFrame, stages: pd.DataFrame | None, cluster: Cluster, template: Job) -> dict[str, float]:
    """One run's regime as flat keys (``util.<zone>``, ``link_load.<pair>``, ``slack.pN``)."""
    window = float(jobs["planned_ms"].max()) if jobs is not None and len(jobs) and "planned_ms" in jobs else math.nan
    out: dict[str, float] = {}
    if stages is not None and math.isfinite(window):
        for z, u in zone_utilisation(stages, cluster, template, window).items():
            out[f"util.{z}"] = u
        for pair, u in link_load(stages, cluster, template, window).items():
            out[f"link_load.{pair}"] = u
    for k, v in slack_quantiles(jobs).items():
        out[f"slack.{k}"] = v
    return out


def record(metrics: dict[str, Any], runs: Iterable[Mapping[str, float]], nominal_slack: float | None = None,
           background_mean: float | None = None, **fixed: Any) -> dict[str, Any]:
    """Put the mean over ``runs`` (one :func:`measure` dict per run) into ``metrics`` as ``regime.*``.

    ``nominal_slack`` / ``background_mean`` and any ``fixed`` values (e.g. ``rate_per_s``) are
    copied as they are. Returns ``metrics`` for chaining.
    """
    rows = pd.DataFrame(list(runs))
    for col in rows.columns:
        vals = rows[col].astype(float)
        vals = vals[np.isfinite(vals)]
        metrics[f"{PREFIX}.{col}"] = round(float(vals.mean()), 6) if len(vals) else None
    if nominal_slack is not None:
        metrics[f"{PREFIX}.nominal_slack"] = round(float(nominal_slack), 6)
    if background_mean is not None:
        metrics[f"{PREFIX}.background_mean"] = float(background_mean)
    for k, v in fixed.items():
        metrics[f"{PREFIX}.{k}"] = v
    return metrics


def host(metrics: dict[str, Any], when: str = "start") -> dict[str, Any]:
    """Record the host's load (1-min load average, CPUs) as ``regime.host_load1.<when>``, ``regime.host_cpus``.

    For wall-clock measurements (V3 overheads, V5 plan latency): on a shared host a p99 measures the
    neighbours as much as the code, so the run says how busy the machine was.
    """
    try:
        load1 = round(float(os.getloadavg()[0]), 2)
    except OSError:          # not available on this platform
        load1 = None
    metrics[f"{PREFIX}.host_load1.{when}"] = load1
    metrics[f"{PREFIX}.host_cpus"] = os.cpu_count()
    return metrics


def record_runs(metrics: dict[str, Any], runs: Iterable[pd.DataFrame], by: str | None = None) -> dict[str, Any]:
    """:func:`record` from the per-run job tables of :func:`dtlab.experiments.loop.run_controller`
    (each carries its measured regime in ``df.attrs["regime"]``); with ``by`` (e.g. ``rate_per_s``)
    one set of keys per value, ``regime.r<value>.*`` for numbers, since the regime differs per load."""
    runs = [r for r in runs if isinstance(r, pd.DataFrame) and r.attrs.get("regime") is not None]
    if by is None:
        return record(metrics, [r.attrs["regime"] for r in runs])
    groups: dict[Any, list] = {}
    for r in runs:
        key = r[by].iloc[0] if by in r.columns and len(r) else None
        groups.setdefault(key, []).append(r.attrs["regime"])
    for key, regs in groups.items():
        sub: dict[str, Any] = {}
        record(sub, regs)
        tag = f"r{key:g}" if isinstance(key, (int, float)) else str(key)      # V1's metric convention
        metrics.update({k.replace(f"{PREFIX}.", f"{PREFIX}.{tag}.", 1): v for k, v in sub.items()})
    return metrics
