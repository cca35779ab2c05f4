"""V6 on the fabric: drift as a CPU-quota change during the run, windows within 10 %, calibration recorded.

Unit tests (no root) check the params and the metric; the heavy test runs the smoke file
params/smoke/V6-fabric.yaml on real processes (about a minute) and checks that the quota really
changed mid-run, that the stages slowed down after it and that every run records its calibration.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

import dtlab
import dtlab.fabric
from dtlab.errors import SpecError
from dtlab.experiments import v6
from dtlab.substrates.fabric import check_cpu_drift
from tests.heavy import require

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = dtlab.load_cluster(ROOT / "examples/cluster-hetero.yaml")


def test_quota_drift_defaults_to_every_node_at_a_third_of_the_arrivals():
    p = {**v6.DEFAULTS, "jobs": 30, "rate_per_s": 0.5}
    steps = v6.quota_drift_steps(p, CLUSTER)
    assert [s["node"] for s in steps] == [n.name for n in CLUSTER.nodes]
    assert all(s["at_s"] == pytest.approx(20.0) and s["factor"] == 0.5 for s in steps)


@pytest.mark.parametrize("drift,field", [
    ({"nodes": ["nope"], "at_s": 1, "factor": 0.5}, "quota_drift.nodes[0]"),
    ({"nodes": None, "at_s": 1, "factor": 0}, "quota_drift.factor"),
    ({"nodes": None, "at_s": -1, "factor": 0.5}, "quota_drift.at_s"),
    ({"nodes": None, "at_s": 1, "factor": 0.5, "speed": 2}, "quota_drift.speed"),
    ({"nodes": [], "at_s": 1, "factor": 0.5}, "quota_drift.nodes"),
])
def test_bad_quota_drift_names_the_field(drift, field):
    with pytest.raises(SpecError) as e:
        v6.check({"quota_drift": drift})
    assert e.value.field == field


@pytest.mark.parametrize("steps,field", [
    ([{"node": "cloud-0", "at_s": 1}], "substrate_opts.cpu_drift[0]"),
    ([{"node": "x", "at_s": 1, "factor": 0.5}], "substrate_opts.cpu_drift[0].node"),
    ([{"node": "cloud-0", "at_s": 1, "factor": 11}], "substrate_opts.cpu_drift[0].factor"),
    ("cloud-0", "substrate_opts.cpu_drift"),
])
def test_fabric_cpu_drift_is_checked(steps, field):
    with pytest.raises(SpecError) as e:
        check_cpu_drift(steps, CLUSTER)
    assert e.value.field == field
    ok = check_cpu_drift([{"node": "cloud-1", "at_s": 9, "factor": 0.5}, {"node": "cloud-0", "at_s": 2, "factor": 2}],
                         CLUSTER)
    assert [s["at_s"] for s in ok] == [2.0, 9.0]


def test_drift_slowdown_compares_stage_times_before_and_after():
    st = pd.DataFrame({"stage": ["a", "a", "a", "b", "b"], "ok": True,
                       "start_ms": [0, 10, 200, 0, 300], "end_ms": [50, 60, 300, 20, 340],
                       "duration_ms": [50, 50, 100, 20, 40]})
    assert v6.drift_slowdown(st, 100.0) == pytest.approx(2.0)
    assert math.isnan(v6.drift_slowdown(st, 1000.0))


def test_windows_within_10pct_is_the_share_of_windows_per_mode_and_seed():
    table = pd.DataFrame({"mode": ["static"] * 4 + ["online"] * 4, "seed": [0, 0, 1, 1] * 2,
                          "mape": [0.05, 0.2, 0.1, float("nan"), 0.01, 0.02, 0.5, 0.6]})
    w = v6.windows_within(table).set_index(["mode", "seed"])["windows_within_10pct"]
    assert w[("static", 0)] == 0.5 and w[("static", 1)] == 1.0      # 0.10 counts; an empty window does not
    assert w[("online", 0)] == 1.0 and w[("online", 1)] == 0.0


def test_v6_sim_smoke_reports_windows_within_10pct():
    m = v6.run({**v6.SMOKE, "seeds": [0]}).metrics
    for mode in ("static", "online"):
        x = m[f"{mode}.windows_within_10pct"]
        assert 0.0 <= x <= 1.0
        assert 0.0 <= m[f"{mode}.windows_within_10pct.ci_low"] <= m[f"{mode}.windows_within_10pct.ci_high"] <= 1.0
    assert m["substrate"] == "sim" and m["calibration"]["compute"].startswith("none")


def test_v6_on_the_fabric_smoke_drifts_the_quota_mid_run():
    ok, why = dtlab.fabric.available()
    require(ok, f"fabric: {why}")
    params = yaml.safe_load((ROOT / "params/smoke/V6-fabric.yaml").read_text())
    r = v6.run({**params, "modes": ["static"]})
    m = r.metrics
    assert m["substrate"] == "fabric"
    assert m["substrate_metadata"]["cpu_drift"] and all(s["factor"] == 0.5 for s in m["substrate_metadata"]["cpu_drift"])
    cal = m["calibration"]
    assert cal["compute"] and cal["network"] and cal["startup"] and cal["startup_ms"]["native"] > 0, cal
    x = m["static.windows_within_10pct"]
    assert x is not None and 0.0 <= x <= 1.0
    jobs = r.extra["jobs"]
    assert len(jobs) == params["jobs"] and jobs["ok"].all()
    assert math.isfinite(m["static.mape"])
    # the quota really changed mid-run on every node, and the stages after it ran slower (x2 nominal)
    runs = r.extra["runs"]
    nodes = dtlab.load_cluster(ROOT / params["cluster"]).nodes
    assert (runs["drift_steps_applied"] == len(nodes)).all()
    assert m["static.drift_stage_slowdown"] > 1.3, m["static.drift_stage_slowdown"]
