"""V2: how good are the twin's predictions?

The controller plans every job (``policy`` with ``plan_predictor``) and submits it to the
ground truth; at planning time, on the very snapshot the plan was made from, the chosen
placement is also predicted by every predictor in ``predictors``:

* ``des``, ``fast``, ``legacy``: the twin's predictors (mean of the predicted distribution);
* ``none``: no model at all -- the job's critical path of reference ``duration_ms`` (no node
  speed, format, load, links or queueing), i.e. what one would say without a twin.

Each prediction is compared with the job's observed latency (arrival to end) on the
substrate: absolute percentage error per job; MAPE, median APE and p95 APE per seed,
with 95% t-intervals over seeds. Jobs that did not complete are left out of the errors
(their count is reported).

**Per stage** (the issue's "CPU-bound stages" check): every completed stage's observed service
time (end - start on the substrate) against the twin's mean service time for the node and
format it ran on, ``duration_ms * overhead[format] / speed + startup[format]`` (start-up not on kube,
whose stage rows start at the worker's own start; no co-runners: at the example
rates nodes are rarely oversubscribed). Table ``stages``, metrics ``stage.mape``,
``stage.median_ape``, ``stage.p95_ape`` (CIs over seeds) and ``stage.pooled_*`` over all stages.
``stage_ps.*`` applies the twin's contention model, processor sharing of the node's cores with
each stage capped at its ``cpu`` (:func:`ps_service_ms`), to the stages that really overlapped on
the node (observed start times): the timing model's error given the schedule, without the error
of not knowing future arrivals.
On the fabric ``kernel_ape`` also compares the worker's in-process kernel time with the service
time alone, i.e. without process/emulator start-up (which the twin models from the fabric's
start-up calibration, ``calibration.startup_ms``).

**Distributions**: ``<predictor>.ks`` is the two-sample Kolmogorov-Smirnov statistic between the
predicted and the observed job-latency distributions (:func:`distribution_fit`), beside
``<predictor>.ks_noise95``, the value sampling noise alone reaches with this many jobs.
``calibration_used`` names the calibration the twin ran with. ``noise_floor: true`` runs the first
seed again (same arrivals, policy, seeds; with ``noise_floor_jobs`` n only its first n jobs, and
only the jobs the first run finished before its (n+1)-th arrival are compared) and reports the per-job APE between the two runs
(``noise_floor.*``): the substrate's own run-to-run noise, the floor under any model's error.

Substrate: ``substrate: auto`` (default) runs on the ``fabric`` when this host can, with the
twin's format factors from this host's calibration (``dtlab calibrate compute``; measured once
with ``--quick`` if missing), else on ``sim`` (``substrate_note`` says why). On the fabric the
``fabric`` sizes replace the top-level ones: 200 jobs at 1 job/s, 2 seeds (400 jobs in the one
(policy, rate) cell: KS sampling noise ``ks_noise95`` 0.096, against 0.136 at 100 x 2), plus the first
100 jobs of seed 0 again for the noise floor (~9 minutes).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from typing import Mapping

from ..errors import SpecError
from ..model import Job
from ..stats import ks_critical, ks_statistic
from . import regime
from .result import ExperimentResult
from .substrate import auto_substrate_defaults, check_params, resolve
from .params import child_seed, load_cluster_param, load_workload_param, require_choices, require_positive
from .summary import metrics_from_summary, summarize_seeds
from .loop import run_controller

# on the fabric (wall-clock), these sizes replace the top-level ones (see the module docstring)
FABRIC_SIZES: dict[str, Any] = {"jobs": 200, "seeds": [0, 1], "substrate_opts": {"host_cores": 2.0},
                                "noise_floor": True, "noise_floor_jobs": 100}
DEFAULTS: dict[str, Any] = {
    **auto_substrate_defaults(FABRIC_SIZES),
    "workload": "examples/workload.yaml",
    "jobs": 150,
    "rate_per_s": 1.0,
    "policy": "greedy",
    "plan_predictor": "fast",
    "predictors": ["des", "fast", "legacy", "none"],
    "samples": 128,
    "seeds": [0, 1, 2],
    "noise_floor": False,
    "noise_floor_jobs": None,      # the noise floor re-runs the first seed's first N jobs (None: all of them)
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"substrate": "sim", "jobs": 15, "seeds": [0, 1], "samples": 32}
PREDICTORS = ("des", "fast", "legacy", "none")
METRICS = ("mape", "median_ape", "p95_ape")


def critical_path_ms(job: Job) -> float:
    """Longest chain of reference durations through the DAG: the 'no prediction' estimate."""
    finish: dict[str, float] = {}
    by_id = {s.id: s for s in job.stages}
    for sid in job.topo_order:
        s = by_id[sid]
        finish[sid] = max((finish[p] for p in s.after), default=0.0) + s.compute.duration_ms
    return max(finish.values())


def check(params: dict | None) -> dict[str, Any]:
    """What the runner checks before the kernel starts (see dtlab.experiments.substrate.check_params)."""
    p, sized = check_params(params, DEFAULTS, "V2")
    _check_noise_floor_jobs(p)
    _check_noise_floor_jobs(sized, "fabric.")
    return p


def _check_noise_floor_jobs(p: Mapping[str, Any], where: str = "") -> None:
    n = p.get("noise_floor_jobs")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SpecError(f"{where}noise_floor_jobs", f"must be a positive integer or null, got {n!r}")


def stage_predictions(stages: pd.DataFrame, jobs: dict[str, Job], cluster, timing) -> pd.DataFrame:
    """Completed stages of ``stages`` (substrate records) with the twin's mean service time and APE."""
    rows = []
    for r in stages.to_dict("records"):
        job = jobs.get(r["job"])
        if job is None or not r.get("ok") or r.get("duration_ms") is None:
            continue
        stage = next(s for s in job.stages if s.id == r["stage"])
        node = cluster.node(r["node"])
        fmt = r.get("format")
        if not isinstance(fmt, str):
            choice = timing.exec_format(stage, node)
            fmt = choice[0] if choice else None
        if fmt is None or fmt not in timing.overheads:
            continue
        service = timing.mean_service_ms(stage, node, timing.overheads[fmt])
        # kube stage rows (node_kind set) run from the worker's own start: the pod's start-up is before
        # them (startup_ms, reported apart); on the fabric the interval includes the launch
        predicted = service + (0.0 if r.get("node_kind") in ("real", "kwok") else timing.startup(fmt))
        observed = float(r["duration_ms"])
        kernel = r.get("kernel_ms")
        kernel = float(kernel) if kernel is not None and kernel == kernel else np.nan
        rows.append({"job": r["job"], "stage": r["stage"], "node": r["node"], "format": fmt,
                     "cpu": stage.compute.cpu, "start_ms": float(r["start_ms"]), "predicted_ms": predicted,
                     "observed_ms": observed, "ape": abs(predicted - observed) / observed if observed > 0 else np.nan,
                     "kernel_ms": kernel, "kernel_ape": abs(service - kernel) / kernel if kernel > 0 else np.nan})
    out = pd.DataFrame(rows, columns=["job", "stage", "node", "format", "cpu", "start_ms", "predicted_ms",
                                      "observed_ms", "ape", "kernel_ms", "kernel_ape"])
    out["predicted_ps_ms"] = np.nan
    for node, g in out.groupby("node", sort=False):
        out.loc[g.index, "predicted_ps_ms"] = ps_service_ms(g["start_ms"].to_numpy(float), g["predicted_ms"].to_numpy(float),
                                                            g["cpu"].to_numpy(float), cluster.node(node).cores)
    out["ape_ps"] = (out["predicted_ps_ms"] - out["observed_ms"]).abs() / out["observed_ms"]
    return out


