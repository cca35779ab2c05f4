"""benchmarks/bench_extender.py at a tiny size on the real local plane (issue 24): its JSON has the
documented keys and both arms - kube-scheduler alone and with the dtlab extender - bound every pod."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from dtlab.kube import localplane
from tests.heavy import require

REPO = Path(__file__).resolve().parents[2]


def test_bench_extender_tiny_run_binds_every_pod_in_both_arms():
    ok, why = localplane.binaries_available()
    require(ok, f"local control plane unavailable: {why}")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_extender.py"), "--nodes", "20",
                           "--pods", "50", "--limit", "120", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == 1
    r = rows[0]
    for key in ("pods_per_s_alone", "pods_per_s_extender", "ratio", "extender_p50_ms", "extender_p99_ms"):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert r["nodes"] == 20 and r["bound_alone"] == r["bound_extender"] == 50
    assert r["ratio"] == r["pods_per_s_extender"] / r["pods_per_s_alone"]
    assert r["filter_calls"] >= 50 and r["prioritize_calls"] >= 50   # the extender was in the loop for every pod
    assert r["extender_p50_ms"] <= r["extender_p99_ms"]
    assert (r["scheduler_qps"], r["scheduler_burst"]) == (localplane.SCHEDULER_QPS, localplane.SCHEDULER_BURST)
