"""Time-based replay: pods arrive at ``creation_time`` and free their resources at ``deletion_time``.

Where the allocation replay (FGD methodology) asks "how full can a policy pack the
cluster", this one asks what a cluster running the trace looks like over time, so
V1/V5 workloads can name a trace instead of a synthetic stream::

    workload: {trace: {format: alibaba-openb, path: PODS_CSV, nodes: NODES_CSV}}

Rules: events in time order; at equal times deletions come first (a pod that leaves
at t frees room for one created at t); a pod that fits no node on arrival fails
(no queue: the trace's own Pending pods are not re-modelled); a pod without a
deletion time runs to the end. Usage is recorded after every event batch.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import SpecError
from .fit import ClusterArrays, Pods
from .policies import make_chooser


@dataclass
class TimedResult:
    pods: pd.DataFrame    # name, node (-1 failed), node_name, start_s, end_s
    usage: pd.DataFrame   # time_s, running, failed, gpu_alloc_pct, cpu_alloc_pct
    seconds: float


def replay_timed(nodes: pd.DataFrame, pods: pd.DataFrame, policy: str = "best-fit", seed: int = 0,
                 until_s: float | None = None) -> TimedResult:
    """Replay creation/deletion times of ``pods`` on ``nodes`` with ``policy``."""
    if "creation_time" not in pods.columns or pods["creation_time"].isna().any():
        raise SpecError("pods.creation_time", "time-based replay needs a creation time for every pod "
                        "(this pod list has none; use the allocation replay instead)")
    rng = np.random.default_rng(seed)
    cluster = ClusterArrays(nodes)
    choose = make_chooser(policy, cluster, workload=pods)
    order = np.lexsort((np.arange(len(pods)), pods["creation_time"].to_numpy()))
    pods = pods.iloc[order].reset_index(drop=True)
    if until_s is not None:
        pods = pods[pods["creation_time"] <= until_s].reset_index(drop=True)
    p = Pods.from_frame(pods)
    created = pods["creation_time"].to_numpy(float)
    deleted = pods["deletion_time"].to_numpy(float) if "deletion_time" in pods else np.full(len(pods), np.nan)
    node_of = np.full(len(p), -1, np.int64)
    slots: dict[int, np.ndarray] = {}
    ends: list[tuple[float, int]] = []   # heap of (deletion time, pod index)
    usage = []
    failed = running = 0
    t0 = time.perf_counter()
    i, n = 0, len(p)
    while i < n or ends:
        t_next = min(created[i] if i < n else np.inf, ends[0][0] if ends else np.inf)
        if until_s is not None and t_next > until_s:
            break
        while ends and ends[0][0] <= t_next:          # deletions first
            _, j = heapq.heappop(ends)
            cluster.release(int(node_of[j]), int(p.cpu[j]), int(p.mem[j]), int(p.gpu_milli[j]), slots.pop(j))
            running -= 1
        while i < n and created[i] <= t_next:
            req = (int(p.cpu[i]), int(p.mem[i]), int(p.num_gpu[i]), int(p.gpu_milli[i]))
            idx = np.flatnonzero(cluster.fits(*req, p.spec[i]))
            if len(idx):
                node, chosen = choose(cluster, idx, req, rng)
                slots[i] = cluster.place(node, *req, slots=chosen)
                node_of[i] = node
                running += 1
                if not np.isnan(deleted[i]):
                    heapq.heappush(ends, (max(float(deleted[i]), created[i]), i))
            else:
                failed += 1
            i += 1
        usage.append((t_next, running, failed, cluster.gpu_alloc_pct(), cluster.cpu_alloc_pct()))
    seconds = time.perf_counter() - t0
    cluster.check()
    placed = node_of >= 0
    out = pd.DataFrame({
        "name": p.name, "node": node_of,
        "node_name": np.where(placed, cluster.names[np.maximum(node_of, 0)], ""),
        "start_s": np.where(placed, created, np.nan),
        "end_s": np.where(placed, deleted, np.nan),
    })
    return TimedResult(pods=out, usage=pd.DataFrame(usage, columns=["time_s", "running", "failed",
                                                                     "gpu_alloc_pct", "cpu_alloc_pct"]),
                       seconds=seconds)


def replay_trace(trace: Mapping, policy: str = "best-fit", seed: int = 0) -> TimedResult:
    """Time-based replay from a workload's ``trace`` mapping (``format``, ``path``, ``nodes``, ``until_s``)."""
    from ..workload.readers import OPENB_NODES, OPENB_PODS, read_openb_nodes, read_openb_pods

    fmt = trace.get("format")
    if fmt != "alibaba-openb":
        raise SpecError("trace.format", f"time-based placement replay supports alibaba-openb, got {fmt!r}")
    unknown = set(trace) - {"format", "path", "nodes", "until_s", "policy"}
    if unknown:
        raise SpecError(f"trace.{sorted(unknown)[0]}", "unknown key (known: format, path, nodes, until_s, policy)")
    nodes = read_openb_nodes(trace.get("nodes") or OPENB_NODES)
    pods = read_openb_pods(trace.get("path") or OPENB_PODS)
    return replay_timed(nodes, pods, trace.get("policy", policy), seed, trace.get("until_s"))
