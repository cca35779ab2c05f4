"""Unit tests of the kube actuator, observer and substrate logic against fakes (no API server).

The real-server behaviour is tested in tests/e2e/test_kube.py; here the edge cases that a
live plane cannot produce on demand: retries on 5xx/connection errors, 409 for our own pod vs
another, 410 Gone mid-watch, replayed and missed events, the DAG/failover decisions.
"""
from __future__ import annotations

import os
import json
import re
from pathlib import Path
from dataclasses import replace

import pytest
import yaml

pytest.importorskip("kubernetes")
from kubernetes.client.exceptions import ApiException  # noqa: E402
from urllib3.exceptions import ProtocolError  # noqa: E402

from dtlab import load_cluster  # noqa: E402
from dtlab.kube import actuator as act  # noqa: E402
from dtlab.kube.observer import Gone, Observer, node_spec  # noqa: E402
from dtlab.model import Compute, Job, Stage  # noqa: E402
from dtlab.plan import Plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ------------------------------------------------------------------ names and manifests
@pytest.mark.parametrize("job,stage", [("video-1", "decode"), ("Video_1", "Decode!"), ("x" * 80, "y" * 40),
                                       ("-a-", "-"), ("ünï", "cödé")])
def test_pod_names_are_dns1123_deterministic_and_distinct(job, stage):
    name = act.pod_name(job, stage, 2)
    assert DNS1123.match(name) and len(name) <= 63 and name.endswith("-2")
    assert act.pod_name(job, stage, 2) == name
    assert act.pod_name(job, stage, 3) != name
    assert LABEL.match(act.label_value(job)) and len(act.label_value(job)) <= 63


def test_sanitising_never_merges_two_jobs():
    names = {act.pod_name(j, "s") for j in ("Job-A", "job-a", "job_a", "job.a", "JOB-A")}
    assert len(names) == 5
    assert act.pod_name("job-a", "s") == "job-a-s-0"     # clean names stay readable


def _spec(**kw):
    base = dict(job="j", stage="s", node="edge-a-0", attempt=0, arch="arm64", format="native", cpu=2.0,
                mem_gb=1.0, duration_ms=1234.4, nominal_ms=900.0)
    base.update(kw)
    return act.PodSpec(**base)


