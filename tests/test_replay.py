"""Placement replay invariants: no over-allocation, best-fit placements fit, same seed -> same output."""
import numpy as np
import pandas as pd
import pytest

from dtlab.errors import SpecError
from dtlab.replay import (COLUMNS, ClusterArrays, inflate, policy_names, replay_allocation, replay_timed,
                          write_allocation)
from dtlab.workload import readers



def small_cluster(rng, n=40):
    gpus = rng.choice([0, 1, 2, 4, 8], size=n)
    return pd.DataFrame({
        "name": [f"n{i}" for i in range(n)],
        "cpu_milli": rng.choice([16000, 32000, 96000], size=n),
        "memory_mib": rng.choice([65536, 262144], size=n),
        "gpu": gpus,
        "model": np.where(gpus > 0, rng.choice(["T4", "V100M16", "G2"], size=n), ""),
    })


def small_pods(rng, n=400):
    kind = rng.choice(["cpu", "share", "one", "multi"], size=n, p=[0.2, 0.4, 0.3, 0.1])
    num_gpu = np.select([kind == "cpu", kind == "multi"], [0, rng.choice([2, 4, 8], size=n)], 1)
    milli = np.select([kind == "cpu", kind == "share"], [0, rng.integers(50, 1000, size=n)], 1000)
    spec = rng.choice(["", "", "T4", "V100M16|G2"], size=n)
    return pd.DataFrame({
        "name": [f"p{i}" for i in range(n)],
        "cpu_milli": rng.integers(500, 24000, size=n), "memory_mib": rng.integers(256, 65536, size=n),
        "num_gpu": num_gpu, "gpu_milli": milli, "gpu_spec": np.where(num_gpu > 0, spec, ""),
        "creation_time": np.sort(rng.uniform(0, 1000, size=n)),
    }).assign(deletion_time=lambda d: d["creation_time"] + rng.exponential(100, size=n))


def fits_reference(nodes, used_cpu, used_mem, gpu_used, pod):
    """Per-node Python check, written independently of the vectorised one."""
    out = []
    for k, node in nodes.iterrows():
        ok = (node.cpu_milli - used_cpu[k] >= pod.cpu_milli and node.memory_mib - used_mem[k] >= pod.memory_mib)
        if pod.num_gpu > 0:
            allowed = [s for s in pod.gpu_spec.split("|") if s]
            free = [1000 - gpu_used[k][g] for g in range(node.gpu)]
            ok = ok and sum(f >= pod.gpu_milli for f in free) >= pod.num_gpu
            ok = ok and (not allowed or node.model in allowed)
        out.append(ok)
    return np.array(out)


def recompute_usage(nodes, pods, placements):
    """Usage per node and per GPU rebuilt from the placement records alone."""
    used_cpu = np.zeros(len(nodes), np.int64)
    used_mem = np.zeros(len(nodes), np.int64)
    gpu_used = np.zeros((len(nodes), 8), np.int64)
    for pod, node, gpus in zip(pods.itertuples(), placements["node"], placements["gpus"]):
        if node < 0:
            continue
        used_cpu[node] += pod.cpu_milli
        used_mem[node] += pod.memory_mib
        assert len(gpus) == pod.num_gpu and len(set(gpus)) == len(gpus)
        for g in gpus:
            assert g < nodes.gpu[node]
            gpu_used[node, g] += pod.gpu_milli
    return used_cpu, used_mem, gpu_used


@pytest.mark.parametrize("policy", policy_names())
def test_allocation_never_exceeds_capacity(policy):
    rng = np.random.default_rng(1)
    nodes, pods = small_cluster(rng), small_pods(rng)
    res = replay_allocation(nodes, pods, policy, seed=3, inflate_ratio=None)
    used_cpu, used_mem, gpu_used = recompute_usage(nodes, res.pods, res.placements)
    assert (used_cpu <= nodes.cpu_milli).all() and (used_mem <= nodes.memory_mib).all()
    assert (gpu_used <= 1000).all()
    assert (res.placements["node"] < 0).sum() == res.table["failed_pods"].iloc[-1]
    assert res.placements["node"].ge(0).sum() > 0


