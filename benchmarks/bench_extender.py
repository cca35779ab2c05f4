"""The twin at the scheduler's pace: the real kube-scheduler alone vs with `dtlab serve --extender` in its loop.

For each node count: a fresh local control plane (dtlab.kube.localplane) with that many KWOK nodes
(the V5 synthetic cluster of examples/cluster-hetero.yaml), and `dtlab serve --extender` (own process,
loopback) on the twin of the same cluster. Two arms, in this order, in the same script and plane:

- alone:    N unpinned pods (no nodeName, no nodeSelector) created first with ``schedulerName:
            bench-alone``, then a kube-scheduler process with one profile of that name starts;
- extender: N more pods with ``schedulerName: dtlab-extender``, then the kube-scheduler of
            ``localplane.scheduler_extender_config`` (the real-nodes work's config: filter + prioritize,
            ``nodeCacheCapable: true``) starts.

With ``--repeats R`` the pair runs R times on the same plane (fresh pods each time) and pods/s are
the medians. Both schedulers are separate processes with the same client QPS/burst (localplane.SCHEDULER_QPS /
SCHEDULER_BURST = 1000/2000; the default 50/100 would cap binding near 50 pods/s). The pods exist
before their scheduler starts, so the rate is the scheduler's, not the pod creator's: pods/s =
(bound - 1) / (last bind - first bind), binds seen on a watch (``spec.nodeName`` set). The
extender's p50/p99 per call comes from its ``dtlab_extender_latency_ms`` histogram (server side:
body read to response built; bucket-interpolated), scraped before and after the arm.

Kubernetes' own figures, printed next to ours: the scheduler alone passes its CI (scheduler_perf)
at 680-810 pods/s with 5,000 nodes; real 5,000-node clusters run at about 100 pods/s. Here the
whole plane (etcd, API server, KWOK, two schedulers, the extender) shares this host's cores with
whatever else runs, so the ratio extender/alone, measured minutes apart in one script, is the
number to compare; the load average is printed with each row.

Run: .venv/bin/python benchmarks/bench_extender.py [--nodes 100 1000] [--pods 1000] [--repeats 1] [--big] [--json]
``--big`` adds 5,000 nodes (several minutes and ~6 GB; opt-in, so `make bench` stays bounded).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from bench_kube import Counter, _client, _free_gb  # noqa: E402
from dtlab.experiments.loop import synthetic_cluster  # noqa: E402
from dtlab.experiments.params import load_cluster_param  # noqa: E402
from dtlab.experiments.v5 import _scale_heartbeats, histogram_quantile  # noqa: E402
from dtlab.kube import localplane as lp  # noqa: E402

K8S_CI_PODS_S = (680, 810)      # scheduler_perf, 5,000 nodes, scheduler alone
K8S_REAL_PODS_S = 100           # real 5,000-node clusters
ALONE = "bench-alone"


class BindCounter(Counter):
    """Counter of pods that got a node (``spec.nodeName``), i.e. were scheduled and bound."""

    def _ok(self, obj: dict) -> bool:
        return bool((obj.get("spec") or {}).get("nodeName"))


def cluster_doc(cluster: Any) -> dict[str, Any]:
    """The dtlab/v1 Cluster document of a synthetic cluster (what `dtlab serve --cluster` reads)."""
    return {"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": cluster.name},
            "nodes": [{"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed, "mem_gb": n.mem_gb,
                       "formats": list(n.formats), "zone": n.zone, "labels": dict(n.labels or {}),
                       "fail_prob": n.fail_prob} for n in cluster.nodes],
            "links": [{"a": x.a, "b": x.b, "latency_ms": x.latency_ms, "bandwidth_mbps": x.bandwidth_mbps,
                       "loss": x.loss, "jitter_ms": x.jitter_ms, "directed": x.directed} for x in cluster.links]}


def pod(name: str, scheduler: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": {"dtlab.io/duration-ms": "1000"}},
            "spec": {"schedulerName": scheduler, "automountServiceAccountToken": False,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}}]}}


def extender_histograms(url: str) -> dict[str, dict[float, float]]:
    """verb -> {le: cumulative count} of dtlab_extender_latency_ms from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "dtlab_extender_latency_ms":
            continue
        for smp in fam.samples:
            if smp.name.endswith("_bucket"):
                out.setdefault(smp.labels["verb"], {})[float(smp.labels["le"])] = smp.value
    return out