def ps_service_ms(start: np.ndarray, work: np.ndarray, cap: np.ndarray, capacity: float) -> np.ndarray:
    """Service times under processor sharing of ``capacity`` cores, each job capped at ``cap`` cores.

    ``work[i]`` is job i's time when it gets its full ``cap`` (the twin's service time); while the
    active caps exceed ``capacity`` the cores are shared max-min fairly (water-filling), so a job
    progresses at ``alloc / cap``. Exact fluid simulation between arrivals and completions.
    """
    n = len(start)
    order = np.argsort(start, kind="stable")
    remaining = np.asarray(work, dtype=float).copy()
    end = np.full(n, np.nan)
    active: list[int] = []
    t, k = (float(start[order[0]]) if n else 0.0), 0
    while k < n or active:
        while k < n and start[order[k]] <= t + 1e-9:
            active.append(int(order[k]))
            k += 1
        if not active:
            t = float(start[order[k]])
            continue
        caps = np.asarray([cap[i] for i in active], dtype=float)
        alloc = caps.copy()
        if caps.sum() > capacity:
            level, left, todo = 0.0, capacity, sorted(range(len(caps)), key=lambda j: caps[j])
            for pos, j in enumerate(todo):
                share = left / (len(todo) - pos)
                if caps[j] <= share:
                    left -= caps[j]
                else:
                    level = share
                    for jj in todo[pos:]:
                        alloc[jj] = level
                    break
        rate = alloc / caps
        rem = np.asarray([remaining[i] for i in active])
        dt_done = float(np.min(rem / rate))
        dt_next = float(start[order[k]]) - t if k < n else np.inf
        dt = min(dt_done, dt_next)
        for j, i in enumerate(active):
            remaining[i] -= rate[j] * dt
        t += dt
        still = []
        for i in active:
            if remaining[i] <= 1e-6:
                end[i] = t
            else:
                still.append(i)
        active = still
    return end - np.asarray(start, dtype=float)


