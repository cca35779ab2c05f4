"""V2's distribution fit (KS), calibration record and noise floor; the KS helpers of dtlab.stats."""
from __future__ import annotations

import numpy as np
import pytest

from dtlab.errors import SpecError
from dtlab.experiments import v2
from dtlab.stats import ks_critical, ks_statistic


def test_ks_statistic_and_its_noise_level():
    rng = np.random.default_rng(0)
    assert ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([0.0, 1.0], [0.5]) == pytest.approx(0.5)
    same = [ks_statistic(rng.normal(size=200), rng.normal(size=200)) for _ in range(200)]
    crit = ks_critical(200, 200)
    assert 0.12 < crit < 0.15
    assert np.mean(np.array(same) > crit) < 0.1          # ~5 % false alarms at the 95 % critical value
    assert ks_statistic(rng.normal(size=500), rng.normal(1.0, size=500)) > 0.3
    assert np.isnan(ks_statistic([], [1.0])) and np.isnan(ks_critical(0, 5))


def test_v2_reports_ks_calibration_and_a_zero_noise_floor_on_sim():
    m = v2.run({**v2.SMOKE, "noise_floor": True}).metrics
    for name in ("des", "fast", "legacy", "none"):
        assert 0.0 <= m[f"{name}.ks"] <= 1.0
        assert m[f"{name}.ks_noise95"] > 0 and m[f"{name}.ks_cell"] == "greedy@r1"
    assert m["none.ks"] > m["fast.ks"]                    # no model is the worst distribution fit
    assert m["calibration_used"].startswith("none")        # sim: the twin's default timing
    assert m["noise_floor.same_placement"] == 1.0          # sim is deterministic: same plans, same latencies
    assert m["noise_floor.median_ape"] == 0.0 and m["noise_floor.jobs"] > 0
    assert "noise_floor.median_ape" not in v2.run(v2.SMOKE).metrics


def test_v2_noise_floor_can_rerun_a_prefix_of_the_first_seed():
    m = v2.run({**v2.SMOKE, "seeds": [0], "noise_floor": True, "noise_floor_jobs": 6}).metrics
    # the stream's first 6 arrivals; compared: those done before the 7th arrived (no omitted job met them)
    assert 1 <= m["noise_floor.jobs"] <= 6 and m["noise_floor.same_placement"] == 1.0
    assert m["noise_floor.median_ape"] == 0.0
    for bad in (0, -1, True, 2.5):
        with pytest.raises(SpecError) as e:
            v2.check({"noise_floor_jobs": bad})
        assert e.value.field == "noise_floor_jobs"
    with pytest.raises(SpecError) as e:
        v2.check({"fabric": {"noise_floor_jobs": 0}})
    assert e.value.field.startswith("fabric.")
