"""Experiments V1-V6: ``dtlab.experiments.vN.run(params) -> ExperimentResult``.

Each module documents its question, ``DEFAULTS`` (every parameter; an unknown key is a
SpecError) and its output tables. Notebooks only call these functions.
"""
from __future__ import annotations

from importlib import import_module

from .common import ExperimentResult

EXPERIMENTS = ("V1", "V2", "V3", "V4", "V5", "V6")


def get(name: str):
    """The experiment module for ``V1`` ... ``V6`` (case-insensitive)."""
    from ..errors import SpecError

    key = str(name).upper()
    if key not in EXPERIMENTS:
        raise SpecError("experiment", f"unknown experiment {name!r} (known: {list(EXPERIMENTS)})")
    return import_module(f"{__name__}.{key.lower()}")


__all__ = ["EXPERIMENTS", "ExperimentResult", "get"]
