"""dtlab sweep: grid checks, point expansion, and a real Dask sweep with a worker killed mid-sweep + resume."""
from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from dtlab import sweep as sw
from dtlab.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
GRID = {"grid": {"rates_per_s": [0.5, 1.0]}, "params": {"policies": ["greedy", "random"]}}


def _killing_run(params, marker: str, counter: str):
    """Test-only experiment hook: log every call; the first call anywhere SIGKILLs its own worker process."""
    from dtlab.experiments import v1

    with open(counter, "a") as f:
        f.write(json.dumps({"rate": params["rates_per_s"][0], "seed": params["seeds"][0], "pid": os.getpid()}) + "\n")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return v1.run(params)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _flaky_run(params, marker: str, counter: str, broken_rate: float):
    """Test-only hook: ``broken_rate`` always raises; any other point raises once overall (then retried)."""
    from dtlab.experiments import v1

    rate = params["rates_per_s"][0]
    with open(counter, "a") as f:
        f.write(json.dumps({"rate": rate, "seed": params["seeds"][0], "pid": os.getpid()}) + "\n")
    if rate == broken_rate:
        raise RuntimeError("this point always fails")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return v1.run(params)
    raise RuntimeError("transient failure")


def _calls(counter: Path) -> list[dict]:
    return [json.loads(line) for line in counter.read_text().splitlines()] if counter.exists() else []


def _mtimes(out: Path) -> dict[str, int]:
    return {d.name: (d / "metrics.json").stat().st_mtime_ns for d in out.iterdir() if (d / "metrics.json").exists()}


# --- grid validation (no cluster) -----------------------------------------------------------------
@pytest.mark.parametrize("grid, field", [
    ({"rates_per_sec": [1.0]}, "grid.rates_per_sec"),
    ({"seeds": [0, 1]}, "grid.seeds"),
    ({"substrate_opts.telemetry_nois": [0.1]}, "grid.substrate_opts.telemetry_nois"),
    ({"jobs.count": [1]}, "grid.jobs.count"),
    ({"jobs": ["many"]}, "grid.jobs"),
    ({"jobs": []}, "grid.jobs"),
    ({"jobs": [10, 10]}, "grid.jobs"),
    ({"grid": {"jobs": [10]}, "params": {"jobs": 5}}, "params.jobs"),
    ({"grid": {"jobs": [10]}, "params": {"bogus": 5}}, "params.bogus"),
    ({"grid": {"jobs": [10]}, "params": {"samples": "many"}}, "params.samples"),
    ({"grid": {"jobs": [10]}, "params": {"seeds": [3]}}, "params.seeds"),
    ({"grid": {"jobs": [10]}, "experiment": "V2"}, "experiment"),
    ({"grid": {"jobs": [10]}, "metrics": ["mape"]}, "metrics[0]"),
    ({"grid": {"jobs": [10]}, "grdi": 1}, "grdi"),
])
def test_grid_errors_name_the_key(grid, field):
    with pytest.raises(SpecError) as err:
        sw.expand("V1", sw.parse_grid(grid), sw.base_params("V1", smoke=True), [0])
    assert err.value.field == field


def test_cli_bad_grid_exits_2_naming_the_key(tmp_path, capsys):
    from dtlab.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  arrival_rate: [1.0, 2.0]\n")
    assert main(["sweep", "V1", "--grid", str(bad), "--seeds", "2", "--smoke", "--out", str(tmp_path / "o")]) == 2
    assert "grid.arrival_rate" in capsys.readouterr().err
    assert not (tmp_path / "o" / "V1").exists() or not any((tmp_path / "o" / "V1").iterdir())


def test_expand_points():
    base = sw.base_params("V2", smoke=True)
    grid = sw.parse_grid({"substrate_opts.telemetry_noise": [0.0, 0.2], "predictors": ["fast", ["des", "none"]]})
    points = sw.expand("V2", grid, {**base, "substrate_opts": {"tail_prob": 0.1}}, [0, 1, 2])
    assert len(points) == 2 * 2 * 3 and len({p.id for p in points}) == 12
    p = points[0]
    assert p.params["substrate_opts"] == {"tail_prob": 0.1, "telemetry_noise": 0.0}   # dotted key merged in
    assert p.params["predictors"] == ["fast"]                                          # scalar -> [scalar]
    assert points[3].params["predictors"] == ["des", "none"] and p.params["seeds"] == [0]
    assert p.params["jobs"] == base["jobs"]                                            # base params kept
    fixed = sw.parse_grid({"grid": {"jobs": [5]}, "params": {"substrate_opts.tail_prob": 0.0}})
    assert sw.expand("V2", fixed, base, [0])[0].params["substrate_opts"] == {"tail_prob": 0.0}
    v4 = sw.expand("V4", sw.parse_grid({"substrate_opts.telemetry_noise": [0.3]}), {}, [0])[0]
    assert v4.params["substrate_opts"] == {"failure_rate_per_h": 0.0, "telemetry_noise": 0.3}  # DEFAULTS' entry kept
    again = sw.expand("V2", grid, {**base, "substrate_opts": {"tail_prob": 0.1}}, [0, 1, 2])
    assert [q.id for q in again] == [q.id for q in points]                             # stable ids


