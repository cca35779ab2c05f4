"""State path under a live event stream: apply + snapshot + plan at 1k / 5k / 50k nodes (issue 9, item 3).

A controller interleaves observer events with plans, so every plan sees a new version
and pays whatever a snapshot costs. The loop per size: ``--events`` single-event applies
(telemetry on random nodes, stage-start/stage-end of running jobs), one snapshot and one
``greedy`` and one ``cvar`` plan every ``--every`` events, on a state that already holds
``--history`` finished stages (a long-running twin remembers its jobs).

Times are CPU time of the benchmark thread (time.thread_time), so a busy shared machine
does not inflate them; each size runs baseline and current on the same event stream.

Baseline (ratio = baseline / current): :class:`FullCopyState`, the previous ClusterState
snapshot, inlined below - plain dicts copied whole (nodes, stages) at every snapshot after
a change, and the planner's node table built by one Python step per NodeStatus.

Run: .venv/bin/python benchmarks/bench_state.py [--nodes 1000 5000 50000] [--events 2000] [--every 20]
"""
from __future__ import annotations

import argparse
import time
from types import MappingProxyType

import numpy as np

from dtlab.experiments.loop import synthetic_cluster
from dtlab.experiments.params import load_cluster_param
from dtlab.model import load_job
from dtlab.state import ClusterState, NodeStatus, Snapshot
from dtlab.twin import Twin


class _Dict(dict):
    def put(self, key, value):      # the one method ClusterState's commit calls beyond dict's
        self[key] = value
        return 0


class FullCopyState(ClusterState):
    """The pre-issue-9 snapshot: plain dicts, copied whole when the version moved (O(nodes + stages))."""

    def __init__(self, cluster):
        super().__init__(cluster)
        self._nodes = _Dict((n.name, NodeStatus(n)) for n in cluster.nodes)
        self._stages = _Dict()

    def _sync_cols(self, changed):       # no column arrays: NodeTable walks the NodeStatus objects
        pass

    def snapshot(self):
        with self._lock:
            if self._snap is None or self._snap.version != self._version:
                cluster = self._cluster
                if self._nodes_changed:
                    cluster = self._cluster = cluster.with_nodes(s.node for s in self._nodes.values())
                    self._nodes_changed = False
                self._snap = Snapshot(
                    version=self._version, taken_at=time.time(), cluster=cluster,
                    nodes=MappingProxyType(dict(self._nodes)),
                    link_overrides=MappingProxyType(dict(self._links)),
                    stages=MappingProxyType(dict(self._stages)),
                )
            return self._snap


def make_events(names, n, seed):
    """A seeded stream: 70% telemetry, 30% stage start/end pairs on random nodes."""
    rng = np.random.default_rng(seed)
    out, running = [], []
    for k in range(n):
        if rng.random() < 0.7 or not names:
            out.append({"kind": "telemetry", "node": names[int(rng.integers(len(names)))],
                        "cpu_util": float(rng.random() * 0.5), "ts": float(k)})
        elif running and rng.random() < 0.5:
            job, node = running.pop(int(rng.integers(len(running))))
            out.append({"kind": "stage-end", "job": job, "stage": "s", "node": node, "ts": float(k)})
        else:
            job, node = f"live-{k}", names[int(rng.integers(len(names)))]
            running.append((job, node))
            out.append({"kind": "stage-start", "job": job, "stage": "s", "node": node, "ts": float(k)})
    return out


def run_one(cls, cluster, job, events, every, history):
    state = cls(cluster)
    names = [n.name for n in cluster.nodes]
    state.apply_many([{"kind": "stage-end", "job": f"old-{i}", "stage": "s", "node": names[i % len(names)],
                       "ts": 0.0} for i in range(history)])
    twin = Twin(state)
    for policy in ("greedy", "cvar"):
        twin.plan(job, policy=policy, samples=256, seed=0)       # warm caches (cluster/stage tables)
    apply_s = snap_s = 0.0
    plan_ms = {"greedy": [], "cvar": []}
    for k, e in enumerate(events):
        t0 = time.thread_time()
        state.apply(e)
        apply_s += time.thread_time() - t0
        if (k + 1) % every == 0:
            t0 = time.thread_time()
            snap = state.snapshot()
            snap_s += time.thread_time() - t0
            for policy in plan_ms:
                t0 = time.thread_time()
                twin.plan(job, policy=policy, samples=256, seed=k, snapshot=snap)
                plan_ms[policy].append((time.thread_time() - t0) * 1e3)
    n_snaps = len(events) // every
    return {"apply_us": apply_s / len(events) * 1e6, "state_us": (apply_s + snap_s) / len(events) * 1e6,
            "snapshot_ms": snap_s / max(1, n_snaps) * 1e3,
            **{f"{p}_ms": float(np.median(v)) for p, v in plan_ms.items()},
            "loop_s": apply_s + snap_s + sum(sum(v) for v in plan_ms.values()) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000, 50000])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--every", type=int, default=20, help="events between plans")
    ap.add_argument("--history", type=int, default=10000, help="finished stages already in the state")
    args = ap.parse_args()
    template = load_cluster_param("examples/cluster-hetero.yaml")
    job = load_job("examples/job-pipeline.yaml")
    print(f"{args.events} events, a snapshot + greedy + cvar plan (256 samples) every {args.every} events, "
          f"{args.history} finished stages in the state.\nCPU times: apply = mean per event, state = apply + snapshot per "
          f"event, snap = mean per snapshot, greedy/cvar = median plan (greedy runs first on each snapshot and pays "
          f"its node table), loop = the whole loop")
    print(f"{'nodes':>6} {'state':>9} {'apply us':>9} {'state us':>9} {'snap ms':>9} {'greedy ms':>10} "
          f"{'cvar ms':>9} {'loop s':>7}")
    for n in args.nodes:
        cluster = synthetic_cluster(template, n, seed=0)
        events = make_events([x.name for x in cluster.nodes], args.events, seed=n)
        res = {}
        for label, cls in (("full-copy", FullCopyState), ("cow", ClusterState)):
            r = res[label] = run_one(cls, cluster, job, events, args.every, args.history)
            print(f"{n:>6} {label:>9} {r['apply_us']:>9.1f} {r['state_us']:>9.1f} {r['snapshot_ms']:>9.3f} {r['greedy_ms']:>10.2f} "
                  f"{r['cvar_ms']:>9.2f} {r['loop_s']:>7.2f}")
        b, c = res["full-copy"], res["cow"]
        print(f"{n:>6} {'ratio':>9} {b['apply_us'] / c['apply_us']:>9.2f} {b['state_us'] / c['state_us']:>9.2f} "
              f"{b['snapshot_ms'] / c['snapshot_ms']:>9.1f} "
              f"{b['greedy_ms'] / c['greedy_ms']:>10.2f} {b['cvar_ms'] / c['cvar_ms']:>9.2f} "
              f"{b['loop_s'] / c['loop_s']:>7.2f}   (full-copy / cow)")


if __name__ == "__main__":
    main()
