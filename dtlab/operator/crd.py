"""The ``DTJob`` CustomResourceDefinition (group ``dtlab.io``, version ``v1alpha1``).

One home for the CRD: :func:`crd_manifest` builds it, ``cluster/manifests/dtjob-crd.yaml``
is its rendering for other clusters (``tests/test_operator_unit.py`` checks they are equal;
``python -m dtlab.operator.crd > cluster/manifests/dtjob-crd.yaml`` regenerates it) and
:func:`install` creates or updates it and waits until the API server serves it.

**Spec** is what the twin reads: ``job`` is the ``spec`` of a ``dtlab/v1`` Job (``input_mb``,
``stages`` with ``id``, ``compute``, ``after``, ``output_mb``, ``constraints``), plus the job's
``deadlineMs``/``originZone`` and how to plan it (``policy``, ``predictor``, ``samples``,
``seed``) and run it (``timeScale``: pods run ``timeScale`` times the predicted time on KWOK
nodes; ``maxAttempts`` per stage). The structural schema rejects wrong types, negative or
zero durations and unknown formats/arches at admission (422 ``Invalid``); what a schema
cannot say (an ``after`` naming an unknown stage, a cycle, a stage no node can run, an unknown
policy) is found by the operator, which sets phase ``Invalid`` and an ``Invalid`` condition
naming the field path, and never retries it. The spec is immutable (CEL ``self == oldSelf``):
a plan recorded for one spec is never silently applied to another.

**Status** (subresource: only the operator writes it) holds ``plans`` (append-only plan
versions: placement, shadow, formats, prediction, reason, who and when), the per-stage view
(phase, node, attempt, pod, uid, observed times), ``phase``, ``conditions`` and copies of the
current plan's p95 and nodes for the printer columns.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import yaml

from ..model import ARCHES, NODE_FORMATS

GROUP, VERSION, KIND, PLURAL, SINGULAR = "dtlab.io", "v1alpha1", "DTJob", "dtjobs", "dtjob"
NAME = f"{PLURAL}.{GROUP}"
API_VERSION = f"{GROUP}/{VERSION}"
PHASES = ("Pending", "Planned", "Running", "Succeeded", "Failed", "Invalid")
TERMINAL = ("Succeeded", "Failed", "Invalid")
MAX_STAGES = 64

_STR = {"type": "string", "minLength": 1, "maxLength": 253}
_STRS = {"type": "array", "maxItems": MAX_STAGES, "items": _STR}
_FREE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _num(minimum: float, exclusive: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number", "minimum": minimum}
    if exclusive:
        out["exclusiveMinimum"] = True
    return out


def _stage_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["id", "compute"], "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 63},
        "after": _STRS,
        "output_mb": _num(0),
        "compute": {"type": "object", "required": ["duration_ms"], "properties": {
            "cpu": _num(0, True), "mem_gb": _num(0), "duration_ms": _num(0, True)}},
        "constraints": {"type": "object", "properties": {
            "arch": {"type": "array", "maxItems": 8, "items": {"type": "string", "maxLength": 16, "enum": list(ARCHES)}},
            "formats": {"type": "array", "maxItems": 8, "items": {"type": "string", "maxLength": 16, "enum": list(NODE_FORMATS)}},
            "zones": _STRS, "nodes": _STRS}},
    }}


def spec_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["job"],
            "x-kubernetes-validations": [{"rule": "self == oldSelf",
                                          "message": "spec is immutable: the plan in status was made for it "
                                                     "(create a new DTJob instead)"}],
            "properties": {
                "job": {"type": "object", "required": ["stages"], "properties": {
                    "input_mb": _num(0),
                    "stages": {"type": "array", "minItems": 1, "maxItems": MAX_STAGES, "items": _stage_schema()}}},
                "deadlineMs": _num(0, True),
                "originZone": _STR,
                "policy": {"type": "string", "minLength": 1, "maxLength": 63, "default": "greedy"},
                "predictor": {"type": "string", "maxLength": 16, "enum": ["fast", "des", "legacy"], "default": "fast"},
                "samples": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 128},
                "seed": {"type": "integer", "minimum": 0, "default": 0},
                "timeScale": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1000,
                              "default": 1.0},
                "maxAttempts": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
            }}


def status_schema() -> dict[str, Any]:
    cond = {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"}, "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"}}}
    return {"type": "object", "properties": {
        "phase": {"type": "string", "enum": list(PHASES)},
        "message": {"type": "string"},
        "planVersion": {"type": "integer"},
        "predictedP95Ms": {"type": "number"},
        "nodes": {"type": "string"},
        "observedLatencyMs": {"type": "number"},
        "plans": {"type": "array", "items": _FREE},
        "stages": {"type": "object", "additionalProperties": _FREE},
        "conditions": {"type": "array", "items": cond},
    }}


def crd_manifest() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of DTJob."""
    columns = [
        {"name": "Policy", "type": "string", "jsonPath": ".spec.policy"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "P95-ms", "type": "number", "jsonPath": ".status.predictedP95Ms",
         "description": "predicted p95 latency of the current plan (ms)"},
        {"name": "Deadline-ms", "type": "number", "jsonPath": ".spec.deadlineMs"},
        {"name": "Nodes", "type": "string", "jsonPath": ".status.nodes",
         "description": "nodes of the current plan's placement"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/part-of": "dtlab"}},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "listKind": f"{KIND}List",
                      "shortNames": ["dtj"], "categories": ["dtlab"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A job the digital twin plans (placement + shadow) and the dtlab operator runs "
                                   "as stage pods; status records every plan version and each stage's progress.",
                    "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"},
                                   "spec": spec_schema(), "status": status_schema()}}},
            }],
        },
    }


def manifest_yaml() -> str:
    head = ("# DTJob CustomResourceDefinition (dtlab.io/v1alpha1). Generated by `python -m dtlab.operator.crd`\n"
            "# from dtlab/operator/crd.py (the one home of the schema); `dtlab cluster up` installs it.\n")
    return head + yaml.safe_dump(crd_manifest(), sort_keys=False, width=110)


def install(api_client: Any, timeout_s: float = 60.0) -> str:
    """Create the CRD (or replace it with this version) and wait until it is Established; returns its name."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    body = crd_manifest()
    try:
        ext.create_custom_resource_definition(body, _request_timeout=30)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(NAME, _request_timeout=30)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(NAME, body, _request_timeout=30)
    deadline = time.monotonic() + timeout_s
    while True:
        conds = ext.read_custom_resource_definition(NAME, _request_timeout=30).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conds):
            return NAME
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {NAME} not Established after {timeout_s:.0f} s: "
                               + "; ".join(f"{c.type}={c.status} {c.message or ''}" for c in conds))
        time.sleep(0.2)


def install_on(kubeconfig: str, timeout_s: float = 60.0, namespace: str | None = "dtlab") -> str:
    """:func:`install` on the cluster of ``kubeconfig`` and create ``namespace`` (DTJobs live there);
    failures are DtlabErrors (CLI exit 3, no traceback)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from ..errors import DtlabError
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        name = install(api, timeout_s)
        if namespace:
            try:
                client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}}, _request_timeout=30)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        return name
    except Exception as exc:  # noqa: BLE001 - ApiException, timeout, connection: one clear message
        raise DtlabError(f"installing the DTJob CRD failed: {exc}") from None


if __name__ == "__main__":   # python -m dtlab.operator.crd > cluster/manifests/dtjob-crd.yaml
    sys.stdout.write(manifest_yaml())
