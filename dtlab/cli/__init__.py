"""The ``dtlab`` command line: one entry point, subcommands contributed by modules.

Built in: ``dtlab plan`` (place one job, print the plan and its predicted latency) and
``dtlab simulate`` (run a workload through the SimPy twin, write one row per job).

**Adding a subcommand** is one line in :data:`COMMANDS`: a module path, or
``module:attribute``, whose object has either

* ``register(subparsers)`` adding its parser(s) and ``set_defaults(func=run)`` with
  ``run(args) -> int`` (the convention of ``dtlab.cli_run`` and ``dtlab.cli_chaos``), or
* ``add_parser(subparsers)`` returning its parser, plus ``run(args) -> int``.

Keep heavy imports inside ``run`` so ``dtlab plan`` stays quick. A listed module that is
not there (yet) is skipped; one that fails to import is reported on stderr and skipped.

Exit codes: 0 ok; 2 invalid input (spec, parameter: the message names the field);
3 any other dtlab error (infeasible job, unavailable substrate); never a traceback for
those.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from ..errors import DtlabError, SpecError

COMMANDS: list[str] = [
    "dtlab.cli:PlanCommand",
    "dtlab.cli:SimulateCommand",
    "dtlab.cli:PoliciesCommand",
    "dtlab.cli.run",
    "dtlab.cli.chaos",
    "dtlab.cli.fabric",
    "dtlab.cli.workload",
    "dtlab.api.serve",
    "dtlab.cli.sweep",
    "dtlab.controller_service",
    "dtlab.cli.cluster",
    "dtlab.operator.cli",
    "dtlab.report.cli",
    "dtlab.cli.trace",
]

EXIT_SPEC = 2
EXIT_DTLAB = 3


class PlanCommand:
    """``dtlab plan JOB --cluster C --policy P``: place one job and predict its latency."""

    @staticmethod
    def add_parser(subparsers):
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
        return p

    @staticmethod
    def run(args) -> int:
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


def _carried(job) -> dict:
    """The job's and its stages' fields the twin does not model (older job files), for display."""
    out: dict = dict(job.carried)
    stages = {s.id: dict(s.carried) for s in job.stages if s.carried}
    if stages:
        out["stages"] = stages
    return out


class SimulateCommand:
    """``dtlab simulate --cluster C --workload W --policy P --out results.csv``."""

    @staticmethod
    def add_parser(subparsers):
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
        return p

    @staticmethod
    def run(args) -> int:
        from dataclasses import replace
        from ..jobfile import load_jobs, pick_job
        from ..model import Arrivals, Workload, check_job_fits, load_cluster, load_workload
        from ..twin import Twin
        from .. import policies
        from ..pathcheck import output_file
        output_file(args.out, "results CSV")
        cluster = load_cluster(args.cluster)
        if args.workload is None and args.jobs is None:
            raise SpecError("--workload", "is required (or give --jobs FILE)")
        if args.jobs is not None:
            if not args.rate_per_s > 0:
                raise SpecError("--rate-per-s", f"must be > 0, got {args.rate_per_s}")
            if args.count < 1:
                raise SpecError("--count", f"must be >= 1, got {args.count}")
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


class PoliciesCommand:
    """``dtlab policies``: list the registered policy names."""

    @staticmethod
    def add_parser(subparsers):
        return subparsers.add_parser("policies", help="list the registered placement policies")

    @staticmethod
    def run(args) -> int:
        from .. import policies
        print("\n".join(policies.names()))
        return 0


def _load(entry: str):
    module_name, _, attr = entry.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None  # not written yet
        print(f"dtlab: warning: subcommands of {module_name} unavailable: {exc}", file=sys.stderr)
        return None
    except Exception as exc:  # a broken contributor must not take `dtlab plan` down
        print(f"dtlab: warning: subcommands of {module_name} unavailable: {exc}", file=sys.stderr)
        return None
    return getattr(obj, attr) if attr else obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtlab", description="Digital-twin workbench for heterogeneous clusters")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"dtlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in COMMANDS:
        obj = _load(entry)
        if obj is None:
            continue
        if hasattr(obj, "register"):
            obj.register(sub)
        elif hasattr(obj, "add_parser") and hasattr(obj, "run"):
            p = obj.add_parser(sub)
            p.set_defaults(func=obj.run)
        else:
            print(f"dtlab: warning: {entry} has neither register(subparsers) nor add_parser/run", file=sys.stderr)
    return parser


def _clip(exc: Exception, limit: int = 2000) -> str:
    """An error message for stderr, at most ``limit`` characters (bad values are quoted short anyway)."""
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 15] + " ... (cut)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except SpecError as exc:
        print(f"dtlab {args.command}: error: {_clip(exc)}", file=sys.stderr)
        return EXIT_SPEC
    except DtlabError as exc:
        print(f"dtlab {args.command}: error: {_clip(exc)}", file=sys.stderr)
        return EXIT_DTLAB
    except (IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError, FileExistsError) as exc:
        # a path argument no explicit check caught (dtlab.pathcheck is the first line): still exit 2
        print(f"dtlab {args.command}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_SPEC
    except RecursionError:
        print(f"dtlab {args.command}: error: input nested too deeply", file=sys.stderr)
        return EXIT_SPEC
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
