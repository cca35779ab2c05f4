"""V4: do shadow plans pay off when the chaos/ scenarios hit?

Hypothesis: in a world where the best DT policy meets its deadlines when nothing fails, a fault
raises the deadline-miss rate and the jobs lost, and shadow failover keeps both lower than
re-planning after detection, which keeps them lower than a twin-less placement that waits for
the node to come back.

Regime (``params/V4.yaml``; measured values land in metrics.json as ``regime.*``, see
:mod:`dtlab.experiments.regime`): the example pipeline starts in edge-a, whose uplink is lossy
(1 % loss caps TCP at ~2 Mbit/s, so shipping the 5 MB input to the cloud costs ~20 s): a good
placement keeps the job on edge-a's nodes, the zone the shipped faults hit. Arrivals come from the
workload generator (Poisson, 0.5 jobs/s, lognormal job sizes), which keeps edge-a's measured
utilisation around 0.2 (``regime.util.edge-a``; the sim adds its hidden background of 0.15):
contention is present but the zone is not saturated. Deadlines are ``deadline_slack`` x the job's
isolated latency (the twin's p50 of the template alone on an idle cluster, ``regime.isolated_ms``);
2.5 is what the service-time spread of
the ground truth needs for ~90 % of jobs to make it without faults (sim log-sd 0.35 plus a 5 %
Pareto tail plus lognormal 0.3 job sizes: exp(1.28 x ~0.5) ~ 1.9, plus queueing), while a fault
that moves a stage off edge-a or makes it wait tens of seconds still misses. So the no-fault row
measures the world, and a fault row minus it (paired by seed: same arrivals, same world) is the
fault's effect: metrics ``effect.<scenario>.<strategy>.deadline_miss_rate`` (mean of per-seed
differences with a 95 % t-interval, and ``.seeds_needed``: seeds for an interval half as wide as
the effect, :func:`dtlab.stats.seeds_needed` from the per-seed sd). With 5 seeds and 80 jobs a
per-seed miss rate has a binomial sd of <= 0.05 plus the world's spread; effects of >= 0.1 (zone
blackout ~0.36, edge-node loss ~0.64, rolling failures ~0.14 at full size) then exclude 0, while
faults that miss edge-a's data path (partitions, the lossy uplink, most of bad-day) move the DT
strategies by < 0.05 and would need the tens of seeds ``seeds_needed`` reports. The twin-less
baseline places jobs in the cloud, ships the input over the lossy uplink and misses every deadline
with or without a fault: its effect is 0 because it has no headroom, not because faults spare it.

**When do shadows beat re-planning, and why** (:func:`shadow_vs_replan`): per fault scenario and
shadow strategy, the per-seed difference to ``replan-greedy`` in deadline-miss rate, raw
(``vs_replan.<scenario>.<strategy>.delta_miss``) and net of the no-fault run (``.delta_miss_net``:
the failover mechanism's share once the placement policies' own difference is taken out), each
with a 95 % t-interval; the difference in recovery time; ``.verdict`` and ``.why`` (stage moves
per run, recovery times, data pre-staged). Measured on the full params (``dtlab run V4``, sim,
5 seeds x 80 jobs; ``zone_failure_share`` 0.25, the default, against 1, the classic "other failure
domain" rule):

* node loss (``edge-node-loss``, ``rolling-node-failures``): at 0.25 the shadow is the node next
  door (the inputs are already in edge-a) and recovers in 1.01 s against re-planning's 1.06 s
  (``delta_recovery`` -50 ms, CI excluding 0: the ``replan_ms`` a shadow skips); at 1 it sits across
  edge-a's lossy uplink and recovers 10-32 s *later* than re-planning (CIs excluding 0). This was
  the issue's finding (shadows 29-33 s, re-planning ~1 s); the failover cost now picks the shadow.
* zone blackout: at 0.25 the same-zone shadow is down too and the stage is re-planned, so both
  recover alike (~41 s: the failed stage's input is the output of a predecessor on a blacked-out
  node); at 1, shadows with pre-staged inputs recovered in 32.7 s on average against 40.7 s, but
  paired over the seeds where both had an affected stage the difference is +3.4 s with a 95 %
  interval of [-183, +190] s: not detectable at 5 seeds (~1.2 affected stages per run).
* link faults (partitions, the lossy uplink) and bad-day move no stage: neither mechanism acts.
* deadline misses: no shadow-vs-replan difference is detectable in any scenario (all net
  intervals span 0): few jobs are in flight when a node fails, and the misses that faults cause
  come from the capacity they remove afterwards (edge-node-loss: decode cannot run on edge-a-1,
  so every later job crosses the uplink), which no failover strategy can give back.

Pre-staging's cost: 2-22 MB per job copied (``prestaged_mb_per_job``), used or not.

For every scenario (plus ``none``, the same runs without faults, as the control), seed and strategy the same workload meets the same world and the same
faults (realised through ``substrate.inject``; on ``sim`` the background random failures are
off by default so every failure is the scenario's). Strategies:

* ``shadow-resilient`` / ``shadow-cvar``: the twin plans with that policy and records a shadow
  per stage, the node with the lowest failover cost the twin predicts (detection, re-sending the
  stage's inputs there, service there; :mod:`dtlab.policies.failover`), a node in the primary's
  zone priced with ``zone_failure_share`` (the share of failures that take the whole zone, where
  such a shadow is down too); a stage that loses its node moves to its shadow as soon as the
  failure is detected (``TimingModel.detect_ms``), or is re-planned with its policy when the
  shadow is down as well.
* ``shadow-prestage``: as ``shadow-resilient``, and the inputs of every stage whose expected
  saving is worth ``prestage_price_ms_per_mb`` per MB are copied to its shadow while the primary
  runs (the shadow chosen for that pre-staged cost), so a failover waits only for what of the
  copy is still in flight; the copy's cost is ``prestaged_mb_per_job`` in every row, used or not.
* ``replan-greedy``: greedy plan, no shadow; after detection + ``replan_ms`` the twin re-plans
  the job with greedy on what it knows (the failed node and every node reported down
  excluded) and the stage goes where that plan puts it.
* ``no-twin``: least-allocated placement (Kubernetes-default-like), no shadow, no re-plan: a
  stage whose node failed waits for the node to come back (a pod bound to its node).

Metrics per run (a row of ``table``): ``recovery_ms_mean`` (over affected stage attempts: fault
start -> the stage running again; for node failures and pod kills the next attempt's start,
for partitions/degradations the stall of a stage whose inputs had to cross the faulted pair),
``jobs_lost`` (arrived jobs that never completed: lost in flight, or ``rejected`` because no
node could take them), ``deadline_miss_rate``, ``extra_work_ms``
(service work thrown away by killed attempts), plus latency and failover counts. Means carry
95% t-intervals over seeds (``extra["summary"]``).

On ``kube`` (``substrate: kube``, ``params/V4-kube.yaml``): every run is a fresh KubeSubstrate on
the API server of ``substrate_opts.kubeconfig``, else on the running local plane ``plane``
(``dtlab cluster up``), else the substrate starts a local plane for that run and stops it again
(a few seconds per run; start one plane first for more than a handful of runs). The sim-only
default ``substrate_opts`` is dropped when another substrate is chosen. The substrate restores the
nodes it failed when it closes, so runs on one plane start from the same healthy cluster. Use
``time_scale`` (e.g. 0.1) so a scenario's tens of seconds take seconds of wall time; KWOK's own
1-2 s to report NotReady is not scaled, so detection (and recovery) looks ``1/time_scale`` times
slower in the twin's milliseconds than on ``sim``. Recovery times there are matched by window (an
attempt that failed on a faulted node while the fault lasted), as wall-clock substrates record
when the failure was observed, not the fault's instant; partitions and degradations have no data
path on KWOK (the twin's link model only), so they add no recovery times on ``kube``; between real
nodes (``params/V4-kube.yaml``, ``substrate_opts.real_nodes``) they re-shape the pod-network links the
stages' inputs cross, the stages run as real containers in real time (``time_scale`` 1) and a node
failure SIGKILLs the node's kubelet (NotReady after the plane's node grace period). There the twin
plans with the container start-up per format measured on the plane's real nodes
(:mod:`dtlab.kube.startup`, cached) and the deadline's isolated latency includes it
(``metrics["deadline_ms"]``, ``metrics["calibration"]``); ``failovers`` counts the stages the kube
substrate moved off a lost node. ``no-twin``
cannot wait for a failed node there (the kube substrate fails a stage with no usable node), so its
jobs hit by a node failure are lost on ``kube`` where on ``sim`` they wait for the repair.
"""
from __future__ import annotations

