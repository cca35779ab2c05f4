"""dtlab.plots: one style, stable names/colours, figures drawn from saved CSVs, deterministic files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dtlab import plots, results
from dtlab.errors import DtlabError


def _tables_v1(rng):
    rows = []
    for policy in ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"]:
        for seed in range(3):
            m = rng.uniform(500, 2000)
            rows.append({"policy": policy, "seed": seed, "jobs": 20, "latency_mean_ms": m,
                         "latency_p95_ms": 1.6 * m, "latency_p99_ms": 2.1 * m, "miss_rate": rng.uniform(0, 0.4)})
    return {"results": pd.DataFrame(rows)}


def _tables_v2(rng):
    rows = []
    for predictor in ["des", "fast", "legacy", "none"]:
        for job in range(30):
            obs = rng.lognormal(7, 0.4)
            pred = obs * rng.lognormal(0, 0.3)
            rows.append({"seed": 0, "job": f"j{job}", "arrival_ms": job * 100.0, "observed_ms": obs,
                         "predictor": predictor, "predicted_ms": pred, "ape": abs(pred - obs) / obs})
    return {"results": pd.DataFrame(rows)}


def _tables_v3(rng):
    fmt = pd.DataFrame([
        {"format": f, "node": n, "twin_factor": t, "truth_factor": t * 1.1, "observed_mean": t * 1.05,
         "ci_low": t, "ci_high": t * 1.1, "n": 8}
        for f, t in [("native", 1.0), ("qemu-arm64", 6.0), ("qemu-riscv64", 8.0), ("wasm", 1.6)]
        for n in ["cloud-0"]])
    plan = pd.DataFrame([
        {"policy": p, "predictor": q, "mean_ms": m, "ci_low": m * 0.9, "ci_high": m * 1.1, "p50_ms": m, "p99_ms": 2 * m}
        for p in ["greedy", "cvar", "random"] for q, m in [("fast", 1.0), ("legacy", 0.2), ("des", 30.0)]])
    return {"results": fmt, "plan_latency": plan}


def _tables_v5(rng):
    rows, state = [], []
    for n in [10, 100, 1000]:
        for seed in range(2):
            for p in ["greedy", "cvar"]:
                rows.append({"nodes": n, "policy": p, "seed": seed, "p50_ms": n * 0.01 * (1 + seed * 0.1),
                             "p99_ms": n * 0.03, "mean_ms": n * 0.015})
            state.append({"nodes": n, "seed": seed, "apply_events_per_s": 1e5 / (1 + seed), "snapshot_ms": n * 0.001})
    return {"results": pd.DataFrame(rows), "state": pd.DataFrame(state)}


def _tables_v6(rng):
    rows = [{"mode": mode, "seed": seed, "window_start_s": w * 30, "jobs": 10,
             "mape": rng.uniform(0.05, 0.5), "miss_rate": rng.uniform(0, 0.3)}
            for mode in ["static", "online"] for seed in range(2) for w in range(5)]
    return {"results": pd.DataFrame(rows)}


MAKERS = {"V1": _tables_v1, "V2": _tables_v2, "V3": _tables_v3, "V5": _tables_v5, "V6": _tables_v6}


def _save_as_run(tables, run_dir):
    """Write tables exactly as dtlab.results.save does, then read them back from CSV."""
    run_dir.mkdir(parents=True)
    for name, df in tables.items():
        results.atomic_write_text(run_dir / f"{name}.csv", df.to_csv(index=False))
    return results.load_tables(run_dir)


@pytest.mark.parametrize("exp", sorted(MAKERS))
def test_figure_from_saved_csvs_writes_pdf_and_png_deterministically(exp, tmp_path):
    tables = _save_as_run(MAKERS[exp](np.random.default_rng(1)), tmp_path / "run")
    first = plots.save_experiment_figures(exp, tables, tmp_path / "a")
    second = plots.save_experiment_figures(exp, tables, tmp_path / "b")
    assert sorted(p.suffix for p in first) == [".pdf", ".png"]
    for a, b in zip(first, second):
        assert a.stat().st_size > 1000
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two saves of the same tables"
    pdf = first[0].read_bytes() if first[0].suffix == ".pdf" else first[1].read_bytes()
    assert b"CreationDate" not in pdf
    assert not list((tmp_path / "a").glob(".*")), "temp files left behind"


def test_missing_column_is_a_clear_error(tmp_path):
    tables = {"results": pd.DataFrame({"policy": ["greedy"], "seed": [0]})}
    with pytest.raises(DtlabError, match="latency_mean_ms"):
        plots.experiment_figure("V1", tables)


def test_names_and_colours_are_the_same_across_experiments():
    assert plots.display_name("least_allocated") == plots.display_name("Least-Allocated") == "K8s least-allocated"
    assert plots.color("greedy") == plots.color("GREEDY") == plots.OKABE_ITO["blue"]
    policies = ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"]
    assert len({plots.color(p) for p in policies}) == len(policies), "two policies share a colour"
    assert len({plots.style_of(p) for p in ["des", "fast", "legacy", "none"]}) == 4
    assert plots.order(["random", "cvar", "zeta", "greedy"]) == ["greedy", "cvar", "random", "zeta"]
    palette = set(plots.OKABE_ITO.values()) | {plots.GREY}
    assert all(entry[1] in palette for entry in plots.SERIES.values())


def test_figure_sizes_fit_one_and_two_columns():
    one, _ = plots.figure(columns=1)
    two, _ = plots.figure(columns=2)
    assert one.get_size_inches()[0] == pytest.approx(plots.ONE_COLUMN_IN)
    assert two.get_size_inches()[0] == pytest.approx(plots.TWO_COLUMN_IN)
    with pytest.raises(DtlabError):
        plots.figure(columns=3)


def test_mean_ci_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    m, lo, hi = plots.mean_ci(rng.normal(10, 1, 5))
    m2, lo2, hi2 = plots.mean_ci(rng.normal(10, 1, 200))
    assert lo < m < hi and lo2 < m2 < hi2
    assert hi2 - lo2 < hi - lo
    assert plots.mean_ci([3.0]) == (3.0, 3.0, 3.0)
