"""Queueing-theory validation of the engine through ``simulate``: M/M/c mean sojourn time.

One node with c cores, Poisson arrivals of single-stage ``cpu: 1`` jobs whose durations are
Exp(mean 1 s) (``duration_scale: exponential``, ``service_sigma: 0``). Under processor sharing
with a one-core cap per job the number in system is the M/M/c birth-death process, so the mean
sojourn time is the Erlang C waiting time plus the mean service time. Tolerance 5%, fixed.

Job counts come from the variance of a simulated mean: for these queues the relative variance
of the mean sojourn over n jobs is about K/n with K ~ 410-650 (c=1, rho=0.9), ~310 (c=4, rho=0.9),
~70 (c=1, rho=0.8) (measured: 10 replications of 100k jobs each), far less at rho=0.5. The
counts below keep the standard error near 2% (5% is about 2.5 standard errors), and
the test checks that standard error itself (from independent replications), so an under-powered
run fails instead of passing by luck. Each replication drops a warm-up from its empty start.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from dtlab.des.simulate import simulate
from dtlab.des.queueing import erlang_c_sojourn_ms, mmc_case
from dtlab.timing import TimingModel

MEAN_SERVICE_MS = 1000.0
TOLERANCE = 0.05
MAX_REL_SE = 0.025   # the estimate must be precise enough that a 5% error would show (>= 2 SE)

# (cores, utilisation, replications, jobs per replication)
CASES = [
    (1, 0.5, 6, 20_000),
    (4, 0.5, 6, 20_000),
    (1, 0.8, 6, 40_000),
    (4, 0.8, 6, 30_000),
    (1, 0.9, 10, 150_000),
    (4, 0.9, 8, 110_000),
]


def test_erlang_c_reference_values():
    # textbook values: M/M/1 sojourn 1/(mu - lambda); M/M/2 at rho 0.5 has P(wait) = 1/3
    assert erlang_c_sojourn_ms(1, 0.9, 1.0) == pytest.approx(10.0)
    assert erlang_c_sojourn_ms(2, 0.5, 1.0) == pytest.approx(1 + (1 / 3) / (2 * 0.5))


@pytest.mark.parametrize("cores,rho,reps,jobs", CASES, ids=[f"c{c}-rho{r}" for c, r, _, _ in CASES])
def test_mmc_mean_sojourn_matches_erlang_c(cores, rho, reps, jobs):
    timing = TimingModel(service_sigma=0.0)
    warmup = max(2_000, jobs // 50)
    means = []
    for seed in range(reps):
        df = simulate(*mmc_case(cores, rho, jobs, MEAN_SERVICE_MS), None, seed, timing)
        assert len(df) == jobs and not df["lost"].any()
        assert (df["nodes"] == "node-0").all()
        means.append(df["latency_ms"].iloc[warmup:].mean())
    expected = erlang_c_sojourn_ms(cores, rho, MEAN_SERVICE_MS)
    mean = float(np.mean(means))
    rel_se = float(np.std(means, ddof=1) / math.sqrt(reps)) / expected
    rel_err = mean / expected - 1.0
    print(f"M/M/{cores} rho={rho}: simulated {mean:.1f} ms, Erlang C {expected:.1f} ms, "
          f"error {rel_err:+.2%}, standard error {rel_se:.2%} ({reps} x {jobs} jobs)")
    assert rel_se < MAX_REL_SE, f"under-powered: standard error {rel_se:.2%}"
    assert abs(rel_err) < TOLERANCE, f"mean sojourn {mean:.1f} ms vs Erlang C {expected:.1f} ms ({rel_err:+.2%})"