def test_best_fit_places_each_pod_on_a_node_it_fits_and_fails_only_when_nothing_fits():
    rng = np.random.default_rng(7)
    nodes, pods = small_cluster(rng, 25), small_pods(rng, 250)
    res = replay_allocation(nodes, pods, "best-fit", seed=0, inflate_ratio=None)
    used_cpu = np.zeros(len(nodes), np.int64)
    used_mem = np.zeros(len(nodes), np.int64)
    gpu_used = np.zeros((len(nodes), 8), np.int64)
    failures = 0
    for pod, node, gpus in zip(res.pods.itertuples(), res.placements["node"], res.placements["gpus"]):
        ok = fits_reference(nodes, used_cpu, used_mem, gpu_used, pod)
        if node < 0:
            assert not ok.any(), f"{pod.name} failed although it fits some node"
            failures += 1
            continue
        assert ok[node], f"{pod.name} placed on {nodes.name[node]} where it does not fit"
        used_cpu[node] += pod.cpu_milli
        used_mem[node] += pod.memory_mib
        for g in gpus:
            gpu_used[node, g] += pod.gpu_milli
    assert failures > 0  # the fixture is sized to overflow, so the failure branch is exercised


def test_vectorised_fit_matches_reference_on_random_states():
    rng = np.random.default_rng(11)
    nodes, pods = small_cluster(rng, 30), small_pods(rng, 120)
    c = ClusterArrays(nodes)
    used_cpu = np.zeros(len(nodes), np.int64)
    used_mem = np.zeros(len(nodes), np.int64)
    gpu_used = np.zeros((len(nodes), 8), np.int64)
    for pod in pods.itertuples():
        mask = c.fits(pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.gpu_spec)
        np.testing.assert_array_equal(mask, fits_reference(nodes, used_cpu, used_mem, gpu_used, pod))
        idx = np.flatnonzero(mask)
        if len(idx):
            node = int(rng.choice(idx))
            slots = c.place(node, pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli)
            used_cpu[node] += pod.cpu_milli
            used_mem[node] += pod.memory_mib
            gpu_used[node, slots] += pod.gpu_milli


def test_gpu_share_takes_the_tightest_gpu():
    nodes = pd.DataFrame({"name": ["a"], "cpu_milli": [64000], "memory_mib": [1 << 20], "gpu": [2], "model": ["T4"]})
    c = ClusterArrays(nodes)
    assert c.place(0, 1, 1, 1, 600).tolist() == [0]
    assert c.place(0, 1, 1, 1, 300).tolist() == [0]       # 400 left on GPU 0: tighter than GPU 1
    assert not c.fits(1, 1, 2, 1000)[0]                   # only one whole GPU left
    assert c.fits(1, 1, 1, 1000)[0]


def test_same_seed_same_output_and_seed_matters(tmp_path):
    rng = np.random.default_rng(5)
    nodes, pods = small_cluster(rng), small_pods(rng)
    a = replay_allocation(nodes, pods, "random", seed=4)
    b = replay_allocation(nodes, pods, "random", seed=4)
    c = replay_allocation(nodes, pods, "random", seed=5)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.placements, b.placements)
    assert not a.placements["name"].equals(c.placements["name"])
    paths = write_allocation([a, c], tmp_path)
    table = pd.read_csv(paths["csv"])
    assert list(table.columns) == COLUMNS and set(table["seed"]) == {4, 5}
    assert paths["png"].stat().st_size > 0 and paths["pdf"].exists()


def test_inflate_reaches_target_with_the_last_pod():
    rng = np.random.default_rng(0)
    pods = small_pods(rng, 50)
    out = inflate(pods, gpu_capacity_milli=40_000, ratio=1.3, rng=np.random.default_rng(2))
    demand = (out["num_gpu"] * out["gpu_milli"]).to_numpy()
    assert demand.sum() >= 52_000 > demand[:-1].sum()
    assert out["name"].is_unique
    with pytest.raises(SpecError, match="inflate"):
        inflate(pods, 40_000, 0.0, np.random.default_rng(2))


def test_unknown_policy_is_a_spec_error():
    rng = np.random.default_rng(0)
    with pytest.raises(SpecError, match="policy"):
        replay_allocation(small_cluster(rng), small_pods(rng), "worst-fit")


def test_timed_replay_frees_resources_at_deletion():
    nodes = pd.DataFrame({"name": ["a"], "cpu_milli": [4000], "memory_mib": [4096], "gpu": [1], "model": ["T4"]})
    pods = pd.DataFrame({"name": ["p0", "p1", "p2"], "cpu_milli": [3000, 3000, 3000],
                         "memory_mib": [1, 1, 1], "num_gpu": [1, 1, 1], "gpu_milli": [1000, 1000, 1000],
                         "gpu_spec": ["", "", ""], "creation_time": [0.0, 5.0, 10.0],
                         "deletion_time": [10.0, 12.0, 20.0]})
    res = replay_timed(nodes, pods, "first-fit")
    # p1 arrives while p0 holds the GPU: fails; p2 arrives when p0 leaves (deletions first): placed
    assert res.pods["node"].tolist() == [0, -1, 0]
    assert res.usage["gpu_alloc_pct"].max() == 100.0 and res.usage["gpu_alloc_pct"].iloc[-1] == 0.0
    assert res.usage["failed"].iloc[-1] == 1


