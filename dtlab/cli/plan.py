"""``dtlab plan | simulate | policies``: the twin's own commands (place one job; simulate a workload).

``dtlab plan`` places one job and prints the plan and its predicted latency; ``dtlab simulate``
runs a workload through the SimPy twin and writes one CSV row per job; ``dtlab policies`` lists
the registered placement policies. Errors go through :func:`dtlab.cli.main` (exit 2 for a bad
spec or flag, 3 for an infeasible job).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import SpecError


def register(subparsers: Any) -> None:
    """Add ``plan``, ``simulate`` and ``policies``."""
    from ..predict import names as predictor_names
    p = subparsers.add_parser("plan", help="place one job on a cluster and predict its latency",
                              description="Place JOB on CLUSTER with a policy; print placement, shadow, "
                                          "predicted latency (mean, p50/p95/p99, CVaR95, deadline-miss) "
                                          "and the planning time.")
    p.add_argument("job", help="Job spec (YAML/JSON; dtlab/v1, fabric.dt/v1, or an older `jobs:` list file)")
    p.add_argument("--job-id", default=None, help="which job of a file holding several (default: the only one)")
    p.add_argument("--cluster", required=True, help="Cluster spec")
    p.add_argument("--policy", default=None,
                   help="policy name (default greedy, or energy when the job says "
                        "policy: {optimize_for: energy}; see `dtlab policies`)")
    p.add_argument("--samples", type=int, default=256, help="Monte Carlo samples (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--predictor", default="fast", choices=predictor_names(), help="predictor path (default fast)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run_plan)

    p = subparsers.add_parser("simulate", help="run a workload through the SimPy twin, one CSV row per job")
    p.add_argument("--cluster", required=True, help="Cluster spec")
    p.add_argument("--workload", default=None,
                   help="Workload spec (required unless --jobs is given)")
    p.add_argument("--jobs", default=None,
                   help="a job file (older `jobs:` list or Job spec): its job (--job-id) replaces the "
                        "workload's template; without --workload, a Poisson stream of it")
    p.add_argument("--job-id", default=None, help="which job of --jobs (default: the only one)")
    p.add_argument("--rate-per-s", type=float, default=1.0,
                   help="arrival rate for --jobs without --workload (default 1.0)")
    p.add_argument("--count", type=int, default=100, help="jobs for --jobs without --workload (default 100)")
    p.add_argument("--policy", default="greedy", help="policy name (default greedy)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="results.csv", help="CSV output path (default results.csv)")
    p.set_defaults(func=run_simulate)

    p = subparsers.add_parser("policies", help="list the registered placement policies")
    p.set_defaults(func=run_policies)


def run_plan(args: argparse.Namespace) -> int:
    """``dtlab plan JOB --cluster C --policy P``: place one job and predict its latency."""
    from ..jobfile import load_jobs, pick_job
    from ..model import check_job_fits, load_cluster
    from ..twin import Twin
    cluster = load_cluster(args.cluster)
    job = pick_job(load_jobs(args.job), args.job_id, args.job)
    check_job_fits(job, cluster)
    twin = Twin(cluster)
    policy = args.policy or ("energy" if job.optimize_for == "energy" else "greedy")
    plan = twin.plan(job, policy=policy, samples=args.samples, seed=args.seed,
                     predictor=args.predictor)
    carried = _carried(job)
    if args.json:
        from ..energy import stage_energy_j
        out = plan.to_dict()
        out["energy_stages_j"] = stage_energy_j(twin.state.snapshot(), job, plan.placement, twin.timing)
        if carried:
            out["carried"] = carried  # fields of the job file the twin does not model
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(f"job {plan.job}: policy {plan.policy}, predictor {plan.predictor} ({plan.samples} samples), "
          f"planned in {plan.elapsed_ms:.1f} ms")
    if carried:
        print(f"  carried, not modelled by the twin: {json.dumps(carried, sort_keys=True)}")
    for sid, node in plan.placement.items():
        backup = f"   shadow {plan.shadow[sid]}" if sid in plan.shadow else ""
        print(f"  {sid:<16} -> {node:<16} [{plan.formats.get(sid)}]{backup}")
    from ..energy import ENERGY_KEYS
    pr = {k: v for k, v in plan.prediction.items() if k not in ENERGY_KEYS}
    print("  predicted latency: " + ", ".join(f"{k[:-3] if k.endswith('_ms') else k} {v:.4g}"
                                              for k, v in pr.items()))
    if "energy_j" in plan.prediction:
        print(f"  predicted energy (power model x CPU time): mean {plan.prediction['energy_j']:.4g} J, "
              f"p95 {plan.prediction['energy_p95_j']:.4g} J")
    return 0


def _carried(job: Any) -> dict[str, Any]:
    """The job's and its stages' fields the twin does not model (older job files), for display."""
    out: dict[str, Any] = dict(job.carried)
    stages = {s.id: dict(s.carried) for s in job.stages if s.carried}
    if stages:
        out["stages"] = stages
    return out


def run_simulate(args: argparse.Namespace) -> int:
    """``dtlab simulate --cluster C --workload W --policy P --out results.csv``."""
    from dataclasses import replace

    from .. import policies
    from ..jobfile import load_jobs, pick_job
    from ..model import Arrivals, Workload, check_job_fits, load_cluster, load_workload
    from ..pathcheck import output_file
    from ..twin import Twin
    output_file(args.out, "results CSV")
    cluster = load_cluster(args.cluster)
    if args.workload is None and args.jobs is None:
        raise SpecError("--workload", "is required (or give --jobs FILE)")
    if args.jobs is not None:
        from ..model import MAX_WORKLOAD_JOBS
        from ..spec_reader import check_int, check_number
        check_number(args.rate_per_s, "--rate-per-s", gt=0)  # finite too: inf/nan would stall the arrivals
        check_int(args.count, "--count", ge=1, le=MAX_WORKLOAD_JOBS, why="every job is simulated in memory")
        job = pick_job(load_jobs(args.jobs), args.job_id, args.jobs)
        check_job_fits(job, cluster)
        workload = (replace(load_workload(args.workload), template=job) if args.workload else
                    Workload(name=job.name, arrivals=Arrivals("poisson", args.rate_per_s),
                             template=job, count=args.count))
    else:
        workload = load_workload(args.workload)
    policies.get(args.policy)  # fail on a bad name before loading SimPy
    df = Twin(cluster).simulate(workload, policy=args.policy, seed=args.seed)
    df.to_csv(args.out, index=False)
    n = len(df)
    if n:
        lat = df["latency_ms"]
        missed = float(df["missed"].mean()) if "missed" in df else float("nan")
        print(f"{n} jobs -> {args.out}: latency mean {lat.mean():.1f} ms, p95 {lat.quantile(0.95):.1f} ms, "
              f"deadline misses {missed:.1%}")
    else:
        print(f"0 jobs -> {args.out}")
    return 0


def run_policies(args: argparse.Namespace) -> int:
    """``dtlab policies``: list the registered policy names."""
    from .. import policies
    print("\n".join(policies.names()))
    return 0
