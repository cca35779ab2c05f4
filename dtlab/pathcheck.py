"""Checks of path arguments before anything is read or written (CLI and spec loaders).

A directory where a file is expected, a file where a directory is expected, a missing parent
or an unwritable place each get their own :class:`SpecError` naming the path (the CLI turns it
into exit code 2), instead of an ``IsADirectoryError`` traceback halfway through a run.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import SpecError


def input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """An existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise SpecError(str(p), f"{what} not found")
    if p.is_dir():
        raise SpecError(str(p), f"is a directory; expected a {what}")
    if not os.access(p, os.R_OK):
        raise SpecError(str(p), f"{what} is not readable (permission denied)")
    return p


def output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """A path a file can be written to: not a directory, its parent a writable directory (or creatable)."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(str(p), f"is a directory; expected a path for the {what}")
    _writable_dir(_existing_ancestor(p.parent), p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise SpecError(str(p), f"{what} exists and is not writable")
    return p


def output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """A directory that exists and is writable, or can be created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SpecError(str(p), f"is a file; expected a {what}")
    _writable_dir(_existing_ancestor(p), p, what)
    return p


def _existing_ancestor(p: Path) -> Path:
    p = p if str(p) else Path(".")
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _writable_dir(anc: Path, target: Path, what: str) -> None:
    if not anc.is_dir():
        raise SpecError(str(target), f"cannot create the {what}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise SpecError(str(target), f"cannot write the {what}: {anc} is not writable")
