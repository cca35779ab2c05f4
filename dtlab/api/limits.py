"""Limits of the DT service (no Flask import: `dtlab serve --help` and every CLI start read them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

# Microseconds of one core per sample x stage of a /plan, per predictor, under the costliest
# policy (cvar scores several candidates); measured with `python benchmarks/bench_plan_cost.py`
# on this 2-core host (fast 0.8-2.4, legacy 1.8, des 50). `des` replays the SimPy engine per sample.
PREDICTOR_COST = {"fast": 2.5, "legacy": 2.0, "des": 50.0}
STAGE_COST = 500.0  # microseconds per stage whatever the samples (policy search, tables), same benchmark


def plan_work(samples: int, stages: int, predictor: str) -> float:
    """About the CPU microseconds of one /plan: what ``ApiConfig.max_work`` caps."""
    return stages * (STAGE_COST + samples * PREDICTOR_COST[predictor])


def over_limit_error(max_body_bytes: int) -> tuple[str, str]:
    """(error, field) of a body over the limit: the one wording of every front's 413."""
    return f"request body over the limit of {max_body_bytes:,} bytes", "body"


@dataclass
class ApiConfig:
    """Limits of the service. ``max_work`` caps :func:`plan_work` of one /plan, about its
    microseconds of CPU (2 s with a token by default); callers without a valid token get
    ``max_work_anonymous``. At most ``max_inflight`` plans are admitted at once (more: 429); they
    compute one at a time on the planning thread (``dtlab.api.app.WorkGate``; ``dtlab serve`` runs a plan
    estimated at most ``dtlab.api.asgi.INLINE_WORK_US`` on its event loop instead); a plan answers 503
    ``request_timeout_s`` after its admission (its computation, bounded by the work cap, finishes in
    the background and holds its slot until then). The server's threads beyond ``max_inflight``
    keep /healthz, /metrics and /snapshot answering while plans saturate the slots."""
    token: str | None = field(default_factory=lambda: os.environ.get("DTLAB_API_TOKEN") or None)
    insecure_dev: bool = False
    # the extender's secret path prefix (see dtlab.extender): /extender/<secret>/filter
    extender_secret: str | None = field(default_factory=lambda: os.environ.get("DTLAB_EXTENDER_SECRET") or None)
    max_body_bytes: int = 1_000_000
    max_samples: int = 20_000
    max_events: int = 10_000
    max_work: float = 2_000_000          # ~2 s of one core
    max_work_anonymous: float = 300_000  # ~0.3 s
    max_inflight: int = 2
    request_timeout_s: float = 10.0
    # telemetry freshness budget (s) for /plan: a plan relying on older telemetry is refused (503,
    # the stale nodes named); None: off (set by `dtlab serve --prometheus URL --freshness-s S`)
    freshness_s: float | None = None
