"""Allocation replay on the openb default trace (1,523 nodes, 8,152 pods inflated to 130 %).

One run per policy (FGD methodology, no deletions); prints seconds per policy and the ratio to
the 10 s target (<= 1.0 passes), plus the ratio to a naive best-fit baseline that checks fit with a
Python loop over all nodes per pod (measured on the first --baseline-pods pods, per pod, extrapolated).
The ATC'23 Go simulator needs ~10 minutes per run on 2 vCPU (its README).

    .venv/bin/python benchmarks/bench_replay.py [--nodes CSV] [--pods CSV] [--seed 0] [--inflate 1.3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from dtlab.replay import ClusterArrays, inflate, policy_names, replay_allocation
from dtlab.workload.readers import OPENB_NODES, OPENB_PODS, read_openb_nodes, read_openb_pods

TARGET_S = 10.0


def naive_seconds_per_pod(nodes, pods, n: int) -> float:
    """Best-fit with a per-node Python loop: the obvious implementation the numpy path replaces.

    Every scoring policy must look at every node, so the loop scans all of them per pod.
    """
    cpu = nodes["cpu_milli"].tolist()
    mem = nodes["memory_mib"].tolist()
    gpus = [[1000] * g for g in nodes["gpu"].tolist()]
    models = nodes["model"].tolist()
    max_cpu, max_gpu = max(cpu), 1000.0 * max(len(g) for g in gpus)
    t0 = time.perf_counter()
    for pod in pods.head(n).itertuples():
        allowed = [s for s in pod.gpu_spec.split("|") if s]
        best, best_score = None, None
        for k in range(len(cpu)):
            if cpu[k] < pod.cpu_milli or mem[k] < pod.memory_mib:
                continue
            if pod.num_gpu:
                if allowed and models[k] not in allowed:
                    continue
                if sum(f >= pod.gpu_milli for f in gpus[k]) < pod.num_gpu:
                    continue
            score = (0.5 * (cpu[k] - pod.cpu_milli) / max_cpu
                     + 0.5 * (sum(gpus[k]) - pod.num_gpu * pod.gpu_milli) / max_gpu)
            if best_score is None or score < best_score:
                best, best_score = k, score
        if best is None:
            continue
        free = sorted((f, s) for s, f in enumerate(gpus[best]) if f >= pod.gpu_milli)
        for _, s in free[:pod.num_gpu]:
            gpus[best][s] -= pod.gpu_milli
        cpu[best] -= pod.cpu_milli
        mem[best] -= pod.memory_mib
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default=str(OPENB_NODES))
    ap.add_argument("--pods", default=str(OPENB_PODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inflate", type=float, default=1.3)
    ap.add_argument("--baseline-pods", type=int, default=300)
    args = ap.parse_args()

    t0 = time.perf_counter()
    nodes, pods = read_openb_nodes(args.nodes), read_openb_pods(args.pods)
    print(f"read {len(nodes)} nodes, {len(pods)} pods in {time.perf_counter() - t0:.2f} s")
    cap = ClusterArrays(nodes).gpu_capacity_milli
    arrived = len(inflate(pods, cap, args.inflate, np.random.default_rng(args.seed)))
    print(f"inflated to {args.inflate:.0%} of {cap // 1000} GPUs: {arrived} pods per run")

    per_pod_naive = naive_seconds_per_pod(nodes, inflate(pods, cap, args.inflate, np.random.default_rng(args.seed)),
                                          args.baseline_pods)
    naive_run = per_pod_naive * arrived
    print(f"naive per-node loop baseline: {per_pod_naive * 1e3:.2f} ms/pod -> ~{naive_run:.1f} s per run")
    print(f"{'policy':<16} {'seconds':>8} {'/target':>8} {'speedup':>8} {'gpu_alloc@100%':>15} {'failed@100%':>12}")
    for policy in policy_names():
        t = time.perf_counter()
        res = replay_allocation(nodes, pods, policy, seed=args.seed, inflate_ratio=args.inflate)
        s = time.perf_counter() - t
        at100 = res.table[res.table["arrived_pct"] == 100.0].iloc[0]
        print(f"{policy:<16} {s:8.2f} {s / TARGET_S:8.3f} {naive_run / s:7.1f}x "
              f"{at100.gpu_alloc_pct:14.2f}% {int(at100.failed_pods):12d}")


if __name__ == "__main__":
    main()
