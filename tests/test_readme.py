"""Every shell command in README.md runs, in a scratch output folder: a README example that fails,
fails the build.

How: each fenced ``sh`` block of the README is parsed into commands (backslash continuations joined,
trailing ``# comments`` dropped). ``HOW`` below says, for every command, how the test runs it. Most
run as written, with ``/tmp/`` moved into the test's scratch folder; the substitutions are listed
explicitly and each says why:
- long jobs run the same path at smoke size (``make experiments`` -> ``RUN_ARGS=--smoke``),
- servers (``dtlab serve``, ``dtlab controller``, ``make lab``) are started on a free loopback port,
  probed over HTTP and stopped,
- ``make test`` is not recursed into, and commands that need a Docker host would be listed as
  skipped with the reason (today the README has none in a shell block).
A README command missing from ``HOW`` fails the test, and so does an entry of ``HOW`` the README no
longer has: the table and the README move together.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.heavy import require
from tests.netutil import free_port, stop_group, wait_for

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
pytestmark = pytest.mark.timeout(900)


def readme_blocks(text: str) -> list[list[str]]:
    """The commands of each fenced sh/bash block, in order."""
    blocks: list[list[str]] = []
    cur: list[str] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            if cur is None and line[3:].strip() in ("sh", "bash", "shell"):
                cur = []
            elif cur is not None:
                blocks.append(cur)
                cur = None
            continue
        if cur is None or not line:
            continue
        line = re.sub(r"\s+#(\s.*)?$", "", line)          # trailing "  # comment"
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        cur.append(" ".join((pending + line).split()))
        pending = ""
    return blocks


@dataclass
class Ctx:
    tmp: Path
    env: dict[str, str]
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    port: int = 0
    log: list[str] = field(default_factory=list)

    def fmt(self, cmd: str) -> str:
        return (cmd.replace("/tmp/", f"{self.tmp}/").replace("{tmp}", str(self.tmp))
                .replace("{port}", str(self.port)))


def _sh(ctx: Ctx, cmd: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = ctx.fmt(cmd)
    ctx.log.append(cmd)
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, env=ctx.env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"README command failed ({p.returncode}): {cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


Handler = Callable[[Ctx, str], None]


def run(sub: str | None = None, timeout: float = 300, check: Callable[[Ctx, subprocess.CompletedProcess], None] | None = None,
        needs: Callable[[], tuple[bool, str]] | None = None) -> Handler:
    """Run the command (or ``sub``, a substitute with {tmp}/{port}) and require exit 0."""
    def h(ctx: Ctx, cmd: str) -> None:
        if needs:
            require(*needs())
        p = _sh(ctx, sub or cmd, timeout)
        if check:
            check(ctx, p)
    return h


def not_run(reason: str) -> Handler:
    def h(ctx: Ctx, cmd: str) -> None:
        ctx.log.append(f"not run: {cmd} ({reason})")
    return h


def export(ctx: Ctx, cmd: str) -> None:
    name, value = cmd[len("export "):].split("=", 1)
    ctx.env[name] = subprocess.run(["bash", "-c", f"echo {value}"], capture_output=True, text=True,
                                   env=ctx.env, check=True).stdout.strip()
    assert ctx.env[name], f"{cmd} produced an empty value"


def server(sub: str, probe: str, ready_s: float = 120) -> Handler:
    """Start a long-running command on a free port, wait until ``probe`` (a URL) answers; it is
    stopped when the block ends."""
    def h(ctx: Ctx, cmd: str) -> None:
        ctx.port = free_port()
        line = ctx.fmt(sub)
        ctx.log.append(line)
        errlog = ctx.tmp / f"server-{len(ctx.procs)}.log"     # a file, not a pipe: a chatty server never blocks
        with errlog.open("w") as err:
            proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=REPO, env=ctx.env, stdout=err,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        ctx.procs.append((cmd, proc))
        try:
            wait_for(lambda: requests.get(ctx.fmt(probe), timeout=2).status_code < 500, ready_s,
                     f"{cmd} to answer", procs=[(cmd, proc)])
        except AssertionError as exc:
            err = errlog.read_text()[-3000:]
            raise AssertionError(f"{exc}\n{err}") from None
    return h


def background(sub: str, ready: str, ready_s: float = 120) -> Handler:
    """Start a long-running command (``cmd &`` in the README) until the block ends; wait until its
    stderr shows ``ready``."""
    def h(ctx: Ctx, cmd: str) -> None:
        line = ctx.fmt(sub)
        ctx.log.append(line)
        err = ctx.tmp / f"bg-{len(ctx.procs)}.log"
        proc = subprocess.Popen(["bash", "-c", f"exec {line} 2>{err}"], cwd=REPO, env=ctx.env,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        ctx.procs.append((cmd, proc))
        wait_for(lambda: err.exists() and ready in err.read_text(), ready_s, f"{cmd}: {ready!r}",
                 procs=[(cmd, proc)])
    return h


def _job_json() -> str:
    import yaml
    job = yaml.safe_load((REPO / "examples" / "job-pipeline.yaml").read_text())
    return json.dumps({"job": job, "policy": "cvar"})


def _plan_answers(ctx: Ctx, p: subprocess.CompletedProcess) -> None:
    body = json.loads(p.stdout)
    assert body["placement"], body


def _plan_cli(ctx: Ctx, p: subprocess.CompletedProcess) -> None:
    body = json.loads(p.stdout)
    assert body["policy"] == "cvar" and body["placement"], body


def _results_listed(ctx: Ctx, p: subprocess.CompletedProcess) -> None:
    assert "V1" in p.stdout, p.stdout


def _fabric() -> tuple[bool, str]:
    from dtlab.substrates import available
    ok, why = available("fabric")
    return ok, why


def _plane() -> tuple[bool, str]:
    from dtlab.kube import localplane
    return localplane.binaries_available()


def _real_nodes() -> tuple[bool, str]:
    import shutil
    ok, why = _plane()
    if not ok:
        return ok, why
    missing = [t for t in ("containerd", "runc", "buildah") if shutil.which(t) is None]
    return not missing, f"real nodes need {', '.join(missing)} (make cluster-deps)"


def _real_submit(ctx: Ctx, p: subprocess.CompletedProcess) -> None:
    """The README promises per-stage node, node_kind, observed_ms and the worker's uname -m."""
    body = json.loads(p.stdout)
    stages = body.get("stages") or {}
    assert stages and body.get("ok") is True, body
    for st in stages.values():
        assert st.get("node_kind") == "real" and st.get("observed_ms") and st.get("uname_m"), st


