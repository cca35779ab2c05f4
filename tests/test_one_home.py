"""One home per rule (issue 15): the 95 % t-quantile, the run id and the atomic write each have
exactly one definition in the package; everything else calls it. AST based, so a comment or a
docstring mentioning the rule does not count, and a re-implementation under a new name does.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dtlab"
# runs as a bare script next to the wasm runtime and must import nothing from dtlab (its docstring)
STANDALONE = {"fabric/wasm_run.py"}
# tabulated t_{0.975} values of small degrees of freedom, and the rounded ones that used to live
# in plots.py / fabric/calibrate.py (2.14) -- only dtlab/stats.py may spell them
T_VALUES = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.14}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        yield rel, ast.parse(path.read_text(), filename=str(path))


def _call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else ""
        return f"{base}.{f.attr}" if base else f".{f.attr}"
    return f.id if isinstance(f, ast.Name) else ""


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_t_quantile_lives_only_in_stats():
    defs, literals, ppf = [], [], []
    for rel, tree in _modules():
        for fn in _functions(tree):
            if "t975" in fn.name or "t_quantile" in fn.name or fn.name.startswith("tquant"):
                defs.append(f"{rel}:{fn.name}")
        for node in ast.walk(tree):
            if rel != "stats.py" and isinstance(node, ast.Constant) and isinstance(node.value, float) \
                    and round(node.value, 3) in T_VALUES:
                literals.append(f"{rel}:{node.lineno} {node.value}")
            if isinstance(node, ast.Call) and _call_name(node).endswith(".ppf"):
                ppf.append(f"{rel}:{node.lineno}")
    assert defs == ["stats.py:t975"]
    assert literals == [], "t quantiles spelled outside dtlab/stats.py"
    assert ppf == [], "scipy t.ppf outside dtlab/stats.py"


def test_the_run_id_is_hashed_in_one_place():
    """A function that hashes params (sha256 over something naming params) is the run id; there is
    one, ``results.run_id``, and the runner and sweeps call it."""
    hashers = []
    for rel, tree in _modules():
        for fn in _functions(tree):
            calls = {_call_name(n) for n in ast.walk(fn) if isinstance(n, ast.Call)}
            names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | \
                    {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if any(c.endswith("sha256") for c in calls) and "params" in names:
                hashers.append(f"{rel}:{fn.name}")
    assert hashers == ["results.py:run_id"]
    from dtlab import results, runner, sweep
    from dtlab.experiments import get

    params = {"seeds": [0, 1], "x": float("nan")}
    rid = results.run_id("V1", params)
    assert runner.run_id_for(get("V1"), params) == rid == sweep.point_id("V1", params)
    assert len(rid) == results.RUN_ID_HEX and rid != results.run_id("V1", {"seeds": [0, 1], "x": None})
    # the id the runner gave these params before the rule moved to results.py (finished runs stay skipped)
    assert results.run_id("V1", {"seeds": [0, 1], "jobs": 40, "x": float("nan"), "rates_per_s": [0.5, 1.0]}) \
        == "dc21f1f725"


def _is_rename(node: ast.Call) -> bool:
    name = _call_name(node)
    if name in ("os.replace", "os.rename", "shutil.move"):
        return True
    # Path.replace(target) / Path.rename(target): one positional argument that is not a literal
    # (str.replace takes two; pandas' .rename("name") a literal or keywords)
    return name in (".replace", ".rename") and len(node.args) == 1 and not node.keywords \
        and not isinstance(node.args[0], ast.Constant)


def test_files_are_replaced_only_through_dtlab_atomic():
    sites = []
    for rel, tree in _modules():
        if rel in STANDALONE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_rename(node):
                sites.append(rel)
    assert sorted(set(sites)) == ["atomic.py"], sorted(sites)


def test_atomic_writer_replaces_whole_files_and_leaves_no_temp(tmp_path):
    from dtlab import atomic

    target = tmp_path / "sub" / "a.txt"
    atomic.atomic_write_text(target, "one\n")
    atomic.atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    try:
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    except RuntimeError:
        pass
    assert target.read_text() == "two\n" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    src = tmp_path / "new"
    src.mkdir()
    (src / "x").write_text("new")
    dst = tmp_path / "run"
    dst.mkdir()
    (dst / "x").write_text("old")
    atomic.replace_dir(src, dst)
    assert (dst / "x").read_text() == "new" and not src.exists()
    again = tmp_path / "again"
    again.mkdir()
    atomic.replace_dir(again, dst, keep=lambda d: (d / "x").exists())   # a finished dst stays
    assert (dst / "x").read_text() == "new" and not again.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "sub"]


def test_one_experiment_registry_and_every_experiment_checks():
    from dtlab import runner
    from dtlab.experiments import EXPERIMENTS, get

    assert runner.EXPERIMENTS is EXPERIMENTS and runner.get_experiment("v4") is get("V4")
    for exp in EXPERIMENTS.values():
        module = exp.load()
        assert callable(module.check) and callable(module.run) and isinstance(module.DEFAULTS, dict)
        assert exp.smoke_params.is_file(), exp.smoke_params
        assert exp.check({}) == exp.check(None)


def test_the_auto_substrate_rule_is_substrates_pick(monkeypatch):
    """`substrate: auto` is resolved by substrates.pick alone: the experiments and the host lock follow it."""
    from dtlab import hostlock, substrates
    from dtlab.experiments import substrate

    monkeypatch.setattr(substrates, "pick", lambda preferred, fallback="sim": (fallback, "pick said no"))
    choice = substrate.choose_substrate("auto")
    assert (choice.name, choice.note) == ("sim", "pick said no")
    assert hostlock.wall_clock({"substrate": "auto"}) is None
    monkeypatch.setattr(substrates, "pick", lambda preferred, fallback="sim": (preferred, ""))
    assert hostlock.wall_clock({"substrate": "auto"}) == "substrate auto -> fabric (available on this host)"
