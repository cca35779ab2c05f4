"""The ``dtlab`` command line: :func:`main`, the command groups, and the one error -> exit-code map.

**Command groups.** One module per group in this package, listed in :data:`GROUPS` (imported
statically, so a missing or broken module is an ImportError when ``dtlab`` starts and in every
test, never a silently dropped command). The help lists commands in this order:

======================  ============================================================
``plan``                ``plan``, ``simulate``, ``policies`` (the twin itself)
``run``                 ``run``, ``results``, ``figures`` (experiments V1..V6)
``chaos``               ``chaos validate | export``
``fabric``              ``calibrate compute | network``, ``fabric cleanup``
``workload``            ``workload generate``, ``replay`` (trace allocation replay)
``serve``               ``serve`` (the REST API; server code in :mod:`dtlab.api.serve`)
``sweep``               ``sweep`` (parameter grids on Dask)
``controller``          ``controller`` (the service loop; :mod:`dtlab.controller_service`)
``cluster``             ``cluster up | status | down | kubeconfig``, ``submit``
``operator``            ``operator`` (DTJob reconciler behind a Lease)
``report``              ``table``, ``compare``, ``report``
``trace``               ``trace record | replay``
======================  ============================================================

**The registration convention** (the only one): a group module defines
``register(subparsers) -> None``, which adds its parsers and gives each leaf parser
``set_defaults(func=...)`` with ``func(args: argparse.Namespace) -> int`` (the exit code).
Adding a group is a module here plus one entry in the import line and :data:`GROUPS`. Keep heavy
imports (pandas, SimPy, kubernetes, Flask) inside the command functions so ``dtlab plan`` starts
quickly.

**Exit codes** (decided in :func:`main` alone; commands raise, they do not print errors):

* 0 ok; other codes a command returns on purpose (1: some runs/points failed, a job did not finish).
* 2 invalid input: :class:`~dtlab.errors.SpecError` (spec field or flag; the message names it),
  usage errors and unknown commands (argparse), a path that is missing, a directory, or not
  permitted (``OSError`` with a file name), input nested too deeply (``RecursionError``).
* 3 any other :class:`~dtlab.errors.DtlabError` (infeasible job, substrate unavailable).
* 130 interrupted (Ctrl-C).

Each error is one line on stderr, ``dtlab COMMAND: error: MESSAGE`` (message cut at 2,000
characters), never a traceback. A command may word or number its dtlab errors differently by
setting ``on_error`` in its defaults: a tuple of ``(exception class, exit code, message prefix)``,
the first matching class wins, e.g. ``dtlab run`` says ``invalid parameters:`` for a SpecError and
``dtlab figures`` exits 1. Exceptions that are not listed above are bugs and keep their traceback.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Sequence

from ..errors import DtlabError, SpecError
from . import chaos, cluster, controller, fabric, operator, plan, report, run, serve, sweep, trace, workload

GROUPS: tuple[ModuleType, ...] = (plan, run, chaos, fabric, workload, serve, sweep, controller, cluster,
                                  operator, report, trace)

EXIT_SPEC = 2
EXIT_DTLAB = 3
EXIT_INTERRUPTED = 130

OnError = tuple[tuple[type[DtlabError], int, str], ...]
"""``set_defaults(on_error=...)``: (exception class, exit code, message prefix), first match wins."""


def build_parser() -> argparse.ArgumentParser:
    """The ``dtlab`` parser with every group of :data:`GROUPS` registered, in that order."""
    parser = argparse.ArgumentParser(prog="dtlab", description="Digital-twin workbench for heterogeneous clusters")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"dtlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _clip(exc: BaseException, limit: int = 2000) -> str:
    """An error message for stderr, at most ``limit`` characters (bad values are quoted short anyway)."""
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 15] + " ... (cut)"


def _dtlab_error(args: argparse.Namespace, exc: DtlabError) -> int:
    """Print a dtlab error the command's way (``on_error``) or the default way; its exit code."""
    on_error: OnError = getattr(args, "on_error", ())
    for cls, code, prefix in on_error:
        if isinstance(exc, cls):
            print(f"{prefix}{_clip(exc)}", file=sys.stderr)
            return code
    print(f"dtlab {args.command}: error: {_clip(exc)}", file=sys.stderr)
    return EXIT_SPEC if isinstance(exc, SpecError) else EXIT_DTLAB


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dtlab`` command; the exit code (see the module docstring for the mapping)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints usage + message, exits 2
    try:
        code = args.func(args)
    except DtlabError as exc:
        return _dtlab_error(args, exc)
    except (IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError, FileExistsError) as exc:
        # a path argument no explicit check caught (dtlab.pathcheck is the first line): still exit 2
        print(f"dtlab {args.command}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_SPEC
    except RecursionError:
        print(f"dtlab {args.command}: error: input nested too deeply", file=sys.stderr)
        return EXIT_SPEC
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return int(code or 0)
