"""Trace format and replay on a hand-written trace; errors exit 2. The real round trip: tests/e2e/test_trace_kube.py."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from dtlab import cli
from dtlab.errors import SpecError
from dtlab.trace import FORMAT, read_trace, recorded_cluster, recorded_pods, replay, trim

T0 = 1_800_000_000.0


def _node(name, cores, zone, arch="amd64", speed="1.0"):
    return {"metadata": {"name": name, "resourceVersion": "10", "uid": "x", "managedFields": [{"big": 1}],
                         "labels": {"kubernetes.io/arch": arch, "topology.kubernetes.io/zone": zone,
                                    "dtlab.io/speed": speed, "dtlab.io/format-native": "true"}},
            "spec": {"unschedulable": False, "podCIDR": "10.0.0.0/24"},
            "status": {"capacity": {"cpu": str(cores), "memory": "8Gi"}, "allocatable": {"cpu": str(cores)},
                       "conditions": [{"type": "Ready", "status": "True"}], "images": ["a" * 100],
                       "nodeInfo": {"architecture": arch, "kernelVersion": "6"}}}


def _pod(name, node, rv, phase, created_s, cpu="1", duration="500"):
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": str(rv),
                         "creationTimestamp": pd.Timestamp(T0 + created_s, unit="s", tz="UTC").isoformat(),
                         "annotations": {"dtlab.io/duration-ms": duration}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "env": [{"name": "SECRET"}],
                                                       "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
            "status": {"phase": phase}}


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture()
def trace(tmp_path):
    rec = lambda t, res, typ, obj: {"t": t, "resource": res, "type": typ,  # noqa: E731
                                    "resourceVersion": obj["metadata"]["resourceVersion"], "object": trim(res, obj)}
    lines = [{"format": FORMAT, "server": "https://127.0.0.1:1", "namespace": None, "started_s": T0,
              "duration_s": 10},
             rec(0.0, "nodes", "LISTED", _node("fast", 8, "cloud")),
             rec(0.0, "nodes", "LISTED", _node("slow", 2, "edge", arch="arm64", speed="0.5")),
             {"t": 0.0, "resource": "nodes", "type": "SYNCED", "resourceVersion": "11"},
             {"t": 0.0, "resource": "pods", "type": "SYNCED", "resourceVersion": "11"}]
    for i in range(4):
        lines.append(rec(1.0 + i, "pods", "ADDED", _pod(f"p{i}", None, 20 + 3 * i, "Pending", 1.0 + i)))
        lines.append(rec(1.1 + i, "pods", "MODIFIED", _pod(f"p{i}", "slow", 21 + 3 * i, "Pending", 1.0 + i)))
        lines.append(rec(1.2 + i, "pods", "MODIFIED", _pod(f"p{i}", "slow", 22 + 3 * i, "Succeeded", 1.0 + i)))
    lines.append({"type": "END", "t": 10.0, "counters": {}})
    return _write(tmp_path / "t.trace", lines)


def test_trim_keeps_what_replay_needs_and_drops_the_rest():
    node = trim("nodes", _node("n", 4, "z"))
    assert "managedFields" not in node["metadata"] and "images" not in node["status"]
    assert node["status"]["capacity"]["cpu"] == "4" and node["metadata"]["resourceVersion"] == "10"
    pod = trim("pods", _pod("p", "n", 5, "Running", 0))
    assert pod["spec"]["containers"] == [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]


def test_recorded_cluster_and_pods(trace):
    header, records = read_trace(trace)
    cluster = recorded_cluster(records)
    assert {n.name: (n.cores, n.speed, n.arch, n.zone) for n in cluster.nodes} == \
        {"fast": (8, 1.0, "amd64", "cloud"), "slow": (2, 0.5, "arm64", "edge")}
    pods = recorded_pods(header, records)
    assert pods["pod"].tolist() == ["p0", "p1", "p2", "p3"]
    assert pods["arrival_s"].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert (pods["recorded_node"] == "slow").all() and (pods["transitions"] == 3).all()
    assert (pods["duration_ms"] == 500).all() and (pods["cpu"] == 1).all()


def test_replay_reports_recorded_vs_replayed_placement_and_latency(trace):
    df = replay(trace, policy="greedy", samples=64, seed=0)
    assert len(df) == 4 and (df["replayed_node"] == "fast").all()        # the fast node wins every arrival
    assert not df["same_node"].any()
    # the twin predicts the recorded (slow, speed 0.5) placement about twice as long as the replayed one
    ratio = (df["recorded_p50_ms"] / df["replayed_p50_ms"]).median()
    assert 1.7 < ratio < 2.3
    again = replay(trace, policy="greedy", samples=64, seed=0)
    pd.testing.assert_frame_equal(df, again)                              # seeded: same numbers


def test_bad_traces_and_arguments_exit_2(tmp_path, trace, capsys):
    bad = _write(tmp_path / "x.trace", [{"hello": 1}])
    with pytest.raises(SpecError, match="not a dtlab-trace/v1"):
        read_trace(bad)
    broken = tmp_path / "y.trace"
    broken.write_text(trace.read_text() + "{not json\n")
    with pytest.raises(SpecError, match=r"y.trace:\d+"):
        read_trace(broken)
    for argv, needle in [(["trace", "replay", str(bad)], "not a dtlab-trace/v1"),
                         (["trace", "replay", str(tmp_path / "none")], "file not found"),
                         (["trace", "replay", str(trace), "--policy", "nope"], "policy"),
                         (["trace", "record", "--kubeconfig", str(tmp_path / "none"), "--duration", "1",
                           "--out", str(tmp_path / "o")], "--kubeconfig"),
                         (["trace", "record", "--duration", "0", "--out", str(tmp_path / "o")], "--duration")]:
        assert cli.main(argv) == 2, argv
        assert needle in capsys.readouterr().err


def test_replay_cli_prints_the_comparison(trace, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert cli.main(["trace", "replay", str(trace), "--policy", "greedy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 pods replayed with greedy: same node as recorded 0.0%" in text and "slow" in text
    assert len(pd.read_csv(out)) == 4


def test_recorder_lines_are_on_disk_while_it_records(tmp_path):
    """A reader of a running recording (or of one cut short) sees every record written so far."""
    import threading
    import time
    from types import SimpleNamespace

    from dtlab.trace import Recorder

    class Core:
        def _answer(self, items, watch=False, **kw):
            if watch:                                   # a watch that never connects: the recorder retries
                time.sleep(0.2)
                raise ConnectionError("no watch here")
            return SimpleNamespace(data=json.dumps({"metadata": {"resourceVersion": "7"}, "items": items}))

        def list_node(self, **kw):
            return self._answer([_node("n1", 4, "edge")], **kw)

        def list_pod_for_all_namespaces(self, **kw):
            return self._answer([], **kw)

    out = tmp_path / "live.trace"
    rec = Recorder(Core(), out, duration_s=3.0)
    th = threading.Thread(target=rec.run)
    th.start()
    try:
        deadline = time.monotonic() + 2.5
        while '"type":"SYNCED"' not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert th.is_alive(), "the recording ended before its lines could be read"
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert lines[0]["format"] == FORMAT
        assert {(x.get("resource"), x.get("type")) for x in lines[1:]} >= {("nodes", "LISTED"), ("nodes", "SYNCED")}
    finally:
        th.join(10)
    assert rec.counters["errors"] >= 2 and json.loads(out.read_text().splitlines()[-1])["type"] == "END"
