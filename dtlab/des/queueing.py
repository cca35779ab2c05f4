"""Queueing-theory reference for validating the engine: M/M/c on one node.

With processor sharing where a ``cpu: 1`` stage uses at most one core, the number of
jobs on a ``c``-core node follows the M/M/c birth–death process, so Erlang C gives the
mean sojourn time the engine must reproduce (tests/test_queueing.py,
benchmarks/bench_simulate.py).
"""
from __future__ import annotations

import math

from ..model import Cluster, Workload, cluster_from_dict, workload_from_dict


def erlang_c_sojourn_ms(c: int, rho: float, mean_service_ms: float) -> float:
    """M/M/c mean time in system: P(wait) / (c mu - lambda) + 1 / mu."""
    a = c * rho
    head = sum(a ** k / math.factorial(k) for k in range(c))
    tail = a ** c / math.factorial(c) / (1.0 - rho)
    p_wait = tail / (head + tail)
    return p_wait * mean_service_ms / (c * (1.0 - rho)) + mean_service_ms


def mmc_case(c: int, rho: float, count: int, mean_service_ms: float = 1000.0) -> tuple[Cluster, Workload]:
    """One ``c``-core node and the issue's Workload shape (Poisson, exponential durations) at load ``rho``."""
    cluster = cluster_from_dict({"nodes": [{"name": "node-0", "cores": c, "speed": 1.0, "arch": "amd64",
                                            "formats": ["native"]}]})
    workload = workload_from_dict({
        "apiVersion": "dtlab/v1",
        "kind": "Workload",
        "arrivals": {"process": "poisson", "rate_per_s": rho * c * 1000.0 / mean_service_ms},
        "jobs": {
            "count": count,
            "template": {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "mmc"},
                         "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": mean_service_ms}}]}},
            "duration_scale": {"dist": "exponential"},
        },
    })
    return cluster, workload
