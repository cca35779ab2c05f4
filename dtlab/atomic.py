"""Atomic file and directory replacement: the one home of "write to a temp, then rename".

Why one module: the rule (temp file in the same directory, so the rename stays on one file system;
the temp removed when the writer fails; readers see the old file or the new one, never half of
one) used to be written out in every module that saved something, each a little differently.
Everything in the package that replaces a file or a directory goes through here
(``tests/test_one_home.py`` checks it). Standard library only, so the lowest layers can use it.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temp path next to ``path`` for writers that need a file name (``to_csv``, ``savefig``);
    renamed onto ``path`` when the block ends without an exception, removed otherwise.

    ``suffix`` is kept at the end of the temp name for writers that guess the format from it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # a unique name (pid + random), created by the writer itself so it gets the usual umask mode
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file + rename; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` via a temp file + rename; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return Path(path)


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                keep: Callable[[Path], bool] | None = None) -> Path:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` (renamed aside, then removed).

    With ``keep``, an existing ``dst`` for which ``keep(dst)`` is true stays and ``src`` is removed
    instead (a concurrent writer finished the same work first). Returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if keep is not None and dst.exists() and keep(dst):
        shutil.rmtree(src, ignore_errors=True)
        return dst
    trash = None
    if dst.exists():
        trash = dst.with_name(f".trash-{dst.name}-{uuid.uuid4().hex[:6]}")
        os.replace(dst, trash)
    os.replace(src, dst)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return dst
