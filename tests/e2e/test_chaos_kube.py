"""e2e: the Chaos Mesh CRDs (data/chaos-mesh-crds) install into the local API server, every
manifest exported from every shipped scenario passes a server-side dry-run with strict field
validation, and their node selectors select real (KWOK) nodes of the cluster.

Needs the local control plane binaries (`bash cluster/localplane/build.sh`; else skipped, or failed
when DTLAB_REQUIRE_HEAVY=1). Run: `pytest tests/e2e/test_chaos_kube.py -v`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tests.heavy import require  # tests/ is importable: pytest pythonpath = ["."]

from dtlab import load_cluster
from dtlab.chaos import load_scenario
from dtlab.chaos.export import to_manifests
from dtlab.chaos.spec import SCENARIO_DIR, ZONE_LABEL, shipped_scenarios

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "data" / "chaos-mesh-crds"
PLURAL = {"NetworkChaos": "networkchaos", "PodChaos": "podchaos", "Workflow": "workflows"}
PLANE = f"chaos-e2e-{os.getpid()}"
NAMESPACE = "dtlab"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from dtlab.kube import localplane as lp

    ok, why = lp.binaries_available()
    require(ok, why)
    from kubernetes import client, config

    spec = yaml.safe_load((REPO / "examples" / "cluster-hetero.yaml").read_text())
    st = lp.up(spec["nodes"], tmp_path_factory.mktemp("chaosplane"), name=PLANE, timeout=180)
    try:
        c = config.new_client_from_config(config_file=st["kubeconfig"])
        ext = client.ApiextensionsV1Api(c)
        for path in sorted(CRD_DIR.glob("chaos-mesh.org_*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        deadline = time.monotonic() + 60
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRD_DIR.glob("chaos-mesh.org_*.yaml")]
        while True:
            established = {
                n for n in names
                if any(cond.type == "Established" and cond.status == "True"
                       for cond in (ext.read_custom_resource_definition(n).status.conditions or []))}
            if established == set(names):
                break
            assert time.monotonic() < deadline, f"CRDs not established: {set(names) - established}"
            time.sleep(0.3)
        core = client.CoreV1Api(c)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield {"custom": client.CustomObjectsApi(c), "core": core, "exc": client.exceptions.ApiException}
    finally:
        lp.down(PLANE)


def _manifests():
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    for name in shipped_scenarios():
        m = to_manifests(load_scenario(SCENARIO_DIR / f"{name}.yaml"), cluster, namespace=NAMESPACE)
        for obj in m["workflow"] + m["standalone"]:
            yield name, obj


def _dry_run(api, obj):
    return api["custom"].create_namespaced_custom_object(
        "chaos-mesh.org", "v1alpha1", obj["metadata"]["namespace"], PLURAL[obj["kind"]], obj,
        dry_run="All", field_validation="Strict")


def test_every_exported_manifest_passes_server_side_dry_run(api):
    checked = 0
    for scenario, obj in _manifests():
        try:
            out = _dry_run(api, obj)
        except api["exc"] as exc:
            pytest.fail(f"{scenario}: {obj['kind']} {obj['metadata']['name']} rejected: {exc.body}")
        assert out["metadata"]["name"] == obj["metadata"]["name"]
        assert out["spec"] == obj["spec"], "the server pruned or changed fields"
        checked += 1
    assert checked >= 2 * len(shipped_scenarios())
    # dry-run: nothing was stored
    for plural in PLURAL.values():
        assert api["custom"].list_namespaced_custom_object("chaos-mesh.org", "v1alpha1", NAMESPACE, plural)["items"] == []


def test_server_rejects_what_the_schema_forbids(api):
    _, obj = next(_manifests())
    bad = yaml.safe_load(yaml.safe_dump(obj))
    if bad["kind"] == "Workflow":
        bad["spec"]["templates"][0]["templateType"] = 7         # must be a string
    else:
        bad["spec"]["mode"] = "most"                            # not in the enum
    with pytest.raises(api["exc"]) as exc:
        _dry_run(api, bad)
    assert exc.value.status in (400, 422)


def test_selectors_select_real_kwok_nodes(api):
    names = {n.metadata.name for n in api["core"].list_node().items}
    for scenario, obj in _manifests():
        specs = []
        if obj["kind"] == "Workflow":
            for t in obj["spec"]["templates"]:
                specs += [t[k] for k in ("networkChaos", "podChaos") if k in t]
        else:
            specs.append(obj["spec"])
        for spec in specs:
            for sel in [spec["selector"]] + ([spec["target"]["selector"]] if "target" in spec else []):
                if "nodes" in sel:
                    assert set(sel["nodes"]) <= names, (scenario, sel)
                if "nodeSelectors" in sel:
                    label = ",".join(f"{k}={v}" for k, v in sel["nodeSelectors"].items())
                    hit = api["core"].list_node(label_selector=label).items
                    assert hit, f"{scenario}: nodeSelectors {label} select no node"
                    if ZONE_LABEL in sel["nodeSelectors"]:
                        assert all(n.metadata.labels[ZONE_LABEL] == sel["nodeSelectors"][ZONE_LABEL] for n in hit)
