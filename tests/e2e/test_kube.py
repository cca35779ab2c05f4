"""e2e: the twin acts on a real API server through the ``kube`` substrate (local plane, KWOK nodes).

From examples/cluster-hetero.yaml (7 KWOK nodes): 20 jobs planned and submitted through the
controller loop all complete with every stage observed; a cordoned node is avoided by the next
plans; kube-apiserver SIGKILLed mid-run and restarted: no duplicate pods, the watch resumes,
every job completes; a KWOK node marked NotReady moves its stages to their shadows; every
manifest in cluster/manifests passes a server-side dry-run (documents that are not Kubernetes
objects are skipped with the reason printed) and the twin's RBAC grants exactly what it needs;
`dtlab submit --wait` prints every stage.

Needs the binaries of `bash cluster/localplane/build.sh` (else skipped; failed under
DTLAB_REQUIRE_HEAVY=1). Run: `pytest tests/e2e/test_kube.py -v` (about 1-2 minutes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.e2e.planes import core_api, local_plane

from dtlab import load_cluster
from dtlab.controller import Controller
from dtlab.datadir import cache_dir
from dtlab.model import load_job
from dtlab.twin import Twin

REPO = Path(__file__).resolve().parents[2]
PLANE = f"kube-e2e-{os.getpid()}"
CLUSTER = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
NOT_K8S = {("k3d.io/v1alpha5", "Simple"): "k3d config (read by the k3d CLI, not the API server)",
           ("kind.x-k8s.io/v1alpha4", "Cluster"): "kind config (read by the kind CLI, not the API server)"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with local_plane(tmp_path_factory, CLUSTER, PLANE) as st:
        yield st


@pytest.fixture(scope="module")
def core(plane):
    return core_api(plane)


def _jobs(n: int, scale: float, prefix: str):
    """n jobs cycling through the example pipeline, fan-out and single jobs, durations times ``scale``."""
    bases = [load_job(REPO / "examples" / f, CLUSTER) for f in ("job-pipeline.yaml", "job-fanout.yaml",
                                                                  "job-single.yaml")]
    return [bases[i % 3].scaled(scale, name=f"{prefix}-{i}") for i in range(n)]


def _substrate(plane, **opts):
    from dtlab.substrates import make_substrate
    return make_substrate("kube", CLUSTER, kubeconfig=plane["kubeconfig"], start_plane=False, seed=1, **opts)


def _pods_by_stage(core, jobs):
    names = {j.name for j in jobs}
    pods = [p for p in core.list_namespaced_pod("dtlab").items
            if p.metadata.annotations.get("dtlab.io/job-name") in names]
    return pods, Counter((p.metadata.annotations["dtlab.io/job-name"], p.metadata.annotations["dtlab.io/stage-id"])
                         for p in pods if p.status.phase == "Succeeded")


def _check_complete(sub, ctl, jobs, core):
    res = sub.results()
    js, st = res["jobs"].set_index("job"), res["stages"]
    assert set(js.index) == {j.name for j in jobs}
    assert js["ok"].all(), js[~js["ok"].astype(bool)]
    for job in jobs:
        mine = st[(st["job"] == job.name) & (st["ok"] == True)]  # noqa: E712
        assert sorted(mine["stage"]) == sorted(s.id for s in job.stages), job.name   # each stage once
        end = dict(zip(mine["stage"], mine["end_ms"]))
        start = dict(zip(mine["stage"], mine["start_ms"]))
        for s in job.stages:
            for p in s.after:   # DAG order: observed start after the observed end of each predecessor
                assert start[s.id] >= end[p] - 1.0, (job.name, s.id, p)
    pods, ok_per_stage = _pods_by_stage(core, jobs)
    assert len({p.metadata.name for p in pods}) == len(pods) == len(st), "every pod is one attempt record"
    assert set(ok_per_stage.values()) == {1}, "exactly one Succeeded pod per stage"
    assert len(ok_per_stage) == sum(len(j.stages) for j in jobs)
    ctl.sync()
    done = {(s.job, s.stage) for s in ctl.twin.state.snapshot().stages.values() if s.phase == "succeeded"}
    assert done == {(j.name, s.id) for j in jobs for s in j.stages}, "the twin saw every stage end"


def test_twenty_jobs_complete_and_every_stage_is_observed(plane, core):
    jobs = _jobs(20, 0.3, "e2e")
    with _substrate(plane) as sub:
        ctl = Controller(Twin(CLUSTER), sub, policy="greedy", samples=32)
        ctl.run_workload([(200.0 * i, j) for i, j in enumerate(jobs)])
        _check_complete(sub, ctl, jobs, core)
        lag = sub.observer.lag_stats()
        assert lag["n"] >= 2 * sum(len(j.stages) for j in jobs) and lag["p95_s"] < 2.5, lag
        print(f"\n20 jobs: observe lag p50 {lag['p50_s']:.3f} s p95 {lag['p95_s']:.3f} s "
              f"(Kubernetes timestamps have 1 s resolution)")
        # pods carry the labels the chaos selectors and the observer rely on
        pod = core.list_namespaced_pod("dtlab", label_selector="dtlab.io/job=e2e-0").items[0]
        assert {"dtlab.io/job", "dtlab.io/stage", "dtlab.io/arch", "dtlab.io/format"} <= set(pod.metadata.labels)
        assert pod.spec.node_name == pod.metadata.labels["dtlab.io/planned-node"]


def test_cordoned_node_is_avoided_by_the_next_plans(plane):
    job = _jobs(1, 0.3, "cordon")[0]
    with _substrate(plane) as sub:
        ctl = Controller(Twin(CLUSTER), sub, policy="greedy", samples=32)
        ctl.sync()
        before = set(ctl.twin.plan(job, samples=32).placement.values())
        victim = sorted(before)[0]
        sub.actuator.cordon(victim)
        try:
            deadline = time.monotonic() + 15
            while not ctl.twin.state.snapshot().nodes[victim].cordoned:
                assert time.monotonic() < deadline, "the observer did not report the cordon"
                time.sleep(0.1)
                ctl.sync()
            for i in range(3):
                plan = ctl.step(job.scaled(1.0, name=f"cordon-{i}"))
                assert plan is not None and victim not in plan.placement.values(), plan
            sub.advance(None)
            assert sub.results()["jobs"]["ok"].all()
        finally:
            sub.actuator.uncordon(victim)


def test_apiserver_killed_mid_run_no_duplicates_watch_resumes(plane, core):
    from dtlab.kube import localplane as lp

    jobs = _jobs(6, 1.0, "crash")
    with _substrate(plane) as sub:
        ctl = Controller(Twin(CLUSTER), sub, policy="resilient", samples=32)
        for j in jobs:
            ctl.step(j)
        deadline = time.monotonic() + 20
        while not (sub.results()["stages"]["start_ms"].notna().sum() >= len(jobs)):
            assert time.monotonic() < deadline, "no stage started"
            time.sleep(0.1)
        watches = sub.observer.counters["watches"]
        lp.stop_component("kube-apiserver", PLANE)          # SIGKILL, like a crash
        late = _jobs(1, 0.3, "crash-late")[0]               # submitted while the API server is down:
        t = threading.Thread(target=ctl.step, args=(late,))  # its pod creates retry until it is back
        t.start()
        time.sleep(2.0)
        lp.start_component("kube-apiserver", PLANE)
        t.join(timeout=60)
        assert not t.is_alive()
        jobs.append(late)
        sub.advance(None)
        assert sub.actuator.retries >= 1
        stats = sub.observer.stats()
        assert stats["errors"] >= 1 and stats["watches"] > watches, stats     # dropped and resumed
        assert stats["sink_errors"] == 0
        _check_complete(sub, ctl, jobs, core)
        # no double counting: one stage-end ok per stage in what the twin was told
        print(f"\nafter apiserver restart: observer {stats}, actuator retries {sub.actuator.retries}")


def test_notready_node_moves_its_stages_to_their_shadows(plane, core):
    from dtlab.model import Compute, Job, Stage

    job = Job("failover-0", (Stage("long", Compute(cpu=1, mem_gb=0.5, duration_ms=6000)),
                             Stage("short", Compute(cpu=1, mem_gb=0.5, duration_ms=300), after=("long",))))
    seen: list[dict] = []
    with _substrate(plane, noise=False) as sub:
        ctl = Controller(Twin(CLUSTER), sub, policy="resilient", samples=32, on_events=[seen.extend])
        plan = ctl.step(job)
        assert plan is not None and plan.shadow.get("long") not in (None, plan.placement["long"]), plan
        victim = plan.placement["long"]
        deadline = time.monotonic() + 20
        while sub.job_status(job.name)["stages"]["long"]["phase"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sub.inject({"kind": "node-failure", "at_s": 0, "duration_s": 8, "selector": {"names": [victim]}})
        sub.advance(None)
        ctl.sync()
        st = sub.results()["stages"]
        lost = st[(st["stage"] == "long") & (st["node"] == victim)]
        assert len(lost) == 1 and not lost["ok"].iloc[0] and lost["reason"].iloc[0] == "node-down", st
        moved = st[(st["stage"] == "long") & (st["ok"] == True)]  # noqa: E712
        assert list(moved["node"]) == [plan.shadow["long"]] and list(moved["attempt"]) == [1], st
        assert sub.results()["jobs"]["ok"].all()
        assert {"kind": "node-down", "node": victim} in [{k: e.get(k) for k in ("kind", "node")} for e in seen]
        final = ctl.twin.state.snapshot().stages[(job.name, "long")]
        assert final.phase == "succeeded" and final.node == plan.shadow["long"]
        # wait for the node to come back so the plane is whole for the next tests
        deadline = time.monotonic() + 30
        while not any(c.type == "Ready" and c.status == "True" for c in core.read_node(victim).status.conditions):
            assert time.monotonic() < deadline, f"{victim} did not recover"
            time.sleep(0.2)


def test_every_manifest_passes_server_side_dry_run(plane):
    from kubernetes import client, config, dynamic

    api = config.new_client_from_config(config_file=plane["kubeconfig"])
    dyn = dynamic.DynamicClient(api)
    files = sorted((REPO / "cluster" / "manifests").rglob("*.yaml"))
    checked, skipped = [], []
    crds = [d for f in files for d in yaml.safe_load_all(f.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"]
    ext = client.ApiextensionsV1Api(api)
    for crd in crds:   # CRs can only be validated once their CRD is established
        ext.create_custom_resource_definition(crd)
        deadline = time.monotonic() + 30
        while not any(c.type == "Established" and c.status == "True"
                      for c in (ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or [])):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    dyn = dynamic.DynamicClient(api)     # fresh discovery with the CRDs
    docs = [(f, d) for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    docs += [(REPO / "cluster" / "kwok" / "stages.yaml", d)
             for d in yaml.safe_load_all((REPO / "cluster" / "kwok" / "stages.yaml").read_text()) if d]
    for path, doc in docs:
        rel = path.relative_to(REPO)
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in NOT_K8S or "apiVersion" not in doc:
            why = NOT_K8S.get(key, "Helm values, not a Kubernetes object")
            skipped.append(f"{rel}: {why}")
            continue
        if doc["kind"] == "CustomResourceDefinition":
            checked.append(f"{rel}: {doc['kind']} (installed)")
            continue
        res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        ns = doc["metadata"].get("namespace") if res.namespaced else None
        # server-side apply, dry run, strict: validates new and already existing objects alike
        out = res.server_side_apply(body=doc, name=doc["metadata"]["name"], namespace=ns, field_manager="dtlab-e2e",
                                    dry_run="All", force_conflicts=True, field_validation="Strict")
        assert out.metadata.name == doc["metadata"]["name"]
        checked.append(f"{rel}: {doc['kind']} {doc['metadata']['name']}")
    print("\n" + "\n".join(["dry-run ok: " + c for c in checked] + ["skipped: " + s for s in skipped]))
    kinds = {c.split(": ")[1].split()[0] for c in checked}
    assert {"Node", "RuntimeClass", "DaemonSet", "Deployment", "ClusterRole", "Role", "Stage"} <= kinds, kinds
    assert len(skipped) == 3, skipped     # k3d, kind, nfd values
    assert client.NodeV1Api(api).list_runtime_class(field_selector="metadata.name=wasm").items  # substrate made it


def test_twin_rbac_is_least_privilege(plane):
    """Apply rbac.yaml for real and ask the API server what the twin's ServiceAccount may do."""
    from kubernetes import client, config, utils

    api = config.new_client_from_config(config_file=plane["kubeconfig"])
    docs = [d for d in yaml.safe_load_all((REPO / "cluster" / "manifests" / "rbac.yaml").read_text()) if d]
    for d in docs:
        try:
            utils.create_from_dict(api, d)
        except utils.FailToCreateError as exc:
            assert all(e.status == 409 for e in exc.api_exceptions), exc
    authz = client.AuthorizationV1Api(api)
    user = "system:serviceaccount:dtlab:dtlab-twin"

    def can(verb, resource, ns=None, group=""):
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": ["system:serviceaccounts", "system:serviceaccounts:dtlab"],
                           "resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                                  **({"namespace": ns} if ns else {})}}}
        return authz.create_subject_access_review(review).status.allowed

    for verb in ("list", "watch", "get", "patch"):
        assert can(verb, "nodes"), verb
    for verb in ("create", "delete", "list", "watch", "get"):
        assert can(verb, "pods", "dtlab"), verb
    assert not can("create", "pods", "default")
    assert not can("delete", "nodes")
    assert not can("get", "secrets", "dtlab")
    assert not can("create", "pods/exec", "dtlab")
    assert not can("update", "nodes/status")


