"""Shadows that pay off (issue 18 item 5): the twin's failover cost picks the shadow, pre-staging copies a
stage's inputs to it while the primary runs (engine + sim substrate), and V4 says per scenario whether
shadows beat re-planning (paired by seed, net of the no-fault run)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dtlab import SpecError, load_cluster, load_job
from dtlab.des.engine import Engine
from dtlab.experiments import v4
from dtlab.model import cluster_from_dict, job_from_dict
from dtlab.policies.failover import plan_failover
from dtlab.state import ClusterState
from dtlab.timing import TimingModel

EXACT = TimingModel(service_sigma=0.0, detect_ms=300.0, replan_ms=20.0)
TWO = cluster_from_dict({"nodes": [{"name": "a", "cores": 1, "zone": "z1"}, {"name": "b", "cores": 1, "zone": "z2"}],
                         "links": [{"a": "z1", "b": "z2", "latency_ms": 10, "bandwidth_mbps": 8}]})
JOB = job_from_dict({"metadata": {"name": "j", "origin": {"zone": "z1"}},
                     "spec": {"input_mb": 1, "stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 1000}}]}})


def _run(prestage, fail_at=500.0):
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    eng.submit(JOB, {"s": "a"}, {"s": "b"}, prestage=prestage)
    if fail_at is not None:
        eng.fail_node("a", at_ms=fail_at)
    eng.run()
    return eng.job_records()[0], pd.DataFrame(eng.stage_records())


def test_prestaged_input_is_waited_for_not_sent_again_and_its_cost_is_counted():
    plain, _ = _run(None)
    staged, stages = _run(["s"])
    assert plain["failed_over"] == staged["failed_over"] == 1 and not staged["lost"]
    copy_ms = EXACT.mean_transfer_ms(1.0, TWO.link("a", "b"))
    assert copy_ms > 800        # the copy is still in flight when the failure is detected (500 + 300 ms)
    # without pre-staging the input leaves at detection (800 ms); with it, at dispatch (0 ms)
    assert plain["end_ms"] - staged["end_ms"] == pytest.approx(800.0, abs=1e-6)
    retry = stages[stages["attempt"] == 2].iloc[0]
    assert retry["node"] == "b" and retry["start_ms"] == pytest.approx(copy_ms, rel=1e-6)
    assert plain["prestaged_mb"] == 0 and staged["prestaged_mb"] == pytest.approx(1.0)
    # the copy costs its MB whether or not a failover uses it
    quiet, _ = _run(["s"], fail_at=None)
    assert quiet["prestaged_mb"] == pytest.approx(1.0) and quiet["failed_over"] == 0
    assert quiet["end_ms"] == pytest.approx(_run(None, fail_at=None)[0]["end_ms"])


def test_prestage_needs_a_shadow_other_than_the_primary():
    eng = Engine(TWO, EXACT, np.random.default_rng(0))
    with pytest.raises(SpecError, match="prestage.s"):
        eng.submit(JOB, {"s": "a"}, None, prestage=["s"])
    with pytest.raises(SpecError, match="prestage.x"):
        eng.submit(JOB, {"s": "a"}, {"s": "b"}, prestage=["x"])


HETERO = load_cluster("examples/cluster-hetero.yaml")
PIPELINE = load_job("examples/job-pipeline.yaml")
ON_EDGE = {"decode": "edge-a-0", "infer": "edge-a-0", "publish": "edge-a-0"}


def test_shadow_domain_follows_the_zone_failure_share():
    snap = ClusterState(HETERO).snapshot()
    timing = TimingModel()
    zone = {n.name: n.zone for n in HETERO.nodes}
    # independent node failures: the cheap shadow next door (inputs are local, ~1 s) beats the uplink (~20 s)
    near = plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=0.0)
    assert zone[near.shadow["decode"]] == "edge-a"
    # whole-zone failures: a shadow in the same zone is useless, so it goes elsewhere and costs more
    far = plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=1.0)
    assert all(zone[n] != "edge-a" for n in far.shadow.values())
    assert far.cost_ms["decode"] > near.cost_ms["decode"] + 5_000
    # the policy's own shadows are kept when asked
    kept = plan_failover(snap, PIPELINE, ON_EDGE, {"decode": "cloud-1"}, timing, keep_policy_shadows=True)
    assert kept.shadow["decode"] == "cloud-1" and set(kept.shadow) == {"decode", "infer", "publish"}
    with pytest.raises(SpecError, match="zone_share"):
        plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=1.5)


def test_prestage_only_where_the_expected_saving_is_worth_the_copy():
    snap = ClusterState(HETERO).snapshot()
    timing = TimingModel()
    free = plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=1.0, prestage=True, price_ms_per_mb=0.0)
    assert free.prestage and all(free.saving_ms[s] > 0 for s in free.prestage)
    assert free.prestage_mb == pytest.approx(sum(PIPELINE.input_mb if not PIPELINE.stages[PIPELINE.stage_index[s]].after
                                                 else sum(PIPELINE.stages[PIPELINE.stage_index[p]].output_mb
                                                          for p in PIPELINE.stages[PIPELINE.stage_index[s]].after)
                                                 for s in free.prestage))
    # pre-staging lowers the twin's failover cost of the stages it copies
    plain = plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=1.0)
    assert all(free.cost_ms[s] < plain.cost_ms[s] for s in free.prestage)
    dear = plan_failover(snap, PIPELINE, ON_EDGE, {}, timing, zone_share=1.0, prestage=True, price_ms_per_mb=1e6)
    assert dear.prestage == [] and dear.prestage_mb == 0 and dear.shadow == plain.shadow


def _table(rows):
    return pd.DataFrame([{"scenario": sc, "strategy": st, "seed": sd, "deadline_miss_rate": m,
                          "recovery_ms_mean": r, "failovers": f, "prestaged_mb_per_job": 0.0}
                         for sc, st, sd, m, r, f in rows])


def test_shadow_vs_replan_is_paired_by_seed_and_net_of_the_control():
    rows = []
    for sd in range(4):
        rows += [("none", "shadow-resilient", sd, 0.10, np.nan, 0), ("none", "replan-greedy", sd, 0.05, np.nan, 0),
                 # the fault costs shadows 0.1 and re-planning 0.3 (+ a little seed noise)
                 ("f", "shadow-resilient", sd, 0.20 + 0.01 * sd, 1000.0, 2), ("f", "replan-greedy", sd, 0.35, 30000.0, 2),
                 ("link", "shadow-resilient", sd, 0.10, np.nan, 0), ("link", "replan-greedy", sd, 0.05, np.nan, 0)]
    m = v4.shadow_vs_replan(_table(rows))
    k = "vs_replan.f.shadow-resilient"
    assert m[f"{k}.delta_miss"] == pytest.approx(0.20 + 0.015 - 0.35, abs=1e-9)
    assert m[f"{k}.delta_miss_net"] == pytest.approx(0.215 - 0.10 - 0.30, abs=1e-9)
    assert m[f"{k}.delta_miss_net.ci_low"] <= m[f"{k}.delta_miss_net"] <= m[f"{k}.delta_miss_net.ci_high"] < 0
    assert m[f"{k}.verdict"] == "shadows" and m[f"{k}.seeds"] == 4
    assert m[f"{k}.delta_recovery"] == pytest.approx(-29000.0)
    assert m[f"{k}.verdict_recovery"] == "shadows recover sooner"
    table = v4.shadow_vs_replan_table(m)
    assert len(table) == 2 and set(table["scenario"]) == {"f", "link"}
    assert table.set_index(["scenario", "strategy"]).loc[("f", "shadow-resilient"), "verdict"] == "shadows"
    assert "recovery 1000 vs 30000 ms" in m[f"{k}.why"]
    # a link fault: nobody moves; the raw difference is the placement policy's, the net one is 0
    k = "vs_replan.link.shadow-resilient"
    assert m[f"{k}.delta_miss_net"] == pytest.approx(0.0) and m[f"{k}.verdict"] == "no difference"
    assert "no stage lost its node" in m[f"{k}.why"]
    assert not any(key.startswith("vs_replan.none.") for key in m)


def test_v4_prestage_strategy_moves_data_and_only_it(tmp_path):
    r = v4.run({"jobs": 12, "seeds": [0, 1], "samples": 16, "scenarios": ["none", "edge-node-loss"],
                "strategies": ["shadow-resilient", "shadow-prestage", "replan-greedy"],
                "prestage_price_ms_per_mb": 0.0})
    t = r.table
    assert (t.loc[t["strategy"] == "shadow-prestage", "prestaged_mb_per_job"] > 0).all()
    assert (t.loc[t["strategy"] != "shadow-prestage", "prestaged_mb_per_job"] == 0).all()
    for strategy in ("shadow-resilient", "shadow-prestage"):
        assert r.metrics[f"vs_replan.edge-node-loss.{strategy}.verdict"] in ("shadows", "re-planning", "no difference")
        assert r.metrics[f"vs_replan.edge-node-loss.{strategy}.why"]
    assert r.metrics["prestage_price_ms_per_mb"] == 0.0
    with pytest.raises(SpecError, match="zone_failure_share"):
        v4.run({"jobs": 2, "seeds": [0], "zone_failure_share": 2})
    with pytest.raises(SpecError, match="prestage_price_ms_per_mb"):
        v4.run({"jobs": 2, "seeds": [0], "prestage_price_ms_per_mb": -1})


def test_predictors_see_the_prestaged_copy():
    """The twin's own prediction counts pre-staging: with a likely failure, the pre-staged plan is predicted
    faster, by fast and des alike (the same model)."""
    import dataclasses

    from dtlab.predict import sample_latencies

    risky = cluster_from_dict({"nodes": [{"name": "a", "cores": 1, "zone": "z1", "fail_prob": 0.9},
                                         {"name": "b", "cores": 1, "zone": "z2"}],
                               "links": [{"a": "z1", "b": "z2", "latency_ms": 10, "bandwidth_mbps": 8}]})
    snap = ClusterState(risky).snapshot()
    means = {}
    for predictor in ("fast", "des"):
        for staged in (None, ["s"]):
            lat = sample_latencies(snap, JOB, {"s": "a"}, {"s": "b"}, predictor=predictor, samples=400,
                                   rng=np.random.default_rng(1), timing=dataclasses.replace(EXACT),
                                   prestage=staged)
            means[(predictor, bool(staged))] = float(np.mean(lat))
    for predictor in ("fast", "des"):
        # a failure at U * 1000 ms is detected 300 ms later; the copy saves up to that much of the re-send
        gain = means[(predictor, False)] - means[(predictor, True)]
        assert 500 < gain < 1300, (predictor, gain)
    assert means[("fast", True)] == pytest.approx(means[("des", True)], rel=0.05)
