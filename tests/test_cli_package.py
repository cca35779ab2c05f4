"""The ``dtlab.cli`` package: one module per command group, one registration convention, one error map.

Checks the structure the package docstring promises: no ``dtlab/cli_*.py`` module is left outside
the package, every module of the package is a listed group (so a forgotten or misspelt group is a
failure here, not a silently missing command), every group registers its commands through
``register(subparsers)`` with a ``func`` on each leaf parser, and the error -> exit-code mapping
(unknown command, usage error, SpecError, other DtlabError, ``on_error`` overrides) holds in the
real process without tracebacks.
"""
from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtlab import cli
from dtlab.errors import DtlabError, InfeasibleError, SpecError

PACKAGE = Path(cli.__file__).parent
NOT_GROUPS = {"__main__", "args"}  # args: argument types shared by groups


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), func=None):
    """(command path, its func) for every parser without subcommands under ``parser``.

    ``func`` is the leaf's default or, as argparse resolves it, the nearest parent's.
    """
    func = parser.get_default("func") or func
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, func
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name), func)


def test_no_cli_modules_outside_the_package():
    assert not sorted(p.name for p in PACKAGE.parent.glob("cli_*.py"))
    assert (PACKAGE / "__init__.py").is_file() and (PACKAGE / "__main__.py").is_file()


def test_every_module_of_the_package_is_a_registered_group():
    modules = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])} - NOT_GROUPS
    groups = {g.__name__.rpartition(".")[2] for g in cli.GROUPS}
    assert modules == groups, f"modules that are not groups: {modules - groups}; groups without a module: " \
                              f"{groups - modules}"
    assert len(cli.GROUPS) == len(groups), "a group is listed twice"
    for group in cli.GROUPS:
        assert group.__name__.startswith("dtlab.cli.") and callable(group.register), group.__name__


@pytest.mark.parametrize("group", cli.GROUPS, ids=lambda g: g.__name__.rpartition(".")[2])
def test_each_group_registers_commands_with_a_func(group):
    """On a parser of its own, each group adds >= 1 command and every leaf has func(args) -> int."""
    parser = argparse.ArgumentParser(prog="dtlab")
    sub = parser.add_subparsers(dest="command", required=True)
    group.register(sub)
    leaves = list(_leaves(parser))
    assert leaves and all(path for path, _ in leaves), f"{group.__name__} registered no command"
    for path, func in leaves:
        assert callable(func), f"dtlab {' '.join(path)} has no func"


def test_the_full_parser_has_every_command_once():
    names = [path[0] for path, _ in _leaves(cli.build_parser())]
    top = list(dict.fromkeys(names))
    assert top[:3] == ["plan", "simulate", "policies"]           # help order: the twin's commands first
    for command in ("run", "results", "figures", "chaos", "calibrate", "fabric", "workload", "replay", "serve",
                    "sweep", "controller", "cluster", "submit", "operator", "table", "compare", "report", "trace"):
        assert command in top, command


def _dtlab(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtlab.cli", *argv], capture_output=True, text=True, timeout=120)


def test_unknown_command_exits_2_without_traceback():
    proc = _dtlab("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice: 'no-such-command'" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_error_exits_2():
    proc = _dtlab("plan")                                         # JOB and --cluster missing
    assert proc.returncode == 2 and "required" in proc.stderr and "Traceback" not in proc.stderr


def _raising(exc: BaseException):
    def func(args):
        raise exc
    return func


@pytest.mark.parametrize("exc, on_error, code, line", [
    (SpecError("jobs[0].stages", "must not be empty"), (), 2, "dtlab fake: error: jobs[0].stages: must not be empty"),
    (InfeasibleError("no node fits"), (), 3, "dtlab fake: error: no node fits"),
    (DtlabError("x" * 5000), (), 3, None),
    (FileNotFoundError(2, "No such file or directory", "a.yaml"), (), 2,
     "dtlab fake: error: a.yaml: No such file or directory"),
    (RecursionError(), (), 2, "dtlab fake: error: input nested too deeply"),
    (KeyboardInterrupt(), (), 130, ""),
    (SpecError("--p", "bad"), ((SpecError, 2, "dtlab fake: invalid parameters: "), (DtlabError, 3, "dtlab fake: ")),
     2, "dtlab fake: invalid parameters: --p: bad"),
    (InfeasibleError("none"), ((SpecError, 2, "p: "), (DtlabError, 1, "dtlab fake: ")), 1, "dtlab fake: none"),
])
def test_one_error_map(monkeypatch, capsys, exc, on_error, code, line):
    class Fake:
        @staticmethod
        def register(subparsers):
            subparsers.add_parser("fake").set_defaults(func=_raising(exc), on_error=on_error)

    monkeypatch.setattr(cli, "GROUPS", (Fake,))
    assert cli.main(["fake"]) == code
    err = capsys.readouterr().err
    if line is None:                                              # a long message: one line, cut
        assert err.startswith("dtlab fake: error: xxx") and err.endswith(" ... (cut)\n") and len(err) < 2100
    else:
        assert err == (line + "\n" if line else "")


def test_a_bug_is_not_swallowed(monkeypatch):
    """Only the listed errors are mapped; anything else is a bug and keeps its traceback."""
    class Fake:
        @staticmethod
        def register(subparsers):
            subparsers.add_parser("fake").set_defaults(func=_raising(ZeroDivisionError("bug")))

    monkeypatch.setattr(cli, "GROUPS", (Fake,))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])
