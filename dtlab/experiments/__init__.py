"""Experiments V1-V6 and their one registry (:data:`EXPERIMENTS`, :func:`get`).

Every experiment module defines ``DEFAULTS`` (every parameter; an unknown key is a SpecError),
``check(params) -> dict`` (everything ``run`` would reject, without running: what the runner calls
before a kernel starts) and ``run(params) -> ExperimentResult``, and documents its question and its
output tables. Notebooks only call these functions. The runner, sweeps, the CLI and the tests all
find an experiment through its :class:`Experiment` record here.

Modules: ``result`` (:class:`ExperimentResult`), ``params`` (validation, ranges, spec-file params, seeds), ``summary`` (seed summaries,
the metrics.json CI convention), ``substrate`` (``substrate: auto`` and opening one), ``loop`` (one
controller run of a workload), ``regime`` (the regime a run got).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from ..errors import DtlabError, SpecError
from .result import ExperimentResult

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Experiment:
    """One experiment: its id, its notebook (relative to the project root) and its module.

    ``defaults``, ``check`` and ``run`` come from the module (imported on first use, so listing the
    experiments stays cheap); ``params_file(smoke)`` is its ``params/`` (or ``params/smoke/``) file.
    """

    id: str
    notebook: str
    module: str

    def load(self) -> ModuleType:
        """The experiment module; a module that is missing or lacks ``DEFAULTS``/``check``/``run`` is
        a DtlabError naming what is missing (never skipped)."""
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name and self.module.startswith(exc.name):
                raise DtlabError(f"{self.id}: experiment module {self.module} is not available") from None
            raise
        missing = [name for name in ("DEFAULTS", "check", "run") if not hasattr(mod, name)]
        if missing:
            raise DtlabError(f"{self.id}: experiment module {self.module} does not define {', '.join(missing)}")
        return mod

    @property
    def defaults(self) -> Mapping[str, Any]:
        """Every parameter with its default (the module's ``DEFAULTS``)."""
        defaults: Mapping[str, Any] = self.load().DEFAULTS
        return defaults

    def check(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The module's ``check``: the validated params, or a SpecError naming the bad key."""
        checked: dict[str, Any] = self.load().check(dict(params or {}))
        return checked

    def run(self, params: Mapping[str, Any] | None = None) -> ExperimentResult:
        """The module's ``run`` (in this process, without the notebook)."""
        result: ExperimentResult = self.load().run(dict(params or {}))
        return result

    def params_file(self, smoke: bool = False, root: str | os.PathLike[str] | None = None) -> Path:
        """``params/<id>.yaml`` (full sizes) or ``params/smoke/<id>.yaml`` (smoke sizes) under ``root``."""
        base = Path(root) if root is not None else REPO_ROOT
        return base / "params" / ("smoke" if smoke else "") / f"{self.id}.yaml"

    @property
    def smoke_params(self) -> Path:
        """The smoke-size params file (``params/smoke/<id>.yaml``) of this checkout."""
        return self.params_file(smoke=True)


EXPERIMENTS: dict[str, Experiment] = {e.id: e for e in (
    Experiment("V1", "notebooks/V1_controller_vs_baseline.ipynb", "dtlab.experiments.v1"),
    Experiment("V2", "notebooks/V2_prediction_accuracy.ipynb", "dtlab.experiments.v2"),
    Experiment("V3", "notebooks/V3_execution_overhead.ipynb", "dtlab.experiments.v3"),
    Experiment("V4", "notebooks/V4_shadow_failover.ipynb", "dtlab.experiments.v4"),
    Experiment("V5", "notebooks/V5_scalability.ipynb", "dtlab.experiments.v5"),
    Experiment("V6", "notebooks/V6_drift_robustness.ipynb", "dtlab.experiments.v6"),
)}


def get(name: str | Experiment) -> Experiment:
    """The experiment record for ``V1`` ... ``V6`` (case-insensitive); unknown -> SpecError."""
    if isinstance(name, Experiment):
        return name
    key = str(name).strip().upper()
    if key not in EXPERIMENTS:
        raise SpecError("experiment", f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} or all")
    return EXPERIMENTS[key]


__all__ = ["EXPERIMENTS", "Experiment", "ExperimentResult", "get"]