def test_openb_default_replay_full_scale_is_consistent():
    nodes, pods = readers.read_openb_nodes(), readers.read_openb_pods()
    res = replay_allocation(nodes, pods, "best-fit", seed=0)
    t = res.table
    assert t["arrived_pct"].tolist() == list(np.arange(1.0, 131.0))
    # nothing fails early, the cluster never reports more than capacity, failures only grow
    assert t.loc[t["arrived_pct"] <= 50, "failed_pods"].eq(0).all()
    assert (t["gpu_alloc_pct"] <= 100).all() and t["failed_pods"].is_monotonic_increasing
    assert t["gpu_alloc_pct"].iloc[-1] < t["arrived_pct"].iloc[-1]
    used_cpu, used_mem, gpu_used = recompute_usage(nodes, res.pods, res.placements)
    assert (used_cpu <= nodes.cpu_milli).all() and (used_mem <= nodes.memory_mib).all()
    assert (gpu_used <= 1000).all()
    assert gpu_used.sum() / 1000 / nodes.gpu.sum() * 100 == pytest.approx(t["gpu_alloc_pct"].iloc[-1])


def test_replay_cli_writes_allocation_csv_and_figure(tmp_path, capsys):
    from dtlab.cli import main
    rng = np.random.default_rng(2)
    small_cluster(rng).rename(columns={"name": "sn"}).to_csv(tmp_path / "nodes.csv", index=False)  # openb header
    small_pods(rng).to_csv(tmp_path / "pods.csv", index=False)
    code = main(["replay", "--nodes", str(tmp_path / "nodes.csv"), "--pods", str(tmp_path / "pods.csv"),
                 "--policy", "best-fit,random", "--seed", "1", "--inflate", "1.3", "--out", str(tmp_path / "out")])
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "allocation.csv")
    assert list(table.columns) == COLUMNS and set(table["policy"]) == {"best-fit", "random"}
    assert table["arrived_pct"].max() == 130
    assert (tmp_path / "out" / "allocation.png").exists()
    assert not (tmp_path / "out" / "published_deviation.csv").exists()   # a user's trace: not the study's setting
    assert main(["replay", "--nodes", str(tmp_path / "nodes.csv"), "--pods", str(tmp_path / "pods.csv"),
                 "--policy", "worst-fit", "--out", str(tmp_path / "out")]) == 2
    assert "policy" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["random", "least-allocated"])
def test_timed_replay_never_exceeds_capacity_at_any_time_and_is_seeded(policy):
    rng = np.random.default_rng(8)
    nodes, pods = small_cluster(rng, 12), small_pods(rng, 300)
    a = replay_timed(nodes, pods, policy, seed=6)
    pd.testing.assert_frame_equal(a.pods, replay_timed(nodes, pods, policy, seed=6).pods)
    placed = a.pods[a.pods["node"] >= 0].merge(pods, on="name")
    assert 0 < len(placed) < len(pods)            # some placed, some failed: both paths exercised
    for t in placed["start_s"]:                  # usage just after each placement, from the records alone
        live = placed[(placed["start_s"] <= t) & (placed["end_s"] > t)]
        use = live.groupby("node")[["cpu_milli", "memory_mib"]].sum()
        cap = nodes.loc[use.index]
        assert (use["cpu_milli"].to_numpy() <= cap["cpu_milli"].to_numpy()).all()
        assert (use["memory_mib"].to_numpy() <= cap["memory_mib"].to_numpy()).all()
        gpu = (live["num_gpu"] * live["gpu_milli"]).groupby(live["node"]).sum()
        assert (gpu.to_numpy() <= 1000 * nodes.loc[gpu.index, "gpu"].to_numpy()).all()