@pytest.mark.parametrize("path", sorted((ROOT / "params" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(path):
    grid = sw.load_grid(path)
    assert grid.experiment, f"{path.name} names its experiment"
    for smoke in (False, True):
        points = sw.expand(grid.experiment, grid, sw.base_params(grid.experiment, smoke=smoke), [0, 1])
        assert len(points) == 2 * grid.size <= 2 * 40, "sized small"


# --- a real sweep on Dask ---------------------------------------------------------------------------
def test_sweep_survives_killed_worker_and_resumes(tmp_path):
    from distributed import LocalCluster

    from dtlab.experiments import v1

    marker, counter = tmp_path / "killed", tmp_path / "calls.jsonl"
    hook = functools.partial(_killing_run, marker=str(marker), counter=str(counter))
    out = tmp_path / "out"

    res = sw.sweep("V1", GRID, seeds=2, smoke=True, out=out, workers=2, progress=False, run_fn=hook)
    assert marker.exists(), "the hook killed a worker"
    assert res.failed == {} and sorted(res.ran) == sorted({p.id for p in res.points}) and len(res.ran) == 4
    calls = _calls(counter)
    assert len(calls) == 5                                   # 4 points + the killed attempt, retried once
    killed_pid = int(marker.read_text())
    assert sum(c["pid"] == killed_pid for c in calls) == 1   # the dead process ran nothing else
    keys = [(c["rate"], c["seed"]) for c in calls]
    assert sorted(set(keys)) == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]

    # every point folder is complete, holds one seed, and equals a direct run (the retried one too)
    exp_dir = out / "V1"
    for p in res.points:
        d = exp_dir / p.id
        meta = json.loads((d / "params.json").read_text())
        assert meta["seed"] == p.seed and meta["values"] == {"rates_per_s": p.values["rates_per_s"]}
        assert set(pd.read_csv(d / "results.csv")["seed"]) == {p.seed}
    retried = next(p for p in res.points if [p.values["rates_per_s"], p.seed] == [calls[0]["rate"], calls[0]["seed"]])
    direct = v1.run(dict(retried.params)).metrics
    assert json.loads((exp_dir / retried.id / "metrics.json").read_text()) == json.loads(json.dumps(direct))
    assert not list(exp_dir.glob(".*tmp*")), "no temp folders left behind"

    # merged table: one row per point x mean metric (2 policies x 1 rate x 5 measures)
    table = pd.read_csv(exp_dir / "sweep.csv")
    assert list(table.columns) == ["experiment", "point", "seed", "rates_per_s", "metric", "value", "measure", "series"]
    # the run's measured regime (regime.r<rate>.*) rides along without a measure
    regime_rows = table["metric"].str.startswith("regime.")
    assert regime_rows.any() and table.loc[regime_rows, "measure"].isna().all()
    headline = table[table["measure"].notna()]        # V1 also records its paired comparison (no measure)
    assert not table.loc[table["metric"].str.startswith("vs_best_baseline."), "measure"].notna().any()
    assert headline.shape == (4 * 2 * 5, 8)
    assert headline.groupby(["rates_per_s", "seed"]).size().to_dict() == \
        {(r, s): 10 for r in (0.5, 1.0) for s in (0, 1)}
    assert set(headline["measure"]) == {"latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate",
                                        "energy_proxy_j"}
    assert set(headline["series"]) == {"greedy", "random"}
    assert not table["metric"].str.endswith("ci_low").any()
    for name in ("sweep_miss_rate", "sweep_latency_p95_ms"):
        for ext in ("pdf", "png"):
            assert (exp_dir / "figures" / f"{name}.{ext}").stat().st_size > 1000

    # resume after an "interrupted" sweep, on an existing scheduler, with the grid grown by a value whose
    # points always fail: only the missing point runs (after one retried exception), the broken points
    # are reported after 1 + 2 retries, finished points stay untouched
    before = _mtimes(exp_dir)
    lost = res.points[1].id
    import shutil
    shutil.rmtree(exp_dir / lost)
    flaky = functools.partial(_flaky_run, marker=str(tmp_path / "flaked"), counter=str(counter), broken_rate=2.0)
    grown = {**GRID, "grid": {"rates_per_s": [0.5, 1.0, 2.0]}}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res2 = sw.sweep("V1", grown, seeds=2, smoke=True, out=out, scheduler=cluster.scheduler_address,
                        progress=False, run_fn=flaky)
    broken = {p.id for p in res2.points if p.values["rates_per_s"] == 2.0}
    assert res2.ran == [lost] and len(res2.skipped) == 3 and set(res2.failed) == broken and len(broken) == 2
    assert all("always fails" in msg for msg in res2.failed.values())
    lost_key = (res.points[1].values["rates_per_s"], res.points[1].seed)
    new_calls = _calls(counter)[5:]
    assert sorted((c["rate"], c["seed"]) for c in new_calls) == sorted([lost_key] * 2 + [(2.0, 0), (2.0, 1)] * 3)
    after = _mtimes(exp_dir)
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in before.items() if k != lost}
    assert not any((exp_dir / b).exists() for b in broken)
    pd.testing.assert_frame_equal(pd.read_csv(exp_dir / "sweep.csv"), table)   # same numbers (sim is seeded)

    # nothing left to do: no cluster, no calls
    res3 = sw.sweep("V1", GRID, seeds=2, smoke=True, out=out, progress=False, run_fn=hook, figures=False)
    assert res3.ran == [] and len(res3.skipped) == 4 and len(_calls(counter)) == 5 + 8


def _lock_probe_run(params, counter: str):
    """Test-only hook: record which worker ran the point and whether it ran under the host lock."""
    from dtlab import hostlock
    from dtlab.experiments import v1

    with open(counter, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "held": hostlock.held()}) + "\n")
    return v1.run(params)


