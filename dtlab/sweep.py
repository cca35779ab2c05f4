"""Parameter sweeps on Dask: grid x seeds -> one experiment run per point -> one tidy table + figures.

``sweep("V1", grid, seeds=3)`` expands the cartesian product of the grid's values times the
seeds, runs each point as one call of the experiment's ``run(params)`` with ``seeds: [s]`` on a
Dask cluster, and merges the points into ``<out>/<exp>/sweep.csv`` plus one figure per headline
measure (mean and 95 % CI over seeds vs the first swept parameter).

Why the ``run`` function and not papermill (as ``dtlab run`` does): a sweep point must be cheap
and picklable. A point is a plain function call with a dict of params that ships to any Dask
worker; papermill starts a kernel per notebook, which costs seconds per point (more than a smoke
point itself) and is not a unit a scheduler can retry. Notebooks are the presentation layer of
single runs; a sweep's presentation is its merged table and figures.

Guarantees:

* **Grid checks before anything runs**: a grid key that is not a parameter of the experiment is a
  ``SpecError`` naming ``grid.<key>``; every point's params pass the experiment's validation.
* **One folder per point**, ``<out>/<exp>/<point-id>/`` (point-id = short hash of the experiment
  and the point's full params) with ``params.json``, ``results.csv``, ``metrics.json`` (and the
  experiment's extra tables). A point is built in a temp directory and renamed into place, so a
  folder that exists is complete.
* **Resumable**: a point whose folder exists is skipped (and the cluster is not even started when
  every point is done); equal params share a folder across grid files.
* **Survives a dying worker**: tasks are submitted with ``retries=2``; when a worker process dies
  the scheduler reschedules its task on another (or the restarted) worker.
* **Same code path** for the default ``LocalCluster`` (processes, one thread each) and an existing
  scheduler (``Client(address)``). With a remote scheduler the workers must have dtlab installed
  and see ``--out`` (and the cluster/workload files) at the same paths (a shared filesystem).

Grid files (``params/sweeps/*.yaml``)::

    experiment: V1            # optional; must match the experiment swept
    description: ...          # optional, free text
    params: {policies: [greedy, cvar]}   # optional, fixed for every point (not swept)
    grid:                     # swept: key -> list of values; the first key is the figures' x axis
      rates_per_s: [0.25, 0.5, 1.0, 2.0] # scalar for a list parameter = the one-element list
      substrate_opts.telemetry_noise: [0.0, 0.1]   # dotted key = one entry of a mapping parameter
    metrics: [miss_rate]      # optional headline measures (default: HEADLINES[exp].default)

Params of a point = base file (``params/<EXP>.yaml``, or ``params/smoke/<EXP>.yaml`` with
``smoke``) <- the grid file's ``params`` <- the point's grid values <- ``seeds: [s]``.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence, cast

import pandas as pd

from .atomic import atomic_path, replace_dir
from .errors import SpecError

DEFAULT_OUT = "outputs/sweeps"
DEFAULT_WORKERS = 2
# each point is a whole experiment run: a typo such as --seeds 100000000000 must be refused, not expanded
MAX_SEEDS = 1_000
MAX_POINTS = 10_000
RETRIES = 2
GRID_FILE_KEYS = ("experiment", "description", "params", "grid", "metrics")
POINT_FILES = ("params.json", "metrics.json", "results.csv")


# --- headline metrics ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Headline:
    """How an experiment names its metrics: regexes with a ``measure`` group plus series groups.

    A series group named after a parameter (``policies``, ``node_counts``) is dropped from the series
    label when that parameter is swept one value per point: the x axis or the swept label says it.
    """
    patterns: tuple[str, ...]
    default: tuple[str, ...]

    def match(self, metric: str) -> tuple[str, dict[str, str]] | None:
        for pat in self.patterns:
            m = re.fullmatch(pat, metric)
            if m:
                groups = m.groupdict()
                return groups.pop("measure"), groups
        return None


HEADLINES: dict[str, Headline] = {
    # vs_best_baseline.* is V1's paired comparison (a difference), not a policy series
    "V1": Headline((r"(?P<policies>(?!vs_best_baseline\.)[^.]+)\.r(?P<rates_per_s>[0-9.eE+-]+)\."
                    r"(?P<measure>latency_mean_ms|latency_p95_ms|latency_p99_ms|miss_rate|energy_proxy_j)",),
                   ("miss_rate", "latency_p95_ms")),
    "V2": Headline((r"(?P<predictors>[^.]+)\.(?P<measure>mape|median_ape|p95_ape)",), ("mape",)),
    "V3": Headline((r"(?P<measure>plan_ms)\.(?P<policies>[^.]+)\.(?P<predictors>[^.]+)",
                    r"(?P<format>[^.]+)\.(?P<measure>observed_factor)"),
                   ("plan_ms", "observed_factor")),
    "V4": Headline((r"(?P<scenarios>[^.]+)\.(?P<strategies>[^.]+)\."
                    r"(?P<measure>deadline_miss_rate|jobs_lost|recovery_ms_mean|extra_work_ms)",),
                   ("deadline_miss_rate", "jobs_lost")),
    "V5": Headline((r"(?P<measure>plan_p50_ms|plan_p99_ms)\.(?P<policies>[^.]+)\.(?P<mode>warm|fresh)\."
                    r"(?P<node_counts>\d+)",
                    r"(?P<measure>apply_events_per_s|snapshot_ms)\.(?P<node_counts>\d+)"),
                   ("plan_p50_ms", "plan_p99_ms")),
    "V6": Headline((r"(?P<modes>[^.]+)\.(?P<measure>mape|median_ape|median_ratio|miss_rate|"
                    r"last_window_mape|last_window_miss_rate)",),
                   ("mape", "miss_rate")),
}


# --- grid ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A parsed grid file: ordered swept axes, fixed params, headline measures."""
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] | None = None
    experiment: str | None = None
    description: str = ""
    source: str = "grid"

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.axes]

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)


