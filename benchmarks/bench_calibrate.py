"""Fabric measurement benchmark: how long `calibrate compute --quick` takes (budget: one minute), and
how well the twin's stage-time prediction matches measured fabric stage times per format.

    sudo .venv/bin/python benchmarks/bench_calibrate.py [--skip-calibrate]

Prints the quick-calibration wall time as a ratio of its 60 s budget, then one row per stage
(predicted = duration_ms * overhead[format] / speed, overheads from the host calibration) and the
median / p95 absolute percentage error. Needs root (cgroups); prints why and exits 0 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dtlab.fabric import available, calibrate  # noqa: E402
from dtlab.model import cluster_from_dict, job_from_dict  # noqa: E402
from dtlab.plan import Plan  # noqa: E402

BUDGET_S = 60.0
CLUSTER = {
    "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "bench"},
    "nodes": [{"name": "fast", "arch": "amd64", "cores": 1, "speed": 1.0, "formats": ["native", "qemu", "wasm"]},
              {"name": "slow", "arch": "arm64", "cores": 1, "speed": 0.5, "formats": ["native", "qemu", "wasm"]}],
}
FORMATS = ["native", "qemu-amd64", "qemu-arm64", "qemu-riscv64", "wasm"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-calibrate", action="store_true")
    ap.add_argument("--duration-ms", type=float, default=200.0)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    ok, why = available()
    if not ok:
        print(f"fabric unavailable: {why}")
        return 0
    if not args.skip_calibrate:
        t = time.monotonic()
        doc = calibrate.measure_compute(quick=True)
        calibrate.write(doc)
        el = time.monotonic() - t
        print(f"calibrate compute --quick: {el:.1f} s = {el / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget")
        print("  overheads:", {k: round(v, 2) for k, v in doc["overheads"].items()})
    from dtlab.substrates import make_substrate

    cluster = cluster_from_dict(CLUSTER)
    stages, place, fmt = [], {}, {}
    for r in range(args.reps):
        for f in FORMATS:
            for n in ("fast", "slow"):
                sid = f"{f}-{n}-{r}"
                stages.append({"id": sid, "compute": {"cpu": 1, "duration_ms": args.duration_ms},
                               "after": [stages[-1]["id"]] if stages else []})
                place[sid], fmt[sid] = n, f
    job = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "acc"}, "spec": {"stages": stages}})
    with make_substrate("fabric", cluster, seed=1, host_cores=0.5, network=False) as sub:
        sub.submit(Plan(job="acc", policy="manual", placement=place, formats=fmt), job)
        sub.advance(None)
        st = sub.results()["stages"]
        oh = dict(sub.timing.overheads)
    st["predicted_ms"] = [args.duration_ms * oh[f] / cluster.node(n).speed for f, n in zip(st["format"], st["node"])]
    st["ape_%"] = 100 * (st["duration_ms"] - st["predicted_ms"]).abs() / st["predicted_ms"]
    print(st[["stage", "format", "node", "duration_ms", "kernel_ms", "predicted_ms", "ape_%"]].round(1).to_string(index=False))
    ape = st["ape_%"].to_numpy()
    print(f"median APE {np.median(ape):.1f}% (target <= 10), p95 APE {np.percentile(ape, 95):.1f}% (target <= 25)")
    for f, g in st.groupby("format"):
        print(f"  {f:13s} median APE {g['ape_%'].median():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
