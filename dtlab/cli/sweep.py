"""``dtlab sweep EXPERIMENT --grid FILE``: a parameter sweep on Dask (see :mod:`dtlab.sweep`).

Exit codes (as ``dtlab.cli``): 0 every point finished, 1 some points failed (the others are kept
and merged; re-running resumes), 2 bad grid or params (the message names ``grid.<key>``), 3 other
dtlab errors.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep", help="sweep an experiment over a parameter grid x seeds on Dask (resumable)",
        description="Run the cartesian product of the grid's parameters x seeds, one experiment run per "
                    "point (<out>/<EXP>/<point-id>/), skip finished points, and merge everything into "
                    "<out>/<EXP>/sweep.csv plus figures/sweep_<measure>.pdf|png (95% CI over seeds).")
    p.add_argument("experiment", metavar="EXP", help="V1 .. V6")
    p.add_argument("--grid", required=True, help="sweep YAML (see params/sweeps/)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per grid point (default: the base params' seeds)")
    p.add_argument("--smoke", action="store_true", help="base params from params/smoke/<EXP>.yaml")
    p.add_argument("--out", default="outputs/sweeps", help="output root (default: outputs/sweeps)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="existing Dask scheduler, e.g. tcp://HOST:8786 (default: a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    p.add_argument("--no-figures", action="store_true", help="merge the table only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import sweep as _sweep

    res = _sweep.sweep(args.experiment, args.grid, seeds=args.seeds, smoke=args.smoke, out=args.out,
                       scheduler=args.scheduler, workers=args.workers, progress=not args.quiet,
                       figures=not args.no_figures)
    n = len({p.id for p in res.points})
    print(f"sweep {res.experiment}: {n} points ({len(res.ran)} run, {len(res.skipped)} already done, "
          f"{len(res.failed)} failed)")
    for pid, err in sorted(res.failed.items()):
        print(f"dtlab sweep: point {pid} failed: {err}", file=sys.stderr)
    print(f"table: {res.out_dir / 'sweep.csv'} ({len(res.table)} rows)")
    if res.figures:
        print(f"figures: {res.out_dir / 'figures'} ({len(res.figures)} files)")
    return 1 if res.failed else 0

