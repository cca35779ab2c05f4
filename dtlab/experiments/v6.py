"""V6: does the twin stay right when the world drifts?

Hypothesis: when node speeds and job sizes drift away from the spec, a twin that recalibrates
online keeps its prediction error near its no-drift level while a static twin's error grows with
the drift; where the error changes placements, deadline misses follow.

Regime (``params/V6.yaml``; measured in metrics.json as ``regime.*``): drift strong enough to move
the error but not to saturate the world -- nodes lose 4 % of their spec speed and jobs grow 2 % per
virtual minute, so after the 8 minutes of 240 arrivals at 0.5 jobs/s a job needs ~1.5x its nominal
time; deadlines are ``deadline_slack`` = 2.5 x the isolated latency (as in V4), so the final window
still meets about half of them (``static.last_window_miss_rate`` < 0.9) and misses can respond to
better predictions. Edge-a (where the jobs' inputs live) carries the load at a measured
utilisation of ~0.4 (``regime.util.edge-a``). The stronger drift this experiment used to run
(-8 %/min, +4 %/min over 200 jobs) made the world 2.7x slower by the end and both variants missed
nearly every deadline: misses could not show anything.

Seeds to CI: both modes run on the same seeds (same world, arrivals and drift), so the effect of
recalibration is the paired per-seed difference ``static - online`` (``effect.<metric>`` with a
95 % t-interval and ``.seeds_needed`` for an interval half as wide as the effect). The MAPE
difference has a per-seed sd of ~0.03 against an effect of ~0.06 (last window: ~0.16): 8 seeds give
an interval that excludes 0; the miss-rate difference is within a few points of 0 and would need
far more seeds (reported as ``effect.miss_rate.seeds_needed``) -- in this world the only zone that
avoids the lossy uplink is edge-a, so better predictions rarely find a better placement.

**On the fabric** (``substrate: fabric``, ``params/V6-fabric.yaml``; smoke
``params/smoke/V6-fabric.yaml``) the drift is real: at ``quota_drift.at_s`` (default a third of
the arrival span) the CPU quota of ``quota_drift.nodes`` (default every node) and of their running
stages becomes ``quota_drift.factor`` x the spec's (fabric option ``cpu_drift``), unseen by the
twin; the sim drift knobs are unused there, the twin uses the host's calibrations (recorded under
``calibration``), and ``tracking`` compares the estimator with the quota-derived speed.
``<mode>.windows_within_10pct``: per seed the share of time windows whose MAPE is at most 10 %,
mean and 95 % interval over seeds (both substrates).

The ground truth drifts while the controller runs: every node gets slower
(``speed_drift_per_min``), jobs get bigger (``workload_drift_per_min``), and telemetry is
late (``telemetry_delay_s``) and noisy (``telemetry_noise``) -- on top of the sim's static
calibration error (per-node speed, format overheads), heavy-tailed service times,
background load, failures and link variation. Two modes run on the same world and
workload per seed:

* ``static``: the twin keeps its spec speeds and default overheads;
* ``online``: :class:`dtlab.calibration.online.OnlineCalibrator` learns each node's
  slowness from stage service intervals (net of the processor sharing the stage met) and
  corrects the twin's node speeds as it goes (``ewma_alpha``: weight of a new sample in a
  node's own residual; the cluster-wide drift level has a half-life of 60 s virtual).

Tables:

* ``results`` (per mode, seed, time window of ``window_s`` by arrival): prediction error
  (MAPE of the planned prediction's mean against observed latency), median APE, median
  predicted/observed ratio (< 1: the twin is optimistic) and deadline-miss rate.
* ``windows``: the same per mode and window as mean and 95% t-interval over seeds.
* ``tracking`` (sim only; every ``window_s``, per seed and node): the factor the online
  estimator believed (observed/spec service, from what it had seen by then) next to the
  ground truth: ``true_speed_factor`` = sim ``true_speed / spec speed``, ``work_factor``
  (job growth), and ``target_factor`` = ``work_factor / true_speed_factor * noise_median``
  -- the median ratio a perfect estimator would report for a native stage
  (``noise_median``: median of the sim's heavy-tailed service noise; the estimator is a
  median estimator, see its module). A node the policy never used has no samples of its
  own and gets the cluster-wide level: its static speed error cannot be seen.
* ``runs`` (per mode, seed), ``corrections`` (every node-add the estimator sent).

Metrics: per mode overall and last-window means with 95% t-intervals over seeds; the
same errors split by whether the twin planned the job into contention (``plan_load``:
peak of (running cpu + stage cpu) / capacity over its nodes in the twin's snapshot, > 1
= contended; ``mape_uncontended``, ``mape_contended``, ``share_contended``). The split
separates what recalibration can fix (node speed) from the predictor's own contention
approximation (co-runners assumed to stay for the whole stage: pessimistic), which a
correct speed exposes rather than cancels;
``tracking.online_abs_log_error`` (mean over seeds of the median ``|log(est/target)|``
over checkpoints after the first window, nodes with samples) next to
``tracking.spec_abs_log_error`` (the same for the spec, i.e. a factor of 1). MAPE
punishes over-prediction harder (an APE can exceed 1 only when predicting high), so read
it next to the median APE and median ratio.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from . import regime
from ..errors import SpecError
from .substrate import SUBSTRATE_DEFAULTS, check_params, resolve
from .result import ExperimentResult
from .params import load_cluster_param, load_workload_param, require_choices, require_positive
from .summary import mean_ci, put_ci, summarize_seeds
from .loop import run_controller

# on the fabric (wall-clock), these sizes replace the top-level ones (see the module docstring)
# The small cluster: on this 2-core host the fabric scales quotas by budget / the cluster's core-equivalents,
# and for the 7-node example (38.6) a 100 ms stage gets ~2 ms of CPU, less than one 4 ms scheduler tick,
# so a quota change barely shows at time_scale 1 (measured: x1.16 for a halved quota); the 3-node
# cluster (4.6) gives ~20 ms (measured below in tests/test_v6_fabric.py).
FABRIC_SIZES: dict[str, Any] = {"cluster": "examples/cluster-real-smoke.yaml", "jobs": 60, "seeds": [0, 1],
                                "samples": 32, "window_s": 20.0,
                                "substrate_opts": {"host_cores": 2.0, "time_scale": 1}}

DEFAULTS: dict[str, Any] = {
    **SUBSTRATE_DEFAULTS,
    "fabric": dict(FABRIC_SIZES),
    "workload": "examples/workload.yaml",
    "jobs": 240,
    "rate_per_s": 0.5,
    "deadline_slack": 2.5,     # deadline = slack x isolated latency of the template (None: the file's)
    "policy": "greedy",
    "predictor": "fast",
    "samples": 64,
    "modes": ["static", "online"],
    "ewma_alpha": 0.05,
    "window_s": 30.0,
    "speed_drift_per_min": -0.04,
    "workload_drift_per_min": 0.02,
    "telemetry_delay_s": 10.0,
    "telemetry_noise": 0.1,
    # fabric only: at at_s (None: a third of the arrival span) the CPU quota of `nodes` (None: every node)
    # becomes factor x its spec quota; the sim drift knobs above apply on sim only
    "quota_drift": {"nodes": None, "at_s": None, "factor": 0.5},
    "seeds": [0, 1, 2, 3, 4, 5, 6, 7],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"jobs": 30, "seeds": [0, 1]}
MODES = ("static", "online")
WINDOW_METRICS = ("mape", "median_ape", "median_ratio", "miss_rate")
WITHIN = 0.10       # windows_within_10pct: a window counts when its MAPE is at most this


def quota_drift_steps(p: dict[str, Any], cluster) -> list[dict[str, Any]]:
    """The fabric's ``cpu_drift`` steps from ``quota_drift`` (field paths on bad input)."""
    q = p["quota_drift"]
    unknown = sorted(set(q) - {"nodes", "at_s", "factor"})
    if unknown:
        raise SpecError(f"quota_drift.{unknown[0]}", "unknown key (known: nodes, at_s, factor)")
    nodes = q.get("nodes")
    if nodes is None:
        nodes = [n.name for n in cluster.nodes]
    if not isinstance(nodes, list) or not nodes:
        raise SpecError("quota_drift.nodes", "must be a non-empty list of node names or null (every node)")
    for i, n in enumerate(nodes):
        if n not in cluster.by_name:
            raise SpecError(f"quota_drift.nodes[{i}]", f"unknown node {n!r} in {p['cluster']}")
    factor = q.get("factor", 0.5)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.01 <= factor <= 10:
        raise SpecError("quota_drift.factor", f"must be a number in [0.01, 10], got {factor!r}")
    at_s = q.get("at_s")
    if at_s is None:
        at_s = p["jobs"] / p["rate_per_s"] / 3.0
    if isinstance(at_s, bool) or not isinstance(at_s, (int, float)) or not 0 <= at_s <= 1e7:
        raise SpecError("quota_drift.at_s", f"must be a number of seconds in [0, 1e7] or null, got {at_s!r}")
    return [{"node": n, "at_s": float(at_s), "factor": float(factor)} for n in nodes]


