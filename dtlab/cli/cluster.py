"""`dtlab cluster up|status|down|kubeconfig` and `dtlab submit JOB --substrate kube`.

``cluster`` drives the local control plane (:mod:`dtlab.kube.localplane`: etcd,
kube-apiserver, controller-manager, scheduler and KWOK on loopback). ``submit`` plans a job
against the state *observed* from the cluster (nodes, readiness, cordons and running dtlab
pods, via :class:`dtlab.kube.observer.Observer`), creates its pods with the ``kube``
substrate and, with ``--wait``, drives the DAG until every stage finished, printing per
stage: node, pod, start and end (ms since submit) and phase.

Without ``--wait`` only the root stages' pods are created: successors are created by the
process that watches their predecessors finish (this one, with ``--wait``). Pod names are
deterministic, so submitting the same job name again is idempotent (it reports the pods
that exist); ``--job-name`` runs it again under another name.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from ..errors import DtlabError, SpecError, SubstrateUnavailable
from ..kube.observed import DEFAULT_WAN, observed_state


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cluster", help="start/stop/inspect the local Kubernetes control plane (KWOK nodes)",
                              description="Local control plane on loopback: etcd, kube-apiserver, "
                                          "kube-controller-manager, kube-scheduler and KWOK, built by "
                                          "`make cluster-bin`. One KWOK node per node of the Cluster spec.")
    sub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="start the plane and register the nodes")
    g = up.add_mutually_exclusive_group()
    g.add_argument("--nodes", type=int, help="N default heterogeneous nodes (amd64/arm64/riscv64)")
    g.add_argument("--cluster", help="Cluster spec (examples/cluster-hetero.yaml): one KWOK node per node")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    up.add_argument("--real-nodes", metavar="NAMES",
                    help="comma-separated node names of --cluster (or 'all') that run a real kubelet on their own "
                         "containerd instead of KWOK (make cluster-deps; root)")
    up.add_argument("--telemetry", choices=["prometheus"],
                    help="prometheus: one cgroup exporter per real node and a real Prometheus scraping them every "
                         "0.5 s on loopback (URL in `cluster status`; `dtlab serve --prometheus auto`)")
    up.add_argument("--node-grace", type=float, metavar="S",
                    help="seconds without a heartbeat before a node is NotReady (default 80)")
    down = sub.add_parser("down", help="stop every process of the plane")
    down.add_argument("--purge", action="store_true", help="also delete the plane's workdir (logs, etcd data)")
    for s in (up, sub.add_parser("status", help="components, readiness and node counts"), down,
              sub.add_parser("kubeconfig", help="print the kubeconfig path of the running plane")):
        s.add_argument("--name", default="default", help="plane name (default 'default')")
        s.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=run_cluster)

    s = subparsers.add_parser("submit", help="plan a job on the observed cluster and run it as pods",
                              description="Plan JOB against the state observed from the Kubernetes cluster, "
                                          "create its pods (pinned to the planned nodes) and, with --wait, "
                                          "wait until every stage finished.")
    s.add_argument("job", help="Job spec (YAML/JSON)")
    s.add_argument("--substrate", default="kube", choices=["kube"], help="only kube (default)")
    s.add_argument("--kubeconfig", help="kubeconfig (default: the running local plane --plane)")
    s.add_argument("--plane", default="default", help="local plane name when --kubeconfig is not given")
    s.add_argument("--cluster", help="Cluster spec for links between zones (Kubernetes does not know them); "
                                     f"missing zone pairs get {DEFAULT_WAN}")
    s.add_argument("--policy", default="greedy", help="policy name (default greedy)")
    s.add_argument("--samples", type=int, default=128, help="Monte Carlo samples (default 128)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--namespace", default="dtlab", help="namespace of the pods (default dtlab)")
    s.add_argument("--time-scale", type=float, default=1.0, help="multiply pod run times (default 1)")
    s.add_argument("--job-name", help="submit under this name instead of the spec's")
    s.add_argument("--wait", action="store_true", help="wait until every stage finished")
    s.add_argument("--timeout", type=float, default=600.0, help="--wait limit in seconds (default 600)")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("--operator", action="store_true",
                   help="create a DTJob for a running `dtlab operator` instead of planning here; wait for its "
                        "plan (with --wait: its end)")
    s.set_defaults(func=run_submit)


# ------------------------------------------------------------------ cluster
def run_cluster(args: argparse.Namespace) -> int:
    from ..kube import localplane as lp

    action = args.cluster_command
    if action == "up":
        if args.telemetry and args.real_nodes is None:
            raise SpecError("--telemetry", "needs --real-nodes: KWOK nodes have no cgroup to read")
        ok, why = lp.binaries_available()
        if not ok:
            raise SubstrateUnavailable(why)
        nodes: Any = args.nodes if args.nodes is not None else 6
        if args.cluster:
            from ..model import load_cluster
            nodes = load_cluster(args.cluster)
        if args.node_grace is not None and not (1 <= args.node_grace <= 3600):
            raise SpecError("--node-grace", f"must be in [1, 3600] seconds, got {args.node_grace:g}")
        real = None
        if args.real_nodes is not None:
            if not args.cluster and args.nodes is None:
                raise SpecError("--real-nodes", "needs --cluster (or --nodes) to name the nodes")
            names = [n["name"] for n in lp.nodes_list(nodes)]
            real = names if args.real_nodes.strip() == "all" else \
                [r.strip() for r in args.real_nodes.split(",") if r.strip()]
            unknown = [r for r in real if r not in names]
            if not real or unknown:
                raise SpecError("--real-nodes", f"not nodes of the cluster: {unknown or args.real_nodes!r} "
                                                f"(known: {', '.join(names)}, or 'all')")
            from ..kube import realnodes
            missing = realnodes.missing()
            if missing:
                raise SubstrateUnavailable(f"real nodes: {missing}")
        try:
            st = lp.up(nodes, name=args.name, timeout=args.timeout, real_nodes=real, node_grace_s=args.node_grace,
                       telemetry=args.telemetry)
        except (lp.LocalPlaneError, RuntimeError) as exc:
            raise DtlabError(str(exc)) from None
        from ..operator.crd import install_on
        install_on(st["kubeconfig"])     # the DTJob CRD, so `dtlab operator` / `submit --operator` work at once
        real_names = [r["name"] for r in st.get("real_nodes", [])]
        out = {"name": args.name, "kubeconfig": st["kubeconfig"], "nodes": st["nodes"], "real_nodes": real_names,
               "apiserver": f"https://127.0.0.1:{st['ports']['kube-apiserver']}",
               "ready_s": round(st["ready_at"] - st["started_at"], 2), "real_ready_s": st.get("real_ready_s"),
               "prometheus_url": (st.get("telemetry") or {}).get("prometheus_url")}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            kinds = f"{len(st['nodes']) - len(real_names)} KWOK + {len(real_names)} real nodes" if real_names \
                else f"{len(st['nodes'])} KWOK nodes"
            print(f"local plane {args.name!r} up in {out['ready_s']} s: {kinds} Ready, "
                  f"API server {out['apiserver']}")
            if real_names:
                print(f"real nodes (kubelet + containerd): {', '.join(real_names)}; "
                      f"ready {st.get('real_ready_s')} s after their start")
            if out["prometheus_url"]:
                print(f"telemetry: Prometheus {out['prometheus_url']} scraping {len(real_names)} node exporter(s)")
            print(f"kubeconfig: {st['kubeconfig']}   (export KUBECONFIG={st['kubeconfig']})")
        return 0
    if action == "status":
        s = lp.status(args.name)
        if args.json:
            print(json.dumps(s, indent=2))
        elif not s.get("running") and "components" not in s:
            print(f"local plane {args.name!r} is not running")
        else:
            print(f"local plane {args.name!r}: {'running' if s['running'] else 'DEGRADED'}, "
                  f"apiserver ready {s['apiserver_ready']}, nodes {s['nodes_ready']}/{s['nodes']} Ready")
            for c, info in s["components"].items():
                print(f"  {c:<24} pid {info['pid']:<8} {'alive' if info['alive'] else 'DEAD'}")
            tel = s.get("telemetry")
            if tel:
                procs = tel.get("processes", {})
                print(f"  telemetry: Prometheus {tel['prometheus_url']} "
                      f"({sum(p['alive'] for p in procs.values())}/{len(procs)} telemetry processes alive)")
            kinds = s.get("node_kinds", {})
            if kinds:
                real = s.get("real_nodes", {})
                print(f"  nodes: {sum(k == 'kwok' for k in kinds.values())} kwok, "
                      f"{sum(k == 'real' for k in kinds.values())} real")
                for n, procs in real.items():
                    alive = ", ".join(f"{c} {'alive' if p['alive'] else 'DEAD'}" for c, p in procs.items())
                    print(f"  {n:<24} real   {alive}")
                if len(kinds) <= 50:
                    for n, k in kinds.items():
                        if k == "kwok":
                            print(f"  {n:<24} kwok")
        return 0 if s.get("running") else 1
    if action == "down":
        was = lp.status(args.name).get("running") or lp.kubeconfig(args.name) is not None
        try:
            lp.down(args.name, keep_workdir=not args.purge)
        except lp.LocalPlaneError as exc:
            raise DtlabError(str(exc)) from None
        print(f"local plane {args.name!r} " + ("stopped: no process or port left" if was else "was not running"))
        return 0
    kc = lp.kubeconfig(args.name)
    if kc is None:
        raise SubstrateUnavailable(f"local plane {args.name!r} is not running (`dtlab cluster up`)")
    print(json.dumps({"kubeconfig": kc}) if args.json else kc)
    return 0


# ------------------------------------------------------------------ submit
def run_submit(args: argparse.Namespace) -> int:
    from ..kube import localplane as lp
    from ..model import load_job
    from ..substrates.kube import KubeSubstrate
    from ..twin import Twin

    if args.operator:
        from .operator import submit
        return submit(args)
    kc = args.kubeconfig or lp.kubeconfig(args.plane)
    if kc is None:
        raise SubstrateUnavailable(f"no --kubeconfig and local plane {args.plane!r} is not running "
                                   "(`dtlab cluster up`)")
    state = observed_state(kc, args.namespace, args.cluster)
    cluster = state.snapshot().cluster
    job = load_job(args.job, cluster)
    if args.job_name:
        job = replace(job, name=args.job_name)
    plan = Twin(state).plan(job, policy=args.policy, samples=args.samples, seed=args.seed)
    sub = KubeSubstrate(cluster, seed=args.seed, kubeconfig=kc, start_plane=False, namespace=args.namespace,
                        time_scale=args.time_scale, keep_pods=True, drain_limit_s=args.timeout)
    try:
        sub.submit(plan, job)
        if args.wait:
            sub.advance(None)
        status = sub.job_status(job.name)
    finally:
        sub.close()
    out = {"job": job.name, "policy": args.policy, "placement": plan.placement, "shadow": plan.shadow,
           "prediction": plan.prediction, "state_version": plan.state_version, **status}
    done = out["ok"] is not None
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        pred = plan.prediction
        print(f"job {job.name}: policy {args.policy}, predicted mean {pred.get('mean_ms', float('nan')):.0f} ms, "
              f"p95 {pred.get('p95_ms', float('nan')):.0f} ms (observed state v{plan.state_version})")
        print(f"  {'stage':<14} {'node':<14} {'kind':<5} {'pod':<34} {'start_ms':>9} {'end_ms':>9} "
              f"{'observed':>9}  {'uname -m':<9} phase")
        for sid, s in status["stages"].items():
            fmt = lambda v: "-" if v is None else f"{v - status['arrival_ms']:.0f}"  # noqa: E731
            obs = "-" if s.get("observed_ms") is None else f"{s['observed_ms']:.1f}"
            print(f"  {sid:<14} {str(s['node']):<14} {str(s.get('node_kind')):<5} {str(s['pod']):<34} "
                  f"{fmt(s['start_ms']):>9} {fmt(s['end_ms']):>9} {obs:>9}  {str(s.get('uname_m') or '-'):<9} "
                  f"{s['phase']}")
        if done:
            lat = out["end_ms"] - out["arrival_ms"]
            print(f"  {'ok' if out['ok'] else 'FAILED'}: latency {lat:.0f} ms")
        elif not args.wait:
            print("  submitted (root stages); successors are created by a watching process: use --wait")
    if args.wait and not done:
        print(f"dtlab submit: job {job.name} did not finish within {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0 if (not done or out["ok"]) else 1

