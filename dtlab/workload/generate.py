"""Load generator: arrival processes (Poisson, bursty MMPP, diurnal), durations, Workload files.

Why these three processes: Poisson is the memoryless baseline queueing theory
checks against; real clusters are burstier (a 2-state Markov-modulated Poisson
process reproduces the on/off bursts of batch submissions) and follow the day
(a sinusoidal rate, sampled exactly by thinning). Durations come from a
parametric law or from a trace's empirical distribution (Azure Functions, openb,
Alibaba v2017), resampled with the seeded generator.

Arrivals-spec keys (``Arrivals.extra`` of a Workload, next to ``process``/``rate_per_s``):

* ``mmpp``: ``rates_per_s: [r0, r1, ...]`` (rate in each state), ``mean_sojourn_s: [s0, s1, ...]``
  (mean exponential time in each state); states cycle 0 -> 1 -> ... -> 0, starting in 0.
  ``rate_per_s`` is ignored (the long-run rate is ``sum(r*s)/sum(s)``).
* ``diurnal``: rate ``rate_per_s * (1 + amplitude*cos(2 pi (t - peak_s)/period_s))``;
  ``amplitude`` in [0, 1] (default 0.5), ``period_s`` (default 86400), ``peak_s`` (default 0).
* ``trace``: ``trace: {format, path, time_scale?, start_s?, durations?}``; formats ``dtlab-jobs``
  (what :func:`write_workload` materialises: ``arrival_s,duration_scale``), ``alibaba-openb``,
  ``alibaba-v2017``, ``azure-functions-2021``. Arrivals are the trace's start times shifted to
  start at 0 and multiplied by ``time_scale`` (default 1). ``durations: relative`` (default):
  each job's duration scale is its trace duration over the mean trace duration of the jobs
  taken (the trace gives the shape, the template's ``duration_ms`` the mean). ``durations:
  absolute``: the scale makes the template's summed stage ``duration_ms`` equal the trace
  duration times ``time_scale`` (exact for a one-stage template on a speed-1 node), so a job
  holds its node from creation to deletion as in the trace. The first ``jobs.count`` jobs
  (in start order, after ``start_s``) are used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import yaml

from ..atomic import atomic_write_text
from ..errors import SpecError
from ..strict_json import short
from ..model import API_VERSION, Workload
from ..spec_reader import check_number, job_to_spec

BLOCK = 4096
PARAMETRIC = ("constant", "exponential", "lognormal")
TRACE_FORMATS = ("dtlab-jobs", "alibaba-openb", "alibaba-v2017", "azure-functions-2021")

# Small job templates so a workload can be generated without writing a Job file first.
TEMPLATES: dict[str, dict] = {
    "single": {"apiVersion": API_VERSION, "kind": "Job", "metadata": {"name": "single"},
               "spec": {"stages": [{"id": "run", "compute": {"cpu": 1, "mem_gb": 0.5, "duration_ms": 1000}}]}},
    "pipeline": {"apiVersion": API_VERSION, "kind": "Job", "metadata": {"name": "pipeline", "deadline_ms": 3000},
                 "spec": {"stages": [
                     {"id": "decode", "compute": {"cpu": 1, "mem_gb": 1, "duration_ms": 400}, "output_mb": 20},
                     {"id": "infer", "after": ["decode"], "compute": {"cpu": 2, "mem_gb": 2, "duration_ms": 900}},
                 ]}},
    "fanout": {"apiVersion": API_VERSION, "kind": "Job", "metadata": {"name": "fanout", "deadline_ms": 5000},
               "spec": {"stages": [
                   {"id": "split", "compute": {"cpu": 1, "duration_ms": 200}, "output_mb": 10},
                   {"id": "map-a", "after": ["split"], "compute": {"cpu": 1, "duration_ms": 800}, "output_mb": 2},
                   {"id": "map-b", "after": ["split"], "compute": {"cpu": 1, "duration_ms": 800}, "output_mb": 2},
                   {"id": "reduce", "after": ["map-a", "map-b"], "compute": {"cpu": 1, "duration_ms": 300}},
               ]}},
}


# ------------------------------------------------------------------ arrival processes (times in s)

def poisson_times(rng: np.random.Generator, count: int, rate_per_s: float) -> np.ndarray:
    """``count`` arrival times (s) of a Poisson process; the first after one gap."""
    rate = check_number(rate_per_s, "arrivals.rate_per_s", gt=0)
    return np.cumsum(rng.exponential(1.0 / rate, count))


def mmpp_times(rng: np.random.Generator, count: int, rates_per_s, mean_sojourn_s) -> np.ndarray:
    """``count`` arrival times (s) of a Markov-modulated Poisson process cycling through its states.

    Per state visit: a sojourn ~ Exp(mean), a Poisson number of arrivals, uniform inside the visit
    (the order statistics of a Poisson process), so the cost is per visit, not per arrival.
    """
    rates = _positive_list(rates_per_s, "arrivals.rates_per_s", allow_zero=True)
    sojourns = _positive_list(mean_sojourn_s, "arrivals.mean_sojourn_s")
    if len(rates) != len(sojourns) or len(rates) < 2:
        raise SpecError("arrivals.mean_sojourn_s", "give one mean sojourn per rate, at least two states")
    if max(rates) <= 0:
        raise SpecError("arrivals.rates_per_s", "at least one state needs a rate > 0")
    out: list[np.ndarray] = []
    have, t, state = 0, 0.0, 0
    while have < count:
        stay = rng.exponential(sojourns[state])
        k = rng.poisson(rates[state] * stay)
        if k:
            out.append(t + np.sort(rng.uniform(0.0, stay, k)))
            have += k
        t += stay
        state = (state + 1) % len(rates)
    return np.concatenate(out)[:count]


def diurnal_times(rng: np.random.Generator, count: int, rate_per_s: float, amplitude: float = 0.5,
                  period_s: float = 86_400.0, peak_s: float = 0.0) -> np.ndarray:
    """``count`` arrival times (s) of a Poisson process with a cosine daily rate (Lewis-Shedler thinning)."""
    rate = check_number(rate_per_s, "arrivals.rate_per_s", gt=0)
    amp = check_number(amplitude, "arrivals.amplitude", ge=0, le=1)
    period = check_number(period_s, "arrivals.period_s", gt=0)
    peak = check_number(peak_s, "arrivals.peak_s")
    top = rate * (1 + amp)
    out: list[np.ndarray] = []
    have, t = 0, 0.0
    while have < count:
        cand = t + np.cumsum(rng.exponential(1.0 / top, BLOCK))
        keep = rng.uniform(0.0, top, BLOCK) < rate * (1 + amp * np.cos(2 * np.pi * (cand - peak) / period))
        out.append(cand[keep])
        have += int(keep.sum())
        t = float(cand[-1])
    return np.concatenate(out)[:count]


def _positive_list(value, field: str, allow_zero: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(field, "must be a non-empty list of numbers")
    return [check_number(v, f"{field}[{i}]", ge=0) if allow_zero else check_number(v, f"{field}[{i}]", gt=0)
            for i, v in enumerate(value)]


def arrival_times(process: str, rng: np.random.Generator, count: int, rate_per_s: float | None = None,
                  **extra) -> np.ndarray:
    """Arrival times in seconds for a synthetic ``process`` (poisson | constant | mmpp | diurnal)."""
    if count < 1:
        raise SpecError("jobs.count", "must be >= 1")
    if process == "poisson":
        return poisson_times(rng, count, rate_per_s)
    if process == "constant":
        rate = check_number(rate_per_s, "arrivals.rate_per_s", gt=0)
        return np.arange(1, count + 1) / rate
    if process == "mmpp":
        _only(extra, ("rates_per_s", "mean_sojourn_s"), "mmpp")
        if "rates_per_s" not in extra or "mean_sojourn_s" not in extra:
            raise SpecError("arrivals.rates_per_s", "mmpp needs rates_per_s and mean_sojourn_s lists")
        return mmpp_times(rng, count, extra["rates_per_s"], extra["mean_sojourn_s"])
    if process == "diurnal":
        _only(extra, ("amplitude", "period_s", "peak_s"), "diurnal")
        return diurnal_times(rng, count, rate_per_s, **extra)
    raise SpecError("arrivals.process", f"must be poisson, constant, mmpp or diurnal, got {short(process)}")


def _only(extra: Mapping, allowed: tuple[str, ...], process: str) -> None:
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise SpecError(f"arrivals.{unknown[0]}", f"unknown key for process {process} (known: {', '.join(allowed)})")


# stream.PROCESSES entries: fn(workload, rng) -> iterator of arrival times in ms
def workload_mmpp(workload: Workload, rng: np.random.Generator) -> Iterator[float]:
    yield from (arrival_times("mmpp", rng, workload.count, **dict(workload.arrivals.extra)) * 1000.0).tolist()


def workload_diurnal(workload: Workload, rng: np.random.Generator) -> Iterator[float]:
    yield from (arrival_times("diurnal", rng, workload.count, workload.arrivals.rate_per_s,
                              **dict(workload.arrivals.extra)) * 1000.0).tolist()


# ------------------------------------------------------------------ durations

def trace_durations(format: str, path=None) -> tuple[np.ndarray, np.ndarray]:
    """(start times s, durations s) of a trace's jobs, in start order; unfinished jobs dropped."""
    from . import readers

    if format == "dtlab-jobs":
        if path is None:
            raise SpecError("trace.path", "dtlab-jobs needs a path")
        df = readers.read_table(path, [readers.Col("arrival_s", "float", ge=0),
                                  readers.Col("duration_scale", "float", ge=0)], "dtlab jobs")
        return df["arrival_s"].to_numpy(), df["duration_scale"].to_numpy()
    if format == "alibaba-openb":
        df = readers.read_trace(format, path)
        start, end = df["creation_time"].to_numpy(), df["deletion_time"].to_numpy()
    elif format == "alibaba-v2017":
        df = readers.read_trace(format, path)
        start, end = df["create_time_s"].to_numpy(), df["end_time_s"].to_numpy()
    elif format == "azure-functions-2021":
        df = readers.read_trace(format, path)
        start, end = df["start_s"].to_numpy(), df["end_s"].to_numpy()
        ok = np.isfinite(start)
        start, dur = start[ok], df["duration_s"].to_numpy()[ok]   # as recorded, not end - start
        order = np.argsort(start, kind="stable")
        return start[order], dur[order]
    else:
        raise SpecError("trace.format", f"must be one of {list(TRACE_FORMATS)}, got {short(format)}")
    ok = np.isfinite(start) & np.isfinite(end) & (end >= start)
    start, dur = start[ok], (end - start)[ok]
    order = np.argsort(start, kind="stable")
    return start[order], dur[order]