import math
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import stats
from ..errors import InfeasibleError, SpecError, SubstrateUnavailable
from . import regime
from .substrate import SUBSTRATE_DEFAULTS, SubstrateChoice, open_substrate
from .result import ExperimentResult
from .params import child_seed, load_cluster_param, load_workload_param, require_choices, require_positive, validate
from .summary import metrics_from_summary, put_ci, summarize_seeds

CONTROL = "none"     # the same runs without any fault: what the workload costs on its own
SCENARIOS = [CONTROL, "zone-blackout", "edge-cloud-partition", "lossy-edge-uplink", "rolling-node-failures", "bad-day",
             "edge-node-loss"]
# strategy -> (policy, what happens when a stage loses its node)
STRATEGIES: dict[str, tuple[str, str]] = {
    "shadow-resilient": ("resilient", "shadow"),
    "shadow-cvar": ("cvar", "shadow"),
    "shadow-prestage": ("resilient", "prestage"),
    "replan-greedy": ("greedy", "replan"),
    "no-twin": ("least-allocated", "wait"),
}
DEFAULTS: dict[str, Any] = {
    **SUBSTRATE_DEFAULTS,
    "substrate_opts": {"failure_rate_per_h": 0.0},
    "workload": "examples/workload.yaml",
    "jobs": 80,
    "rate_per_s": 0.5,
    "deadline_slack": 2.5,     # deadline = slack x isolated latency of the template (None: the file's)
    "prestage_price_ms_per_mb": 5.0,   # shadow-prestage: expected ms saved per MB copied (policies/failover.py)
    "zone_failure_share": 0.25,        # share of node failures that take the zone down (shadow pricing)
    "scenarios": list(SCENARIOS),
    "strategies": list(STRATEGIES),
    "seeds": 5,
    "samples": 64,
    "predictor": "fast",
}
SMOKE: dict[str, Any] = {"jobs": 16, "seeds": [0, 1], "samples": 16,
                         "scenarios": [CONTROL, "zone-blackout", "rolling-node-failures", "bad-day"]}
