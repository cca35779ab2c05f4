"""Telemetry of real kube nodes, the parts that need no plane: flag checks (exit 2 naming the flag),
the exporter command of a real node, and the refusal without real nodes. The real thing (exporter
on the node's cgroup, Prometheus, a hog seen within ~2 s) is tests/e2e/test_telemetry_kube.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from dtlab import cli
from dtlab.errors import DtlabError
from dtlab.kube import nodetelemetry

REPO = Path(__file__).resolve().parents[1]


def test_cluster_up_telemetry_without_real_nodes_is_exit_2_naming_the_flag(capsys):
    code = cli.main(["cluster", "up", "--cluster", str(REPO / "examples" / "cluster-hetero.yaml"),
                     "--telemetry", "prometheus", "--name", "never-started"])
    assert code == 2
    assert "--telemetry" in capsys.readouterr().err


def test_serve_prometheus_auto_without_a_substrate_is_exit_2(capsys):
    code = cli.main(["serve", "--cluster", str(REPO / "examples" / "cluster-hetero.yaml"), "--prometheus", "auto",
                     "--insecure-dev"])
    assert code == 2
    assert "--prometheus" in capsys.readouterr().err


def test_exporter_of_a_real_node_reads_its_cgroup_parent_with_its_quota_as_capacity():
    rec = {"name": "rn-0", "cgroup": "dtlab-p-rn-0", "cpus": 0.75}
    argv = nodetelemetry.exporter_argv(rec, 12345, 4242)
    assert argv[1].endswith("dtlab/fabric/exporter.py")
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts["--node"] == "rn-0"
    assert opts["--cpu-dir"] == str(nodetelemetry.CPUACCT / "dtlab-p-rn-0")
    assert float(opts["--capacity-cores"]) == 0.75
    assert opts["--port"] == "12345" and opts["--parent-pid"] == "4242"


def test_start_without_real_nodes_refuses_before_starting_anything(tmp_path):
    spawned = []
    with pytest.raises(DtlabError, match="real nodes"):
        nodetelemetry.start({"real_nodes": [], "workdir": str(tmp_path)}, lambda *a: spawned.append(a),
                            lambda p: True, lambda: None)
    assert spawned == []


def test_serve_plane_without_the_kube_substrate_is_exit_2(capsys):
    code = cli.main(["serve", "--cluster", str(REPO / "examples" / "cluster-hetero.yaml"), "--plane", "p",
                     "--insecure-dev"])
    assert code == 2
    assert "--plane" in capsys.readouterr().err
