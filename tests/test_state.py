"""ClusterState: events, versions, atomic batches, and safety under concurrent apply/snapshot."""
import threading
from pathlib import Path

import pytest

import dtlab
from dtlab import SpecError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture()
def state():
    return dtlab.ClusterState(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))


def test_node_lifecycle_and_versions(state):
    v0 = state.snapshot()
    state.apply({"kind": "node-cordon", "node": "edge-a-0"})
    state.apply({"kind": "node-down", "node": "cloud-0"})
    snap = state.snapshot()
    assert snap.version == v0.version + 2
    assert snap.nodes["edge-a-0"].cordoned and not snap.nodes["edge-a-0"].schedulable
    assert not snap.nodes["cloud-0"].up
    assert v0.nodes["cloud-0"].up, "an old snapshot must not change"
    names = {n.name for n in snap.schedulable_nodes()}
    assert "cloud-0" not in names and "edge-a-0" not in names and "cloud-1" in names


def test_telemetry_age_and_links(state):
    state.apply({"kind": "telemetry", "node": "edge-b-0", "cpu_util": 0.4, "ts": 100.0})
    snap = state.snapshot()
    assert snap.nodes["edge-b-0"].cpu_util == 0.4
    assert snap.telemetry_age_s("edge-b-0", now=102.5) == pytest.approx(2.5)
    assert snap.telemetry_age_s("cloud-0") is None
    state.apply({"kind": "link", "a": "edge-a", "b": "cloud", "latency_ms": 200, "loss": 0.05})
    link = state.snapshot().link("edge-a-0", "cloud-0")
    assert (link.latency_ms, link.loss, link.bandwidth_mbps) == (200, 0.05, 100)
    assert state.snapshot().link("cloud-0", "edge-a-1").latency_ms == 200
    state.apply({"kind": "link", "a": "edge-a", "b": "edge-b", "up": False})
    assert not state.snapshot().reachable("edge-a-0", "edge-b-0")
    state.apply({"kind": "link-reset", "a": "edge-a", "b": "edge-b"})
    assert state.snapshot().link("edge-a-0", "edge-b-0").latency_ms == 15


def test_stage_lifecycle_tracks_running_cpu(state):
    state.apply({"kind": "job-submit", "job": "j1", "stage_cpu": {"infer": 2}})
    state.apply({"kind": "stage-start", "job": "j1", "stage": "infer", "node": "cloud-0", "ts": 1})
    assert state.snapshot().nodes["cloud-0"].running_cpu == 2
    state.apply({"kind": "stage-end", "job": "j1", "stage": "infer", "node": "cloud-0", "ts": 3})
    snap = state.snapshot()
    assert snap.nodes["cloud-0"].running_cpu == 0
    assert snap.stages[("j1", "infer")].phase == "succeeded"
    assert snap.stages[("j1", "infer")].start_ts == 1


def test_node_add_and_remove(state):
    state.apply({"kind": "node-add", "node": {"name": "new-0", "arch": "arm64", "cores": 2, "zone": "cloud"}})
    snap = state.snapshot()
    assert "new-0" in snap.nodes and snap.cluster.by_name["new-0"].arch == "arm64"
    state.apply({"kind": "node-remove", "node": "new-0"})
    assert "new-0" not in state.snapshot().cluster.by_name


def test_invalid_batch_changes_nothing(state):
    before = state.snapshot()
    with pytest.raises(SpecError) as err:
        state.apply_many([
            {"kind": "node-down", "node": "cloud-0"},
            {"kind": "telemetry", "node": "cloud-1", "cpu_util": 1.5},
        ])
    assert err.value.field == "[1].cpu_util"
    after = state.snapshot()
    assert after.version == before.version and after.nodes["cloud-0"].up
    with pytest.raises(SpecError, match=r"^node: unknown node 'ghost'"):
        state.apply({"kind": "node-down", "node": "ghost"})
    with pytest.raises(SpecError, match=r"^kind: must be one of"):
        state.apply({"kind": "reboot"})


def test_concurrent_apply_and_snapshot_are_consistent(state):
    """Writers flip telemetry while readers snapshot: versions never go back and every snapshot is whole."""
    n_writers, per_writer = 4, 300
    errors = []
    stop = threading.Event()

    def writer(i):
        for k in range(per_writer):
            state.apply({"kind": "telemetry", "node": "cloud-0", "cpu_util": (k % 10) / 10, "ts": k})

    def reader():
        last = -1
        while not stop.is_set():
            snap = state.snapshot()
            if snap.version < last or len(snap.nodes) != 7:
                errors.append((snap.version, last))
            last = snap.version

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(n_writers)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert state.snapshot().version == n_writers * per_writer


def test_stage_ms_gives_corunners_with_remaining_work(state):
    state.apply({"kind": "job-submit", "job": "j1", "stage_cpu": {"a": 2, "b": 1}, "stage_ms": {"a": 1500, "b": 400},
                 "ts": 9.0})
    # the substrate's own job-submit (no stage_ms) merges without dropping the twin's
    state.apply({"kind": "job-submit", "job": "j1", "stage_cpu": {"a": 2, "b": 1}, "ts": 9.0})
    state.apply_many([{"kind": "stage-start", "job": "j1", "stage": "a", "node": "cloud-0", "ts": 10.0},
                      {"kind": "stage-start", "job": "j1", "stage": "b", "node": "cloud-0", "ts": 10.5},
                      {"kind": "stage-start", "job": "other", "stage": "x", "node": "cloud-0", "ts": 10.5}])
    snap = state.snapshot()
    assert snap.clock == 10.5
    co = {(c.job, c.stage): c for c in snap.nodes["cloud-0"].corunners}
    assert set(co) == {("j1", "a"), ("j1", "b"), ("other", "x")}
    assert (co["j1", "a"].cpu, co["j1", "a"].start_ts, co["j1", "a"].service_ms) == (2.0, 10.0, 1500.0)
    assert co["other", "x"].service_ms is None                       # not planned by the twin: stays
    assert co["other", "x"].remaining_ms(11.0) == float("inf")
    assert co["j1", "a"].remaining_ms(11.0) == pytest.approx(500.0)      # 1 s elapsed at full speed
    assert co["j1", "a"].remaining_ms(11.0, share=0.5) == pytest.approx(1000.0)
    assert co["j1", "b"].remaining_ms(12.0) == 0.0                   # overdue: leaving
    pinned = snap.at(11.0)
    assert pinned.clock == 11.0 and snap.clock == 10.5 and pinned.nodes is snap.nodes
    state.apply({"kind": "stage-end", "job": "j1", "stage": "a", "node": "cloud-0", "ts": 11.5})
    after = state.snapshot()
    assert [(c.job, c.stage) for c in after.nodes["cloud-0"].corunners] == [("j1", "b"), ("other", "x")]
    assert after.nodes["cloud-0"].running_cpu == 2.0
    assert len(snap.nodes["cloud-0"].corunners) == 3, "an old snapshot must not change"


@pytest.mark.parametrize("stage_ms,field", [
    ([1, 2], "stage_ms"),
    ({"a": -1}, "stage_ms.a"),
    ({"a": float("nan")}, "stage_ms.a"),
    ({"a": True}, "stage_ms.a"),
    ({"a": "10"}, "stage_ms.a"),
])
def test_bad_stage_ms_names_the_field(state, stage_ms, field):
    v = state.version
    with pytest.raises(SpecError) as err:
        state.apply({"kind": "job-submit", "job": "j", "stage_ms": stage_ms})
    assert err.value.field == field
    assert state.version == v