def _root() -> tuple[bool, str]:
    return os.geteuid() == 0, "needs root (apt-get)"


def _fresh() -> tuple[bool, str]:
    import shutil
    if os.geteuid() != 0:
        return False, "fresh-check needs root (debootstrap, chroot, mounts)"
    return shutil.which("go") is not None, "fresh-check lends the host's Go toolchain; none on PATH"


SMOKE_EDIT = "cp params/smoke/V1.yaml my-v1.yaml"   # $EDITOR: the edit a user makes, at smoke size


def _energy_plan(ctx: Ctx, p: subprocess.CompletedProcess) -> None:
    body = json.loads(p.stdout)
    assert body["policy"] == "energy" and body["prediction"]["energy_j"] > 0, body


def _v1_runs(ctx: Ctx) -> list[Path]:
    return sorted((d.parent for d in (ctx.tmp / "out" / "V1").glob("*/run.json")), key=lambda d: d.stat().st_mtime)


def _table(ctx: Ctx, cmd: str) -> None:
    """<run-id>: the V1 smoke run the block's `dtlab run V1 --smoke` just made."""
    run_dir = _v1_runs(ctx)[0]
    p = _sh(ctx, f".venv/bin/dtlab table {{tmp}}/out/V1/{run_dir.name} --format latex", 120)
    assert "\\toprule" in p.stdout and "greedy" in p.stdout, p.stdout