def test_pod_manifest_pins_labels_and_delay():
    m = act.pod_manifest(_spec())
    assert m["spec"]["nodeName"] == "edge-a-0" and "affinity" not in m["spec"]
    assert m["metadata"]["labels"][act.JOB_LABEL] == "j" and m["metadata"]["labels"][act.ARCH_LABEL] == "arm64"
    assert m["metadata"]["labels"][act.FORMAT_LABEL] == "native"
    assert m["metadata"]["annotations"][act.KWOK_DELAY] == "1234ms"
    assert m["metadata"]["annotations"][act.DURATION_ANNOTATION] == "900"
    assert m["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2000m"
    assert "runtimeClassName" not in m["spec"]
    # a real node's limit never rounds above its parent cgroup's quota (1 core x speed 1 x scale 0.555556)
    real = act.pod_manifest(_spec(cpu_limit=0.555556))["spec"]["containers"][0]["resources"]
    assert real["limits"]["cpu"] == real["requests"]["cpu"] == "555m"
    assert act.pod_manifest(_spec(cpu_limit=0.3))["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "300m"
    aff = act.pod_manifest(_spec(), pinning="affinity")["spec"]
    assert "nodeName" not in aff
    term = aff["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"][0]["values"] == ["edge-a-0"]
    wasm = act.pod_manifest(_spec(format="wasm"))
    assert wasm["spec"]["runtimeClassName"] == "wasm" and wasm["metadata"]["labels"][act.FORMAT_LABEL] == "wasm"
    q = act.pod_manifest(_spec(format="qemu-amd64"))
    assert q["metadata"]["labels"][act.FORMAT_LABEL] == "qemu"
    with pytest.raises(act.KubeError, match="pinning"):
        act.pod_manifest(_spec(), pinning="magic")


def test_spec_hash_is_stable_and_sensitive():
    h = lambda s: act.pod_manifest(s)["metadata"]["annotations"][act.SPEC_HASH]  # noqa: E731
    assert h(_spec()) == h(_spec())
    assert h(_spec()) != h(_spec(node="edge-a-1")) != h(_spec(duration_ms=99))


# ------------------------------------------------------------------ actuator with a fake CoreV1Api
class _Meta:
    def __init__(self, annotations):
        self.annotations = annotations


class _Pod:
    def __init__(self, body):
        self.metadata = _Meta(body["metadata"]["annotations"])


class FakeCore:
    """Records calls; ``failures`` is a list of exceptions raised by the next calls, in order."""

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.calls = []
        self.pods = {}

    def _maybe_fail(self):
        if self.failures:
            raise self.failures.pop(0)

    def create_namespaced_pod(self, ns, body, **kw):
        self.calls.append(("create", body["metadata"]["name"], kw))
        self._maybe_fail()
        if body["metadata"]["name"] in self.pods:
            raise ApiException(status=409, reason="AlreadyExists")
        self.pods[body["metadata"]["name"]] = body
        return body

    def read_namespaced_pod(self, name, ns, **kw):
        return _Pod(self.pods[name])

    def delete_namespaced_pod(self, name, ns, **kw):
        self.calls.append(("delete", name, kw))
        self._maybe_fail()
        if self.pods.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")

    def patch_node(self, name, body, **kw):
        self.calls.append(("patch", name, body, kw))
        self._maybe_fail()


def _actuator(core, **kw):
    sleeps = []
    a = act.Actuator(core=core, sleep=sleeps.append, **kw)
    return a, sleeps


def test_retries_5xx_and_connection_errors_with_growing_backoff():
    core = FakeCore([ApiException(status=503), ProtocolError("connection reset"), ApiException(status=500),
                     ApiException(status=429)])
    a, sleeps = _actuator(core, backoff_s=0.1, backoff_max_s=10)
    out = a.create_pod(_spec())
    assert out == {"name": "j-s-0", "created": True, "node": "edge-a-0"}
    assert a.retries == 4 and len(sleeps) == 4
    # exponential with jitter in [0.5, 1.5) x base: 0.1, 0.2, 0.4, 0.8
    for s, base in zip(sleeps, (0.1, 0.2, 0.4, 0.8)):
        assert 0.5 * base <= s < 1.5 * base
    assert len(core.pods) == 1


def test_client_errors_fail_at_once_naming_the_object():
    core = FakeCore([ApiException(status=422, reason="Invalid")])
    a, sleeps = _actuator(core)
    with pytest.raises(act.KubeError, match="create pod dtlab/j-s-0") as exc:
        a.create_pod(_spec())
    assert exc.value.status == 422 and sleeps == []


def test_retry_deadline_bounds_an_outage():
    core = FakeCore([ApiException(status=503)] * 100)
    clock = [0.0]
    a = act.Actuator(core=core, sleep=lambda s: clock.__setitem__(0, clock[0] + s), deadline_s=0.0)
    with pytest.raises(act.KubeError, match="503"):
        a.cordon("n1")


def test_409_for_our_own_pod_is_success_and_for_another_is_a_conflict():
    core = FakeCore()
    a, _ = _actuator(core)
    assert a.create_pod(_spec())["created"] is True
    # the retry of a create whose first POST landed (e.g. the response was lost)
    again = a.create_pod(_spec())
    assert again == {"name": "j-s-0", "created": False, "node": "edge-a-0"} and a.conflicts_same == 1
    assert len(core.pods) == 1
    with pytest.raises(act.KubeError, match="spec hash differs"):
        a.create_pod(_spec(node="edge-a-1"))      # same name, different pod: never overwritten


def test_dry_run_cordon_and_delete():
    core = FakeCore()
    a, _ = _actuator(core, dry_run=True)
    a.create_pod(_spec())
    a.cordon("n1")
    a.uncordon("n1")
    a.set_node_failed("n2")
    assert all(c[-1].get("dry_run") == "All" for c in core.calls)
    patches = [c[2] for c in core.calls if c[0] == "patch"]
    assert patches == [{"spec": {"unschedulable": True}}, {"spec": {"unschedulable": None}},
                       {"metadata": {"labels": {act.KWOK_NODE_FAIL_LABEL: "true"}}}]
    assert a.delete_pod("j-s-0") is True and a.delete_pod("j-s-0") is False    # 404: already gone


# ------------------------------------------------------------------ observer with a fake server
class FakeResp:
    def __init__(self, data=None, lines=(), drop_after=None):
        self.data = json.dumps(data).encode() if data is not None else b""
        self.lines, self.drop_after = list(lines), drop_after

    def stream(self, amt=None, decode_content=False):
        for i, line in enumerate(self.lines):
            if self.drop_after is not None and i >= self.drop_after:
                raise ProtocolError("connection dropped")
            yield (json.dumps(line) + "\n").encode()

    def close(self):
        pass

    def release_conn(self):
        pass


class FakeServer:
    """An API server's objects with resourceVersions, a change log and compaction."""

    def __init__(self):
        self.rv = 0
        self.objs = {"nodes": {}, "pods": {}}
        self.log = []             # (rv, kind, type, obj)
        self.compacted = 0
        self.drop_after = None
        self.watch_calls = []

    def put(self, kind, obj, typ="MODIFIED"):
        self.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = obj["metadata"]["name"]
        if typ == "DELETED":
            self.objs[kind].pop(key, None)
        else:
            typ = typ if key in self.objs[kind] or typ != "MODIFIED" else "ADDED"
            self.objs[kind][key] = obj
        self.log.append((self.rv, kind, typ, obj))

    def _list(self, kind, **kw):
        if kw.get("watch"):
            since = int(kw["resource_version"])
            self.watch_calls.append((kind, since))
            if since < self.compacted:
                return FakeResp(lines=[{"type": "ERROR", "object": {"code": 410, "message": "too old"}}])
            lines = [{"type": t, "object": o} for rv, k, t, o in self.log if k == kind and rv > since]
            return FakeResp(lines=lines, drop_after=self.drop_after)
        return FakeResp({"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.objs[kind].values())})

    def list_node(self, **kw):
        return self._list("nodes", **kw)

    def list_namespaced_pod(self, ns, label_selector=None, **kw):
        return self._list("pods", **kw)


def _node(name, ready=True, unschedulable=False, **labels):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64", "topology.kubernetes.io/zone": "z",
                                                  "dtlab.io/cores": "4", "dtlab.io/speed": "0.6",
                                                  "dtlab.io/format-wasm": "true", **labels}},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"capacity": {"cpu": "4", "memory": "8Gi"},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _pod(name, phase, node="n1", job="j", stage="s", uid=None, start="2026-11-27T12:00:00Z",
         end="2026-11-27T12:00:02Z"):
    cs = {"running": {"startedAt": start}} if phase == "Running" else \
        {"terminated": {"startedAt": start, "finishedAt": end}} if phase in ("Succeeded", "Failed") else {}
    return {"metadata": {"name": name, "uid": uid or f"uid-{name}", "labels": {act.JOB_LABEL: job, act.STAGE_LABEL: stage,
                                                                              act.ATTEMPT_LABEL: "0"},
                         "annotations": {act.JOB_ANNOTATION: job, act.STAGE_ANNOTATION: stage}},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "startTime": start if phase != "Pending" else None,
                       "containerStatuses": [{"state": cs}] if cs else []}}


def _observer(server, known=("n1",)):
    got = []
    obs = Observer(core=server, sink=got.extend, known_nodes=known)
    return obs, got


def _kinds(events):
    def who(e):
        if e["kind"] == "node-add":
            return e["node"]["name"]
        return e.get("node") if e["kind"].startswith("node") else e.get("stage")
    return [(e["kind"], who(e)) for e in events]


def test_observer_reports_each_transition_once_across_replays_drops_and_410():
    srv = FakeServer()
    srv.put("nodes", _node("n1"))
    srv.put("pods", _pod("p1", "Running"))
    obs, got = _observer(srv)
    obs._relist("nodes")
    obs._relist("pods")
    assert _kinds(got) == [("stage-start", "s")]
    assert got[0]["ts"] == pytest.approx(1795780800.0)   # relist: the pod's own startTime, not receive time
    # live changes arrive on the watch
    srv.put("pods", _pod("p1", "Succeeded"))
    srv.put("nodes", _node("n1", ready=False))
    obs._watch("nodes")
    obs._watch("pods")
    assert _kinds(got)[1:] == [("node-down", "n1"), ("stage-end", "s")]
    assert got[2]["ok"] is True
    # the same events replayed (a resume from an older version): nothing new
    obs._rv["pods"] = "0"
    obs._watch("pods")
    assert len(got) == 3
    # the connection drops mid-stream: what was applied stays applied, the rest comes on resume
    srv.put("pods", _pod("p2", "Running", stage="t"))
    srv.put("pods", _pod("p2", "Failed", stage="t"))
    srv.drop_after = 1
    with pytest.raises(ProtocolError):
        obs._watch("pods")
    assert _kinds(got)[3:] == [("stage-start", "t")]
    srv.drop_after = None
    obs._watch("pods")
    assert _kinds(got)[4:] == [("stage-end", "t")] and got[4]["ok"] is False
    # changes while we were away, then compaction: 410 Gone -> relist finds them, once
    srv.put("nodes", _node("n1", ready=True, unschedulable=True))
    srv.put("nodes", _node("n9"))
    srv.put("pods", _pod("p3", "Running", stage="u"))
    srv.put("pods", _pod("p1", "Succeeded"), typ="DELETED")
    srv.put("pods", _pod("p3", "Running", stage="u"), typ="DELETED")   # killed while running
    srv.compacted = srv.rv
    with pytest.raises(Gone):
        obs._watch("nodes")
    obs._relist("nodes")
    obs._relist("pods")
    new = got[5:]
    assert _kinds(new) == [("node-up", "n1"), ("node-cordon", "n1"), ("node-add", "n9")]
    assert new[2]["node"] == {"name": "n9", "arch": "arm64", "cores": 4, "speed": 0.6, "mem_gb": 8.0,
                              "formats": ["wasm"], "zone": "z"}
    # p3 appeared and vanished entirely during the outage: never seen, so no invented start; p1 had
    # ended already: its deletion is no new transition
    assert obs.counters["events"] == len(got) == 8
    # ... unless the caller registered p3 as created: then its disappearance is a failed stage, once
    srv.put("pods", _pod("p4", "Running", stage="v"))
    srv.put("pods", _pod("p4", "Running", stage="v"), typ="DELETED")
    obs.expect("p4", "j", "v", "n1", 0)
    obs.expect("p1", "j", "s", "n1", 0)          # seen before: not expected again
    obs._relist("pods")
    assert _kinds(got[8:]) == [("stage-end", "v")] and got[8]["reason"] == "vanished" and got[8]["ok"] is False
    obs._relist("pods")
    assert len(got) == 9


def test_observer_pod_deleted_while_running_is_a_failed_stage_end():
    srv = FakeServer()
    srv.put("nodes", _node("n1"))
    srv.put("pods", _pod("p1", "Running"))
    obs, got = _observer(srv)
    obs._relist("nodes")
    obs._relist("pods")
    srv.put("pods", _pod("p1", "Running"), typ="DELETED")
    obs._watch("pods")
    assert _kinds(got) == [("stage-start", "s"), ("stage-end", "s")]
    assert got[1]["ok"] is False and got[1]["reason"] == "deleted" and got[1]["pod"] == "p1"
    obs._relist("pods")      # the relist does not report the deletion again
    assert len(got) == 2


def test_observer_threads_sync_then_stop_and_a_bad_sink_does_not_kill_the_watch():
    srv = FakeServer()
    srv.put("nodes", _node("n1", ready=False))
    calls = []

    def sink(batch):
        calls.append(batch)
        raise ValueError("state rejected it")

    obs = Observer(core=srv, sink=sink, known_nodes=["n1"], watch_timeout_s=1, backoff_s=0.01).start(wait_s=5)
    obs.stop()
    assert calls and calls[0][0]["kind"] == "node-down"
    assert obs.counters["sink_errors"] >= 1 and "state rejected it" in obs.last_error
    assert not any(t.is_alive() for t in obs._threads)


def test_node_spec_from_localplane_labels_round_trips():
    from dtlab.kube.localplane import node_manifest
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    for n in cluster.nodes:
        spec = node_spec(node_manifest(n))
        assert (spec["name"], spec["arch"], spec["cores"], spec["speed"], spec["zone"]) == \
            (n.name, n.arch, n.cores, n.speed, n.zone)
        assert sorted(spec["formats"]) == sorted(n.formats) and spec["mem_gb"] == pytest.approx(n.mem_gb)


def test_checked_in_kwok_node_templates_match_the_local_plane():
    from dtlab.kube.localplane import node_manifest
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    docs = [d for d in yaml.safe_load_all((REPO / "cluster" / "manifests" / "kwok" / "nodes.yaml").read_text()) if d]
    assert docs == [node_manifest(n) for n in cluster.nodes]


# ------------------------------------------------------------------ substrate DAG/failover logic with fakes
class FakeActuator:
    def __init__(self):
        self.created, self.deleted, self.retries = [], [], 0

    def ensure_namespace(self):
        pass

    def list_nodes(self):
        cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
        return [type("N", (), {"metadata": type("M", (), {"name": n.name})()})() for n in cluster.nodes]

    def create_pod(self, spec):
        self.created.append(spec)
        return {"name": spec.name, "created": True, "node": spec.node}

    def delete_pod(self, name, grace_s=0):
        self.deleted.append(name)
        return True

    def delete_job(self, job, stage=None):
        return []


class FakeObserver:
    def start(self):
        return self

    def stop(self):
        pass

    def stats(self):
        return {}


@pytest.fixture
def kube_sub():
    from dtlab.substrates.kube import KubeSubstrate
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    fa = FakeActuator()
    sub = KubeSubstrate(cluster, seed=3, actuator=fa, observer_factory=lambda *a: FakeObserver(), noise=False,
                        max_attempts=3)
    yield sub, fa
    sub.close()


def _ev(kind, spec, **kw):
    return {"kind": kind, "job": spec.job, "stage": spec.stage, "node": spec.node, "pod": spec.name,
            "attempt": spec.attempt, "ts": 0.0, **kw}


JOB = Job("dag", (Stage("a", Compute(cpu=1, duration_ms=1000)), Stage("b", Compute(cpu=1, duration_ms=500)),
                  Stage("c", Compute(cpu=1, duration_ms=200), after=("a", "b"))))
PLAN = Plan(job="dag", policy="x", placement={"a": "edge-a-0", "b": "cloud-0", "c": "cloud-0"},
            shadow={"a": "edge-b-0", "c": "cloud-1"})


def test_substrate_creates_successors_only_after_all_predecessors_succeeded(kube_sub):
    sub, fa = kube_sub
    sub.submit(PLAN, JOB)
    assert [s.stage for s in fa.created] == ["a", "b"]
    a, b = fa.created
    assert a.duration_ms == pytest.approx(1000 / 0.6) and b.duration_ms == pytest.approx(500)
    sub._on_events([_ev("stage-start", a), _ev("stage-start", b), _ev("stage-end", a, ok=True)])
    assert len(fa.created) == 2                        # c waits for b
    sub._on_events([_ev("stage-end", b, ok=True)])
    assert [s.stage for s in fa.created] == ["a", "b", "c"] and fa.created[2].node == "cloud-0"
    sub._on_events([_ev("stage-start", fa.created[2]), _ev("stage-end", fa.created[2], ok=True)])
    assert sub.all_done() and sub.results()["jobs"]["ok"].tolist() == [True]
    # KWOK runs no code: the energy proxy's CPU time is the planned service time x cpu (issue 23)
    st = sub.results()["stages"].set_index("stage")
    assert st["cpu_ms"].to_dict() == pytest.approx({"a": 1000 / 0.6, "b": 500.0, "c": 200.0})
    assert st["seen_ms"].notna().all()      # when each end was observed (the kube hand-off calibration)
    # replayed events change nothing (no second pod, no second end)
    sub._on_events([_ev("stage-end", b, ok=True), _ev("stage-end", fa.created[2], ok=True)])
    assert len(fa.created) == 3 and len(sub.results()["stages"]) == 3
    kinds = [e["kind"] for e in sub.events()]
    assert kinds.count("stage-end") == 3 and kinds.count("job-submit") == 1


def test_real_node_energy_proxy_uses_the_workers_measured_cpu(kube_sub):
    """On a real node the worker reports its kernel's CPU clock: energy_proxy_j uses it (as node-equivalent
    ms: / cpu scale x node speed, as the fabric does); KWOK stages keep the planned time (issue 23)."""
    from dtlab import energy
    sub, fa = kube_sub
    sub.submit(PLAN, JOB)
    a, b = fa.created
    sub._real = {"edge-a-0": 0.25}          # edge-a-0 (speed 0.6) stands for a real node with cpu scale 0.25
    w = {"start_ts": 1.0, "end_ts": 3.0, "uname_m": "aarch64", "kernel_cpu_ms": 240.0}
    sub._on_events([_ev("stage-start", a), _ev("stage-start", b), _ev("stage-end", a, ok=True, worker=w),
                    _ev("stage-end", b, ok=True)])
    st = sub.results()["stages"].set_index("stage")
    assert st.loc["a", "cpu_ms"] == pytest.approx(240.0 / (0.25 * 0.6)) and st.loc["a", "cpu_source"] == "measured"
    assert st.loc["b", "cpu_ms"] == pytest.approx(500.0) and st.loc["b", "cpu_source"] == "planned"
    e = energy.energy_proxy(sub.results()["stages"], sub.cluster()).set_index("stage")
    assert e.loc["a", "energy_proxy_j"] == pytest.approx(1600.0 / 1000 * energy.power_of(sub.cluster().node("edge-a-0"))[1])


def test_node_down_moves_unfinished_stages_to_the_shadow_and_pod_kill_retries_in_place(kube_sub):
    sub, fa = kube_sub
    sub.submit(PLAN, JOB)
    a, b = fa.created
    sub._on_events([_ev("stage-start", a), _ev("stage-start", b)])
    sub._on_events([{"kind": "node-down", "node": "edge-a-0", "ts": 0.0}])
    assert fa.deleted == [a.name]
    a1 = fa.created[2]
    assert (a1.stage, a1.node, a1.attempt, a1.name) == ("a", "edge-b-0", 1, "dag-a-1")
    # the old pod's late events are ignored (it was replaced); the twin was told it ended, failed
    sub._on_events([_ev("stage-end", a, ok=True)])
    assert sub.job_status("dag")["stages"]["a"]["phase"] == "pending"
    # pod-kill of b (its node is fine): retried on the same node
    sub._on_events([_ev("stage-end", b, ok=False, reason="deleted")])
    b1 = fa.created[3]
    assert (b1.stage, b1.node, b1.attempt) == ("b", "cloud-0", 1)
    ends = [(e["stage"], e["node"], e["ok"]) for e in sub.events() if e["kind"] == "stage-end"]
    assert sorted(ends) == [("a", "edge-a-0", False), ("b", "cloud-0", False)]
    # V4's failovers column: the move to the shadow counts, the retry in place does not
    assert sub.results()["jobs"]["failed_over"].tolist() == [1]


def test_stage_without_usable_shadow_fails_the_job_after_max_attempts(kube_sub):
    sub, fa = kube_sub
    sub.submit(PLAN, JOB)
    b = fa.created[1]
    for i in range(2):   # attempts 0 and 1 killed -> attempt 2 is the last
        sub._on_events([_ev("stage-end", fa.created[-1] if i else b, ok=False, reason="deleted")])
    last = fa.created[-1]
    assert last.stage == "b" and last.attempt == 2
    sub._on_events([_ev("stage-end", last, ok=False, reason="deleted")])
    assert sub.results()["jobs"]["ok"].tolist() == [False]
    sub2_nodes = [s.node for s in fa.created if s.stage == "b"]
    assert sub2_nodes == ["cloud-0"] * 3
    assert sub.results()["jobs"]["failed_over"].tolist() == [0]      # pod kills retried in place: no failover


def test_kube_options_are_validated():
    from dtlab.errors import SpecError
    from dtlab.substrates.kube import kube_options
    with pytest.raises(SpecError, match="substrate_opts.colour"):
        kube_options({"colour": 1})
    with pytest.raises(SpecError, match="substrate_opts.time_scale"):
        kube_options({"time_scale": 0})
    with pytest.raises(SpecError, match="substrate_opts.pinning"):
        kube_options({"pinning": "nodeSelector"})
    assert kube_options({"time_scale": 0.5})["time_scale"] == 0.5


def test_replan_hook_is_asked_when_no_shadow_is_usable(kube_sub):
    sub, fa = kube_sub
    asked = []
    sub.set_replan(lambda job, sid, failed: asked.append((job.name, sid, failed)) or "edge-b-1")
    plan = Plan(job="dag", policy="x", placement=dict(PLAN.placement), shadow={})
    sub.submit(plan, JOB)
    b = fa.created[1]
    sub._on_events([_ev("stage-start", b), {"kind": "node-down", "node": "cloud-0", "ts": 0.0}])
    assert asked == [("dag", "b", "cloud-0")] and not sub.node_up("cloud-0") and sub.node_up("edge-a-0")
    assert (fa.created[-1].stage, fa.created[-1].node, fa.created[-1].attempt) == ("b", "edge-b-1", 1)
    assert sub.results()["jobs"]["failed_over"].tolist() == [1]      # a re-planned move is a failover too


def test_nodes_outside_the_cluster_spec_are_not_reported(kube_sub):
    sub, fa = kube_sub
    sub._on_events([{"kind": "node-add", "node": {"name": "k3d-server-0", "arch": "amd64", "cores": 2},
                     "ts": 0.0}, {"kind": "node-down", "node": "k3d-server-0", "ts": 0.0},
                    {"kind": "node-cordon", "node": "cloud-1", "ts": 0.0}])
    assert [(e["kind"], e["node"]) for e in sub.events()] == [("node-cordon", "cloud-1")]


def test_time_scale_shortens_pods_but_keeps_the_twins_milliseconds():
    from dtlab.substrates.kube import KubeSubstrate
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    fa = FakeActuator()
    with KubeSubstrate(cluster, actuator=fa, observer_factory=lambda *a: FakeObserver(), noise=False,
                       time_scale=0.25) as sub:
        sub.submit(PLAN, JOB)
        assert fa.created[0].duration_ms == pytest.approx(1000 / 0.6 * 0.25)      # wall time on KWOK
        assert sub.results()["stages"]["planned_ms"].iloc[0] == pytest.approx(1000 / 0.6)
        t0 = sub.now_ms()
        import time
        time.sleep(0.05)
        assert sub.now_ms() - t0 >= 0.05 * 1000 / 0.25 * 0.9                       # substrate ms run 4x


def test_exclusive_kube_holds_the_host_lock_and_records_noise(tmp_path, monkeypatch):
    """The hook for real nodes (issue 14): ``exclusive: true`` takes the host lock for the substrate's
    life and records host noise by part (controller, plane); the default takes no lock."""
    from dtlab import hostlock
    from dtlab.substrates.kube import KubeSubstrate
    monkeypatch.setenv(hostlock.ENV_PATH, str(tmp_path / "host.lock"))
    monkeypatch.delenv(hostlock.ENV_HELD, raising=False)
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    with KubeSubstrate(cluster, actuator=FakeActuator(), observer_factory=lambda *a: FakeObserver(), noise=False) as sub:
        assert not hostlock.held() and sub.noise is None
    sub = KubeSubstrate(cluster, actuator=FakeActuator(), observer_factory=lambda *a: FakeObserver(), noise=False,
                        exclusive=True, lock_timeout_s=5)
    try:
        assert hostlock.held()
        assert f"pid {os.getpid()}" in hostlock.holder()
    finally:
        sub.close()
    assert not hostlock.held()
    assert set(sub.noise["cpu_s"]) == {"controller", "plane"} and isinstance(sub.noise["noisy"], bool)


class OneRealNodeActuator(FakeActuator):
    """The fake cluster with edge-a-0 labelled as a real (kubelet) node at CPU scale 0.5."""

    def list_nodes(self):
        from dtlab.kube.realnodes import CPU_SCALE_LABEL, NODE_KIND_LABEL
        out = super().list_nodes()
        out[3].metadata.labels = {NODE_KIND_LABEL: "real", CPU_SCALE_LABEL: "0.5"}     # edge-a-0
        return out


def test_real_nodes_record_host_noise_with_the_nodes_cpu(tmp_path, monkeypatch):
    """A cluster with real kubelet nodes is a wall-clock run (issue 14 item 3): the substrate records host
    noise even without ``exclusive``, with the real workers' measured kernel CPU as ``cpu_s.nodes``."""
    from dtlab import hostlock
    from dtlab.substrates.kube import KubeSubstrate
    monkeypatch.setenv(hostlock.ENV_PATH, str(tmp_path / "host.lock"))

    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    sub = KubeSubstrate(cluster, actuator=OneRealNodeActuator(), observer_factory=lambda *a: FakeObserver(), noise=False)
    try:
        assert sub._real == {"edge-a-0": 0.5} and not hostlock.held()     # the lock is the runner's (wall_clock)
        sub._stages.append({"job": "j", "stage": "s", "node": "edge-a-0", "kernel_cpu_ms": 240.0})
        sub._stages.append({"job": "j", "stage": "t", "node": "cloud-0", "kernel_cpu_ms": None})
    finally:
        sub.close()
    assert set(sub.noise["cpu_s"]) == {"controller", "plane", "nodes"}
    assert sub.noise["cpu_s"]["nodes"] == pytest.approx(0.24)
    assert isinstance(sub.noise["noisy"], bool) and "loadavg_1m" in sub.noise and "calibration" in sub.noise


def test_a_root_stage_plans_its_jobs_input_from_the_origin_zone(kube_sub):
    """The pod's planned time counts input_mb over the origin zone -> node link, as the twin does."""
    from dtlab.model import spec_link
    from dtlab.timing import TimingModel
    sub, fa = kube_sub
    job = Job("in", (Stage("a", Compute(cpu=1, duration_ms=1000)),), origin_zone="edge-a", input_mb=4.0)
    sub.submit(Plan(job="in", policy="x", placement={"a": "cloud-0"}), job)
    link = spec_link(load_cluster(REPO / "examples" / "cluster-hetero.yaml"), "edge-a", "cloud-0")
    transfer = TimingModel().mean_transfer_ms(4.0, link)
    assert transfer > 300                                   # 4 MB over 100 Mbit/s + 40 ms + loss tail
    assert fa.created[0].duration_ms == pytest.approx(1000 + transfer)


class _Links:
    """Stands in for dtlab.kube.links.PodLinks: which --fetch values the substrate asks for."""
    nodes = {"cloud-0": None, "cloud-1": None}

    def fetch_arg(self, src, dst, mb):
        return f"node:{src}->{dst}:{mb}"

    def input_fetch_arg(self, zone, dst, mb):
        return f"zone:{zone}->{dst}:{mb}"

    def close(self):
        pass


def test_after_a_kwok_stage_a_real_node_fetches_its_output_from_the_kwok_nodes_zone(kube_sub):
    """Issue 16 (b): a KWOK stage has no bytes; its output_mb comes from its zone's source over the zone
    -> node link (the one the twin charges); a real predecessor's from its node; same node: nothing."""
    sub, fa = kube_sub
    sub.links, sub._real = _Links(), {"cloud-0": 1.0, "cloud-1": 1.0}
    job = Job("kw", (Stage("a", Compute(cpu=1, duration_ms=100), output_mb=2.0),
                     Stage("b", Compute(cpu=1, duration_ms=100), output_mb=3.0),
                     Stage("c", Compute(cpu=1, duration_ms=100), after=("a", "b"))))
    sub.submit(Plan(job="kw", policy="x", placement={"a": "edge-a-0", "b": "cloud-1", "c": "cloud-0"}), job)
    st = sub._jobs["kw"]
    st["stages"]["a"]["node"], st["stages"]["b"]["node"] = "edge-a-0", "cloud-1"
    assert sub._fetch_args(st, "c", "cloud-0") == ("zone:edge-a->cloud-0:2.0", "node:cloud-1->cloud-0:3.0")
    assert sub._fetch_args(st, "c", "cloud-1") == ("zone:edge-a->cloud-1:2.0",)     # b on the same node
    assert sub._fetch_args(st, "c", "edge-b-0") == ()                              # not a real node


def test_a_pod_the_real_scheduler_places_gets_any_node_fetches(kube_sub):
    """Issue 16 (a): an unpinned pod (policy kube-scheduler) on a cluster with real nodes reads its
    inputs from the sources' any-node endpoints (the node is found from its address when it fetches)."""
    sub, fa = kube_sub

    class Links(_Links):
        def fetch_arg_any(self, src, mb):
            return f"any:{src}:{mb}"
    sub.links, sub._real = Links(), {"cloud-0": 1.0, "cloud-1": 1.0}
    job = Job("sch", (Stage("a", Compute(cpu=1, duration_ms=100), output_mb=2.0),
                      Stage("b", Compute(cpu=1, duration_ms=100), after=("a",))), origin_zone="edge-a", input_mb=1.0)
    sub.submit(Plan(job="sch", policy="kube-scheduler", placement={"a": "cloud-0", "b": "cloud-1"}), job)
    a = fa.created[0]
    assert a.node == "" and a.args[-2:] == ("--fetch", "any:edge-a:1.0")    # unpinned; input from its zone
    sub._on_events([_ev("stage-start", a, node="cloud-1"), _ev("stage-end", a, ok=True, node="cloud-1")])
    b = fa.created[1]
    assert b.node == "" and b.args[-2:] == ("--fetch", "any:cloud-1:2.0")   # a ran on cloud-1 (observed)


def test_pod_links_find_the_node_of_a_pod_address():
    from dtlab.kube.links import NodeNet, PodLinks
    links = PodLinks.__new__(PodLinks)         # no servers: only the address rule
    links.nodes = {"n1": NodeNet("n1", 1, "10.244", "b1"), "n12": NodeNet("n12", 12, "10.244", "b12")}
    assert [links.node_of_address(ip) for ip in ("10.244.1.7", "10.244.12.3", "10.244.2.1", "10.245.1.7")] == \
        ["n1", "n12", None, None]


@pytest.mark.parametrize("cal, expected_speed", [({"cpu_ratio": 1.0, "wall_ratio": 1.5}, 0.6 / 1.5),
                                                 ({"cpu_ratio": 1.0, "wall_ratio": 1.01}, None)])
def test_real_nodes_share_the_host_so_the_twin_gets_their_speed_over_the_measured_slowdown(
        tmp_path, monkeypatch, cal, expected_speed):
    """Issue 14 item 2 where isolation is impossible: real kubelet nodes get no cpuset here, so the
    opening calibration check's slowdown (wall / CPU) divides their speeds in the twin (node-add at
    ts 0, as the fabric does); KWOK nodes keep theirs; within 2 % nothing is sent."""
    from dtlab import hostlock, hostnoise
    from dtlab.state import ClusterState
    from dtlab.substrates.kube import KubeSubstrate
    monkeypatch.setenv(hostlock.ENV_PATH, str(tmp_path / "host.lock"))
    monkeypatch.setattr(hostnoise, "check_kernel", lambda join=None, target_ms=40.0: dict(cal))

    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    sub = KubeSubstrate(cluster, actuator=OneRealNodeActuator(), observer_factory=lambda *a: FakeObserver(), noise=False)
    try:
        adds = [e for e in sub.events() if e["kind"] == "node-add"]
        assert sub.metadata()["shared_host_slowdown"] == hostnoise.shared_host_slowdown(cal)
        json.dumps(sub.metadata())          # it goes into metrics.json (substrate_metadata)
    finally:
        sub.close()
    if expected_speed is None:
        assert adds == []
        return
    assert [e["node"]["name"] for e in adds] == ["edge-a-0"]
    state = ClusterState(cluster)
    state.apply_many(adds)
    snap = state.snapshot()
    assert snap.nodes["edge-a-0"].node.speed == pytest.approx(expected_speed)
    assert snap.nodes["edge-a-0"].node == replace(cluster.node("edge-a-0"), speed=snap.nodes["edge-a-0"].node.speed)
    assert snap.nodes["cloud-0"].node.speed == cluster.node("cloud-0").speed


def test_a_foreign_arch_real_node_gets_its_speed_over_slowdown_times_emulation_factor(tmp_path, monkeypatch):
    """Issue 16/18: edge-a-0 (arm64, real) runs its native worker through QEMU: the twin's speed is the
    spec's over (shared-host slowdown x its measured emulation factor), one node-add per real node at ts
    0 (the slowdown-only one is replaced); KWOK nodes untouched; metadata records factor and source; the
    deadline's cluster (twin_cluster) has the same speeds."""
    from dtlab import hostlock, hostnoise
    from dtlab.state import ClusterState
    from dtlab.substrates.kube import KubeSubstrate
    monkeypatch.setenv(hostlock.ENV_PATH, str(tmp_path / "host.lock"))
    monkeypatch.setattr(hostnoise, "check_kernel",
                        lambda join=None, target_ms=40.0: {"cpu_ratio": 1.0, "wall_ratio": 1.5})
    doc = {"emulation": {"reference": {"source": "native real nodes"}, "per_node": {
        "edge-a-0": {"arch": "arm64", "factor": 5.6, "kernel_cpu_ms": {"n": 3}}}}}
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    sub = KubeSubstrate(cluster, actuator=OneRealNodeActuator(), observer_factory=lambda *a: FakeObserver(), noise=False)
    try:
        factors = sub.set_emulation(doc)
        adds = [e for e in sub.events() if e["kind"] == "node-add"]
        meta = sub.metadata()
        twin_cluster = sub.twin_cluster()
        json.dumps(meta)
    finally:
        sub.close()
    assert factors == {"edge-a-0": {"factor": 5.6, "source": factors["edge-a-0"]["source"]}}
    assert "measured on edge-a-0" in factors["edge-a-0"]["source"]
    assert meta["emulation_factors"] == factors and meta["shared_host_slowdown"] == pytest.approx(1.5)
    assert [e["node"]["name"] for e in adds] == ["edge-a-0"] and adds[0]["ts"] == 0.0
    state = ClusterState(cluster)
    state.apply_many(adds)
    snap = state.snapshot()
    assert snap.nodes["edge-a-0"].node.speed == pytest.approx(0.6 / (1.5 * 5.6))
    assert snap.nodes["cloud-0"].node.speed == cluster.node("cloud-0").speed
    assert twin_cluster.node("edge-a-0").speed == pytest.approx(0.6 / (1.5 * 5.6))
    assert [n.speed for n in twin_cluster.nodes if n.name != "edge-a-0"] == \
        [n.speed for n in cluster.nodes if n.name != "edge-a-0"]
    # the twin's predicted service time of a 300 ms stage there: 300 / (0.6 / 8.4) ms
    from dtlab.timing import TimingModel
    stage = Stage("s", Compute(cpu=1, duration_ms=300))
    assert TimingModel().mean_service_ms(stage, snap.nodes["edge-a-0"].node, 1.0) == pytest.approx(300 / 0.6 * 8.4)


def test_node_to_dict_round_trips_through_the_cluster_reader_with_its_power_model():
    """node-add events carry node_to_dict; a node's own power model used to be dropped on the way."""
    from dtlab.model import Power, cluster_from_dict, node_to_dict
    cluster = load_cluster(REPO / "examples" / "cluster-hetero.yaml")
    for n in cluster.nodes:
        assert cluster_from_dict({"nodes": [node_to_dict(n)]}).nodes[0] == n
        custom = replace(n, power=Power(node_class="edge", idle_w_per_core=1.5, busy_w_per_core=4.0))
        assert cluster_from_dict({"nodes": [node_to_dict(custom)]}).nodes[0] == custom
