"""V1's honest statistics: paired comparison with the best baseline, CIs inside the possible range."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dtlab import results
from dtlab.errors import SpecError
from dtlab.experiments import v1
from dtlab.experiments.summary import metric_bounds
from dtlab.stats import paired_diff_ci


def _table(rates=(1.0,), seeds=range(6)):
    rng = np.random.default_rng(0)
    rows, jobs = [], []
    for rate in rates:
        for seed in seeds:
            world = rng.normal(0, 0.1)                # shared by every policy of this seed
            for policy, miss, p95 in (("greedy", 0.30, 5000), ("cvar", 0.35, 5200), ("k8s-default", 0.50, 9000),
                                      ("heft", 0.45, 8000)):
                m = min(1.0, max(0.0, miss + world + rng.normal(0, 0.01)))
                rows.append({"policy": policy, "rate_per_s": rate, "seed": seed, "miss_rate": m,
                             "latency_p95_ms": p95 * (1 + world)})
                lat = rng.lognormal(np.log(p95 / 3), 0.5, 20)
                jobs.append(pd.DataFrame({"policy": policy, "rate_per_s": rate, "seed": seed, "ok": True,
                                          "latency_ms": lat, "missed": rng.random(20) < m}))
    return pd.DataFrame(rows), pd.concat(jobs, ignore_index=True)


def test_compare_best_is_the_paired_difference_of_the_best_of_each_side():
    table, jobs = _table()
    out = v1.compare_best(table, jobs, dict(v1.DEFAULTS["margins"]))
    key = "vs_best_baseline.r1.miss_rate"
    assert out[f"{key}.dt_policy"] == "greedy" and out[f"{key}.baseline_policy"] == "heft"
    wide = table.pivot_table(index="seed", columns="policy", values="miss_rate")
    ci = paired_diff_ci(wide["greedy"].tolist(), wide["heft"].tolist())
    assert out[key] == pytest.approx(ci.mean, abs=1e-6)
    assert out[f"{key}.ci_low"] == pytest.approx(ci.low, abs=1e-6)
    # the shared world cancels in the pairs: a narrow interval around -0.15, well inside the margin
    assert out[f"{key}.ci_high"] < -0.1 and out[f"{key}.noninferior"] and out[f"{key}.ci_narrower_than_diff"]
    assert out[f"{key}.seeds"] == 6 and out[f"{key}.seeds_needed"] >= 2
    assert out[f"{key}.seeds_for_noninferiority"] == 2       # shown already: the smallest paired design
    p95 = "vs_best_baseline.r1.latency_p95_ms"
    heft_p95 = table[table.policy == "heft"]["latency_p95_ms"].mean()
    assert out[f"{p95}.margin"] == pytest.approx(0.05 * heft_p95, rel=1e-6)
    assert out[f"{p95}.noninferior"]
    for policy in ("greedy", "heft"):
        lo, hi = out[f"{policy}.r1.pooled_miss_rate.ci_low"], out[f"{policy}.r1.pooled_miss_rate.ci_high"]
        assert 0.0 <= lo <= out[f"{policy}.r1.pooled_miss_rate"] <= hi <= 1.0
        assert 0.0 <= out[f"{policy}.r1.pooled_p95_ms.ci_low"] <= out[f"{policy}.r1.pooled_p95_ms.ci_high"]


def test_an_inferior_dt_policy_is_not_called_noninferior():
    table, jobs = _table()
    worse = table.copy()
    worse.loc[worse.policy.isin(["greedy", "cvar"]), "miss_rate"] += 0.2
    out = v1.compare_best(worse, jobs, dict(v1.DEFAULTS["margins"]))
    assert out["vs_best_baseline.r1.miss_rate"] > 0 and not out["vs_best_baseline.r1.miss_rate.noninferior"]
    assert out["vs_best_baseline.r1.miss_rate.seeds_for_noninferiority"] is None    # no seeds can show it
    assert "r1 miss_rate" in results.comparison_line(out) and "(mean past the margin)" in results.comparison_line(out)


def test_seeds_for_noninferiority_is_where_the_t_interval_reaches_the_margin():
    """At the measured mean and sd, n seeds put the interval's upper end at or below the margin and n - 1
    do not (the claim's seed count, for cells a run could not decide)."""
    from dtlab.stats import t975
    sd, mean, margin = 0.25, -0.125, 0.02
    n = v1.seeds_for_noninferiority(sd, mean, margin)
    upper = lambda k: mean + t975(k - 1) * sd / k ** 0.5      # noqa: E731
    assert n is not None and upper(n) < margin <= upper(n - 1)
    assert v1.seeds_for_noninferiority(sd, 0.02, 0.02) is None
    assert v1.seeds_for_noninferiority(sd, float("nan"), 0.02) is None


def test_v1_smoke_cis_stay_in_range_and_the_comparison_is_reported():
    r = v1.run({**v1.SMOKE, "jobs": 12})
    m = r.metrics
    for key, value in m.items():
        if not key.endswith(".ci_low") or value is None:
            continue
        name = key[: -len(".ci_low")]
        lo, hi = value, m[name + ".ci_high"]
        metric = name.rsplit(".", 1)[1]
        bounds = (-1.0, 1.0) if name.startswith("vs_best_baseline") and metric == "miss_rate" else \
            (-math.inf, math.inf) if name.startswith("vs_best_baseline") else metric_bounds(metric)
        if metric.startswith("pooled_"):
            bounds = metric_bounds(metric.replace("pooled_", ""))
        assert bounds[0] <= lo <= hi <= bounds[1], (name, lo, hi)
    table = results.comparison_table(m)
    assert set(table["metric"]) == {"miss_rate", "latency_p95_ms"} and len(table) == 2
    assert set(table["dt_policy"]) <= set(v1.DT_POLICIES)
    assert not set(table["baseline_policy"]) & set(v1.DT_POLICIES)
    line = results.comparison_line(m)
    assert line.startswith("DT vs best baseline (paired, n=2)") and "r1 miss_rate" in line
    assert results.comparison_line({"x": 1.0}) == ""


def test_margins_are_validated():
    with pytest.raises(SpecError) as e:
        v1.run({**v1.SMOKE, "margins": {"latency_mean_ms": 0.1}})
    assert e.value.field == "margins.latency_mean_ms"
    with pytest.raises(SpecError) as e:
        v1.run({**v1.SMOKE, "margins": {"miss_rate": -1}})
    assert e.value.field == "margins.miss_rate"


def test_full_params_sweep_light_to_past_saturation_with_the_strong_baselines():
    assert len(v1.DEFAULTS["rates_per_s"]) >= 4 and min(v1.DEFAULTS["rates_per_s"]) <= 0.5 \
        and max(v1.DEFAULTS["rates_per_s"]) >= 3.0
    assert {"k8s-default", "heft", "load-risk-balancing"} <= set(v1.DEFAULTS["policies"])


def test_fabric_sizes_sweep_four_rates_with_the_strong_baselines_within_budget():
    """Issue 19: V1 on real execution has >= 4 rates; the sizes fit ~15 minutes by the measured cost of a
    fabric run (at most ~6.5 s of set-up and drain + the arrival window; 7.7 s per run measured, v1.py)."""
    f = v1.FABRIC_SIZES
    assert len(f["rates_per_s"]) >= 4 and min(f["rates_per_s"]) <= 1.0 and max(f["rates_per_s"]) >= 3.0
    assert {"k8s-default", "heft", "load-risk-balancing"} <= set(f["policies"])
    assert set(v1.DT_POLICIES) & set(f["policies"]) and len(f["seeds"]) >= 4
    minutes = len(f["seeds"]) * len(f["policies"]) * sum(6.5 + f["arrival_window_s"] for _r in f["rates_per_s"]) / 60
    assert minutes <= 17.5
    # the window makes the offered load grow with the rate (a fixed count did not, measured)
    counts = [v1.jobs_at(r, 6, f["arrival_window_s"]) for r in f["rates_per_s"]]
    assert counts == sorted(counts) and counts[-1] >= 3 * counts[0]
    assert v1.jobs_at(3.0, 7, None) == 7 and v1.jobs_at(0.1, 7, 4.0) == 2 and v1.jobs_at(2.5, 7, 4.0) == 10
    with pytest.raises(SpecError, match="arrival_window_s"):
        v1.run({**v1.SMOKE, "arrival_window_s": -1})
    import yaml
    assert yaml.safe_load(open("params/V1.yaml"))["fabric"]["rates_per_s"] == f["rates_per_s"]


def test_comparison_table_parses_fractional_rates():
    table, jobs = _table(rates=(0.5, 2.0))
    m = v1.compare_best(table, jobs, dict(v1.DEFAULTS["margins"]))
    t = results.comparison_table(m)
    assert list(t["rate"]) == ["r0.5", "r0.5", "r2", "r2"]
    assert "r0.5 miss_rate" in results.comparison_line(m)


def test_seeds_needed_uses_the_t_quantile():
    from dtlab.stats import t975
    n = v1.seeds_needed_t(0.21, 0.26)
    assert n is not None and t975(n - 1) * 0.21 / n ** 0.5 < 0.26 <= t975(n - 2) * 0.21 / (n - 1) ** 0.5
    assert v1.seeds_needed_t(0.0, 0.1) == 2 and v1.seeds_needed_t(1.0, 0.0) is None