def _compare(ctx: Ctx, cmd: str) -> None:
    """<run-a>: that smoke run; <run-b>: the same at smoke size with other seeds, made here first."""
    (ctx.tmp / "v1-b.yaml").write_text((REPO / "params" / "smoke" / "V1.yaml").read_text().replace(
        "seeds: [0, 1]", "seeds: [2, 3]"))
    _sh(ctx, ".venv/bin/dtlab run V1 -p {tmp}/v1-b.yaml --out {tmp}/out -q", 600)
    a, b = _v1_runs(ctx)[:2]
    p = _sh(ctx, f".venv/bin/dtlab compare {{tmp}}/out/V1/{a.name} {{tmp}}/out/V1/{b.name}", 120)
    assert "seeds differ" in p.stdout and "latency_mean_ms" in p.stdout, p.stdout

# Every README command (after comment stripping and whitespace folding) -> how the test runs it.
HOW: dict[str, Handler] = {
    "make experiments": run("make experiments OUT={tmp}/out RUN_ARGS='--smoke -q' J=2", timeout=900),
    "make test": not_run("this test is part of `make test`; not recursed into"),
    "cp params/V1.yaml my-v1.yaml": run("cp params/V1.yaml {tmp}/my-v1.yaml"),
    "$EDITOR my-v1.yaml": run(SMOKE_EDIT.replace("my-v1.yaml", "{tmp}/my-v1.yaml")),
    ".venv/bin/dtlab run V1 -p my-v1.yaml": run(".venv/bin/dtlab run V1 -p {tmp}/my-v1.yaml --out {tmp}/out -q", 600),
    ".venv/bin/dtlab run V1 --smoke": run(".venv/bin/dtlab run V1 --smoke --out {tmp}/out -q", 600),
    ".venv/bin/dtlab run all -j 2": run(".venv/bin/dtlab run all -j 2 --smoke --out {tmp}/out -q", 900),
    ".venv/bin/dtlab results": run(".venv/bin/dtlab results --out {tmp}/out", check=_results_listed),
    ".venv/bin/dtlab figures": run(".venv/bin/dtlab figures --out {tmp}/out"),
    "make lab": server("make lab LAB_PORT={port} LAB_ARGS='--no-browser'", "http://127.0.0.1:{port}/api"),
    ".venv/bin/dtlab plan examples/job-pipeline.yaml --cluster examples/cluster-hetero.yaml --policy cvar --json":
        run(check=_plan_cli),
    ".venv/bin/dtlab simulate --cluster examples/cluster-hetero.yaml --workload examples/workload.yaml "
    "--policy greedy --out /tmp/results.csv": run(check=lambda c, p: (c.tmp / "results.csv").stat()),
    ".venv/bin/dtlab policies": run(check=lambda c, p: "cvar" in p.stdout or pytest.fail(p.stdout)),
    ".venv/bin/dtlab plan examples/jobs-older.yaml --job-id detect-1 --cluster examples/cluster-hetero.yaml":
        run(check=lambda c, p: "carried" in p.stdout or pytest.fail(p.stdout)),
    ".venv/bin/dtlab simulate --cluster examples/cluster-hetero.yaml --jobs examples/jobs-older.yaml --job-id etl-1 "
    "--rate-per-s 0.5 --count 50 --out /tmp/older.csv": run(check=lambda c, p: (c.tmp / "older.csv").stat()),
    "make fabric-deps": run(needs=_root),
    "make deps": run(needs=_root, timeout=1800),
    # CI runs the full check before `make test` when the install scripts changed; here the stamp makes it
    # seconds, and without a stamp (a developer machine) it runs the whole check once
    "make fresh-check": run("make fresh-check FRESH_ARGS=--if-changed", timeout=1800, needs=_fresh),
    ".venv/bin/dtlab calibrate compute --quick":
        run(".venv/bin/dtlab calibrate compute --quick --out {tmp}/calibration.yaml", needs=_fabric,
            check=lambda c, p: (c.tmp / "calibration.yaml").stat()),
    ".venv/bin/dtlab calibrate network": run(".venv/bin/dtlab calibrate network --reps 2", needs=_fabric),
    ".venv/bin/dtlab calibrate startup --reps 3":
        run(".venv/bin/dtlab calibrate startup --reps 3 --out {tmp}/startup.yaml", needs=_fabric,
            check=lambda c, p: "native" in p.stdout and (c.tmp / "startup.yaml").stat()),
    ".venv/bin/dtlab fabric cleanup": run(needs=_fabric),
    "make cluster-bin": run(needs=_plane),
    "make cluster": run("make cluster CLUSTER_SPEC=examples/cluster-hetero.yaml", 600, needs=_plane),
    ".venv/bin/dtlab submit examples/job-pipeline.yaml --substrate kube --policy cvar --wait":
        run(".venv/bin/dtlab submit examples/job-pipeline.yaml --substrate kube --policy cvar --wait --timeout 300",
            400, needs=_plane),
    ".venv/bin/dtlab trace record --kubeconfig \"$(.venv/bin/dtlab cluster kubeconfig)\" --duration 20 "
    "--out /tmp/run.trace": run(needs=_plane, timeout=120, check=lambda c, p: (c.tmp / "run.trace").stat()),
    ".venv/bin/dtlab trace replay /tmp/run.trace --policy cvar --out /tmp/replay.csv":
        run(needs=_plane, check=lambda c, p: (c.tmp / "replay.csv").stat()),
    ".venv/bin/dtlab cluster status; .venv/bin/dtlab cluster down": run(needs=_plane),
    ".venv/bin/dtlab cluster up --cluster examples/cluster-hetero.yaml": run(timeout=400, needs=_plane),
    "make cluster-deps": run(needs=_root, timeout=1800),
    ".venv/bin/dtlab cluster up --cluster examples/cluster-hetero.yaml --real-nodes all":
        run(timeout=600, needs=_real_nodes),
    ".venv/bin/dtlab submit examples/job-pipeline.yaml --substrate kube --policy cvar --wait --json":
        run(".venv/bin/dtlab submit examples/job-pipeline.yaml --substrate kube --policy cvar --wait --json "
            "--timeout 400", 500, needs=_real_nodes, check=_real_submit),
    ".venv/bin/dtlab run V2 --smoke --lock-timeout 60":
        run(".venv/bin/dtlab run V2 --smoke --lock-timeout 60 --out {tmp}/out -q", 600),
    ".venv/bin/dtlab results V2": run(".venv/bin/dtlab results V2 --out {tmp}/out",
                                      check=lambda c, p: "V2" in p.stdout or pytest.fail(p.stdout)),
    ".venv/bin/dtlab operator --cluster examples/cluster-hetero.yaml &":
        background(".venv/bin/dtlab operator --cluster examples/cluster-hetero.yaml", "is the leader"),
    ".venv/bin/dtlab submit examples/job-pipeline.yaml --operator --policy cvar --wait":
        run(".venv/bin/dtlab submit examples/job-pipeline.yaml --operator --policy cvar --wait --timeout 300",
            400, needs=_plane),
    '~/.cache/dtlab/k8s/v1.36.3/bin/kubectl --kubeconfig "$(.venv/bin/dtlab cluster kubeconfig)" get dtjobs -n dtlab':
        run(needs=_plane, check=lambda c, p: "video-1" in p.stdout and "Succeeded" in p.stdout or pytest.fail(p.stdout)),
    ".venv/bin/dtlab cluster down": run(needs=_plane),
    "export DTLAB_API_TOKEN=$(openssl rand -hex 16)": export,
    ".venv/bin/dtlab serve --cluster examples/cluster-hetero.yaml":
        server(".venv/bin/dtlab serve --cluster examples/cluster-hetero.yaml --port {port}",
               "http://127.0.0.1:{port}/healthz"),
    "curl -s localhost:8080/plan -d '{\"job\": {...}, \"policy\": \"cvar\"}' -H 'Content-Type: application/json'":
        run("curl -sf localhost:{port}/plan -d @{tmp}/plan.json -H 'Content-Type: application/json'", check=_plan_answers),
    "curl -s localhost:8080/observe -H \"Authorization: Bearer $DTLAB_API_TOKEN\" -d "
    "'[{\"kind\": \"node-down\", \"node\": \"edge-a-0\"}]'":
        run("curl -sf localhost:{port}/observe -H \"Authorization: Bearer $DTLAB_API_TOKEN\" "
            "-H 'Content-Type: application/json' -d '[{\"kind\": \"node-down\", \"node\": \"edge-a-0\"}]'"),
    ".venv/bin/dtlab controller --substrate sim --cluster examples/cluster-hetero.yaml --workload "
    "examples/workload.yaml --jobs 50 --port 9100":
        server(".venv/bin/dtlab controller --substrate sim --cluster examples/cluster-hetero.yaml --workload "
               "examples/workload.yaml --jobs 50 --port {port}", "http://127.0.0.1:{port}/metrics"),
    ".venv/bin/dtlab chaos validate chaos/scenarios/bad-day.yaml --cluster examples/cluster-hetero.yaml": run(),
    ".venv/bin/dtlab chaos export chaos/scenarios/bad-day.yaml -o /tmp/chaos":
        run(check=lambda c, p: next((c.tmp / "chaos").iterdir())),
    ".venv/bin/dtlab workload generate --process mmpp --rates 0.5,4 --sojourn-s 30,10 --template pipeline "
    "--count 500 --out /tmp/wl.yaml": run(check=lambda c, p: (c.tmp / "wl.yaml").stat()),
    ".venv/bin/dtlab replay --policy best-fit --out /tmp/replay":
        run(check=lambda c, p: (c.tmp / "replay" / "allocation.csv").stat()),
    ".venv/bin/dtlab plan examples/job-legacy.yaml --cluster examples/cluster-hetero.yaml --policy energy --json":
        run(check=_energy_plan),
    ".venv/bin/dtlab table outputs/V1/<run-id> --format latex": _table,
    ".venv/bin/dtlab compare outputs/V1/<run-a> outputs/V1/<run-b>": _compare,
    ".venv/bin/dtlab report --out outputs/report":
        run(".venv/bin/dtlab report --out {tmp}/report --outputs {tmp}/out",
            check=lambda c, p: "card" in (c.tmp / "report" / "index.html").read_text() or pytest.fail(p.stdout)),
    ".venv/bin/dtlab replay --policy fgd --policy best-fit --inflate 1.3 --seed 0 --out /tmp/replay-fgd":
        run(check=lambda c, p: (c.tmp / "replay-fgd" / "published_deviation.csv").stat()),
    ".venv/bin/dtlab sweep V1 --grid params/sweeps/V1-rate-policy.yaml --seeds 3 --smoke":
        run(".venv/bin/dtlab sweep V1 --grid params/sweeps/V1-rate-policy.yaml --seeds 3 --smoke "
            "--out {tmp}/sweeps --no-figures -q", 900),
}

