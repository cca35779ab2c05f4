"""Synthetic job streams: when jobs arrive and how big each one is.

A workload is a template job, an arrival process and a per-job duration scale.
:func:`arrival_stream` yields the cheap description ``(t_ms, name, scale)`` that
the simulator feeds to the engine (the template plus a scale, so no Job object is
built per arrival); :func:`job_stream` yields the scaled :class:`Job` itself for
callers that want explicit jobs.

Draws come in blocks of ``BLOCK`` from one generator: inter-arrival gaps first,
then scale factors, so a seed fixes the whole stream. New arrival processes
(trace, mmpp, diurnal) register a generator in :data:`PROCESSES`.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..errors import SpecError
from ..strict_json import short
from ..model import DurationScale, Job, Workload

BLOCK = 4096

# process name -> fn(workload, rng) yielding arrival times in ms (non-decreasing, `count` of them)
PROCESSES: dict[str, Callable[[Workload, np.random.Generator], Iterator[float]]] = {}


def _poisson(workload: Workload, rng: np.random.Generator) -> Iterator[float]:
    """Exponential gaps of mean 1000/rate ms; the first job arrives after one gap."""
    rate = _rate(workload)
    mean_gap = 1000.0 / rate
    t = 0.0
    left = workload.count
    while left > 0:
        n = min(BLOCK, left)
        times = t + np.cumsum(rng.exponential(mean_gap, n))
        t = float(times[-1])
        left -= n
        yield from times.tolist()


def _constant(workload: Workload, rng: np.random.Generator) -> Iterator[float]:
    """Evenly spaced arrivals (D/·/· queues); the first job arrives after one period."""
    period = 1000.0 / _rate(workload)
    for i in range(1, workload.count + 1):
        yield i * period


def _rate(workload: Workload) -> float:
    rate = workload.arrivals.rate_per_s
    if not rate or rate <= 0:
        raise SpecError("arrivals.rate_per_s", f"must be > 0 for process {short(workload.arrivals.process)}")
    return float(rate)


PROCESSES["poisson"] = _poisson
PROCESSES["constant"] = _constant

from .generate import trace_arrivals, workload_diurnal, workload_mmpp  # noqa: E402  (generate never imports stream)

PROCESSES["mmpp"] = workload_mmpp
PROCESSES["diurnal"] = workload_diurnal


def scale_draws(scale: DurationScale, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` per-job duration factors of mean 1 (constant 1, Exp(1), or mean-1 lognormal)."""
    if scale.dist == "constant":
        return np.ones(n)
    if scale.dist == "exponential":
        return rng.exponential(1.0, n)
    if scale.dist == "lognormal":
        s = scale.sigma
        return rng.lognormal(-0.5 * s * s, s, n) if s > 0 else np.ones(n)
    raise SpecError("jobs.duration_scale.dist", f"must be constant, exponential or lognormal, got {short(scale.dist)}")


def arrival_stream(workload: Workload, rng: np.random.Generator) -> Iterator[tuple[float, str, float]]:
    """Yield ``(arrival_ms, job_name, duration_scale)`` for the workload's ``count`` jobs.

    Names are ``<template name>-<i>`` (i from 0). Raises SpecError naming
    ``arrivals.process`` for a process this module does not generate.
    """
    process = workload.arrivals.process
    if process == "trace":  # times AND per-job scales come from the trace (see generate.trace_arrivals)
        yield from trace_arrivals(workload)
        return
    gen = PROCESSES.get(process)
    if gen is None:
        raise SpecError("arrivals.process",
                        f"process {process!r} is not supported by the synthetic stream "
                        f"(known: {sorted(PROCESSES)})")
    base = workload.template.name
    times = gen(workload, rng)
    i = 0
    while i < workload.count:
        n = min(BLOCK, workload.count - i)
        block = [next(times) for _ in range(n)]   # arrival draws first, then scales: stream is seed-stable
        scales = scale_draws(workload.duration_scale, rng, n).tolist()
        for t, s in zip(block, scales):
            yield t, f"{base}-{i}", s
            i += 1


def job_stream(workload: Workload, rng: np.random.Generator) -> Iterator[tuple[float, Job]]:
    """Yield ``(arrival_ms, job)``: the template with every duration scaled by the job's draw."""
    template = workload.template
    for t, name, s in arrival_stream(workload, rng):
        yield t, template.scaled(s, name=name)
