"""Shared plumbing of the experiments: parameter validation, seeds, CIs over seeds, result type.

Every experiment module exposes ``DEFAULTS`` (the documented parameter set) and
``run(params) -> ExperimentResult``. Papermill only warns about unknown parameters,
so :func:`validate` is where a typo in a params file becomes an error naming the key.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..model import MAX_WORKLOAD_JOBS, Cluster, Node, load_cluster
from ..spec_reader import MAX_NUMBER
from ..strict_json import short
from ..twin import MAX_SAMPLES

REPO_ROOT = Path(__file__).resolve().parents[2]

# the statistics live in dtlab.stats (one home); re-exported here for the experiments
from ..stats import CI, NONNEG, RATE, UNBOUNDED, Bounds, mean_ci, t975  # noqa: E402,F401


def metric_bounds(name: str) -> Bounds:
    """The possible range of a metric, from its name: rates/shares/probabilities in [0, 1], times
    (``_ms``, ``_s``), counts and error magnitudes (``ape``, ``mape``) >= 0, anything else unbounded.
    CIs are clipped to it (a t-interval over few seeds otherwise leaves the range)."""
    n = name.lower()
    if n.endswith(("_rate", "rate", "_prob", "_share", "_frac", "_pct_within", "within_10pct")) or "miss" in n:
        return RATE
    if n.endswith(("_ms", "_s", "_ms_mean", "jobs", "_lost", "completed", "ape", "mape", "_count", "_ratio")) \
            or n.startswith(("mape", "ape")):
        return NONNEG
    return UNBOUNDED


def summarize_seeds(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str],
                    bounds: Mapping[str, Bounds] | None = None) -> pd.DataFrame:
    """Tidy CI table: one row per group and metric with mean, ci_low, ci_high, n (rows of ``df`` are seeds).

    Each CI is clipped to the metric's possible range: ``bounds[metric]`` or :func:`metric_bounds`.
    """
    rows = []
    bounds = dict(bounds or {})
    groups = df.groupby(list(by), sort=False) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            b = (bounds or {}).get(m) or metric_bounds(m)
            ci = mean_ci(g[m].tolist(), bounds=b)
            rows.append({**dict(zip(by, key)), "metric": m, "mean": ci.mean,
                         "ci_low": ci.low, "ci_high": ci.high, "n": ci.n})
    return pd.DataFrame(rows)


def put_ci(metrics: dict, name: str, ci: CI) -> None:
    """Flat metrics convention: ``name``, ``name.ci_low``, ``name.ci_high``."""
    metrics[name] = _num(ci.mean)
    metrics[f"{name}.ci_low"] = _num(ci.low)
    metrics[f"{name}.ci_high"] = _num(ci.high)


def metrics_from_summary(summary: pd.DataFrame, key_cols: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in summary.itertuples(index=False):
        r = row._asdict()
        name = ".".join(str(r[k]) for k in key_cols) + "." + r["metric"]
        put_ci(out, name, CI(r["mean"], r["ci_low"], r["ci_high"], r["n"]))
    return out


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


# ---------------------------------------------------------------- params

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
    from ..model import load_job, load_workload
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


def resolve_path(path: str | os.PathLike, field_name: str) -> Path:
    """A params path as given (relative to cwd), else relative to the repo root (notebooks run elsewhere)."""
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise SpecError(field_name, f"file not found: {path}")


def child_seed(*parts: int | str) -> int:
    """A stable seed derived from parts (experiment, seed, policy ...), independent of PYTHONHASHSEED."""
    words = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode())
            words.append(0x1F)
        else:
            words.append(int(p))
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


# ---------------------------------------------------------------- result

@dataclass
class ExperimentResult:
    """Tidy output of one experiment: ``table`` -> results.csv, ``metrics`` -> metrics.json, ``extra`` -> <name>.csv."""
    table: pd.DataFrame
    metrics: dict[str, Any]
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write results.csv, metrics.json and extra CSVs atomically (temp file + rename)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written = [_atomic(d / "results.csv", self.table.to_csv(index=False)),
                   _atomic(d / "metrics.json", json.dumps(self.metrics, indent=2, sort_keys=True) + "\n")]
        for name, df in self.extra.items():
            written.append(_atomic(d / f"{name}.csv", df.to_csv(index=False)))
        return written


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- synthetic clusters

def synthetic_cluster(template: Cluster, nodes: int, seed: int = 0) -> Cluster:
    """A cluster of ``nodes`` nodes drawn from ``template``'s node types, in the template's zones and links.

    The first ``len(template.nodes)`` nodes copy the template in order (so a 7-node template at 7 nodes is
    the template), later ones are random draws of its node types; zones and zone links stay the template's,
    so the arch/format/zone mix is preserved while the node count scales (V5).
    """
    if nodes < 1:
        raise SpecError("nodes", "must be >= 1")
    rng = np.random.default_rng(seed)
    k = len(template.nodes)
    picks = list(range(min(k, nodes))) + rng.integers(0, k, size=max(0, nodes - k)).tolist()
    out = []
    for i, j in enumerate(picks):
        base = template.nodes[j]
        out.append(Node(name=f"{base.zone}-{base.arch}-{i:05d}", arch=base.arch, cores=base.cores,
                        speed=base.speed, mem_gb=base.mem_gb, formats=base.formats, zone=base.zone,
                        labels=base.labels, fail_prob=base.fail_prob))
    zones = {n.zone for n in out}
    links = tuple(l for l in template.links if l.a in zones and l.b in zones)
    return Cluster(name=f"{template.name}-x{nodes}", nodes=tuple(out), links=links)


def load_cluster_param(path: str) -> Cluster:
    return load_cluster(resolve_path(path, "cluster"))


# ---------------------------------------------------------------- shared run pieces

SUBSTRATE_DEFAULTS: dict[str, Any] = {
    "substrate": "sim",
    "substrate_opts": {},
    "cluster": "examples/cluster-hetero.yaml",
}
AUTO = "auto"


def auto_substrate_defaults(fabric_sizes: Mapping[str, Any]) -> dict[str, Any]:
    """Substrate parameters of an experiment that prefers real execution (V1-V3).

    ``substrate: auto`` resolves to ``fabric`` when :func:`dtlab.fabric.available` says this host
    can run it, else to ``sim`` with the reason in ``substrate_note``. ``fabric`` maps parameter
    names to the sizes used when the run lands on the fabric: fabric runs take wall-clock time, so
    the full sim sizes would not fit ``make experiments``' budget. ``fabric: {}`` runs the top-level
    sizes on the fabric as well.
    """
    return {**SUBSTRATE_DEFAULTS, "substrate": AUTO, "fabric": dict(fabric_sizes)}


@dataclass
class SubstrateChoice:
    """Which substrate a run asked for, which one it got and why; the twin's timing on that substrate.

    ``metadata`` is filled by :func:`open_substrate` from the first real substrate opened (the
    fabric's cgroup version, scale, link-shaping mechanism per link ...), for run.json.
    """
    requested: str
    name: str
    note: str = ""
    timing: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    opened: list = field(default_factory=list)      # wall-clock substrates opened (their host noise)

    network: dict[str, Any] | None = None      # the fitted link calibration the twin uses (fabric)
    network_path: str = ""
    startup: dict[str, Any] | None = None      # the start-up calibration the twin uses (fabric)
    startup_path: str = ""
    startup_used: dict[str, float] = field(default_factory=dict)    # format -> ms (reference) the twin used
    dispatch_used: float = 0.0

    def with_startup(self, timing, sub) -> Any:
        """On the fabric: ``timing`` with the start-up per format measured on this host's fabric launch
        path (:func:`dtlab.fabric.calibrate.startup_calibration`, measured once per worker build and
        cached), in ``sub``'s reference ms (wall / time_scale); elsewhere ``timing`` unchanged. A failed
        measurement leaves start-up unmodelled and says so in the note."""
        if self.name != "fabric" or timing is None:
            return timing
        from ..fabric import calibrate
        if self.startup is None:
            try:
                self.startup, path = calibrate.startup_calibration()
                self.startup_path = str(path)
            except Exception as exc:  # noqa: BLE001 - run without start-up, say so
                self.startup = {}
                self.note = "; ".join(x for x in (self.note, f"start-up calibration failed ({exc}); not modelled") if x)
        if not self.startup:
            return timing
        scale = getattr(sub, "time_scale", 1.0)
        self.startup_used = {k: round(v, 3) for k, v in calibrate.startup_ms(self.startup, scale).items()}
        self.dispatch_used = round(calibrate.dispatch_ms(self.startup, scale), 3)
        return timing.with_startup(self.startup_used, self.dispatch_used)

    def calibration(self) -> dict[str, Any]:
        """Which calibrations the twin ran with (recorded in metrics and run.json): compute (format
        factors), network (fitted links), startup (per format, and the ms the twin used)."""
        out: dict[str, Any] = {}
        if self.name != "fabric":
            out["compute"] = "none: twin default timing"
            return out
        from ..fabric import calibrate
        try:
            doc = calibrate.load()
            out["compute"] = f"{calibrate.default_out()} (created {doc.get('created')}, quick={doc.get('quick')})"
        except Exception as exc:  # noqa: BLE001 - report, do not fail the run
            out["compute"] = f"defaults ({type(exc).__name__}: {exc})"
        if self.network:
            out["network"] = f"{self.network_path} (created {self.network.get('created')})"
        if self.startup:
            out["startup"] = f"{self.startup_path} (created {self.startup.get('created')})"
            out["startup_ms"] = dict(self.startup_used)
            out["dispatch_ms"] = self.dispatch_used
        return out

    def link_events(self, cluster: Cluster) -> list[dict[str, Any]]:
        """On the fabric: state events giving the twin the links measured and fitted on this host
        (:func:`dtlab.fabric.calibrate.network_calibration`, measured once per link set and cached);
        elsewhere none. A failed measurement leaves the spec links and says so in the note."""
        if self.name != "fabric":
            return []
        from ..fabric import calibrate
        if self.network is None:
            try:
                self.network, path = calibrate.network_calibration(cluster)
                self.network_path = str(path)
            except Exception as exc:  # noqa: BLE001 - run with the spec links, say so
                self.network = {}
                self.note = "; ".join(x for x in (self.note, f"network calibration failed ({exc}); spec links") if x)
        return calibrate.link_events(self.network)

    def metrics(self) -> dict[str, Any]:
        """The result-metric keys every V1-V3 run carries (the runner copies them into run.json);
        on a wall-clock substrate also ``host_noise`` (dtlab/hostnoise.py, worst case over the
        substrates the run opened) and ``host_noise.noisy``."""
        out: dict[str, Any] = {"substrate": self.name, "substrate_requested": self.requested,
                               "substrate_note": self.note}
        if self.network:
            out["network_calibration"] = f"{self.network_path} (created {self.network.get('created')})"
        out["calibration"] = self.calibration()
        if self.metadata:
            out["substrate_metadata"] = dict(self.metadata)
        records = [getattr(sub, "noise", None) for sub in self.opened]
        if any(records):
            from ..hostnoise import combine
            noise = combine([r for r in records if r])
            out["host_noise"] = noise
            out["host_noise.noisy"] = noise["noisy"]
        return out


def host_timing(calibrate_if_missing: bool = True) -> tuple[Any, str]:
    """(TimingModel with this host's measured format factors, note).

    A missing host calibration is measured once with ``dtlab calibrate compute --quick`` (under a
    minute): on the fabric the twin predicts real runs, and with the default factors (QEMU 3.0x where
    this host measures ~3.7x) V2 would report the error of an uncalibrated twin, not the design's
    "after calibration" number. If that measurement fails the defaults are used and the note says so.
    """
    import time

    from ..fabric import calibrate

    timing, note = calibrate.timing_model()
    if not note:
        return timing, f"twin timing: host calibration {calibrate.default_out()}"
    if not calibrate_if_missing:
        return timing, note
    import fcntl

    t0 = time.monotonic()
    lock_path = calibrate.default_out().with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:        # `dtlab run all -j 2`: V1 and V2 must not both measure
        fcntl.flock(lock, fcntl.LOCK_EX)
        timing, note_now = calibrate.timing_model()
        if not note_now:
            return timing, f"twin timing: host calibration {calibrate.default_out()} (measured by a parallel run)"
        try:
            path = calibrate.write(calibrate.measure_compute(quick=True))
        except Exception as exc:  # noqa: BLE001 - any failure: run with defaults, say so
            return timing, f"{note}; quick calibration failed: {type(exc).__name__}: {exc}"
    timing, note2 = calibrate.timing_model(path)
    if note2:
        return timing, note2
    return timing, (f"twin timing: host calibration was missing, measured it now with the quick "
                    f"calibration ({time.monotonic() - t0:.0f} s) -> {path}")


def choose_substrate(requested: str) -> SubstrateChoice:
    """Resolve ``auto`` (fabric if available, else sim with the reason); an explicit ``fabric`` that
    cannot run here is a :class:`SubstrateUnavailable` naming what is missing."""
    from .. import fabric as _fabric
    from .. import substrates
    from ..errors import SubstrateUnavailable

    known = [AUTO, *substrates.names()]
    if requested not in known:
        raise SpecError("substrate", f"unknown substrate {short(requested)} (known: {known})")
    if requested not in (AUTO, "fabric"):
        return SubstrateChoice(requested, requested)
    ok, why = _fabric.available()
    if not ok:
        if requested == "fabric":
            raise SubstrateUnavailable(f"substrate 'fabric' was requested but cannot run on this host: {why} "
                                       "(substrate: auto falls back to sim)")
        return SubstrateChoice(requested, "sim", f"fabric unavailable ({why}); ran on sim")
    timing, note = host_timing()
    return SubstrateChoice(requested, "fabric", note, timing)


def check_params(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], experiment: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(validated params, validated params with the ``fabric`` sizes applied), without running or
    calibrating anything: what the runner checks before a kernel starts (an explicit ``fabric``
    that cannot run here is a :class:`SubstrateUnavailable` already then)."""
    from .. import fabric as _fabric
    from ..errors import SubstrateUnavailable

    p = validate(params, defaults, experiment)
    sizes = dict(p.get("fabric") or {})
    for key in sizes:
        if key not in defaults or key in ("substrate", "fabric"):
            allowed = sorted(k for k in defaults if k not in ("substrate", "fabric"))
            raise SpecError(f"fabric.{key}", f"not a parameter {experiment} can size on the fabric (known: {allowed})")
    try:
        sized = validate({**p, **sizes}, defaults, experiment)
    except SpecError as exc:
        raise SpecError(f"fabric.{exc.field}", exc.rule) from None
    if p.get("substrate") == "fabric":
        ok, why = _fabric.available()
        if not ok:
            raise SubstrateUnavailable(f"substrate 'fabric' was requested but cannot run on this host: {why} "
                                       "(substrate: auto falls back to sim)")
    return p, sized


def resolve(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], experiment: str
            ) -> tuple[dict[str, Any], SubstrateChoice]:
    """Validated params with the substrate resolved (``p["substrate"]`` is the one that runs) and,
    on the fabric, the ``fabric`` size overrides applied; plus the :class:`SubstrateChoice`."""
    p, checked = check_params(params, defaults, experiment)
    sizes = dict(p.get("fabric") or {})
    choice = choose_substrate(p["substrate"])
    if choice.name == "fabric" and sizes:
        p = checked
        applied = ", ".join(f"{k}={v}" for k, v in sizes.items())
        choice.note = "; ".join(x for x in (choice.note, f"fabric sizes: {applied}") if x)
    p["substrate"] = choice.name
    return p, choice


def load_workload_param(path: str, jobs: int | None, rate_per_s: float | None):
    """The workload file with its job count and arrival rate overridden by params (None: keep the file's)."""
    from dataclasses import replace

    from ..model import load_workload

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


def open_substrate(params: Mapping[str, Any], cluster: Cluster, seed: int,
                   choice: SubstrateChoice | None = None, **extra: Any):
    """The run's substrate (params ``substrate``, ``substrate_opts``) seeded for one seed.

    With a ``choice`` on the fabric, the substrate chooses formats with the same (host-calibrated)
    timing as the twin, and the first substrate's ``metadata()`` is kept in ``choice.metadata``.
    """
    from ..substrates import make_substrate

    opts = {**dict(params.get("substrate_opts") or {}), **extra}
    if choice is not None and params["substrate"] == "fabric" and choice.timing is not None:
        opts.setdefault("timing", choice.timing)
    sub = make_substrate(params["substrate"], cluster, seed=seed, **opts)
    if choice is not None and hasattr(sub, "noise"):
        choice.opened.append(sub)          # its host noise is read after it closed (SubstrateChoice.metrics)
    if choice is not None and not choice.metadata and params["substrate"] == "fabric":
        meta = getattr(sub, "metadata", None)
        if callable(meta):
            choice.metadata = dict(meta())
    return sub


def run_controller(params: Mapping[str, Any], cluster: Cluster, workload, seed: int, policy: str,
                   predictor: str, samples: int, substrate_extra: Mapping[str, Any] | None = None,
                   on_plan=(), recalibrate: dict | None = None, before=None,
                   choice: SubstrateChoice | None = None, limit: int | None = None):
    """One controller run (fresh twin + substrate) of a workload; returns (per-job DataFrame, controller).

    With a ``choice`` the twin plans with ``choice.timing`` (on the fabric: this host's calibration).
    ``limit``: submit only the stream's first ``limit`` jobs (the same arrivals as the full run's first ones).
    """
    from ..controller import Controller
    from ..twin import Twin
    from ..workload.stream import job_stream

    twin = Twin(cluster, timing=choice.timing if choice is not None else None)
    if choice is not None:
        events = choice.link_events(cluster)
        if events:
            twin.state.apply_many(events)     # the twin's links: fitted to this host's data path
    if before is not None:
        before(twin)      # lets a caller hold the run's twin (V2 predicts with its timing model)
    with open_substrate(params, cluster, seed, choice, **dict(substrate_extra or {})) as sub:
        if choice is not None:
            twin.timing = choice.with_startup(twin.timing, sub)   # start-up in this substrate's time
        recal = None
        if recalibrate is not None:
            from ..calibration.online import OnlineCalibrator
            recal = OnlineCalibrator(twin, **recalibrate)
        ctl = Controller(twin, sub, policy=policy, predictor=predictor, samples=samples,
                         seed=child_seed(seed, policy, predictor), on_plan=on_plan, recalibrator=recal)
        stream = job_stream(workload, np.random.default_rng(child_seed(seed, "workload")))
        if limit is not None:
            import itertools
            stream = itertools.islice(stream, int(limit))
        df = ctl.run_workload(stream)
        stages = sub.results()["stages"]
    df.insert(0, "seed", seed)
    from . import regime
    df.attrs["regime"] = regime.measure(df, stages, cluster, workload.template)   # small dict: the run's regime
    return df, ctl


def latency_stats(df: pd.DataFrame) -> dict[str, float]:
    """Per-run job metrics: latency mean/p95/p99 over completed jobs, miss rate over all planned jobs."""
    lat = df.loc[df["ok"], "latency_ms"].to_numpy(dtype=float)
    return {
        "jobs": int(len(df)),
        "completed": int(df["ok"].sum()),
        "latency_mean_ms": float(lat.mean()) if lat.size else math.nan,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else math.nan,
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else math.nan,
        "miss_rate": float(df["missed"].mean()) if len(df) else math.nan,
    }
