"""Container start-up per format on real kube nodes: measured from real pods, cached, used by the twin.

On a real node the worker's start is its own ns clock, so a stage row's ``startup_ms`` (pod create ->
worker start: API server, scheduler/kubelet sync, sandbox, image, runtime and, for qemu-*/wasm, the
emulator or Wasm runtime start) is outside the work the twin's ``duration_ms`` models. This module
measures it the way the kube substrate pays it: tiny one-stage jobs through
:class:`dtlab.substrates.kube.KubeSubstrate`, pinned to each real node of a running plane in each
format that node offers (:func:`dtlab.model.format_keys`), one job at a time, formats interleaved, after
one uncounted warm-up pod per node (the first pod on a node pays one-off costs).
The document has the fabric's start-up format (``startup_ms.<format>.median_ms``,
:func:`dtlab.fabric.calibrate.load_startup`) plus ``per_node``. ``dispatch_ms`` is the stage hand-off
lag: from the worker's own end until the substrate sees the stage end (kubelet status sync, API
server, watch), when a successor's pod is made; every stage after the first pays it before its
start-up (V4-kube smoke: 1.5-2.4 s per hand-off under load, not modelled before). The twin charges it
to every stage (``TimingModel.dispatch_ms``), the first one included, which has none: one hand-off
too many per job. KWOK nodes are not measured: their delays are annotated.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import DtlabError
from ..fabric import calibrate
from ..model import Cluster, format_keys, job_from_dict
from ..plan import Plan

STARTUP_REPS = 3            # pods per (real node, format): each is seconds of wall time
NAMESPACE = "dtlab-startcal"
WARMUP = "su-warmup-"


def _probe_job(name: str) -> dict[str, Any]:
    return {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"stages": [{"id": "s1", "compute": {"cpu": 1, "mem_gb": 0.25,
                                                          "duration_ms": calibrate.STARTUP_PROBE_MS}}]}}


def probe_formats(cluster: Cluster, real: list[str]) -> dict[str, list[str]]:
    """Real node -> the format keys a probe stage (no constraints) can run in there."""
    stage = job_from_dict(_probe_job("probe")).stages[0]
    return {n: format_keys(stage, cluster.node(n)) for n in real if n in cluster.by_name}


def handoff(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Summary of the hand-off lag (``seen_ms - end_ms``: worker end -> end observed) over ok rows of
    real nodes; None without any."""
    lags = [max(0.0, float(r["seen_ms"]) - float(r["end_ms"])) for r in rows
            if r.get("ok") and r.get("node_kind") == "real" and _num(r.get("seen_ms")) and _num(r.get("end_ms"))]
    return calibrate.summary_ms(lags) if lags else None


def _num(v: Any) -> bool:
    return v is not None and v == v


def summarise(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(format -> summary over nodes, node -> format -> summary) of stage rows with ``startup_ms``
    (ok rows on real nodes only; KWOK rows have no measured start-up)."""
    by_fmt: dict[str, list[float]] = {}
    by_node: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        v = r.get("startup_ms")
        if not r.get("ok") or r.get("node_kind") != "real" or v is None or v != v:
            continue
        by_fmt.setdefault(str(r["format"]), []).append(max(0.0, float(v)))
        by_node.setdefault(str(r["node"]), {}).setdefault(str(r["format"]), []).append(max(0.0, float(v)))
    return ({f: calibrate.summary_ms(v) for f, v in by_fmt.items()},
            {n: {f: calibrate.summary_ms(v) for f, v in d.items()} for n, d in by_node.items()})


def measure_startup(cluster: Cluster, kubeconfig: str | None = None, plane: str = "default",
                    reps: int = STARTUP_REPS, seed: int = calibrate.STARTUP_SEED, drain_limit_s: float = 120.0,
                    progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """Start-up per format on the real nodes of ``cluster`` (a running plane: ``kubeconfig`` or local
    ``plane``), wall ms. Raises :class:`DtlabError` when the plane has no real node of ``cluster``."""
    from ..substrates.kube import KubeSubstrate

    if not 1 <= int(reps) <= 50:
        raise DtlabError(f"kube start-up calibration: reps must be in [1, 50], got {reps}")
    with KubeSubstrate(cluster, seed=seed, kubeconfig=kubeconfig, plane=plane, start_plane=False,
                       namespace=NAMESPACE, noise=False, drain_limit_s=drain_limit_s, shape_links=False) as sub:
        real = sorted(sub.real_nodes())
        formats = {n: f for n, f in probe_formats(cluster, real).items() if f}
        if not formats:
            raise DtlabError(f"kube start-up calibration: no real node of cluster {cluster.name!r} on this plane "
                             "(KWOK nodes have annotated delays, nothing to measure)")
        for node, keys in formats.items():   # one warm-up pod per node, not counted: the first pays one-off costs
            job = job_from_dict(_probe_job(f"{WARMUP}{node}"))
            sub.submit(Plan(job=job.name, policy="calibration", placement={"s1": node}, formats={"s1": keys[0]}), job)
            sub.advance(None)
        for rep in range(int(reps)):
            for node, keys in formats.items():
                for fmt in keys:
                    job = job_from_dict(_probe_job(f"su-{node}-{fmt}-{rep}"))
                    sub.submit(Plan(job=job.name, policy="calibration", placement={"s1": node},
                                    formats={"s1": fmt}), job)
                    sub.advance(None)
            if progress:
                progress(rep + 1, int(reps))
        every = sub.results()["stages"].to_dict("records")
        rows = [r for r in every if not str(r["job"]).startswith(WARMUP)]
        warmup = {str(r["node"]): (round(float(r["startup_ms"]), 3) if r.get("startup_ms") == r.get("startup_ms")
                                   and r.get("startup_ms") is not None else None)
                  for r in every if str(r["job"]).startswith(WARMUP)}
        errors = list(sub.metadata().get("errors") or [])
    startup, per_node = summarise(rows)
    wanted = {f for keys in formats.values() for f in keys}
    return {"kind": "KubeStartupCalibration", "substrate": "kube",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"loadavg_1m": os.getloadavg()[0]}, "reps": int(reps), "seed": seed,
            "method": ("real pods on real kube nodes, one at a time: stage startup_ms = pod create -> the "
                       f"worker's own start; {calibrate.STARTUP_PROBE_MS} ms probe stages, formats interleaved, "
                       "after one uncounted warm-up pod per node; "
                       "median per format over the real nodes offering it; dispatch_ms: worker end -> "
                       "stage end observed by the substrate (the hand-off before a successor's pod)"),
            "nodes": formats, "worker_build": calibrate.worker.build_dir().name,
            "startup_ms": startup, "per_node": per_node, "warmup_ms": warmup, "dispatch_ms": handoff(rows),
            "unavailable": {f: "no successful probe pod" for f in sorted(wanted - set(startup))},
            "errors": errors}


def startup_calibration(cluster: Cluster, kubeconfig: str | None = None, plane: str = "default",
                        refresh: bool = False, reps: int = STARTUP_REPS) -> tuple[dict[str, Any], Path]:
    """(kube start-up document, its path): measured once per worker build on this host and cached
    (:func:`dtlab.fabric.calibrate.startup_cache_path` with ``substrate="kube"``, under a file lock)."""
    def measure() -> dict[str, Any]:
        doc = measure_startup(cluster, kubeconfig=kubeconfig, plane=plane, reps=reps)
        if not doc["startup_ms"]:
            raise DtlabError(f"kube start-up calibration: no probe pod succeeded ({doc['errors'][:3]})")
        return doc
    return calibrate.cached_startup(calibrate.startup_cache_path("kube"), measure, refresh)
