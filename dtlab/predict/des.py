"""The ``des`` predictor: the SimPy engine replayed once per sample (the reference model).

Only the registration lives here; the model is :mod:`dtlab.des` (engine) and
:func:`dtlab.des.sampling.sample_latencies_des`. SimPy is imported on first use, so
planning with ``fast`` never loads it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..model import Job
from ..timing import TimingModel
from .registry import register


@register("des")
def predict_des(snapshot, job: Job, placement: Mapping[str, str], shadow: Mapping[str, str], samples: int,
                rng: np.random.Generator, timing: TimingModel, prestage: frozenset[str] = frozenset()) -> np.ndarray:
    """``samples`` latencies (ms) from tiny SimPy runs of ``job`` on the snapshot."""
    from ..des.sampling import sample_latencies_des  # SimPy engine: imported on demand
    return np.asarray(sample_latencies_des(snapshot, job, dict(placement), dict(shadow), samples=samples,
                                           rng=rng, timing=timing, prestage=prestage), dtype=float)
