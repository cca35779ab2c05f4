"""CLI: ``dtlab table RUN_DIR``, ``dtlab compare RUN_A RUN_B``, ``dtlab report --out DIR``.

Errors (missing run directory, runs of different experiments, unknown metric) exit 2 with the
reason (dtlab.cli maps SpecError to 2; a missing directory is raised as SpecError here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import SpecError


def _run_dir(path: str, arg: str) -> str:
    if not Path(path).is_dir():
        raise SpecError(arg, f"{path}: no such run directory")
    return path


def register(subparsers: Any) -> None:
    from ..report.tables import FORMATS

    p = subparsers.add_parser("table", help="print the headline table of a run with CIs (LaTeX/Markdown/CSV)",
                              description="Headline metrics of a saved run (metrics.json), estimate and 95 %% CI "
                                          "rounded to the interval; LaTeX is a booktabs tabular.")
    p.add_argument("run_dir", help="a run directory, e.g. outputs/V1/<run-id>")
    p.add_argument("--format", default="latex", choices=FORMATS, help="output format (default latex)")
    p.set_defaults(func=run_table)

    c = subparsers.add_parser("compare", help="differences between two runs of one experiment, with CIs",
                              description="Per headline metric, B - A with a 95 %% CI (paired when the seeds "
                                          "match), and whether the code revision or the params differ. "
                                          "Exit 0 either way unless --fail-if-worse.")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--fail-if-worse", metavar="METRIC", action="append", default=[],
                   help="exit 1 if B is worse than A on METRIC (CI excludes 0); repeatable")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=run_compare)

    r = subparsers.add_parser("report", help="static HTML page over every finished run under outputs/",
                              description="One card per finished run (experiment, date, substrate, params "
                                          "diff, headline metrics with CIs, figures, executed notebook), "
                                          "filters by experiment and substrate. Open DIR/index.html.")
    r.add_argument("--out", required=True, help="directory for index.html and its files")
    r.add_argument("--outputs", default="outputs", help="where the runs are (default outputs)")
    r.set_defaults(func=run_report)


def run_table(args) -> int:
    from ..report.tables import run_table as table
    sys.stdout.write(table(_run_dir(args.run_dir, "run_dir"), args.format))
    return 0


def run_compare(args) -> int:
    from ..results import jsonable
    from ..report.compare import as_json, compare, format_text, worse_on

    result = compare(_run_dir(args.run_a, "run_a"), _run_dir(args.run_b, "run_b"))
    worse = {m: worse_on(result, m) for m in args.fail_if_worse}
    if args.json:
        print(json.dumps(jsonable(as_json(result)), indent=2))
    else:
        print(format_text(result))
    failed = {m: rows for m, rows in worse.items() if rows}
    for m, rows in failed.items():
        print(f"worse on {m}: " + ", ".join(f"{r.group} ({r.diff.mean:+.4g})" for r in rows), file=sys.stderr)
    return 1 if failed else 0


def run_report(args) -> int:
    from ..report.page import build

    page, n = build(args.out, args.outputs)
    print(f"{n} run(s) -> {page}")
    return 0
