"""FaultScenario: validation names field paths, selectors resolve, repeats/sequences expand,
state events are valid ClusterState events, and `sim` realisation calls the engine right."""
from __future__ import annotations

import copy

import pytest

from dtlab import ClusterState, SpecError, load_cluster
from dtlab.chaos import expand, fault_event_from_dict, load_scenario, scenario_from_dict, timeline, to_state_events
from dtlab.chaos.realise import on_engine
from dtlab.chaos.spec import SCENARIO_DIR, shipped_scenarios
from dtlab.cli import main as chaos_main

CLUSTER = load_cluster("examples/cluster-hetero.yaml")


def scen(*faults, **extra):
    return scenario_from_dict({"apiVersion": "dtlab/v1", "kind": "FaultScenario",
                               "metadata": {"name": "t"}, "faults": list(faults), **extra})


def test_shipped_scenarios_load_and_expand():
    names = shipped_scenarios()
    for required in ("zone-blackout", "edge-cloud-partition", "lossy-edge-uplink",
                     "rolling-node-failures", "bad-day"):
        assert required in names
    for name in names:
        s = load_scenario(SCENARIO_DIR / f"{name}.yaml")
        assert s.name == name
        events = expand(s, s.cluster())
        assert events and [e.start_s for e in events] == sorted(e.start_s for e in events)


def test_zone_selector_is_a_blackout_of_every_node_in_the_zone():
    ev, = expand(scen({"kind": "node-failure", "at_s": 3, "duration_s": 4, "selector": {"zone": "edge-a"}}), CLUSTER)
    assert ev.nodes == ("edge-a-0", "edge-a-1") and (ev.start_s, ev.end_s) == (3, 7)


