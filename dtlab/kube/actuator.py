"""Actuator: the twin's hands on a real API server (official ``kubernetes`` client, CoreV1Api).

What it does: cordon/uncordon nodes, create one worker pod per (job, stage, attempt) pinned
to the planned node, delete a job's pods (cancel, pod-kill), and patch the KWOK failure
label. Every call has a request timeout and is retried with exponential backoff (seeded
jitter) on 5xx, 429 and connection errors, within an overall ``deadline_s``; 4xx other
than 409/429 fail at once with a :class:`dtlab.errors.DtlabError` naming the object.

**Idempotent creates.** Pod names are deterministic, ``<job>-<stage>-<attempt>`` sanitised
to a DNS-1123 label (a hash suffix keeps distinct inputs distinct when sanitising or
truncating changed them), and every pod carries a ``dtlab.io/spec-hash`` annotation. A
retry after a timeout whose first POST did land gets 409 AlreadyExists: if the stored
pod has the same spec hash it *is* our pod and the create counts as success, so a retry
never makes a duplicate; a 409 with another hash is a real conflict and raises.

**Pinning: ``spec.nodeName`` by default, not required node affinity.** The twin *is* the
scheduler here: it already chose the node from its model (processor sharing, with the
contention it predicts). ``nodeName`` binds at creation, so (1) the pod lands exactly
where the plan said, never elsewhere and never later because kube-scheduler is busy
(no scheduling round trip: that latency would be measured as the twin's error);
(2) kube-scheduler's resource fit cannot leave the pod Pending when the twin
deliberately oversubscribes a node it models as shared. The price: nodeName skips the
scheduler's checks (taints, cordon, fit) — a cordoned node still accepts a pinned pod,
so the *planner* must avoid cordoned nodes (the observer reports cordons to the twin),
and a real kubelet may reject an overcommitted pod (OutOfcpu -> phase Failed, which the
observer reports as a failed stage). ``pinning="affinity"`` (requiredDuringScheduling
node affinity on ``kubernetes.io/hostname``) is offered for clusters where bypassing the
scheduler is not allowed (admission policies, extenders that must see every pod).

**Labels** (``dtlab.io/job``, ``dtlab.io/stage``, ``dtlab.io/attempt``, ``dtlab.io/arch``,
``dtlab.io/format``, ``app.kubernetes.io/managed-by=dtlab``) are what the observer
watches and what pod-kill faults select (:mod:`dtlab.chaos.spec`). Wasm stages get
``runtimeClassName: wasm`` (``cluster/manifests/runtimeclass-wasm.yaml``). The KWOK
completion delay annotation (``pod-complete.stage.kwok.x-k8s.io/delay``) carries the
stage's service time, so on KWOK the pod succeeds after it; on real nodes it is inert.

**Real nodes** (``dtlab.io/node-kind=real``, :mod:`dtlab.kube.realnodes`): the pod runs the worker
image for the node's arch and the stage's format (``PodSpec.image``/``args``: kernel and iterations,
``imagePullPolicy: Never``: the images are imported, no registry) with a CPU limit of the node's
scaled share; the worker writes its own ns start/end times, ``uname -m`` and the kernel's report to
its termination message, which the observer reads. No ``runtimeClassName`` there: no Wasm shim
exists on these nodes, the wasm image runs its WASI kernel under wazero inside runc.

``dry_run=True`` sends every mutating call with ``dry_run="All"``: the server validates
and admits it, nothing is stored.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import DtlabError

NAMESPACE = "dtlab"
MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL, STAGE_LABEL, ATTEMPT_LABEL = "dtlab.io/job", "dtlab.io/stage", "dtlab.io/attempt"
ARCH_LABEL, FORMAT_LABEL, NODE_LABEL = "dtlab.io/arch", "dtlab.io/format", "dtlab.io/planned-node"
SPEC_HASH = "dtlab.io/spec-hash"
JOB_ANNOTATION, STAGE_ANNOTATION = "dtlab.io/job-name", "dtlab.io/stage-id"   # unsanitised originals
DURATION_ANNOTATION = "dtlab.io/duration-ms"          # as dtlab.extender reads it
KWOK_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"  # cluster/kwok/stages.yaml
KWOK_NODE_FAIL_LABEL = "node-not-ready.stage.kwok.x-k8s.io"
NODE_KIND_LABEL = "dtlab.io/node-kind"                # real | kwok (pods and nodes)
WASM_RUNTIME_CLASS = "wasm"
DEFAULT_IMAGE = "registry.k8s.io/pause:3.10"

_DNS_BAD = re.compile(r"[^a-z0-9-]+")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


class KubeError(DtlabError):
    """An API call failed for good (non-retryable status, or retries exhausted)."""

    def __init__(self, what: str, detail: str, status: int | None = None):
        super().__init__(f"{what}: {detail}")
        self.status = status


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(text: str, max_len: int = 63) -> str:
    """``text`` as a DNS-1123 label; a hash suffix when sanitising/truncating changed it (no collisions)."""
    clean = _DNS_BAD.sub("-", text.lower()).strip("-") or "x"
    if clean == text and len(clean) <= max_len:
        return clean
    suffix = _short_hash(text)
    return f"{clean[:max_len - len(suffix) - 1].rstrip('-')}-{suffix}".lstrip("-")


def label_value(text: str) -> str:
    """``text`` as a label value (<= 63 chars, alnum at both ends); hashed suffix if it had to change."""
    clean = _LABEL_BAD.sub("-", text).strip("-_.")
    if clean == text and len(clean) <= 63:
        return clean
    suffix = _short_hash(text)
    return f"{clean[:56].strip('-_.')}-{suffix}".strip("-_.")


def pod_name(job: str, stage: str, attempt: int = 0) -> str:
    """Deterministic pod name of one attempt of one stage: a retry of the same create reuses it."""
    tail = f"-{int(attempt)}"
    return dns_label(f"{job}-{stage}", 63 - len(tail)) + tail


@dataclass(frozen=True)
class PodSpec:
    """One worker pod the twin wants: where, what, for how long."""
    job: str
    stage: str
    node: str
    attempt: int = 0
    arch: str = "amd64"
    format: str = "native"                 # execution format key (native, qemu-arm64, wasm, ...)
    cpu: float = 1.0
    mem_gb: float = 0.5
    duration_ms: float = 1000.0            # the KWOK completion delay (predicted service time)
    nominal_ms: float | None = None        # stage duration_ms of the spec (extender annotation)
    image: str = DEFAULT_IMAGE
    args: tuple[str, ...] = ()             # worker arguments (real nodes: kernel, iterations)
    node_kind: str = "kwok"                # real: the worker image runs on a kubelet (no runtime class)
    cpu_limit: float | None = None         # real nodes: the scaled CPU share (else cpu)
    scheduler: str | None = None           # unpinned: this schedulerName places the pod (kube-scheduler policy)
    match: tuple[tuple[str, tuple[str, ...]], ...] = ()   # unpinned: required node labels (key, values)

    @property
    def name(self) -> str:
        return pod_name(self.job, self.stage, self.attempt)


def pod_manifest(spec: PodSpec, namespace: str = NAMESPACE, pinning: str = "nodeName",
                 extra_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The v1 Pod for ``spec`` (see the module docstring for the pinning choice).

    ``extra_metadata`` (labels, annotations, ownerReferences) is merged in before the spec
    hash is taken, so it is part of what makes a 409 "our own pod" (dtlab.operator uses it)."""
    if pinning not in ("nodeName", "affinity"):
        raise KubeError("pinning", f"must be 'nodeName' or 'affinity', got {pinning!r}")
    fmt_family = spec.format.split("-")[0]
    labels = {MANAGED_BY: "dtlab", JOB_LABEL: label_value(spec.job), STAGE_LABEL: label_value(spec.stage),
              ATTEMPT_LABEL: str(int(spec.attempt)), ARCH_LABEL: label_value(spec.arch),
              FORMAT_LABEL: fmt_family, NODE_LABEL: label_value(spec.node), NODE_KIND_LABEL: spec.node_kind}
    # millicores rounded down: a real node's parent cgroup has a quota of cores x speed x scale CPUs
    # (dtlab.kube.realnodes), and runc refuses a container quota above it (cgroup v1: "invalid argument";
    # a 1-core speed-1 node at scale 0.555556 got 556m = 55600 us over its 55556 us)
    cpu_m = max(1, int((spec.cpu_limit if spec.cpu_limit is not None else spec.cpu) * 1000 + 1e-6))
    mem_mi = max(1, int(round(spec.mem_gb * 1024)))
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [{
            "name": "worker", "image": spec.image, "imagePullPolicy": "IfNotPresent",
            "resources": {"requests": {"cpu": f"{cpu_m}m", "memory": f"{mem_mi}Mi"},
                          "limits": {"cpu": f"{cpu_m}m", "memory": f"{mem_mi}Mi"}},
            "env": [{"name": "DTLAB_JOB", "value": spec.job}, {"name": "DTLAB_STAGE", "value": spec.stage},
                    {"name": "DTLAB_FORMAT", "value": spec.format}],
        }],
    }
    if spec.scheduler:
        pod_spec["schedulerName"] = spec.scheduler
        if spec.match:
            pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": k, "operator": "In", "values": list(v)} for k, v in spec.match]}]}}}
    elif pinning == "nodeName":
        pod_spec["nodeName"] = spec.node
    else:
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [spec.node]}]}]}}}
    if spec.args:
        pod_spec["containers"][0]["args"] = list(spec.args)
    if spec.node_kind == "real":
        pod_spec["containers"][0].update(imagePullPolicy="Never", terminationMessagePolicy="File")
        if spec.scheduler:     # KWOK nodes may take it too: their pods need no image
            pod_spec["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    elif fmt_family == "wasm":
        pod_spec["runtimeClassName"] = WASM_RUNTIME_CLASS
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": spec.name, "namespace": namespace, "labels": labels,
                         "annotations": {JOB_ANNOTATION: spec.job, STAGE_ANNOTATION: spec.stage,
                                         KWOK_DELAY: f"{max(1, int(round(spec.duration_ms)))}ms",
                                         DURATION_ANNOTATION: f"{spec.nominal_ms if spec.nominal_ms is not None else spec.duration_ms:.0f}"}},
            "spec": pod_spec}
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, Mapping):
            body["metadata"].setdefault(key, {}).update(value)
        else:
            body["metadata"][key] = value
    body["metadata"]["annotations"][SPEC_HASH] = _short_hash(json.dumps(body, sort_keys=True), 16)
    return body