def _ape_stats(x: pd.Series) -> dict[str, float]:
    x = x.dropna().to_numpy(dtype=float)
    if x.size == 0:
        return {"mape": np.nan, "median_ape": np.nan, "p95_ape": np.nan, "n": 0}
    return {"mape": float(x.mean()), "median_ape": float(np.median(x)), "p95_ape": float(np.percentile(x, 95)),
            "n": int(x.size)}


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies
    from ..predict import sample_latencies

    p, choice = resolve(params, DEFAULTS, "V2")
    require_choices(p, "policy", policies.names())
    require_choices(p, "plan_predictor", ("fast", "des", "legacy"))
    require_choices(p, "predictors", PREDICTORS)
    require_positive(p, "samples", "jobs")
    _check_noise_floor_jobs(p)
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    rows, stage_rows = [], []
    draws: dict[str, dict[tuple[int, str], np.ndarray]] = {}     # predictor -> (seed, job) -> samples
    for seed in p["seeds"]:
        predicted: list[dict[str, Any]] = []
        holder: dict[str, Any] = {}
        planned: dict[str, Job] = {}

        def on_plan(job, plan, snap, arrival_ms, seed=seed, planned=planned):
            planned[job.name] = job
            timing = getattr(holder.get("twin"), "timing", None)
            for k, name in enumerate(p["predictors"]):
                if name == "none":
                    value = critical_path_ms(job)
                    lat = np.array([value])
                else:
                    rng = np.random.default_rng(child_seed(seed, job.name, name))
                    lat = sample_latencies(snap, job, plan.placement, plan.shadow, predictor=name,
                                           samples=p["samples"], rng=rng, timing=timing)
                    value = float(np.mean(lat))
                predicted.append({"job": job.name, "predictor": name, "predicted_ms": value})
                draws.setdefault(name, {})[(seed, job.name)] = np.asarray(lat, dtype=float)

        df, ctl = run_controller(p, cluster, workload, seed, p["policy"], p["plan_predictor"], p["samples"],
                                 on_plan=[on_plan], before=lambda twin: holder.__setitem__("twin", twin),
                                 choice=choice)
        if seed == p["seeds"][0]:
            first_run = df
        # kube: per-stage predictions on the speeds the twin planned with (real nodes over the shared-host
        # slowdown x their emulation factor, KubeSubstrate.twin_cluster), as the job-level ones are
        seen = getattr(ctl.substrate, "twin_cluster", None)
        st = stage_predictions(ctl.substrate.results()["stages"], planned, seen() if callable(seen) else cluster,
                               ctl.twin.timing)
        st.insert(0, "seed", seed)
        stage_rows.append(st)
        obs = df[["job", "planned_ms", "latency_ms", "ok"]].rename(columns={"planned_ms": "arrival_ms",
                                                                           "latency_ms": "observed_ms"})
        pred = pd.DataFrame(predicted).merge(obs, on="job", how="left")
        pred.insert(0, "seed", seed)
        pred.attrs["regime"] = df.attrs.get("regime")      # the run's measured regime (see record_runs)
        rows.append(pred)
    table = pd.concat(rows, ignore_index=True)
    table["ape"] = (table["predicted_ms"] - table["observed_ms"]).abs() / table["observed_ms"]
    table.loc[~table["ok"].astype(bool), "ape"] = np.nan
    table = table[["seed", "job", "arrival_ms", "observed_ms", "predictor", "predicted_ms", "ape", "ok"]]
    per_seed = (table.dropna(subset=["ape"]).groupby(["predictor", "seed"], sort=False)["ape"]
                .agg(mape="mean", median_ape="median", p95_ape=lambda x: float(np.percentile(x, 95)), jobs="size")
                .reset_index())
    summary = summarize_seeds(per_seed, ["predictor"], METRICS)
    metrics = metrics_from_summary(summary, ["predictor"])
    metrics["jobs_not_completed"] = int((~table.drop_duplicates(["seed", "job"])["ok"].astype(bool)).sum())
    metrics.update(distribution_fit(table, draws, p["policy"], p["rate_per_s"]))
    metrics["calibration_used"] = calibration_used(choice)
    if p["noise_floor"]:
        metrics.update(noise_floor(p, cluster, workload, choice, first_run))

    # -------------------------------------------------- per stage (CPU-bound service times)
    stages = pd.concat(stage_rows, ignore_index=True)
    # "stage": the twin's service time alone; "stage_ps": with its processor-sharing model applied
    for scope, column in (("stage", "ape"), ("stage_ps", "ape_ps")):
        stage_seed = pd.DataFrame([{"seed": s, **_ape_stats(g[column])} for s, g in stages.groupby("seed", sort=False)],
                                  columns=["seed", "mape", "median_ape", "p95_ape", "n"])
        stage_seed.insert(0, "scope", scope)
        metrics.update(metrics_from_summary(summarize_seeds(stage_seed, ["scope"], METRICS), ["scope"]))
        pooled = _ape_stats(stages[column])
        for k in METRICS:
            metrics[f"{scope}.pooled_{k}"] = _round(pooled[k])
        if scope == "stage":
            metrics["stage.n"] = pooled["n"]
    by_group = [{"by": "format", "group": f, "measure": "service", **_ape_stats(g["ape"])}
                for f, g in stages.groupby("format")]
    by_group += [{"by": "stage", "group": f, "measure": "service", **_ape_stats(g["ape"])}
                 for f, g in stages.groupby("stage")]
    by_group += [{"by": by, "group": f, "measure": "service_ps", **_ape_stats(g["ape_ps"])}
                 for by in ("format", "stage") for f, g in stages.groupby(by)]
    if stages["kernel_ape"].notna().any():
        kernel = _ape_stats(stages["kernel_ape"])
        for k in METRICS:
            metrics[f"stage_kernel.pooled_{k}"] = _round(kernel[k])
        by_group += [{"by": "format", "group": f, "measure": "kernel", **_ape_stats(g["kernel_ape"])}
                     for f, g in stages.groupby("format")]
    metrics.update(choice.metrics())
    regime.record_runs(metrics, rows)
    cdf = []
    for name, g in table.dropna(subset=["ape"]).groupby("predictor", sort=False):
        x = np.sort(g["ape"].to_numpy())
        cdf.append(pd.DataFrame({"predictor": name, "ape": x, "cdf": np.arange(1, x.size + 1) / x.size}))
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"summary": summary, "per_seed": per_seed, "stages": stages,
                                   "stage_summary": pd.DataFrame(by_group, columns=["by", "group", "measure", "mape",
                                                                                    "median_ape", "p95_ape", "n"]),
                                   "cdf": pd.concat(cdf, ignore_index=True) if cdf else pd.DataFrame()},
                            params=p)


