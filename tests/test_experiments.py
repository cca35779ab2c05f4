"""Experiments V1, V2, V3, V5, V6: smoke params run, documented outputs, param validation, determinism."""
import math

import numpy as np
import pytest

import dtlab
from dtlab import SpecError
from dtlab.fabric import host_calibration as host
from dtlab.experiments import get, params, substrate, v1, v2, v3, v5, v6
from dtlab.experiments.params import REPO_ROOT, validate
from dtlab.experiments.summary import mean_ci
from dtlab.experiments.loop import synthetic_cluster

MODULES = [v1, v2, v3, v5, v6]
TABLE_COLUMNS = {
    v1: {"policy", "rate_per_s", "seed", "latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate"},
    v2: {"seed", "job", "arrival_ms", "observed_ms", "predictor", "predicted_ms", "ape"},
    v3: {"format", "node", "twin_factor", "truth_factor", "observed_mean", "ci_low", "ci_high"},
    v5: {"nodes", "policy", "mode", "seed", "p50_ms", "p99_ms"},
    v6: {"mode", "seed", "window_start_s", "jobs", "mape", "median_ape", "miss_rate"},
}
HEADLINE = {
    v1: ["greedy.r1.latency_mean_ms", "round-robin.r1.miss_rate"],
    v2: ["des.mape", "fast.median_ape", "legacy.p95_ape", "none.mape"],
    v3: ["wasm.observed_factor", "qemu-riscv64.truth_factor", "plan_ms.cvar.fast"],
    v5: ["plan_p50_ms.greedy.warm.100", "plan_p99_ms.cvar.fresh.10", "apply_events_per_s.100", "snapshot_ms.10"],
    v6: ["static.mape", "online.median_ratio", "online.last_window_miss_rate", "online.mape_uncontended",
         "tracking.online_abs_log_error"],
}
TIMING = (v3, v5)     # wall-clock plan latencies cannot repeat exactly


@pytest.fixture(scope="module")
def smoke_results():
    return {m: m.run(m.SMOKE) for m in MODULES}


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_smoke_outputs_are_documented(mod, smoke_results):
    r = smoke_results[mod]
    assert TABLE_COLUMNS[mod] <= set(r.table.columns)
    assert len(r.table) > 0
    for key in HEADLINE[mod]:
        assert key in r.metrics and isinstance(r.metrics[key], float), key
        if key + ".ci_low" in r.metrics and r.metrics[key + ".ci_low"] is not None:
            assert r.metrics[key + ".ci_low"] <= r.metrics[key] <= r.metrics[key + ".ci_high"]


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_unknown_param_is_an_error_naming_it(mod):
    with pytest.raises(SpecError) as e:
        mod.run({**mod.SMOKE, "seedz": [0]})
    assert e.value.field == "seedz"


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_bad_types_are_errors(mod):
    with pytest.raises(SpecError) as e:
        mod.run({**mod.SMOKE, "seeds": ["zero"]})
    assert e.value.field == "seeds"