def _with_uid(out: dict[str, Any], obj: Any) -> dict[str, Any]:
    """``out`` plus ``uid`` (metadata.uid of the stored pod) when the API returned one."""
    meta = getattr(obj, "metadata", None)
    if meta is None and isinstance(obj, Mapping):
        meta = obj.get("metadata")
    uid = (meta.get("uid") if isinstance(meta, Mapping) else getattr(meta, "uid", None)) if meta else None
    if isinstance(uid, str):
        out["uid"] = uid
    return out


def _status(exc: BaseException) -> int | None:
    """HTTP status of an ApiException (kubernetes >= 35 raises subclasses: ConflictException, ...)."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "ApiException":
            return getattr(exc, "status", None)
    return None


def retryable(exc: BaseException) -> bool:
    """5xx, 429 and connection-level failures (refused, reset, timeouts) are worth retrying."""
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500 or status == 0
    import urllib3.exceptions as ux
    return isinstance(exc, (ux.HTTPError, ConnectionError, TimeoutError, OSError))


class Actuator:
    """CoreV1Api calls with timeouts, retries and idempotent pod creation.

    ``core``: a CoreV1Api (or anything with the same methods: unit tests pass a fake);
    else one is built from ``kubeconfig``. ``sleep`` is injectable so tests need no waiting.
    """

    def __init__(self, kubeconfig: str | None = None, *, core: Any = None, namespace: str = NAMESPACE,
                 dry_run: bool = False, pinning: str = "nodeName", timeout_s: float = 10.0,
                 deadline_s: float = 90.0, backoff_s: float = 0.2, backoff_max_s: float = 3.0, seed: int = 0,
                 sleep: Callable[[float], None] = time.sleep):
        if core is None:
            if kubeconfig is None:
                raise KubeError("kubeconfig", "need a kubeconfig path or a CoreV1Api")
            from kubernetes import client, config
            api_client = config.new_client_from_config(config_file=str(kubeconfig))
            core = client.CoreV1Api(api_client)
        pod_manifest(PodSpec("j", "s", "n"), namespace, pinning)   # validates pinning
        self.core = core
        self.namespace = namespace
        self.dry_run = bool(dry_run)
        self.pinning = pinning
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self._rng = np.random.default_rng(seed)
        self._sleep = sleep
        self.retries = 0            # retried calls (5xx/connection), for reports and tests
        self.conflicts_same = 0     # 409s that were our own pod (an earlier attempt landed)

    # ------------------------------------------------------------ plumbing
    def _kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"_request_timeout": self.timeout_s}
        if self.dry_run:
            kw["dry_run"] = "All"
        return kw

    def call(self, what: str, fn: Callable[[], Any], ok_status: tuple[int, ...] = ()) -> Any:
        """Run ``fn`` with retries; a status in ``ok_status`` returns the exception instead of raising."""
        deadline = time.monotonic() + self.deadline_s
        delay = self.backoff_s
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                status = _status(exc)
                if status in ok_status:
                    return exc
                if not retryable(exc) or time.monotonic() + delay > deadline:
                    body = getattr(exc, "body", None) or str(exc)
                    raise KubeError(what, f"{type(exc).__name__} {status or ''} {str(body)[:300]}".strip(),
                                    status) from exc
                self.retries += 1
                self._sleep(delay * (0.5 + self._rng.random()))
                delay = min(self.backoff_max_s, delay * 2)

    # ------------------------------------------------------------ namespace
    def ensure_namespace(self) -> None:
        self.call(f"create namespace {self.namespace}", lambda: self.core.create_namespace(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}, **self._kw()),
            ok_status=(409,))

    # ------------------------------------------------------------ nodes
    def cordon(self, node: str, on: bool = True) -> None:
        self.call(f"{'cordon' if on else 'uncordon'} node {node}",
                   lambda: self.core.patch_node(node, {"spec": {"unschedulable": bool(on) or None}}, **self._kw()))

    def uncordon(self, node: str) -> None:
        self.cordon(node, False)

    def set_node_failed(self, node: str, failed: bool = True) -> None:
        """KWOK's node-not-ready stage: the label makes KWOK report Ready=False (fail-stop for the plane)."""
        self.call(f"mark node {node} {'failed' if failed else 'recovered'}",
                   lambda: self.core.patch_node(node, {"metadata": {"labels": {
                       KWOK_NODE_FAIL_LABEL: "true" if failed else None}}}, **self._kw()))

    def list_nodes(self) -> list[Any]:
        return self.call("list nodes", lambda: self.core.list_node(_request_timeout=self.timeout_s)).items

    # ------------------------------------------------------------ pods
    def create_pod(self, spec: PodSpec, extra_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create ``spec``'s pod; returns {name, created: bool, node[, uid]}. 409 with the same spec hash is success."""
        body = pod_manifest(spec, self.namespace, self.pinning, extra_metadata)
        name = body["metadata"]["name"]
        out = self.call(f"create pod {self.namespace}/{name}",
                         lambda: self.core.create_namespaced_pod(self.namespace, body, **self._kw()),
                         ok_status=(409,))
        if _status(out) != 409:
            return _with_uid({"name": name, "created": True, "node": spec.node}, out)
        existing = self.call(f"read pod {self.namespace}/{name}", lambda: self.core.read_namespaced_pod(
            name, self.namespace, _request_timeout=self.timeout_s))
        ann = (existing.metadata.annotations or {}) if hasattr(existing, "metadata") else \
            (existing.get("metadata", {}).get("annotations") or {})
        if ann.get(SPEC_HASH) != body["metadata"]["annotations"][SPEC_HASH]:
            raise KubeError(f"create pod {self.namespace}/{name}",
                            "a different pod with this name already exists (spec hash differs)", 409)
        self.conflicts_same += 1
        return _with_uid({"name": name, "created": False, "node": spec.node}, existing)

    def delete_pod(self, name: str, grace_s: int = 0) -> bool:
        """Delete one pod now (grace 0); False if it was already gone."""
        out = self.call(f"delete pod {self.namespace}/{name}", lambda: self.core.delete_namespaced_pod(
            name, self.namespace, grace_period_seconds=grace_s, **self._kw()), ok_status=(404,))
        return _status(out) != 404

    def pods(self, job: str | None = None, stage: str | None = None) -> list[Any]:
        sel = [f"{MANAGED_BY}=dtlab"]
        if job is not None:
            sel.append(f"{JOB_LABEL}={label_value(job)}")
        if stage is not None:
            sel.append(f"{STAGE_LABEL}={label_value(stage)}")
        return self.call("list pods", lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=",".join(sel), _request_timeout=self.timeout_s)).items

    def delete_job(self, job: str, stage: str | None = None) -> list[str]:
        """Cancel / pod-kill: delete every pod of ``job`` (``stage``) with grace 0; returns the names."""
        names = [p.metadata.name for p in self.pods(job, stage)]
        for n in names:
            self.delete_pod(n)
        return names

    cancel = delete_job


