"""dtlab.operator without an API server: the reconciler against an in-memory fake of the API
(optimistic concurrency, idempotent pod names, pods advanced by the test), the Lease elector on a
fake clock, the DTJob spec mapping and the CRD manifest. The real thing: tests/e2e/test_operator.py.
"""
from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from dtlab.errors import SpecError
from dtlab.model import load_job
from dtlab.operator import crd
from dtlab.operator.lease import LeaseElector
from dtlab.operator.reconciler import Conflict, Reconciler
from dtlab.operator.spec import dtjob_for, job_of

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fakes
class Crash(Exception):
    """Raised by the fake API at a chosen call: the operator process 'dies' there."""


class FakeIO:
    """The API server as the reconciler sees it: DTJobs with resourceVersions, pods by name with UIDs."""

    def __init__(self):
        self.dtjobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.ready: dict[str, bool] = {n: True for n in ("a", "b", "c")}
        self.ops: list[tuple] = []
        self.uids = itertools.count(1)
        self.rv = itertools.count(1)
        self.crash_at: int | None = None      # crash on the n-th mutating call (before it lands)
        self.calls = 0
        self.created_uids: dict[str, list[str]] = {}
        self.crashes = 0

    def add(self, body):
        body = copy.deepcopy(body)
        body["metadata"].update(uid=f"dtjob-{body['metadata']['name']}", resourceVersion=str(next(self.rv)),
                                creationTimestamp=f"2026-01-01T00:00:{len(self.dtjobs):02d}Z")
        self.dtjobs[body["metadata"]["name"]] = body

    def _mutate(self):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise Crash()

    def dtjobs_list(self):
        return copy.deepcopy(list(self.dtjobs.values()))

    dtjobs_ = dtjobs_list

    def pods_list(self):
        return copy.deepcopy(list(self.pods.values()))

    def nodes_ready(self):
        return dict(self.ready)

    def write_status(self, body):
        self._mutate()
        name = body["metadata"]["name"]
        cur = self.dtjobs[name]
        if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]:
            raise Conflict(name)
        cur["status"] = copy.deepcopy(body["status"])
        cur["metadata"]["resourceVersion"] = str(next(self.rv))
        self.ops.append(("status", name, len(cur["status"].get("plans", []))))
        return copy.deepcopy(cur)

    def create_pod(self, spec, extra):
        self._mutate()
        if spec.name in self.pods:
            return {"name": spec.name, "created": False, "node": spec.node,
                    "uid": self.pods[spec.name]["metadata"]["uid"]}
        uid = f"uid-{next(self.uids)}"
        self.pods[spec.name] = {"metadata": {"name": spec.name, "uid": uid, **copy.deepcopy(extra)},
                                "spec": {"nodeName": spec.node}, "status": {"phase": "Pending"}}
        self.created_uids.setdefault(spec.name, []).append(uid)
        self.ops.append(("create", spec.name, spec.node))
        return {"name": spec.name, "created": True, "node": spec.node, "uid": uid}

    def delete_pod(self, name):
        self._mutate()
        self.ops.append(("delete", name))
        return self.pods.pop(name, None) is not None

    # the test plays kubelet: every pending pod runs, every running pod succeeds
    def kubelet(self, t: int):
        for p in self.pods.values():
            st = p["status"]
            if not self.ready.get(p["spec"]["nodeName"], False):
                continue
            if st["phase"] == "Pending":
                st.update(phase="Running", startTime=f"2026-01-01T00:01:{t:02d}Z")
            elif st["phase"] == "Running":
                st.update(phase="Succeeded", containerStatuses=[{"state": {"terminated": {
                    "startedAt": st["startTime"], "finishedAt": f"2026-01-01T00:01:{t:02d}Z"}}}])


class IOAdapter:
    """Maps the reconciler's KubeIO interface onto FakeIO."""

    def __init__(self, fake):
        self.f = fake

    def dtjobs(self):
        return self.f.dtjobs_list()

    def pods(self):
        return self.f.pods_list()

    def nodes_ready(self):
        return self.f.nodes_ready()

    def write_status(self, body):
        return self.f.write_status(body)

    def create_pod(self, spec, extra):
        return self.f.create_pod(spec, extra)

    def delete_pod(self, name):
        return self.f.delete_pod(name)


