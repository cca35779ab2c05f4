"""The package's layer order, written down once: a lower layer never imports a higher one; no import circles.

Read with ``ast`` from the source (nothing is imported), so the test sees every import:

* **Layering** counts module-level AND function-local imports (an import inside a function is
  still a dependency; hiding it in a function does not make an upward call legal). Imports
  under ``if TYPE_CHECKING:`` count too.
* **Circles** are checked between modules (files) on module-level imports: those are the
  ones that make ``import`` order matter. A function-local circle across layers is already an
  upward import (layering catches it); inside one layer (e.g. two modules of one package
  helping each other lazily) it is allowed.

A unit is a top-level module or subpackage of ``dtlab`` (``model``, ``des``, ``predict``, ...);
modules of one unit may import each other (subject to the circle rule). ``dtlab/__init__.py``
is the facade and sits on top.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dtlab"     # the source tree, not an installed copy

# Lowest first. A unit may import units of its own layer or of lower layers only.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"errors", "strict_json", "pathcheck", "safe_yaml", "spec_reader", "datadir", "stats", "cowmap", "atomic"}),
    ("figure style", {"plots"}),
    ("specs", {"model", "jobfile"}),
    ("timing", {"timing", "plan"}),
    ("state and inputs", {"state", "workload", "telemetry", "chaos"}),
    ("discrete-event model", {"des"}),
    ("predictors", {"predict"}),
    ("energy", {"energy"}),
    ("policies", {"policies"}),
    ("twin", {"twin"}),
    ("substrates and the loop", {"hostlock", "hostnoise", "fabric", "kube", "substrates", "controller", "calibration"}),
    ("services", {"extender", "api", "trace", "replay", "whatif", "operator", "controller_service", "experiments",
                  "results", "report"}),
    ("workbench", {"runner", "sweep", "dashboard"}),
]
# Above every layer, not listed so the CLI can be restructured freely: the command line
# (``cli``, ``cli_*``) and the ``dtlab`` facade (``dtlab/__init__.py``).


def unit_of(module: str) -> str:
    """``dtlab.des.engine`` -> ``des``; ``dtlab`` -> ``""`` (the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported dtlab module, line, module-level?) for every import in the file."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:       # `if TYPE_CHECKING:` / try-except blocks at module level are module level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from . import x` / `from .pkg import sub`: the submodule when it is one
            names = [f"{root}.{a.name}" if _is_module(f"{root}.{a.name}") else root for a in node.names]
        else:
            continue
        for name in names:
            if name == "dtlab" or name.startswith("dtlab."):
                out.append((name, node.lineno, id(node) in top))
    return out


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p): imports(p) for p in sorted(PKG.rglob("*.py"))}


def layer_index() -> dict[str, int]:
    out: dict[str, int] = {}
    for i, (_, units) in enumerate(LAYERS):
        for u in units:
            assert u not in out, f"{u} is in two layers"
            out[u] = i
    return out


def test_layers_name_real_units():
    units = {unit_of(m) for m in graph()}
    for name, members in LAYERS:
        assert members <= units, f"layer {name!r} names units that do not exist: {sorted(members - units)}"


def test_no_lower_layer_imports_a_higher_one():
    """Module-level and function-local imports both count. Units not in LAYERS sit above all of them."""
    rank = layer_index()
    top = len(LAYERS)
    bad = []
    for mod, deps in graph().items():
        src = unit_of(mod)
        if src not in rank:
            continue      # above the listed layers (substrates, services, CLI, experiments, the facade)
        for dep, line, _ in deps:
            dst = unit_of(dep)
            if rank.get(dst, top) > rank[src]:
                layer = LAYERS[rank[dst]][0] if dst in rank else "above the listed layers"
                bad.append(f"{mod}:{line} ({LAYERS[rank[src]][0]}) imports {dep} ({layer})")
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_no_import_circles():
    """No circle between modules through module-level imports (Tarjan's strongly connected components)."""
    # an edge from a module to its own package (``from . import register`` in a package whose
    # __init__ imports its parts: how a registry exposes its members) is not counted
    g = {m: sorted({d for d, _, top in deps if top and d != m and not m.startswith(d + ".")})
         for m, deps in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, "import circles (module-level imports):\n" + "\n".join(" <-> ".join(c) for c in circles)


# names of the standard library and of tuples that are private by spelling only (documented API)
_PUBLIC_BY_DOC = {"_exit", "_asdict", "_replace", "_fields", "_make", "_getframe"}


def test_no_module_reads_another_modules_private_attributes():
    """``obj._name`` with ``_name`` not defined in the reading module is a private attribute of another one.

    Give it a public, named accessor instead (as ``Cluster.link_index``, ``Engine.link_overrides``,
    ``Engine.latency_ms`` did). ``self._x`` / ``cls._x`` are always the module's own.
    """
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        own: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                own |= {(a.asname or a.name).split(".")[0] for a in node.names}
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                    for t in node.targets):
                own |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in own and node.attr not in _PUBLIC_BY_DOC):
                bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "private attributes read across modules:\n" + "\n".join(bad)
