"""Local control plane + KWOK at scale: nodes Ready per second and pods Running per second.

Reference: KWOK's own CI benchmark (sigs.k8s.io/kwok test/e2e/benchmark.go, kwokctl binary
runtime): 5,000 nodes created and Ready within 60 s (83 nodes/s) and 10,000 pods created on
one node and Running within 60 s (167 pods/s). Like that benchmark, the clock runs from the
first create to the last object seen Ready/Running on a watch, so creation is included.
Here the creates come from the Python client (``--workers`` threads) and the whole plane
shares a 2-core machine with other work; the create rate alone is printed too, so a client-
bound number is visible as such.

For each node count (1,000; and 5,000 when ``--big`` and memory allow): start a fresh plane
with one node, create N KWOK nodes (localplane.node_manifest, as the e2e uses) and wait
until all are Ready; then create P pods (nodeName round-robin over the new nodes, no
completion delay, so KWOK keeps them Running; ``--one-node``: all on one node, as KWOK's CI)
and wait until all are Running. Then the
plane is stopped (no process left).

Run: .venv/bin/python benchmarks/bench_kube.py [--nodes 1000] [--pods 10000] [--big] [--workers 24]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlab.kube import localplane as lp  # noqa: E402

REF_NODES, REF_NODES_S = 5000, 60.0
REF_PODS, REF_PODS_S = 10000, 60.0


def _client(kubeconfig: str, workers: int):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = workers + 4
    return client.CoreV1Api(client.ApiClient(cfg))


class Counter(threading.Thread):
    """Watch nodes or pods from ``rv`` and record when each new object first reaches the target state."""

    def __init__(self, core, kind: str, rv: str, names_prefix: str):
        super().__init__(daemon=True)
        self.core, self.kind, self.rv, self.prefix = core, kind, rv, names_prefix
        self.done: dict[str, float] = {}
        self.stop = False

    def _ok(self, obj) -> bool:
        if self.kind == "nodes":
            return any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (obj.get("status") or {}).get("conditions") or [])
        return (obj.get("status") or {}).get("phase") == "Running"

    def run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines
        fn = self.core.list_node if self.kind == "nodes" else \
            (lambda **kw: self.core.list_namespaced_pod("default", **kw))
        while not self.stop:
            try:
                resp = fn(watch=True, resource_version=self.rv, timeout_seconds=30, allow_watch_bookmarks=True,
                          _preload_content=False, _request_timeout=(5, 60))
                for line in iter_resp_lines(resp):
                    if self.stop:
                        return
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        raise RuntimeError(obj.get("message"))
                    self.rv = (obj.get("metadata") or {}).get("resourceVersion") or self.rv
                    name = (obj.get("metadata") or {}).get("name", "")
                    if name.startswith(self.prefix) and name not in self.done and self._ok(obj):
                        self.done[name] = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - a benchmark watch may time out: resume
                if self.stop:
                    return
                print(f"  (watch {self.kind} resumed after {type(exc).__name__})", flush=True)
                time.sleep(0.2)

    def wait(self, n: int, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while len(self.done) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.done) >= n


def _rss_mb(st) -> float:
    total = 0
    for p in st["processes"].values():
        try:
            for line in Path(f"/proc/{p['pid']}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _up_with_lease(name: str, lease_s: int) -> dict:
    """lp.up with KWOK's default 40 s node lease instead of the plane's 10 s (set for fault tests).

    Why: KWOK renews each node's Lease every lease/4 s; 10 s leases for thousands of nodes are
    more lease writes than a shared 2-core host serves, healthy nodes flap NotReady and their pods
    are evicted, which is failure detection, not throughput. KWOK's CI benchmark runs with 40 s.
    The module constants are only read while the commands are built, and are restored at once.
    """
    saved = (lp.NODE_LEASE_SECONDS, lp.NODE_MONITOR_GRACE)
    try:
        if lease_s:
            lp.NODE_LEASE_SECONDS, lp.NODE_MONITOR_GRACE = int(lease_s), f"{int(lease_s)}s"
        return lp.up(1, name=name, timeout=180)
    finally:
        lp.NODE_LEASE_SECONDS, lp.NODE_MONITOR_GRACE = saved


def run(n_nodes: int, n_pods: int, workers: int, limit_s: float, lease_s: int = 40, one_node: bool = False) -> dict:
    name = f"bench-kube-{os.getpid()}-{n_nodes}"
    t_up = time.monotonic()
    st = _up_with_lease(name, lease_s)
    up_s = time.monotonic() - t_up
    out = {"nodes": n_nodes, "pods": n_pods, "plane_up_s": up_s}
    try:
        core = _client(st["kubeconfig"], workers)
        kinds = lp.default_nodes(3)
        bodies = [lp.node_manifest({**kinds[i % 3], "name": f"bench-node-{i:05d}"}) for i in range(n_nodes)]
        rv = core.list_node(limit=1).metadata.resource_version
        counter = Counter(core, "nodes", rv, "bench-node-")
        counter.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda b: core.create_node(b, _request_timeout=30), bodies))
        out["node_create_s"] = time.monotonic() - t0
        ok = counter.wait(n_nodes, limit_s)
        counter.stop = True
        out["nodes_ready"] = len(counter.done)
        out["nodes_ready_s"] = (max(counter.done.values()) - t0) if ok else float("nan")
        out["nodes_ready_per_s"] = len(counter.done) / (max(counter.done.values()) - t0) if counter.done else 0.0
        if not ok:
            out["note"] = f"only {len(counter.done)}/{n_nodes} nodes Ready within {limit_s:.0f} s"
            return out

        names = [b["metadata"]["name"] for b in bodies]
        pods = [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"bench-pod-{i:05d}", "namespace": "default"},
                 "spec": {"nodeName": names[0 if one_node else i % len(names)], "automountServiceAccountToken": False,
                          "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}
                for i in range(n_pods)]
        rv = core.list_namespaced_pod("default", limit=1).metadata.resource_version
        pc = Counter(core, "pods", rv, "bench-pod-")
        pc.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda b: core.create_namespaced_pod("default", b, _request_timeout=30), pods))
        out["pod_create_s"] = time.monotonic() - t0
        ok = pc.wait(n_pods, limit_s)
        pc.stop = True
        out["pods_running"] = len(pc.done)
        out["pods_running_s"] = (max(pc.done.values()) - t0) if ok else float("nan")
        out["pods_running_per_s"] = len(pc.done) / (max(pc.done.values()) - t0) if pc.done else 0.0
        out["plane_rss_mb"] = _rss_mb(st)
        if not ok:
            out["note"] = f"only {len(pc.done)}/{n_pods} pods Running within {limit_s:.0f} s"
        return out
    finally:
        lp.down(name, keep_workdir=False)


def _free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--big", action="store_true", help="also 5,000 nodes (needs ~6 GB free)")
    ap.add_argument("--workers", type=int, default=24, help="client threads creating objects (default 24)")
    ap.add_argument("--limit", type=float, default=300.0, help="give up waiting after this many s (default 300)")
    ap.add_argument("--one-node", action="store_true",
                    help="all pods on one node, as KWOK's CI does (default: round-robin over the nodes)")
    ap.add_argument("--lease", type=int, default=40,
                    help="KWOK node lease seconds (default 40 as in KWOK's CI; 0 keeps the plane's 10 s)")
    args = ap.parse_args(argv)
    ok, why = lp.binaries_available()
    if not ok:
        print(f"bench_kube: skipped: {why}")
        return 0
    sizes = [args.nodes] + ([5000] if args.big and args.nodes != 5000 else [])
    ref_n, ref_p = REF_NODES / REF_NODES_S, REF_PODS / REF_PODS_S
    print(f"reference (KWOK CI): {REF_NODES} nodes Ready <= {REF_NODES_S:.0f} s = {ref_n:.0f} nodes/s; "
          f"{REF_PODS} pods Running <= {REF_PODS_S:.0f} s = {ref_p:.0f} pods/s; host: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; node lease {args.lease or lp.NODE_LEASE_SECONDS} s")
    for n in sizes:
        if n >= 5000 and _free_gb() < 6:
            print(f"{n} nodes: skipped, only {_free_gb():.1f} GB free")
            continue
        r = run(n, args.pods, args.workers, args.limit, args.lease, args.one_node)
        print(f"{n} nodes: plane up {r['plane_up_s']:.1f} s; created in {r['node_create_s']:.1f} s "
              f"({n / r['node_create_s']:.0f}/s client); all Ready after {r['nodes_ready_s']:.1f} s = "
              f"{r['nodes_ready_per_s']:.0f} nodes Ready/s ({r['nodes_ready_per_s'] / ref_n:.2f}x reference)")
        if "pods_running_per_s" in r:
            print(f"  {args.pods} pods: created in {r['pod_create_s']:.1f} s ({args.pods / r['pod_create_s']:.0f}/s "
                  f"client); all Running after {r['pods_running_s']:.1f} s = {r['pods_running_per_s']:.0f} pods "
                  f"Running/s ({r['pods_running_per_s'] / ref_p:.2f}x reference); plane RSS "
                  f"{r['plane_rss_mb']:.0f} MB")
        if "note" in r:
            print(f"  note: {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