# ----------------------------------------------------------------------------- FGD (ATC'23)
def _frag_reference(typ, cpu_left, free, model):
    """F_n written from the paper's definition, per node, in plain Python."""
    total = max(sum(x for x in free if x > 0), 0)
    out = 0.0
    for cpu, milli, count, spec, p in zip(typ.cpu, typ.milli, typ.count, typ.spec, typ.p):
        if count == 0:
            f = total                                     # a CPU-only shape uses no GPU: all idle GPU is stranded
        else:
            allowed = [s for s in spec.split("|") if s]
            access = len(free) > 0 and (not allowed or model in allowed)
            usable = sum(1 for x in free if x >= milli)
            if access and usable >= count and cpu_left >= cpu:
                f = sum(x for x in free if x < milli)     # only the GPUs too small for the shape
            else:
                f = total
        out += p * f
    return out


def _random_state(c, rng):
    for n in range(len(c)):
        g = c.gpu_count[n]
        c.gpu_free[n, :g] = rng.choice([0, 150, 400, 700, 1000], size=g)
        c.cpu_free[n] = rng.integers(0, c.cpu_cap[n] + 1)
    c.gpu_free_total = np.maximum(c.gpu_free, 0).sum(axis=1)


def test_fgd_fragmentation_and_choice_follow_the_definition():
    from dtlab.replay.fgd import FGD, typical_pods
    rng = np.random.default_rng(3)
    nodes, pods = small_cluster(rng), small_pods(rng)
    c = ClusterArrays(nodes)
    typ = typical_pods(pods)
    assert typ.p.sum() == pytest.approx(1.0) and (np.diff(typ.p) <= 1e-12).all()   # most popular first
    fgd = FGD(c, typ)
    _random_state(c, rng)
    free = [c.gpu_free[n, :c.gpu_count[n]].tolist() for n in range(len(c))]
    ref = np.array([_frag_reference(typ, c.cpu_free[n], free[n], c.models[n]) for n in range(len(c))])
    assert np.allclose(fgd.fragmentation(c), ref)
    for pod in [(3000, 0, 1, 300), (2000, 0, 1, 1000), (1000, 0, 2, 1000), (4000, 0, 0, 0), (500, 0, 1, 150)]:
        idx = np.flatnonzero(c.fits(*pod))
        node, slots = fgd.choose(c, idx, pod, rng)
        best = np.inf
        for n in idx:                                     # every feasible node and GPU choice
            if pod[2] == 1 and pod[3] < 1000:
                options = [[g] for g in range(c.gpu_count[n]) if free[n][g] >= pod[3]]
            else:
                options = [list(np.flatnonzero(np.array(free[n]) >= 1000)[:pod[2]])]
            for s in options:
                after = list(free[n])
                for g in s:
                    after[g] -= pod[3]
                best = min(best, _frag_reference(typ, c.cpu_free[n] - pod[0], after, c.models[n]) - ref[n])
        after = list(free[node])
        for g in slots:
            after[g] -= pod[3]
        got = _frag_reference(typ, c.cpu_free[node] - pod[0], after, c.models[node]) - ref[node]
        assert got == pytest.approx(best, abs=1e-6), pod
        assert len(slots) == pod[2]


def test_random_policy_draws_a_sharing_pods_gpu_at_random():
    nodes = pd.DataFrame({"name": ["a"], "cpu_milli": [64000], "memory_mib": [1 << 20], "gpu": [4], "model": ["T4"]})
    from dtlab.replay.policies import make_chooser
    seen = set()
    for seed in range(30):
        c = ClusterArrays(nodes)
        c.place(0, 1, 1, 1, 600, slots=[2])                # GPU 2 is the tightest fit for 300 milli
        node, slots = make_chooser("random", c)(c, np.array([0]), (1, 1, 1, 300), np.random.default_rng(seed))
        seen.add(int(slots[0]))
    assert seen == {0, 1, 2, 3}                           # best-fit would always take GPU 2
    c = ClusterArrays(nodes)
    c.place(0, 1, 1, 1, 600, slots=[2])
    assert make_chooser("best-fit", c)(c, np.array([0]), (1, 1, 1, 300), None)[1] is None  # -> tightest (2)
    with pytest.raises(SpecError, match="do not fit"):
        c.place(0, 1, 1, 1, 500, slots=[2])


@pytest.fixture(scope="module")
def openb_seed0():
    """The study's setting at full size (~15 s): `dtlab replay --policy P --inflate 1.3 --seed 0` per policy."""
    nodes, pods = readers.read_openb_nodes(), readers.read_openb_pods()
    return {p: replay_allocation(nodes, pods, p, seed=0, inflate_ratio=1.3).table
            for p in ("fgd", "best-fit", "dot-product", "random")}


