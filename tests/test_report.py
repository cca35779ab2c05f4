"""dtlab table / compare / report on real runs (V1 and V3 smoke through the runner), LaTeX compiled by pdflatex.

The runs are made once per module with `dtlab run --smoke` into a temporary outputs/ (papermill, ~20 s
each): A = V1 smoke (seeds 0, 1), B = V1 with seeds 2, 3 (unpaired), C = V1 with the smoke seeds and
one more job (paired), plus a V3 smoke run so the report has two experiments to filter.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pandas as pd
import pytest

from dtlab import cli, stats
from dtlab.report import compare as cmp
from dtlab.report.tables import ci_decimals, fmt_ci, headline_frame
from tests.heavy import require

SMOKE_V1 = "substrate: sim\njobs: 20\nrates_per_s: [1.0]\n"


def _run(argv) -> int:
    return cli.main(argv)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    pdir = tmp_path_factory.mktemp("params")
    (pdir / "b.yaml").write_text(SMOKE_V1 + "seeds: [2, 3]\n")
    (pdir / "c.yaml").write_text(SMOKE_V1.replace("jobs: 20", "jobs: 21") + "seeds: [0, 1]\n")
    assert _run(["run", "V1", "--smoke", "--out", str(root), "-q"]) == 0
    assert _run(["run", "V1", "-p", str(pdir / "b.yaml"), "--out", str(root), "-q"]) == 0
    assert _run(["run", "V1", "-p", str(pdir / "c.yaml"), "--out", str(root), "-q"]) == 0
    assert _run(["run", "V3", "--smoke", "--out", str(root), "-q"]) == 0
    runs = {}
    for d in sorted((root / "V1").iterdir()):
        if d.name.startswith((".", "_")):
            continue
        seeds = json.loads((d / "run.json").read_text())["params"]["seeds"]
        jobs = json.loads((d / "run.json").read_text())["params"]["jobs"]
        runs["B" if seeds == [2, 3] else "C" if jobs == 21 else "A"] = d
    runs["V3"] = next(d for d in (root / "V3").iterdir() if not d.name.startswith((".", "_")))
    runs["root"] = root
    return runs


# ---------------------------------------------------------------- rounding
@pytest.mark.parametrize("value,low,high,text", [
    (2661.4, 1121.0, 4200.0, ("2700", "[1100, 4200]")),
    (0.31234, 0.2712, 0.3512, ("0.31", "[0.27, 0.35]")),      # half-width 0.04: 2 decimals
    (0.31234, 0.3012, 0.3212, ("0.312", "[0.301, 0.321]")),   # half-width 0.01 (leading 1): 3
    (12.345, 11.9, 12.8, ("12.3", "[11.9, 12.8]")),
    (5.0, 5.0, 5.0, ("5", "")),                    # zero-width interval: no precision claim, 3 s.f.
    (3.14159, None, None, ("3.14", "")),
])
def test_numbers_rounded_to_their_ci(value, low, high, text):
    assert fmt_ci(value, low, high) == text


def test_ci_decimals():
    assert ci_decimals(0.0, 0.08) == 2 and ci_decimals(0.0, 0.6) == 1 and ci_decimals(0, 600) == -2
    assert ci_decimals(0.0, 0.02) == 3 and ci_decimals(0, 300) == -1         # leading 1: two digits
    assert ci_decimals(math.nan, 1.0) is None and ci_decimals(1.0, 1.0) is None


def test_headline_clips_intervals_to_the_possible_range():
    long = headline_frame({"greedy.miss_rate": 0.3, "greedy.miss_rate.ci_low": -1.0, "greedy.miss_rate.ci_high": 1.6,
                           "greedy.latency_mean_ms": 100.0, "greedy.latency_mean_ms.ci_low": -20.0,
                           "greedy.latency_mean_ms.ci_high": 220.0, "substrate": "sim", "note_count": 3})
    rows = long.set_index("metric")
    assert rows.loc["miss_rate", "ci_low"] == 0.0 and rows.loc["miss_rate", "ci_high"] == 1.0
    assert rows.loc["latency_mean_ms", "ci_low"] == 0.0
    assert set(long["metric"]) == {"miss_rate", "latency_mean_ms"}     # only metrics with CIs
    assert set(long["group"]) == {"greedy"}


# ---------------------------------------------------------------- dtlab table
def test_table_formats(outputs, capsys):
    for fmt in ("latex", "markdown", "csv"):
        assert _run(["table", str(outputs["A"]), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "greedy.r1" in out and "latency" in out
    assert "\\toprule" in _table(outputs["A"], capsys)
    saved = outputs["A"] / "tables" / "headline.tex"
    assert saved.exists() and "\\begin{tabular}" in saved.read_text()     # written by the notebook's save


def _table(run_dir, capsys) -> str:
    assert _run(["table", str(run_dir)]) == 0
    return capsys.readouterr().out


def test_table_bad_input_exit_2(tmp_path, capsys):
    assert _run(["table", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert _run(["table", str(tmp_path)]) == 2                       # a directory without metrics.json
    assert "no metrics.json" in capsys.readouterr().err


def test_latex_table_compiles(outputs, tmp_path, capsys):
    """The tabular of a V1 run compiles with pdflatex (texlive-latex-base + -recommended for booktabs)."""
    pdflatex = shutil.which("pdflatex")
    require(pdflatex is not None and shutil.which("kpsewhich") is not None and
            subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True).stdout.strip() != "",
            "pdflatex with booktabs (make test-deps: texlive-latex-base texlive-latex-recommended)")
    for name in ("A", "V3"):
        (tmp_path / f"{name}.tex").write_text(_table(outputs[name], capsys))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,"
                                      "landscape]{geometry}\n\\begin{document}\n\\input{A.tex}\n\n\\resizebox{"
                                      "\\linewidth}{!}{\\input{V3.tex}}\n\\end{document}\n")
    (tmp_path / "doc.tex").write_text((tmp_path / "doc.tex").read_text().replace(
        "\\usepackage{booktabs}", "\\usepackage{booktabs}\n\\usepackage{graphicx}"))
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


# ---------------------------------------------------------------- dtlab compare
def test_compare_different_seeds_unpaired_with_cis(outputs, capsys):
    assert _run(["compare", str(outputs["A"]), str(outputs["B"])]) == 0
    out = capsys.readouterr().out
    assert "seeds differ" in out and "Welch" in out
    assert "params: differ: seeds: [0, 1] -> [2, 3]" in out
    assert "code: same revision" in out
    # the numbers are the Welch interval of the per-seed values
    res = cmp.compare(outputs["A"], outputs["B"])
    a, b = pd.read_csv(outputs["A"] / "results.csv"), pd.read_csv(outputs["B"] / "results.csv")
    row = next(r for r in res["rows"] if r.group == "greedy" and r.metric == "latency_mean_ms")
    want = stats.welch_diff_ci(b.loc[b.policy == "greedy", "latency_mean_ms"].tolist(),
                               a.loc[a.policy == "greedy", "latency_mean_ms"].tolist())
    assert (row.diff.mean, row.diff.low, row.diff.high) == pytest.approx((want.mean, want.low, want.high))
    assert math.isfinite(row.diff.low) and row.diff.low < row.diff.mean < row.diff.high
    assert not row.paired
    assert {r.metric for r in res["rows"]} >= {"latency_mean_ms", "miss_rate", "energy_proxy_j"}
    # a change of a miss rate lies in [-1, 1]: the 2-seed Welch interval is clipped to it
    for r in res["rows"]:
        if r.metric == "miss_rate" and math.isfinite(r.diff.low):
            assert -1.0 <= r.diff.low <= r.diff.high <= 1.0, r
    # headline metrics pooled over seeds have no per-seed values: named in a note, not silently dropped
    assert "pooled_p95_ms" not in {r.metric for r in res["rows"]}
    assert any("not compared" in n and "pooled_p95_ms" in n for n in res["notes"]), res["notes"]
    assert "note: not compared" in out
    assert any("no per-seed rows" in n and "vs_best_baseline" in n for n in res["notes"]), res["notes"]


def test_compare_same_seeds_is_paired(outputs, capsys):
    res = cmp.compare(outputs["A"], outputs["C"])
    assert "paired" in res["seeds"]
    a, c = pd.read_csv(outputs["A"] / "results.csv"), pd.read_csv(outputs["C"] / "results.csv")
    row = next(r for r in res["rows"] if r.group == "cvar" and r.metric == "latency_mean_ms")
    xa = a[a.policy == "cvar"].sort_values("seed")["latency_mean_ms"].tolist()
    xc = c[c.policy == "cvar"].sort_values("seed")["latency_mean_ms"].tolist()
    want = stats.paired_diff_ci(xc, xa)
    assert row.paired and (row.diff.mean, row.diff.low, row.diff.high) == pytest.approx((want.mean, want.low, want.high))
    assert res["provenance"]["params_changed"] == {"jobs": (20, 21)}
    assert _run(["compare", str(outputs["A"]), str(outputs["A"]), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert all(r["diff"] == 0 for r in same["rows"]) and not same["provenance"]["params_differ"]


def test_compare_fail_if_worse_and_errors(outputs, tmp_path, capsys):
    # A vs itself: nothing is worse -> 0; an unknown metric -> 2; runs of two experiments -> 2
    assert _run(["compare", str(outputs["A"]), str(outputs["A"]), "--fail-if-worse", "latency_mean_ms"]) == 0
    capsys.readouterr()
    assert _run(["compare", str(outputs["A"]), str(outputs["A"]), "--fail-if-worse", "nope"]) == 2
    assert "no metric 'nope'" in capsys.readouterr().err
    assert _run(["compare", str(outputs["A"]), str(outputs["V3"])]) == 2
    assert "different experiments" in capsys.readouterr().err
    assert _run(["compare", str(outputs["A"]), str(tmp_path / "x")]) == 2
    # a B made worse on purpose: every latency of A + 1000 ms on every seed -> exit 1 naming it
    worse = tmp_path / "worse"
    shutil.copytree(outputs["A"], worse)
    df = pd.read_csv(worse / "results.csv")
    df["latency_mean_ms"] += 1000.0 + df["seed"]
    df.to_csv(worse / "results.csv", index=False)
    assert _run(["compare", str(outputs["A"]), str(worse), "--fail-if-worse", "latency_mean_ms"]) == 1
    captured = capsys.readouterr()
    assert "worse on latency_mean_ms" in captured.err and "worse" in captured.out
    assert _run(["compare", str(outputs["A"]), str(worse), "--fail-if-worse", "miss_rate"]) == 0


def test_higher_is_better_names():
    assert not cmp.higher_is_better("latency_p95_ms") and not cmp.higher_is_better("miss_rate")
    assert not cmp.higher_is_better("energy_proxy_j")
    assert cmp.higher_is_better("apply_events_per_s")


# ---------------------------------------------------------------- dtlab report (files; the browser test is in tests/ui)
def test_report_writes_one_card_per_finished_run(outputs, tmp_path, capsys):
    out = tmp_path / "report"
    assert _run(["report", "--out", str(out), "--outputs", str(outputs["root"])]) == 0
    assert "4 run(s)" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert page.count('<section class="card"') == 4
    assert 'data-experiment="V3"' in page and 'data-substrate="sim"' in page
    for run in ("A", "B", "C", "V3"):
        d = out / "runs" / f"{outputs[run].parent.name}-{outputs[run].name}"
        assert list(d.glob("*.png")), d
        assert list(d.glob("*.ipynb"))
    assert "<code>seeds</code>" in page                     # B's params differ from the defaults
    assert _run(["report", "--out", str(out), "--outputs", str(tmp_path / "none")]) == 3


def test_negative_zero_and_bounds_from_the_full_key():
    assert fmt_ci(-0.04, -0.3, 0.2) == ("0.0", "[-0.3, 0.2]")
    long = headline_frame({"plan_p50_ms.greedy.100": 1.0, "plan_p50_ms.greedy.100.ci_low": -2.0,
                           "plan_p50_ms.greedy.100.ci_high": 4.0, "des.mape": 0.2, "des.mape.ci_low": -0.2,
                           "des.mape.ci_high": 0.6})
    assert (long["ci_low"] >= 0).all()                  # a plan time (by its key) and an error are >= 0


def test_compare_says_when_the_code_revision_differs():
    """Two code revisions (or a dirty tree) are named from run.json's git record; params and substrate too."""
    a = {"git": {"revision": "a" * 40, "dirty": False}, "params": {"jobs": 20}, "substrate": "sim"}
    b = {"git": {"revision": "b" * 40, "dirty": True}, "params": {"jobs": 20}, "substrate": "fabric"}
    p = cmp.provenance_diff(a, b)
    assert p["code_differs"] and not p["params_differ"] and p["substrate"] == ("sim", "fabric")
    text = cmp.format_text({"experiment": "V1", "a": "A", "b": "B", "provenance": p, "seeds": "", "notes": [],
                            "rows": []})
    assert f"code: differs (A {'a' * 10}, B {'b' * 10}+dirty)" in text
    assert "params: same" in text and "substrate: sim -> fabric" in text
    same_dirty = cmp.provenance_diff(a, {**a, "git": {"revision": "a" * 40, "dirty": True}})
    assert same_dirty["code_differs"]
    assert "uncommitted changes" in cmp.format_text({"experiment": "V1", "a": "A", "b": "B", "provenance": same_dirty,
                                                     "seeds": "", "notes": [], "rows": []})


