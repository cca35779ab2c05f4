"""`dtlab workload generate` and `dtlab replay`: write Workload files; replay trace placements.

Exit codes (mapped by :func:`dtlab.cli.main`): 0 ok, 2 invalid input (the message names the
field/line), 3 other dtlab errors.

    dtlab workload generate --out w.yaml --process mmpp --rates 5,0.5 --sojourn-s 2,8 --count 500
    dtlab workload generate --out w.yaml --duration-trace azure-functions-2021      # materialised
    dtlab replay --nodes NODES_CSV --pods PODS_CSV --policy best-fit [--inflate 1.3] [--seed 0] --out DIR
"""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import SpecError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def check_seed(seed: int) -> None:
    """A ``--seed``: numpy's seed range, the twin's rule (exit 2, not numpy's ValueError traceback)."""
    from ..spec_reader import check_int
    from ..twin import MAX_SEED
    check_int(seed, "--seed", ge=0, le=MAX_SEED, why="numpy seeds are at most 2**128 - 1")


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..model import MAX_WORKLOAD_JOBS
    from ..pathcheck import input_file, output_file
    from ..spec_reader import check_int
    from ..workload.generate import TEMPLATES, write_workload

    check_int(args.count, "--count", ge=1, le=MAX_WORKLOAD_JOBS, why="every job is simulated in memory")
    check_seed(args.seed)
    output_file(args.out, "Workload file")
    if args.template not in TEMPLATES:
        input_file(args.template, "Job template file")

    extra: dict = {}
    if args.process == "mmpp":
        if not args.rates or not args.sojourn_s:
            raise SpecError("--rates/--sojourn-s", "mmpp needs --rates R0,R1,... and --sojourn-s S0,S1,...")
        extra = {"rates_per_s": args.rates, "mean_sojourn_s": args.sojourn_s}
    elif args.process == "diurnal":
        extra = {"amplitude": args.amplitude, "period_s": args.period_s, "peak_s": args.peak_s}
    if args.duration_trace:
        fmt, _, path = args.duration_trace.partition(":")
        durations = {"trace": fmt, **({"path": path} if path else {})}
    else:
        durations = {"dist": args.duration_dist}
        if args.duration_mean_s is not None:
            durations["mean_s"] = args.duration_mean_s
        if args.duration_dist == "lognormal":
            durations["sigma"] = args.duration_sigma
    out = write_workload(args.out, template=args.template, count=args.count, process=args.process,
                         rate_per_s=args.rate, arrivals=extra, durations=durations, seed=args.seed,
                         materialize=True if args.materialize else None, name=args.name)
    extra_note = f" + {out.jobs_path}" if out.jobs_path else ""
    print(f"wrote {out.workload_path}{extra_note}: {args.count} jobs of {out.spec['jobs']['template']['metadata']['name']}, "
          f"arrivals {out.spec['arrivals']['process']}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from ..replay import (PUBLISHED_INFLATE, curve_deviation, policy_names, published_final, replay_allocation,
                          replay_timed, write_allocation)
    from ..workload.readers import OPENB_NODES, OPENB_PODS, read_openb_nodes, read_openb_pods

    from ..pathcheck import input_file, output_dir

    if not (args.inflate == 0 or 0 < args.inflate <= MAX_INFLATE):  # also rejects nan
        raise SpecError("--inflate", f"must be 0 (as listed) or in (0, {MAX_INFLATE:g}], got {args.inflate!r} "
                                     "(the sampled pod list grows with it: 1e6 would need ~68 GiB)")
    for option, value in (("--nodes", args.nodes), ("--pods", args.pods)):
        if value is not None:
            input_file(value, f"{option} openb list")
    for seed in args.seed or []:
        check_seed(seed)
    output_dir(args.out)
    requested = args.policy or ["best-fit"]
    policies = policy_names() if requested == ["all"] else [p for ps in requested for p in ps.split(",")]
    seeds = args.seed or [0]
    default_trace = args.nodes is None and args.pods is None
    nodes = read_openb_nodes(args.nodes or OPENB_NODES)
    pods = read_openb_pods(args.pods or OPENB_PODS)
    out = Path(args.out)
    if args.timed:
        out.mkdir(parents=True, exist_ok=True)
        for policy in policies:
            for seed in seeds:
                res = replay_timed(nodes, pods, policy, seed)
                res.pods.to_csv(out / f"timed_pods_{policy}_{seed}.csv", index=False)
                res.usage.to_csv(out / f"timed_usage_{policy}_{seed}.csv", index=False)
                print(f"{policy:<16} seed {seed}: placed {(res.pods['node'] >= 0).sum()}/{len(res.pods)}, "
                      f"peak GPU {res.usage['gpu_alloc_pct'].max():.1f} %, {res.seconds:.2f} s")
        return 0
    results = []
    inflate_ratio = None if args.inflate <= 0 else args.inflate
    published = published_final() if default_trace and inflate_ratio == PUBLISHED_INFLATE else {}
    for policy in policies:
        for seed in seeds:
            alloc = replay_allocation(nodes, pods, policy, seed=seed, inflate_ratio=inflate_ratio)
            results.append(alloc)
            t = alloc.table
            row = t[t["arrived_pct"] == 100.0]
            row = row.iloc[0] if len(row) else t.iloc[-1]
            print(f"{policy:<16} seed {seed}: at {row.arrived_pct:g} % arrived GPU allocated "
                  f"{row.gpu_alloc_pct:.2f} %, CPU {row.cpu_alloc_pct:.2f} %, failed pods {int(row.failed_pods)} "
                  f"({len(alloc.placements)} pods, {alloc.seconds:.2f} s)")
            last = t.iloc[-1]
            print(f"{'':<16} at {last.arrived_pct:g} % arrived: pods placed {last.placed_pct:.2f} %, twin-predicted "
                  f"p95 {last.pred_p95_ms:.0f} ms, expected SLO misses {last.slo_miss_pct:.2f} % of arrived pods")
            if policy in published:
                print(f"{'':<16} at {t.iloc[-1].arrived_pct:g} % arrived: {t.iloc[-1].gpu_alloc_pct:.2f} % "
                      f"(published: {published[policy]:.2f} %)")
    paths = write_allocation(results, out, compare_published=bool(published))
    if published:
        table = pd.concat([r.table for r in results], ignore_index=True)
        for d in curve_deviation(table).itertuples():
            print(f"{d.policy:<16} vs the study's published curve ({d.points} arrived % points, mean over "
                  f"{table.loc[table['policy'] == d.policy, 'seed'].nunique()} seed(s)): max |diff| "
                  f"{d.max_abs_diff:.2f} pts (at {d.max_at_arrived_pct:g} %), mean |diff| {d.mean_abs_diff:.2f} "
                  f"pts, inside the published min-max band at {d.inside_band_pct:.0f} % of points")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