def planner(d, job, cfg):
    """Deterministic stand-in for the twin: stage i on node a/b/c in turn, shadow the next node."""
    nodes = ["a", "b", "c"]
    placement = {s.id: nodes[i % 3] for i, s in enumerate(job.stages)}
    shadow = {s.id: nodes[(i + 1) % 3] for i, s in enumerate(job.stages)}
    return {"job": job.name, "policy": cfg["policy"], "placement": placement, "shadow": shadow,
            "formats": {s.id: "native" for s in job.stages}, "shadowFormats": {s.id: "native" for s in job.stages},
            "stageMs": {s.id: 100.0 for s in job.stages}, "shadowStageMs": {s.id: 120.0 for s in job.stages},
            "nodeArch": {n: "amd64" for n in nodes}, "prediction": {"p95_ms": 500.0, "mean_ms": 300.0}}


def _dtjobs(n: int):
    files = ["job-pipeline.yaml", "job-fanout.yaml", "job-single.yaml"]
    return [dtjob_for(load_job(REPO / "examples" / files[i % 3]), name=f"j{i}", policy="greedy")
            for i in range(n)]


def _run(fake, rec_factory, passes=60, crash_rng=None):
    """Passes of (maybe crashing) reconcilers, the kubelet advancing pods between passes."""
    rec = rec_factory()
    for t in range(passes):
        if crash_rng is not None and crash_rng.random() < 0.7:
            fake.crash_at = fake.calls + int(crash_rng.integers(1, 12))
        try:
            rec.pass_once()
        except Crash:
            fake.crashes += 1
            rec = rec_factory()          # a new process: nothing remembered
        fake.crash_at = None
        fake.kubelet(t % 60)
        if all((d.get("status") or {}).get("phase") in crd.TERMINAL for d in fake.dtjobs.values()):
            return t
    return passes


# ------------------------------------------------------------------ reconciler
def test_plan_is_recorded_before_any_pod_and_jobs_finish():
    fake = FakeIO()
    for d in _dtjobs(3):
        fake.add(d)
    _run(fake, lambda: Reconciler(IOAdapter(fake), "op-1", planner=planner))
    for name, d in fake.dtjobs.items():
        st = d["status"]
        assert st["phase"] == "Succeeded", st
        assert len(st["plans"]) == 1 and st["plans"][0]["reason"] == "initial plan" and st["planVersion"] == 1
        first_create = next(i for i, op in enumerate(fake.ops) if op[0] == "create" and op[1].startswith(name + "-"))
        first_plan = next(i for i, op in enumerate(fake.ops) if op[:2] == ("status", name) and op[2] >= 1)
        assert first_plan < first_create
        assert all(s["phase"] == "Succeeded" and s["attempt"] == 0 for s in st["stages"].values())
        assert {c["type"]: c["status"] for c in st["conditions"]}["Succeeded"] == "True"
    # successors only after their predecessors succeeded: reduce after every map in the fan-out
    created = [op[1] for op in fake.ops if op[0] == "create"]
    assert created.index("j1-reduce-0") > max(created.index(f"j1-map-{i}-0") for i in range(3))


def test_stage_pods_on_real_nodes_run_the_worker_and_kwok_pods_stay_delays():
    """A real (kubelet) node runs the worker image doing the stage's work, as `dtlab submit` makes it
    (actuator.pod_spec_for); a KWOK node gets the delay pod. The node facts come from its labels."""
    from dtlab.kube.actuator import pod_spec_for
    from dtlab.kube.realnodes import image_for
    from dtlab.operator.reconciler import RealNode

    fake, specs = FakeIO(), {}
    real = {"b": RealNode("b", "arm64", 0.5, 0.8)}

    class RealIO(IOAdapter):
        def real_nodes(self):
            return dict(real)

        def create_pod(self, spec, extra):
            specs[spec.name] = spec
            return super().create_pod(spec, extra)

    d = _dtjobs(1)[0]                      # the pipeline: stage 0 on a, 1 on b, 2 on c
    fake.add(d)
    _run(fake, lambda: Reconciler(RealIO(fake), "op", planner=planner))
    assert fake.dtjobs["j0"]["status"]["phase"] == "Succeeded"
    job = load_job(REPO / "examples" / "job-pipeline.yaml")
    on_b = [s for s in specs.values() if s.node == "b"]
    assert len(on_b) == 1 and len(specs) == len(job.stages)
    sid = on_b[0].stage
    want = pod_spec_for(job, sid, real["b"], "native", 0, 100.0, real_scale=0.8, seed=1)
    assert on_b[0].node_kind == "real" and on_b[0].image == image_for("arm64", "native") == want.image
    assert on_b[0].args == want.args and "--iters" in on_b[0].args and on_b[0].cpu_limit == pytest.approx(0.4)
    assert on_b[0].name == "j0-" + sid + "-0"
    assert all(s.node_kind == "kwok" and not s.args for s in specs.values() if s.node != "b")