def test_wall_clock_sweep_runs_under_the_host_lock_one_point_at_a_time(tmp_path, monkeypatch, capsys):
    from dtlab import hostlock

    monkeypatch.setenv(hostlock.ENV_PATH, str(tmp_path / "host.lock"))
    monkeypatch.delenv(hostlock.ENV_HELD, raising=False)
    monkeypatch.setattr(hostlock, "wall_clock", lambda params: "test: pretend the points run on the fabric")
    counter = tmp_path / "calls.jsonl"
    res = sw.sweep("V1", {"grid": {"rates_per_s": [0.5, 1.0]}}, seeds=1, smoke=True, out=tmp_path / "out",
                   workers=2, progress=False, run_fn=functools.partial(_lock_probe_run, counter=str(counter)),
                   figures=False)
    calls = _calls(counter)
    assert res.failed == {} and len(calls) == 2
    assert all(c["held"] for c in calls) and len({c["pid"] for c in calls}) == 1   # inherited, one worker
    assert "one point at a time (workers 1, not 2)" in capsys.readouterr().err
    assert not hostlock.held()
def test_sweep_point_writes_run_json_with_run_provenance(tmp_path):
    """Each sweep point carries the provenance `dtlab run` records (issue 23), so `dtlab compare`/report can read it."""
    import subprocess

    from dtlab.experiments import v1
    from dtlab.runner import provenance, project_root

    params = dict(v1.SMOKE, policies=["greedy"], seeds=[1])
    point = tmp_path / "V1" / "p-abc"
    point.parent.mkdir(parents=True)
    status = sw.run_point("V1", params, str(point), {"values": {"policies": "greedy"}, "seed": 1})
    assert status["status"] == "done"
    info = json.loads((point / "run.json").read_text())
    assert info["status"] == "ok" and info["experiment"] == "V1" and info["run_id"] == "p-abc"
    assert info["params"] == json.loads(json.dumps(params)) and info["seed"] == [1]
    assert info["substrate"] == "sim" and info["substrate_requested"] == "sim"
    assert info["started"] <= info["finished"] and info["duration_s"] > 0
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["git"]["revision"] == head and isinstance(info["git"]["dirty"], bool)
    expected = provenance(project_root())
    assert set(info["packages"]) == set(expected["packages"]) and info["host"] == expected["host"]
    assert info["sweep"]["values"] == {"policies": "greedy"}
