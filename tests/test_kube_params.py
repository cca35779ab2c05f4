"""params/V1-kube, V2-kube, V3-kube (and their smoke sizes) validate: every key known to the
experiment, substrate kube with real nodes, options the kube substrate accepts, policies that exist,
and the cluster and jobs load. Running them needs root and real nodes (tests/e2e/test_realnodes_experiments.py)."""
from pathlib import Path

import pytest

from dtlab import policies, runner
from dtlab.model import load_cluster, load_job
from dtlab.substrates.kube import kube_options

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["params/V1-kube.yaml", "params/V2-kube.yaml", "params/V3-kube.yaml",
                                  "params/V4-kube.yaml", "params/smoke/V1-kube.yaml", "params/smoke/V2-kube.yaml",
                                  "params/smoke/V3-kube.yaml", "params/smoke/V4-kube.yaml"])
def test_kube_params_validate(path):
    exp = Path(path).name.split("-")[0]
    prep = runner.prepare(exp, params_file=ROOT / path)
    p = prep.params
    assert p["substrate"] == "kube"
    opts = kube_options(p["substrate_opts"])
    assert opts["real_nodes"] == "all" and opts["time_scale"] == 1.0
    cluster = load_cluster(ROOT / p["cluster"])
    archs = {n.arch for n in cluster.nodes}
    assert {"amd64", "arm64"} <= archs and any("wasm" in n.formats for n in cluster.nodes)
    for name in p.get("policies", [p.get("policy")]):
        if name is not None:
            policies.get(name)
    for j in p.get("jobs", []) if isinstance(p.get("jobs"), list) else []:
        load_job(ROOT / j, cluster)
    from dtlab.chaos.spec import expand, load_scenario, scenario_path
    for sc in p.get("scenarios", []):      # V4: every fault selects nodes of this cluster
        if sc != "none":
            assert expand(load_scenario(scenario_path(ROOT / sc if (ROOT / sc).exists() else sc)), cluster)
