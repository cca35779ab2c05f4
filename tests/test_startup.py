"""Start-up cost per execution format: the timing model, both predictors, the calibration document."""
from __future__ import annotations

import numpy as np
import pytest

from dtlab.fabric import calibrate
from dtlab.predict import sample_latencies
from dtlab.timing import TimingModel
from tests.heavy import require
from tests.test_predict import pipeline_job, scenarios, single_job, snapshot_of, two_zone

# the fabric's measured order of magnitude on this host: process ~5 ms, QEMU ~30 ms, Wasm launcher ~20 ms
STARTUP = {"native": 40.0, "wasm": 120.0, "qemu-amd64": 300.0}


def test_with_startup_checks_values_and_defaults_to_zero():
    t = TimingModel()
    assert t.startup("native") == 0.0 and t.startup(None) == 0.0
    s = t.with_startup({"wasm": 12.5})
    assert s.startup("wasm") == 12.5 and s.startup("native") == 0.0
    assert s.overheads == t.overheads
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="startup_ms.wasm"):
            t.with_startup({"wasm": bad})
        with pytest.raises(ValueError, match="dispatch_ms"):
            t.with_startup({}, bad)
    d = t.with_startup({"wasm": 12.5}, 3.0)
    assert d.stage_delay("wasm") == 15.5 and d.stage_delay("native") == 3.0 and d.startup("native") == 0.0


@pytest.mark.parametrize("predictor", ["fast", "des"])
def test_startup_adds_once_per_stage_on_the_critical_path(predictor):
    """Three stages in sequence, wasm/native/wasm (edge-0 is arm64, stage c needs arm64; b on cloud-0
    runs native): the start-up delays add to every sample, not scaled by speed or contention."""
    pytest.importorskip("simpy")
    c = two_zone()
    snap = snapshot_of(c)
    j = pipeline_job()
    placement = {"a": "edge-1", "b": "cloud-0", "c": "edge-0"}
    kw = dict(predictor=predictor, samples=400)
    base = sample_latencies(snap, j, placement, rng=np.random.default_rng(5), timing=TimingModel(), **kw)
    up = sample_latencies(snap, j, placement, rng=np.random.default_rng(5),
                          timing=TimingModel().with_startup(STARTUP, 7.0), **kw)
    # a on edge-1 (amd64): native; b on cloud-0: native; c on edge-0 (arm64, c needs arm64): native
    assert np.mean(up) - np.mean(base) == pytest.approx(3 * (STARTUP["native"] + 7.0),
                                                        rel=0.02 if predictor == "des" else 1e-9)


def test_startup_counts_per_format():
    """A stage that can only run as Wasm pays the Wasm start-up."""
    c = two_zone()
    snap = snapshot_of(c)
    j = single_job(cpu=1)
    from dataclasses import replace
    s = j.stages[0]
    j = replace(j, stages=(replace(s, constraints=replace(s.constraints, formats=("wasm",))),))
    t0 = TimingModel()
    t1 = t0.with_startup(STARTUP)
    a = sample_latencies(snap, j, {"s": "cloud-0"}, samples=64, rng=np.random.default_rng(1), timing=t0)
    b = sample_latencies(snap, j, {"s": "cloud-0"}, samples=64, rng=np.random.default_rng(1), timing=t1)
    assert np.allclose(b - a, STARTUP["wasm"])


@pytest.mark.parametrize("name,snap,j,placement,shadow", scenarios(), ids=[s[0] for s in scenarios()])
def test_fast_agrees_with_des_with_startup(name, snap, j, placement, shadow):
    """The fast path and the SimPy reference model start-up the same way (failures: paid again on restart)."""
    pytest.importorskip("simpy")
    t = TimingModel().with_startup(STARTUP)
    fast = sample_latencies(snap, j, placement, shadow, predictor="fast", samples=20000,
                            rng=np.random.default_rng(1), timing=t)
    des = sample_latencies(snap, j, placement, shadow, predictor="des", samples=3000,
                           rng=np.random.default_rng(2), timing=t)
    for q in (50, 95):
        assert np.percentile(fast, q) == pytest.approx(np.percentile(des, q), rel=0.05), (name, q)


def test_startup_document_is_checked_and_scaled(tmp_path):
    doc = {"kind": "HostStartupCalibration", "startup_ms": {"native": {"median_ms": 6.0}, "wasm": {"median_ms": 18.0}},
           "dispatch_ms": {"median_ms": 9.0}}
    p = tmp_path / "s.yaml"
    calibrate.write(doc, p)
    loaded = calibrate.load_startup(p)
    assert calibrate.startup_ms(loaded) == {"native": 6.0, "wasm": 18.0}
    assert calibrate.startup_ms(loaded, time_scale=3.0) == {"native": 2.0, "wasm": 6.0}    # wall -> reference ms
    assert calibrate.dispatch_ms(loaded, time_scale=3.0) == 3.0
    calibrate.write({"startup_ms": {"wasm": {"median_ms": -1}}}, p)
    with pytest.raises(Exception, match=r"startup_ms\.wasm\.median_ms"):
        calibrate.load_startup(p)


def test_startup_measured_on_the_fabric_launch_path():
    """Real processes through the fabric's launch path: every available format gets a start-up time, QEMU's
    (an emulator loading a guest binary) above the native process's."""
    from dtlab import fabric
    ok, why = fabric.available()
    require(ok, f"fabric: {why}")
    from dtlab.fabric import host_calibration as host
    doc = host.measure_startup(formats=["native", "qemu-arm64", "wasm"], reps=3)
    table = doc["startup_ms"]
    assert set(table) == {"native", "qemu-arm64", "wasm"} - set(doc["unavailable"]), doc
    for f, v in table.items():
        assert v["n"] == 6 and 0.0 < v["median_ms"] < 2000.0, (f, v)     # 3 two-stage probes
    assert 0.0 <= doc["dispatch_ms"]["median_ms"] < 1000.0 and doc["dispatch_ms"]["n"] == 6 * len(table)
    if "qemu-arm64" in table:
        assert table["qemu-arm64"]["median_ms"] > table["native"]["median_ms"], table
