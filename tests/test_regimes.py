"""Each experiment's smoke run lands in the regime it is designed for (issue 19), and the regime
measurements themselves are right on hand-checked inputs.

A regression that saturates V4's world (every policy misses with no fault), hides the faults behind
generous deadlines, or lets V6's drift saturate the cluster fails here before it reaches a figure.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from dtlab.experiments import params as common, regime, v1, v2, v3, v4, v5, v6
from dtlab.model import load_cluster, load_job

ROOT = common.REPO_ROOT
CLUSTER = load_cluster(ROOT / "examples/cluster-hetero.yaml")
JOB = load_job(ROOT / "examples/job-pipeline.yaml")


def _smoke(name: str, **over) -> dict:
    params = yaml.safe_load((ROOT / "params" / "smoke" / f"{name}.yaml").read_text()) or {}
    return {**params, **over}


# ---------------------------------------------------------------- measurements

def test_zone_utilisation_is_the_claimed_share_of_cores_capped_by_the_node():
    # edge-a-0 (4 cores): infer (2 cpu) 0..1000 and decode (1 cpu) 500..1500 -> claims 2, 3, 1 over
    # 500 ms each = 3000 core-ms; edge-a-1 (4 cores): three infers (6 cpu > 4) 0..1000 -> capped 4000.
    stages = pd.DataFrame([
        {"job": "a", "stage": "infer", "node": "edge-a-0", "start_ms": 0.0, "end_ms": 1000.0},
        {"job": "b", "stage": "decode", "node": "edge-a-0", "start_ms": 500.0, "end_ms": 1500.0},
        *[{"job": j, "stage": "infer", "node": "edge-a-1", "start_ms": 0.0, "end_ms": 1000.0} for j in "cde"],
    ])
    util = regime.zone_utilisation(stages, CLUSTER, JOB, window_ms=2000.0)
    assert util["edge-a"] == pytest.approx((3000.0 + 4000.0) / (8 * 2000.0))
    assert util["cloud"] == 0.0 and util["edge-b"] == 0.0


def test_link_load_counts_inputs_and_cross_zone_outputs():
    # job x: input 5 MB edge-a -> decode in cloud, its 20 MB output stays in cloud, infer's 1 MB goes to edge-b
    stages = pd.DataFrame([
        {"job": "x", "stage": "decode", "node": "cloud-0", "start_ms": 0.0, "end_ms": 1.0, "outcome": "ok"},
        {"job": "x", "stage": "infer", "node": "cloud-1", "start_ms": 1.0, "end_ms": 2.0, "outcome": "ok"},
        {"job": "x", "stage": "publish", "node": "edge-b-0", "start_ms": 2.0, "end_ms": 3.0, "outcome": "ok"},
        {"job": "x", "stage": "publish", "node": "edge-a-0", "start_ms": 1.5, "end_ms": 1.6, "outcome": "failed"},
    ])
    load = regime.link_load(stages, CLUSTER, JOB, window_ms=1000.0)
    assert load["cloud~edge-a"] == pytest.approx(8 * 5 / 100.0)     # 40 Mbit over 100 Mbit/s x 1 s
    assert load["cloud~edge-b"] == pytest.approx(8 * 1 / 200.0)
    assert load["edge-a~edge-b"] == 0.0                                # the failed attempt moved no data


def test_deadline_slack_scales_the_isolated_latency():
    wl = common.load_workload_param("examples/workload.yaml", 5, 0.5)
    out, iso = regime.with_deadline_slack(wl, CLUSTER, 2.0)
    assert iso > 0 and out.template.deadline_ms == pytest.approx(2.0 * iso, abs=0.1)
    kept, _ = regime.with_deadline_slack(wl, CLUSTER, None)
    assert kept.template.deadline_ms == wl.template.deadline_ms
    with pytest.raises(Exception, match="deadline_slack"):
        regime.with_deadline_slack(wl, CLUSTER, 0.0)


def test_deadline_includes_the_start_up_of_the_timing_the_twin_plans_with():
    """Issue 16 (d): on kube with real nodes the twin's timing carries the measured container start-up
    per format; V4's deadline is set with that timing (once, by the first run), not the default's."""
    from dtlab.timing import TimingModel
    wl = common.load_workload_param("examples/workload.yaml", 5, 0.5)
    _, iso0 = regime.with_deadline_slack(wl, CLUSTER, 2.0)
    slow = TimingModel().with_startup({"native": 400.0, "wasm": 400.0, "qemu-arm64": 400.0,
                                       "qemu-riscv64": 400.0, "qemu-amd64": 400.0})
    out, iso = regime.with_deadline_slack(wl, CLUSTER, 2.0, timing=slow)
    n = len(wl.template.stages)                  # a chain: every stage pays one start-up
    assert iso == pytest.approx(iso0 + n * 400.0, rel=0.05) and out.template.deadline_ms == pytest.approx(2 * iso, abs=0.1)
    d = v4._Deadlines(wl, CLUSTER, 2.0)
    assert d.isolated_ms == pytest.approx(iso0)
    assert d.fix(slow).template.deadline_ms == pytest.approx(2 * iso, abs=0.1)
    assert d.fix(TimingModel()).template.deadline_ms == pytest.approx(2 * iso, abs=0.1)   # the first run decides


# ---------------------------------------------------------------- regimes of the smoke runs

def test_v4_smoke_no_fault_meets_deadlines_and_a_zone_fault_raises_misses():
    m = v4.run(_smoke("V4")).metrics
    best = m["none.best_strategy"]
    assert m["none.best_miss_rate"] <= 0.10, "no fault: the best policy must meet >= 90 % of deadlines"
    effect = m[f"effect.zone-blackout.{best}.deadline_miss_rate"]
    assert effect >= 0.2, f"an edge-a blackout must show in the misses (got {effect})"
    assert m[f"effect.zone-blackout.{best}.deadline_miss_rate.ci_low"] <= effect
    # contended but not saturated, and the deadlines are the ones asked for
    assert 0.05 < m["regime.util.edge-a"] < 0.6
    assert m["regime.nominal_slack"] == 2.5 and m["regime.isolated_ms"] > 0
    assert m["regime.slack.p10"] < m["regime.slack.p50"] < m["regime.slack.p90"]


def test_v6_smoke_drift_does_not_saturate_and_effects_are_paired():
    r = v6.run(_smoke("V6"))
    m = r.metrics
    assert min(m["static.last_window_miss_rate"], m["online.last_window_miss_rate"]) < 0.9
    assert m["regime.util.edge-a"] < 0.7
    for k in ("mape", "miss_rate", "last_window_mape"):
        assert m[f"effect.{k}.ci_low"] <= m[f"effect.{k}"] <= m[f"effect.{k}.ci_high"]
    runs = r.extra["runs"].set_index(["mode", "seed"])
    diffs = [runs.loc[("static", s), "mape"] - runs.loc[("online", s), "mape"] for s in (0, 1)]
    assert m["effect.mape"] == pytest.approx(sum(diffs) / 2, abs=1e-6)       # paired by seed
    assert {"mode", "seed", "window_start_s", "ape", "missed"} <= set(r.extra["jobs"].columns)


def test_v5_smoke_pools_plans_and_records_the_host():
    r = v5.run(_smoke("V5"))
    m = r.metrics
    plans = r.extra["plans"]
    assert len(plans) == 2 * 2 * 2 * 2 * 3          # node counts x policies x modes x seeds x plans
    key = "plan_p99_ms.greedy.warm.100"
    assert m[f"{key}.ci_low"] <= m[key] <= m[f"{key}.ci_high"] and m[f"{key}.ci_low"] >= 0
    assert m["regime.host_cpus"] >= 1 and m["regime.host_load1.start"] is not None
    assert "plan_cpu_p99_ms.cvar.fresh.10" in m
    # the figure takes the pooled plans, and no legend sits on a panel's data
    from dtlab import plots
    fig = plots.figure_v5({"results": r.table, "state": r.extra["state"], "plans": plans})
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "panel (c) has its own legend"
    for ax in legends:
        leg = ax.get_legend()
        if leg is not None:
            assert leg.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0 + 1, \
                f"legend of {ax.get_title(loc='left')!r} overlaps its axes"


@pytest.mark.parametrize("mod,name", [(v1, "V1"), (v2, "V2")])
def test_v1_v2_sim_smoke_record_their_regime(mod, name):
    m = mod.run(_smoke(name, substrate="sim")).metrics
    prefix = "regime.r1." if name == "V1" else "regime."
    assert 0.0 < m[f"{prefix}util.edge-a"] < 1.0
    assert math.isfinite(m[f"{prefix}slack.p50"])


def test_v3_records_the_host_load():
    m = v3.run(_smoke("V3", substrate="sim")).metrics
    assert "regime.host_load1.end" in m and m["regime.host_cpus"] >= 1


@pytest.mark.parametrize("stem", ["V1_controller_vs_baseline", "V2_prediction_accuracy", "V3_execution_overhead",
                                  "V4_shadow_failover", "V5_scalability", "V6_drift_robustness"])
def test_notebook_intro_states_hypothesis_and_regime_and_the_figure_has_a_caption(stem):
    import json
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    intro = "".join(nb["cells"][0]["source"])
    assert "**Hypothesis.**" in intro and "**Regime.**" in intro
    cells = nb["cells"]
    shows = next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and "Image(" in "".join(c["source"]))
    assert cells[shows - 1]["cell_type"] == "markdown" and "What to look for" in "".join(cells[shows - 1]["source"])


def test_wall_clock_substrate_records_without_outcome_or_times_still_measure():
    # kube/fabric stage records: `ok` instead of `outcome`, unfinished attempts without times (object dtype)
    stages = pd.DataFrame([
        {"job": "x", "stage": "decode", "node": "edge-a-0", "start_ms": 0.0, "end_ms": 500.0, "ok": True},
        {"job": "x", "stage": "infer", "node": "cloud-0", "start_ms": 600.0, "end_ms": None, "ok": None},
    ], dtype=object)
    jobs = pd.DataFrame({"planned_ms": [0.0, 1000.0], "deadline_ms": [3000.0, 3000.0],
                         "pred_mean_ms": [1500.0, None]})
    got = regime.measure(jobs, stages, CLUSTER, JOB)
    assert got["util.edge-a"] == pytest.approx(1 * 500.0 / (8 * 1000.0))
    assert got["link_load.cloud~edge-a"] == 0.0          # the unfinished infer moved nothing yet
    assert got["slack.p50"] == pytest.approx(2.0)


def test_paired_seeds_needed_follows_the_spread_of_the_differences():
    from dtlab import stats
    # differences 0.1, 0.3 (mean 0.2, sd 0.1414): half-width 0.1 needs (1.96 * 0.1414 / 0.1)^2 -> 8 seeds
    assert stats.paired_seeds_needed([0.6, 0.8], [0.5, 0.5]) == 8
    assert stats.paired_seeds_needed([0.5, 0.5], [0.5, 0.5]) is None      # no effect to resolve
    assert stats.paired_seeds_needed([0.5], [0.1]) is None                # one pair: no spread


def test_v4_fault_effect_is_the_paired_difference_to_the_no_fault_run():
    rows = [{"scenario": s, "strategy": "x", "seed": k, "deadline_miss_rate": r}
            for s, rates in (("none", [0.0, 0.1, 0.05]), ("f", [0.3, 0.5, 0.35])) for k, r in enumerate(rates)]
    m = v4.fault_effects(pd.DataFrame(rows))
    # per-seed differences 0.3, 0.4, 0.3: mean 1/3, sd 0.0577, t(2) = 4.303 -> +- 0.1434
    assert m["effect.f.x.deadline_miss_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["effect.f.x.deadline_miss_rate.ci_low"] == pytest.approx(1 / 3 - 0.1434, abs=1e-3)
    assert m["none.best_strategy"] == "x" and m["none.best_miss_rate"] == pytest.approx(0.05)
