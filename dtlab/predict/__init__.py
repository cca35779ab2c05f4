"""Predictors: how long will this job take under this placement? A latency distribution.

Three paths, selected by name, all reading the same :class:`~dtlab.timing.TimingModel`:

* ``des`` - the SimPy engine (:mod:`dtlab.des.sampling`): the reference model.
* ``fast`` - a vectorised numpy Monte Carlo of the same model, for the planning hot
  path. Every stage is one numpy expression over ``samples`` draws; per-(stage, node)
  arrays are precomputed once per (snapshot, job, timing) and cached.
* ``legacy`` - the heuristic of the lineage this project descends from: the
  critical path of ``duration / speed * overhead`` plus link latencies. Deterministic
  (a constant array), kept only for regression comparisons (experiment V2).

Each predictor is a function ``f(snapshot, job, placement, shadow, samples, rng, timing) ->
ndarray`` of ``samples`` latencies (ms; ``inf`` when the job cannot complete) registered by name
with :func:`register`, like the policies (:mod:`dtlab.policies`); :func:`sample_latencies` checks
the plan once and dispatches. The built-in ones live in ``fast.py``, ``legacy.py`` and ``des.py``
(the SimPy model itself is :mod:`dtlab.des`; ``des.py`` here is only its registration); the
tables they share are in ``tables.py``. A new predictor (e.g. a learned model) registers itself::

    @dtlab.predict.register("mine")
    def mine(snapshot, job, placement, shadow, samples, rng, timing):
        return np.full(samples, 100.0)
"""
from __future__ import annotations

import inspect
from typing import Mapping, Sequence

import numpy as np

from ..errors import SpecError
from ..model import Job
from ..plan import summarize
from ..timing import TimingModel
from .registry import Predictor, check, get, names, register
from .tables import (JITTER_MEAN, ClusterTable, LinkRow, NodeTable, StageTable, cluster_table, node_slowdown,
                     node_table, stage_table)

__all__ = ["JITTER_MEAN", "ClusterTable", "LinkRow", "NodeTable", "Predictor", "StageTable", "check", "cluster_table",
           "get", "names", "node_slowdown", "node_table", "register", "sample_latencies", "score_plan",
           "stage_table"]

_DEFAULT_TIMING = TimingModel()


def sample_latencies(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None, *,
                     predictor: str = "fast", samples: int = 256, rng=None,
                     timing: TimingModel | None = None, prestage: Sequence[str] | None = None) -> np.ndarray:
    """End-to-end latency samples (ms) of ``job`` under ``placement`` (and optional ``shadow``).

    ``prestage``: stages whose inputs are copied to their shadow at dispatch (V4's pre-staging); passed
    to predictors that take a ``prestage`` keyword (``fast``, ``des``), refused by the others."""
    timing = timing or _DEFAULT_TIMING
    rng = _as_rng(rng)
    fn = get(predictor)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise SpecError("samples", f"must be an integer >= 1, got {samples!r}")
    shadow = dict(shadow or {})
    _check_plan(snapshot, job, placement, shadow)
    if prestage:
        if "prestage" not in inspect.signature(fn).parameters:
            raise SpecError("prestage", f"predictor {predictor!r} does not model pre-staging")
        return fn(snapshot, job, placement, shadow, int(samples), rng, timing, prestage=frozenset(prestage))
    return fn(snapshot, job, placement, shadow, int(samples), rng, timing)


def score_plan(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str] | None = None, *,
               predictor: str = "fast", samples: int = 256, rng=None, timing: TimingModel | None = None,
               prestage: Sequence[str] | None = None) -> dict:
    """Prediction dict (mean/p50/p95/p99/cvar95/deadline-miss) from :func:`sample_latencies`."""
    lat = sample_latencies(snapshot, job, placement, shadow, predictor=predictor, samples=samples,
                           rng=rng, timing=timing, prestage=prestage)
    return summarize(lat, job.deadline_ms)


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(0 if rng is None else int(rng))
    raise SpecError("rng", f"must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_plan(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str]) -> None:
    for s in job.stages:
        if s.id not in placement:
            raise SpecError(f"placement.{s.id}", "stage has no node")
    for name, mapping in (("placement", placement), ("shadow", shadow)):
        for sid, node in mapping.items():
            if sid not in job.stage_index:
                raise SpecError(f"{name}.{sid}", f"job {job.name!r} has no such stage")
            if node not in snapshot.nodes:
                raise SpecError(f"{name}.{sid}", f"unknown node {node!r}")


# built-in predictors register themselves on import, in this order (the order names() lists them)
from . import fast, legacy, des  # noqa: E402,F401