@pytest.mark.parametrize("mod", [v1, v2, v3, v6], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_same_params_same_metrics(mod, smoke_results):
    again = mod.run(mod.SMOKE).metrics
    first = smoke_results[mod].metrics
    keys = [k for k in first if not (mod in TIMING and k.startswith(("plan_ms.", "regime.host_")))]
    assert {k: first[k] for k in keys} == {k: again[k] for k in keys}


def test_other_seeds_other_numbers(smoke_results):
    other = v1.run({**v1.SMOKE, "seeds": [7, 8]}).metrics
    assert other["greedy.r1.latency_mean_ms"] != smoke_results[v1].metrics["greedy.r1.latency_mean_ms"]


def test_unknown_policy_and_substrate():
    with pytest.raises(SpecError) as e:
        v1.run({**v1.SMOKE, "policies": ["greedy", "magic"]})
    assert e.value.field == "policies[1]"
    with pytest.raises(SpecError) as e:
        v1.run({**v1.SMOKE, "substrate": "moon"})
    assert e.value.field == "substrate"
    with pytest.raises(SpecError) as e:
        v1.run({**v1.SMOKE, "substrate_opts": {"tail_probb": 0.1}})
    assert e.value.field == "substrate_opts.tail_probb"


def test_v2_none_is_the_critical_path():
    job = dtlab.load_job(REPO_ROOT / "examples/job-fanout.yaml")
    assert v2.critical_path_ms(job) == 200 + 800 + 400


def test_v3_sim_measures_the_ground_truth_not_the_twin(smoke_results):
    m = v3.run({**v3.SMOKE, "reps": 30, "seeds": [0, 1, 2]}).metrics
    assert m["qemu-riscv64.truth_factor"] != m["qemu-riscv64.twin_factor"]
    assert abs(m["qemu-riscv64.observed_factor"] - m["qemu-riscv64.truth_factor"]) < \
        abs(m["qemu-riscv64.observed_factor"] - m["qemu-riscv64.twin_factor"])


def test_v6_online_recalibration_tracks_the_truth_and_removes_the_optimism():
    # the estimator's property under a strong drift (the experiment's own regime drifts half as fast,
    # see tests/test_regimes.py): 4 minutes at -8 %/min speed and +4 %/min work
    r = v6.run({"jobs": 120, "seeds": [0, 1], "speed_drift_per_min": -0.08, "workload_drift_per_min": 0.04})
    m = r.metrics
    assert abs(m["online.median_ratio"] - 1) < abs(m["static.median_ratio"] - 1)
    # the estimate follows the drifting ground truth far closer than the spec does
    assert m["tracking.online_abs_log_error"] < 0.5 * m["tracking.spec_abs_log_error"]
    # where the twin's contention approximation is not involved, recalibration lowers the error
    assert m["online.mape_uncontended"] < m["static.mape_uncontended"]
    track = r.extra["tracking"]
    assert {"t_s", "node", "samples", "est_factor", "true_speed_factor", "work_factor", "target_factor"} \
        <= set(track.columns)
    late = track[(track["t_s"] == track["t_s"].max()) & (track["samples"] > 20)]
    assert len(late) and (late["rel_error"].abs() < 0.2).all()
    assert (late["target_factor"] > 1.2).all()          # the world did drift away from the spec
    w = r.extra["windows"]
    assert set(w["metric"]) == {"mape", "median_ape", "median_ratio", "miss_rate"}
    assert (w["ci_low"] <= w["mean"]).all() and (w["mean"] <= w["ci_high"]).all()


def test_mean_ci_uses_student_t():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.n == 3
    assert ci.high - ci.mean == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    one = mean_ci([5.0])
    assert (one.low, one.high) == (5.0, 5.0)
    assert math.isnan(mean_ci([]).mean)
    # coverage: ~95% of intervals from normal samples contain the true mean
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        c = mean_ci(rng.normal(10, 3, 5))
        covered += c.low <= 10 <= c.high
    assert 0.93 < covered / 2000 < 0.97


def test_validate_overlays_defaults_and_counts_seeds():
    p = validate({"seeds": 3}, {"seeds": [0], "jobs": 5}, "VX")
    assert p == {"seeds": [0, 1, 2], "jobs": 5}
    with pytest.raises(SpecError) as e:
        validate({"jobs": "many"}, {"seeds": [0], "jobs": 5}, "VX")
    assert e.value.field == "jobs"


def test_synthetic_cluster_scales_and_keeps_structure():
    template = dtlab.load_cluster(REPO_ROOT / "examples/cluster-hetero.yaml")
    big = synthetic_cluster(template, 1000, seed=1)
    assert len(big.nodes) == 1000 and len({n.name for n in big.nodes}) == 1000
    assert big.zones == template.zones
    assert {n.arch for n in big.nodes} == {n.arch for n in template.nodes}
    assert big.link(big.nodes[3].name, big.nodes[0].name).latency_ms == 40   # edge-a -> cloud as in the spec
    assert synthetic_cluster(template, 1000, seed=1) == big


def test_get_and_result_save(tmp_path, smoke_results):
    assert get("v2").load() is v2 and get("v2").id == "V2"
    with pytest.raises(SpecError):
        get("V9")
    from dtlab import results
    out = results.save(smoke_results[v2], tmp_path)
    assert {p.name for p in out.iterdir()} >= {"results.csv", "metrics.json", "cdf.csv", "summary.csv"}


# ---------------------------------------------------------------- substrate: auto / fabric (issue 5 item 7)
TINY = {
    v1: {"jobs": 4, "seeds": [0], "rates_per_s": [1.0], "policies": ["greedy"]},
    v2: {"jobs": 4, "seeds": [0], "samples": 16, "predictors": ["fast", "none"]},
    v3: {"reps": 1, "seeds": [0], "plans": 1, "predictors": ["fast"], "policies": ["greedy"]},
}
AUTO_MODULES = [v1, v2, v3]


def _no_fabric(monkeypatch, why="root privileges (test says no)"):
    import dtlab.fabric
    monkeypatch.setattr(dtlab.fabric, "available", lambda *a, **k: (False, why))


@pytest.mark.parametrize("mod", AUTO_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_auto_is_the_default_and_falls_back_to_sim_with_the_reason(mod, monkeypatch):
    _no_fabric(monkeypatch)
    assert mod.DEFAULTS["substrate"] == "auto" and mod.DEFAULTS["fabric"]
    r = mod.run({**TINY[mod], "fabric": {"seeds": [5, 6]}})
    m = r.metrics
    assert m["substrate"] == "sim" and m["substrate_requested"] == "auto"
    assert "fabric unavailable" in m["substrate_note"] and "root privileges (test says no)" in m["substrate_note"]
    assert "substrate_metadata" not in m
    assert r.params["seeds"] == [0]            # the fabric sizes only apply on the fabric
    assert len(r.table) > 0


@pytest.mark.parametrize("mod", AUTO_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_explicit_fabric_unavailable_names_what_is_missing(mod, monkeypatch):
    _no_fabric(monkeypatch, "cgroups: no CPU cgroup found")
    for call in (mod.run, mod.check):          # run, and the runner's check before a kernel starts
        with pytest.raises(dtlab.SubstrateUnavailable, match="cgroups: no CPU cgroup found"):
            call({**TINY[mod], "substrate": "fabric"})


def test_explicit_sim_never_asks_for_the_fabric(monkeypatch):
    import dtlab.fabric

    def boom(*a, **k):
        raise AssertionError("sim run looked at the fabric")
    monkeypatch.setattr(dtlab.fabric, "available", boom)
    assert v1.run({**TINY[v1], "substrate": "sim"}).metrics["substrate_note"] == ""


def test_fabric_sizes_are_validated_and_applied_only_on_the_fabric(monkeypatch):
    import dtlab.fabric
    from dtlab.timing import TimingModel

    with pytest.raises(SpecError) as e:
        v1.check({"fabric": {"jobz": 3}})
    assert e.value.field == "fabric.jobz"
    with pytest.raises(SpecError) as e:
        v2.check({"fabric": {"substrate": "sim"}})
    assert e.value.field == "fabric.substrate"
    with pytest.raises(SpecError) as e:
        v3.check({"fabric": {"reps": "many"}})
    assert e.value.field == "fabric.reps"
    calibrated = TimingModel().with_overheads({"wasm": 1.07})
    monkeypatch.setattr(dtlab.fabric, "available", lambda *a, **k: (True, ""))
    monkeypatch.setattr(host, "host_timing", lambda: (calibrated, "twin timing: test calibration"))
    p, choice = substrate.resolve({"jobs": 50, "fabric": {"jobs": 7}}, v1.DEFAULTS, "V1")
    assert p["substrate"] == "fabric" and p["jobs"] == 7 and p["rates_per_s"] == v1.DEFAULTS["rates_per_s"]
    assert choice.timing is calibrated and "jobs=7" in choice.note and "test calibration" in choice.note
    p, _ = substrate.resolve({"jobs": 50, "fabric": {}}, v1.DEFAULTS, "V1")     # fabric: {} keeps the sizes
    assert p["jobs"] == 50 and p["rates_per_s"] == v1.DEFAULTS["rates_per_s"]


def test_missing_host_calibration_is_measured_once_or_named(monkeypatch, tmp_path):
    from dtlab.fabric import calibrate
    from dtlab.timing import TimingModel

    calls = []
    path = tmp_path / "cal.yaml"

    def fake_timing_model(p=None):
        if p is None and not calls:
            return TimingModel(), "default overhead factors (no host calibration)"
        return TimingModel().with_overheads({"wasm": 1.1}), ""
    monkeypatch.setattr(calibrate, "timing_model", fake_timing_model)
    monkeypatch.setattr(calibrate, "default_out", lambda: tmp_path / "calibration.host.yaml")
    monkeypatch.setattr(calibrate, "measure_compute", lambda quick: calls.append(quick) or {"overheads": {}})
    monkeypatch.setattr(calibrate, "write", lambda doc: path)
    timing, note = host.host_timing()
    assert calls == [True] and timing.overheads["wasm"] == 1.1 and "quick calibration" in note and str(path) in note

    calls.clear()

    def failing(quick):
        raise dtlab.DtlabError("qemu-aarch64-static exploded")
    monkeypatch.setattr(calibrate, "measure_compute", failing)
    timing, note = host.host_timing()
    assert timing.overheads == TimingModel().overheads
    assert "default overhead factors" in note and "qemu-aarch64-static exploded" in note


def test_v2_stage_errors_are_the_twin_service_time_against_the_observed(smoke_results):
    import pandas as pd

    from dtlab.model import load_job
    from dtlab.timing import TimingModel

    cluster = params.load_cluster_param(v2.DEFAULTS["cluster"])
    job = load_job(REPO_ROOT / "examples/job-pipeline.yaml", cluster)
    stages = pd.DataFrame([
        # decode (400 ms reference) as wasm on edge-a-1 (speed 0.4): twin says 400 * 1.3 / 0.4 = 1300 ms
        {"job": job.name, "stage": "decode", "node": "edge-a-1", "format": "wasm", "start_ms": 0.0,
         "duration_ms": 1000.0, "ok": True, "kernel_ms": 1300.0},
        {"job": job.name, "stage": "infer", "node": "cloud-0", "format": "native", "start_ms": 9.0, "duration_ms": 5.0,
         "ok": False},
        {"job": "someone-else", "stage": "decode", "node": "cloud-0", "format": "native", "start_ms": 0.0,
         "duration_ms": 5.0, "ok": True},
    ])
    st = v2.stage_predictions(stages, {job.name: job}, cluster, TimingModel())
    assert len(st) == 1
    row = st.iloc[0]
    assert row["predicted_ms"] == pytest.approx(1300.0) and row["ape"] == pytest.approx(0.3)
    assert row["kernel_ape"] == pytest.approx(0.0)
    assert row["predicted_ps_ms"] == pytest.approx(1300.0)       # alone on its node: no sharing
    # and the smoke run reports them
    r = smoke_results[v2]
    assert len(r.extra["stages"]) == r.metrics["stage.n"] > 0
    for key in ("stage.mape", "stage.median_ape", "stage.p95_ape", "stage.pooled_median_ape"):
        assert isinstance(r.metrics[key], float) and math.isfinite(r.metrics[key]), key
    assert r.metrics["stage.pooled_median_ape"] == pytest.approx(float(np.median(r.extra["stages"]["ape"])), abs=1e-6)


def test_v2_stage_predictions_add_start_up_only_where_the_stage_interval_includes_it():
    """Kube stage rows (node_kind) start at the worker's own start, start-up reported apart: the twin's
    start-up is not added there; fabric rows (no node_kind) include the launch, so it is."""
    import pandas as pd

    from dtlab.model import Compute, Job, Stage
    from dtlab.timing import TimingModel

    cluster = params.load_cluster_param(v2.DEFAULTS["cluster"])
    job = Job("k", (Stage("a", Compute(cpu=1, duration_ms=100)),))
    timing = TimingModel().with_startup({"native": 500.0}, 0.0)
    base = {"job": "k", "stage": "a", "node": "cloud-0", "format": "native", "start_ms": 0.0,
            "duration_ms": 100.0, "ok": True}
    fabric = v2.stage_predictions(pd.DataFrame([base]), {"k": job}, cluster, timing).iloc[0]
    kube = v2.stage_predictions(pd.DataFrame([{**base, "node_kind": "real"}]), {"k": job}, cluster, timing).iloc[0]
    service = timing.mean_service_ms(job.stages[0], cluster.node("cloud-0"), timing.overheads["native"])
    assert fabric["predicted_ms"] == pytest.approx(service + 500.0)
    assert kube["predicted_ms"] == pytest.approx(service)


def test_runner_records_the_substrate_the_run_got(tmp_path):
    import json

    from dtlab import runner
    (tmp_path / "metrics.json").write_text(json.dumps({
        "x": 1.0, "substrate": "fabric", "substrate_requested": "auto", "substrate_note": "twin timing: ...",
        "substrate_metadata": {"link_shaping": {"a->b": "htb+relay"}, "scale": 0.05}}))
    info = runner.substrate_info(tmp_path, "auto")
    assert info["substrate"] == "fabric" and info["substrate_requested"] == "auto"
    assert info["substrate_metadata"]["link_shaping"] == {"a->b": "htb+relay"}
    (tmp_path / "metrics.json").write_text(json.dumps({"x": 1.0}))     # an experiment without the keys
    assert runner.substrate_info(tmp_path, "sim") == {}


def test_processor_sharing_of_stage_times():
    ps = v2.ps_service_ms
    a = np.array
    np.testing.assert_allclose(ps(a([0., 0.]), a([100., 100.]), a([1., 1.]), 2), [100, 100])     # fits
    np.testing.assert_allclose(ps(a([0., 0.]), a([100., 100.]), a([1., 1.]), 1), [200, 200])     # fair share
    # alone for 50 ms, then half speed each: the first ends at 150, the second 50 ms later alone
    np.testing.assert_allclose(ps(a([0., 50.]), a([100., 100.]), a([2., 2.]), 2), [150, 150])
    # max-min fair with caps: cap-1 stage gets its core, the cap-2 stage the rest (half speed)
    np.testing.assert_allclose(ps(a([0., 0.]), a([100., 100.]), a([2., 1.]), 2), [150, 100])
    np.testing.assert_allclose(ps(a([0., 500.]), a([100., 100.]), a([1., 1.]), 1), [100, 100])   # idle gap


def test_v2_per_seed_table_is_the_job_level_one(smoke_results):
    """per_seed.csv holds the job-level errors per (predictor, seed) that `dtlab compare` pairs; the
    stage-scope loop used to overwrite it with its own table (no predictor column)."""
    per_seed = smoke_results[v2].extra["per_seed"]
    assert {"predictor", "seed", "mape", "median_ape", "p95_ape", "jobs"} <= set(per_seed.columns)
    assert set(per_seed["predictor"]) == set(v2.SMOKE.get("predictors", v2.DEFAULTS["predictors"]))
