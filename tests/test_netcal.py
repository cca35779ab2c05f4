"""The fitted link model: least-squares line per zone pair from fabric measurements, fed to the twin."""
from __future__ import annotations

import pytest

import dtlab
from dtlab.fabric import calibrate
from tests.heavy import require


def _doc(lat=50.0, goodput=100.0, tail=0.0):
    rows = []
    for src, dst in (("probe-a", "probe-b"), ("probe-b", "probe-a")):
        for size in calibrate.NETCAL_SIZES_MB:
            t = lat + size * 8000.0 / goodput + (tail if size >= 0.5 else 0.0)
            rows.append({"src": src, "dst": dst, "size_mb": size, "median_ms": t, "predicted_ms": 1.0,
                         "mechanism": "htb+relay"})
    return {"samples": rows}


def _cluster():
    return dtlab.model.cluster_from_dict({
        "apiVersion": "dtlab/v1", "kind": "Cluster",
        "nodes": [{"name": "n1", "zone": "a"}, {"name": "n2", "zone": "a"}, {"name": "m", "zone": "b"}],
        "links": [{"a": "a", "b": "b", "latency_ms": 40, "bandwidth_mbps": 100, "loss": 0.01}]})


def test_fit_recovers_latency_and_goodput_and_puts_the_tail_in_the_intercept():
    probe = calibrate.calibration_cluster(_cluster())
    assert sorted(n.name for n in probe.nodes) == ["probe-a", "probe-b"]
    (link,) = calibrate.fit_links(_doc(tail=30.0), probe)
    assert (link["a"], link["b"]) == ("a", "b")
    assert link["goodput_mbps"] == pytest.approx(100.0, rel=1e-6)
    assert link["latency_ms"] == pytest.approx(80.0, rel=1e-6)          # 50 ms + the 30 ms mean tail penalty
    assert link["small_message_ms"] == pytest.approx(50.0 + 0.08, rel=1e-3)
    assert link["fit_mape"] < 1e-6 and link["mechanism"] == ["htb+relay"]
    (ev,) = calibrate.link_events({"links": [link]})
    assert ev["kind"] == "link" and ev["loss"] == 0.0 and ev["bandwidth_mbps"] == pytest.approx(100.0)


def test_twin_with_fitted_links_predicts_the_measured_transfer():
    c = _cluster()
    (link,) = calibrate.fit_links(_doc(lat=45.0, goodput=90.0), calibrate.calibration_cluster(c))
    twin = dtlab.Twin(c)
    before = twin.timing.mean_transfer_ms(5.0, twin.state.snapshot().link("n1", "m"))
    twin.state.apply_many(calibrate.link_events({"links": [link]}))
    after = twin.timing.mean_transfer_ms(5.0, twin.state.snapshot().link("n1", "m"))
    assert after == pytest.approx(45.0 + 5.0 * 8000 / 90.0, rel=1e-6)
    assert before > 10 * after            # the spec's Mathis-capped 1 % loss link: ~20 s for 5 MB


def test_network_calibration_on_the_fabric_fits_the_data_path():
    from dtlab import fabric
    ok, why = fabric.available()
    require(ok, f"fabric: {why}")
    c = _cluster()
    from dtlab.fabric import host_calibration as host
    doc, path = host.network_calibration(c, reps=2, refresh=True)
    assert path.exists() and doc["links"]
    (link,) = doc["links"]
    assert link["goodput_mbps"] > 20 and link["latency_ms"] > 0
    assert link["fit_max_ape"] < 0.5, link