def test_cli_submit_wait_prints_every_stage(plane):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "dtlab.cli"]
    out = subprocess.run(base + ["cluster", "kubeconfig", "--name", PLANE], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == plane["kubeconfig"], out
    out = subprocess.run(base + ["submit", str(REPO / "examples" / "job-fanout.yaml"), "--substrate", "kube",
                                "--kubeconfig", plane["kubeconfig"], "--cluster",
                                str(REPO / "examples" / "cluster-hetero.yaml"), "--policy", "greedy",
                                "--time-scale", "0.3", "--job-name", "cli-fanout", "--wait", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"] is True and set(res["stages"]) == {"split", "map-0", "map-1", "map-2", "reduce"}
    for sid, s in res["stages"].items():
        assert s["phase"] == "succeeded" and s["pod"] == f"cli-fanout-{sid}-0" and s["end_ms"] > s["start_ms"]
        assert s["node"] == res["placement"][sid]
    assert res["stages"]["reduce"]["start_ms"] >= max(res["stages"][f"map-{i}"]["end_ms"] for i in range(3)) - 1
    out = subprocess.run(base + ["cluster", "status", "--name", PLANE], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0 and "7/7 Ready" in out.stdout, out.stdout


def test_cli_cluster_up_and_down_leave_nothing(plane, tmp_path):
    """`dtlab cluster up --cluster` registers one node per spec node; `down` leaves no process."""
    from dtlab.kube import localplane as lp

    name = f"kube-e2e-cli-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "dtlab.cli", "cluster"]
    try:
        out = subprocess.run(base + ["up", "--cluster", str(REPO / "examples" / "cluster-hetero.yaml"),
                                     "--name", name, "--json"], capture_output=True, text=True, env=env, timeout=240)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert sorted(info["nodes"]) == sorted(n.name for n in CLUSTER.nodes)
        pids = [p["pid"] for p in lp.status(name)["components"].values()]
    finally:
        down = subprocess.run(base + ["down", "--name", name, "--purge"], capture_output=True, text=True, env=env,
                              timeout=120)
    assert down.returncode == 0 and "no process or port left" in down.stdout, down
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in pids)
    assert lp.kubeconfig(name) is None
    assert not (cache_dir() / "localplane" / name).exists(), "--purge removes the workdir"
