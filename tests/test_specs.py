"""Spec loading: the documented shapes load, bad input names the field path and the rule."""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dtlab
from dtlab import SpecError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def job_doc(stages, **meta):
    return {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j", **meta},
            "spec": {"stages": stages}}


def test_examples_load_and_fit_the_example_cluster():
    cluster = dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml")
    assert len(cluster.nodes) >= 6 and len(cluster.zones) == 3
    assert {n.arch for n in cluster.nodes} == {"amd64", "arm64", "riscv64"}
    assert any(l.loss > 0 for l in cluster.links)
    for path in EXAMPLES.glob("job-*.yaml"):
        job = dtlab.load_job(path, cluster=cluster)
        assert job.topo_order[0] == job.stages[0].id
    workload = dtlab.load_workload(EXAMPLES / "workload.yaml")
    assert workload.template.name == "video-1" and workload.count == 200


def test_legacy_fabric_job_layout_loads():
    job = dtlab.load_job(EXAMPLES / "job-legacy.yaml")
    assert job.name == "legacy-etl" and job.deadline_ms == 4000 and job.origin_zone == "edge-b"
    assert job.stages[0].constraints.arch == ("amd64",)
    assert job.stages[1].after == ("extract",)


def test_issue_workload_shape_with_inline_template():
    w = dtlab.load_workload({
        "apiVersion": "dtlab/v1", "kind": "Workload",
        "arrivals": {"process": "poisson", "rate_per_s": 3.2},
        "jobs": {"count": 20000,
                 "template": {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "mmc"},
                              "spec": {"stages": [{"id": "s", "compute": {"cpu": 1, "duration_ms": 1000}}]}},
                 "duration_scale": {"dist": "exponential"}},
    })
    assert w.arrivals.rate_per_s == 3.2 and w.count == 20000
    assert w.template.stages[0].compute.duration_ms == 1000 and w.duration_scale.dist == "exponential"


def test_json_cluster_loads(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"apiVersion": "dtlab/v1", "kind": "Cluster",
                                "nodes": [{"name": "n", "arch": "arm64", "cores": 2}]}))
    assert dtlab.load_cluster(path).nodes[0].arch == "arm64"


@pytest.mark.parametrize("stages,field,rule", [
    ([{"id": "a", "compute": {"duration_ms": 1}}, {"id": "b", "compute": {"duration_ms": 0}}],
     "spec.stages[1].compute.duration_ms", "must be > 0"),
    ([{"id": "a", "compute": {"duration_ms": 1}, "after": ["zz"]}], "spec.stages[0].after[0]", "unknown stage id"),
    ([{"id": "a", "compute": {"duration_ms": 1}, "after": ["b"]},
      {"id": "b", "compute": {"duration_ms": 1}, "after": ["a"]}], "spec.stages", "cycle"),
    ([{"id": "a", "compute": {"duration_ms": 1}, "colour": "red"}], "spec.stages[0].colour", "unknown key"),
    ([{"id": "a", "compute": {"duration_ms": 1, "cpu": "two"}}], "spec.stages[0].compute.cpu", "must be a number"),
    ([{"id": "a", "compute": {"duration_ms": 1}, "constraints": {"arch": ["sparc"]}}],
     "spec.stages[0].constraints.arch[0]", "must be one of"),
    ([{"id": "a", "compute": {"duration_ms": 1}}, {"id": "a", "compute": {"duration_ms": 1}}],
     "spec.stages[1].id", "duplicate"),
    ([], "spec.stages", "must not be empty"),
])
def test_bad_jobs_name_field_and_rule(stages, field, rule):
    with pytest.raises(SpecError) as err:
        dtlab.load_job(job_doc(stages))
    assert err.value.field == field
    assert rule in str(err.value)
    assert str(err.value).startswith(field + ":")


def test_job_no_node_satisfies_constraints():
    cluster = dtlab.load_cluster(EXAMPLES / "cluster-hetero.yaml")
    job = job_doc([{"id": "big", "compute": {"cpu": 64, "duration_ms": 10}}])
    with pytest.raises(SpecError, match="no node of cluster .* satisfies stage 'big'") as err:
        dtlab.load_job(job, cluster=cluster)
    assert err.value.field == "spec.stages[0].constraints"


def test_bad_cluster_fields():
    with pytest.raises(SpecError, match=r"^nodes\[0\]\.cores: must be >= 1"):
        dtlab.load_cluster({"kind": "Cluster", "nodes": [{"name": "n", "cores": 0}]})
    with pytest.raises(SpecError, match=r"^links\[0\]\.b: 'mars' is neither a zone nor a node"):
        dtlab.load_cluster({"kind": "Cluster", "nodes": [{"name": "n", "zone": "z"}],
                            "links": [{"a": "z", "b": "mars", "latency_ms": 1, "bandwidth_mbps": 1}]})
    with pytest.raises(SpecError, match=r"^nodes\[1\]\.name: duplicate"):
        dtlab.load_cluster({"kind": "Cluster", "nodes": [{"name": "n"}, {"name": "n"}]})
    with pytest.raises(SpecError, match=r"^apiVersion"):
        dtlab.load_cluster({"apiVersion": "v2", "kind": "Cluster", "nodes": [{"name": "n"}]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        dtlab.load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Job\nmetadata: {name: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        dtlab.load_job(bad)


def test_link_resolution_prefers_node_pairs_and_defaults_inside_a_zone():
    cluster = dtlab.load_cluster({"kind": "Cluster", "nodes": [
        {"name": "a0", "zone": "a"}, {"name": "a1", "zone": "a"}, {"name": "b0", "zone": "b"}],
        "links": [{"a": "a", "b": "b", "latency_ms": 30, "bandwidth_mbps": 10},
                  {"a": "a1", "b": "b0", "latency_ms": 5, "bandwidth_mbps": 10, "directed": True}]})
    assert cluster.link("a0", "a0") is None
    assert cluster.link("a0", "a1").latency_ms == 0.2
    assert cluster.link("b0", "a0").latency_ms == 30
    assert cluster.link("a1", "b0").latency_ms == 5
    assert cluster.link("b0", "a1").latency_ms == 30  # directed: the reverse falls back to the zone link


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=12), st.integers(1, 8))
def test_random_dags_load_in_topological_order_or_report_a_cycle(edges, n):
    stages = [{"id": f"s{i}", "compute": {"duration_ms": 1},
               "after": sorted({f"s{b}" for a, b in edges if a == i and b < n and b != i})}
              for i in range(n)]
    try:
        job = dtlab.load_job(job_doc(stages))
    except SpecError as exc:
        assert "cycle" in exc.rule
        return
    position = {sid: i for i, sid in enumerate(job.topo_order)}
    assert sorted(position) == sorted(s["id"] for s in stages)
    for s in job.stages:
        assert all(position[d] < position[s.id] for d in s.after)