def test_label_selector_matches_well_known_labels_and_intersects():
    sel = {"labels": {"kubernetes.io/arch": "arm64"}, "zone": "cloud"}
    ev, = expand(scen({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": sel}), CLUSTER)
    assert ev.nodes == ("cloud-arm-0",)
    sel = {"labels": {"kubernetes.io/arch": "arm64"}}
    ev, = expand(scen({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": sel}), CLUSTER)
    assert set(ev.nodes) == {"cloud-arm-0", "edge-a-0", "edge-b-1"}


@pytest.mark.parametrize("fault, field, rule", [
    ({"kind": "node-failure", "duration_s": 1, "selector": {"zone": "edge-a"}}, "faults[0].at_s", "required"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 0, "selector": {"zone": "edge-a"}}, "faults[0].duration_s", "> 0"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": {}}, "faults[0].selector", "at least one"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": {"zone": "x", "nam": ["a"]}},
     "faults[0].selector.nam", "unknown key"),
    ({"kind": "explode", "at_s": 0}, "faults[0].kind", "must be one of"),
    ({"kind": "partition", "at_s": 0, "duration_s": 1, "between": ["edge-a"]}, "faults[0].between", "exactly two"),
    ({"kind": "link-degradation", "at_s": 0, "duration_s": 1, "between": ["edge-a", "cloud"]},
     "faults[0]", "at least one of"),
    ({"kind": "link-degradation", "at_s": 0, "duration_s": 1, "between": ["edge-a", "cloud"], "loss": 1.5},
     "faults[0].loss", "< 1"),
    ({"kind": "pod-kill", "at_s": 0, "duration_s": 3, "selector": {"job": "j"}}, "faults[0].duration_s", "instantaneous"),
    ({"kind": "pod-kill", "at_s": 0, "selector": {"stage": "s"}}, "faults[0].selector.job", "required"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 10, "selector": {"zone": "edge-a"},
      "repeat": {"every_s": 5, "times": 2}}, "faults[0].repeat.every_s", "overlap"),
    ({"kind": "sequence", "at_s": 0, "steps": [{"kind": "node-failure", "at_s": 3, "duration_s": 1,
                                                "selector": {"zone": "edge-a"}}]},
     "faults[0].steps[0].at_s", "back to back"),
])
def test_invalid_faults_name_the_field(fault, field, rule):
    with pytest.raises(SpecError) as exc:
        scen(fault)
    assert exc.value.field == field and rule in exc.value.rule


@pytest.mark.parametrize("fault, field", [
    ({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": {"names": ["cloud-0", "nope"]}},
     "faults[0].selector.names[1]"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 1, "selector": {"zone": "mars"}}, "faults[0].selector.zone"),
    ({"kind": "node-failure", "at_s": 0, "duration_s": 1,
      "selector": {"zone": "edge-a", "labels": {"kubernetes.io/arch": "amd64"}}}, "faults[0].selector"),
    ({"kind": "partition", "at_s": 0, "duration_s": 1, "between": ["edge-a", "moon"]}, "faults[0].between[1]"),
    ({"kind": "partition", "at_s": 0, "duration_s": 1, "between": ["edge-a", ["edge-a-0"]]}, "faults[0].between"),
])
def test_resolution_errors_name_the_field(fault, field):
    s = scen(fault)
    with pytest.raises(SpecError) as exc:
        expand(s, CLUSTER)
    assert exc.value.field == field


def test_sequence_runs_steps_back_to_back_and_repeat_unrolls():
    s = scen({"kind": "sequence", "at_s": 10, "gap_s": 5, "repeat": {"every_s": 100, "times": 2},
              "steps": [{"kind": "node-failure", "duration_s": 20, "selector": {"names": ["cloud-0"]}},
                        {"kind": "pod-kill", "selector": {"job": "video-1"}},
                        {"kind": "partition", "duration_s": 7, "between": ["edge-a", "edge-b"]}]})
    got = [(e.kind, e.start_s, e.duration_s) for e in expand(s, CLUSTER)]
    assert got == [("node-failure", 10, 20), ("pod-kill", 35, None), ("partition", 40, 7),
                   ("node-failure", 110, 20), ("pod-kill", 135, None), ("partition", 140, 7)]
    assert s.end_s == 147


def test_node_set_partition_cuts_every_node_pair():
    ev, = expand(scen({"kind": "partition", "at_s": 1, "duration_s": 2,
                       "between": [["edge-a-0", "edge-a-1"], {"zone": "edge-b"}]}), CLUSTER)
    assert set(ev.pairs) == {(a, b) for a in ("edge-a-0", "edge-a-1") for b in ("edge-b-0", "edge-b-1")}


def test_concrete_dict_round_trips_through_inject_form():
    s = load_scenario(SCENARIO_DIR / "bad-day.yaml")
    for ev in expand(s, CLUSTER):
        again = fault_event_from_dict(ev.to_dict(), CLUSTER)
        assert (again.kind, again.start_s, again.duration_s, set(again.nodes), set(again.pairs),
                again.link_map, again.job, again.stage) == \
               (ev.kind, ev.start_s, ev.duration_s, set(ev.nodes), set(ev.pairs), ev.link_map, ev.job, ev.stage)


def test_state_events_drive_cluster_state_through_the_fault_window():
    s = load_scenario(SCENARIO_DIR / "bad-day.yaml")
    events = timeline(expand(s, CLUSTER))
    state = ClusterState(CLUSTER)
    seen_down = seen_cut = False
    for e in events:
        state.apply(e)
        snap = state.snapshot()
        seen_down |= not snap.nodes["edge-b-0"].up
        seen_cut |= not snap.reachable("edge-a-0", "edge-b-0")
        if e["kind"] == "link" and e.get("latency_ms") == 120:
            assert snap.link("edge-a-0", "cloud-0").latency_ms == 120
    snap = state.snapshot()
    assert seen_down and seen_cut
    assert all(st.up for st in snap.nodes.values())        # everything recovered at the end
    assert snap.reachable("edge-a-0", "edge-b-0") and snap.link("edge-a-0", "cloud-0").latency_ms == 40
    assert len(state._chaos) == 2 * 6 + 1                    # start+end per timed fault, start for pod-kill


def test_to_state_events_of_a_partition():
    ev, = expand(scen({"kind": "partition", "at_s": 2, "duration_s": 3, "between": ["edge-a", "cloud"]}), CLUSTER)
    kinds = [(e["kind"], e["ts"]) for e in to_state_events(ev)]
    assert kinds == [("chaos", 2), ("link", 2), ("link-reset", 5), ("chaos", 5)]
    assert to_state_events(ev)[1]["up"] is False


class FakeEngine:
    def __init__(self):
        self.calls = []

    def fail_node(self, name, at_ms, duration_ms=None):
        self.calls.append(("fail", name, at_ms, duration_ms))

    def set_link(self, a, b, link, at_ms):
        self.calls.append(("link", a, b, None if link is None else (link.latency_ms, link.loss), at_ms))


def test_realise_on_engine_schedules_faults_and_restores_spec_links():
    eng = FakeEngine()
    on_engine(eng, CLUSTER, {"kind": "node-failure", "at_s": 1, "duration_s": 2, "selector": {"zone": "edge-b"}})
    on_engine(eng, CLUSTER, {"kind": "partition", "at_s": 3, "duration_s": 1, "between": ["edge-a", "cloud"]},
              offset_ms=500)
    on_engine(eng, CLUSTER, {"kind": "link-degradation", "at_s": 5, "duration_s": 1,
                             "between": ["edge-a", "cloud"], "latency_ms": 150, "loss": 0.1})
    assert eng.calls == [
        ("fail", "edge-b-0", 1000, 2000), ("fail", "edge-b-1", 1000, 2000),
        ("link", "edge-a", "cloud", None, 3500), ("link", "edge-a", "cloud", (40, 0.01), 4500),
        ("link", "edge-a", "cloud", (150, 0.1), 5000), ("link", "edge-a", "cloud", (40, 0.01), 6000),
    ]


def test_cli_validate_reports_events_and_rejects_bad_cluster(tmp_path, capsys):
    assert chaos_main(["chaos", "validate", "zone-blackout"]) == 0
    assert "edge-a-0, edge-a-1" in capsys.readouterr().out
    other = copy.deepcopy({"apiVersion": "dtlab/v1", "kind": "Cluster",
                           "nodes": [{"name": "n0", "zone": "z"}]})
    path = tmp_path / "c.yaml"
    import yaml
    path.write_text(yaml.safe_dump(other))
    assert chaos_main(["chaos", "validate", "zone-blackout", "--cluster", str(path)]) == 2
    assert "faults[0].selector.zone" in capsys.readouterr().err


def test_permanent_node_failure_has_no_recovery_and_cannot_repeat():
    ev, = expand(scen({"kind": "node-failure", "at_s": 4, "selector": {"names": ["edge-a-0"]}}), CLUSTER)
    assert ev.duration_s is None
    assert [e["kind"] for e in to_state_events(ev)] == ["chaos", "node-down"]
    eng = FakeEngine()
    on_engine(eng, CLUSTER, ev)
    assert eng.calls == [("fail", "edge-a-0", 4000, None)]
    with pytest.raises(SpecError) as exc:
        scen({"kind": "node-failure", "at_s": 4, "selector": {"zone": "edge-a"}, "repeat": {"every_s": 9, "times": 2}})
    assert exc.value.field == "faults[0].duration_s"
    with pytest.raises(SpecError) as exc:   # inside a sequence a step needs its length
        scen({"kind": "sequence", "at_s": 0, "steps": [{"kind": "node-failure", "selector": {"zone": "edge-a"}}]})
    assert exc.value.field == "faults[0].steps[0].duration_s"


def test_pod_kill_on_the_engine_restarts_the_stage_and_counts_wasted_work():
    import numpy as np
    from dtlab.des.engine import Engine
    from dtlab.model import load_job
    from dataclasses import replace
    job = replace(load_job("examples/job-pipeline.yaml"), origin_zone=None)   # no input transfer: decode ends ~400 ms
    eng = Engine(CLUSTER, None, np.random.default_rng(1))
    eng.submit(job.scaled(1.0, name="video-1-0"), {s.id: "cloud-0" for s in job.stages}, at_ms=0)
    on_engine(eng, CLUSTER, {"kind": "pod-kill", "at_s": 0.6, "selector": {"job": "video-1", "stage": "infer"}})
    eng.run()
    rows = [r for r in eng.stage_records() if r["stage"] == "infer"]
    assert [r["outcome"] for r in rows] == ["killed", "ok"]
    assert rows[0]["end_ms"] == pytest.approx(600) and rows[1]["ready_ms"] == pytest.approx(600)
    rec, = eng.job_records()
    assert not rec["lost"] and rec["extra_work_ms"] > 0
