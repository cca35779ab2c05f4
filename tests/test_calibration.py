"""Online recalibration (dtlab.calibration.online): converges to a known speed error, ignores contention,
stays bounded under heavy-tailed outliers, follows a steady drift."""
import math
from dataclasses import replace

import numpy as np
import pytest

from dtlab import SpecError
from dtlab.calibration.online import DriftLevel, OnlineCalibrator, ps_fractions
from dtlab.model import Cluster, Compute, Job, Node, Stage
from dtlab.plan import Plan
from dtlab.substrates import make_substrate
from dtlab.twin import Twin

SPEC = Cluster("cal", (Node(name="a", arch="amd64", cores=4, speed=1.0, mem_gb=8, formats=("native",), zone="z"),
                       Node(name="b", arch="amd64", cores=4, speed=1.0, mem_gb=8, formats=("native",), zone="z")), ())
# a world with nothing but what a test puts in: no noise, tail, background, failures, link variation
SILENT = {"service_sigma": 0.0, "tail_prob": 0.0, "speed_sigma": 0.0, "background_mean": 0.0,
          "background_step_sd": 0.0, "failure_rate_per_h": 0.0, "link_sigma": 0.0, "telemetry_noise": 0.0,
          "overhead_bias": {"native": 1.0}}


def one_stage(name, ms=1000.0, cpu=1.0):
    return Job(name=name, stages=(Stage(id="s", compute=Compute(cpu=cpu, mem_gb=0.1, duration_ms=ms)),))


def drive(truth: Cluster, schedule, seed=0, **opts):
    """Run ``schedule`` [(at_ms, job, node)] on a sim of ``truth``; the twin and its calibrator know only SPEC."""
    twin = Twin(SPEC)
    cal = OnlineCalibrator(twin, **opts.pop("cal", {}))
    with make_substrate("sim", truth, seed=seed, **{**SILENT, **opts}) as sub:
        def sync():
            events = sub.events()
            twin.state.apply_many(events + cal.observe(events))
        for at, job, node in schedule:
            sub.advance(at)
            sync()
            plan = Plan(job=job.name, policy="pinned", placement={"s": node})
            cal.expect(job, plan)
            sub.submit(plan, job)
        sub.advance(None)
        sync()
    return cal, twin


def test_converges_to_a_known_speed_error_within_10_percent():
    truth = SPEC.with_nodes([replace(SPEC.node("a"), speed=0.5), SPEC.node("b")])   # a is 2x slower than spec
    schedule = [(i * 1500.0, one_stage(f"j{i}"), "ab"[i % 2]) for i in range(40)]
    cal, twin = drive(truth, schedule)
    assert cal.count == {"a": 20, "b": 20}
    assert cal.factor("a") == pytest.approx(2.0, rel=0.10)
    assert cal.factor("b") == pytest.approx(1.0, rel=0.10)
    # and the twin was told: node a's speed is corrected, b's left (near) its spec
    nodes = twin.state.snapshot().nodes
    assert nodes["a"].node.speed == pytest.approx(0.5, rel=0.10)
    assert nodes["b"].node.speed == pytest.approx(1.0, rel=0.10)


def test_busy_but_undrifted_node_keeps_factor_one():
    # b runs 7 one-core stages at once on 4 cores (each gets 4/7 of a core), again and again; a is 2x slow
    truth = SPEC.with_nodes([replace(SPEC.node("a"), speed=0.5), SPEC.node("b")])
    schedule = []
    for burst in range(8):
        t = burst * 5000.0
        schedule += [(t + k, one_stage(f"b{burst}-{k}"), "b") for k in range(7)]
        schedule.append((t + 10, one_stage(f"a{burst}", ms=500.0), "a"))
    cal, _ = drive(truth, schedule)
    assert cal.count["b"] == 56
    assert cal.factor("b") == pytest.approx(1.0, rel=0.05)      # contention is not slowness
    assert cal.factor("a") == pytest.approx(2.0, rel=0.10)
    # elapsed/nominal would have said b is 1.75x slow: the replay is what makes the difference
    assert all(abs(row["log_ratio"]) < 0.05 for row in cal.trace if row["node"] == "b")


def test_background_load_from_telemetry_is_not_slowness():
    # b loses half its cores to background load (telemetry tells the twin) and is oversubscribed by 2 stages
    truth = SPEC
    schedule = []
    for burst in range(6):
        t = 20_000.0 + burst * 6000.0
        schedule += [(t + k, one_stage(f"b{burst}-{k}"), "b") for k in range(4)]
    cal, _ = drive(truth, schedule, background_mean=0.5, background_max=0.5, telemetry_delay_s=0.0)
    assert cal.factor("b") == pytest.approx(1.0, rel=0.05)