def distribution_fit(table: pd.DataFrame, draws: Mapping[str, Mapping[tuple[int, str], np.ndarray]],
                     policy: str, rate: float) -> dict[str, Any]:
    """Two-sample KS between predicted and observed job-latency distributions, per predictor.

    A cell is one (policy, rate) -- V2 runs one of each, pooled over seeds. The predicted
    distribution of a cell is the mixture of the per-job predicted distributions (every sample of
    every completed job, so each job weighs the same); the observed one is the jobs' latencies.
    ``<predictor>.ks`` is the maximum over cells; ``<predictor>.ks_noise95`` the 95 % KS critical
    value for the cell's sample sizes -- what sampling noise alone would reach (the jobs per cell
    must keep it well below the 0.15 target for the statistic to mean anything).
    """
    out: dict[str, Any] = {}
    done = table[table["ok"].astype(bool)].drop_duplicates(["seed", "job"])
    observed = done["observed_ms"].to_numpy(dtype=float)
    keys = list(zip(done["seed"], done["job"]))
    for name, per_job in draws.items():
        pred = [per_job[k] for k in keys if k in per_job]
        if not pred or observed.size == 0:
            continue
        # equal weight per job: the same number of draws from each (the fewest any job has)
        k = min(x.size for x in pred)
        mixture = np.concatenate([x[:k] for x in pred])
        ks = ks_statistic(mixture, observed)
        out[f"{name}.ks"] = _round(ks)
        out[f"{name}.ks_noise95"] = _round(ks_critical(observed.size, len(pred)))
        out[f"{name}.ks_cells"] = 1
        out[f"{name}.ks_cell"] = f"{policy}@r{rate:g}"
    return out


