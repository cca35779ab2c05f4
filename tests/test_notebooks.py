"""Notebook hygiene and the params <-> notebook <-> experiment contract.

- no committed notebook carries outputs (they would bloat diffs and leak stale numbers);
- each experiment notebook has exactly one `parameters` cell, defines no functions or classes,
  and calls its experiment module;
- every key of params/VN.yaml and params/smoke/VN.yaml is a parameter of the notebook
  (papermill.inspect_notebook; papermill itself would only warn), the notebook declares exactly the
  experiment's DEFAULTS (+ out_dir), and its smoke-sized defaults are the smoke params file;
- every params file passes the runner's validation (the experiment's own checks included).
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from dtlab import runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPERIMENTS = sorted(runner.EXPERIMENTS)


def _nb(path):
    return nbformat.read(path, as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert {Path(runner.EXPERIMENTS[e].notebook).name for e in EXPERIMENTS} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    dirty = [i for i, c in enumerate(_nb(path).cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them (nbstripout {path.name})"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_notebook_is_thin_and_parameterised(exp):
    path = ROOT / runner.EXPERIMENTS[exp].notebook
    nb = _nb(path)
    tagged = [c for c in _code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged `parameters`, has {len(tagged)}"
    source = "\n".join(c.source for c in _code_cells(nb))
    for node in ast.walk(ast.parse(source)):
        assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
            f"{path.name}: defines {type(node).__name__} at line {node.lineno}; logic belongs in dtlab"
    assert f"dtlab.experiments.{exp.lower()}" in source and "experiment.run(" in source
    assert "results.save(" in source, f"{path.name}: must save its tables into out_dir"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_params_files_match_the_notebook_and_the_experiment(exp):
    path = ROOT / runner.EXPERIMENTS[exp].notebook
    declared = papermill.inspect_notebook(str(path))
    module = importlib.import_module(runner.EXPERIMENTS[exp].module)
    assert set(declared) == set(module.DEFAULTS) | {runner.OUT_DIR_PARAM}, \
        f"{path.name}: parameters differ from {module.__name__}.DEFAULTS: " \
        f"{sorted(set(declared) ^ (set(module.DEFAULTS) | {runner.OUT_DIR_PARAM}))}"
    full = yaml.safe_load((ROOT / "params" / f"{exp}.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "params" / "smoke" / f"{exp}.yaml").read_text())
    for name, params in (("params", full), ("params/smoke", smoke)):
        unknown = sorted(set(params) - set(declared))
        assert not unknown, f"{name}/{exp}.yaml: {unknown} are not parameters of {path.name}"
    # the notebook's own defaults are the smoke run, so opening it in Jupyter takes seconds
    cell = next(c for c in _code_cells(_nb(path)) if "parameters" in c.metadata.get("tags", []))
    values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
              if isinstance(n, ast.Assign) for t in n.targets}
    expected = {**module.DEFAULTS, **smoke}
    assert {k: v for k, v in values.items() if k != runner.OUT_DIR_PARAM} == expected


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_params_files_pass_validation(exp, smoke):
    prep = runner.prepare(exp, smoke=smoke)
    assert prep.params and prep.run_id
    assert prep.params_file == runner.default_params_file(runner.EXPERIMENTS[exp], smoke)