def latency_rows(before: dict, after: dict) -> dict[str, float]:
    """p50/p99 ms of the calls between two scrapes, per verb and over all calls."""
    out: dict[str, float] = {}
    total: dict[float, float] = {}
    for verb, b in after.items():
        delta = {le: c - before.get(verb, {}).get(le, 0.0) for le, c in b.items()}
        for le, c in delta.items():
            total[le] = total.get(le, 0.0) + c
        out[f"{verb}_calls"] = delta.get(float("inf"), 0.0)
        out[f"{verb}_p50_ms"] = histogram_quantile(delta, 0.5)
        out[f"{verb}_p99_ms"] = histogram_quantile(delta, 0.99)
    out["extender_calls"] = total.get(float("inf"), 0.0)
    out["extender_p50_ms"] = histogram_quantile(total, 0.5) if total else float("nan")
    out["extender_p99_ms"] = histogram_quantile(total, 0.99) if total else float("nan")
    return out


def _dtlab_cmd() -> list[str]:
    script = Path(sys.executable).parent / "dtlab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dtlab.cli"]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dtlab serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not up within {timeout:.0f} s")


def arm(core, scheduler: str, name: str, n_pods: int, start, limit_s: float, workers: int) -> dict[str, Any]:
    """Create the arm's pods (no scheduler for them yet), start its scheduler, count binds."""
    prefix = f"bench-{name}-"
    bodies = [pod(f"{prefix}{i:05d}", scheduler) for i in range(n_pods)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda b: core.create_namespaced_pod("default", b, _request_timeout=30), bodies))
    create_s = time.monotonic() - t0
    rv = core.list_namespaced_pod("default", limit=1).metadata.resource_version
    counter = BindCounter(core, "pods", rv, prefix)
    counter.start()
    t_sched = time.monotonic()
    start()
    ok = counter.wait(n_pods, limit_s)
    counter.stop = True
    times = sorted(counter.done.values())
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {"bound": len(times), "all_bound": ok, "create_s": create_s,
            "pods_per_s": (len(times) - 1) / span if len(times) > 1 and span > 0 else float("nan"),
            "start_to_last_s": (times[-1] - t_sched) if times else float("nan")}