def load_grid(path: str | os.PathLike) -> Grid:
    """Read a grid YAML (structured with ``grid:`` or a flat ``key: [values]`` mapping)."""
    from .runner import load_params_file   # same YAML errors (file + line) as params files

    return parse_grid(load_params_file(path), source=str(path))


def parse_grid(data: Mapping[str, Any], source: str = "grid") -> Grid:
    """Shape checks of a grid mapping (the experiment's keys are checked by :func:`check_grid`)."""
    if not isinstance(data, Mapping):
        raise SpecError("grid", f"{source}: must be a mapping")
    if "grid" in data:
        unknown = sorted(set(data) - set(GRID_FILE_KEYS))
        if unknown:
            raise SpecError(unknown[0], f"{source}: unknown key of a sweep file (known: {list(GRID_FILE_KEYS)})")
        axes_in, fixed = data["grid"], data.get("params") or {}
        metrics, experiment = data.get("metrics"), data.get("experiment")
        description = str(data.get("description") or "")
    else:
        axes_in, fixed, metrics, experiment, description = data, {}, None, None, ""
    if not isinstance(axes_in, Mapping) or not axes_in:
        raise SpecError("grid", f"{source}: must map at least one parameter to a list of values")
    if not isinstance(fixed, Mapping):
        raise SpecError("params", f"{source}: must be a mapping of parameter: value")
    axes = []
    for key, values in axes_in.items():
        key = str(key)
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}", f"{source}: must be a non-empty list of values")
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise SpecError(f"grid.{key}", f"{source}: lists a value twice")
        if key in fixed:
            raise SpecError(f"params.{key}", f"{source}: is also swept in grid")
        axes.append((key, tuple(values)))
    if metrics is not None:
        if isinstance(metrics, str):
            metrics = [metrics]
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise SpecError("metrics", f"{source}: must be a list of measure names")
        metrics = tuple(metrics)
    return Grid(axes=tuple(axes), fixed=dict(fixed), metrics=metrics,
                experiment=str(experiment).upper() if experiment else None,
                description=description, source=source)


def _experiment_module(experiment: str) -> ModuleType:
    from .experiments import get

    return get(experiment).load()