def drift_slowdown(stages: pd.DataFrame, at_ms: float) -> float:
    """How much slower stages ran after the drift: per stage id, median observed time of the stages that
    started after ``at_ms`` over that of the stages that ended before it; geometric mean over stage ids
    (NaN when no stage id has both). About 1/factor when the quota change bit."""
    ok = stages[stages["ok"].astype(bool)]
    logs = []
    for _, g in ok.groupby("stage"):
        before = g.loc[g["end_ms"] <= at_ms, "duration_ms"]
        after = g.loc[g["start_ms"] >= at_ms, "duration_ms"]
        if len(before) and len(after) and before.median() > 0:
            logs.append(math.log(after.median() / before.median()))
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def windows_within(table: pd.DataFrame, limit: float = WITHIN) -> pd.DataFrame:
    """Per (mode, seed): the share of time windows (with completed jobs) whose MAPE is at most ``limit``."""
    t = table.dropna(subset=["mape"])
    return (t.assign(within=t["mape"] <= limit).groupby(["mode", "seed"], sort=False)["within"].mean()
            .rename("windows_within_10pct").reset_index())
NOISE_DRAWS = 200_000


def _load_probe(loads: dict[str, float]):
    """on_plan callback: the twin's own peak demand/capacity over the chosen nodes when the job was planned.

    Above 1 the twin expected the job to share a node with running stages beyond its
    capacity, i.e. its prediction leans on the predictor's contention approximation.
    """
    def probe(job, plan, snap, _arrival):
        peak = 0.0
        for sid, node in plan.placement.items():
            st = snap.nodes[node]
            cap = st.node.cores * (1.0 - st.cpu_util)
            cpu = job.stages[job.stage_index[sid]].compute.cpu
            peak = max(peak, (st.running_cpu + cpu) / cap if cap > 0 else math.inf)
        loads[job.name] = peak
    return probe


