"""What every experiment returns: tables, headline metrics and the params it ran with.

Saved by :func:`dtlab.results.save` (notebooks and sweep points alike); defined here, with the
experiments, because ``results`` sits above them (it also lists and reads runs back).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class ExperimentResult:
    """What every experiment's ``run(params)`` returns: ``table`` -> results.csv, ``metrics`` ->
    metrics.json, ``extra`` -> one <name>.csv each; ``params`` are the effective params. Saved by
    :func:`dtlab.results.save` (notebooks and sweeps alike)."""
    table: pd.DataFrame
    metrics: dict[str, Any]
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
