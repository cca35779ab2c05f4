"""Chaos Mesh export: every manifest of every shipped scenario validates against the real CRD
openAPIV3Schema (from data/chaos-mesh-crds), the Workflow's timing reproduces the
scenario's, and the link deltas are what the spec means."""
from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from dtlab import SpecError, load_cluster
from dtlab.chaos import load_scenario, scenario_from_dict
from dtlab.chaos.export import PERMANENT_HOLD_S, go_duration, to_manifests, write
from dtlab.chaos.spec import SCENARIO_DIR, expand, shipped_scenarios
from dtlab.cli import main as chaos_main

CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "chaos-mesh-crds"
CLUSTER = load_cluster("examples/cluster-hetero.yaml")


def structural_to_jsonschema(node):
    """Minimal OpenAPI-v3-structural -> JSON Schema: int-or-string, and no unknown fields
    (the API server prunes them; with fieldValidation=Strict it rejects them, so do we)."""
    if isinstance(node, list):
        return [structural_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_jsonschema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("description", "format")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _validators():
    out = {}
    for path in sorted(CRD_DIR.glob("chaos-mesh.org_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        version, = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        schema = structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server e2e
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return out


VALIDATORS = _validators()
DNS = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check(obj):
    assert obj["apiVersion"] == "chaos-mesh.org/v1alpha1"
    errors = sorted(VALIDATORS[obj["kind"]].iter_errors(obj), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    name = obj["metadata"]["name"]
    assert DNS.match(name) and len(name) <= 63, name


def all_manifests(m):
    return m["workflow"] + m["standalone"]


def test_crds_are_the_three_we_export():
    assert set(VALIDATORS) == {"NetworkChaos", "PodChaos", "Workflow"}


@pytest.mark.parametrize("name", shipped_scenarios())
def test_every_shipped_scenario_exports_schema_valid_manifests(name):
    s = load_scenario(SCENARIO_DIR / f"{name}.yaml")
    for obj in all_manifests(to_manifests(s, s.cluster())):
        check(obj)


def test_schema_check_rejects_a_broken_manifest():
    s = load_scenario(SCENARIO_DIR / "edge-cloud-partition.yaml")
    obj = to_manifests(s, CLUSTER)["standalone"][0]
    obj["spec"]["action"] = "explode"
    with pytest.raises(AssertionError, match="action"):
        check(obj)
    obj["spec"]["action"] = "partition"
    obj["spec"]["target"]["selector"]["zone"] = "edge-a"      # not a Chaos Mesh selector field
    with pytest.raises(AssertionError, match="zone"):
        check(obj)


def _templates(wf):
    return {t["name"]: t for t in wf["spec"]["templates"]}


def _secs(d):
    m = re.fullmatch(r"([0-9.]+)(ms|s)", d)
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def _flatten(templates, name, t0, out):
    """Walk the Workflow like Chaos Mesh does: Serial children one after another by deadline."""
    t = templates[name]
    kind = t["templateType"]
    if kind == "Parallel":
        for c in t["children"]:
            _flatten(templates, c, t0, out)
        return t0
    if kind == "Serial":
        for c in t["children"]:
            t0 = _flatten(templates, c, t0, out)
        return t0
    end = t0 + _secs(t["deadline"])
    if kind != "Suspend":
        out.append((kind, t0, end))
    return end


@pytest.mark.parametrize("name", shipped_scenarios())
def test_workflow_timing_reproduces_the_scenario(name):
    s = load_scenario(SCENARIO_DIR / f"{name}.yaml")
    wf, = to_manifests(s, s.cluster())["workflow"]
    templates = _templates(wf)
    assert len(templates) == len(wf["spec"]["templates"])            # unique names
    for t in templates.values():
        for c in t.get("children", []):
            assert c in templates
    got = []
    _flatten(templates, wf["spec"]["entry"], 0.0, got)
    def end(e):
        if e.duration_s is not None:
            return e.end_s
        return e.start_s + 1.0 if e.kind == "pod-kill" else s.end_s + PERMANENT_HOLD_S

    want = [("PodChaos" if e.kind in ("node-failure", "pod-kill") else "NetworkChaos", e.start_s, end(e))
            for e in expand(s, s.cluster())]
    # pod-kill nodes live 1 s (POD_KILL_DEADLINE); permanent failures are held past the scenario's end
    assert sorted(got) == sorted(want)


def test_link_degradation_exports_deltas_over_the_cluster_link():
    s = scenario_from_dict({"kind": "FaultScenario", "metadata": {"name": "x"}, "faults": [
        {"kind": "link-degradation", "at_s": 0, "duration_s": 5, "between": ["edge-a", "cloud"],
         "latency_ms": 140, "loss": 0.0595}]})
    spec = to_manifests(s, CLUSTER)["standalone"][0]["spec"]
    assert spec["action"] == "netem" and spec["delay"] == {"latency": "100ms"}
    assert float(spec["loss"]["loss"]) == pytest.approx(5.0, abs=1e-3)      # 1-(1-0.0595)/(1-0.01)
    assert spec["duration"] == "5s"
    # without a cluster the values are taken as they are
    spec = to_manifests(s, None)["standalone"][0]["spec"]
    assert spec["delay"] == {"latency": "140ms"}


def test_bandwidth_only_uses_the_bandwidth_action_with_tbf_parameters():
    s = scenario_from_dict({"kind": "FaultScenario", "metadata": {"name": "x"}, "faults": [
        {"kind": "link-degradation", "at_s": 0, "duration_s": 5, "between": ["edge-a-0", "cloud-0"],
         "bandwidth_mbps": 8}]})
    obj = to_manifests(s, CLUSTER)["standalone"][0]
    check(obj)
    assert obj["spec"]["action"] == "bandwidth" and obj["spec"]["bandwidth"]["rate"] == "8mbps"
    assert obj["spec"]["selector"]["nodes"] == ["edge-a-0"] and obj["spec"]["target"]["selector"]["nodes"] == ["cloud-0"]


def test_selectors_map_to_chaos_mesh_fields():
    s = load_scenario(SCENARIO_DIR / "bad-day.yaml")
    by_path = {o["metadata"]["annotations"]["dtlab.io/fault-path"]: o for o in to_manifests(s, CLUSTER)["standalone"]}
    blackout = by_path["faults[1]"]["spec"]
    assert blackout["action"] == "pod-failure" and blackout["duration"] == "30s"
    assert blackout["selector"]["nodeSelectors"] == {"topology.kubernetes.io/zone": "edge-b"}
    kill = by_path["faults[3]"]["spec"]
    assert kill["action"] == "pod-kill" and "duration" not in kill
    assert kill["selector"]["labelSelectors"] == {"dtlab.io/job": "video-1", "dtlab.io/stage": "infer"}
    part = by_path["faults[2]"]["spec"]
    assert part["action"] == "partition" and part["direction"] == "both"


def test_go_durations_match_the_crd_pattern():
    pat = re.compile(r"^[0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h)$")
    for x in (0.0005, 0.25, 1, 1.5, 60, 3600.125, 1e6):
        assert pat.match(go_duration(x)), go_duration(x)
    assert go_duration(0.25) == "250ms" and go_duration(90) == "90s"


def test_several_zones_need_a_cluster_to_export():
    s = scenario_from_dict({"kind": "FaultScenario", "metadata": {"name": "x"}, "faults": [
        {"kind": "node-failure", "at_s": 0, "duration_s": 5, "selector": {"zone": ["edge-a", "edge-b"]}}]})
    with pytest.raises(SpecError) as exc:
        to_manifests(s, None)
    assert exc.value.field == "faults[0].selector.zone"
    spec = to_manifests(s, CLUSTER)["standalone"][0]["spec"]
    assert spec["selector"]["nodes"] == ["edge-a-0", "edge-a-1", "edge-b-0", "edge-b-1"]


def test_cli_export_writes_files_that_load(tmp_path):
    assert chaos_main(["chaos", "export", "rolling-node-failures", "-o", str(tmp_path)]) == 0
    files = sorted((tmp_path / "rolling-node-failures").rglob("*.yaml"))
    assert len(files) == 4
    for f in files:
        check(yaml.safe_load(f.read_text()))
    assert write(load_scenario(SCENARIO_DIR / "zone-blackout.yaml"), tmp_path)[0].name == "workflow.yaml"