def calibration_used(choice) -> str:
    """Which calibration the twin planned and predicted with (V2 records it in every run)."""
    if getattr(choice, "timing", None) is None:
        return "none: twin default timing (sim ground truth differs from it by design)"
    from ..fabric import calibrate
    try:
        doc = calibrate.load()
        return f"{calibrate.default_out()} (created {doc.get('created')}, quick={doc.get('quick')})"
    except Exception as exc:  # noqa: BLE001 - report, do not fail the run
        return f"defaults ({type(exc).__name__}: {exc})"


def noise_floor(p: Mapping[str, Any], cluster, workload, choice, first: pd.DataFrame) -> dict[str, Any]:
    """The substrate's own run-to-run noise: the first seed run again with the same params.

    Same arrivals, same policy and seeds; the controller re-plans, so the plans are the same where
    the observed state is (``noise_floor.same_placement``: share of jobs placed identically). The
    per-job APE between the two runs' latencies (``noise_floor.median_ape``, ``.p95_ape``) is the
    error floor no model of this substrate can beat; on ``sim`` it is 0 (deterministic).
    """
    seed = p["seeds"][0]
    # noise_floor_jobs: the same stream cut after n jobs (its first n arrivals are the first run's first n)
    again, _ = run_controller(p, cluster, workload, seed, p["policy"], p["plan_predictor"], p["samples"], choice=choice,
                              limit=p.get("noise_floor_jobs"))
    n = p.get("noise_floor_jobs")
    if n is not None and n < len(first):
        # a cut run lacks the later jobs' contention: compare only jobs the first run finished before
        # its first arrival the re-run does not have (they never met an omitted job)
        cutoff = float(np.sort(first["planned_ms"].to_numpy(float))[int(n)])
        first = first[(first["planned_ms"] + first["latency_ms"]) <= cutoff]
    both = first[["job", "latency_ms", "ok", "placement"]].merge(
        again[["job", "latency_ms", "ok", "placement"]], on="job", suffixes=("", "_2"))
    ok = both["ok"].astype(bool) & both["ok_2"].astype(bool)
    ape = ((both.loc[ok, "latency_ms_2"] - both.loc[ok, "latency_ms"]).abs() / both.loc[ok, "latency_ms"]).to_numpy()
    out: dict[str, Any] = {"noise_floor.jobs": int(ok.sum()),
                           "noise_floor.same_placement": _round(float((both["placement"] == both["placement_2"]).mean()))
                           if len(both) else None}
    stats = _ape_stats(pd.Series(ape))
    for k in METRICS:
        out[f"noise_floor.{k}"] = _round(stats[k])
    return out


def _round(x: float) -> float | None:
    return None if x is None or x != x else round(float(x), 6)
