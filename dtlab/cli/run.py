"""`dtlab run | results | figures`: the experiment subcommands of the dtlab CLI.

Exit codes (mapped by :func:`dtlab.cli.main`, worded by ``on_error`` below): 0 all good, 1 a
notebook failed (``figures``: a run could not be redrawn), 2 bad params or usage, 3 other dtlab
errors (e.g. an experiment module that is not available).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import DtlabError, SpecError


def _cmd_run(args: argparse.Namespace) -> int:
    from .. import runner

    if args.jobs < 1:  # 0 or -5 ran serially without a word
        raise SpecError("--jobs", f"must be >= 1, got {args.jobs}")
    outcomes = runner.run(args.experiments, params_file=args.params, smoke=args.smoke,
                          out_root=args.out, jobs=args.jobs, force=args.force,
                          progress=not args.quiet, lock_timeout_s=args.lock_timeout)
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"dtlab run: {o.error}\n    executed notebook: {o.run_dir}", file=sys.stderr)
    done = [o for o in outcomes if o.status != "failed"]
    if done:
        print(f"outputs: {', '.join(str(o.run_dir) for o in done)}")
    return 1 if failed else 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds (got {text})")
    return value


def _cmd_results(args: argparse.Namespace) -> int:
    from .. import results

    table = results.list_runs(args.out, args.experiments or None)
    if args.csv:
        sys.stdout.write(table.to_csv(index=False))
    else:
        print(results.format_runs(table))
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from .. import runner

    written, skipped = runner.regenerate_figures(args.out, args.experiments or None)
    runs = sorted({p.parent.parent for p in written})
    for exp in skipped:
        print(f"dtlab figures: no figure function for {exp} yet; its runs were left as they are", file=sys.stderr)
    print(f"wrote {len(written)} figure files for {len(runs)} run(s) under {args.out}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``run``, ``results`` and ``figures`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("run", help="run experiments V1..V6 (papermill) into outputs/<exp>/<run-id>/",
                              description="Run experiments headlessly. Params come from params/<EXP>.yaml "
                                          "(or params/smoke/<EXP>.yaml with --smoke, or -p FILE).")
    p.add_argument("experiments", nargs="+", metavar="EXP", help="V1 .. V6, or all")
    p.add_argument("-p", "--params", help="params YAML (only with a single experiment)")
    p.add_argument("--smoke", action="store_true", help="use params/smoke/ (seconds per experiment)")
    p.add_argument("--out", default="outputs", help="output root (default: outputs)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="experiments to run in parallel processes")
    p.add_argument("--force", action="store_true", help="re-run even if a finished run has the same params")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--lock-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="how long a wall-clock (fabric) run waits for the host lock before failing "
                        "(default $DTLAB_LOCK_TIMEOUT or 3600)")
    p.set_defaults(func=_cmd_run, on_error=((SpecError, 2, "dtlab run: invalid parameters: "),
                                            (DtlabError, 3, "dtlab run: ")))

    p = subparsers.add_parser("results", help="list runs with their headline metrics")
    p.add_argument("experiments", nargs="*", metavar="EXP", help="only these experiments")
    p.add_argument("--out", default="outputs", help="output root (default: outputs)")
    p.add_argument("--csv", action="store_true", help="CSV instead of text")
    p.set_defaults(func=_cmd_results)

    p = subparsers.add_parser("figures", help="redraw every run's figures from its saved CSVs")
    p.add_argument("experiments", nargs="*", metavar="EXP", help="only these experiments")
    p.add_argument("--out", default="outputs", help="output root (default: outputs)")
    p.set_defaults(func=_cmd_figures, on_error=((DtlabError, 1, "dtlab figures: "),))

