"""The twin's model of per-stage CFS quotas (dtlab.timing.CpuQuota): the period rule the fabric sets,
the expected half-period a fresh cgroup's hand-out saves over the fluid model, and both predictors."""
from __future__ import annotations

import numpy as np
import pytest

from dtlab.energy import stage_energy_matrix
from dtlab.fabric import cgroups
from dtlab.predict import node_table, sample_latencies, stage_table
from dtlab.timing import CpuQuota, TimingModel, quota_period_us
from tests.test_predict import assert_fast_matches_des, scenarios, single_job, snapshot_of, two_zone


def test_one_period_rule_for_the_fabric_and_the_twin():
    for cores in (0.005, 0.0233, 0.05, 0.25, 2.0):
        assert cgroups.cores_to_quota(cores) == quota_period_us(cores, cgroups.PERIOD_US, cgroups.MIN_QUOTA_US,
                                                                 cgroups.MAX_PERIOD_US)
    assert quota_period_us(0.0233, 10_000, 1_000, 1_000_000) == (1_000, 42_918)   # quota 1 ms, period ~43 ms
    assert quota_period_us(0.0001, 10_000, 1_000, 1_000_000)[1] == 1_000_000       # capped at 1 s


def test_saving_is_half_a_period_for_long_stages_and_the_burst_for_short_ones():
    q = CpuQuota({"n": 0.0233}, time_scale=1.0)
    period, share = q.period_ms("n", 1.0)
    assert period == pytest.approx(42.918) and share == pytest.approx(1_000 / 42_918)
    assert float(q.saving_ms("n", 1.0, 400.0)) == pytest.approx(0.5 * period * (1 - share))
    # shorter than half a period: the whole stage runs in its first quota (fluid x share)
    assert float(q.saving_ms("n", 1.0, 10.0)) == pytest.approx(10.0 * (1 - share))
    # a 2-cpu stage has twice the quota per period: a shorter period (the 1 ms minimum binds less)
    assert q.period_ms("n", 2.0)[0] == pytest.approx(21.459, abs=1e-3)
    # time stretched by T: periods are wall time, so T x shorter in reference ms
    assert CpuQuota({"n": 0.0233}, time_scale=9.0).period_ms("n", 1.0)[0] == pytest.approx(period / 9)
    # a node the quota does not know, or a share of a whole core and more: nothing saved
    assert float(q.saving_ms("other", 1.0, 400.0)) == 0.0
    assert float(CpuQuota({"n": 1.0}).saving_ms("n", 1.0, 400.0)) == 0.0


def test_mean_service_and_stage_table_take_the_saving_energy_keeps_the_cpu_time():
    c = two_zone()
    snap = snapshot_of(c)
    j = single_job(cpu=1)
    node = c.node("cloud-0")
    plain = TimingModel()
    quota = plain.with_cpu_quota(CpuQuota({n.name: 0.02 * n.speed for n in c.nodes}))
    fluid = plain.mean_service_ms(j.stages[0], node, 1.0)
    saving = float(quota.cpu_quota.saving_ms("cloud-0", 1.0, fluid))
    assert saving > 1.0
    assert quota.mean_service_ms(j.stages[0], node, 1.0) == pytest.approx(fluid - saving)
    nt = node_table(snap)
    st0, st1 = stage_table(snap, j, plain), stage_table(snap, j, quota)
    k = nt.index["cloud-0"]
    assert st1.base_svc[0, k] == pytest.approx(fluid - saving) and st0.base_svc[0, k] == pytest.approx(fluid)
    assert np.array_equal(st1.cpu_svc, st0.cpu_svc)          # CPU work is the same: energy does not move
    assert np.array_equal(stage_energy_matrix(nt, st1), stage_energy_matrix(nt, st0))


@pytest.mark.parametrize("predictor", ["fast", "des"])
def test_both_predictors_take_the_saving_off_each_stage(predictor):
    pytest.importorskip("simpy")
    c = two_zone()
    snap = snapshot_of(c)
    j = single_job(cpu=1)
    plain = TimingModel(service_sigma=0.0)
    quota = plain.with_cpu_quota(CpuQuota({n.name: 0.02 * n.speed for n in c.nodes}))
    a = sample_latencies(snap, j, {"s": "cloud-0"}, predictor=predictor, samples=64,
                         rng=np.random.default_rng(1), timing=plain)
    b = sample_latencies(snap, j, {"s": "cloud-0"}, predictor=predictor, samples=64,
                         rng=np.random.default_rng(1), timing=quota)
    fluid = plain.mean_service_ms(j.stages[0], c.node("cloud-0"), 1.0)
    assert np.mean(a) - np.mean(b) == pytest.approx(float(quota.cpu_quota.saving_ms("cloud-0", 1.0, fluid)), rel=0.02)


@pytest.mark.parametrize("name,snap,j,placement,shadow", scenarios(), ids=[s[0] for s in scenarios()])
def test_fast_agrees_with_des_under_quotas(name, snap, j, placement, shadow):
    t = TimingModel().with_cpu_quota(CpuQuota({n.name: 0.02 * n.speed for n in snap.cluster.nodes}))
    assert_fast_matches_des(name, snap, j, placement, shadow, timing=t)