@pytest.mark.parametrize("seed", range(6))
def test_crashes_at_random_calls_lose_nothing_and_create_nothing_twice(seed):
    fake = FakeIO()
    for d in _dtjobs(9):
        fake.add(d)
    plans_seen: dict[str, dict] = {}

    class Watching(Reconciler):
        def _put(self, d, status):
            out = super()._put(d, status)
            first = out["status"]["plans"][0]
            assert plans_seen.setdefault(d["metadata"]["name"], first) == first, "plan v1 changed"
            return out

    t = _run(fake, lambda: Watching(IOAdapter(fake), "op", planner=planner), passes=400,
             crash_rng=np.random.default_rng(seed))
    assert t < 400 and fake.crashes >= 3, (t, fake.crashes)
    assert all(d["status"]["phase"] == "Succeeded" for d in fake.dtjobs.values())
    assert all(len(uids) == 1 for uids in fake.created_uids.values()), "a pod name was created twice"
    n_stages = sum(len(d["spec"]["job"]["stages"]) for d in fake.dtjobs.values())
    assert len(fake.pods) == n_stages and all(p["metadata"]["name"].endswith("-0") for p in fake.pods.values())


def test_node_down_fails_over_to_the_recorded_shadow_as_a_new_plan_version():
    fake = FakeIO()
    fake.add(_dtjobs(1)[0])             # pipeline: decode on a, infer on b, publish on c
    rec = Reconciler(IOAdapter(fake), "op", planner=planner)
    rec.pass_once()
    fake.kubelet(0)
    rec.pass_once()
    assert fake.pods["j0-decode-0"]["status"]["phase"] == "Running"
    fake.ready["a"] = False
    rec.pass_once()
    st = fake.dtjobs["j0"]["status"]
    v1, v2 = st["plans"]
    assert v1["placement"]["decode"] == "a" and v1["version"] == 1      # nothing overwritten
    assert v2["version"] == 2 and v2["placement"]["decode"] == "b" and "decode" not in v2["shadow"]
    assert "failover" in v2["reason"] and "a" in v2["reason"]
    assert v2["stageMs"]["decode"] == 120.0                             # the shadow's planned run time
    assert st["stages"]["decode"]["node"] == "b" and st["stages"]["decode"]["attempt"] == 1
    assert st["stages"]["decode"]["history"][0]["node"] == "a"
    assert ("delete", "j0-decode-0") in fake.ops and "j0-decode-1" in fake.pods
    assert st["planVersion"] == 2
    # a crash between the status write and the delete leaves the old pod: the next pass deletes it
    fake.pods["j0-decode-0"] = {"metadata": {"name": "j0-decode-0", "uid": "uid-1"}, "spec": {"nodeName": "a"},
                                "status": {"phase": "Running"}}
    rec.pass_once()
    assert "j0-decode-0" not in fake.pods and [op for op in fake.ops if op == ("delete", "j0-decode-0")] == [
        ("delete", "j0-decode-0")] * 2
    for t in range(1, 20):
        fake.kubelet(t)
        rec.pass_once()
    assert fake.dtjobs["j0"]["status"]["phase"] == "Succeeded"


def test_failed_pod_retries_on_the_same_node_then_the_job_fails_with_the_reason():
    fake = FakeIO()
    d = dtjob_for(load_job(REPO / "examples" / "job-single.yaml"), name="s", maxAttempts=2)
    fake.add(d)
    rec = Reconciler(IOAdapter(fake), "op", planner=planner)
    for attempt in range(2):
        rec.pass_once()
        fake.pods[f"s-resize-{attempt}"]["status"].update(phase="Failed", reason="Error")
    rec.pass_once()
    st = fake.dtjobs["s"]["status"]
    assert [h["node"] for h in st["stages"]["resize"]["history"]] == ["a", "a"]
    assert st["phase"] == "Failed" and "out of attempts" in st["message"] and len(st["plans"]) == 1
    n_ops = len(fake.ops)
    rec.pass_once()
    assert len(fake.ops) == n_ops, "a terminal DTJob is not touched again"