def test_compare_finds_per_seed_tables_beside_results_csv(tmp_path):
    """V2 keeps per-seed MAPEs in per_seed.csv (results.csv is per job): compare uses that table, keys on its
    text columns (pandas >= 3 reads them as str, not object) and pairs by seed."""
    (tmp_path / "results.csv").write_text("job,ape\nj0,0.1\n")
    (tmp_path / "per_seed.csv").write_text("scope,seed,mape,n\nfast,0,0.2,5\nfast,1,0.3,5\ndes,0,0.4,5\ndes,1,0.5,5\n")
    (tmp_path / "other_per_seed.csv").write_text("seed,unrelated\n0,1\n")
    df, cols, source = cmp.per_seed_table(tmp_path, ["mape", "p95_ape"])
    assert source == "per_seed.csv" and cols == ["mape"] and cmp._key_columns(df, cols) == ["scope"]
    assert cmp.per_seed_table(tmp_path, ["latency_ms"])[0] is None


def test_compare_v3_pairs_format_energy_per_seed(outputs):
    res = cmp.compare(outputs["V3"], outputs["V3"])
    assert "format_factors_per_seed.csv" in res["seeds"] and "paired" in res["seeds"]
    energy_rows = [r for r in res["rows"] if r.metric == "energy_proxy_j"]
    assert energy_rows and all(r.paired and r.diff.mean == 0 for r in energy_rows)
    assert any("native" in r.group for r in energy_rows)
    assert any("no per-seed rows" in n and "plan_ms.greedy" in n for n in res["notes"]), res["notes"]


def test_headline_frame_names_v5_metrics_and_groups_the_right_way_round():
    """V5 keys put the metric first (plan_p99_ms.greedy.warm.100); the table used to call "100" the metric."""
    from dtlab.report.tables import headline_frame
    long = headline_frame({"plan_p99_ms.greedy.warm.100": 2.0, "plan_p99_ms.greedy.warm.100.ci_low": 1.0,
                           "plan_p99_ms.greedy.warm.100.ci_high": 3.0,
                           "des.mape": 0.1, "des.mape.ci_low": 0.05, "des.mape.ci_high": 0.2})
    rows = {(r.group, r.metric) for r in long.itertuples(index=False)}
    assert rows == {("greedy.warm.100", "plan_p99_ms"), ("des", "mape")}
