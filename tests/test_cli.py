"""CLI: exit codes, JSON output, simulate CSV, error messages without tracebacks, the command groups."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from dtlab import cli

EX = "examples"
CLUSTER = f"{EX}/cluster-hetero.yaml"


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json(capsys):
    code, out, err = run(["plan", f"{EX}/job-fanout.yaml", "--cluster", CLUSTER, "--policy", "cvar",
                          "--samples", "128", "--seed", "1", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert set(data["placement"]) == {"split", "map-0", "map-1", "map-2", "reduce"}
    assert data["policy"] == "cvar" and data["samples"] == 128 and data["predictor"] == "fast"
    for key in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "cvar95_ms", "deadline_miss_prob"):
        assert key in data["prediction"]
    assert data["elapsed_ms"] > 0 and "shadow" in data


def test_plan_text_and_legacy_job_layout(capsys):
    code, out, _ = run(["plan", f"{EX}/job-legacy.yaml", "--cluster", CLUSTER, "--policy", "resilient",
                        "--predictor", "legacy"], capsys)
    assert code == 0
    assert "extract" in out and "shadow" in out and "p95" in out


def test_plan_same_seed_same_json(capsys):
    argv = ["plan", f"{EX}/job-pipeline.yaml", "--cluster", CLUSTER, "--policy", "random", "--seed", "5", "--json"]
    a = json.loads(run(argv, capsys)[1])
    b = json.loads(run(argv, capsys)[1])
    a.pop("elapsed_ms"), b.pop("elapsed_ms")
    assert a == b


def test_bad_job_spec_exit_2_names_field(tmp_path, capsys):
    bad = tmp_path / "job.yaml"
    bad.write_text("apiVersion: dtlab/v1\nkind: Job\nmetadata: {name: x}\n"
                   "spec: {stages: [{id: a, compute: {duration_ms: 5}}, {id: b, compute: {duration_ms: -1}}]}\n")
    code, out, err = run(["plan", str(bad), "--cluster", CLUSTER], capsys)
    assert code == 2
    assert "spec.stages[1].compute.duration_ms" in err and "Traceback" not in err


@pytest.mark.parametrize("extra,needle", [(["--policy", "nope"], "unknown policy"), (["--samples", "0"], "samples")])
def test_bad_parameters_exit_2(extra, needle, capsys):
    code, _, err = run(["plan", f"{EX}/job-single.yaml", "--cluster", CLUSTER, *extra], capsys)
    assert code == 2 and needle in err


def test_missing_cluster_file_exit_2(capsys):
    code, _, err = run(["plan", f"{EX}/job-single.yaml", "--cluster", "no/such.yaml"], capsys)
    assert code == 2 and "file not found" in err


def test_console_script_no_traceback(tmp_path):
    """The real process: exit status 2 and a one-line message on stderr."""
    code = "import sys; from dtlab.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "plan", f"{EX}/job-single.yaml", "--cluster",
                           str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "none.yaml" in proc.stderr


def test_simulate_writes_csv(tmp_path, capsys):
    pytest.importorskip("simpy")
    wl = tmp_path / "wl.yaml"
    wl.write_text("apiVersion: dtlab/v1\nkind: Workload\narrivals: {process: poisson, rate_per_s: 1.0}\n"
                  "jobs:\n  count: 15\n  template:\n    apiVersion: dtlab/v1\n    kind: Job\n"
                  "    metadata: {name: t, deadline_ms: 2000}\n"
                  "    spec: {stages: [{id: s, compute: {cpu: 1, duration_ms: 300}}]}\n")
    out = tmp_path / "results.csv"
    code, text, err = run(["simulate", "--cluster", CLUSTER, "--workload", str(wl), "--policy", "least-allocated",
                           "--seed", "2", "--out", str(out)], capsys)
    assert code == 0, err
    df = pd.read_csv(out)
    assert len(df) == 15 and {"job", "latency_ms", "missed", "nodes"} <= set(df.columns)
    assert "15 jobs" in text


def test_simulate_bad_workload_exit_2(tmp_path, capsys):
    wl = tmp_path / "wl.yaml"
    wl.write_text("apiVersion: dtlab/v1\nkind: Workload\narrivals: {process: poisson, rate_per_s: -1}\n"
                  "jobs: {count: 3, template: nothing.yaml}\n")
    code, _, err = run(["simulate", "--cluster", CLUSTER, "--workload", str(wl), "--out", str(tmp_path / "r.csv")],
                       capsys)
    assert code == 2 and "rate_per_s" in err


class FakeGroup:
    """A command group module's shape: ``register(subparsers)`` with ``set_defaults(func=...)``."""
    calls: list = []

    @staticmethod
    def register(subparsers):
        p = subparsers.add_parser("fake-cmd")
        p.add_argument("--x", type=int, default=1)
        p.set_defaults(func=FakeGroup.run)

    @staticmethod
    def run(args):
        FakeGroup.calls.append(args.x)
        return 7


def test_command_groups_are_extensible(monkeypatch):
    monkeypatch.setattr(cli, "GROUPS", (*cli.GROUPS, FakeGroup))
    assert cli.main(["fake-cmd", "--x", "3"]) == 7
    assert FakeGroup.calls[-1] == 3


def test_policies_listing(capsys):
    code, out, _ = run(["policies"], capsys)
    assert code == 0 and {"greedy", "resilient", "cvar", "least-allocated", "random", "round-robin",
                          "rl_stub"} <= set(out.split())