def test_fgd_beats_best_fit_on_openb_and_keeps_the_published_order(openb_seed0):
    from dtlab.replay import published_final
    published = published_final()
    tables = {p: openb_seed0[p].set_index("arrived_pct") for p in ("fgd", "best-fit", "random")}
    curves = {p: t["gpu_alloc_pct"] for p, t in tables.items()}
    fgd, bf = curves["fgd"], curves["best-fit"]
    above = fgd.index > 90
    # above 90 % arrived FGD allocates strictly more than best-fit wherever best-fit has failed a pod; where
    # it does not, both placed every arrived pod and so allocate the same (no policy can allocate more than arrived)
    bf_failed = tables["best-fit"]["failed_pods"] > 0
    assert (fgd[above & bf_failed] > bf[above & bf_failed] + 0.5).all()
    same = above & ~bf_failed
    assert (tables["fgd"].loc[same, "failed_pods"] == 0).all() and np.allclose(fgd[same], bf[same])
    assert bf_failed[fgd.index >= 94].all()              # measured: best-fit fails its first pods at 94 %
    final = {p: c.iloc[-1] for p, c in curves.items()}
    assert final["fgd"] > final["best-fit"] > final["random"]                  # the study's order
    for p, value in final.items():                                           # and near its numbers
        assert abs(value - published[p]) < 1.5, (p, value, published[p])


def test_slo_columns_come_from_the_twin_and_count_unplaced_pods_as_misses():
    from dtlab.replay.slo import GPU_SPEED, JOB_CLASSES, job_class
    rng = np.random.default_rng(5)
    nodes, pods = small_cluster(rng, n=12), small_pods(rng, n=300)
    res = replay_allocation(nodes, pods, "best-fit", seed=0, inflate_ratio=1.3)
    t, pl = res.table, res.placements
    assert list(t.columns) == COLUMNS
    placed = pl["node"] >= 0
    assert pl.loc[~placed, "miss_prob"].eq(1.0).all() and pl.loc[~placed, "pred_p95_ms"].isna().all()
    assert pl.loc[placed, "pred_p95_ms"].gt(0).all() and pl["miss_prob"].between(0, 1).all()
    # unplaced pods are misses, so the miss share is at least the unplaced share
    assert (t["slo_miss_pct"] >= 100 - t["placed_pct"] - 1e-9).all()
    last = t.iloc[-1]
    assert last.placed_pct == pytest.approx(100 * placed.mean())
    assert last.slo_miss_pct == pytest.approx(100 * pl["miss_prob"].mean())
    # a slower GPU model -> a longer predicted p95 for the same class (the twin's speed scaling)
    cls = pd.Series(job_class(res.pods["num_gpu"], res.pods["gpu_milli"]))
    model = pd.Series(np.where(placed, nodes["model"].to_numpy()[np.maximum(pl["node"], 0)], ""))
    one = placed & (cls == "gpu-1")
    by_model = pl.loc[one, "pred_p95_ms"].groupby(model[one]).mean()
    assert {"T4", "G2"} <= set(by_model.index)          # G2: no datasheet speed -> 1.0
    assert by_model["T4"] > by_model["G2"]
    assert by_model["T4"] / by_model["G2"] == pytest.approx(1 / GPU_SPEED["T4"], rel=0.1)
    assert by_model.min() > JOB_CLASSES["gpu-1"][0] * 0.9


# --- the study's published curves (dtlab/replay/published.py, data/traces/alibaba-openb/published_alloc_curves.csv)

def test_published_curves_table_is_whole_and_agrees_with_the_published_final_points():
    from dtlab.replay import published_curves, published_final
    t = published_curves()
    assert sorted(t["policy"].unique()) == ["best-fit", "dot-product", "fgd", "random"]
    for _, g in t.groupby("policy"):
        assert g["arrived_pct"].tolist() == list(range(131)) and (g["seeds"] == 10).all()
        assert (g["min"] <= g["mean"] + 1e-9).all() and (g["mean"] <= g["max"] + 1e-9).all()
        assert (g["mean"].diff().dropna() >= 0).all()          # no deletions: allocation never falls
    # read independently from the artefact's rows at 130 % (seeds 42-51); dot-product over all ten
    # seeds is 90.85 (90.86 was the mean of seeds 42-50)
    assert published_final() == {"random": 87.47, "dot-product": 90.85, "best-fit": 93.08, "fgd": 95.39}


