"""V1, V2, V3 on the real fabric (root, cgroups, qemu, wasm): tiny sizes, about a minute in all.

What issue 5 item 7 promises: the experiments run on ``fabric`` when asked (and by default when it
is available), record that they did (substrate, fabric metadata with the link-shaping mechanism),
and produce non-empty tables; V2's prediction errors against measured times are finite numbers.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import dtlab.fabric

ROOT = Path(__file__).resolve().parents[2]
from tests.heavy import require  # tests/ is importable: pytest pythonpath = ["."]

# ``fabric: {}``: run these top-level sizes on the fabric (not the experiments' fabric defaults)
TINY = {
    "V1": {"jobs": 3, "rates_per_s": [2.0], "seeds": [0], "policies": ["greedy", "random"]},
    "V2": {"jobs": 4, "seeds": [0], "samples": 16, "predictors": ["fast", "none"]},
    "V3": {"reps": 1, "duration_ms": 150.0, "seeds": [0], "plans": 1, "predictors": ["fast"],
           "policies": ["greedy"]},
}


@pytest.fixture(scope="module")
def fabric_ok():
    ok, why = dtlab.fabric.available()
    require(ok, f"fabric substrate unavailable: {why}")


def _run(exp: str, substrate: str = "fabric"):
    from dtlab.experiments import get
    # time_scale 1: these check that the experiments run and record the fabric, not its accuracy
    # (tests/e2e/test_hostlock_fabric.py checks the time scale); auto would make them ~9x longer
    return get(exp).run({**TINY[exp], "substrate": substrate, "fabric": {},
                         "substrate_opts": {"host_cores": 2.0, "time_scale": 1.0}})


def _check_recorded(metrics, requested):
    assert metrics["substrate"] == "fabric" and metrics["substrate_requested"] == requested
    meta = metrics["substrate_metadata"]
    assert meta["substrate"] == "fabric" and meta["link_shaping"], meta
    assert all(isinstance(v, str) and v for v in meta["link_shaping"].values())
    assert meta["overheads"]["native"] == 1.0


def test_v1_on_fabric(fabric_ok):
    r = _run("V1", "auto")                      # auto picks the fabric on a host that has it
    _check_recorded(r.metrics, "auto")
    assert len(r.table) == 2 and (r.table["completed"] > 0).all()
    assert math.isfinite(r.metrics["greedy.r2.latency_mean_ms"])


def test_v2_on_fabric_errors_are_finite(fabric_ok):
    r = _run("V2")
    _check_recorded(r.metrics, "fabric")
    assert len(r.table) > 0 and r.table["ape"].notna().any()
    for key in ("fast.mape", "fast.median_ape", "none.mape", "stage.pooled_median_ape", "stage.pooled_p95_ape"):
        assert isinstance(r.metrics[key], float) and math.isfinite(r.metrics[key]), key
    stages = r.extra["stages"]
    assert len(stages) >= 3 and (stages["observed_ms"] > 0).all() and stages["kernel_ms"].notna().any()
    # the twin ran with this host's fitted links and compute calibration, and says so
    assert "calibration.network." in r.metrics["network_calibration"], r.metrics.get("substrate_note")
    assert r.metrics["calibration_used"] and 0.0 <= r.metrics["fast.ks"] <= 1.0


def test_v3_on_fabric_measures_formats_and_compares_published(fabric_ok):
    r = _run("V3")
    _check_recorded(r.metrics, "fabric")
    t = r.table
    assert len(t) > 0 and {"native", "wasm"} <= set(t["format"])
    assert (t.loc[t["format"] != "native", "observed_mean"] > 0).all()
    assert t["host_calibration_factor"].notna().all() or "default overhead" in r.metrics["substrate_note"]
    pub = r.extra["published"]
    assert len(pub) > 0 and "V3 substrate" in set(pub["source"])
    verdict = r.metrics["qemu_claim_verdict"]
    assert verdict.startswith(("holds", "does not hold", "no QEMU")), verdict
