"""Kubernetes scheduler extender backed by the twin's predictions.

kube-scheduler (KubeSchedulerConfiguration ``extenders``) POSTs ``ExtenderArgs``
(``{"Pod": ..., "Nodes": {"items": [...]}}`` or ``"NodeNames": [...]`` when
``nodeCacheCapable``) to ``/extender/filter`` and ``/extender/prioritize``.
Filter drops nodes the twin knows cannot run the pod (down, cordoned, unknown,
arch/format/resources); prioritize scores the rest 0..10 from the predicted
mean latency of the pod as a one-stage job on that node, so the scheduler binds
where the twin predicts the pod finishes first. Every decision carries a
per-node explanation: logged, returned to the caller, and (when a Kubernetes
client is given) written to the pod as the ``dtlab.io/explanation`` annotation.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

from flask import Blueprint, jsonify, request

from .errors import SpecError
from .model import ARCHES, Compute, Constraints, Job, Stage
from .timing import exec_format

log = logging.getLogger("dtlab.extender")
MAX_PRIORITY = 10
DURATION_ANNOTATION = "dtlab.io/duration-ms"
EXPLANATION_ANNOTATION = "dtlab.io/explanation"
FORMAT_LABEL = "dtlab.io/format"


def pod_to_job(pod: dict[str, Any]) -> Job:
    """A pod as a one-stage Job: cpu/memory from requests, duration from the dtlab annotation (default 1 s)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    cpu = mem_gb = 0.0
    for c in spec.get("containers") or []:
        req = ((c.get("resources") or {}).get("requests")) or {}
        cpu += parse_cpu(req.get("cpu", "0"))
        mem_gb += parse_mem_gb(req.get("memory", "0"))
    try:
        duration = float(annotations.get(DURATION_ANNOTATION, 1000))
    except ValueError:
        raise SpecError(f"Pod.metadata.annotations.{DURATION_ANNOTATION}", "must be a number of ms") from None
    selector = spec.get("nodeSelector") or {}
    arch = selector.get("kubernetes.io/arch")
    fmt = labels.get(FORMAT_LABEL)
    # A nodeSelector on kubernetes.io/arch pins the node's arch, i.e. native execution there,
    # unless the pod says it is an emulated or wasm worker (dtlab.io/format label).
    if fmt in ("native", "qemu", "wasm"):
        formats = (fmt,)
    else:
        formats = ("native",) if arch in ARCHES else None
    constraints = Constraints(arch=(arch,) if arch in ARCHES and fmt != "qemu" else None, formats=formats)
    stage = Stage(id="main", compute=Compute(cpu=max(cpu, 0.1), mem_gb=mem_gb, duration_ms=max(duration, 1.0)),
                  constraints=constraints)
    return Job(name=meta.get("name") or "pod", stages=(stage,))


def parse_cpu(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text or 0)


def parse_mem_gb(value: Any) -> float:
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix] / 2**30
    return float(text or 0) / 2**30


def candidate_names(args: dict[str, Any]) -> list[str]:
    if args.get("NodeNames") is not None:
        return list(args["NodeNames"])
    items = ((args.get("Nodes") or {}).get("items")) or []
    return [((n.get("metadata") or {}).get("name")) for n in items]


class Extender:
    def __init__(self, twin, samples: int = 64, annotate: Callable[[dict, dict], None] | None = None):
        self.twin = twin
        self.samples = samples
        self.annotate = annotate  # (pod, explanation) -> None; e.g. a kubernetes client patch

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        job = pod_to_job(args.get("Pod") or {})
        stage = job.stages[0]
        snap = self.twin.state.snapshot()
        keep, failed = [], {}
        for name in candidate_names(args):
            status = snap.nodes.get(name)
            if status is None:
                failed[name] = "unknown to the twin"
            elif not status.up:
                failed[name] = "down in the twin's state"
            elif status.cordoned:
                failed[name] = "cordoned"
            elif exec_format(stage, status.node, self.twin.timing.overheads) is None:
                failed[name] = "cannot run the pod (arch/format/resources)"
            else:
                keep.append(name)
        log.info("filter pod=%s keep=%s failed=%s", job.name, keep, failed)
        return self._nodes_result(args, keep, failed)

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        pod = args.get("Pod") or {}
        job = pod_to_job(pod)
        snap = self.twin.state.snapshot()
        predicted: dict[str, float] = {}
        for name in candidate_names(args):
            status = snap.nodes.get(name)
            if status is None or not status.schedulable or exec_format(job.stages[0], status.node) is None:
                continue
            pred = self.twin.predict(job, {"main": name}, predictor="fast", samples=self.samples, seed=0)
            predicted[name] = pred["mean_ms"]
        scores = score_from_latency(predicted)
        explanation = {n: {"predicted_mean_ms": round(predicted[n], 1), "score": scores[n]} for n in predicted}
        log.info("prioritize pod=%s %s", job.name, json.dumps(explanation, sort_keys=True))
        if self.annotate is not None and explanation:
            try:
                self.annotate(pod, explanation)
            except Exception as exc:  # an explanation must never block scheduling
                log.warning("could not annotate pod %s: %s", job.name, exc)
        return [{"Host": n, "Score": scores.get(n, 0)} for n in candidate_names(args)]

    @staticmethod
    def _nodes_result(args, keep, failed):
        if args.get("NodeNames") is not None:
            return {"NodeNames": keep, "FailedNodes": failed, "Error": ""}
        items = [n for n in (args.get("Nodes") or {}).get("items", []) if n["metadata"]["name"] in keep]
        return {"Nodes": {"items": items}, "FailedNodes": failed, "Error": ""}


def score_from_latency(predicted: dict[str, float]) -> dict[str, int]:
    """Linear 0..10: the fastest predicted node gets 10, the slowest 0 (all 10 when equal)."""
    if not predicted:
        return {}
    lo, hi = min(predicted.values()), max(predicted.values())
    if hi - lo < 1e-9:
        return {n: MAX_PRIORITY for n in predicted}
    return {n: int(round(MAX_PRIORITY * (hi - v) / (hi - lo))) for n, v in predicted.items()}


def blueprint(extender: Extender) -> Blueprint:
    bp = Blueprint("extender", __name__, url_prefix="/extender")

    @bp.post("/filter")
    def filter_():
        args = request.get_json(force=True, silent=True)
        if not isinstance(args, dict):
            return jsonify({"Error": "body must be ExtenderArgs JSON"}), 400
        try:
            return jsonify(extender.filter(args))
        except SpecError as exc:
            return jsonify({"Error": str(exc), "FailedNodes": {}}), 400

    @bp.post("/prioritize")
    def prioritize():
        args = request.get_json(force=True, silent=True)
        if not isinstance(args, dict):
            return jsonify({"Error": "body must be ExtenderArgs JSON"}), 400
        try:
            return jsonify(extender.prioritize(args))
        except SpecError as exc:
            return jsonify({"Error": str(exc)}), 400

    return bp


def kube_annotator(core_v1) -> Callable[[dict, dict], None]:
    """Annotate the pod with the per-node explanation (official client ``CoreV1Api``)."""
    def annotate(pod: dict, explanation: dict) -> None:
        meta = pod.get("metadata") or {}
        body = {"metadata": {"annotations": {EXPLANATION_ANNOTATION: json.dumps(explanation, sort_keys=True)}}}
        core_v1.patch_namespaced_pod(meta["name"], meta.get("namespace", "default"), body)
    return annotate
