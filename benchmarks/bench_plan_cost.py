"""Cost of one /plan per sample x stage, per predictor and policy: the basis of the API work budget.

``dtlab.api.app.PREDICTOR_COST`` (microseconds per sample x stage under the costliest policy)
turns samples x stages into about the CPU microseconds of a plan, so ``ApiConfig.max_work`` is a
bound on time (plus STAGE_COST per stage, the sample-independent policy work: see the 16-sample
rows). This prints the measured microseconds per sample·stage next to the constant, and
the seconds a plan at exactly the default caps takes (target: about 2 s with a token, 0.3 s without).
Usage: python benchmarks/bench_plan_cost.py
"""
from __future__ import annotations

import time

from dtlab.api.app import PREDICTOR_COST, STAGE_COST, ApiConfig
from dtlab.model import job_from_dict, load_cluster
from dtlab.twin import Twin


def chain(n: int):
    return job_from_dict({"metadata": {"name": f"chain{n}"}, "spec": {"stages": [
        {"id": f"s{i}", "compute": {"duration_ms": 100}, "after": [f"s{i - 1}"] if i else []} for i in range(n)]}})


def per_unit_us(twin: Twin, predictor: str, policy: str, stages: int, samples: int) -> float:
    job = chain(stages)
    twin.plan(job, policy=policy, samples=min(samples, 16), predictor=predictor)  # warm-up
    t = time.perf_counter()
    twin.plan(job, policy=policy, samples=samples, predictor=predictor)
    return (time.perf_counter() - t) / (stages * samples) * 1e6


def main() -> None:
    twin = Twin(load_cluster("examples/cluster-hetero.yaml"))
    sizes = {"fast": (30, 2000), "legacy": (30, 2000), "des": (10, 100)}
    for policy in ("greedy", "cvar"):
        us = per_unit_us(twin, "fast", policy, 300, 16) * 16
        print(f"{policy:<7} fast    300 stages x    16 samples: {us:8.1f} us per stage (STAGE_COST {STAGE_COST:g})")
        for predictor, (stages, samples) in sizes.items():
            us = per_unit_us(twin, predictor, policy, stages, samples)
            print(f"{policy:<7} {predictor:<7} {stages:>3} stages x {samples:>5} samples: {us:8.2f} us per "
                  f"sample-stage (PREDICTOR_COST {PREDICTOR_COST[predictor]:g})")
    cfg = ApiConfig()
    for label, cap in (("token", cfg.max_work), ("no token", cfg.max_work_anonymous)):
        for predictor in ("fast", "des"):
            stages = 10
            samples = int((cap / stages - STAGE_COST) / PREDICTOR_COST[predictor])
            t = time.perf_counter()
            twin.plan(chain(stages), policy="cvar", samples=samples, predictor=predictor)
            print(f"at the {label} cap ({cap:,.0f}): cvar {predictor} {stages} stages x {samples} samples: "
                  f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