def draw_durations(source: Mapping[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` durations in seconds: ``{dist: constant|exponential|lognormal, mean_s, sigma}`` or
    ``{trace: format, path?}`` (resampled with replacement from the trace's durations)."""
    if "trace" in source:
        _, durs = trace_durations(source["trace"], source.get("path"))
        if len(durs) == 0:
            raise SpecError("durations.trace", "the trace has no finished job")
        return durs[rng.integers(len(durs), size=n)]
    dist = source.get("dist", "constant")
    mean = check_number(source.get("mean_s", 1.0), "durations.mean_s", gt=0)
    if dist == "constant":
        return np.full(n, mean)
    if dist == "exponential":
        return rng.exponential(mean, n)
    if dist == "lognormal":
        s = check_number(source.get("sigma", 0.5), "durations.sigma", ge=0)
        return rng.lognormal(np.log(mean) - 0.5 * s * s, s, n)
    raise SpecError("durations.dist", f"must be one of {list(PARAMETRIC)} or give a trace, got {short(dist)}")


# ------------------------------------------------------------------ trace arrivals for stream.arrival_stream

def trace_arrivals(workload: Workload) -> Iterator[tuple[float, str, float]]:
    """``(arrival_ms, name, duration_scale)`` for the first ``count`` jobs of ``arrivals.trace``."""
    trace = dict(workload.arrivals.trace or {})
    if "format" not in trace:
        raise SpecError("arrivals.trace.format", "is required")
    known = ("format", "path", "time_scale", "start_s", "durations")
    unknown = sorted(set(trace) - set(known))
    if unknown:
        raise SpecError(f"arrivals.trace.{unknown[0]}", f"unknown key (known: {', '.join(known)})")
    mode = trace.get("durations", "relative")
    if mode not in ("relative", "absolute"):
        raise SpecError("arrivals.trace.durations", f"must be relative or absolute, got {short(mode)}")
    fmt = trace["format"]
    scale_t = check_number(trace.get("time_scale", 1.0), "arrivals.trace.time_scale", gt=0)
    start_s = check_number(trace.get("start_s", 0.0), "arrivals.trace.start_s")
    starts, durs = trace_durations(fmt, _resolve(trace.get("path")))
    if len(starts) and start_s:
        keep = starts >= starts[0] + start_s
        starts, durs = starts[keep], durs[keep]
    starts, durs = starts[:workload.count], durs[:workload.count]
    if len(starts) == 0:
        raise SpecError("arrivals.trace", f"no job in the trace after start_s={start_s:g}")
    if fmt == "dtlab-jobs":        # already scale factors and arrival times from 0
        scales, t = durs, starts
    elif mode == "absolute":
        total_ms = sum(s.compute.duration_ms for s in workload.template.stages)
        scales, t = durs * 1000.0 * scale_t / total_ms, starts - starts[0]
    else:
        mean = durs.mean()
        scales = durs / mean if mean > 0 else np.ones_like(durs)
        t = starts - starts[0]
    base = workload.template.name
    for i, (a, s) in enumerate(zip((t * 1000.0 * scale_t).tolist(), scales.tolist())):
        yield a, f"{base}-{i}", s


def _resolve(path):
    if path is None:
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and not p.exists():
        from .readers import TRACE_DIR
        if (TRACE_DIR / p).exists():
            return TRACE_DIR / p
    return p


# ------------------------------------------------------------------ Workload files

@dataclass(frozen=True)
class GeneratedWorkload:
    workload_path: Path
    jobs_path: Path | None     # materialised arrivals (dtlab-jobs CSV), when written
    spec: dict


def write_workload(out: str | os.PathLike, *, template: str | Mapping = "single", count: int = 100,
                   process: str = "poisson", rate_per_s: float | None = 1.0,
                   arrivals: Mapping[str, Any] | None = None,
                   durations: Mapping[str, Any] | None = None, seed: int = 0,
                   materialize: bool | None = None, name: str | None = None) -> GeneratedWorkload:
    """Write a ``kind: Workload`` YAML file (and, when materialised, a ``<stem>.jobs.csv``).

    A synthetic process with a parametric duration law is written as a spec only (the stream
    draws it at run time from the run's seed). Durations from a trace, or ``materialize=True``,
    draw the stream now with ``seed`` and write it as a ``dtlab-jobs`` trace the Workload names,
    so the file alone fixes every arrival and duration.
    ``template``: a built-in name (:data:`TEMPLATES`), a Job file path, or a Job dict.
    ``durations``: ``{dist, mean_s, sigma}`` or ``{trace: format, path}``.
    """
    from ..model import job_from_dict, load_job, workload_from_dict

    out = Path(out)
    extra = dict(arrivals or {})
    durations = dict(durations or {"dist": "constant"})
    if isinstance(template, str) and template in TEMPLATES:
        tmpl = dict(TEMPLATES[template])
    elif isinstance(template, Mapping):
        tmpl = dict(template)
    else:  # a Job file: embedded (normalised to dtlab/v1) so the Workload file stands alone
        tmpl = _job_to_dict(load_job(template))
    job = job_from_dict(tmpl)
    from_trace = "trace" in durations
    if materialize is None:
        materialize = from_trace
    if from_trace and not materialize:
        raise SpecError("durations.trace", "trace durations need materialize=True (the Workload spec has no field for them)")
    spec: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Workload",
                            "metadata": {"name": name or out.stem}}
    jobs_path = None
    if materialize:
        rng = np.random.default_rng(seed)
        times = arrival_times(process, rng, count, rate_per_s, **extra)
        durs = draw_durations(durations, rng, count)
        mean = durs.mean()
        jobs_path = out.with_name(out.stem + ".jobs.csv")
        jobs_path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"arrival_s": np.round(times, 6),
                              "duration_scale": np.round(durs / mean if mean > 0 else np.ones(count), 6)})
        _atomic_write(jobs_path, frame.to_csv(index=False))
        spec["arrivals"] = {"process": "trace", "trace": {"format": "dtlab-jobs", "path": str(jobs_path.resolve())}}
        spec["metadata"]["annotations"] = {
            "generated": f"process={process} rate_per_s={rate_per_s} {extra} durations={durations} seed={seed}",
            "mean_duration_s": f"{mean:.6g}"}
        spec["jobs"] = {"template": tmpl, "count": count}
    else:
        dist = durations.get("dist", "constant")
        if dist not in PARAMETRIC:
            raise SpecError("durations.dist", f"must be one of {list(PARAMETRIC)}, got {short(dist)}")
        unknown = sorted(set(durations) - {"dist", "sigma", "mean_s"})
        if unknown:
            raise SpecError(f"durations.{unknown[0]}", "unknown key (known: dist, sigma, mean_s)")
        if "mean_s" in durations:   # the template's durations carry the mean: rescale them
            total_ms = sum(s.compute.duration_ms for s in job.stages)
            job = job.scaled(float(durations["mean_s"]) * 1000.0 / total_ms)
            tmpl = _job_to_dict(job)
        arr = {"process": process, **extra}
        if process in ("poisson", "constant", "diurnal"):
            arr["rate_per_s"] = check_number(rate_per_s, "arrivals.rate_per_s", gt=0)
        arrival_times(process, np.random.default_rng(seed), 1, rate_per_s, **extra)  # validate now
        spec["arrivals"] = arr
        jobs: dict[str, Any] = {"template": tmpl, "count": count}
        if dist != "constant":
            jobs["duration_scale"] = {"dist": dist, **({"sigma": float(durations.get("sigma", 0.5))}
                                                       if dist == "lognormal" else {})}
        spec["jobs"] = jobs
    workload_from_dict(spec)        # the file we write must load
    _atomic_write(out, yaml.safe_dump(spec, sort_keys=False))
    return GeneratedWorkload(workload_path=out, jobs_path=jobs_path, spec=spec)


def _job_to_dict(job) -> dict:
    meta: dict[str, Any] = {"name": job.name}
    if job.deadline_ms is not None:
        meta["deadline_ms"] = job.deadline_ms
    if job.origin_zone is not None:
        meta["origin"] = {"zone": job.origin_zone}
    return {"apiVersion": API_VERSION, "kind": "Job", "metadata": meta, "spec": job_to_spec(job)}


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
