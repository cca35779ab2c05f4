"""The ``legacy`` predictor: the heuristic of the lineage this project descends from.

The critical path of ``duration / speed * overhead`` plus link latencies. Deterministic (a
constant array: no noise, contention, bandwidth or loss), kept only for regression
comparisons (experiment V2).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..errors import SpecError
from ..model import Job, LinkCutError, resolve_link
from ..timing import TimingModel
from .registry import register


@register("legacy")
def predict_legacy(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str], samples: int,
                   rng: np.random.Generator, timing: TimingModel) -> np.ndarray:
    """``samples`` copies of the legacy critical-path latency (ms)."""
    return np.full(samples, _legacy(snapshot, job, placement, timing))


def _legacy(snapshot, job: Job, placement: Mapping[str, str], timing: TimingModel) -> float:
    """Critical path of duration/speed*overhead plus link latency (no noise, contention, bandwidth or loss)."""
    finish: dict[str, float] = {}
    for sid in job.topo_order:
        stage = job.stages[job.stage_index[sid]]
        node = snapshot.nodes[placement[sid]].node
        fmt = timing.exec_format(stage, node)
        if fmt is None:
            raise SpecError(f"placement.{sid}", f"stage cannot run on node {node.name!r}")
        start = 0.0
        if not stage.after and job.origin_zone is not None:
            try:
                link = resolve_link(snapshot.cluster, snapshot.link_overrides, job.origin_zone, node.name)
                start = link.latency_ms if link is not None else 0.0
            except LinkCutError:
                start = math.inf
        for p in stage.after:
            if not snapshot.reachable(placement[p], node.name):
                return math.inf
            link = snapshot.link(placement[p], node.name)
            start = max(start, finish[p] + (link.latency_ms if link is not None else 0.0))
        finish[sid] = start + stage.compute.duration_ms * fmt[1] / node.speed
    return max(finish.values())
