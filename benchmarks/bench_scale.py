"""Scale (issue 9): plan latency vs node count (pure twin), and on a local KWOK plane observe lag per scale.

Pure twin (synthetic clusters, :func:`dtlab.experiments.v5._plan_times` in ``fresh`` mode: one
telemetry event before every plan, as a live controller sees): p50/p99 of ``greedy`` and
``cvar`` (256 samples, fast predictor) at each ``--nodes`` size; ratio = p50 / p50 at the
smallest size (how far from flat the curve is).

Kube (``--kube`` sizes; needs the control-plane binaries, else skipped with the reason):
:func:`dtlab.experiments.v5.kube_scale` per size with ``--pods`` pods - plan p50/p99 while
the observer applies the plane's events, observe lag p50/p99 (cordon probes; ratio to the
design's 1 s freshness budget), nodes registered per second, pods created per second, the
twin's RSS growth, the API server's p99 request latency, and whether the twin's state
matched the API server's at the end.

Observer (``--observer`` sizes, opt-in: a 5,000-node plane takes minutes to start): a plane with
that many KWOK nodes, then :class:`dtlab.kube.observer.Observer` (nodes + dtlab pods) LISTs and
watches it. Memory the observer keeps = Python heap still allocated after the initial LIST and a
``gc.collect()`` (tracemalloc, traced only around the start; the parsed LIST body itself is
freed), plus this process's RSS growth; then observe lag p50/p99 of ``--probes`` cordon/uncordon
probes (patch sent -> event applied by the sink), tracing off.

Run: .venv/bin/python benchmarks/bench_scale.py [--nodes 10 1000 10000 50000] [--kube 100 1000] [--pods 3000]
     [--observer 5000] [--probes 40]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from dtlab.experiments import v5
from dtlab.experiments.loop import synthetic_cluster
from dtlab.experiments.params import child_seed, load_cluster_param, validate
from dtlab.model import load_job
from dtlab.twin import Twin

BUDGET_MS = 1000.0   # the design's freshness budget (observe lag)


def pure(template, job, sizes, plans):
    print(f"pure twin, fresh state before every plan, {plans} plans, 256 samples, fast predictor (wall clock)")
    print(f"{'nodes':>7} {'policy':>7} {'p50 ms':>8} {'p99 ms':>8} {'x p50@' + str(sizes[0]):>10}")
    first = {}
    for n in sizes:
        cluster = synthetic_cluster(template, n, seed=0)
        names = [x.name for x in cluster.nodes]
        for policy in ("greedy", "cvar"):
            twin = Twin(cluster)
            twin.plan(job, policy=policy, samples=256, seed=0)
            rng = np.random.default_rng(child_seed(0, n, policy))
            ms = np.asarray(v5._plan_times(twin, job, policy, "fast", 256, plans, 0, True, rng, names))
            p50 = float(np.percentile(ms, 50))
            first.setdefault(policy, p50)
            print(f"{n:>7} {policy:>7} {p50:>8.2f} {np.percentile(ms, 99):>8.2f} {p50 / first[policy]:>10.1f}")


def kube(template, job, sizes, pods):
    from dtlab.kube import localplane as lp
    ok, why = lp.binaries_available()
    if not ok:
        print(f"kube: skipped ({why})")
        return
    p = validate({"substrate": "kube", "pods": pods, "pod_ms": 3000.0}, v5.DEFAULTS, "V5")
    print(f"\nkube: local plane with KWOK nodes, {pods} pods of 3 s, greedy+cvar plans while the observer applies events")
    print(f"{'nodes':>6} {'plan p50':>9} {'plan p99':>9} {'lag p50':>8} {'lag p99':>8} {'p99/1s':>7} "
          f"{'nodes/s':>8} {'pods/s':>7} {'rss MB':>7} {'api p99':>8} {'match':>6} {'wall s':>7}")
    for n in sizes:
        t0 = time.perf_counter()
        try:
            r = v5.kube_scale(template, job, n, 0, p)
        except Exception as exc:  # noqa: BLE001 - report where scaling stops and go on
            print(f"{n:>6} failed after {time.perf_counter() - t0:.0f} s: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        ms = r["plan_ms"]
        print(f"{n:>6} {np.percentile(ms, 50):>9.2f} {np.percentile(ms, 99):>9.2f} {r['observe_lag_p50_ms']:>8.1f} "
              f"{r['observe_lag_p99_ms']:>8.1f} {r['observe_lag_p99_ms'] / BUDGET_MS:>7.2f} {r['nodes_per_s']:>8.1f} "
              f"{r['pods_per_s']:>7.1f} {r['twin_rss_mb']:>7.1f} {r['apiserver_p99_ms']:>8.1f} "
              f"{str(r['state_matches']):>6} {time.perf_counter() - t0:>7.0f}")


def observer(template, sizes, probes):
    """Memory the kube observer keeps per node, and its observe lag, on a fresh KWOK plane per size."""
    import gc
    import os
    import threading
    import tracemalloc

    from dtlab.kube import localplane as lp
    from dtlab.kube.actuator import Actuator
    from dtlab.kube.observer import Observer
    from dtlab.state import ClusterState
    ok, why = lp.binaries_available()
    if not ok:
        print(f"observer: skipped ({why})")
        return
    print(f"\nobserver: KWOK plane, LIST+WATCH nodes and pods; kept memory after the LIST; {probes} cordon probes")
    print(f"{'nodes':>6} {'list s':>7} {'kept MB':>8} {'kB/node':>8} {'rss MB':>7} {'lag p50':>8} {'lag p99':>8} "
          f"{'load':>5}")
    for n in sizes:
        cluster = synthetic_cluster(template, n, seed=0)
        specs = [{"name": x.name, "arch": x.arch, "cores": x.cores, "speed": x.speed, "mem_gb": x.mem_gb,
                  "formats": list(x.formats), "zone": x.zone, "labels": dict(x.labels or {})} for x in cluster.nodes]
        plane = f"bench-obs-{os.getpid()}-{n}"
        with v5._scale_heartbeats(lp, 40):   # one node through up(); the rest registered, not awaited Ready
            st = lp.up(specs[:1], name=plane, timeout=180.0)
        obs = None
        try:
            lp.register_nodes(specs[1:], st["kubeconfig"])   # memory does not depend on Ready; 5,000 Ready take >15 min here
            state = ClusterState(cluster)
            probe = cluster.nodes[-1].name
            seen: list[tuple[str, float]] = []
            cond = threading.Condition()

            def sink(batch):
                state.apply_many(batch)
                now = time.time()
                with cond:
                    seen.extend((e["kind"], now) for e in batch if e.get("node") == probe)
                    cond.notify_all()

            gc.collect()
            rss0 = v5._rss_mb()
            tracemalloc.start()
            t0 = time.perf_counter()
            obs = Observer(st["kubeconfig"], sink=sink, known_nodes=[x.name for x in cluster.nodes]).start(120.0)
            list_s = time.perf_counter() - t0
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] / 2**20
            tracemalloc.stop()
            rss = v5._rss_mb() - rss0
            act = Actuator(st["kubeconfig"])
            lags = []
            for k in range(probes):
                want = "node-cordon" if k % 2 == 0 else "node-uncordon"
                t_send = time.time()
                act.cordon(probe, on=(k % 2 == 0))
                with cond:
                    if not cond.wait_for(lambda: any(kind == want and t >= t_send for kind, t in seen), 10.0):
                        break
                    t_seen = min(t for kind, t in seen if kind == want and t >= t_send)
                    seen.clear()
                lags.append((t_seen - t_send) * 1e3)
                time.sleep(0.1)
            lag = np.asarray(lags) if lags else np.asarray([np.nan])
            print(f"{n:>6} {list_s:>7.1f} {kept:>8.1f} {kept * 1024 / n:>8.2f} {rss:>7.1f} "
                  f"{np.percentile(lag, 50):>8.1f} {np.percentile(lag, 99):>8.1f} {os.getloadavg()[0]:>5.1f}",
                  flush=True)
        finally:
            if obs is not None:
                obs.stop()
            lp.down(plane, keep_workdir=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="*", default=[10, 1000, 10000, 50000])
    ap.add_argument("--plans", type=int, default=30)
    ap.add_argument("--kube", type=int, nargs="*", default=[100, 1000], help="KWOK node counts (none: skip)")
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--observer", type=int, nargs="*", default=[],
                    help="KWOK node counts for the observer's memory and lag (opt-in, e.g. 5000; minutes)")
    ap.add_argument("--probes", type=int, default=40, help="cordon probes per --observer size (default 40)")
    args = ap.parse_args()
    template = load_cluster_param("examples/cluster-hetero.yaml")
    job = load_job("examples/job-pipeline.yaml")
    if args.observer:
        observer(template, args.observer, args.probes)
    if args.nodes:
        pure(template, job, args.nodes, args.plans)
    if args.kube:
        kube(template, job, args.kube, args.pods)


if __name__ == "__main__":
    main()
