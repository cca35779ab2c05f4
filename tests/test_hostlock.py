"""The host lock (dtlab/hostlock.py) with real processes and flock, and the host-noise record.

No fabric needed: the lock file lives in tmp_path ($DTLAB_HOSTLOCK), the "other run" is a real
Python process holding the lock. The fabric end-to-end check (two `dtlab run` of V2 started
together) is tests/e2e/test_hostlock_fabric.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dtlab import hostlock, hostnoise, results
from dtlab.fabric import cgroups

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dtlab import hostlock
    with hostlock.exclusive("holder test run", path=Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.fixture
def lockfile(tmp_path, monkeypatch):
    path = tmp_path / "host.lock"
    monkeypatch.setenv(hostlock.ENV_PATH, str(path))
    monkeypatch.delenv(hostlock.ENV_HELD, raising=False)
    return path


def _hold_in_other_process(path: Path, seconds: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != hostlock.ENV_HELD}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_waits_for_the_first_and_says_so(lockfile):
    other = _hold_in_other_process(lockfile, 1.5)
    said: list[str] = []
    t0 = time.monotonic()
    hold = hostlock.acquire("test run", timeout_s=30, on_wait=said.append)
    try:
        waited = time.monotonic() - t0
        assert waited >= 1.0
        info = hold.info()
        assert info["exclusive"] is True and info["mode"] == "own" and info["waited_s"] >= 1.0
        assert f"pid {other.pid}: holder test run" in info["waited_for"]
        assert "waiting for the host lock" in said[0] and f"pid {other.pid}" in said[0]
        assert "got the host lock after waiting" in said[-1]
        assert f"pid {os.getpid()}" in hostlock.holder(lockfile)
        assert os.environ[hostlock.ENV_HELD] == f"{os.getpid()}:{lockfile}"
    finally:
        hostlock.release(hold)
        other.wait(10)
    assert hostlock.ENV_HELD not in os.environ and not hostlock.held(lockfile)


def test_timeout_fails_clearly_naming_the_holder(lockfile):
    other = _hold_in_other_process(lockfile, 5)
    try:
        t0 = time.monotonic()
        with pytest.raises(hostlock.HostBusy) as exc:
            hostlock.acquire("impatient run", timeout_s=0.5)
        assert time.monotonic() - t0 < 3
        msg = str(exc.value)
        assert "not free within 0 s" in msg or "not free within 1 s" in msg
        assert f"pid {other.pid}: holder test run" in msg and hostlock.ENV_TIMEOUT in msg
    finally:
        other.kill()
        other.wait()
    # the holder died: the kernel dropped its flock, the lock is free again at once
    hold = hostlock.acquire("after the crash", timeout_s=2)
    assert hold.waited_s == 0.0
    hostlock.release(hold)


def test_reentrant_in_process_and_inherited_by_children(lockfile):
    outer = hostlock.acquire("outer", timeout_s=1)
    inner = hostlock.acquire("inner (a fabric inside dtlab run)", timeout_s=1)
    assert inner.mode == "reentrant"
    hostlock.release(inner)
    assert hostlock.held(lockfile)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from dtlab import hostlock
        h = hostlock.acquire("child", timeout_s=0.5)
        print(h.mode, hostlock.held())
    """)], capture_output=True, text=True, timeout=60)
    assert child.stdout.split() == ["inherited", "True"], child.stderr
    # a process whose "holder" is not its ancestor (a stale or copied variable) does not get in
    sibling = subprocess.Popen(["sleep", "30"])
    env = dict(os.environ, **{hostlock.ENV_HELD: f"{sibling.pid}:{lockfile}"})
    stranger = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from dtlab import hostlock
        try:
            hostlock.acquire("stranger", timeout_s=0.3)
            print("got it")
        except hostlock.HostBusy:
            print("busy")
    """)], capture_output=True, text=True, timeout=60, env=env)
    sibling.kill()
    sibling.wait()
    assert stranger.stdout.strip() == "busy", stranger.stderr
    hostlock.release(outer)
    assert not hostlock.held(lockfile)


def test_bad_timeout_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(hostlock.ENV_TIMEOUT, "soon")
    with pytest.raises(hostlock.DtlabError, match="DTLAB_LOCK_TIMEOUT: not a number"):
        hostlock.default_timeout()
    monkeypatch.setenv(hostlock.ENV_TIMEOUT, "12")
    assert hostlock.default_timeout() == 12.0


def test_which_runs_are_wall_clock(monkeypatch):
    import dtlab.fabric
    assert hostlock.wall_clock({"substrate": "sim"}) is None
    assert hostlock.wall_clock({"substrate": "fabric"}) == "substrate fabric"
    assert hostlock.wall_clock({"substrate": "kube"}) is None
    assert "real nodes" in hostlock.wall_clock({"substrate": "kube", "substrate_opts": {"exclusive": True}})
    # V4-kube's params ask for real kubelets: the work runs on this host in real time (issue 14)
    assert "real_nodes: all" in hostlock.wall_clock({"substrate": "kube", "substrate_opts": {"real_nodes": "all"}})
    assert hostlock.wall_clock({"substrate": "kube", "substrate_opts": {"real_nodes": None}}) is None
    monkeypatch.setattr(dtlab.fabric, "available", lambda: (False, "no root"))
    assert hostlock.wall_clock({"substrate": "auto"}) is None
    monkeypatch.setattr(dtlab.fabric, "available", lambda: (True, ""))
    assert "auto -> fabric" in hostlock.wall_clock({"substrate": "auto"})


def test_dtlab_run_that_cannot_get_the_lock_fails_with_the_reason(lockfile, monkeypatch, capsys, tmp_path):
    from dtlab import cli

    monkeypatch.setattr(hostlock, "wall_clock", lambda params: "test: pretend V6 measures wall-clock time")
    other = _hold_in_other_process(lockfile, 20)
    try:
        rc = cli.main(["run", "V6", "--smoke", "--out", str(tmp_path / "out"), "--lock-timeout", "0.5", "-q"])
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err
    assert rc == 1
    assert "waiting for the host lock" in err and "not free within" in err and f"pid {other.pid}" in err
    assert not (tmp_path / "out" / "V6").exists() or not any((tmp_path / "out" / "V6").glob("*/run.json"))


def test_lock_timeout_flag_rejects_nonsense(capsys):
    from dtlab import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "V6", "--smoke", "--lock-timeout", "-3"])
    assert exc.value.code == 2 and "must be >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------ host noise
def test_noise_monitor_records_load_steal_parts_and_flags_over_limits():
    spent = {"nodes": 0.0}
    mon = hostnoise.NoiseMonitor(node_cpus=[0], nodes_usage_s=lambda: spent["nodes"],
                                 parts=lambda: {"nodes": 1.5, "relay": 0.25, "controller": 0.5, "plane": 0.0},
                                 recheck=False, limits={"loadavg_per_core_max": 0.0})
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:       # some foreign CPU on core 0 (this test is not a node)
        pass
    out = mon.finish()
    assert out is mon.finish()            # finishing twice is the same record
    assert out["loadavg_1m"]["max"] >= out["loadavg_1m"]["start"] >= 0
    assert 0.0 <= out["steal_share"] <= 1.0 and 0.0 <= out["host_busy_share"] <= 1.0
    assert 0.0 <= out["foreign_share_node_cpus"] <= 1.0
    assert out["cpu_s"] == {"nodes": 1.5, "relay": 0.25, "controller": 0.5, "plane": 0.0}
    assert out["noisy"] and any(r.startswith("loadavg_per_core_max") for r in out["reasons"])


def test_noise_records_measured_host_energy_only_where_rapl_exists(tmp_path):
    """RAPL (issue 23): a readable powercap tree gives host_rapl_j over the run (a counter wrap handled);
    without one the record says it is not available and why (this VM has no /sys/class/powercap)."""
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("999000000\n")                  # 1 J before the counter wraps
    mon = hostnoise.NoiseMonitor(recheck=False, rapl_root=tmp_path)
    (zone / "energy_uj").write_text("2500000\n")                    # wrapped: 1 J + 2.5 J = 3.5 J
    out = mon.finish()
    assert out["rapl"]["available"] and out["rapl"]["host_rapl_j"] == pytest.approx(3.5)
    missing = hostnoise.NoiseMonitor(recheck=False, rapl_root=tmp_path / "none").finish()
    assert missing["rapl"]["available"] is False and "does not exist" in missing["rapl"]["why"]
    assert "host_rapl_j" not in missing["rapl"]
    both = hostnoise.combine([out, out])
    assert both["rapl"] == {"available": True, "why": out["rapl"]["why"], "host_rapl_j": 7.0}
    mixed = hostnoise.combine([out, missing])["rapl"]
    assert mixed["available"] is False and "does not exist" in mixed["why"]


def test_noise_limits_and_combine():
    from dtlab.errors import SpecError
    with pytest.raises(SpecError, match="noise_limits"):
        hostnoise.NoiseMonitor(recheck=False, limits={"loadavg": 1})
    clean = {"loadavg_1m": {"max": 0.5}, "loadavg_per_core_max": 0.25, "steal_share": 0.0,
             "calibration": {"drift": 0.01, "wall_ratio_max": 1.02}, "cpu_s": {"nodes": 1.0}}
    clean["reasons"] = hostnoise.reasons(clean)
    assert clean["reasons"] == []
    noisy = {"loadavg_1m": {"max": 9.0}, "loadavg_per_core_max": 4.5, "steal_share": 0.2,
             "calibration": {"drift": -0.3, "wall_ratio_max": 2.0}, "cpu_s": {"nodes": 2.0, "relay": 0.5}}
    noisy["reasons"] = hostnoise.reasons(noisy)
    noisy["limits"] = dict(hostnoise.LIMITS)
    assert len(noisy["reasons"]) == 4 and any("calibration_drift 0.3 > 0.15" in r for r in noisy["reasons"])
    both = hostnoise.combine([clean, noisy])
    assert both["noisy"] and both["substrates"] == 2 and both["loadavg_per_core_max"] == 4.5
    assert both["cpu_s"] == {"nodes": 3.0, "relay": 0.5} and both["calibration_drift_max"] == -0.3
    assert not hostnoise.combine([clean])["noisy"]


def test_results_listing_flags_noisy_runs(tmp_path):
    for rid, noise in (("a", {"noisy": False, "reasons": []}),
                       ("b", {"noisy": True, "reasons": ["steal_share 0.2 > 0.05"]}), ("c", None)):
        d = tmp_path / "V2" / rid
        d.mkdir(parents=True)
        info = {"experiment": "V2", "run_id": rid, "status": "ok", "started": f"2026-01-01T00:00:0{ord(rid) - 97}"}
        if noise is not None:
            info["host_noise"] = noise
        (d / "run.json").write_text(results.dumps(info))
        (d / "metrics.json").write_text(results.dumps({"fast.mape": 0.1}))
    table = results.list_runs(tmp_path)
    assert list(table["noise"]) == ["clean", "NOISY: steal_share 0.2 > 0.05", ""]
    text = results.format_runs(table)
    assert "host noise: NOISY: steal_share 0.2 > 0.05" in text and "host noise: clean" in text


# ------------------------------------------------------------------ CPU split
def test_cpu_lists_and_the_split_between_nodes_and_the_rest():
    assert cgroups.parse_cpus("0-2,5") == [0, 1, 2, 5] and cgroups.format_cpus([3, 1]) == "1,3"
    with pytest.raises(ValueError, match="not a CPU list"):
        cgroups.parse_cpus("one")
    assert cgroups.split_cpus([0])[:2] == ([0], [0])                  # one core: shared, said so
    assert cgroups.split_cpus([0, 1])[:2] == ([1], [0])
    assert cgroups.split_cpus(list(range(8)))[:2] == ([2, 3, 4, 5, 6, 7], [0, 1])
    assert cgroups.split_cpus([0, 1], "off")[:2] == ([0, 1], [0, 1])
    assert cgroups.split_cpus(list(range(4)), "2-3")[:2] == ([2, 3], [0, 1])
    with pytest.raises(ValueError, match="not available"):
        cgroups.split_cpus([0, 1], "5")


def test_parallel_dtlab_run_puts_wall_clock_experiments_in_one_task(monkeypatch):
    from dtlab import runner

    monkeypatch.setattr(hostlock, "wall_clock", lambda params: "fabric" if params.get("substrate") == "fabric" else None)
    preps = [runner.PreparedRun(runner.EXPERIMENTS[e], Path("x"), {"substrate": s}, run_id=e)
             for e, s in (("V1", "fabric"), ("V2", "fabric"), ("V4", "sim"), ("V3", "fabric"), ("V5", "sim"))]
    tasks = runner.schedule(preps)
    assert [[p.run_id for p in t] for t in tasks] == [["V1", "V2", "V3"], ["V4"], ["V5"]]
    assert [[p.run_id for p in t] for t in runner.schedule(preps[2:3])] == [["V4"]]


def test_fabric_cleanup_never_sweeps_under_a_live_run(lockfile, monkeypatch, capsys):
    from dtlab import cli
    from dtlab.fabric import netns

    swept = []
    for mod, name in ((cgroups, "sweep"), (cgroups, "sweep_controllers"), (netns, "sweep")):
        monkeypatch.setattr(mod, name, lambda *a, name=name, **k: swept.append(name) or [])
    other = _hold_in_other_process(lockfile, 20)
    try:
        rc = cli.main(["fabric", "cleanup"])
    finally:
        other.kill()
        other.wait()
    assert rc == 1 and swept == []
    assert "a wall-clock run is live" in capsys.readouterr().err
    assert cli.main(["fabric", "cleanup"]) == 0 and swept == ["sweep", "sweep_controllers", "sweep"]


def test_fabric_cleanup_keeps_the_real_node_cgroups_of_a_plane_that_is_up(lockfile, tmp_path, monkeypatch, capsys):
    """A local plane lives between runs without the host lock: cleanup must not kill its kubelets' cgroups
    (it did: a CI run's README test swept a live plane's `dtlab-<plane>-<node>`), but still sweeps a dead one's."""
    import json

    from dtlab import cli
    from dtlab.fabric import netns
    from dtlab.kube import localplane

    monkeypatch.setenv("DTLAB_CACHE", str(tmp_path / "cache"))
    me = {"pid": os.getpid(), "start_time": localplane._proc_start_time(os.getpid())}
    dead = {"pid": 1, "start_time": "not-this-one"}                     # pid 1 is not that process: gone
    for plane, proc in (("up", me), ("down", dead)):
        d = tmp_path / "cache" / "localplane" / plane
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"processes": {"kube-apiserver": proc},
                                                  "real_nodes": [{"name": "n1", "cgroup": f"dtlab-{plane}-n1",
                                                                  "processes": {"kubelet": dead}}]}))
    assert localplane.live_cgroups() == {"dtlab-up-n1"}

    root = tmp_path / "cg"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    for name in ("dtlab-up-n1", "dtlab-down-n1", "dtlab-leftover", "system"):
        (root / "cpu" / name).mkdir()
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    monkeypatch.setattr(cgroups, "sweep_controllers", lambda **k: [])   # the host's real cpuset/cpuacct
    monkeypatch.setattr(netns, "sweep", lambda *a, **k: [])             # and its real namespaces: not here
    assert cli.main(["fabric", "cleanup"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kept"] == ["dtlab-up-n1"]
    assert sorted(Path(p).name for p in out["removed"]) == ["dtlab-down-n1", "dtlab-leftover"]
    assert sorted(p.name for p in (root / "cpu").iterdir() if p.is_dir()) == ["dtlab-up-n1", "system"]


def test_parallel_dtlab_run_finishes_the_sims_before_the_wall_clock_lane_starts(monkeypatch):
    """`make experiments` (-j 2): a sim beside the fabric lane took 82 % of V1's node CPU (NOISY); the
    wall-clock lane now starts once every sim/twin-only run has finished."""
    from concurrent.futures import Future

    from dtlab import runner

    monkeypatch.setattr(hostlock, "wall_clock", lambda params: "fabric" if params.get("substrate") == "fabric" else None)
    subs = {"V1": "fabric", "V2": "fabric", "V4": "sim", "V5": "twin", "V6": "sim"}
    monkeypatch.setattr(runner, "prepare", lambda e, *a, **k: runner.PreparedRun(e, Path("x"), {"substrate": subs[e.id]},
                                                                                   run_id=e.id))
    monkeypatch.setattr(runner, "ensure_kernel", lambda *a, **k: "k")
    events: list[tuple[str, str]] = []

    class Pool:                       # in-process: records when each task is submitted and done
        def __init__(self, **kw):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, task, *args):
            events.append(("submit", "+".join(p.run_id for p in task)))
            fut: Future = Future()
            fut.set_result([runner.RunOutcome(p.experiment.id, p.run_id, Path("x"), "ok") for p in task])
            events.append(("done", "+".join(p.run_id for p in task)))
            return fut

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Pool)
    out = runner.run(["V1", "V2", "V4", "V5", "V6"], jobs=2, progress=False)
    assert [o.experiment for o in out] == ["V1", "V2", "V4", "V5", "V6"]
    wall_submitted = events.index(("submit", "V1+V2"))
    assert {e[1] for e in events[:wall_submitted] if e[0] == "done"} == {"V4", "V5", "V6"}
