"""Real kubelet nodes next to KWOK nodes: what one real node costs this host (issue 16's figures).

Starts a local plane with ``--real`` real nodes (amd64 native, arm64 and riscv64 through binfmt
QEMU, one amd64 node that runs the wasm image, then more amd64 nodes) and ``--kwok`` KWOK nodes, and
reports:

* ``up_s`` (plane start, KWOK nodes registered, real nodes Ready) and ``real_ready_s`` (from the
  first real node's start, images imported into each node's containerd, to all of them Ready);
* per real node, idle: resident memory (VmRSS and PSS from ``/proc/<pid>/smaps_rollup``) of its
  kubelet and containerd, and their CPU over ``--idle-s`` seconds as a share of one core;
* container start-up per format: ``--reps`` one-stage jobs per (node, format) pinned through the
  kube substrate; ``startup_ms`` = pod create -> the worker's own start (sandbox, image, runtime),
  ``observed_ms`` = the worker's own start -> end (the stage's work, ``duration_ms`` nominal);
* the host's load average and available memory before and after (this 2-core VM is shared: the
  numbers hold for the load they were taken under, which is printed with them). The measurement
  holds the host lock (:mod:`dtlab.hostlock`), so no other dtlab wall-clock run overlaps it.

How many real nodes fit: each kubelet takes inotify instances, ``fs.inotify.max_user_instances``
(128 by default) is shared by every root process on the host, and past it a kubelet exits at start
with ``inotify_init: too many open files`` (``cluster up`` then fails naming that kubelet).

The plane is stopped at the end (``down`` removes every process, mount, netns, bridge and cgroup).
Needs root and ``make cluster-deps``; exits 0 with a note when real nodes are unavailable.

Run: .venv/bin/python benchmarks/bench_realnodes.py [--real 4] [--kwok 1000] [--reps 3] [--idle-s 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlab.kube import localplane as lp  # noqa: E402
from dtlab.kube import realnodes  # noqa: E402

PLANE = "bench-realnodes"
FIRST = [  # the execution paths, then plain amd64 nodes
    {"arch": "amd64", "formats": ["native"], "fmt": "native"},
    {"arch": "arm64", "formats": ["native"], "fmt": "native"},
    {"arch": "riscv64", "formats": ["native"], "fmt": "native"},
    {"arch": "amd64", "formats": ["wasm"], "fmt": "wasm"},
]


def real_nodes(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        k = FIRST[i] if i < len(FIRST) else FIRST[0]
        out.append({"name": f"real-{i}-{k['arch']}{'-wasm' if k['fmt'] == 'wasm' else ''}", "arch": k["arch"],
                    "cores": 2, "speed": 1.0, "mem_gb": 4, "formats": k["formats"], "zone": f"z{i % 3}",
                    "labels": {}, "_fmt": k["fmt"]})
    return out


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1])
        for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if ln.startswith("Pss:"):
                pss = int(ln.split()[1])
    except OSError:
        pass
    return rss, pss


def _cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _mem_available_mb() -> float:
    for ln in Path("/proc/meminfo").read_text().splitlines():
        if ln.startswith("MemAvailable:"):
            return int(ln.split()[1]) / 1024
    return float("nan")


def footprint(st: dict[str, Any], idle_s: float) -> list[dict[str, Any]]:
    pids = {(r["name"], c): p["pid"] for r in st["real_nodes"] for c, p in r["processes"].items()}
    cpu0 = {k: _cpu_s(pid) for k, pid in pids.items()}
    time.sleep(idle_s)
    rows = []
    for r in st["real_nodes"]:
        row: dict[str, Any] = {"node": r["name"]}
        for c in ("kubelet", "containerd"):
            pid = pids[(r["name"], c)]
            rss, pss = _rss_pss_kb(pid)
            row[f"{c}_rss_mb"] = round(rss / 1024, 1)
            row[f"{c}_pss_mb"] = round(pss / 1024, 1)
            row[f"{c}_cpu_pct"] = round(100 * (_cpu_s(pid) - cpu0[(r["name"], c)]) / idle_s, 2)
        row["total_rss_mb"] = round(row["kubelet_rss_mb"] + row["containerd_rss_mb"], 1)
        row["total_cpu_pct"] = round(row["kubelet_cpu_pct"] + row["containerd_cpu_pct"], 2)
        rows.append(row)
    return rows


def startup(cluster_nodes: list[dict[str, Any]], st: dict[str, Any], reps: int) -> list[dict[str, Any]]:
    from dtlab.model import load_cluster, load_job
    from dtlab.plan import Plan
    from dtlab.substrates.kube import KubeSubstrate
    cluster = load_cluster({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "bench"},
                            "nodes": [{k: v for k, v in n.items() if not k.startswith("_") and k != "labels"}
                                      for n in cluster_nodes]})
    targets = [n for n in cluster_nodes if n["name"] in {r["name"] for r in st["real_nodes"]}][:len(FIRST)]
    rows = []
    sub = KubeSubstrate(cluster, seed=0, kubeconfig=st["kubeconfig"], plane=PLANE, start_plane=False,
                        drain_limit_s=300, noise=False)
    try:
        for rep in range(reps):
            for n in targets:
                job = load_job({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": f"su-{rep}-{n['name']}"},
                                "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "mem_gb": 0.1,
                                                                            "duration_ms": 200}}]}}, cluster)
                sub.submit(Plan(job.name, "pinned", {"s": n["name"]}, {}, {"s": n["_fmt"]}), job)
                sub.advance(None)            # one at a time: start-up alone, not queued behind another
                s = sub.job_status(job.name)["stages"]["s"]
                rows.append({"node": n["name"], "arch": n["arch"], "format": n["_fmt"], "rep": rep,
                             "ok": sub.job_status(job.name)["ok"], "startup_ms": s["startup_ms"],
                             "observed_ms": s["observed_ms"], "uname_m": s["uname_m"], "exec": s["exec"]})
    finally:
        sub.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=int, default=4)
    ap.add_argument("--kwok", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--lock-timeout-s", type=float, default=None, help="wait at most this long for the host lock")
    args = ap.parse_args(argv)
    why = realnodes.missing()
    ok, why_bins = lp.binaries_available()
    if why or not ok:
        print(json.dumps({"skipped": why or why_bins}))
        return 0
    from dtlab import hostlock
    with hostlock.exclusive(f"bench_realnodes (pid {os.getpid()})", args.lock_timeout_s,
                            on_wait=lambda msg: print(msg, file=sys.stderr, flush=True)):
        out = measure(args)
    print(json.dumps(out, indent=1))
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The plane up, footprint, start-up and the plane down (under the host lock: one wall-clock
    measurement at a time on this host)."""
    reals = real_nodes(args.real)
    nodes = reals + lp.default_nodes(args.kwok)
    host0: dict[str, Any] = {"loadavg": os.getloadavg(), "mem_available_mb": round(_mem_available_mb())}
    t0 = time.monotonic()
    st = lp.up([{k: v for k, v in n.items() if not k.startswith("_")} for n in nodes], name=PLANE,
               timeout=args.timeout, real_nodes=[n["name"] for n in reals])
    up_s = time.monotonic() - t0
    try:
        host_up: dict[str, Any] = {"loadavg": os.getloadavg(), "mem_available_mb": round(_mem_available_mb())}
        feet = footprint(st, args.idle_s)
        starts = startup(reals, st, args.reps)
        host1 = {"loadavg": os.getloadavg(), "mem_available_mb": round(_mem_available_mb())}
    finally:
        lp.down(PLANE)
    by_fmt: dict[str, list[float]] = {}
    for r in starts:
        if r["ok"] and r["startup_ms"] is not None:
            by_fmt.setdefault(f"{r['arch']}/{r['format']}", []).append(r["startup_ms"])
    out = {
        "real_nodes": args.real, "kwok_nodes": args.kwok, "cpus": os.cpu_count(),
        "up_s": round(up_s, 1), "real_ready_s": st.get("real_ready_s"),
        "host_before": host0, "host_after_up": host_up, "host_after": host1,
        "mem_drop_mb": host0["mem_available_mb"] - host_up["mem_available_mb"],
        "per_node": feet,
        "per_node_median": {k: statistics.median(r[k] for r in feet) for k in
                            ("kubelet_rss_mb", "kubelet_pss_mb", "containerd_rss_mb", "containerd_pss_mb",
                             "total_rss_mb", "total_cpu_pct")},
        "startup_ms_median": {k: round(statistics.median(v), 1) for k, v in by_fmt.items()},
        "startup": starts,
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
