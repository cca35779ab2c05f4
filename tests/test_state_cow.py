"""The structural-sharing maps behind ClusterState snapshots (issue 9): dict semantics, frozen views never change."""
import pickle
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dtlab
from dtlab.cowmap import CowMap, FrozenMap

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

ops = st.lists(st.tuples(st.sampled_from(["set", "pop", "freeze"]), st.integers(0, 40), st.integers()),
               max_size=400)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_cowmap_matches_dict_and_frozen_views_stay(seq):
    m, model, frozen = CowMap(), {}, []
    for op, k, v in seq:
        key = f"k{k}"
        if op == "set":
            m[key] = v
            model[key] = v
        elif op == "pop":
            assert m.pop(key, None) == model.pop(key, None)
        else:
            frozen.append((FrozenMap(m.freeze()), dict(model)))
        assert len(m) == len(model)
    assert list(m.items()) == list(model.items())          # same insertion order as a dict
    for view, expect in frozen:
        assert list(view.items()) == list(expect.items())
        assert len(view) == len(expect) and all(view[k] == v for k, v in expect.items())
        assert all(f"k{k}" not in view for k in range(41) if f"k{k}" not in expect)


def test_cowmap_grows_and_compacts_without_touching_old_views():
    m = CowMap((f"n{i}", i) for i in range(100))
    early = FrozenMap(m.freeze())
    for i in range(100, 5000):
        m[f"n{i}"] = i                                       # bucket count grows 4x twice
    mid = FrozenMap(m.freeze())
    for i in range(0, 4900):
        m.pop(f"n{i}")                                       # tombstones outnumber keys: compaction
    assert list(m.items()) == [(f"n{i}", i) for i in range(4900, 5000)]
    assert list(early.items()) == [(f"n{i}", i) for i in range(100)]
    assert len(mid) == 5000 and mid["n4321"] == 4321 and "n10" in mid


def test_snapshot_nodes_share_and_status_arrays_match():
    state = dtlab.ClusterState(dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml"))
    s0 = state.snapshot()
    state.apply({"kind": "telemetry", "node": "cloud-1", "cpu_util": 0.5, "ts": 1.0})
    state.apply({"kind": "node-down", "node": "edge-a-0"})
    state.apply({"kind": "node-add", "node": {"name": "new-0", "arch": "arm64", "cores": 2, "zone": "cloud"}})
    s1 = state.snapshot()
    assert s0.nodes["cloud-1"].cpu_util == 0.0 and s0.nodes["edge-a-0"].up and "new-0" not in s0.nodes
    names = [n.name for n in s1.cluster.nodes][::-1]        # any order the planner asks for
    up, cordoned, util, running = s1.nodes.status_arrays(names)
    assert up.tolist() == [s1.nodes[n].up for n in names]
    assert util.tolist() == [s1.nodes[n].cpu_util for n in names]
    assert cordoned.tolist() == [s1.nodes[n].cordoned for n in names]
    assert running.tolist() == [s1.nodes[n].running_cpu for n in names]
    u0 = s0.nodes.status_arrays([n.name for n in s0.cluster.nodes])[2]
    assert not np.any(u0), "an old snapshot's columns must not see later telemetry"
    back = pickle.loads(pickle.dumps(s1.nodes))              # e.g. shipped to a Dask worker
    assert list(back.items()) == list(s1.nodes.items())
    assert [a.tolist() for a in back.status_arrays(names)] == [a.tolist() for a in (up, cordoned, util, running)]


def test_plan_is_the_same_with_columns_and_without():
    """The column fast path of the node table gives the plan the NodeStatus path gives."""
    from types import MappingProxyType
    from dataclasses import replace

    cluster = dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml")
    job = dtlab.load_job(EXAMPLES / "job-pipeline.yaml")
    twin = dtlab.Twin(cluster)
    twin.state.apply_many([{"kind": "telemetry", "node": n.name, "cpu_util": 0.1 * (i % 5), "ts": 1.0}
                           for i, n in enumerate(cluster.nodes)] + [{"kind": "node-cordon", "node": "cloud-0"}])
    snap = twin.state.snapshot()
    plain = replace(snap, nodes=MappingProxyType(dict(snap.nodes.items())))
    for policy in ("greedy", "cvar"):
        a = twin.plan(job, policy=policy, samples=64, seed=3, snapshot=snap)
        b = twin.plan(job, policy=policy, samples=64, seed=3, snapshot=plain)
        assert a.placement == b.placement and a.prediction == b.prediction
