"""simulate() on an M/M/c workload vs the same queue hand-written in raw SimPy.

Prints both throughputs (simulated jobs per CPU second of this process: the host is
shared, and CPU time is what the model costs; runs interleaved, best of N), their ratio
(target >= 0.5: the twin's modelling richness may cost at most 2x) and, as a sanity
check, both mean sojourn times next to the Erlang C value.

    .venv/bin/python benchmarks/bench_simulate.py [--jobs 50000] [--cores 4] [--rho 0.8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import simpy

from dtlab.des.simulate import simulate
from dtlab.des.queueing import erlang_c_sojourn_ms, mmc_case
from dtlab.timing import TimingModel

MEAN_SERVICE_MS = 1000.0


def raw_simpy(c: int, rho: float, jobs: int, seed: int) -> tuple[float, float]:
    """M/M/c FCFS the way one writes it in plain SimPy: a source process and a Resource."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(MEAN_SERVICE_MS / (c * rho), jobs)
    services = rng.exponential(MEAN_SERVICE_MS, jobs)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    sojourn = np.empty(jobs)

    def customer(i):
        arrived = env.now
        with servers.request() as req:
            yield req
            yield env.timeout(services[i])
        sojourn[i] = env.now - arrived

    def source():
        for i in range(jobs):
            yield env.timeout(gaps[i])
            env.process(customer(i))

    env.process(source())
    t0 = time.process_time()
    env.run()
    elapsed = time.process_time() - t0
    return elapsed, float(sojourn[jobs // 10:].mean())


def dtlab_simulate(c: int, rho: float, jobs: int, seed: int) -> tuple[float, float]:
    cluster, workload = mmc_case(c, rho, jobs, MEAN_SERVICE_MS)
    t0 = time.process_time()
    df = simulate(cluster, workload, None, seed, TimingModel(service_sigma=0.0))
    elapsed = time.process_time() - t0
    assert len(df) == jobs and not df["lost"].any()
    return elapsed, float(df["latency_ms"].iloc[jobs // 10:].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--cores", type=int, default=4)
    ap.add_argument("--rho", type=float, default=0.8)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs each (noise from other load)")
    args = ap.parse_args()
    raw, ours = [], []
    for seed in range(args.repeat):   # interleaved, so a load change on the shared host hits both
        raw.append(raw_simpy(args.cores, args.rho, args.jobs, seed))
        ours.append(dtlab_simulate(args.cores, args.rho, args.jobs, seed))
    raw_rate = args.jobs / min(t for t, _ in raw)
    our_rate = args.jobs / min(t for t, _ in ours)
    print(f"M/M/{args.cores} rho={args.rho} jobs={args.jobs} (best of {args.repeat})")
    print(f"erlang_c_sojourn_ms      {erlang_c_sojourn_ms(args.cores, args.rho, MEAN_SERVICE_MS):10.1f}")
    print(f"raw_simpy_sojourn_ms     {np.mean([m for _, m in raw]):10.1f}")
    print(f"dtlab_simulate_sojourn_ms {np.mean([m for _, m in ours]):9.1f}")
    print(f"raw_simpy_jobs_per_s     {raw_rate:10.0f}")
    print(f"dtlab_simulate_jobs_per_s {our_rate:9.0f}")
    print(f"ratio (target >= 0.5)    {our_rate / raw_rate:10.2f}")


if __name__ == "__main__":
    main()
