"""e2e: the DT controller as an operator on the local control plane (real API server, KWOK nodes).

The plane is started with ``dtlab cluster up`` (which installs the DTJob CRD); operators run as
real ``dtlab operator`` processes and are SIGKILLed like a crashed pod. A watch in the test sees
every pod and every DTJob version for the whole run, so "created twice" (a name with two UIDs)
and "the plan changed" (plan v1 differing between two versions of the object) cannot hide.

* 30 multi-stage DTJobs, the operator SIGKILLed at 5 random moments and restarted: every DTJob
  Succeeded, one pod per stage (attempt 0, one UID per name), each plan recorded once, never changed;
* two replicas with Lease election: the leader SIGKILLed mid-run, the other leads within lease
  duration + retry period (the Lease's acquireTime minus the kill time), no job lost, and no
  replica acted while it was not the leader;
* ``dtlab submit --operator --wait`` with the operator running under its least-privilege
  ServiceAccount (token from the TokenRequest API); ``kubectl get dtjobs`` printer columns;
  SubjectAccessReviews of cluster/manifests/operator-rbac.yaml;
* invalid DTJobs: rejected by the schema (422 naming the field) or, when only the twin can tell,
  phase Invalid with an Invalid condition while the operator keeps serving the others.

Needs the binaries of `make cluster-bin` (else skipped; failed under DTLAB_REQUIRE_HEAVY=1).
Run: `pytest tests/e2e/test_operator.py -v -s` (about 3-5 minutes on an idle 2-core host).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.heavy import require

from dtlab.model import load_job
from dtlab.operator.crd import GROUP, PLURAL, TERMINAL, VERSION
from dtlab.operator.spec import dtjob_for

REPO = Path(__file__).resolve().parents[2]
PLANE = f"op-e2e-{os.getpid()}"
NS = "dtlab"
CLUSTER_SPEC = str(REPO / "examples" / "cluster-hetero.yaml")
LEASE, RENEW, RETRY = 6.0, 4.0, 1.0
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
DTLAB = [sys.executable, "-m", "dtlab.cli"]

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def plane():
    from dtlab.kube import localplane as lp

    ok, why = lp.binaries_available()
    require(ok, why)
    out = subprocess.run(DTLAB + ["cluster", "up", "--cluster", CLUSTER_SPEC, "--name", PLANE, "--json"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    try:
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        from kubernetes import client, config       # `cluster up` itself installed the CRD and the namespace
        a = config.new_client_from_config(config_file=info["kubeconfig"])
        conds = client.ApiextensionsV1Api(a).read_custom_resource_definition("dtjobs.dtlab.io").status.conditions
        assert any(c.type == "Established" and c.status == "True" for c in conds)
        client.CoreV1Api(a).read_namespace(NS)
        yield {**info, "kubectl": str(lp.find_binaries()["kubectl"])}
    finally:
        subprocess.run(DTLAB + ["cluster", "down", "--name", PLANE, "--purge"], capture_output=True, env=ENV,
                       timeout=120)


@pytest.fixture(scope="module")
def api(plane):
    from kubernetes import client, config
    a = config.new_client_from_config(config_file=plane["kubeconfig"])
    return {"core": client.CoreV1Api(a), "custom": client.CustomObjectsApi(a),
            "coord": client.CoordinationV1Api(a), "client": a}


class Operator:
    """One `dtlab operator` process (a replica); ``kill()`` is SIGKILL, like an OOM kill."""

    def __init__(self, kubeconfig: str, identity: str, tmp: Path, extra=()):
        self.identity = identity
        self.record = tmp / f"{identity}.jsonl"
        self.log = open(tmp / f"{identity}.log", "a")
        self.proc = subprocess.Popen(
            DTLAB + ["operator", "--kubeconfig", kubeconfig, "--identity", identity, "--cluster", CLUSTER_SPEC,
                     "--record", str(self.record), "--lease-duration-s", str(LEASE), "--renew-deadline-s",
                     str(RENEW), "--retry-period-s", str(RETRY), "--resync-s", "0.3", *extra],
            stdout=self.log, stderr=self.log, env=ENV, cwd=REPO, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        t = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return t

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()

    def lines(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


class Watcher:
    """Watches pods (name -> every UID seen) and DTJobs (every plans list seen) until stopped."""

    def __init__(self, api):
        from kubernetes import watch
        self.api = api
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.plans: dict[str, list[list]] = defaultdict(list)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._watch = watch
        self._threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in ("pods", "dtjobs")]
        for t in self._threads:
            t.start()

    def _loop(self, kind: str) -> None:
        rv = None
        while not self._stop.is_set():
            w = self._watch.Watch()
            try:
                if kind == "pods":
                    stream = w.stream(self.api["core"].list_namespaced_pod, NS, label_selector="dtlab.io/dtjob",
                                      resource_version=rv, timeout_seconds=5)
                else:
                    stream = w.stream(self.api["custom"].list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                                      resource_version=rv, timeout_seconds=5)
                for ev in stream:
                    obj = ev["object"]
                    if kind == "pods":
                        self.uids[obj.metadata.name].add(obj.metadata.uid)
                        rv = obj.metadata.resource_version
                    else:
                        plans = (obj.get("status") or {}).get("plans")
                        if plans:
                            self.plans[obj["metadata"]["name"]].append(plans)
                        rv = obj["metadata"]["resourceVersion"]
                    if self._stop.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - 410 or a dropped stream: relist from scratch
                self.errors.append(repr(exc)[:200])
                rv = None
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


def _create(api, bodies) -> None:
    for b in bodies:
        api["custom"].create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, b)


def _dtjobs(n: int, prefix: str, time_scale: float, policy: str = "resilient"):
    files = ["job-pipeline.yaml", "job-fanout.yaml", "job-single.yaml"]
    jobs = [load_job(REPO / "examples" / f) for f in files]
    return [dtjob_for(jobs[i % 3], name=f"{prefix}-{i}", policy=policy, samples=32, seed=i,
                      timeScale=time_scale) for i in range(n)]


def _get_all(api, names) -> dict[str, dict]:
    items = api["custom"].list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
    return {d["metadata"]["name"]: d for d in items if d["metadata"]["name"] in names}


def _wait_terminal(api, names, timeout_s: float, procs=()) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _get_all(api, names)
        if len(got) == len(names) and all((d.get("status") or {}).get("phase") in TERMINAL for d in got.values()):
            return got
        if time.monotonic() > deadline:
            open_ = {n: (d.get("status") or {}).get("phase") for n, d in got.items()
                     if (d.get("status") or {}).get("phase") not in TERMINAL}
            logs = "\n".join(f"--- {p.identity}\n" + Path(p.log.name).read_text()[-3000:] for p in procs)
            pytest.fail(f"not terminal after {timeout_s:.0f} s: {open_}\n{logs}")
        time.sleep(0.5)


def _check_no_duplicates(watcher, dtjobs, final) -> int:
    """Every stage: one pod, attempt 0, one UID ever, the UID status recorded; returns the pod count."""
    want = {}
    for d in dtjobs:
        name = d["metadata"]["name"]
        for s in d["spec"]["job"]["stages"]:
            st = final[name]["status"]["stages"][s["id"]]
            assert st["phase"] == "Succeeded" and st["attempt"] == 0, (name, s["id"], st)
            want[st["pod"]] = st["uid"]
    mine = {n: u for n, u in watcher.uids.items() if n in want or any(n.startswith(k + "-") for k in final)}
    dup = {n: u for n, u in mine.items() if len(u) != 1}
    assert not dup, f"pods created more than once: {dup}"
    assert set(mine) == set(want), set(mine) ^ set(want)
    assert all(mine[n] == {uid} for n, uid in want.items()), "status records a different pod UID"
    return len(want)


def _check_plans_never_changed(watcher, final) -> None:
    for name, d in final.items():
        plans = d["status"]["plans"]
        assert len(plans) == 1 and plans[0]["version"] == 1, (name, plans)
        seen = watcher.plans[name]
        assert seen, f"the watch never saw {name} with a plan"
        assert all(p[0] == plans[0] for p in seen), f"plan v1 of {name} changed while it ran"


# ------------------------------------------------------------------ crash and restart
ACTS = ("plan", "create", "delete", "failover", "invalid", "finish")


def _incarnations(op: "Operator") -> list[dict]:
    """Action counts per process start in a record shared by restarts (same identity, same file)."""
    runs: list[dict] = []
    for line in op.lines():
        if line["action"] == "start":
            runs.append({})
        elif runs:
            key = "create-replay" if line["action"] == "create" and not line.get("new") else line["action"]
            runs[-1][key] = runs[-1].get(key, 0) + 1
            if key == "create-replay":
                runs[-1]["create"] = runs[-1].get("create", 0) + 1
    return runs


def _acted(op: "Operator", n: int) -> bool:
    """Whether incarnation ``n`` (1-based) has started and done at least one action."""
    runs = _incarnations(op)
    return len(runs) >= n and sum(runs[n - 1].get(a, 0) for a in ACTS) > 0

def test_thirty_dtjobs_survive_five_sigkills_of_the_operator(plane, api, tmp_path):
    rng = np.random.default_rng(21)
    watcher = Watcher(api)
    dtjobs = _dtjobs(30, "crash", time_scale=1.5)
    names = {d["metadata"]["name"] for d in dtjobs}
    op = Operator(plane["kubeconfig"], "op-0", tmp_path)      # restarts keep the identity (as a pod's name)
    procs = [op]
    kills, open_at_kill = [], []
    t0 = time.monotonic()
    try:
        waves = [dtjobs[i:i + 6] for i in range(0, 30, 6)]
        next_wave = 0
        for k in range(5):
            if next_wave < len(waves):          # submit in waves so that every kill finds work in flight
                _create(api, waves[next_wave])
                next_wave += 1
            # a random moment while this incarnation is acting (not while it is still importing)
            deadline = time.monotonic() + 120
            while not _acted(op, k + 1):
                assert time.monotonic() < deadline and op.alive(), Path(op.log.name).read_text()[-3000:]
                time.sleep(0.05)
            time.sleep(float(rng.uniform(0.0, 2.5)))
            got = _get_all(api, names)
            open_at_kill.append(sum(1 for d in got.values() if (d.get("status") or {}).get("phase") not in TERMINAL))
            kills.append(op.kill())
            op = Operator(plane["kubeconfig"], "op-0", tmp_path)
            procs.append(op)
        for wave in waves[next_wave:]:
            _create(api, wave)
        final = _wait_terminal(api, names, 240, procs[-1:])
        elapsed = time.monotonic() - t0
        assert op.alive()
    finally:
        op.stop()
        watcher.stop()
    phases = {n: d["status"]["phase"] for n, d in final.items()}
    assert set(phases.values()) == {"Succeeded"}, phases
    assert min(open_at_kill) > 0, f"a kill found no DTJob in flight: {open_at_kill}"
    n_pods = _check_no_duplicates(watcher, dtjobs, final)
    _check_plans_never_changed(watcher, final)
    runs = _incarnations(op)
    assert len(runs) == 6 and all(sum(r.get(a, 0) for a in ACTS) > 0 for r in runs), runs
    replays = sum(r.get("create-replay", 0) for r in runs)
    print(f"\n30 DTJobs, {n_pods} stage pods, 5 SIGKILLs (open DTJobs at each kill: {open_at_kill}): all Succeeded "
          f"in {elapsed:.1f} s; each pod name one UID; plan v1 never changed ({sum(map(len, watcher.plans.values()))} "
          f"DTJob versions watched); creates that found their pod already there after a restart: {replays}; "
          f"actions per incarnation: {[{k: v for k, v in r.items() if k in ACTS} for r in runs]}")


# ------------------------------------------------------------------ two replicas
def test_two_replicas_leader_killed_the_other_takes_over_within_lease_plus_retry(plane, api, tmp_path):
    a = Operator(plane["kubeconfig"], "rep-a", tmp_path)
    procs = [a]
    watcher = Watcher(api)
    try:
        deadline = time.monotonic() + 90
        while not any(line["action"] == "leader" for line in a.lines()):
            assert time.monotonic() < deadline and a.alive(), Path(a.log.name).read_text()[-2000:]
            time.sleep(0.2)
        b = Operator(plane["kubeconfig"], "rep-b", tmp_path)
        procs.append(b)
        while not any(line["action"] == "start" for line in b.lines()):
            assert time.monotonic() < deadline and b.alive(), Path(b.log.name).read_text()[-2000:]
            time.sleep(0.2)
        dtjobs = _dtjobs(12, "ha", time_scale=2.0)
        names = {d["metadata"]["name"] for d in dtjobs}
        _create(api, dtjobs)
        while not any(line["action"] == "finish" for line in a.lines()):    # mid-run: some done, most not
            assert time.monotonic() < deadline, Path(a.log.name).read_text()[-2000:]
            time.sleep(0.1)
        got = _get_all(api, names)
        open_at_kill = sum(1 for d in got.values() if (d.get("status") or {}).get("phase") not in TERMINAL)
        t_kill = a.kill()
        while True:
            lease = api["coord"].read_namespaced_lease("dtlab-operator", NS)
            if lease.spec.holder_identity == "rep-b":
                break
            assert time.monotonic() < deadline + 60, "rep-b never took the Lease"
            time.sleep(0.05)
        takeover_s = lease.spec.acquire_time.timestamp() - t_kill
        final = _wait_terminal(api, names, 180, procs)
    finally:
        for p in procs:
            p.stop()
        watcher.stop()
    assert open_at_kill > 0
    assert 0 < takeover_s <= LEASE + RETRY, f"takeover took {takeover_s:.2f} s > lease {LEASE} + retry {RETRY}"
    assert {d["status"]["phase"] for d in final.values()} == {"Succeeded"}, "a job was lost"
    _check_no_duplicates(watcher, dtjobs, final)
    _check_plans_never_changed(watcher, final)
    acts = ("plan", "create", "delete", "failover", "invalid", "finish")
    la, lb = a.lines(), b.lines()
    b_lead = min(line["t"] for line in lb if line["action"] == "leader")
    assert b_lead >= t_kill
    assert not [line for line in lb if line["action"] in acts and line["t"] < b_lead], "rep-b acted as a follower"
    assert not [line for line in la if line["t"] > t_kill]
    by_b = [line for line in lb if line["action"] in acts]
    assert by_b, "rep-b did nothing after taking over"
    print(f"\n2 replicas: rep-a SIGKILLed with {open_at_kill}/12 DTJobs open; rep-b holds the Lease {takeover_s:.2f} s "
          f"later (bound: lease {LEASE:g} + retry {RETRY:g} s); rep-a did {sum(l['action'] in acts for l in la)} "
          f"actions, rep-b {len(by_b)}; 12/12 Succeeded")


# ------------------------------------------------------------------ RBAC, submit --operator, kubectl columns
def _sa_kubeconfig(plane, api, tmp_path) -> str:
    """A kubeconfig for ServiceAccount dtlab-operator (token from the TokenRequest API)."""
    from kubernetes import utils

    for d in yaml.safe_load_all((REPO / "cluster" / "manifests" / "operator-rbac.yaml").read_text()):
        if d:
            try:
                utils.create_from_dict(api["client"], d)
            except utils.FailToCreateError as exc:
                assert all(e.status == 409 for e in exc.api_exceptions), exc
    tok = api["core"].create_namespaced_service_account_token(
        "dtlab-operator", NS, {"spec": {"expirationSeconds": 3600}}).status.token
    cfg = yaml.safe_load(Path(plane["kubeconfig"]).read_text())
    cfg["users"] = [{"name": "dtlab-operator", "user": {"token": tok}}]
    cfg["contexts"][0]["context"]["user"] = "dtlab-operator"
    path = tmp_path / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_operator_rbac_is_least_privilege(plane, api, tmp_path):
    from kubernetes import client

    _sa_kubeconfig(plane, api, tmp_path)
    authz = client.AuthorizationV1Api(api["client"])
    user = "system:serviceaccount:dtlab:dtlab-operator"

    def can(verb, resource, ns=NS, group="", sub="", name=""):
        attrs = {"verb": verb, "resource": resource, "group": group, "subresource": sub, "name": name}
        if ns:
            attrs["namespace"] = ns
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": user, "groups": ["system:serviceaccounts", "system:serviceaccounts:dtlab"],
                           "resourceAttributes": attrs}}
        return authz.create_subject_access_review(review).status.allowed

    for verb in ("get", "list", "watch"):
        assert can(verb, "dtjobs", group="dtlab.io"), verb
        assert can(verb, "nodes", ns=None), verb
    for verb in ("get", "update", "patch"):
        assert can(verb, "dtjobs", group="dtlab.io", sub="status"), verb
    for verb in ("create", "delete", "get", "list", "watch"):
        assert can(verb, "pods"), verb
    assert can("create", "leases", group="coordination.k8s.io")
    for verb in ("get", "update"):
        assert can(verb, "leases", group="coordination.k8s.io", name="dtlab-operator"), verb
    denied = [("create", "dtjobs", NS, "dtlab.io", "", ""), ("delete", "dtjobs", NS, "dtlab.io", "", ""),
              ("update", "dtjobs", NS, "dtlab.io", "", ""), ("patch", "dtjobs", NS, "dtlab.io", "", ""),
              ("update", "leases", NS, "coordination.k8s.io", "", "kube-scheduler"),
              ("delete", "leases", NS, "coordination.k8s.io", "", "dtlab-operator"),
              ("create", "pods", "default", "", "", ""), ("create", "pods", NS, "", "exec", ""),
              ("get", "secrets", NS, "", "", ""), ("patch", "nodes", None, "", "", ""),
              ("create", "customresourcedefinitions", None, "apiextensions.k8s.io", "", "")]
    allowed = [d for d in denied if can(d[0], d[1], ns=d[2], group=d[3], sub=d[4], name=d[5])]
    assert not allowed, f"more than needed: {allowed}"


def test_submit_operator_under_its_serviceaccount_and_kubectl_columns(plane, api, tmp_path):
    kc = _sa_kubeconfig(plane, api, tmp_path)
    op = Operator(kc, "sa-op", tmp_path, extra=("--no-install-crd", "--lease-name", "dtlab-operator"))
    try:
        # another replica may still hold the Lease from an earlier test: wait for this one to lead
        out = subprocess.run(DTLAB + ["submit", str(REPO / "examples" / "job-fanout.yaml"), "--operator",
                                      "--kubeconfig", plane["kubeconfig"], "--job-name", "cli-fanout",
                                      "--policy", "resilient", "--time-scale", "0.5", "--wait", "--timeout", "120",
                                      "--json"], capture_output=True, text=True, env=ENV, timeout=200)
        assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:], Path(op.log.name).read_text()[-3000:])
        res = json.loads(out.stdout)
        assert res["phase"] == "Succeeded" and res["plans"][0]["by"] == "sa-op"
        assert set(res["stages"]) == {"split", "map-0", "map-1", "map-2", "reduce"}
        assert all(s["node"] == res["plans"][-1]["placement"][sid] for sid, s in res["stages"].items())
        errors = [line for line in Path(op.log.name).read_text().splitlines() if " ERROR " in line]
        assert not errors, errors        # least privilege was enough for everything it did
        get = subprocess.run([plane["kubectl"], "--kubeconfig", plane["kubeconfig"], "get", "dtjobs", "-n", NS,
                              "cli-fanout"], capture_output=True, text=True, timeout=60)
        assert get.returncode == 0, get.stderr
        header, row = get.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "POLICY", "PHASE", "P95-MS", "DEADLINE-MS", "NODES", "AGE"], header
        cells = row.split()
        assert cells[:3] == ["cli-fanout", "resilient", "Succeeded"] and cells[4] == "5000", row
        assert float(cells[3]) == pytest.approx(res["predictedP95Ms"], abs=1) and cells[5] == res["nodes"]
        print("\n" + get.stdout)
    finally:
        op.stop()


# ------------------------------------------------------------------ invalid specs
def test_invalid_dtjobs_are_rejected_or_marked_invalid_never_a_crash_loop(plane, api, tmp_path):
    from kubernetes.client.exceptions import ApiException

    good, bad_schema, bad_twin = _dtjobs(3, "inv", time_scale=0.3)
    bad_schema["spec"]["job"]["stages"][0]["compute"]["duration_ms"] = -5
    with pytest.raises(ApiException) as exc:
        _create(api, [bad_schema])
    assert exc.value.status == 422 and "spec.job.stages[0].compute.duration_ms" in exc.value.body, exc.value.body
    typo = dict(good, spec=dict(good["spec"], polcy="cvar"))     # unknown field: strict validation says so
    with pytest.raises(ApiException) as exc:
        api["custom"].create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, typo, field_validation="Strict")
    assert exc.value.status == 400 and "unknown field" in exc.value.body and "spec.polcy" in exc.value.body, exc.value.body
    bad_twin["spec"]["job"]["stages"][0]["after"] = ["nope"]   # schema-valid; only the twin can tell
    op = Operator(plane["kubeconfig"], "inv-op", tmp_path)
    try:
        _create(api, [bad_twin, good])
        final = _wait_terminal(api, {"inv-2", "inv-0"}, 120, [op])
        assert op.alive(), "the operator died on an invalid DTJob"
        st = final["inv-2"]["status"]
        assert st["phase"] == "Invalid" and "spec.job.stages[0].after[0]" in st["message"], st
        cond = {c["type"]: c for c in st["conditions"]}["Invalid"]
        assert cond["status"] == "True" and cond["reason"] == "InvalidSpec"
        assert final["inv-0"]["status"]["phase"] == "Succeeded"
        time.sleep(2.0)      # several passes later: written once, no retry loop
        assert sum(1 for line in op.lines() if line["action"] == "invalid") == 1
        with pytest.raises(ApiException) as exc:        # the plan was made for this spec: it cannot change
            api["custom"].patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "inv-0",
                                                         {"spec": {"policy": "cvar"}})
        assert exc.value.status == 422 and "immutable" in exc.value.body
    finally:
        op.stop()
    bad = subprocess.run(DTLAB + ["submit", str(REPO / "examples" / "cluster-hetero.yaml"), "--operator",
                                  "--kubeconfig", plane["kubeconfig"]], capture_output=True, text=True, env=ENV,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


# ------------------------------------------------------------------ shadow failover
def test_notready_node_moves_the_stage_to_its_recorded_shadow_as_plan_v2(plane, api, tmp_path):
    from dtlab.kube import localplane as lp
    from dtlab.model import Compute, Job, Stage

    job = Job("fo", (Stage("long", Compute(cpu=1, mem_gb=0.5, duration_ms=8000)),
                     Stage("short", Compute(cpu=1, mem_gb=0.5, duration_ms=300), after=("long",))))
    d = dtjob_for(job, name="fo-0", policy="resilient", samples=32)
    op = Operator(plane["kubeconfig"], "fo-op", tmp_path)
    victim = None
    try:
        _create(api, [d])
        deadline = time.monotonic() + 120
        while True:
            st = (_get_all(api, {"fo-0"}).get("fo-0") or {}).get("status") or {}
            if (st.get("stages") or {}).get("long", {}).get("phase") == "Running":
                break
            assert time.monotonic() < deadline, (st, Path(op.log.name).read_text()[-3000:])
            time.sleep(0.2)
        v1 = st["plans"][0]
        victim, shadow = v1["placement"]["long"], v1["shadow"]["long"]
        assert shadow != victim
        lp.set_node_failed(victim, True, name=PLANE)          # KWOK reports Ready=False
        final = _wait_terminal(api, {"fo-0"}, 120, [op])["fo-0"]["status"]
    finally:
        if victim:
            lp.set_node_failed(victim, False, name=PLANE)
        op.stop()
    assert final["phase"] == "Succeeded", final
    p1, p2 = final["plans"]
    assert p1 == v1, "plan v1 was changed"
    assert p2["version"] == 2 and p2["placement"]["long"] == shadow and victim in p2["reason"], p2
    long = final["stages"]["long"]
    assert long["node"] == shadow and long["attempt"] == 1 and long["planVersion"] == 2
    assert long["history"][0]["node"] == victim and "NotReady" in long["history"][0]["reason"]
    assert final["planVersion"] == 2
    print(f"\nfailover: {victim} NotReady -> stage long moved to the recorded shadow {shadow} (plan v2: "
          f"{p2['reason']})")
    deadline = time.monotonic() + 60                         # leave the plane whole
    core = api["core"]
    while not any(c.type == "Ready" and c.status == "True" for c in core.read_node(victim).status.conditions):
        assert time.monotonic() < deadline, f"{victim} did not recover"
        time.sleep(0.2)