def test_invalid_spec_gets_an_invalid_condition_once_and_no_pods():
    fake = FakeIO()
    d = dtjob_for(load_job(REPO / "examples" / "job-pipeline.yaml"), name="bad")
    d["spec"]["job"]["stages"][1]["after"] = ["nope"]
    fake.add(d)
    fake.add(_dtjobs(1)[0])
    rec = Reconciler(IOAdapter(fake), "op", planner=planner)
    for t in range(12):
        rec.pass_once()
        fake.kubelet(t)
    st = fake.dtjobs["bad"]["status"]
    assert st["phase"] == "Invalid"
    assert st["conditions"][0]["type"] == "Invalid" and st["conditions"][0]["status"] == "True"
    assert "spec.job.stages[1].after[0]" in st["message"] and "nope" in st["message"]
    assert not [p for p in fake.pods if p.startswith("bad-")]
    assert sum(1 for op in fake.ops if op[:2] == ("status", "bad")) == 1
    assert fake.dtjobs["j0"]["status"]["phase"] == "Succeeded"


def test_status_conflict_skips_the_job_for_this_pass():
    fake = FakeIO()
    fake.add(_dtjobs(1)[0])
    rec = Reconciler(IOAdapter(fake), "op", planner=planner)

    class Racing(IOAdapter):
        def dtjobs(self):
            out = super().dtjobs()
            fake.dtjobs["j0"]["metadata"]["resourceVersion"] = "changed-meanwhile"
            return out
    rec.io = Racing(fake)
    rec.pass_once()
    assert rec.counts["conflicts"] == 1 and not fake.pods and "status" not in fake.dtjobs["j0"]


# ------------------------------------------------------------------ spec mapping
def test_dtjob_spec_maps_to_the_same_job_and_errors_name_the_dtjob_field():
    job = load_job(REPO / "examples" / "job-fanout.yaml")
    d = dtjob_for(job, name="fan", policy="cvar", samples=64)
    d["metadata"]["uid"] = "u"
    back = job_of(d)
    assert back.stages == job.stages and back.deadline_ms == job.deadline_ms and back.name == "fan"
    assert back.origin_zone == job.origin_zone and back.input_mb == job.input_mb
    d["spec"]["job"]["stages"][0]["compute"]["duration_ms"] = 0
    with pytest.raises(SpecError) as exc:
        job_of(d)
    assert exc.value.field == "spec.job.stages[0].compute.duration_ms"
    d["spec"]["job"]["stages"][0]["compute"]["duration_ms"] = 5
    d["spec"]["job"]["stages"][0]["after"] = ["reduce"]      # split after reduce: a cycle
    with pytest.raises(SpecError, match="cycle"):
        job_of(d)


# ------------------------------------------------------------------ CRD
def test_crd_manifest_in_cluster_manifests_is_the_generated_one():
    path = REPO / "cluster" / "manifests" / "dtjob-crd.yaml"
    assert yaml.safe_load(path.read_text()) == crd.crd_manifest(), \
        "regenerate: python -m dtlab.operator.crd > cluster/manifests/dtjob-crd.yaml"
    v = crd.crd_manifest()["spec"]["versions"][0]
    assert v["served"] and v["storage"] and v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == ["Policy", "Phase", "P95-ms", "Deadline-ms",
                                                                    "Nodes", "Age"]


