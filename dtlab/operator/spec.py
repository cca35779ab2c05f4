"""A DTJob's spec as the twin reads it, and the DTJob built from a Job spec file.

:func:`job_of` turns ``spec.job`` (+ ``deadlineMs``, ``originZone``) into a ``dtlab/v1`` Job
document and reads it with :func:`dtlab.model.job_from_dict`, so the operator accepts exactly
what ``dtlab plan`` accepts and its errors carry the same field paths, prefixed with where they
are in the DTJob (``spec.job.stages[1].after[0]: unknown stage id 'x'``).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import SpecError
from ..model import Job, job_from_dict
from ..spec_reader import job_to_spec
from .crd import API_VERSION, KIND

DEFAULTS = {"policy": "greedy", "predictor": "fast", "samples": 128, "seed": 0, "timeScale": 1.0, "maxAttempts": 3}


def settings(dtjob: Mapping[str, Any]) -> dict[str, Any]:
    """policy, predictor, samples, seed, timeScale, maxAttempts with the CRD's defaults."""
    spec = dtjob.get("spec") or {}
    return {k: spec.get(k, v) if spec.get(k) is not None else v for k, v in DEFAULTS.items()}


def job_of(dtjob: Mapping[str, Any]) -> Job:
    """The dtlab Job of a DTJob (named after the DTJob); SpecError with the DTJob field path."""
    spec = dtjob.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("job"), Mapping):
        raise SpecError("spec.job", "is required (the spec of a dtlab/v1 Job: input_mb, stages)")
    meta: dict[str, Any] = {"name": dtjob["metadata"]["name"]}
    if spec.get("deadlineMs") is not None:
        meta["deadline_ms"] = spec["deadlineMs"]
    if spec.get("originZone") is not None:
        meta["origin"] = {"zone": spec["originZone"]}
    doc = {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": meta, "spec": dict(spec["job"])}
    try:
        return job_from_dict(doc)
    except SpecError as exc:
        field = exc.field
        if field.startswith("spec."):
            field = "spec.job." + field[len("spec."):]
        elif field == "metadata.deadline_ms":
            field = "spec.deadlineMs"
        elif field.startswith("metadata.origin"):
            field = "spec.originZone"
        raise SpecError(field, exc.rule) from None


def job_spec(job: Job) -> dict[str, Any]:
    """``spec.job`` of a DTJob for a loaded Job (either file layout), in the dtlab/v1 field names."""
    return job_to_spec(job)


def dtjob_for(job: Job, name: str | None = None, namespace: str = "dtlab", **settings_: Any) -> dict[str, Any]:
    """A DTJob for a dtlab Job and planning settings (None values take the CRD defaults)."""
    spec: dict[str, Any] = {"job": job_spec(job)}
    if job.deadline_ms is not None:
        spec["deadlineMs"] = job.deadline_ms
    if job.origin_zone:
        spec["originZone"] = job.origin_zone
    spec.update({k: v for k, v in settings_.items() if v is not None})
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name or job.name, "namespace": namespace}, "spec": spec}