def _per_job(df: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """The run's jobs with their arrival window, APE and predicted/observed ratio (NaN if not completed)."""
    df = df.copy()
    df["window_start_s"] = np.floor(df["planned_ms"] / 1000.0 / window_s) * window_s
    df["ape"] = (df["pred_mean_ms"] - df["latency_ms"]).abs() / df["latency_ms"]
    df["ratio"] = df["pred_mean_ms"] / df["latency_ms"]
    df.loc[~df["ok"], ["ape", "ratio"]] = np.nan
    return df


def _windows(df: pd.DataFrame) -> pd.DataFrame:
    return (df.groupby("window_start_s").agg(jobs=("job", "size"), mape=("ape", "mean"),
                                             median_ape=("ape", "median"), median_ratio=("ratio", "median"),
                                             miss_rate=("missed", "mean")).reset_index())


def _final_window(df: pd.DataFrame, ape: pd.Series, window_s: float) -> dict[str, float]:
    """MAPE and miss rate of the jobs that arrived in the last ``window_s`` before the last arrival.

    Not the last window of the grid: that one is usually cut short by the end of the arrivals and
    holds a handful of jobs, so its rate would be noise.
    """
    if df.empty:
        return {"last_window_mape": math.nan, "last_window_miss_rate": math.nan}
    tail = df["planned_ms"] >= df["planned_ms"].max() - window_s * 1000.0
    tail_ape = ape[tail.reindex(ape.index).fillna(False).astype(bool)]
    return {"last_window_mape": float(tail_ape.mean()) if len(tail_ape) else math.nan,
            "last_window_miss_rate": float(df.loc[tail, "missed"].mean())}


def noise_median(sub, seed: int) -> float:
    """Median of the ground truth's multiplicative service noise (seeded Monte Carlo of its own draw)."""
    x = sub.timing.service_noise(np.random.default_rng([seed, 0x6E]), NOISE_DRAWS)
    return float(np.exp(np.median(np.log(x))))


def tracking_table(cal, sub, seed: int) -> pd.DataFrame:
    """The estimator's checkpoints joined with the sim's truth at the same instants (empty off sim)."""
    cols = ["seed", "t_s", "node", "samples", "est_factor", "true_speed_factor", "work_factor", "target_factor",
            "rel_error"]
    if cal is None or not cal.checkpoints or not hasattr(sub, "true_speed"):
        return pd.DataFrame(columns=cols)
    med = noise_median(sub, seed)
    rows = []
    for c in cal.checkpoints:
        at_ms = c["ts"] * 1000.0
        spec = cal.spec[c["node"]].speed
        sf = sub.true_speed(c["node"], at_ms) / spec
        wf = sub.work_factor(at_ms) if hasattr(sub, "work_factor") else 1.0     # fabric: jobs do not grow
        target = wf / sf * med
        rows.append({"seed": seed, "t_s": c["ts"], "node": c["node"], "samples": c["samples"],
                     "est_factor": c["factor"], "true_speed_factor": sf, "work_factor": wf, "target_factor": target,
                     "rel_error": c["factor"] / target - 1.0})
    return pd.DataFrame(rows, columns=cols)


def _tracking_error(track: pd.DataFrame, window_s: float) -> tuple[float, float]:
    """(estimator, spec) median |log(factor / target)| over checkpoints after the first window, used nodes."""
    t = track[(track["t_s"] >= window_s) & (track["samples"] > 0)]
    if t.empty:
        return math.nan, math.nan
    est = np.abs(np.log(t["est_factor"] / t["target_factor"]))
    spec = np.abs(np.log(1.0 / t["target_factor"]))
    return float(est.median()), float(spec.median())


PAIRED = ("mape", "median_ape", "miss_rate", "last_window_mape", "last_window_miss_rate")


def recalibration_effects(runs: pd.DataFrame) -> dict[str, Any]:
    """``effect.<metric>``: per-seed ``static - online`` (same seed = same world and arrivals) with a
    95 % t-interval; > 0 means recalibration lowered it. ``.seeds_needed``: seeds for an interval
    half as wide as the effect (per-seed sd of the differences)."""
    out: dict[str, Any] = {}
    if not {"static", "online"} <= set(runs["mode"]):
        return out
    by = runs.set_index(["mode", "seed"])
    seeds = sorted(set(by.loc["static"].index) & set(by.loc["online"].index))
    for m in PAIRED:
        a = [float(by.loc[("static", s), m]) for s in seeds]
        b = [float(by.loc[("online", s), m]) for s in seeds]
        ci = stats.paired_diff_ci(a, b)
        put_ci(out, f"effect.{m}", ci)
        out[f"effect.{m}.seeds_needed"] = stats.paired_seeds_needed(a, b)
    return out


def check(params: dict[str, Any] | None) -> dict[str, Any]:
    """The validated params (what the runner checks before the kernel starts; ``run`` starts with it),
    without resolving the substrate or calibrating anything; the ``fabric`` sizes are checked too."""
    p, sized = check_params(params, DEFAULTS, "V6")
    for q in (p, sized):
        _check_choices(q)
        quota_drift_steps(q, load_cluster_param(q["cluster"]))
    return p


def _check_choices(p: dict[str, Any]) -> None:
    from .. import policies

    require_choices(p, "policy", [n for n in policies.names() if n != "rl_stub"])
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_choices(p, "modes", MODES)
    require_positive(p, "samples", "jobs", "window_s", "ewma_alpha")


def run(params: dict[str, Any] | None = None) -> ExperimentResult:
    check(params)
    p, choice = resolve(params, DEFAULTS, "V6")     # the substrate that runs; on the fabric its sizes
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    workload, isolated_ms = regime.with_deadline_slack(workload, cluster, p["deadline_slack"])
    if p["substrate"] == "fabric":   # drift = node CPU quotas changed during the run (real execution)
        steps = quota_drift_steps(p, cluster)
        drift: dict[str, Any] = {"cpu_drift": steps}
        choice.note = "; ".join(x for x in (choice.note, f"drift: CPU quota x{steps[0]['factor']:g} at "
                                            f"{steps[0]['at_s']:g} s on {len(steps)} node(s); sim drift knobs unused") if x)
    else:
        drift = {k: p[k] for k in ("speed_drift_per_min", "workload_drift_per_min", "telemetry_delay_s",
                                   "telemetry_noise")}
    windows, per_run, corrections, tracking, regimes, jobs = [], [], [], [], [], []
    for seed in p["seeds"]:
        for mode in p["modes"]:
            recal = {"alpha": p["ewma_alpha"], "checkpoint_s": p["window_s"]} if mode == "online" else None
            loads: dict[str, float] = {}
            df, ctl = run_controller(p, cluster, workload, seed, p["policy"], p["predictor"], p["samples"],
                                     substrate_extra=drift, recalibrate=recal, on_plan=[_load_probe(loads)],
                                     choice=choice)
            df["plan_load"] = df["job"].map(loads)
            regimes.append(df.attrs.get("regime", {}))
            per_job = _per_job(df, p["window_s"])
            w = _windows(per_job)
            jobs.append(per_job[["job", "window_start_s", "planned_ms", "ape", "missed", "ok"]]
                        .assign(mode=mode, seed=seed))
            w.insert(0, "seed", seed)
            w.insert(0, "mode", mode)
            windows.append(w)
            ok = df[df["ok"]]
            ape = (ok["pred_mean_ms"] - ok["latency_ms"]).abs() / ok["latency_ms"]
            ratio = ok["pred_mean_ms"] / ok["latency_ms"]
            row = {"mode": mode, "seed": seed, "mape": float(ape.mean()) if len(ape) else math.nan,
                   "median_ape": float(ape.median()) if len(ape) else math.nan,
                   "median_ratio": float(ratio.median()) if len(ratio) else math.nan,
                   "miss_rate": float(df["missed"].mean()),
                   **_final_window(df, ape, p["window_s"])}
            for name, sel in (("uncontended", ok["plan_load"] <= 1.0), ("contended", ok["plan_load"] > 1.0)):
                row[f"mape_{name}"] = float(ape[sel].mean()) if sel.any() else math.nan
                row[f"median_ratio_{name}"] = float(ratio[sel].median()) if sel.any() else math.nan
                row[f"share_{name}"] = float(sel.mean()) if len(sel) else math.nan
            cal = ctl.recalibrator
            if cal is not None:
                h = pd.DataFrame(getattr(cal, "history"))   # the OnlineCalibrator run_controller built
                if len(h):
                    h.insert(0, "seed", seed)
                    corrections.append(h)
                track = tracking_table(cal, ctl.substrate, seed)
                if len(track):
                    tracking.append(track)
                    row["tracking_error"], row["spec_tracking_error"] = _tracking_error(track, p["window_s"])
            applied = getattr(ctl.substrate, "drift_applied", None)
            if applied:      # fabric: the quota change happened, and what it did to the stages' times
                row["drift_steps_applied"] = len(applied)
                row["drift_stage_slowdown"] = drift_slowdown(ctl.substrate.results()["stages"],
                                                             min(a["at_ms"] for a in applied))
            per_run.append(row)
    table = pd.concat(windows, ignore_index=True)
    runs = pd.DataFrame(per_run)
    metrics: dict[str, Any] = {}
    for mode, g in runs.groupby("mode", sort=False):
        for m in ("mape", "median_ape", "median_ratio", "miss_rate", "last_window_mape", "last_window_miss_rate",
                  "mape_uncontended", "mape_contended", "median_ratio_uncontended", "median_ratio_contended",
                  "share_contended"):
            bounds = stats.RATE if "miss_rate" in m or m.startswith("share_") else stats.NONNEG
            put_ci(metrics, f"{mode}.{m}", mean_ci(g[m], bounds=bounds))
    within = windows_within(table)
    runs = runs.merge(within, on=["mode", "seed"], how="left")
    for mode, g in runs.groupby("mode", sort=False):
        put_ci(metrics, f"{mode}.windows_within_10pct", mean_ci(g["windows_within_10pct"].dropna(), bounds=stats.RATE))
    if "drift_stage_slowdown" in runs:
        for mode, g in runs.groupby("mode", sort=False):
            put_ci(metrics, f"{mode}.drift_stage_slowdown", mean_ci(g["drift_stage_slowdown"].dropna(), bounds=stats.NONNEG))
    if "tracking_error" in runs:
        put_ci(metrics, "tracking.online_abs_log_error", mean_ci(runs["tracking_error"].dropna()))
        put_ci(metrics, "tracking.spec_abs_log_error", mean_ci(runs["spec_tracking_error"].dropna()))
    metrics.update(recalibration_effects(runs))
    metrics.update(choice.metrics())
    metrics["substrate"] = p["substrate"]
    regime.record(metrics, regimes, nominal_slack=p["deadline_slack"], isolated_ms=round(isolated_ms, 1),
                  rate_per_s=p["rate_per_s"])
    extra = {"runs": runs, "jobs": pd.concat(jobs, ignore_index=True),
             "windows": summarize_seeds(table, ["mode", "window_start_s"], WINDOW_METRICS,
                                        bounds={"miss_rate": stats.RATE, "mape": stats.NONNEG,
                                                "median_ape": stats.NONNEG, "median_ratio": stats.NONNEG})}
    if corrections:
        extra["corrections"] = pd.concat(corrections, ignore_index=True)
    if tracking:
        extra["tracking"] = pd.concat(tracking, ignore_index=True)
    return ExperimentResult(table=table, metrics=metrics, extra=extra, params=p)
