"""V1: does the DT controller beat placement without a twin?

Each policy drives the same controller loop on the same substrate, world and workload
(per seed: identical arrivals, background load, failures and link variation), so the
difference in observed latency and deadline misses is the policy's. DT policies
(greedy, resilient, cvar) plan with the twin's predictor and its estimate of the arrival
process (:mod:`dtlab.policies.load`); baselines place without a twin: ``k8s-default``
(kube-scheduler default scoring + the data-locality preferences a user would set), ``heft``
(heterogeneity-aware earliest finish time), ``load-risk-balancing`` (Trimaran), and the
weak ``least-allocated``, ``random``, ``round-robin``. Baseline settings are fixed in their
docstrings.

The load matters: the example workload's edge zone saturates near 1.7 jobs/s. V1 sweeps the
arrival rate from light load to past saturation (``rates_per_s``); metric keys are
``<policy>.r<rate>.<metric>`` with 95 % t-intervals over seeds clipped to the metric's range.

**Headline** (:func:`compare_best`): per rate and metric (miss rate, p95 latency), the best DT
policy minus the best baseline, paired over seeds (``vs_best_baseline.r<rate>.<metric>`` with
CI, the policies, the non-inferiority ``margin`` and verdict, ``seeds`` and ``seeds_needed``).
Why 16 seeds of 100 jobs on ``sim`` (measured): with 6 seeds 5 of the 8 (rate, metric) comparisons
had a CI narrower than the difference, with 12 seeds 6 of 8, with 16 seeds 7 of 8 and all 8 within
their margin; the last one (p95 at 1 job/s, near the edge zone's saturation, where a few seeds
decide the tail) would need ~19 by :func:`seeds_needed_t`.

Substrate: ``substrate: auto`` (default) runs on the ``fabric`` (real processes in cgroups and
network namespaces, twin with this host's compute calibration and fitted links) when this host
can, else on ``sim``; metrics ``substrate``/``substrate_note`` say which and why. Fabric runs take
wall-clock time (a job takes ~1.5 s and arrivals are real), so on the fabric the ``fabric`` sizes
replace the top-level ones. Why these (``FABRIC_SIZES``): a fabric run costs a few seconds of set-up
and drain plus its arrivals, so ``seeds x policies x rates`` runs must fit ~15 minutes beside V2's ~5
in ``make experiments``' 30. Four rates (1, 2, 3, 4 jobs/s: light load to past the edge zone's
saturation), 6 policies (DT greedy and CVaR; k8s-default, HEFT, Trimaran load-risk and
least-allocated, the best baseline of earlier fabric runs), 4 seeds and a 4 s arrival window
(``arrival_window_s``: 4, 8, 12, 16 jobs, :func:`jobs_at`): 96 runs, measured 736 s (12.3 min,
7.7 s per run) with the host's load average up to 20 (other work; the run is flagged noisy). A fixed
6 jobs per run did not sweep the load (edge-a's measured utilisation 0.19-0.23 from 1 to 4 jobs/s:
a run ended before a queue could build); the window gives 0.14, 0.25, 0.30, 0.34. Seeds beat jobs
for the paired CI: its half-width is ``t(n-1) / sqrt(n)`` x the per-seed sd of the differences, 1.59 sd
at 4 seeds against 2.48 at 3, while the sd falls only as 1/sqrt(jobs). What 4 seeds buy (measured,
best DT minus best baseline, least-allocated the best baseline in almost every cell): miss-rate
intervals 0.2-0.8 wide, p95 intervals 0.5-1.9 s wide, non-inferiority shown in 1-3 of the 8 cells;
``seeds_for_noninferiority`` names what each undecided cell would need (V1 takes ~14 of the 30
minutes). The verdict on real execution took more seeds than that budget has
(``params/V1-fabric-long.yaml``, 32 seeds, measured per rate): at 2, 3 and 4 jobs/s 16 seeds show
the best DT policy non-inferior and better (miss rate -0.10 [-0.19, -0.02], -0.13 [-0.21, -0.05],
-0.26 [-0.32, -0.20]; p95 -356 [-526, -187], -501 [-768, -233], -616 [-840, -392] ms); at 1 job/s,
light load where the policies are close, 16 seeds did not and 32 did (miss rate -0.070 [-0.123,
-0.018], p95 -110 [-268, +48] ms against a margin of 143).
``sim`` runs 16 seeds of 100 jobs for the fine comparison.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from ..energy import add_job_energy, energy_stats
from ..stats import clip_ci, paired_diff_ci, quantile_ci, rate_ci, seeds_needed, t975
from . import regime
from .summary import CI, metrics_from_summary, put_ci, summarize_seeds
from .result import ExperimentResult
from .substrate import auto_substrate_defaults, check_params, resolve
from .params import load_cluster_param, load_workload_param, require_choices, require_positive
from .loop import run_controller, latency_stats

# on the fabric (wall-clock), these sizes replace the top-level ones (see the module docstring)
FABRIC_SIZES: dict[str, Any] = {"arrival_window_s": 4.0, "rates_per_s": [1.0, 2.0, 3.0, 4.0], "seeds": [0, 1, 2, 3],
                                "policies": ["greedy", "cvar", "k8s-default", "heft", "load-risk-balancing",
                                             "least-allocated"],
                                "substrate_opts": {"host_cores": 2.0}}
DEFAULTS: dict[str, Any] = {
    **auto_substrate_defaults(FABRIC_SIZES),
    "workload": "examples/workload.yaml",
    "jobs": 100,
    "arrival_window_s": None,   # set: jobs per run = ceil(rate x window) instead of `jobs` (see jobs_at)
    "rates_per_s": [0.5, 1.0, 2.0, 3.0],
    "policies": ["greedy", "resilient", "cvar", "k8s-default", "heft", "load-risk-balancing", "least-allocated",
                 "random", "round-robin"],
    "predictor": "fast",
    "samples": 128,
    "seeds": list(range(16)),
    "margins": {"miss_rate": 0.02, "latency_p95_ms": 0.05},
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"substrate": "sim", "jobs": 20, "seeds": [0, 1], "rates_per_s": [1.0]}
METRICS = ("latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate")
HEADLINE = ("miss_rate", "latency_p95_ms")      # the paired DT-vs-baseline comparison
DT_POLICIES = ("greedy", "resilient", "cvar")
ENERGY_METRICS = ("energy_proxy_j",)   # issue 23: mean per completed job, power model x substrate CPU time


def check(params: dict | None) -> dict[str, Any]:
    """What the runner checks before the kernel starts (see dtlab.experiments.substrate.check_params)."""
    return check_params(params, DEFAULTS, "V1")[0]


def _check_margins(margins) -> dict[str, float]:
    from ..errors import SpecError
    out = {}
    for key, value in dict(margins).items():
        if key not in HEADLINE:
            raise SpecError(f"margins.{key}", f"not a headline metric (known: {list(HEADLINE)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise SpecError(f"margins.{key}", f"must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return {**DEFAULTS["margins"], **out}


def seeds_needed_t(sd: float, diff: float, limit: int = 1000) -> int | None:
    """Seeds for a 95 % t-interval of half-width below ``diff`` given the per-seed sd of the paired
    differences: :func:`dtlab.stats.seeds_needed` (normal approximation) raised until the t quantile
    of that many seeds also fits (the normal one says 3 where a 3-seed t-interval is 2.5x wider)."""
    if not diff or not sd == sd:
        return None
    if sd == 0:
        return 2
    n = max(2, seeds_needed(sd, diff))
    while n < limit and t975(n - 1) * sd / n ** 0.5 >= diff:
        n += 1
    return n


def seeds_for_noninferiority(sd: float, mean: float, margin: float) -> int | None:
    """Seeds for the paired interval's upper end to reach the non-inferiority ``margin`` if the per-seed
    mean and sd of the differences stay as measured (:func:`seeds_needed_t` of ``margin - mean``); None
    when the mean is at or above the margin, where no number of seeds shows it."""
    if not mean == mean or mean >= margin:
        return None
    return seeds_needed_t(sd, margin - mean)


def jobs_at(rate: float, jobs: int, window_s: float | None) -> int:
    """Jobs per run at ``rate``: ``jobs``, or with an arrival window the jobs that arrive in it
    (``ceil(rate x window)``, at least 2). Why a window: with a fixed job count a short run at a high
    rate ends before the queue builds (measured on the fabric with 6 jobs per run: edge-a's
    utilisation 0.19 at 1 job/s and 0.22 at 4), so the sweep would not sweep the load; with a
    window every rate offers the cluster the same span of arrivals and the load grows with the rate."""
    if window_s is None:
        return int(jobs)
    return max(2, int(-(-rate * window_s // 1)))


def compare_best(table: pd.DataFrame, jobs: pd.DataFrame, margins: dict[str, float]) -> dict[str, Any]:
    """Per rate and headline metric: the best DT policy minus the best baseline, paired over seeds.

    "Best" is the lowest mean over seeds, chosen on the same data (say so when you cite it). The
    difference is the mean of per-seed differences with a 95 % t-interval (seeds share every random
    stream, so pairing removes the world's variance). Non-inferiority: the interval's upper end is at
    most the margin (``miss_rate``: absolute, in rate units; ``latency_p95_ms``: a fraction of the
    best baseline's mean p95). ``seeds_needed``: seeds for a CI half-width below ``|difference|``
    (:func:`seeds_needed_t`); ``ci_narrower_than_diff`` says whether
    this run already has it. ``seeds_for_noninferiority``: seeds the verdict would need at the measured
    mean and sd (:func:`seeds_for_noninferiority`; None: the mean is past the margin). Pooled over seeds
    the p95 and the miss rate also get bootstrap / Wilson intervals (``<policy>.r<rate>.pooled_p95_ms``,
    ``.pooled_miss_rate``).
    """
    out: dict[str, Any] = {}
    dt = [p for p in table["policy"].unique() if p in DT_POLICIES]
    base = [p for p in table["policy"].unique() if p not in DT_POLICIES]
    for rate, g in table.groupby("rate_per_s", sort=True):
        r = f"r{rate:g}"
        for policy, gp in g.groupby("policy", sort=False):
            jp = jobs[(jobs["policy"] == policy) & (jobs["rate_per_s"] == rate)]
            lat = jp.loc[jp["ok"], "latency_ms"].to_numpy(dtype=float)
            put_ci(out, f"{policy}.{r}.pooled_p95_ms", quantile_ci(lat, 0.95, seed=0))
            put_ci(out, f"{policy}.{r}.pooled_miss_rate", rate_ci(int(jp["missed"].sum()), int(len(jp))))
        if not dt or not base:
            continue
        for m in HEADLINE:
            wide = g.pivot_table(index="seed", columns="policy", values=m)
            means = wide.mean()
            best_dt = min(dt, key=lambda p: (means.get(p, float("inf")), p))
            best_base = min(base, key=lambda p: (means.get(p, float("inf")), p))
            both = wide[[best_dt, best_base]].dropna()
            ci: CI = paired_diff_ci(both[best_dt].tolist(), both[best_base].tolist())
            if m == "miss_rate":
                ci = clip_ci(ci, (-1.0, 1.0))          # a difference of two rates
            key = f"vs_best_baseline.{r}.{m}"
            put_ci(out, key, ci)
            margin = margins[m] * (means[best_base] if m == "latency_p95_ms" else 1.0)
            diffs = (both[best_dt] - both[best_base]).to_numpy()
            sd = float(diffs.std(ddof=1)) if diffs.size > 1 else float("nan")
            out[f"{key}.dt_policy"] = best_dt
            out[f"{key}.baseline_policy"] = best_base
            out[f"{key}.margin"] = round(float(margin), 6)
            out[f"{key}.noninferior"] = bool(ci.n >= 2 and ci.high <= margin)
            out[f"{key}.seeds"] = int(ci.n)
            out[f"{key}.ci_narrower_than_diff"] = bool(ci.n >= 2 and (ci.high - ci.low) / 2 < abs(ci.mean))
            out[f"{key}.seeds_needed"] = seeds_needed_t(sd, abs(ci.mean))
            out[f"{key}.seeds_for_noninferiority"] = seeds_for_noninferiority(sd, ci.mean, margin)
    return out


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies

    p, choice = resolve(params, DEFAULTS, "V1")
    require_choices(p, "policies", policies.names())
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "jobs")
    margins = _check_margins(p["margins"])
    window = p["arrival_window_s"]
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0):
        from ..errors import SpecError
        raise SpecError("arrival_window_s", f"must be a number > 0 or null, got {window!r}")
    cluster = load_cluster_param(p["cluster"])
    if not p["rates_per_s"]:
        from ..errors import SpecError
        raise SpecError("rates_per_s", "must list at least one arrival rate")
    rows, jobs = [], []
    for rate in p["rates_per_s"]:
        workload = load_workload_param(p["workload"], jobs_at(rate, p["jobs"], window), rate)
        for seed in p["seeds"]:
            for policy in p["policies"]:
                df, ctl = run_controller(p, cluster, workload, seed, policy, p["predictor"], p["samples"],
                                       choice=choice)
                df.insert(1, "rate_per_s", rate)
                df = add_job_energy(df, ctl.substrate, cluster)       # issue 23: energy per policy
                rows.append({"policy": policy, "rate_per_s": rate, "seed": seed, "dt": policy in DT_POLICIES,
                             **latency_stats(df), **energy_stats(df)})
                jobs.append(df)
    table = pd.DataFrame(rows)
    job_table = pd.concat(jobs, ignore_index=True)
    summary = summarize_seeds(table, ["policy", "rate_per_s"], METRICS + ENERGY_METRICS)
    summary["rate"] = "r" + summary["rate_per_s"].map(lambda r: f"{r:g}")
    metrics = compare_best(table, job_table, margins)
    metrics.update(metrics_from_summary(summary, ["policy", "rate"]))
    summary = summary.drop(columns="rate")
    metrics.update(choice.metrics())
    regime.record_runs(metrics, jobs, by="rate_per_s")   # measured utilisation/slack per rate (regime.r<rate>.*)
    return ExperimentResult(table=table, metrics=metrics, extra={"summary": summary, "jobs": job_table}, params=p)
