"""Run a whole workload through the engine: arrivals, a planning callback per job, one row per job."""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
from simpy.events import Timeout

from ..errors import SpecError
from ..model import Cluster, Job, Workload
from ..state import ClusterState, NodeStatus, Snapshot
from ..timing import TimingModel
from ..workload.stream import arrival_stream
from .engine import Engine

PlanFn = Callable[[Job, Snapshot, np.random.Generator], Any]

COLUMNS = ("job", "arrival_ms", "start_ms", "end_ms", "latency_ms", "wait_ms", "deadline_ms", "missed", "nodes")


class LiveNodes(Mapping[str, NodeStatus]):
    """``Snapshot.nodes`` backed by the running engine: a NodeStatus is built only for the names read."""

    def __init__(self, engine: Engine, cluster: Cluster):
        self._engine = engine
        self._cluster = cluster
        self._names = [n.name for n in cluster.nodes]

    def __getitem__(self, name: str) -> NodeStatus:
        up, bg, running = self._engine.node_view(name)
        return NodeStatus(self._cluster.by_name[name], up=up, cpu_util=bg, telemetry_ts=None,
                          running_cpu=running)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def simulate(cluster_or_state: Cluster | ClusterState, workload: Workload, plan_fn: PlanFn | None,
             seed: int, timing: TimingModel | None = None) -> pd.DataFrame:
    """Simulate ``workload`` on the cluster; one row per job (columns :data:`COLUMNS`, then
    ``failed_over``, ``lost``, ``extra_work_ms``), ordered by arrival.

    Contract of ``plan_fn(job, snapshot, rng) -> (placement, shadow)`` (a Plan-like object
    with ``.placement``/``.shadow`` is accepted too):

    * called once per arrival, at the arrival's virtual time, with the job *as specified*
      (the template renamed ``<template>-<i>``): the workload's per-job duration draw is
      the world's randomness and stays hidden from the planner;
    * ``snapshot`` is a :class:`~dtlab.state.Snapshot` whose ``nodes`` are read live from
      the engine (``up``, ``cpu_util`` = background, ``running_cpu`` = cores of stages
      running now). It is only valid during the call: do not keep it. ``version`` counts
      arrivals, ``stages`` is empty;
    * ``rng`` is the planner's own generator (seeded from ``seed``, independent of the
      arrival and service draws, so a policy that draws does not shift the workload);
    * when every stage has exactly one feasible node the placement is forced and
      ``plan_fn`` is not called (it may then be None).

    From a ``ClusterState`` the run starts from its snapshot: telemetry ``cpu_util`` as
    background load, current link overrides, and down nodes treated as down for the
    whole run. Seeds: arrivals, engine and planner draw from three children of
    ``numpy.random.SeedSequence(seed)``.
    """
    timing = timing or TimingModel()
    if isinstance(cluster_or_state, ClusterState):
        snap = cluster_or_state.snapshot()
        cluster = snap.cluster
        background = {name: s.cpu_util for name, s in snap.nodes.items() if s.cpu_util > 0}
        links = dict(snap.link_overrides)
        down = [name for name, s in snap.nodes.items() if not s.up]
    else:
        cluster, background, links, down = cluster_or_state, None, None, []
    arr_seq, eng_seq, plan_seq = np.random.SeedSequence(seed).spawn(3)
    engine = Engine(cluster, timing, np.random.default_rng(eng_seq), background=background, links=links,
                    down=down, record_stages=False)
    plan_rng = np.random.default_rng(plan_seq)
    template = workload.template

    forced = _forced_placement(template, cluster, timing)
    if forced is None and plan_fn is None:
        raise SpecError("plan_fn", "the workload's job has a choice of nodes: a planner is required")
    live = LiveNodes(engine, cluster)
    proxy_links = engine.link_overrides
    env = engine.env
    stream = arrival_stream(workload, np.random.default_rng(arr_seq))
    count = [0]

    def arrive(ev) -> None:
        name, scale = ev.job_name, ev.job_scale
        if forced is not None:
            placement, shadow = forced, None
        else:
            count[0] += 1
            snapshot = Snapshot(version=count[0], taken_at=env.now / 1000.0, cluster=cluster, nodes=live,
                                link_overrides=proxy_links, stages=MappingProxyType({}))
            placement, shadow = _unpack(plan_fn(replace(template, name=name), snapshot, plan_rng))
        engine.submit(template, placement, shadow, scale=scale, name=name)
        schedule_next()

    def schedule_next() -> None:
        item = next(stream, None)
        if item is None:
            return
        t, name, scale = item
        ev = Timeout(env, max(t - env.now, 0.0))
        ev.job_name, ev.job_scale = name, scale     # simpy events take attributes: no closure per job
        ev.callbacks.append(arrive)

    schedule_next()
    engine.run()
    df = pd.DataFrame(engine.job_columns())
    if len(df):
        df = df.sort_values("arrival_ms", kind="stable").reset_index(drop=True)
    return df


def _forced_placement(job: Job, cluster: Cluster, timing: TimingModel) -> dict[str, str] | None:
    """The placement when each stage fits exactly one node; None when there is a choice."""
    placement = {}
    for s in job.stages:
        nodes = [n.name for n in cluster.nodes if timing.exec_format(s, n) is not None]
        if not nodes:
            raise SpecError(f"jobs.template.spec.stages[{job.stage_index[s.id]}]",
                            f"no node of cluster {cluster.name!r} can run stage {s.id!r}")
        if len(nodes) > 1:
            return None
        placement[s.id] = nodes[0]
    return placement


def _unpack(result) -> tuple[Mapping[str, str], Mapping[str, str] | None]:
    if isinstance(result, tuple) and len(result) == 2:
        return result
    if hasattr(result, "placement"):
        return result.placement, getattr(result, "shadow", None)
    raise SpecError("plan_fn", f"must return (placement, shadow), got {type(result).__name__}")
