"""The one link rule (dtlab.model.resolve_link): its precedence, its cut convention, and every user agreeing with it.

The vectorised tables of the planner (dtlab.predict.tables) are the rule in array form, so they
are checked pair by pair against the resolver on a cluster with every kind of entry: zone-pair
and node-pair spec links, a zone-to-node spec link, zone and node overrides, cuts, and an origin
zone with no nodes.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import dtlab
from dtlab.des import Engine
from dtlab.model import (DEFAULT_INTRA_ZONE, Link, LinkCutError, base_for_change, cluster_from_dict, job_from_dict,
                         link_keys, resolve_link, spec_link)
from dtlab.predict.tables import _link_params, cluster_table

PKG = Path(dtlab.__file__).resolve().parent


def cluster():
    return cluster_from_dict({
        "apiVersion": "dtlab/v1", "kind": "Cluster",
        "nodes": [{"name": "a0", "arch": "amd64", "cores": 2, "zone": "za"},
                  {"name": "a1", "arch": "amd64", "cores": 2, "zone": "za"},
                  {"name": "b0", "arch": "amd64", "cores": 2, "zone": "zb"},
                  {"name": "b1", "arch": "amd64", "cores": 2, "zone": "zb"},
                  {"name": "c0", "arch": "amd64", "cores": 2, "zone": "zc"}],
        "links": [{"a": "za", "b": "zb", "latency_ms": 10, "bandwidth_mbps": 100},
                  {"a": "a0", "b": "b1", "latency_ms": 3, "bandwidth_mbps": 1000},          # node pair wins
                  {"a": "zc", "b": "a1", "latency_ms": 7, "bandwidth_mbps": 50},            # zone -> node
                  {"a": "zb", "b": "zc", "latency_ms": 20, "bandwidth_mbps": 10, "directed": True}]})


def test_precedence_and_the_cut_convention():
    c = cluster()
    assert resolve_link(c, {}, "a0", "a0") is None                                   # same node: no transfer
    assert resolve_link(c, {}, "a0", "a1").latency_ms == DEFAULT_INTRA_ZONE["latency_ms"]
    assert resolve_link(c, {}, "a0", "b0").latency_ms == 10                          # zone pair
    assert resolve_link(c, {}, "b1", "a0").latency_ms == 3                           # node pair, both ways
    assert resolve_link(c, {}, "zc", "a1").latency_ms == 7                           # origin zone -> node
    assert resolve_link(c, {}, "b0", "c0").latency_ms == 20
    with pytest.raises(LinkCutError) as exc:                                         # directed: no way back
        resolve_link(c, {}, "c0", "b0")
    assert exc.value.cut is False and exc.value.field == "links" and "no link between zone" in exc.value.rule
    overrides = {("za", "zb"): Link("za", "zb", 99, 100), ("a0", "b0"): None}
    assert resolve_link(c, overrides, "a1", "b1").latency_ms == 99                  # zone override beats the spec
    assert resolve_link(c, overrides, "a0", "b1").latency_ms == 99                  # ... and a node-pair spec link
    with pytest.raises(LinkCutError) as exc:
        resolve_link(c, overrides, "a0", "b0")
    assert exc.value.cut is True and str(exc.value) == "links: link a0->b0 is cut"
    assert isinstance(exc.value, dtlab.SpecError)
    assert link_keys(c, "zc", "a1") == (("zc", "a1"), ("zc", "za"))


def test_every_user_agrees_with_the_resolver():
    c = cluster()
    state = dtlab.ClusterState(c)
    state.apply_many([{"kind": "link", "a": "za", "b": "zc", "latency_ms": 30},
                      {"kind": "link", "a": "a1", "b": "b0", "up": False},
                      {"kind": "link", "a": "zb", "b": "zb", "latency_ms": 2}])
    snap = state.snapshot()
    ov = snap.link_overrides
    names = [n.name for n in c.nodes]
    for src in names:
        for dst in names:
            try:
                want = resolve_link(c, ov, src, dst)
            except LinkCutError:
                want = "cut"
            got = snap.link(src, dst) if snap.reachable(src, dst) else "cut"
            assert got == want, (src, dst)
            if src != dst and want != "cut" and not ov:
                assert c.link(src, dst) == want
    # the planner's tables: node rows and origin rows (a zone with nodes, one without, one with a zone->node link)
    ct = cluster_table(c, ov)
    for src in names:
        row = ct.row(ct.index[src])
        for dst in names:
            try:
                want = _link_params(resolve_link(c, ov, src, dst)) if src != dst else (0.0,) * 5 + (True,)
            except LinkCutError:
                want = _link_params(None)
            got = tuple(float(a[ct.index[dst]]) for a in (row.lat, row.ms_per_mb, row.jitter, row.loss, row.rto)) \
                + (bool(row.ok[ct.index[dst]]),)
            assert got == pytest.approx(want), (src, dst)
    for zone in ("za", "zc", "nowhere"):
        row = ct.origin_row(zone)
        for dst in names:
            try:
                want = _link_params(resolve_link(c, ov, zone, dst))
            except LinkCutError:
                want = _link_params(None)
            got = tuple(float(a[ct.index[dst]]) for a in (row.lat, row.ms_per_mb, row.jitter, row.loss, row.rto)) \
                + (bool(row.ok[ct.index[dst]]),)
            assert got == pytest.approx(want), (zone, dst)


def test_a_link_event_on_a_node_pair_starts_from_the_zone_link_as_a_degradation_does():
    """state.py and chaos share base_for_change: changing only the loss of a0->b0 keeps the zones' 10 ms."""
    c = cluster()
    state = dtlab.ClusterState(c)
    state.apply({"kind": "link", "a": "a0", "b": "b0", "loss": 0.1})
    link = state.snapshot().link("a0", "b0")
    assert (link.latency_ms, link.bandwidth_mbps, link.loss) == (10, 100, 0.1)
    from dtlab.chaos.spec import degraded_link
    assert degraded_link(c, "a0", "b0", {"loss": 0.1}) == link
    assert base_for_change(c, "zc", "za") == Link("zc", "za", **DEFAULT_INTRA_ZONE)  # unlisted pair: the default
    assert spec_link(c, "zc", "za") is None