def run(n_nodes: int, n_pods: int, limit_s: float = 300.0, lease_s: int = 40, workers: int = 16,
        node_cache: bool = True, repeats: int = 1) -> dict[str, Any]:
    template = load_cluster_param("examples/cluster-hetero.yaml")
    cluster = synthetic_cluster(template, n_nodes, seed=0)
    specs = [{"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed, "mem_gb": n.mem_gb,
              "formats": list(n.formats), "zone": n.zone, "labels": dict(n.labels or {}), "max_pods": 1000}
             for n in cluster.nodes]
    plane = f"bench-ext-{os.getpid()}-{n_nodes}"
    out: dict[str, Any] = {"nodes": n_nodes, "pods": n_pods, "node_cache_capable": node_cache, "scheduler_qps": lp.SCHEDULER_QPS,
                           "scheduler_burst": lp.SCHEDULER_BURST, "load_avg_start": os.getloadavg()[0]}
    t0 = time.monotonic()
    with _scale_heartbeats(lp, lease_s):
        st = lp.up(specs, name=plane, timeout=max(180.0, n_nodes * 0.2))
    out["plane_up_s"] = time.monotonic() - t0
    serve = None
    try:
        wd = Path(st["workdir"])
        (wd / "cluster.yaml").write_text(yaml.safe_dump(cluster_doc(cluster), sort_keys=False))
        port = lp._free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        with open(wd / "logs" / "dtlab-serve.log", "wb") as log:
            serve = subprocess.Popen(_dtlab_cmd() + ["serve", "--cluster", str(wd / "cluster.yaml"), "--extender",
                                                     "--insecure-dev", "--port", str(port)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _wait_http(f"{url}/healthz", 120, serve)
        core = _client(st["kubeconfig"], workers)
        alone: list[dict[str, Any]] = []
        ext: list[dict[str, Any]] = []
        before = extender_histograms(url)
        for r in range(repeats):   # alternating arms: load drifting on a shared host hits both alike
            alone.append(arm(core, ALONE, f"alone{r}", n_pods,
                             lambda: lp.start_scheduler(lp.scheduler_config(st["kubeconfig"], ALONE), plane,
                                                        "bench-alone"), limit_s, workers))
            lp.stop_scheduler(plane, "bench-alone")
            ext.append(arm(core, lp.EXTENDER_SCHEDULER, f"extender{r}", n_pods,
                           lambda: lp.start_extender_scheduler(url, plane, node_cache_capable=node_cache),
                           limit_s, workers))
            lp.stop_extender_scheduler(plane)
        out.update(latency_rows(before, extender_histograms(url)))
        a = statistics.median(x["pods_per_s"] for x in alone)
        e = statistics.median(x["pods_per_s"] for x in ext)
        out.update({"repeats": repeats, "pods_per_s_alone": a, "pods_per_s_extender": e,
                    "ratio": e / a if a else float("nan"),
                    "pods_per_s_alone_runs": [x["pods_per_s"] for x in alone],
                    "pods_per_s_extender_runs": [x["pods_per_s"] for x in ext],
                    "bound_alone": min(x["bound"] for x in alone), "bound_extender": min(x["bound"] for x in ext),
                    "start_to_last_alone_s": statistics.median(x["start_to_last_s"] for x in alone),
                    "start_to_last_extender_s": statistics.median(x["start_to_last_s"] for x in ext),
                    "load_avg_end": os.getloadavg()[0]})
        return out
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        lp.down(plane, keep_workdir=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000], help="KWOK node counts (default 100 1000)")
    ap.add_argument("--pods", type=int, default=1000, help="pods per arm (default 1000)")
    ap.add_argument("--big", action="store_true", help="also 5,000 nodes (minutes, needs ~6 GB free)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="alone/extender arm pairs on the same plane; pods/s are medians (default 1)")
    ap.add_argument("--limit", type=float, default=300.0, help="give up an arm after this many s (default 300)")
    ap.add_argument("--full-nodes", action="store_true",
                    help="nodeCacheCapable: false (the scheduler sends full v1 Nodes; the earlier config)")
    ap.add_argument("--json", action="store_true", help="one JSON object per node count on stdout")
    args = ap.parse_args(argv)
    if args.pods < 2 or min(args.nodes) < 1 or args.repeats < 1:
        ap.error("--pods must be >= 2, --nodes and --repeats >= 1")
    ok, why = lp.binaries_available()
    if not ok:
        print(f"bench_extender: skipped: {why}", file=sys.stderr)
        return 0
    sizes = list(dict.fromkeys(args.nodes + ([5000] if args.big else [])))
    if not args.json:
        print(f"kube-scheduler alone vs with the dtlab extender (filter+prioritize); {args.pods} unpinned pods per "
              f"arm; client QPS/burst {lp.SCHEDULER_QPS}/{lp.SCHEDULER_BURST} in both; host {os.cpu_count()} cores")
        print(f"Kubernetes: scheduler_perf {K8S_CI_PODS_S[0]}-{K8S_CI_PODS_S[1]} pods/s at 5,000 nodes (scheduler "
              f"alone); real 5,000-node clusters ~{K8S_REAL_PODS_S} pods/s")
        print(f"{'nodes':>6} {'alone/s':>8} {'ext/s':>7} {'ratio':>6} {'ext p50':>8} {'ext p99':>8} {'calls':>6} "
              f"{'load':>5} {'bound':>11}")
    failed = 0
    for n in sizes:
        if n >= 5000 and _free_gb() < 6:
            print(f"{n} nodes: skipped, only {_free_gb():.1f} GB free", file=sys.stderr)
            continue
        r = run(n, args.pods, args.limit, node_cache=not args.full_nodes, repeats=args.repeats)
        failed += not (r["bound_alone"] == r["bound_extender"] == args.pods)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{n:>6} {r['pods_per_s_alone']:>8.0f} {r['pods_per_s_extender']:>7.0f} {r['ratio']:>6.2f} "
                  f"{r['extender_p50_ms']:>8.2f} {r['extender_p99_ms']:>8.2f} {r['extender_calls']:>6.0f} "
                  f"{r['load_avg_start']:>5.1f} {r['bound_alone']:>5}/{r['bound_extender']:<5}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
