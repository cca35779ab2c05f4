"""The what-if dashboard driven headless: set sliders, click buttons, check the predictions move."""
from pathlib import Path

import pytest

import dtlab
from dtlab.dashboard import WhatIf
from dtlab.whatif import apply_knobs, evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
POLICIES = ["greedy", "cvar", "least-allocated"]


@pytest.fixture()
def dash():
    d = WhatIf(EXAMPLES / "cluster-hetero.yaml", EXAMPLES / "job-pipeline.yaml", policies=POLICIES,
               samples=128, debounce_s=60)  # long debounce: the test drives update() itself
    d.update()
    return d


def test_interface_and_first_result(dash):
    for name in ("latency_scale", "arrival_rate", "fail_prob", "latency_ms[cloud|edge-a]", "loss[cloud|edge-a]",
                 "overhead[qemu-arm64]", "overhead[wasm]", "policies", "recompute", "load"):
        assert name in dash.controls
    assert set(dash.result) == set(POLICIES)
    for pred in dash.result.values():
        assert pred["p95_ms"] >= pred["p50_ms"] > 0 and 0 <= pred["deadline_miss_prob"] <= 1
    assert dash.last_update_ms is not None and dash.last_update_ms > 0


def test_latency_scale_raises_cross_zone_latency(dash):
    """The job starts in edge-a: scaling every link's latency makes the origin transfer slower."""
    before = dash.result["least-allocated"]["mean_ms"]
    dash.controls["latency_scale"].value = 8.0
    dash.update()
    assert dash.result["least-allocated"]["mean_ms"] > before + 100


def test_lossy_edge_uplink_moves_stages_off_it_or_costs_latency(dash):
    """The job's input comes from edge-a: a policy that used the cloud must move or pay for the worse uplink."""
    cloud = {n.name for n in dash.cluster.nodes if n.zone == "cloud"}
    before = {p: (dash.result[p]["mean_ms"], dict(dash.outcomes[p].placement)) for p in POLICIES}
    crossing = [p for p in POLICIES if cloud & set(before[p][1].values())]
    assert crossing, "the baseline should place something in the cloud, or this test checks nothing"
    dash.controls["loss[cloud|edge-a]"].value = 0.25
    dash.controls["latency_ms[cloud|edge-a]"].value = 300.0
    dash.controls["recompute"].click()
    for p in crossing:
        mean_before, placement_before = before[p]
        moved = dash.outcomes[p].placement != placement_before
        assert moved or dash.result[p]["mean_ms"] > mean_before, p
    # the twin's greedy policy keeps the work inside edge-a (off the degraded uplink)
    assert not cloud & set(dash.outcomes["greedy"].placement.values())


def test_failure_probability_and_arrival_rate_raise_the_tail(dash):
    p95 = dash.result["greedy"]["p95_ms"]
    dash.controls["fail_prob"].value = 0.4
    dash.controls["arrival_rate"].value = 8.0
    dash.update()
    assert dash.result["greedy"]["p95_ms"] > p95


def test_overhead_slider_changes_formats_cost(dash):
    job = dtlab.load_job(EXAMPLES / "job-fanout.yaml")
    d = WhatIf(EXAMPLES / "cluster-hetero.yaml", job, policies=["greedy"], samples=64, debounce_s=60)
    d.update()
    before = d.result["greedy"]["mean_ms"]
    d.controls["overhead[qemu-riscv64]"].value = 9.0
    d.controls["overhead[wasm]"].value = 9.0
    d.update()
    assert d.result["greedy"]["mean_ms"] >= before


def test_load_shows_errors_instead_of_raising(dash, tmp_path):
    dash.load(str(tmp_path / "missing.yaml"), "")
    assert "file not found" in dash._status.value
    dash.load(str(EXAMPLES / "cluster-hetero.yaml"), str(EXAMPLES / "job-single.yaml"))
    assert set(dash.outcomes["greedy"].placement) == {"resize"}


def test_evaluate_is_pure_and_deterministic():
    cluster = dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml")
    job = dtlab.load_job(EXAMPLES / "job-pipeline.yaml")
    knobs = {"latency_scale": 2.0, "arrival_rate_per_s": 1.0}
    a = evaluate(cluster, job, ["cvar"], knobs, samples=64)
    b = evaluate(cluster, job, ["cvar"], knobs, samples=64)
    assert a["cvar"].prediction == b["cvar"].prediction
    scaled, _, background = apply_knobs(cluster, job, knobs)
    assert scaled.links[0].latency_ms == 2 * cluster.links[0].latency_ms
    assert cluster.links[0].latency_ms == 40  # the input cluster is untouched
    assert all(0 < u < 0.95 for u in background.values())
