"""Issue 13 item 5: `.ci/run` prints each stage's time and fails with a clear message when the run
passes its budget (75 min; CI_BUDGET_S overrides it). The real script runs with a stand-in `make` on
PATH (a stage that sleeps, or passes at once), so the budget logic is checked in seconds. The
cleanup between stages is replaced too (CI_CLEANUP): inside a live test session the real sweep of
dtlab-* cgroups and namespaces could remove a real-node plane's cgroups, which hold no host lock."""
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci_run(tmp_path: Path, make_body: str, budget_s: int) -> tuple[subprocess.CompletedProcess, float]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "make").write_text(f"#!/bin/sh\n{make_body}\n")
    (fake / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CI_BUDGET_S": str(budget_s),
           "CI_CLEANUP": "true"}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, time.monotonic() - t0


def test_a_stage_past_the_budget_fails_naming_it(tmp_path):
    proc, elapsed = ci_run(tmp_path, "sleep 60", budget_s=2)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "stage 'deps' ran past the CI budget of 2 s" in proc.stderr, proc.stderr
    assert "deps" in proc.stderr and "exit 124" in proc.stderr, proc.stderr   # the stage-time table
    assert elapsed < 60, elapsed   # stopped at the budget, not when the stage ended


def test_stage_times_are_printed_when_every_stage_passes(tmp_path):
    proc, _ = ci_run(tmp_path, "exit 0", budget_s=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    for stage in ("deps", "fresh-check", "test"):
        assert f"ci: == {stage} (budget left" in proc.stdout, proc.stdout
    assert "ci: stage times (budget 600 s):" in proc.stdout and "ci: total" in proc.stdout, proc.stdout


def test_a_failing_stage_stops_the_run_with_its_exit_code(tmp_path):
    proc, _ = ci_run(tmp_path, "exit 7", budget_s=600)
    assert proc.returncode == 7 and "stage 'deps' exited 7" in proc.stderr, (proc.returncode, proc.stderr)