def check_grid(experiment: str, grid: Grid, base: Mapping[str, Any]) -> None:
    """Every grid key names a parameter of ``experiment`` (``SpecError`` naming ``grid.<key>``)."""
    exp = str(experiment).upper()
    if grid.experiment and grid.experiment != exp:
        raise SpecError("experiment", f"{grid.source}: is a sweep of {grid.experiment}, not of {exp}")
    defaults = _experiment_module(exp).DEFAULTS
    for key in list(grid.keys) + [f"params.{k}" for k in grid.fixed]:
        field_name = key if key.startswith("params.") else f"grid.{key}"
        name = key.removeprefix("params.")
        head, _, sub = name.partition(".")
        if head == "seeds":
            raise SpecError(field_name, "seeds are not swept in the grid; use --seeds N")
        if head not in defaults:
            raise SpecError(field_name, f"not a parameter of {exp} (known: {sorted(defaults)})")
        if sub:
            if not isinstance(defaults[head], Mapping):
                raise SpecError(field_name, f"{head} is not a mapping parameter, so {name} cannot be set")
            if head == "substrate_opts" and {**defaults, **base}.get("substrate") == "sim":
                from .substrates.sim import SIM_DEFAULTS
                if sub.partition(".")[0] not in SIM_DEFAULTS:
                    raise SpecError(field_name, f"not an option of the sim substrate (known: {sorted(SIM_DEFAULTS)})")
    if grid.metrics:
        known = {m for pat in HEADLINES[exp].patterns for m in _measures_of(pat)}
        for i, m in enumerate(grid.metrics):
            if m not in known:
                raise SpecError(f"metrics[{i}]", f"{grid.source}: not a headline measure of {exp} (known: {sorted(known)})")


def _measures_of(pattern: str) -> list[str]:
    m = re.search(r"\(\?P<measure>([^)]*)\)", pattern)
    return m.group(1).split("|") if m else []


# --- points --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One run of the sweep: the swept values, the seed and the full params of the ``run`` call."""
    id: str
    seed: int
    values: Mapping[str, Any]
    params: Mapping[str, Any]


def _set(params: dict, key: str, value: Any, defaults: Mapping[str, Any]) -> None:
    """Set a (dotted) grid key; a scalar for a list parameter becomes the one-element list."""
    head, _, sub = key.partition(".")
    if not sub:
        if isinstance(defaults.get(head), (list, tuple)) and not isinstance(value, (list, tuple)):
            value = [value]
        params[head] = value
        return
    node = dict(params.get(head, defaults.get(head)) or {})     # keep the other entries (V4's failure rate)
    params[head] = node
    parts = sub.split(".")
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[parts[-1]] = value


def point_id(experiment: str, params: Mapping[str, Any]) -> str:
    """A point's folder name: the run id of (experiment, full params) (:func:`dtlab.results.run_id`),
    so equal params -> equal folder -> skipped."""
    from .results import run_id

    return run_id(experiment, params)


def expand(experiment: str, grid: Grid, base: Mapping[str, Any], seeds: Sequence[int]) -> list[Point]:
    """The grid's cartesian product x seeds, each point validated by the experiment's own ``check``."""
    exp = str(experiment).upper()
    check_grid(exp, grid, base)
    module = _experiment_module(exp)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SpecError("seeds", "must be a non-empty list of non-negative integers")
    points, keys = [], grid.keys
    for combo in itertools.product(*(values for _, values in grid.axes)):
        for seed in seeds:
            params = dict(base)
            for key, value in [*grid.fixed.items(), *zip(keys, combo)]:
                _set(params, key, value, module.DEFAULTS)
            params["seeds"] = [int(seed)]
            try:
                full = module.check(params)
            except SpecError as exc:
                head = exc.field.partition(".")[0]
                swept = next((k for k in keys if k.partition(".")[0] == head), None)
                fixed = next((k for k in grid.fixed if k.partition(".")[0] == head), None)
                where = f"grid.{swept}" if swept else f"params.{fixed}" if fixed else exc.field
                raise SpecError(where, f"{exc.rule} (point {dict(zip(keys, combo))})") from None
            points.append(Point(id=point_id(exp, full), seed=int(seed),
                                values=dict(zip(keys, combo)), params=full))
    return points


def base_params(experiment: str, smoke: bool = False, root: Path | None = None) -> dict:
    """``params/<EXP>.yaml`` or ``params/smoke/<EXP>.yaml`` (missing file: the experiment's DEFAULTS)."""
    from .runner import default_params_file, get_experiment, load_params_file

    path = default_params_file(get_experiment(str(experiment).upper()), smoke, root)
    return load_params_file(path) if path.exists() else {}