# ------------------------------------------------------------------ lease
class FakeLeaseAPI:
    """coordination.k8s.io Leases with resourceVersion checks, as the client's models."""

    def __init__(self):
        self.lease = None
        self.rv = itertools.count(1)

    def _obj(self, body):
        from kubernetes import client
        spec = body["spec"] if isinstance(body, dict) else body.spec.to_dict()
        spec = {k: v for k, v in spec.items()}
        return client.V1Lease(metadata=client.V1ObjectMeta(name="l", resource_version=str(next(self.rv))),
                              spec=client.V1LeaseSpec(holder_identity=spec.get("holderIdentity", spec.get("holder_identity")),
                                                      lease_duration_seconds=spec.get("leaseDurationSeconds", spec.get("lease_duration_seconds")),
                                                      renew_time=spec.get("renewTime", spec.get("renew_time")),
                                                      acquire_time=spec.get("acquireTime", spec.get("acquire_time")),
                                                      lease_transitions=spec.get("leaseTransitions", spec.get("lease_transitions"))))

    def read_namespaced_lease(self, name, ns, **kw):
        from kubernetes.client.exceptions import ApiException
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, ns, body, **kw):
        from kubernetes.client.exceptions import ApiException
        if self.lease is not None:
            raise ApiException(status=409)
        self.lease = self._obj(body)
        return copy.deepcopy(self.lease)

    def replace_namespaced_lease(self, name, ns, body, **kw):
        from kubernetes.client.exceptions import ApiException
        rv = body["metadata"]["resourceVersion"] if isinstance(body, dict) else body.metadata.resource_version
        if rv != self.lease.metadata.resource_version:
            raise ApiException(status=409)
        self.lease = self._obj(body)
        return copy.deepcopy(self.lease)


@pytest.mark.parametrize("offset", [0.01, 0.37, 0.49, 0.51, 0.73, 0.99])
def test_lease_one_leader_and_takeover_within_lease_plus_retry_after_the_leader_dies(offset):
    api, now = FakeLeaseAPI(), [0.0]
    clock = lambda: now[0]  # noqa: E731
    a = LeaseElector(api, "A", lease_s=6, renew_deadline_s=4, retry_s=1, clock=clock)
    b = LeaseElector(api, "B", lease_s=6, renew_deadline_s=4, retry_s=1, clock=clock)
    dead_at, took = None, None
    while now[0] < 40:
        if dead_at is None or now[0] < dead_at:
            if a.due():
                a.tick()
        if b.due():
            b.tick()
        assert not (a.is_leader() and b.is_leader()), f"two leaders at t={now[0]}"
        if now[0] >= 10 and dead_at is None:
            assert a.is_leader() and not b.is_leader()
            dead_at = now[0] + offset         # A is SIGKILLed somewhere between two renewals
        if b.is_leader() and took is None:
            took = now[0]
        now[0] = round(now[0] + 0.01, 2)
    assert took is not None and 0 < took - dead_at <= 6 + 0.5 + 0.02, (dead_at, took)   # lease + retry/2
    assert api.lease.spec.holder_identity == "B" and api.lease.spec.lease_transitions == 1
    assert not a.is_leader()                  # its renew deadline passed long ago


def test_lease_release_lets_the_other_take_over_at_once():
    api, now = FakeLeaseAPI(), [0.0]
    clock = lambda: now[0]  # noqa: E731
    a = LeaseElector(api, "A", lease_s=6, renew_deadline_s=4, retry_s=1, clock=clock)
    b = LeaseElector(api, "B", lease_s=6, renew_deadline_s=4, retry_s=1, clock=clock)
    assert a.tick() and not b.tick()
    a.release()
    now[0] += 1.0
    assert b.tick()


def test_lease_rejects_inconsistent_timings():
    with pytest.raises(ValueError):
        LeaseElector(FakeLeaseAPI(), "A", lease_s=5, renew_deadline_s=6, retry_s=1)


# ------------------------------------------------------------------ CLI input checks (no cluster needed)
@pytest.mark.parametrize("argv, code, text", [
    (["operator", "--lease-duration-s", "-1"], 2, "--lease-duration-s: must be > 0"),
    (["operator", "--lease-duration-s", "5", "--renew-deadline-s", "6"], 2, "--renew-deadline-s"),
    (["operator", "--kubeconfig", "/nonexistent/kc"], 2, "no such file"),
    (["operator", "--plane", "no-such-plane"], 3, "is not running"),
    (["submit", str(REPO / "examples" / "job-pipeline.yaml"), "--operator", "--plane", "no-such-plane"], 3,
     "is not running"),
])
def test_operator_cli_bad_input_is_a_clear_error(argv, code, text, capsys):
    from dtlab.cli import main
    assert main(argv) == code
    assert text in capsys.readouterr().err