METRICS = ("recovery_ms_mean", "jobs_lost", "deadline_miss_rate", "extra_work_ms")
BOUNDS = {"recovery_ms_mean": stats.NONNEG, "jobs_lost": stats.NONNEG, "deadline_miss_rate": stats.RATE,
          "extra_work_ms": stats.NONNEG}
FAILED_OUTCOMES = ("failed", "lost", "killed")


def check(params: dict[str, Any] | None) -> dict[str, Any]:
    """The validated params (what the runner checks before the kernel starts; ``run`` starts with it)."""
    p = validate(params, DEFAULTS, "V4")
    if p["substrate"] != "sim" and p["substrate_opts"] == DEFAULTS["substrate_opts"]:
        p["substrate_opts"] = {}     # failure_rate_per_h is a sim option; others reject it
    require_choices(p, "strategies", list(STRATEGIES))
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "jobs")
    price = p["prestage_price_ms_per_mb"]
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price <= 1e9:
        raise SpecError("prestage_price_ms_per_mb", f"must be a number in [0, 1e9], got {price!r}")
    share = p["zone_failure_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise SpecError("zone_failure_share", f"must be a number in [0, 1], got {share!r}")
    if not p["scenarios"]:
        raise SpecError("scenarios", "must not be empty")
    return p


def run(params: dict[str, Any] | None = None) -> ExperimentResult:
    from ..chaos.spec import expand, load_scenario, scenario_path

    p = check(params)
    cluster = load_cluster_param(p["cluster"])
    workload = load_workload_param(p["workload"], p["jobs"], p["rate_per_s"])
    deadlines = _Deadlines(workload, cluster, p["deadline_slack"])
    # kube: the twin plans (and the deadline is set) with the container start-up the real nodes pay
    choice = SubstrateChoice("kube", "kube") if p["substrate"] == "kube" else None
    scenarios: list[tuple[str, list[Any]]] = []
    for i, name in enumerate(p["scenarios"]):
        if name == CONTROL:
            scenarios.append((CONTROL, []))
            continue
        try:
            sc = load_scenario(scenario_path(name))
            events = expand(sc, cluster)
        except SpecError as exc:
            raise SpecError(f"scenarios[{i}]", f"{name}: {exc}") from None
        scenarios.append((sc.name, events))
    rows, jobs, regimes = [], [], []
    noises: list[Mapping[str, Any]] = []
    recovery: list[dict[str, Any]] = []
    for name, events in scenarios:
        for seed in p["seeds"]:
            for strategy in p["strategies"]:
                row, df = run_one(p, cluster, deadlines, name, events, strategy, seed, choice)
                rec = row.pop("_recovery")
                recovery.extend({"scenario": name, "strategy": strategy, "seed": seed, "recovery_ms": r} for r in rec)
                measured = row.pop("_regime")
                noise = row.pop("_noise")
                if noise:
                    noises.append(noise)
                if name == scenarios[0][0]:      # the regime of the control (first) scenario
                    regimes.append(measured)
                rows.append(row)
                jobs.append(df)
    table = pd.DataFrame(rows)
    summary = summarize_seeds(table, ["scenario", "strategy"], METRICS, bounds=BOUNDS)
    effects = fault_effects(table)
    best = {k: effects.pop(k) for k in list(effects) if k.startswith(f"{CONTROL}.best_")}
    metrics = {**best, **metrics_from_summary(summary, ["scenario", "strategy"])}   # headline first
    metrics["substrate"] = p["substrate"]
    if noises:      # worst case over the runs (issue 14): `dtlab results` flags a NOISY run
        from ..hostnoise import combine
        metrics["host_noise"] = combine(noises)
        metrics["host_noise.noisy"] = metrics["host_noise"]["noisy"]
    shadow_rows = table[table["strategy"].str.startswith("shadow-")]
    metrics["jobs_lost_with_shadows"] = int(shadow_rows["jobs_lost"].sum()) if len(shadow_rows) else None
    metrics.update(effects)
    metrics.update(shadow_vs_replan(table))
    metrics["prestage_price_ms_per_mb"] = float(p["prestage_price_ms_per_mb"])
    if choice is not None:
        metrics["calibration"] = choice.calibration()
        metrics["deadline_ms"] = deadlines.workload.template.deadline_ms
        if choice.metadata:
            metrics["substrate_metadata"] = dict(choice.metadata)
    regime.record(metrics, regimes, nominal_slack=p["deadline_slack"], isolated_ms=round(deadlines.isolated_ms, 1),
                  rate_per_s=p["rate_per_s"], measured_in=scenarios[0][0],
                  background_mean=_background(p))
    extra = {"summary": summary, "jobs": pd.concat(jobs, ignore_index=True),
             "recovery": pd.DataFrame(recovery, columns=["scenario", "strategy", "seed", "recovery_ms"])}
    return ExperimentResult(table=table, metrics=metrics, extra=extra, params=p)


def _background(p: dict) -> float | None:
    """The sim's hidden background utilisation (None off sim)."""
    if p["substrate"] != "sim":
        return None
    from ..substrates.sim import sim_options
    return float(sim_options(p["substrate_opts"])["background_mean"])


def fault_effects(table: pd.DataFrame, metric: str = "deadline_miss_rate") -> dict[str, Any]:
    """Per fault scenario and strategy, the paired (by seed) difference of ``metric`` to the no-fault run.

    Keys ``effect.<scenario>.<strategy>.<metric>`` (+ ``.ci_low/.ci_high`` and ``.seeds_needed``: seeds
    for a 95 % interval half as wide as the effect, from the per-seed sd), ``<CONTROL>.best_strategy``
    and ``<CONTROL>.best_miss_rate`` (the strategy with the lowest no-fault miss rate).
    """
    out: dict[str, Any] = {}
    if CONTROL not in set(table["scenario"]):
        return out
    base = table[table["scenario"] == CONTROL].set_index(["strategy", "seed"])[metric]
    best = base.groupby(level="strategy").mean()
    if len(best):
        out[f"{CONTROL}.best_strategy"] = str(best.idxmin())
        out[f"{CONTROL}.best_miss_rate"] = round(float(best.min()), 6)
    for (scenario, strategy), g in table[table["scenario"] != CONTROL].groupby(["scenario", "strategy"], sort=False):
        g = g.set_index("seed")[metric]
        seeds = [s for s in g.index if (strategy, s) in base.index]
        if not seeds:
            continue
        a = [float(g[s]) for s in seeds]
        b = [float(base[(strategy, s)]) for s in seeds]
        ci = stats.paired_diff_ci(a, b)
        key = f"effect.{scenario}.{strategy}.{metric}"
        put_ci(out, key, ci)
        out[f"{key}.seeds_needed"] = stats.paired_seeds_needed(a, b)
    return out


REPLAN = "replan-greedy"


def shadow_vs_replan(table: pd.DataFrame) -> dict[str, Any]:
    """Per scenario and shadow strategy: when shadows beat re-planning, and why (paired by seed).

    ``vs_replan.<scenario>.<strategy>.delta_miss``: per-seed (shadow - replan-greedy) deadline-miss
    rate, mean with a 95 % t-interval (clipped to [-1, 1]); ``.delta_miss_net``: the same net of the
    no-fault run, ``(shadow_fault - shadow_none) - (replan_fault - replan_none)``, i.e. the share
    of the failover mechanism once the placement policies' own difference (resilient/cvar vs greedy)
    is taken out; ``.delta_recovery`` (ms, seeds where both recovered a stage); ``.verdict``
    (``shadows`` / ``re-planning`` when the net interval, else the raw one, excludes 0,
    ``no difference`` otherwise, with the seeds it rests on), ``.verdict_recovery`` (the same on the
    recovery-time difference) and ``.why``: the measured mechanism
    (failovers used, recovery times, data pre-staged per job).
    """
    out: dict[str, Any] = {}
    if REPLAN not in set(table["strategy"]):
        return out
    idx = table.set_index(["scenario", "strategy", "seed"])
    shadows = [s for s in table["strategy"].unique() if STRATEGIES.get(s, ("", ""))[1] in ("shadow", "prestage")]
    for scenario in table["scenario"].unique():
        if scenario == CONTROL:
            continue
        for strategy in shadows:
            seeds = [sd for sd in table["seed"].unique()
                     if (scenario, strategy, sd) in idx.index and (scenario, REPLAN, sd) in idx.index]
            if not seeds:
                continue
            sh = idx.loc[[(scenario, strategy, sd) for sd in seeds]]
            rp = idx.loc[[(scenario, REPLAN, sd) for sd in seeds]]
            key = f"vs_replan.{scenario}.{strategy}"
            raw = stats.clip_ci(stats.paired_diff_ci(sh["deadline_miss_rate"].tolist(),
                                                     rp["deadline_miss_rate"].tolist()), (-1.0, 1.0))
            put_ci(out, f"{key}.delta_miss", raw)
            net = None
            ctl = [sd for sd in seeds if (CONTROL, strategy, sd) in idx.index and (CONTROL, REPLAN, sd) in idx.index]
            if ctl:
                a = [float(idx.loc[(scenario, strategy, sd), "deadline_miss_rate"])
                     - float(idx.loc[(CONTROL, strategy, sd), "deadline_miss_rate"]) for sd in ctl]
                b = [float(idx.loc[(scenario, REPLAN, sd), "deadline_miss_rate"])
                     - float(idx.loc[(CONTROL, REPLAN, sd), "deadline_miss_rate"]) for sd in ctl]
                net = stats.clip_ci(stats.paired_diff_ci(a, b), (-2.0, 2.0))
                put_ci(out, f"{key}.delta_miss_net", net)
            rec = stats.paired_diff_ci(sh["recovery_ms_mean"].tolist(), rp["recovery_ms_mean"].tolist())
            put_ci(out, f"{key}.delta_recovery", rec)
            decide = net if net is not None and net.n >= 2 else raw
            if decide.n >= 2 and decide.high < 0:
                verdict = "shadows"
            elif decide.n >= 2 and decide.low > 0:
                verdict = "re-planning"
            else:
                verdict = "no difference"
            out[f"{key}.verdict"] = verdict
            # the mechanism can differ where the misses cannot tell (few jobs hit): recovery time, on its own
            out[f"{key}.verdict_recovery"] = ("shadows recover sooner" if rec.n >= 2 and rec.high < 0 else
                                              "re-planning recovers sooner" if rec.n >= 2 and rec.low > 0 else
                                              "no difference")
            out[f"{key}.seeds"] = int(decide.n)
            out[f"{key}.why"] = _why(sh, rp, rec)
    return out


def shadow_vs_replan_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The ``vs_replan.*`` metrics as one row per (scenario, shadow strategy), for the notebook."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        if not key.startswith("vs_replan."):
            continue
        parts = key.split(".")
        if len(parts) < 4:
            continue
        row = rows.setdefault((parts[1], parts[2]), {"scenario": parts[1], "strategy": parts[2]})
        row[".".join(parts[3:])] = value
    cols = ["scenario", "strategy", "verdict", "verdict_recovery", "seeds", "delta_miss", "delta_miss.ci_low", "delta_miss.ci_high",
            "delta_miss_net", "delta_miss_net.ci_low", "delta_miss_net.ci_high", "delta_recovery", "why"]
    df = pd.DataFrame(list(rows.values()))
    return df.reindex(columns=cols)


def _why(sh: pd.DataFrame, rp: pd.DataFrame, rec) -> str:
    """The measured mechanism behind a shadow-vs-replan difference, in one sentence."""
    fo_s, fo_r = float(sh["failovers"].mean()), float(rp["failovers"].mean())
    staged = float(sh["prestaged_mb_per_job"].mean()) if "prestaged_mb_per_job" in sh else 0.0
    cost = f"; pre-staging copied {staged:.2f} MB per job" if staged > 0 else ""
    if fo_s == 0 and fo_r == 0:
        return ("no stage lost its node (the fault hits links or nothing the jobs used): neither shadows nor "
                "re-planning act, so any difference is the placement policy's" + cost)
    r_s, r_r = float(sh["recovery_ms_mean"].mean()), float(rp["recovery_ms_mean"].mean())
    text = (f"{fo_s:.1f} vs {fo_r:.1f} stage moves per run; recovery {r_s:.0f} vs {r_r:.0f} ms "
            f"(shadow - replan {rec.mean:+.0f} ms"
            + (f", 95 % CI [{rec.low:+.0f}, {rec.high:+.0f}]" if rec.n >= 2 and math.isfinite(rec.low) else "")
            + "): a shadow skips re-planning (replan_ms) and goes where the twin priced the move; re-planning "
              "picks from what is up after detection")
    return text + cost


class _Deadlines:
    """The template deadline of a V4 sweep: ``deadline_slack`` x the twin's isolated latency, fixed by the
    first run with the timing the twin plans with on that run's substrate, then the same for every run
    (paired comparisons need one deadline). On sim/fabric/KWOK that is the default timing; on kube with
    real nodes it includes the measured container start-up per format (``choice.with_startup``), which
    the isolated estimate otherwise leaves out (every job then missed: seconds of start-up per stage)."""

    def __init__(self, workload, cluster, slack: float | None):
        self._file, self._cluster, self._slack = workload, cluster, slack
        self.workload, self.isolated_ms = regime.with_deadline_slack(workload, cluster, slack)
        self._fixed = False

    def fix(self, timing, cluster=None):
        """The workload with the deadline for ``timing`` on ``cluster`` (the twin's view of the nodes'
        speeds; None: the spec's) - the first call decides; later calls return it."""
        if not self._fixed:
            self.workload, self.isolated_ms = regime.with_deadline_slack(self._file, cluster or self._cluster,
                                                                         self._slack, timing=timing)
            self._fixed = True
        return self.workload


def run_one(p: dict, cluster, deadlines: _Deadlines, scenario: str, events, strategy: str, seed: int,
            choice: SubstrateChoice | None = None):
    """One (scenario, strategy, seed) run: (row of metrics, per-job DataFrame). With a kube ``choice`` the
    twin's timing gets the container start-up measured on the plane's real nodes (cached)."""
    from ..controller import Controller
    from ..twin import Twin
    from ..workload.stream import job_stream

    policy, on_failure = STRATEGIES[strategy]
    twin = Twin(cluster)
    with open_substrate(p, cluster, seed) as sub:
        if choice is not None:
            twin.timing = choice.with_startup(twin.timing, sub)
            meta = getattr(sub, "metadata", None)
            if not choice.metadata and callable(meta):
                choice.metadata = dict(meta())     # run.json: slowdown, emulation_factors, links
        # the deadline's isolated latency on the speeds the twin plans with (kube real nodes: over the
        # shared-host slowdown and each node's emulation factor, KubeSubstrate.twin_cluster)
        twin_cluster = getattr(sub, "twin_cluster", None)
        workload = deadlines.fix(twin.timing, twin_cluster() if callable(twin_cluster) else None)
        for ev in events:
            sub.inject(ev.to_dict())
        if on_failure in ("replan", "shadow", "prestage"):   # shadows fall back to re-planning when down too
            hook = getattr(sub, "set_replan", None)
            if hook is None:
                raise SubstrateUnavailable(f"substrate {p['substrate']!r} has no re-plan hook (set_replan)")
            hook(_replanner(twin, sub, "greedy" if on_failure == "replan" else policy, p, seed))
        ctl = Controller(twin, sub, policy=policy, predictor=p["predictor"], samples=p["samples"],
                         seed=child_seed(seed, "V4", policy))
        ctl.twin = _WithShadow(twin, prestage=on_failure == "prestage", price_ms_per_mb=float(
            p["prestage_price_ms_per_mb"]), zone_share=float(p["zone_failure_share"])) \
            if on_failure in ("shadow", "prestage") else _NoShadow(twin)
        stream = job_stream(workload, np.random.default_rng(child_seed(seed, "workload")))
        df = ctl.run_workload(stream)
        stages = sub.results()["stages"]
    measured = regime.measure(df, stages, cluster, workload.template)
    df.insert(0, "seed", seed)
    df.insert(0, "strategy", strategy)
    df.insert(0, "scenario", scenario)
    rec = recovery_times(stages, events, cluster, workload.template)
    lat = df.loc[df["ok"], "latency_ms"].to_numpy(dtype=float)
    row = {
        "scenario": scenario, "strategy": strategy, "policy": policy, "seed": seed,
        "jobs": int(len(df)), "completed": int(df["ok"].sum()),
        "jobs_lost": int((~df["ok"]).sum()),
        "rejected": int(df["rejected"].sum()) if "rejected" in df else 0,
        "deadline_miss_rate": float(df["missed"].mean()) if len(df) else math.nan,
        "recovery_ms_mean": float(np.mean(rec)) if rec else math.nan,
        "recovery_ms_max": float(np.max(rec)) if rec else math.nan,
        "affected_stages": len(rec),
        "failovers": int(df["failed_over"].fillna(0).sum()) if "failed_over" in df else 0,
        "extra_work_ms": float(df["extra_work_ms"].fillna(0).sum()) if "extra_work_ms" in df else 0.0,
        "latency_mean_ms": float(lat.mean()) if lat.size else math.nan,
        # data copied to shadows while primaries ran (shadow-prestage), per job: the cost of pre-staging
        "prestaged_mb_per_job": float(df["prestaged_mb"].fillna(0).mean()) if "prestaged_mb" in df and len(df)
        else 0.0,
        "_recovery": rec, "_regime": measured,
        "_noise": getattr(sub, "noise", None),     # host noise of a wall-clock run (kube with real nodes)
    }
    return row, df


class _NoShadow:
    """The twin as seen by a strategy without shadows: same plans, shadow dropped."""

    def __init__(self, twin):
        self._twin = twin
        self.state = twin.state

    def plan(self, job, **kw):
        plan = self._twin.plan(job, **kw)
        plan.shadow = {}
        return plan


class _WithShadow:
    """The twin as seen by a shadow strategy: the policy's shadows, completed where it left a stage without
    one (``cvar`` keeps none) by the twin's failover cost (:func:`dtlab.policies.failover.plan_failover`), so
    every strategy named shadow-* really has shadows; with ``prestage`` the shadows are chosen for the
    pre-staged cost and the stages worth it get their inputs copied while the primary runs."""

    def __init__(self, twin, prestage: bool = False, price_ms_per_mb: float = 0.0, zone_share: float = 1.0):
        self._twin = twin
        self.state = twin.state
        self.prestage = prestage
        self.price = price_ms_per_mb
        self.zone_share = zone_share

    def plan(self, job, **kw):
        from ..policies.failover import plan_failover

        from ..predict import score_plan

        plan = self._twin.plan(job, **kw)
        snap = kw.get("snapshot") or self.state.snapshot()
        fo = plan_failover(snap, job, plan.placement, plan.shadow, self._twin.timing,
                           prestage=self.prestage, price_ms_per_mb=self.price, zone_share=self.zone_share)
        if (fo.shadow, fo.prestage) != (plan.shadow, plan.prestage):
            # the prediction the run records is of what is submitted: these shadows, this pre-staging
            plan.prediction.update(score_plan(snap, job, plan.placement, fo.shadow, predictor=plan.predictor,
                                              samples=plan.samples, rng=np.random.default_rng(kw.get("seed", 0)),
                                              timing=self._twin.timing, prestage=fo.prestage))
        plan.shadow, plan.prestage = fo.shadow, fo.prestage
        return plan


def _replanner(twin, sub, policy: str, p: dict, seed: int):
    """The engine's replan callback: re-plan the job from scratch on what the twin knows."""
    counter = [0]

    def replan(job, stage_id: str, failed: str):
        snap = twin.state.snapshot()
        nodes = {name: (replace(st, up=False) if name == failed or not sub.node_up(name) else st)
                 for name, st in snap.nodes.items()}
        view = replace(snap, nodes=MappingProxyType(nodes))
        counter[0] += 1
        try:
            plan = twin.plan(job, policy=policy, samples=p["samples"], predictor=p["predictor"],
                             seed=child_seed(seed, "V4-replan", counter[0]) % (2 ** 63), snapshot=view)
        except InfeasibleError:
            return None
        return plan.placement.get(stage_id)
    return replan


def recovery_times(stages: pd.DataFrame, events, cluster, template) -> list[float]:
    """Per affected stage attempt, ms from the fault's start until the stage ran again.

    Node failure / pod kill: attempts that ended failed/lost/killed at the fault's start on one of
    its nodes (any node for a pod kill); recovery = start of the next attempt of that stage - fault
    start (no next attempt: the job was lost, not counted here). Partition / degradation: attempts
    whose inputs crossed the faulted pair and were waiting during the fault; recovery = start -
    max(ready, fault start).
    """
    if stages is None or stages.empty:
        return []
    exact = "outcome" in stages.columns    # sim: engine time, the failure is the fault's instant
    if not exact:                          # wall-clock substrates (kube, fabric): ok + reason only
        ok = stages["ok"]
        stages = stages.assign(outcome=np.where(ok.isna(), "unfinished",
                                                np.where(ok.astype("boolean").fillna(False), "ok", "failed")))
    st = stages.sort_values(["job", "stage", "attempt"])
    out: list[float] = []
    by_key = {k: g for k, g in st.groupby(["job", "stage"], sort=False)}
    ok_node = {(r.job, r.stage): r.node for r in st[st["outcome"] == "ok"].itertuples()}
    zone = {n.name: n.zone for n in cluster.nodes}
    for ev in events:
        t0 = ev.start_s * 1000.0
        if ev.kind in ("node-failure", "pod-kill"):
            failed = st[st["outcome"].isin(FAILED_OUTCOMES)]
            if exact:
                hit = failed[(failed["end_ms"] - t0).abs() < 1e-6]
            else:      # observed after the fault's instant: failed while the fault lasted (kill: the first)
                t1 = ev.end_s * 1000.0 if ev.duration_s is not None else math.inf
                hit = failed[(failed["end_ms"] >= t0 - 1e-6) & (failed["end_ms"] <= t1)]
                if ev.kind == "pod-kill":
                    hit = hit[(hit["job"] == ev.job) & ((hit["stage"] == ev.stage) if ev.stage else True)]
                    hit = hit.groupby(["job", "stage"], sort=False).head(1)
            if ev.kind == "node-failure":
                hit = hit[hit["node"].isin(ev.nodes)]
            for r in hit.itertuples():
                later = by_key[(r.job, r.stage)]
                nxt = later[(later["attempt"] > r.attempt) & later["start_ms"].notna()]
                if len(nxt):
                    out.append(float(nxt["start_ms"].iloc[0]) - t0)
            continue
        if "ready_ms" not in st.columns:   # no data path (kube on KWOK): inputs never wait on a link
            continue
        t1 = ev.end_s * 1000.0
        side_a, side_b = set(ev.sides[0]), set(ev.sides[1])
        waiting = st[(st["ready_ms"] < t1) & (st["start_ms"] > t0)]
        for r in waiting.itertuples():
            stage = next((s for s in template.stages if s.id == r.stage), None)
            if stage is None:
                continue
            if stage.after:
                sources = {s for s in (ok_node.get((r.job, a)) for a in stage.after) if s is not None and s != r.node}
                crosses = any((s in side_a and r.node in side_b) or (s in side_b and r.node in side_a)
                              for s in sources)
            else:
                origin = {n for n, z in zone.items() if z == template.origin_zone}
                crosses = bool(origin & side_a and r.node in side_b or origin & side_b and r.node in side_a)
            if crosses:
                out.append(float(r.start_ms) - max(float(r.ready_ms), t0))
    return out