# --- one point (runs on a Dask worker) -----------------------------------------------------------
def is_done(point_dir: str | os.PathLike) -> bool:
    d = Path(point_dir)
    return all((d / f).exists() for f in POINT_FILES)


def run_point(experiment: str, params: Mapping[str, Any], point_dir: str, info: Mapping[str, Any],
              run_fn: Callable[[dict], Any] | None = None) -> dict:
    """Run one point and write its folder atomically (temp dir + rename); returns a small status dict.

    ``run_fn`` replaces the experiment's ``run`` (tests inject failures with it); it must be picklable.
    A point that is already complete (a retry after the rename, or a concurrent sweep) is not redone.
    """
    final = Path(point_dir)
    if is_done(final):
        return {"point": final.name, "status": "skipped", "elapsed_s": 0.0}
    fn = run_fn or _experiment_module(experiment).run
    from . import runner

    started = runner.now_iso()
    t0 = time.perf_counter()
    result = fn(dict(params))
    elapsed = time.perf_counter() - t0
    from .results import RUN_FILE, dumps, jsonable, save

    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        save(result, tmp)
        meta = {**dict(info), "experiment": experiment, "point": final.name, "params": dict(params),
                "elapsed_s": round(elapsed, 3), "host": socket.gethostname(), "pid": os.getpid()}
        (tmp / "params.json").write_text(json.dumps(jsonable(meta), indent=2, sort_keys=True) + "\n")
        (tmp / RUN_FILE).write_text(dumps(point_run_info(experiment, final.name, params, info, started, elapsed, tmp)))
        # a complete point (a concurrent sweep) stays; an incomplete leftover is replaced
        replace_dir(tmp, final, keep=is_done)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"point": final.name, "status": "done", "elapsed_s": round(elapsed, 3)}


def point_run_info(experiment: str, point: str, params: Mapping[str, Any], info: Mapping[str, Any],
                   started: str, elapsed_s: float, point_dir: Path) -> dict:
    """``run.json`` of a sweep point: the same provenance ``dtlab run`` records (params, seed, substrate
    actually used, git revision and dirty flag, package versions, host, start/end), plus the sweep's own info."""
    from . import runner

    substrate = dict(params).get("substrate", "sim")
    out = {"experiment": experiment, "run_id": point, "status": "ok", "notebook": None, "params_file": None,
           "params": dict(params), "seed": runner.seed_of(params), "substrate": substrate,
           "started": started, **runner.provenance(runner.project_root()),
           "sweep": {k: v for k, v in dict(info).items() if k not in ("params",)}}
    out.update(runner.substrate_info(point_dir, substrate))
    out.update(error=None, finished=runner.now_iso(), duration_s=round(elapsed_s, 3))
    return out


# --- the sweep -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    experiment: str
    out_dir: Path
    points: list[Point]
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    table: pd.DataFrame
    figures: list[Path]