def test_a_cut_blocks_the_engine_and_a_missing_link_is_an_error():
    """The engine waits out a cut (partition) but refuses a plan across zones the spec never connects."""
    c = cluster()
    job = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j"},
                                     "spec": {"stages": [{"id": "s", "compute": {"duration_ms": 10}, "output_mb": 1},
                                                         {"id": "t", "after": ["s"], "compute": {"duration_ms": 10}}]}})
    eng = Engine(c, None, np.random.default_rng(0), links={("a0", "b0"): None})
    eng.submit(job, {"s": "a0", "t": "b0"})
    eng.set_link("a0", "b0", Link("a0", "b0", 1, 1000), at_ms=500)
    eng.run()
    assert eng.latency_ms("j") > 500
    eng = Engine(c, None, np.random.default_rng(0))
    eng.submit(job, {"s": "c0", "t": "b0"})
    with pytest.raises(LinkCutError, match="no link between zone 'zc' and zone 'zb'"):
        eng.run()


# ---------------------------------------------------------------- one definition of the rule

def _modules():
    for path in sorted(PKG.rglob("*.py")):
        yield path.relative_to(PKG).as_posix(), ast.parse(path.read_text(), str(path))


def test_the_link_rule_has_exactly_one_definition():
    """One resolver; the intra-zone default, the spec's link table and the cut error used nowhere else.

    What counts as "resolving a link" here: defining resolve_link (or one of the helpers it
    replaced), building a Link from DEFAULT_INTRA_ZONE, raising LinkCutError, or reading the
    spec's link table ``Cluster.link_index``. Only model.py may; predict/tables.py reads the
    table's *keys* to learn which node pairs need the rule applied one by one (it then calls
    resolve_link), which is the one other read allowed.
    """
    defs, uses = [], {}
    retired = {"origin_link", "zone_link", "_zone_link", "pair_keys", "base_link", "_link_index"}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name == "resolve_link":
                    defs.append(rel)
                assert node.name not in retired, f"{rel}: {node.name} is a second link resolver"
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in ("DEFAULT_INTRA_ZONE", "LinkCutError", "link_index", "_link_index"):
                if name == "LinkCutError" and rel != "model.py":
                    continue      # catching it is the convention; raising is checked below
                uses.setdefault(name, set()).add(rel)
            if isinstance(node, ast.Raise) and node.exc is not None and "LinkCutError" in ast.unparse(node.exc):
                uses.setdefault("raise LinkCutError", set()).add(rel)
    assert defs == ["model.py"]
    assert uses["DEFAULT_INTRA_ZONE"] == {"model.py"}
    assert uses["raise LinkCutError"] == {"model.py"}
    assert uses["link_index"] == {"model.py", "predict/tables.py"}
    assert "_link_index" not in uses
