"""Unit tests of the real-node pieces that need no root: sizing, configs, images per format, the
worker's termination-message report, the pod a real node gets. The e2e in tests/e2e/test_realnodes.py
runs them for real."""
import json

import pytest
import yaml

from dtlab.kube import realnodes as rn
from dtlab.kube.actuator import PodSpec, pod_manifest, pod_spec_for
from dtlab.kube.localplane import node_manifest
from dtlab.kube.observer import pod_info, worker_report
from dtlab.model import load_cluster, load_job
from dtlab.substrates.kube import real_nodes_of

REPORT = {"dtlab_worker": 1, "start_ns": 1_700_000_000_123_456_789, "end_ns": 1_700_000_000_623_456_789,
          "uname_m": "aarch64", "format": "native", "exec": "direct", "exit": 0,
          "kernel": {"kernel": "mix", "arch": "arm64", "iters": 50, "wall_ms": 480.5, "cpu_ms": 20.0}}


def test_worker_report_parses_ns_times_and_arch():
    r = worker_report(json.dumps(REPORT) + "\n")
    assert r["start_ts"] == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert (r["end_ts"] - r["start_ts"]) * 1000 == pytest.approx(500.0, abs=1e-3)
    assert r["uname_m"] == "aarch64" and r["kernel_arch"] == "arm64" and r["exit"] == 0
    assert r["kernel_cpu_ms"] == 20.0                  # the kernel's CPU clock: the energy proxy's input
    wasi = {**REPORT, "kernel": {**REPORT["kernel"], "cpu_ms": -1}}
    assert worker_report(json.dumps(wasi))["kernel_cpu_ms"] is None      # unsupported: no number invented


@pytest.mark.parametrize("msg", [None, "", "OOMKilled", '{"dtlab_worker": 1, "start_ns": "x"}', "dtlab_worker {"])
def test_worker_report_ignores_other_messages(msg):
    assert worker_report(msg) is None


def test_pod_info_carries_the_report_from_the_termination_message():
    pod = {"metadata": {"name": "p", "uid": "u", "labels": {}, "annotations": {"dtlab.io/job-name": "j",
                                                                            "dtlab.io/stage-id": "s"}},
           "spec": {"nodeName": "edge-a-0"},
           "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {
               "startedAt": "2023-11-14T22:13:20Z", "finishedAt": "2023-11-14T22:13:21Z",
               "message": json.dumps(REPORT)}}}]}}
    info = pod_info(pod)
    assert info["worker"]["uname_m"] == "aarch64"


@pytest.mark.parametrize("arch,fmt,image", [
    ("amd64", "native", "docker.io/dtlab/worker:amd64"), ("arm64", "native", "docker.io/dtlab/worker:arm64"),
    ("amd64", "qemu-riscv64", "docker.io/dtlab/worker:riscv64"), ("riscv64", "wasm", "docker.io/dtlab/worker:wasm")])
def test_image_for_node_arch_and_format(arch, fmt, image):
    assert rn.image_for(arch, fmt) == image


def test_image_for_unknown_arch_is_a_clear_error():
    with pytest.raises(rn.RealNodeError, match="no worker image for arch 'mips'"):
        rn.image_for("mips", "native")


def test_cpu_scale_fits_the_real_nodes_into_the_budget():
    nodes = [{"cores": 8, "speed": 1.0}, {"cores": 4, "speed": 0.5}]
    s = rn.cpu_scale(nodes, budget=1.0)
    assert s == pytest.approx(0.1)
    assert rn.cpu_scale([{"cores": 1, "speed": 0.5}], budget=1.0) == 1.0     # never above real speed