def sweep(experiment: str, grid: Grid | Mapping[str, Any] | str | os.PathLike, seeds: int | Sequence[int] | None = None,
          smoke: bool = False, out: str | os.PathLike = DEFAULT_OUT, scheduler: str | None = None,
          workers: int = DEFAULT_WORKERS, progress: bool = True, base: Mapping[str, Any] | None = None,
          run_fn: Callable[[dict], Any] | None = None, figures: bool = True) -> SweepResult:
    """Run (or resume) a sweep and merge it; see the module docstring.

    ``seeds``: a count N (seeds 0..N-1), a list, or None (the base params' seeds).
    ``base``: base params instead of the params file (tests). ``run_fn``: see :func:`run_point`.
    """
    exp = str(experiment).upper()
    if not isinstance(grid, Grid):
        grid = parse_grid(grid) if isinstance(grid, Mapping) else load_grid(grid)
    base = dict(base) if base is not None else base_params(exp, smoke)
    module = _experiment_module(exp)
    if seeds is None:
        seeds = base.get("seeds", module.DEFAULTS.get("seeds", [0]))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SpecError("seeds", f"must be >= 1, got {seeds}")
        if seeds > MAX_SEEDS:
            raise SpecError("seeds", f"must be <= {MAX_SEEDS:,}, got {seeds:,} (every seed is a run per grid point)")
        seeds = list(range(seeds))
    if workers < 1:
        raise SpecError("workers", f"must be >= 1, got {workers}")
    seed_list = list(cast(Sequence[int], seeds))
    if len(seed_list) > MAX_SEEDS:
        raise SpecError("seeds", f"at most {MAX_SEEDS:,} seeds, got {len(seed_list):,}")
    points = expand(exp, grid, base, seed_list)
    if len(points) > MAX_POINTS:
        raise SpecError("grid", f"{len(points):,} runs (grid points x seeds); at most {MAX_POINTS:,} per sweep")
    out_dir = Path(out).resolve() / exp
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in dict((p.id, p) for p in points).values() if not is_done(out_dir / p.id)]
    skipped = [p.id for p in points if p.id not in {t.id for t in todo}]
    ran: list[str] = []
    failed: dict[str, str] = {}
    if todo:
        from . import hostlock
        wall = next((w for w in (hostlock.wall_clock(p.params) for p in todo) if w), None)
        if wall and not scheduler:
            # wall-clock points measure each other: one worker, the whole sweep under the host lock
            # (the LocalCluster's worker processes inherit it); with --scheduler each point's fabric
            # takes the lock itself
            if workers > 1:
                print(f"sweep {exp}: {wall}: one point at a time (workers 1, not {workers})", file=sys.stderr)
            workers = 1
            with hostlock.exclusive(f"dtlab sweep {exp} (pid {os.getpid()})",
                                    on_wait=lambda msg: print(msg, file=sys.stderr, flush=True)):
                ran, failed = _run_on_dask(exp, todo, out_dir, scheduler, workers, progress, run_fn)
        else:
            ran, failed = _run_on_dask(exp, todo, out_dir, scheduler, workers, progress, run_fn)
    table = merge(exp, points, out_dir, grid)
    figs = summary_figures(table, exp, grid, out_dir / "figures") if figures else []
    return SweepResult(exp, out_dir, points, ran, skipped, failed, table, figs)


def _run_on_dask(exp: str, todo: list[Point], out_dir: Path, scheduler: str | None, workers: int,
                 progress: bool, run_fn) -> tuple[list[str], dict[str, str]]:
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    for stale in out_dir.glob(".*.tmp-*"):          # halves of points killed in an earlier sweep
        if stale.name.split(".tmp-")[0].lstrip(".") in {p.id for p in todo}:
            shutil.rmtree(stale, ignore_errors=True)
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    ran, failed = [], {}
    try:
        futures, keys = [], {}
        for p in todo:
            info = {"values": dict(p.values), "seed": p.seed}
            fut = client.submit(run_point, exp, dict(p.params), str(out_dir / p.id), info, run_fn,
                                key=f"sweep-{exp}-{p.id}", retries=RETRIES, pure=False)
            futures.append(fut)
            keys[fut.key] = p.id
        bar = tqdm(total=len(futures), desc=f"sweep {exp}", unit="point", disable=not progress)
        for fut in as_completed(futures):
            pid = keys[fut.key]
            if fut.status == "finished":
                ran.append(pid)
            else:
                try:
                    exc = fut.exception()
                except Exception as err:      # e.g. a cancelled future
                    exc = err
                failed[pid] = f"{type(exc).__name__}: {exc}"
            bar.update(1)
            if failed:
                bar.set_postfix(failed=len(failed))
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return ran, failed