BLOCKS = readme_blocks(README.read_text())


def test_every_readme_command_has_a_rule_and_every_rule_a_command():
    cmds = [c for b in BLOCKS for c in b]
    assert len(cmds) >= 20, cmds
    missing = [c for c in cmds if c not in HOW]
    stale = [c for c in HOW if c not in cmds]
    assert not missing, f"README commands without a rule in tests/test_readme.py HOW: {missing}"
    assert not stale, f"rules for commands no longer in the README: {stale}"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b[0][:40] if b else "empty" for b in BLOCKS])
def test_readme_block_runs(index, tmp_path):
    block = BLOCKS[index]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ctx = Ctx(tmp=tmp_path, env=env)
    (tmp_path / "plan.json").write_text(_job_json())
    try:
        for cmd in block:
            if cmd not in HOW:
                pytest.fail(f"README command without a rule: {cmd}")
            HOW[cmd](ctx, cmd)
    finally:
        if any(c.startswith(("make cluster", ".venv/bin/dtlab cluster up")) for c in block):   # no plane left behind
            subprocess.run([str(REPO / ".venv" / "bin" / "dtlab"), "cluster", "down"], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
        for name, proc in reversed(ctx.procs):
            stop_group(proc, grace_s=30)
        print("\n".join(ctx.log))