def test_prepare_assigns_cidrs_cgroups_and_quotas():
    c = load_cluster("examples/cluster-hetero.yaml")
    nodes = [{"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed} for n in c.nodes]
    recs = rn.prepare(nodes, ["cloud-0", "edge-a-1"], "t", budget=1.0)
    assert [r["index"] for r in recs] == [1, 2]
    assert recs[0]["cgroup"] == "dtlab-t-cloud-0" and len(recs[0]["bridge"]) <= 15
    assert recs[0]["cpus"] / recs[1]["cpus"] == pytest.approx((8 * 1.0) / (4 * 0.4))
    assert sum(r["cpus"] for r in recs) == pytest.approx(1.0)
    with pytest.raises(rn.RealNodeError, match="not nodes of the cluster: \\['nope'\\]"):
        rn.prepare(nodes, ["nope"], "t")


def test_configs_have_the_settings_this_host_needs(tmp_path):
    toml = rn._containerd_config(tmp_path, tmp_path / "cni", "/usr/lib/cni")
    assert "restrict_oom_score_adj = true" in toml and f'address = "{tmp_path}/containerd.sock"' in toml
    assert rn.PAUSE_IMAGE in toml
    rec = {"name": "n", "index": 3, "cgroup": "dtlab-t-n"}
    kc = rn._kubelet_config(tmp_path, rec, tmp_path / "pki", (10250, 10248))
    assert kc["failCgroupV1"] is False and kc["cgroupRoot"] == "/dtlab-t-n" and kc["podCIDR"] == "10.244.3.0/24"
    assert kc["containerRuntimeEndpoint"] == f"unix://{tmp_path}/containerd.sock"
    yaml.safe_dump(kc)
    cni = rn._cni_conflist(3, tmp_path, "dtrn3-t")
    assert cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == "10.244.3.0/24"


def test_label_patch_gives_the_spec_labels_over_the_kubelets():
    c = load_cluster("examples/cluster-hetero.yaml")
    node = c.node("edge-a-0")
    patch = rn.label_patch({"scale": 0.05}, node_manifest(node))
    labels = patch["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == "arm64" and labels["topology.kubernetes.io/zone"] == "edge-a"
    assert labels["dtlab.io/node-kind"] == "real" and labels["dtlab.io/cpu-scale"] == "0.05"
    assert labels["dtlab.io/format-qemu"] == "true"
    assert "kwok.x-k8s.io/node" not in patch["metadata"]["annotations"]


def test_real_node_pod_runs_the_worker_image_with_the_work(monkeypatch):
    from dtlab.fabric import worker
    monkeypatch.setattr(worker, "iterations_per_ms", lambda kernel="mix", refresh=False: 10.0)
    c = load_cluster("examples/cluster-hetero.yaml")
    job = load_job("examples/job-pipeline.yaml", c)
    spec = pod_spec_for(job, "decode", c.node("edge-a-0"), "native", 0, 700.0, real_scale=0.1, seed=7)
    body = pod_manifest(spec)
    ctr = body["spec"]["containers"][0]
    assert ctr["image"] == "docker.io/dtlab/worker:arm64" and ctr["imagePullPolicy"] == "Never"
    assert ctr["args"] == ["--format", "native", "--kernel", "mix", "--iters", "400", "--seed", "7"]  # 400 ms*0.1*10
    assert ctr["resources"]["limits"]["cpu"] == "60m"        # speed 0.6 * scale 0.1
    assert body["metadata"]["labels"]["dtlab.io/node-kind"] == "real"
    wasm = pod_manifest(pod_spec_for(job, "decode", c.node("edge-a-0"), "wasm", 0, 700.0, real_scale=0.1))
    assert "runtimeClassName" not in wasm["spec"]          # no wasm shim on real nodes: runc + wazero
    kwok = pod_manifest(PodSpec("j", "s", "n", format="wasm"))
    assert kwok["spec"]["runtimeClassName"] == "wasm" and kwok["metadata"]["labels"]["dtlab.io/node-kind"] == "kwok"


def test_real_nodes_of_reads_kind_and_scale_labels():
    nodes = [{"metadata": {"name": "a", "labels": {"dtlab.io/node-kind": "real", "dtlab.io/cpu-scale": "0.25"}}},
             {"metadata": {"name": "b", "labels": {"type": "kwok"}}}]
    assert real_nodes_of(nodes) == {"a": 0.25}


@pytest.mark.parametrize("argv,msg", [
    (["--cluster", "examples/cluster-hetero.yaml", "--real-nodes", "nope,cloud-0"],
     "--real-nodes: not nodes of the cluster: ['nope']"),
    (["--real-nodes", "all"], "--real-nodes: needs --cluster"),
    (["--cluster", "examples/cluster-hetero.yaml", "--node-grace", "0"], "--node-grace: must be in [1, 3600]"),
])
def test_cluster_up_bad_real_node_options_exit_2_before_starting_anything(argv, msg, capsys, monkeypatch):
    from dtlab import cli
    from dtlab.kube import localplane as lp
    called = []
    monkeypatch.setattr(lp, "binaries_available", lambda: (True, ""))
    monkeypatch.setattr(lp, "up", lambda *a, **k: called.append(1))
    code = cli.main(["cluster", "up", "--name", "unit-never-started", *argv])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and not called


# ---------------------------------------------------------------- links between real nodes (dtlab.kube.links)
def test_worker_report_carries_the_input_fetch():
    r = worker_report(json.dumps({**REPORT, "fetch_ns": 438_800_000, "fetch_bytes": 2_000_000, "fetch_failed": 0}))
    assert r["fetch_ms"] == pytest.approx(438.8) and r["fetch_bytes"] == 2_000_000 and r["fetch_failed"] == 0
    assert "fetch_ms" not in worker_report(json.dumps(REPORT))


def test_fetch_values_become_worker_arguments():
    from dtlab.model import Node
    job = load_job({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "j"},
                    "spec": {"stages": [{"id": "a", "compute": {"cpu": 1, "duration_ms": 100}, "output_mb": 2}]}})
    node = Node("n", "amd64", 2)
    spec = pod_spec_for(job, "a", node, "native", 0, 100.0, real_scale=0.5,
                        fetch=("10.244.1.1:41302:2000000:2", "10.244.1.1:41303:5:3"))
    args = list(spec.args)
    assert args[-4:] == ["--fetch", "10.244.1.1:41302:2000000:2", "--fetch", "10.244.1.1:41303:5:3"]
    assert "--fetch" not in pod_spec_for(job, "a", node, "native", 0, 100.0, real_scale=0.5).args


def test_fetch_endpoint_is_the_relay_on_the_destination_or_the_source_store():
    from dtlab.kube import links
    nets = links.node_nets([{"name": "x", "index": 1, "net": "10.201", "bridge": "b1"},
                            {"name": "y", "index": 2, "net": "10.201", "bridge": "b2"}])
    pl = links.PodLinks.__new__(links.PodLinks)      # no servers, no tc: only the addressing
    pl.nodes, pl.use_relay = nets, True
    assert pl.fetch_arg("x", "y", 2.0) == f"10.201.2.1:{links.RELAY_PORT_BASE + 1}:2000000:1"
    pl.use_relay = False
    assert pl.fetch_arg("x", "y", 2.0) == f"10.201.1.1:{links.STORE_PORT}:2000000:1"


def test_origin_zone_input_has_its_own_source_index_and_endpoint():
    from dtlab.kube import links
    c = load_cluster({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "c"},
                      "nodes": [{"name": "x", "arch": "amd64", "cores": 1, "zone": "za"},
                                {"name": "y", "arch": "amd64", "cores": 1, "zone": "zb"},
                                {"name": "w", "arch": "amd64", "cores": 1, "zone": "zc"}],
                      "links": [{"a": "za", "b": "zb", "latency_ms": 20, "bandwidth_mbps": 40},
                                {"a": "zc", "b": "zb", "latency_ms": 5, "bandwidth_mbps": 100}]})
    zones = links.origin_zones(c)
    assert zones == {"za": links.ZONE_INDEX_BASE, "zb": links.ZONE_INDEX_BASE + 1, "zc": links.ZONE_INDEX_BASE + 2}
    nets = links.node_nets([{"name": "x", "index": 1, "net": "10.201", "bridge": "b1"},
                            {"name": "y", "index": 2, "net": "10.201", "bridge": "b2"}])
    pl = links.PodLinks.__new__(links.PodLinks)      # no servers, no tc: only the addressing
    pl.nodes, pl.zones, pl.use_relay = nets, zones, True
    pl._links = {("zc", "y"): c.link_index[("zc", "zb")]}
    zi = links.ZONE_INDEX_BASE + 2
    assert pl.input_fetch_arg("zc", "y", 2.0) == f"10.201.2.1:{links.RELAY_PORT_BASE + zi}:2000000:{zi}"
    pl.use_relay = False                              # netem: the zone's store on the destination's gateway
    assert pl.input_fetch_arg("zc", "y", 2.0) == f"10.201.2.1:{links.ZONE_STORE_PORT_BASE + zi}:2000000:{zi}"
    assert pl.input_fetch_arg("zc", "x", 2.0) is None     # no zc -> za link: nothing to read
    assert pl.input_fetch_arg("nowhere", "y", 2.0) is None


def test_a_fault_between_zones_also_cuts_the_origin_zone_input():
    from dtlab.kube import links
    c = load_cluster({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "c"},
                      "nodes": [{"name": "x", "arch": "amd64", "cores": 1, "zone": "za"},
                                {"name": "y", "arch": "amd64", "cores": 1, "zone": "zb"}],
                      "links": [{"a": "za", "b": "zb", "latency_ms": 20, "bandwidth_mbps": 40}]})
    pl = links.PodLinks.__new__(links.PodLinks)      # no servers, no tc: the link table only
    pl.cluster = c
    base = c.link("x", "y")
    pl._links = {("x", "y"): base, ("za", "y"): base, ("zb", "y"): c.link_index.get(("zb", "zb"))}
    reshaped = []
    pl._reshape = lambda a, b: reshaped.append((a, b))
    pl.set_link("x", "y", None)
    assert pl.link("x", "y") is None and pl.link("za", "y") is None and reshaped == [("x", "y"), ("za", "y")]
    pl.set_link("x", "y", base)
    assert pl.link("za", "y") == base


def test_fault_links_cut_degrade_and_restore_both_directions():
    from dtlab.chaos.realise import as_event
    from dtlab.chaos.spec import fault_links
    c = load_cluster({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "c"},
                      "nodes": [{"name": "p", "arch": "amd64", "cores": 1, "zone": "za"},
                                {"name": "q", "arch": "amd64", "cores": 1, "zone": "zb"}],
                      "links": [{"a": "za", "b": "zb", "latency_ms": 20, "bandwidth_mbps": 40}]})
    deg = as_event({"kind": "link-degradation", "at_s": 0, "duration_s": 5, "between": ["za", "zb"],
                    "bandwidth_mbps": 8}, c)
    start = fault_links(c, deg, True)
    assert {(a, b) for a, b, _ in start} == {("p", "q"), ("q", "p")}
    assert all(l.bandwidth_mbps == 8 and l.latency_ms == 20 for _, _, l in start)
    assert all(l.bandwidth_mbps == 40 for _, _, l in fault_links(c, deg, False))
    cut = as_event({"kind": "partition", "at_s": 0, "duration_s": 5, "between": ["za", "zb"]}, c)
    assert all(l is None for _, _, l in fault_links(c, cut, True))