def test_bounded_under_heavy_tailed_outliers():
    # every fifth stage takes 1 + 20 * Pareto(1.2) times as long (infinite variance); the median world is spec
    schedule = [(i * 1500.0, one_stage(f"j{i}"), "a") for i in range(60)]
    cal, _ = drive(SPEC, schedule, seed=3, tail_prob=0.2, tail_alpha=1.2, tail_scale=20.0)
    ratios = np.exp([r["log_ratio"] for r in cal.trace])
    assert ratios.max() > 10          # the world did produce huge outliers...
    assert ratios.mean() > 3          # ...enough to wreck a plain mean of ratios
    # while jobs keep arriving, the clipped estimate stays near the median world (1.0)
    live = [r["factor"] for r in cal.trace if r["ts"] <= schedule[-1][0] / 1000.0]
    assert len(live) > 40 and max(live) < 1.3 and abs(math.log(np.median(live))) < 0.1
    # the drain ends with the longest stages only (all outliers, back to back): still bounded
    assert cal.factor("a") < 2.5


def synthetic(cal: OnlineCalibrator, node: str, t_s: float, ratio: float, name: str) -> None:
    """Feed one uncontended stage whose service took ``ratio`` times the twin's nominal 1000 ms.

    (Start and end go in one batch: callers keep calls apart so the event stream stays in time order.)"""
    job = one_stage(name)
    cal.expect(job, Plan(job=name, policy="x", placement={"s": node}))
    cal.observe([{"kind": "job-submit", "job": name, "stage_cpu": {"s": 1.0}, "ts": t_s},
                 {"kind": "stage-start", "job": name, "stage": "s", "node": node, "ts": t_s},
                 {"kind": "stage-end", "job": name, "stage": "s", "node": node, "ok": True,
                  "ts": t_s + ratio}])


def test_one_outlier_moves_a_converged_estimate_only_a_bounded_step():
    cal = OnlineCalibrator(Twin(SPEC))
    for i in range(30):
        synthetic(cal, "a", 2.0 * i, 1.0, f"j{i}")
    before = cal.factor("a")
    synthetic(cal, "a", 61.0, 1000.0, "outlier")
    step = math.log(cal.factor("a") / before)
    assert 0 < step <= (cal.alpha + 1.0 / cal.level.weight) * cal.clip + 1e-9
    assert cal.factor("a") < 1.5


def test_follows_a_steady_drift_without_lag():
    # the world slows by 0.375 %/s of virtual time (ratio 1 -> 3.25 over 600 s); only node a is used
    def run(trend):
        cal = OnlineCalibrator(Twin(SPEC), trend=trend)
        for i in range(150):
            synthetic(cal, "a", 4.0 * i, 1.0 + 0.015 * i, f"j{i}")
        return cal.factor("a", at_s=600.0), cal.factor("b", at_s=600.0)
    truth = 1.0 + 0.015 * 150
    (a, b), (a_flat, b_flat) = run(True), run(False)
    # the used node is right either way (its residual soaks up a lagging level) ...
    assert a == pytest.approx(truth, rel=0.05) and a_flat == pytest.approx(truth, rel=0.05)
    # ... but the unused node gets only the cluster-wide level: with a slope it is current, without it lags
    assert b == pytest.approx(truth, rel=0.05)
    assert b_flat / truth < 0.92


def test_rarely_used_node_inherits_the_cluster_wide_drift():
    cal = OnlineCalibrator(Twin(SPEC))
    for i in range(40):
        synthetic(cal, "a", 2.0 * i, 1.6, f"j{i}")
    assert cal.count.get("b", 0) == 0
    assert cal.factor("b") == pytest.approx(1.6, rel=0.05)    # no sample of b, but the world slowed


def test_drift_level_reads_a_line_and_ps_fractions_water_fill():
    lvl = DriftLevel(half_life_s=30.0)
    for t in range(60):
        lvl.update(float(t), 0.5 + 0.02 * t)
    assert lvl.value(60.0) == pytest.approx(0.5 + 0.02 * 60, abs=1e-9)
    assert ps_fractions([1.0, 1.0], 4.0) == [1.0, 1.0]
    assert ps_fractions([1.0, 1.0, 1.0, 1.0], 2.0) == [0.5] * 4
    assert ps_fractions([0.5, 2.0, 2.0], 2.5) == pytest.approx([1.0, 0.5, 0.5])


@pytest.mark.parametrize("kw,field", [({"alpha": 0.0}, "ewma_alpha"), ({"half_life_s": 0.0}, "half_life_s"),
                                      ({"clip": -1.0}, "clip"), ({"bounds": (2.0, 3.0)}, "bounds")])
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises(SpecError) as e:
        OnlineCalibrator(Twin(SPEC), **kw)
    assert e.value.field == field


def test_start_up_in_the_observed_stage_time_is_not_read_as_slowness():
    """On the fabric a stage's observed time includes its format's start-up (timing.startup_ms): a node
    whose stages take exactly nominal + start-up keeps factor 1; without the start-up model it would not."""
    from dtlab.timing import TimingModel

    with_up = TimingModel().with_startup({"native": 250.0})
    for timing, expected in ((with_up, 1.0), (TimingModel(), 1.25)):
        cal = OnlineCalibrator(Twin(SPEC, timing=timing))
        for i in range(30):
            synthetic(cal, "a", 3.0 * i, 1.25, f"j{i}")          # 1000 ms nominal + 250 ms start-up
        assert cal.factor("a") == pytest.approx(expected, rel=0.05)
