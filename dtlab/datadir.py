"""Where dtlab finds its reference data (traces, RTTs, published overheads, Chaos Mesh CRDs).

The data lives in the repository's ``data/`` folder (with provenance and licences in
``data/README.md`` and ``NOTICE``), not in the wheel: the openb trace's licence allows research use,
and 6 MB of CSVs do not belong in every install. Resolution, in order:

1. ``DTLAB_DATA_DIR`` (a copy of the folder anywhere; always wins),
2. ``<checkout>/data`` when dtlab is imported from a clone (editable install or source tree).

A pip-installed dtlab without a checkout has neither; :func:`require` then raises a
:class:`~dtlab.errors.SpecError` that says where to get the data, instead of a file-not-found
traceback deep inside a reader.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import SpecError

ENV = "DTLAB_DATA_DIR"
_CHECKOUT_DATA = Path(__file__).resolve().parents[1] / "data"
WHERE_TO_GET = ("clone the dtlab repository (its data/ folder holds the reference data) or set "
                f"{ENV} to a copy of that folder")


def cache_dir() -> Path:
    """Where dtlab keeps what it builds and measures outside the clone, by version (kernels, the
    control plane's binaries, calibrations, the host lock): ``DTLAB_CACHE``, else ``~/.cache/dtlab``.
    Outside the clone so a fresh clone (CI) reuses them."""
    return Path(os.environ.get("DTLAB_CACHE") or Path.home() / ".cache" / "dtlab")


def data_dir() -> Path:
    """The data folder dtlab reads (it may not exist: see :func:`require`)."""
    env = os.environ.get(ENV)
    return Path(env) if env else _CHECKOUT_DATA


def data_path(*parts: str) -> Path:
    """A path inside the data folder."""
    return data_dir().joinpath(*parts)


def missing_hint(path: str | os.PathLike) -> str:
    """For a missing file under the data folder, where the reference data comes from; else ''."""
    try:
        Path(path).resolve().relative_to(data_dir().resolve())
    except ValueError:
        return ""
    return f" (reference data not found: {WHERE_TO_GET})"


def require(path: str | os.PathLike) -> Path:
    """``path`` if it exists; else a SpecError naming it (and where the data comes from)."""
    p = Path(path)
    if not p.exists():
        raise SpecError(str(p), "file not found" + missing_hint(p))
    return p