def pod_spec_for(job, stage_id: str, node, fmt: str, attempt: int, duration_ms: float,
                 image: str = DEFAULT_IMAGE, real_scale: float | None = None, kernel: str = "mix",
                 seed: int = 42, scheduler: str | None = None, fetch: tuple[str, ...] = ()) -> PodSpec:
    """PodSpec of stage ``stage_id`` of dtlab Job ``job`` on dtlab Node ``node``.

    ``real_scale`` (a real node's ``dtlab.io/cpu-scale``): run the real work instead of a delay, as the
    fabric does: ``duration_ms * scale`` reference ms of ``kernel`` iterations (calibrated natively
    on this host) in one single-threaded worker capped at ``speed * scale`` CPUs, so it takes about
    ``duration_ms / speed`` (times the format's real overhead) of wall time.

    ``scheduler`` (policy kube-scheduler): the pod is created unpinned for that schedulerName, with the
    stage's arch/zone/node constraints as required node affinity. ``node`` is then only the twin's
    guess; on real nodes the image is ``dtlab/worker:node`` (each node's containerd tags its own
    arch's worker so, as a multi-arch image would, it runs natively wherever it lands) and the CPU
    cap is ``scale`` (a speed-1 core: the node is not known when the pod is made; its cgroup quota
    still bounds the node as a whole).

    ``fetch`` (real nodes): the worker's ``--fetch`` values, the stage's inputs read over the shaped pod
    network before its work (:meth:`dtlab.kube.links.PodLinks.fetch_arg`; unpinned pods:
    :meth:`~dtlab.kube.links.PodLinks.fetch_arg_any`, the node found from the pod's address)."""
    stage = job.stages[job.stage_index[stage_id]]
    base = dict(job=job.name, stage=stage_id, node=node.name, attempt=attempt, arch=node.arch, format=fmt,
                cpu=stage.compute.cpu, mem_gb=stage.compute.mem_gb, duration_ms=duration_ms,
                nominal_ms=stage.compute.duration_ms)
    if scheduler:
        c = stage.constraints
        match = tuple((k, tuple(v)) for k, v in (("dtlab.io/arch", c.arch), ("topology.kubernetes.io/zone", c.zones),
                                                  ("kubernetes.io/hostname", c.nodes)) if v)
        base.update(node="", format="native", scheduler=scheduler, match=match)
    if real_scale is None:
        return PodSpec(**base, image=image)
    from ..fabric import worker
    from .realnodes import NODE_NATIVE_IMAGE, image_for
    iters = worker.iterations_for(stage.compute.duration_ms, kernel, real_scale)
    if scheduler:
        return PodSpec(**base, image=NODE_NATIVE_IMAGE, node_kind="real", cpu_limit=max(0.001, real_scale),
                       args=("--format", "native", "--kernel", kernel, "--iters", str(iters), "--seed", str(int(seed)),
                             *(a for f in fetch for a in ("--fetch", f))))
    return PodSpec(**base, image=image_for(node.arch, fmt), node_kind="real",
                   cpu_limit=max(0.001, node.speed * real_scale),
                   args=("--format", fmt, "--kernel", kernel, "--iters", str(iters), "--seed", str(int(seed)),
                         *(a for f in fetch for a in ("--fetch", f))))


def labels_of(pod: Mapping[str, Any]) -> dict[str, str]:
    return dict(((pod.get("metadata") or {}).get("labels")) or {})
