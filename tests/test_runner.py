"""dtlab.runner / `dtlab run|results|figures` end to end, driven by a throwaway experiment.

The toy experiment (module + notebook written into tmp_path) has the same shape as V1..V6 —
DEFAULTS, check, run(params) -> result with .table/.metrics/.extra — so these tests exercise
papermill, params validation, skip/force, atomic run directories and failure reporting without
depending on any real experiment's runtime.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from dtlab import results, runner
from dtlab.cli import main as cli_main
from dtlab.errors import SpecError

TOY_MODULE = '''
"""Throwaway experiment for the runner tests."""
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dtlab.errors import SpecError

DEFAULTS = {"seeds": [0, 1], "n": 50, "fail": False}


@dataclass(frozen=True)
class Result:
    table: pd.DataFrame
    metrics: dict
    extra: dict = field(default_factory=dict)


def check(params):
    for key in params:
        if key not in DEFAULTS:
            raise SpecError(key, "unknown parameter")
    if int(params.get("n", 1)) <= 0:
        raise SpecError("n", "must be a positive integer")
    return {**DEFAULTS, **params}


def run(params):
    check(params)
    p = {**DEFAULTS, **params}
    if p["fail"]:
        raise RuntimeError("toy failure requested")
    rows = []
    for seed in p["seeds"]:
        x = np.random.default_rng(seed).lognormal(0.0, 0.5, int(p["n"]))
        rows += [{"seed": seed, "i": i, "value": float(v)} for i, v in enumerate(x)]
    table = pd.DataFrame(rows)
    summary = table.groupby("seed", as_index=False)["value"].mean()
    return Result(table, {"mean": float(table["value"].mean()), "max": float(table["value"].max())},
                  {"summary": summary})
'''

TOY_CELLS = [
    ("markdown", "# Toy experiment"),
    ("parameters", "seeds = [0]\nn = 5\nfail = False\nout_dir = 'toy-out'"),
    ("code", "from dtlab import plots, results\nimport {module} as experiment"),
    ("code", "params = dict(seeds=seeds, n=n, fail=fail)\nresult = experiment.run(params)"),
    ("code", "results.save(result, out_dir)\ntables = results.load_tables(out_dir)\n"
             "fig, ax = plots.figure()\nax.plot(tables['results']['value'])\n"
             "plots.savefig(fig, out_dir + '/figures', 'toy')"),
    ("code", "tables['summary']"),
]


def _write_toy(tmp_path, exp_id: str, module: str):
    pkg = tmp_path / "toypkg"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{module}.py").write_text(TOY_MODULE)
    nb = nbformat.v4.new_notebook()
    for kind, src in TOY_CELLS:
        src = src.format(module=module)
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / f"{exp_id}_toy.ipynb"
    nbformat.write(nb, path)
    return runner.Experiment(exp_id, str(path), module), pkg


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    """Register experiments T1 and T2 (same toy code) and a params file for each."""
    exps = []
    for exp_id in ("T1", "T2"):
        exp, pkg = _write_toy(tmp_path, exp_id, f"dtlab_toy_{exp_id.lower()}")
        monkeypatch.setitem(runner.EXPERIMENTS, exp_id, exp)
        exps.append(exp)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PYTHONPATH", str(pkg))          # the kernels and -j workers import it too
    params = tmp_path / "params.yaml"
    params.write_text("seeds: [3, 4]\nn: 20\n")
    return {"T1": exps[0], "T2": exps[1], "params": params, "out": tmp_path / "outputs", "tmp": tmp_path}


def _run(toy, *extra: str) -> int:
    return cli_main(["run", "T1", "-p", str(toy["params"]), "--out", str(toy["out"]), "-q", *extra])


def _no_temp_dirs(out):
    return [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".trash-"))]


def test_run_writes_a_complete_run_dir_skips_when_finished_and_force_reruns(toy, capsys):
    assert _run(toy) == 0
    run_dirs = [p for p in (toy["out"] / "T1").iterdir() if not p.name.startswith(("_", "."))]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert {p.name for p in run_dir.iterdir()} >= {"results.csv", "summary.csv", "metrics.json", "run.json",
                                                   "figures", "T1_toy.ipynb"}
    assert sorted(p.suffix for p in (run_dir / "figures").iterdir()) == [".pdf", ".png"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "ok" and info["run_id"] == run_dir.name
    assert info["params"] == {"seeds": [3, 4], "n": 20, "fail": False}   # file over module DEFAULTS
    assert info["seed"] == [3, 4] and info["substrate"] == "sim"
    assert info["git"]["revision"] and info["packages"]["papermill"] and info["host"]["cpus"]
    assert info["started"] <= info["finished"]
    executed = nbformat.read(run_dir / "T1_toy.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    metrics_before = (run_dir / "metrics.json").read_bytes()
    mtime = (run_dir / "run.json").stat().st_mtime_ns

    capsys.readouterr()
    assert _run(toy) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run_dir / "run.json").stat().st_mtime_ns == mtime, "a finished run was re-executed"

    assert _run(toy, "--force") == 0
    assert (run_dir / "run.json").stat().st_mtime_ns != mtime
    assert (run_dir / "metrics.json").read_bytes() == metrics_before, "same params gave different metrics"
    assert not _no_temp_dirs(toy["out"])

    listing = results.list_runs(toy["out"])
    assert list(listing["run_id"]) == [run_dir.name] and "mean=" in listing["headline"][0]


@pytest.mark.parametrize("content, field", [
    ("seeds: [0\nn: 3\n", "not valid YAML (line"),
    ("seeds: [0]\nbogus_key: 1\n", ":bogus_key: unknown parameter of T1"),
    ("n: -4\n", ":n: must be a positive integer"),
    ("- just\n- a list\n", "must be a mapping"),
    ("out_dir: /tmp/x\n", ":out_dir: is set by the runner"),
])
def test_broken_params_fail_before_running_and_leave_results_intact(toy, capsys, content, field):
    earlier = toy["out"] / "T1" / "0123456789"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text('{"status": "ok"}')
    (earlier / "metrics.json").write_text('{"mean": 1.0}')
    bad = toy["tmp"] / "bad.yaml"
    bad.write_text(content)
    code = cli_main(["run", "T1", "-p", str(bad), "--out", str(toy["out"]), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid parameters" in err and str(bad) in err and field in err
    assert sorted(p.name for p in (toy["out"] / "T1").iterdir()) == ["0123456789"]
    assert (earlier / "metrics.json").read_text() == '{"mean": 1.0}'


def test_prepare_validates_every_experiment_before_any_runs(toy, tmp_path):
    with pytest.raises(SpecError, match="unknown experiment"):
        runner.resolve_experiments(["V9"])
    with pytest.raises(SpecError, match="one params file"):
        runner.run(["T1", "T2"], params_file=toy["params"], out_root=tmp_path / "o", progress=False)


def test_failing_notebook_names_the_cell_and_keeps_earlier_results(toy, capsys):
    assert _run(toy) == 0
    good = next(p for p in (toy["out"] / "T1").iterdir() if not p.name.startswith(("_", ".")))
    good_metrics = (good / "metrics.json").read_bytes()
    failing = toy["tmp"] / "fail.yaml"
    failing.write_text("seeds: [3, 4]\nn: 20\nfail: true\n")
    capsys.readouterr()
    code = cli_main(["run", "T1", "-p", str(failing), "--out", str(toy["out"]), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed in cell In[" in err and "RuntimeError: toy failure requested" in err
    assert "> params = dict(seeds=seeds, n=n, fail=fail)" in err
    failed_dirs = list((toy["out"] / "T1" / runner.FAILED_DIR).iterdir())
    assert len(failed_dirs) == 1 and json.loads((failed_dirs[0] / "run.json").read_text())["status"] == "failed"
    assert (good / "metrics.json").read_bytes() == good_metrics
    assert [r.run_id for r in results.iter_runs(toy["out"])] == [good.name]
    assert not _no_temp_dirs(toy["out"])


def test_parallel_runs_and_figure_regeneration(toy, capsys):
    code = cli_main(["run", "T1", "T2", "--out", str(toy["out"]), "-j", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    runs = results.iter_runs(toy["out"])
    assert sorted(r.experiment for r in runs) == ["T1", "T2"] and all(r.status == "ok" for r in runs)
    # notebook defaults are smoke-sized, module DEFAULTS are what a run without a params file uses
    assert runs[0].info["params"]["n"] == 50
    capsys.readouterr()
    assert cli_main(["results", "--out", str(toy["out"])]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and "T1" in out and "T2" in out
    assert cli_main(["figures", "--out", str(toy["out"])]) == 0
    assert "no figure function for T1" in capsys.readouterr().err


def test_run_id_depends_on_experiment_and_params_only():
    v1, v2 = runner.EXPERIMENTS["V1"], runner.EXPERIMENTS["V2"]
    a = runner.run_id_for(v1, {"seeds": [0, 1], "jobs": 20})
    assert a == runner.run_id_for(v1, {"jobs": 20, "seeds": [0, 1]})
    assert a != runner.run_id_for(v1, {"seeds": [0, 1], "jobs": 21})
    assert a != runner.run_id_for(v2, {"seeds": [0, 1], "jobs": 20})


def test_kernel_runs_this_interpreter():
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    name = runner.ensure_kernel()
    assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable


def test_kernel_install_is_safe_when_runs_start_together():
    """Two `dtlab run`s started together in a fresh clone both installed the kernelspec; installing
    replaces its directory, and the other read kernel.json in between (CI: "No such file or
    directory"). Six processes at once (imports done first), from no spec: every one must get a
    readable spec. Without the lock this failed in 2 of 2 runs here."""
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager

    name = runner.ensure_kernel()
    spec_dir = Path(KernelSpecManager().get_kernel_spec(name).resource_dir)
    code = ("import json, os, sys, time; from jupyter_client.kernelspec import KernelSpecManager; "
            "from ipykernel.kernelspec import install; from dtlab.runner import ensure_kernel; "
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); n = ensure_kernel(); "
            "d = KernelSpecManager().get_kernel_spec(n).resource_dir; "
            "json.load(open(os.path.join(d, 'kernel.json'))); print('ok')")
    for _ in range(3):
        shutil.rmtree(spec_dir, ignore_errors=True)
        start = f"{time.time() + 3.0:.3f}"       # imports done, all six call ensure_kernel at once
        procs = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 and o.strip() == "ok" for p, (o, _e) in zip(procs, outs)), \
            [e[-400:] for p, (_o, e) in zip(procs, outs) if p.returncode]
    assert (spec_dir / "kernel.json").is_file()


def test_results_save_is_deterministic_and_load_round_trips(tmp_path):
    import numpy as np
    import pandas as pd

    class R:
        table = pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y"]})
        metrics = {"z": np.float64(1.5), "a": np.int64(2), "nan": float("nan"), "arr": np.arange(2)}
        extra = {"summary": pd.DataFrame({"k": [1]})}

    results.save(R(), tmp_path / "a")
    results.save(R(), tmp_path / "b")
    for name in ("results.csv", "summary.csv", "metrics.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert list(metrics) == ["z", "a", "nan", "arr"] and metrics["nan"] is None and metrics["arr"] == [0, 1]
    tables = results.load_tables(tmp_path / "a")
    pd.testing.assert_frame_equal(tables["results"], R.table)
    assert results.format_runs(results.list_runs(tmp_path)) == "no runs found"
    mt = results.metrics_table({"x": 1.0, "x.ci_low": 0.5, "x.ci_high": 1.5, "n": 3})
    assert mt.to_dict("records")[0] == {"metric": "x", "value": 1.0, "ci_low": 0.5, "ci_high": 1.5}
    assert list(mt["metric"]) == ["x", "n"]


def test_same_params_give_identical_metrics_json_on_sim(tmp_path):
    """Through the whole runner (papermill, kernel, save): V1 smoke twice -> byte-identical metrics."""
    outs = []
    for name in ("a", "b"):
        [outcome] = runner.run(["V1"], smoke=True, out_root=tmp_path / name, progress=False)
        assert outcome.status == "ok", outcome.error
        outs.append(outcome)
    assert outs[0].run_id == outs[1].run_id
    assert json.loads((outs[0].run_dir / "run.json").read_text())["substrate"] == "sim"
    for name in ("metrics.json", "results.csv", "figures/V1_controller_vs_baseline.png",
                 "figures/V1_controller_vs_baseline.pdf"):
        assert (outs[0].run_dir / name).read_bytes() == (outs[1].run_dir / name).read_bytes(), name
    # `dtlab figures` redraws from the saved CSVs alone: same bytes as the notebook wrote
    png = outs[0].run_dir / "figures" / "V1_controller_vs_baseline.png"
    before = png.read_bytes()
    png.unlink()
    written, skipped = runner.regenerate_figures(tmp_path / "a")
    assert png in written and not skipped
    assert png.read_bytes() == before


def test_a_bad_value_for_a_real_experiment_is_rejected_before_any_kernel(tmp_path):
    """V1's own check runs in `prepare` (values, not only keys), so no notebook is executed for it."""
    bad = tmp_path / "v1.yaml"
    bad.write_text("substrate: sim\nseeds: [0, -1]\n")
    with pytest.raises(SpecError, match=r"v1\.yaml:seeds"):
        runner.prepare("V1", bad)
    bad.write_text("fabric: {bogus: 1}\n")
    with pytest.raises(SpecError, match=r"v1\.yaml:fabric\.bogus"):
        runner.prepare("V1", bad)
    assert not (tmp_path / "outputs").exists()
