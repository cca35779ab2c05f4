"""Link sharing (issue 18): concurrent transfers on one directed link share its bandwidth.

The fabric shapes each (source, destination) node pair with one htb class, so two transfers that
overlap there take about twice as long; the twin's engine (and the sim world built on it), its des
predictor (phantom flows from the snapshot) and the fast path (first-order overlap) account for it.
"""
from __future__ import annotations

import numpy as np
import pytest

from dtlab.des.engine import Engine
from dtlab.model import Link, cluster_from_dict, job_from_dict
from dtlab.timing import TimingModel, bulk_ms, shared_extra_ms, shared_speed

EXACT = TimingModel(service_sigma=0.0)
CLUSTER = cluster_from_dict({
    "nodes": [{"name": "a", "cores": 4, "zone": "za"}, {"name": "b", "cores": 4, "zone": "zb"},
              {"name": "c", "cores": 4, "zone": "zb"}],
    "links": [{"a": "za", "b": "zb", "latency_ms": 10, "bandwidth_mbps": 80}],
})


def two_stage(name: str, out_mb: float = 10.0):
    return job_from_dict({"metadata": {"name": name}, "spec": {"stages": [
        {"id": "x", "compute": {"cpu": 1, "duration_ms": 100}, "output_mb": out_mb},
        {"id": "y", "after": ["x"], "compute": {"cpu": 1, "duration_ms": 100}}]}})


def transfer_ms(eng: Engine, job: str) -> float:
    rows = {r["stage"]: r for r in eng.stage_records() if r["job"] == job}
    return rows["y"]["start_ms"] - rows["x"]["end_ms"]


def test_two_overlapping_transfers_on_one_link_take_about_twice_as_long():
    bulk = bulk_ms(10.0, CLUSTER.link("a", "b"))                  # 1000 ms alone at 80 Mbit/s
    alone = Engine(CLUSTER, EXACT, np.random.default_rng(0))
    alone.submit(two_stage("j1"), {"x": "a", "y": "b"})
    alone.run()
    assert transfer_ms(alone, "j1") == pytest.approx(10 + bulk)

    both = Engine(CLUSTER, EXACT, np.random.default_rng(0))
    both.submit(two_stage("j1"), {"x": "a", "y": "b"})
    both.submit(two_stage("j2"), {"x": "a", "y": "b"})
    both.run()
    for j in ("j1", "j2"):
        assert transfer_ms(both, j) == pytest.approx(10 + 2 * bulk)

    # another destination is another htb class: no sharing
    apart = Engine(CLUSTER, EXACT, np.random.default_rng(0))
    apart.submit(two_stage("j1"), {"x": "a", "y": "b"})
    apart.submit(two_stage("j2"), {"x": "a", "y": "c"})
    apart.run()
    assert transfer_ms(apart, "j2") == pytest.approx(10 + bulk)


def test_a_late_flow_shares_only_the_overlap_and_phantoms_count():
    bulk = bulk_ms(10.0, CLUSTER.link("a", "b"))
    eng = Engine(CLUSTER, EXACT, np.random.default_rng(0))
    eng.submit(two_stage("j1"), {"x": "a", "y": "b"})
    eng.submit(two_stage("j2"), {"x": "a", "y": "b"}, at_ms=500.0)   # its transfer starts 500 ms later
    eng.run()
    # PS of two flows: j1 loses j2's progress over the overlap (500 ms), j2 loses 500 ms of j1's
    assert transfer_ms(eng, "j1") == pytest.approx(10 + bulk + 500.0)
    assert transfer_ms(eng, "j2") == pytest.approx(10 + bulk + 500.0)
    # the fast path's first-order formula gives the same numbers
    link = CLUSTER.link("a", "b")
    assert float(shared_extra_ms(bulk, 100.0, [(600.0, bulk)], link)) == pytest.approx(500.0)
    assert float(shared_extra_ms(bulk, 600.0, [(100.0, bulk)], link)) == pytest.approx(500.0)

    ph = Engine(CLUSTER, EXACT, np.random.default_rng(0))
    ph.occupy_link("a", "b", 300.0, at_ms=100.0)        # another job's flow, 300 ms of bulk left
    ph.submit(two_stage("j1"), {"x": "a", "y": "b"})
    ph.run()
    assert transfer_ms(ph, "j1") == pytest.approx(10 + bulk + 300.0)


