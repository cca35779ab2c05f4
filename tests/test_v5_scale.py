"""V5 scale pieces without a control plane: params, API-server histogram deltas, the 50k-node pure twin path."""
import math

import pytest

from dtlab import SpecError
from dtlab.experiments import v5


def _metrics(counts: dict[str, list[float]]) -> str:
    """Prometheus text of apiserver_request_duration_seconds with buckets 0.01, 0.1, 1, +Inf per verb."""
    les = ["0.01", "0.1", "1", "+Inf"]
    lines = ["# HELP apiserver_request_duration_seconds x", "# TYPE apiserver_request_duration_seconds histogram"]
    for verb, cum in counts.items():
        for res in ("pods", "nodes"):   # two series per verb: summed by request_histograms
            for le, c in zip(les, cum):
                lines.append(f'apiserver_request_duration_seconds_bucket{{verb="{verb}",resource="{res}",le="{le}"}} {c}')
            lines.append(f'apiserver_request_duration_seconds_count{{verb="{verb}",resource="{res}"}} {cum[-1]}')
            lines.append(f'apiserver_request_duration_seconds_sum{{verb="{verb}",resource="{res}"}} 1')
    return "\n".join(lines) + "\n"


def test_apiserver_latency_is_the_delta_and_skips_watch():
    before = _metrics({"POST": [10, 10, 10, 10], "WATCH": [0, 0, 0, 5]})
    # during the run per series: 50 POSTs <= 10 ms, 50 in (10, 100] ms; WATCHes are long-lived, excluded from "all"
    after = _metrics({"POST": [60, 110, 110, 110], "WATCH": [0, 0, 0, 9]})
    rows = {r["verb"]: r for r in v5.apiserver_latency(before, after)}
    assert rows["POST"]["requests"] == 200 and rows["WATCH"]["requests"] == 8
    assert rows["all"]["requests"] == 200
    assert rows["POST"]["p50_ms"] == pytest.approx(10.0)            # the 50th percentile sits at the 10 ms bound
    assert rows["POST"]["p99_ms"] == pytest.approx(10 + 90 * 0.98)  # linear inside (10, 100] ms
    assert math.isnan(v5.histogram_quantile({}, 0.5))
    assert v5.histogram_quantile({0.1: 0, float("inf"): 4}, 0.99) == 0.1   # all above the last bound


def test_substrate_and_kube_params_are_validated():
    with pytest.raises(SpecError) as err:
        v5.run({"substrate": "docker"})
    assert err.value.field == "substrate"
    with pytest.raises(SpecError) as err:
        v5.run({"substrate": "kube", "pods": 0})
    assert err.value.field == "pods"


def test_pure_twin_runs_at_50k_nodes():
    res = v5.run({"node_counts": [50000], "plans": 2, "seeds": [0], "apply_events": 500, "snapshots": 3,
                  "policies": ["greedy"]})
    row = res.table[res.table["mode"] == "fresh"].iloc[0]
    assert row["nodes"] == 50000 and row["plans"] == 2 and row["p50_ms"] > 0
    assert res.metrics["apply_events_per_s.50000"] > 0


def test_figure_v5_kube_panel_draws_lag_and_the_budget():
    import pandas as pd

    from dtlab import plots
    rows = [{"nodes": n, "policy": "greedy+cvar", "mode": "live", "seed": 0, "p50_ms": 0.6, "p99_ms": 9.0,
             "mean_ms": 1.0, "plans": 10} for n in (100, 1000)]
    kube = pd.DataFrame([{"nodes": n, "seed": 0, "observe_lag_p50_ms": 30.0, "observe_lag_p99_ms": lag}
                         for n, lag in ((100, 150.0), (1000, 420.0))])
    fig = plots.figure_v5({"results": pd.DataFrame(rows), "kube": kube})
    ax = fig.axes[2]
    ys = {tuple(line.get_ydata()) for line in ax.get_lines()}
    assert (150.0, 420.0) in ys and (1000.0, 1000.0) in ys           # lag p99 curve and the 1 s budget line
    assert "observe lag" in ax.get_title(loc="left")
