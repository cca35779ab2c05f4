"""Plan: what the twin decided for one job, and what it predicted would happen."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

PREDICTION_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "cvar95_ms", "deadline_miss_prob")


@dataclass
class Plan:
    job: str
    policy: str
    placement: dict[str, str]                 # stage id -> node name
    shadow: dict[str, str] = field(default_factory=dict)   # stage id -> backup node (other zone)
    formats: dict[str, str | None] = field(default_factory=dict)  # stage id -> execution format key
    prediction: dict[str, float] = field(default_factory=dict)
    predictor: str = "fast"
    samples: int = 0
    elapsed_ms: float = 0.0
    state_version: int = 0
    # stage ids whose inputs are copied to their shadow while the primary runs (dtlab.policies.failover)
    prestage: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Same as ``dataclasses.asdict`` (nested dicts copied), without its generic deepcopy: every
        /plan answer goes through here (bench_api: asdict was ~8% of the server's time per plan)."""
        return {f.name: _plain_copy(getattr(self, f.name)) for f in fields(self)}


def _plain_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_copy(v) for v in value)
    return copy.deepcopy(value) if not isinstance(value, (str, int, float, bool, type(None))) else value


def summarize(latencies_ms, deadline_ms: float | None = None) -> dict[str, float]:
    """Prediction dict of a latency sample: mean, percentiles, CVaR95 (mean of the worst 5%), miss probability."""
    import numpy as np

    x = np.sort(np.asarray(latencies_ms, dtype=float))
    if x.size == 0:
        raise ValueError("no samples")
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    tail = x[int(np.floor(0.95 * x.size)):]
    return {
        "mean_ms": float(x.mean()),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "cvar95_ms": float(tail.mean()),
        "deadline_miss_prob": float((x > deadline_ms).mean()) if deadline_ms else 0.0,
    }