MAX_INFLATE = 10.0  # x cluster GPU capacity; the paper's methodology uses 1.3


def register(subparsers: Any) -> None:
    w = subparsers.add_parser("workload", help="generate Workload files (Poisson, MMPP, diurnal; trace durations)")
    wsub = w.add_subparsers(dest="workload_command", required=True, metavar="ACTION")
    g = wsub.add_parser("generate", help="write a kind: Workload YAML file",
                        description="Write a Workload file. Parametric durations give a spec-only file (the run's "
                                    "seed draws the stream); --duration-trace or --materialize draw the stream now "
                                    "with --seed and write it next to the file as <stem>.jobs.csv.")
    g.add_argument("--out", required=True, help="Workload YAML path to write")
    g.add_argument("--template", default="single",
                   help="job template: built-in single|pipeline|fanout, or a Job spec file (default single)")
    g.add_argument("--name", help="workload name (default: file stem)")
    g.add_argument("--count", type=int, default=100, help="number of jobs (default 100)")
    g.add_argument("--process", default="poisson", choices=("poisson", "constant", "mmpp", "diurnal"))
    g.add_argument("--rate", type=float, default=1.0, help="mean arrivals per second (poisson/constant/diurnal)")
    g.add_argument("--rates", type=_floats, help="mmpp: rate per state, comma-separated (1/s)")
    g.add_argument("--sojourn-s", type=_floats, help="mmpp: mean time in each state, comma-separated (s)")
    g.add_argument("--amplitude", type=float, default=0.5, help="diurnal: relative amplitude in [0,1] (default 0.5)")
    g.add_argument("--period-s", type=float, default=86_400.0, help="diurnal: period (s, default 86400)")
    g.add_argument("--peak-s", type=float, default=0.0, help="diurnal: time of the peak (s, default 0)")
    g.add_argument("--duration-dist", default="constant", choices=("constant", "exponential", "lognormal"))
    g.add_argument("--duration-mean-s", type=float, help="mean job duration (s); default: the template's")
    g.add_argument("--duration-sigma", type=float, default=0.5, help="lognormal log-sd (default 0.5)")
    g.add_argument("--duration-trace", metavar="FORMAT[:PATH]",
                   help="empirical durations: alibaba-openb | alibaba-v2017 | azure-functions-2021 [:path]")
    g.add_argument("--materialize", action="store_true", help="draw the stream now and write it as a jobs CSV")
    g.add_argument("--seed", type=int, default=0, help="seed for materialised streams (default 0)")
    g.set_defaults(func=_cmd_generate)

    r = subparsers.add_parser("replay", help="replay trace pods onto trace nodes (FGD allocation methodology)",
                              description="Place the pods of an openb pod list on an openb node list in arrival "
                                          "order; by default inflate to --inflate x cluster GPU capacity by seeded "
                                          "sampling, no deletions, and record GPU/CPU allocation at every 1 %% of "
                                          "arrived GPU demand (allocation.csv + allocation.pdf/png in --out).")
    r.add_argument("--nodes", help="openb node list CSV (default: the openb trace's)")
    r.add_argument("--pods", help="openb pod list CSV (default: openb_pod_list_default.csv)")
    r.add_argument("--policy", action="append", default=None,
                   help="random | first-fit | best-fit | dot-product | least-allocated | fgd | all; repeat or comma-separate "
                        "(default best-fit)")
    r.add_argument("--inflate", type=float, default=1.3, help="target GPU demand / capacity (default 1.3; 0 = as listed)")
    r.add_argument("--seed", type=int, action="append", help="seed (repeat for several; default 0)")
    r.add_argument("--timed", action="store_true",
                   help="time-based replay instead: creation/deletion times, resources freed at deletion")
    r.add_argument("--out", required=True, help="output directory")
    r.set_defaults(func=_cmd_replay)

