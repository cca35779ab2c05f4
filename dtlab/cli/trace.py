"""`dtlab trace record` / `dtlab trace replay`: record a cluster (list + watch), replay it through the twin."""
from __future__ import annotations

import argparse
from typing import Any


def _record(args: argparse.Namespace) -> int:
    from ..trace import record
    counters = record(args.kubeconfig, args.duration, args.out, namespace=args.namespace)
    print(f"recorded {counters['records']} records ({counters['lists']} lists, {counters['watches']} watches, "
          f"{counters['gone']} relists after 410, {counters['errors']} errors) -> {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from ..trace import replay
    df = replay(args.trace, policy=args.policy, substrate=args.substrate, samples=args.samples, seed=args.seed,
                kubeconfig=args.kubeconfig)
    if args.out:
        df.to_csv(args.out, index=False)
    n = len(df)
    if not n:
        print("the trace records no pods")
        return 0
    both = df.dropna(subset=["recorded_p95_ms", "replayed_p95_ms"])
    where = " onto the cluster" if args.substrate == "kube" else ""
    print(f"{n} pods replayed{where} with {args.policy}: same node as recorded {df['same_node'].mean():.1%}; "
          + (f"twin-predicted p95 mean {both['recorded_p95_ms'].mean():.0f} ms recorded placement vs "
             f"{both['replayed_p95_ms'].mean():.0f} ms replayed" if len(both) else
             f"twin-predicted p95 mean {df['replayed_p95_ms'].mean():.0f} ms replayed")
          + (f"; {int(df['ok'].sum())}/{n} completed on the cluster" if "ok" in df else "")
          + (f" -> {args.out}" if args.out else ""))
    for row in df.head(args.show).itertuples(index=False):
        print(f"  {row.pod:<40} {str(row.recorded_node):<16} -> {str(row.replayed_node):<16} "
              f"p95 {row.recorded_p95_ms:>8.0f} -> {row.replayed_p95_ms:>8.0f} ms")
    return 0


def register(subparsers: Any) -> None:
    t = subparsers.add_parser("trace", help="record a cluster's nodes and pods (list+watch); replay it through the twin")
    tsub = t.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    r = tsub.add_parser("record", help="list + watch nodes and pods for --duration seconds into a trace file",
                        description="Record nodes, pods and their transitions (resourceVersions kept) into a "
                                    "dtlab-trace/v1 JSON Lines file (format: dtlab/trace.py).")
    r.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG / ~/.kube/config)")
    r.add_argument("--duration", type=float, required=True, help="seconds to record")
    r.add_argument("--namespace", default=None, help="pods of one namespace only (default: all)")
    r.add_argument("--out", required=True, help="trace file to write")
    r.set_defaults(func=_record)
    p = tsub.add_parser("replay", help="replay a trace's arrivals through the twin with a policy",
                        description="Replay the recorded pods (requests, durations, arrival times) on the recorded "
                                    "nodes through the twin; print recorded vs replayed placement and the twin's "
                                    "predicted latency of both.")
    p.add_argument("trace", help="trace file from `dtlab trace record`")
    p.add_argument("--policy", default="greedy", help="twin policy (default greedy; see `dtlab policies`)")
    p.add_argument("--substrate", default="sim", choices=("sim", "kube"),
                   help="sim: through the twin (default); kube: onto the cluster of --kubeconfig (pods created)")
    p.add_argument("--kubeconfig", default=None, help="for --substrate kube: the cluster to replay onto")
    p.add_argument("--samples", type=int, default=128, help="Monte Carlo samples per prediction (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--show", type=int, default=10, help="pods to list (default 10)")
    p.add_argument("--out", default=None, help="CSV of every pod (recorded vs replayed)")
    p.set_defaults(func=_replay)
