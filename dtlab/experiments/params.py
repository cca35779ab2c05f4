"""Experiment parameters: validation, ranges, spec-file params, derived seeds.

Every experiment module exposes ``DEFAULTS`` (the documented parameter set); papermill only warns
about unknown parameters, so :func:`validate` is where a typo in a params file becomes an error
naming the key. Paths in params are resolved against the working directory, then the repository
(notebooks run elsewhere).
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import SpecError
from ..model import MAX_WORKLOAD_JOBS, Cluster, Workload, load_cluster, load_job, load_workload
from ..spec_reader import MAX_NUMBER
from ..strict_json import short
from ..twin import MAX_SAMPLES

REPO_ROOT = Path(__file__).resolve().parents[2]


def validate(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    """Defaults overlaid with ``params``; an unknown key is a SpecError naming it."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SpecError(unknown[0], f"unknown parameter of {experiment} (known: {sorted(defaults)})")
    out = {**defaults, **params}
    seeds = out.get("seeds")
    if seeds is not None:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = list(range(seeds))
        if not isinstance(seeds, (list, tuple)) or not seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise SpecError("seeds", "must be a non-empty list of non-negative integers (or a count)")
        out["seeds"] = [int(s) for s in seeds]
    _check_numbers(out, "")
    for key, default in defaults.items():
        value = out[key]
        if key == "seeds" or value is None or default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        elif isinstance(default, Mapping):
            ok = isinstance(value, Mapping)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise SpecError(key, f"must be of type {type(default).__name__}, got {short(value)}")
    check_ranges(out)
    check_spec_params(out)
    return out


# Ranges of the parameters experiments share, by name (one home: every experiment's pre-run
# check applies them through `validate`). (lower, upper, lower bound inclusive?)
PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "jobs": (1, MAX_WORKLOAD_JOBS, True), "samples": (1, MAX_SAMPLES, True), "plans": (1, 1e6, True),
    "reps": (1, 1e6, True), "pods": (1, 1e7, True), "snapshots": (1, 1e6, True),
    "apply_events": (1, 1e8, True), "node_counts": (1, 1e6, True),
    "rate_per_s": (0, 1e6, False), "rates_per_s": (0, 1e6, False), "duration_ms": (0, MAX_NUMBER, False),
    "pod_ms": (0, MAX_NUMBER, False), "probes_per_s": (0, 1e4, False), "kube_timeout_s": (0, 1e6, False),
    "window_s": (0, 1e7, False), "ewma_alpha": (0, 1, False), "telemetry_noise": (0, 10, True),
    "telemetry_delay_s": (0, 1e7, True),
}
MAX_SEED = 2**63 - 1


def check_ranges(params: Mapping[str, Any]) -> None:
    """Every known count/rate/duration parameter within its range (lists: every item)."""
    for key, (lo, hi, inclusive) in PARAM_RANGES.items():
        value = params.get(key)
        if value is None or isinstance(value, (str, Mapping)):
            continue  # str/mapping: a path or another shape; the type check and the loaders judge it
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            where = key if i is None else f"{key}[{i}]"
            if isinstance(v, str):  # V3's `jobs` is a list of Job files
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SpecError(where, f"must be a number, got {short(v)}")
            if not ((lo <= v) if inclusive else (lo < v)) or not v <= hi:
                raise SpecError(where, f"must be in {'[' if inclusive else '('}{lo:g}, {hi:g}], got {short(v)}")
    for i, s in enumerate(params.get("seeds") or []):
        if isinstance(s, int) and s > MAX_SEED:
            raise SpecError(f"seeds[{i}]", "must be < 2**63")


def _check_numbers(value: Any, path: str) -> None:
    """No NaN/inf and nothing beyond 1e12 in magnitude anywhere in the params (nested too)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(path, f"must be a finite number, got {short(value)}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > 1e12 \
            and not path.startswith("seeds"):
        raise SpecError(path, f"must be at most 1e12 in magnitude, got {short(value)}")


# Params that name spec files, and the loader that must accept them before anything runs.
SPEC_PARAMS = {"cluster": "cluster", "workload": "workload", "job": "job", "jobs": "job"}


def check_spec_params(params: Mapping[str, Any]) -> None:
    """Load every spec file a param names (a missing, directory or non-spec path fails here)."""
    loaders = {"cluster": load_cluster, "workload": load_workload, "job": load_job}
    for key, kind in SPEC_PARAMS.items():
        value = params.get(key)
        paths = [(key, value)] if isinstance(value, str) else \
            [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else []
        for where, path in paths:
            if not isinstance(path, str):
                continue
            try:
                loaders[kind](resolve_path(path, where))
            except SpecError as exc:
                if exc.field == where:
                    raise
                raise SpecError(where, f"{path}: {exc}") from None


def require_positive(params: Mapping[str, Any], *keys: str) -> None:
    for k in keys:
        if not params[k] > 0:
            raise SpecError(k, f"must be > 0, got {params[k]!r}")


def require_choices(params: Mapping[str, Any], key: str, choices: Iterable[str]) -> None:
    choices = list(choices)
    values = params[key] if isinstance(params[key], (list, tuple)) else [params[key]]
    if isinstance(params[key], (list, tuple)) and not values:
        raise SpecError(key, "must not be empty")
    for i, v in enumerate(values):
        if v not in choices:
            where = f"{key}[{i}]" if isinstance(params[key], (list, tuple)) else key
            raise SpecError(where, f"must be one of {choices}, got {short(v)}")


def resolve_path(path: str | os.PathLike[str], field_name: str) -> Path:
    """A params path as given (relative to cwd), else relative to the repo root (notebooks run elsewhere)."""
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise SpecError(field_name, f"file not found: {path}")


def child_seed(*parts: int | str) -> int:
    """A stable seed derived from parts (experiment, seed, policy ...), independent of PYTHONHASHSEED."""
    words: list[int] = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode())
            words.append(0x1F)
        else:
            words.append(int(p))
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def load_cluster_param(path: str) -> Cluster:
    return load_cluster(resolve_path(path, "cluster"))


def load_workload_param(path: str, jobs: int | None, rate_per_s: float | None) -> Workload:
    """The workload file with its job count and arrival rate overridden by params (None: keep the file's)."""
    wl = load_workload(resolve_path(path, "workload"))
    if jobs is not None:
        if jobs < 1:
            raise SpecError("jobs", "must be >= 1")
        wl = replace(wl, count=int(jobs))
    if rate_per_s is not None:
        if not rate_per_s > 0:
            raise SpecError("rate_per_s", "must be > 0")
        wl = replace(wl, arrivals=replace(wl.arrivals, rate_per_s=float(rate_per_s)))
    return wl