def test_curve_deviation_measures_distance_and_band_membership():
    from dtlab.replay import compare_curves, curve_deviation, published_curves
    pub = published_curves()
    fgd = pub[pub["policy"] == "fgd"]
    ours = pd.DataFrame({"policy": "fgd", "seed": 0, "arrived_pct": fgd["arrived_pct"].astype(float),
                         "gpu_alloc_pct": fgd["mean"]})
    shifted = ours.assign(gpu_alloc_pct=ours["gpu_alloc_pct"] + 5.0, policy="best-fit")   # best-fit = fgd + 5
    first_fit = ours.assign(policy="first-fit")                                            # no published curve
    d = curve_deviation(pd.concat([ours, shifted, first_fit])).set_index("policy")
    assert list(d.index) == ["best-fit", "fgd"]
    assert d.loc["fgd", "max_abs_diff"] == pytest.approx(0) and d.loc["fgd", "inside_band_pct"] == 100
    bf = pub[pub["policy"] == "best-fit"].set_index("arrived_pct")["mean"]
    expect = (fgd.set_index("arrived_pct")["mean"] + 5 - bf).abs()
    assert d.loc["best-fit", "max_abs_diff"] == pytest.approx(expect.max())
    assert d.loc["best-fit", "mean_abs_diff"] == pytest.approx(expect.mean())
    assert d.loc["best-fit", "points"] == 131 and d.loc["best-fit", "inside_band_pct"] < 5
    # two seeds: compared through their mean
    two = pd.concat([ours.assign(gpu_alloc_pct=ours["gpu_alloc_pct"] - 1), ours.assign(seed=1, gpu_alloc_pct=ours["gpu_alloc_pct"] + 1)])
    assert compare_curves(two)["diff"].abs().max() == pytest.approx(0)


# Tolerances for dtlab's curve vs the study's mean curve, chosen from the full runs (seed 0, measured
# 2026-12-04: max |diff| random 1.33, dot-product 1.05, fgd 0.63, best-fit 0.58 allocation points; mean |diff|
# 0.35 / 0.31 / 0.16 / 0.16; before fragmentation, below 90 % arrived, at most 0.47 points off the band).
CURVE_MAX_ABS_DIFF = 1.5
CURVE_MEAN_ABS_DIFF = 0.5
CURVE_BELOW_90_OFF_BAND = 0.5


def test_replay_curves_stay_near_the_published_curves(openb_seed0):
    from dtlab.replay import compare_curves, curve_deviation
    table = pd.concat(openb_seed0.values(), ignore_index=True)
    dev = curve_deviation(table).set_index("policy")
    assert sorted(dev.index) == ["best-fit", "dot-product", "fgd", "random"]
    assert (dev["points"] == 130).all()                          # arrived 1..130 % (dtlab records from 1 %)
    assert (dev["max_abs_diff"] <= CURVE_MAX_ABS_DIFF).all(), dev
    assert (dev["mean_abs_diff"] <= CURVE_MEAN_ABS_DIFF).all(), dev
    assert (dev["inside_band_pct"] >= 50).all(), dev             # measured 64-69 %: in the band until ~90 %
    cmp = compare_curves(table)
    low = cmp[cmp["arrived_pct"] < 90]
    off = np.maximum(low["min"] - low["gpu_alloc_pct"], low["gpu_alloc_pct"] - low["max"]).clip(lower=0)
    assert off.max() <= CURVE_BELOW_90_OFF_BAND, low[off > CURVE_BELOW_90_OFF_BAND]


def test_replay_cli_reports_the_deviation_from_the_published_curve(tmp_path, capsys):
    """The study's setting (default openb trace, inflate 1.3): the CLI writes and prints the comparison."""
    from dtlab.cli import main
    from dtlab.replay import curve_deviation
    assert main(["replay", "--policy", "best-fit", "--seed", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    dev = pd.read_csv(tmp_path / "published_deviation.csv")
    assert list(dev["policy"]) == ["best-fit"]
    again = curve_deviation(pd.read_csv(tmp_path / "allocation.csv")).set_index("policy").loc["best-fit"]
    assert dev.loc[0, "max_abs_diff"] == pytest.approx(again["max_abs_diff"], abs=1e-4)
    assert f"max |diff| {again['max_abs_diff']:.2f} pts" in out
    cmp = pd.read_csv(tmp_path / "published_comparison.csv")
    assert len(cmp) == 130 and cmp["inside_band"].dtype == bool
    assert main(["replay", "--policy", "best-fit", "--inflate", "1.2", "--out", str(tmp_path / "other")]) == 0
    assert not (tmp_path / "other" / "published_deviation.csv").exists()   # another inflation: nothing to compare