# --- merge and figures ---------------------------------------------------------------------------
def _label(value: Any) -> Any:
    """A grid value as a table cell: scalars as they are, lists as ``a+b``, mappings as JSON."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return value


def merge(experiment: str, points: Sequence[Point], out_dir: Path, grid: Grid) -> pd.DataFrame:
    """Tidy table of every finished point: point, seed, swept params, metric, value, measure, series.

    One row per point x mean metric (``.ci_low``/``.ci_high`` of a one-seed run say nothing and are
    dropped; the sweep's CIs are over seeds). ``measure``/``series`` are set for headline metrics.
    Written atomically to ``<out_dir>/sweep.csv``.
    """
    exp = str(experiment).upper()
    headline = HEADLINES.get(exp)
    scalar_swept = {k for k, values in grid.axes if not any(isinstance(v, (list, tuple, Mapping)) for v in values)}
    rows = []
    for p in dict((p.id, p) for p in points).values():
        d = out_dir / p.id
        if not is_done(d):
            continue
        metrics = json.loads((d / "metrics.json").read_text())
        cells = {"experiment": exp, "point": p.id, "seed": p.seed, **{k: _label(v) for k, v in p.values.items()}}
        for name, value in sorted(metrics.items()):
            if name.endswith((".ci_low", ".ci_high")) or isinstance(value, (str, bool, dict, list)):
                continue
            measure, series = None, None
            hit = headline.match(name) if headline else None
            if hit:
                measure, groups = hit
                series = ", ".join(v if not _is_number(v) else f"{k}={v}"
                                   for k, v in groups.items() if k not in scalar_swept)
            rows.append({**cells, "metric": name, "value": math.nan if value is None else float(value),
                         "measure": measure, "series": series})
    cols = ["experiment", "point", "seed", *grid.keys, "metric", "value", "measure", "series"]
    table = pd.DataFrame(rows, columns=cols)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric(values: Iterable[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def summary_figures(table: pd.DataFrame, experiment: str, grid: Grid, fig_dir: Path) -> list[Path]:
    """One figure per headline measure: mean and 95 % CI over seeds vs the first swept parameter.

    One line per series (e.g. policy) and combination of the other swept parameters; a numeric x
    is drawn to scale (log scale when it spans >= 50x), anything else as categories in grid order.
    """
    from . import plots

    exp = str(experiment).upper()
    measures = grid.metrics or (HEADLINES[exp].default if exp in HEADLINES else ())
    x_key, x_values = grid.axes[0]
    others = grid.keys[1:]
    x_labels = [_label(v) for v in x_values]
    numeric = _numeric(x_labels)
    written = []
    for measure in measures:
        data = table[table["measure"] == measure]
        if data.empty or not data["value"].notna().any():
            continue
        parts = [data["series"].fillna("").astype(str)]
        parts += [data[k].astype(str).map(lambda v, k=k: f"{k.split('.')[-1]}={v}" if _is_number(v) else v)
                  for k in others]
        line_of = pd.concat(parts, axis=1).apply(lambda r: ", ".join(x for x in r if x) or measure, axis=1)
        data = data.assign(_line=line_of)
        lines = plots.order(data["_line"].unique())
        with plots.paper_style():
            fig, ax = plots.figure(columns=1)
            nonneg = bool((data["value"].dropna() >= 0).all())
            firsts = [ln.split(",")[0].split("=")[-1] for ln in lines]
            distinct = len(set(firsts)) == len(lines)
            for i, line in enumerate(lines):
                sub = data[data["_line"] == line]
                xs, ms, los, his = [], [], [], []
                for j, xv in enumerate(x_labels):
                    vals = sub.loc[sub[x_key].astype(str) == str(xv), "value"]
                    if vals.notna().any():
                        m, lo, hi = plots.mean_ci(vals)
                        xs.append(xv if numeric else j)
                        ms.append(m)
                        los.append(lo)
                        his.append(hi)
                if not xs:
                    continue
                lo_arr = pd.Series(los).clip(lower=0 if nonneg else None)
                hi_arr = pd.Series(his).clip(upper=1.0 if measure.endswith("rate") else None)
                c, mk = plots.style_of(firsts[i] if distinct else f"#{i}", i)
                ax.plot(xs, ms, "-", color=c, marker=mk, label=plots.display_name(line) if "," not in line else line)
                ax.fill_between(xs, lo_arr, hi_arr, color=c, alpha=0.12, linewidth=0)
            if numeric:
                xs_all = [float(v) for v in x_labels]
                if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 50:
                    ax.set_xscale("log")
            else:
                long = sum(len(str(v)) for v in x_labels) > 40
                ax.set_xticks(range(len(x_labels)), [str(v) for v in x_labels],
                              rotation=30 if long else 0, ha="right" if long else "center")
            ax.set_xlabel(x_key)
            ax.set_ylabel(f"{measure} (mean, 95% CI)")
            if nonneg:
                ax.set_ylim(bottom=0)
            n_seeds = table["seed"].nunique()
            ax.set_title(f"{exp} sweep: {measure} vs {x_key} ({n_seeds} seeds)", loc="left")
            if len(lines) > 1:
                ax.legend(fontsize=6, ncols=2 if len(lines) > 4 else 1)
            written += plots.savefig(fig, fig_dir, f"sweep_{measure}")
    return written