def test_mathis_capped_flows_share_only_what_the_cap_leaves():
    lossy = Link("za", "zb", 40.0, 100.0, loss=0.01)      # Mathis ~1.8 Mbit/s per flow on 100 Mbit/s
    assert shared_speed(lossy, 2) == 1.0 and shared_speed(lossy, 100) < 1.0 and shared_speed(lossy, 50) == 1.0
    assert float(shared_extra_ms(100.0, 0.0, [(0.0, 100.0)], lossy)) == 0.0
    fat = Link("za", "zb", 10.0, 80.0)
    assert shared_speed(fat, 2) == pytest.approx(0.5)


EXACT_SIM = {"service_sigma": 0.0, "tail_prob": 0.0, "speed_sigma": 0.0, "background_mean": 0.0,
             "background_step_sd": 0.0, "telemetry_noise": 0.0, "failure_rate_per_h": 0.0, "link_sigma": 0.0,
             "overhead_bias": {"native": 1.0}}


def test_state_tracks_flows_from_job_submit_and_stage_events():
    from dtlab.controller import planned_transfers
    from dtlab.state import ClusterState

    job = two_stage("j1")
    state = ClusterState(CLUSTER)
    state.apply({"kind": "job-submit", "job": "j1", "ts": 0.0, "stage_ms": {"x": 100.0, "y": 100.0},
                 "transfers": planned_transfers(job, {"x": "a", "y": "b"})})
    assert state.snapshot().flows == ()                       # x has not started: nothing expected yet
    state.apply({"kind": "stage-start", "job": "j1", "stage": "x", "node": "a", "ts": 0.0})
    (f,) = state.snapshot().flows
    assert (f.src, f.dst, f.mb, f.start_ts, f.expected) == ("a", "b", 10.0, pytest.approx(0.1), True)
    state.apply({"kind": "stage-end", "job": "j1", "stage": "x", "node": "a", "ts": 0.12})
    (f,) = state.snapshot().flows
    assert (f.start_ts, f.expected) == (pytest.approx(0.12), False)
    state.apply({"kind": "stage-start", "job": "j1", "stage": "y", "node": "b", "ts": 1.2})
    assert state.snapshot().flows == ()                       # arrived: the receiver started
    from dtlab.errors import SpecError
    with pytest.raises(SpecError, match=r"transfers\[0\]\[4\]"):
        state.apply({"kind": "job-submit", "job": "j2", "transfers": [[None, "x", "za", "a", -1]]})
    with pytest.raises(SpecError, match=r"transfers\[0\]"):
        state.apply({"kind": "job-submit", "job": "j2", "transfers": [["x", "y"]]})


@pytest.mark.parametrize("predictor", ["des", "fast"])
def test_sim_and_twin_agree_on_a_job_that_shares_a_link(predictor):
    """Job 2 is planned while job 1's transfer is due on the same link: the twin, fed by the events
    the controller and the sim substrate produce, predicts the shared transfer the sim world runs."""
    from dtlab.controller import planned_transfers
    from dtlab.plan import Plan
    from dtlab.predict import sample_latencies
    from dtlab.state import ClusterState
    from dtlab.substrates import make_substrate

    place = {"x": "a", "y": "b"}
    sub = make_substrate("sim", CLUSTER, seed=0, **EXACT_SIM)
    state = ClusterState(CLUSTER)
    j1, j2 = two_stage("j1"), two_stage("j2")
    sub.submit(Plan(job="j1", policy="manual", placement=place), j1)
    state.apply({"kind": "job-submit", "job": "j1", "ts": 0.0, "stage_ms": {"x": 100.0, "y": 100.0},
                 "transfers": planned_transfers(j1, place)})
    sub.advance(50.0)
    state.apply_many(sub.events())
    snap = state.snapshot().at(0.05)
    pred = sample_latencies(snap, j2, place, predictor=predictor, samples=8, rng=np.random.default_rng(0),
                            timing=EXACT)
    alone = sample_latencies(state.snapshot().at(100.0), j2, place, predictor=predictor, samples=8,
                             rng=np.random.default_rng(0), timing=EXACT)
    sub.submit(Plan(job="j2", policy="manual", placement=place), j2)
    sub.advance(None)
    jobs = sub.results()["jobs"].set_index("job")
    observed = float(jobs.loc["j2", "latency_ms"])
    bulk = bulk_ms(10.0, CLUSTER.link("a", "b"))
    assert observed == pytest.approx(100 + 10 + 2 * bulk - 50 + 100, rel=1e-6)   # shared from 150 ms on
    assert np.median(pred) == pytest.approx(observed, rel=0.01)
    assert np.median(alone) == pytest.approx(100 + 10 + bulk + 100, rel=0.01)     # j1 long gone
