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

The same pods measure each real node's **emulation factor** (``emulation``): a real node of a foreign
arch (arm64, riscv64 on this amd64 host) runs its "native" worker through QEMU user-mode emulation
(binfmt_misc), 5-9x slower than the twin's native model. Each native-format probe does
:data:`EMULATION_WORK_MS` reference ms of kernel work (no extra pods: start-up is measured before the
work starts) and the worker reports its kernel CPU; factor(node) = median kernel CPU per reference ms
on that node / the same on the real nodes of the host's arch (1 by definition there), or per the
nominal work when the run has no such node (said in ``reference``). The kube substrate divides each
real node's speed in the twin by it (:meth:`dtlab.substrates.kube.KubeSubstrate.set_emulation`).
"""
from __future__ import annotations

import datetime as _dt
import os
import statistics
from pathlib import Path
from typing import Any, Callable

from ..errors import DtlabError
from ..fabric import calibrate
from ..model import Cluster, format_keys, job_from_dict
from ..plan import Plan

STARTUP_REPS = 3            # pods per (real node, format): each is seconds of wall time
EMULATION_WORK_MS = 150.0   # reference work of a native probe (riscv64 via QEMU: ~1.4 s CPU at 9x)
NAMESPACE = "dtlab-startcal"
WARMUP = "su-warmup-"


def _probe_job(name: str, work_ms: float = calibrate.STARTUP_PROBE_MS) -> dict[str, Any]:
    return {"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"stages": [{"id": "s1", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": work_ms}}]}}


def emulation(rows: list[dict[str, Any]], scales: dict[str, float], arch: dict[str, str],
              work_ms: float = EMULATION_WORK_MS, host_arch: str | None = None) -> dict[str, Any]:
    """Per real node: the worker's kernel CPU (and wall, ``observed_ms``) for ``work_ms`` reference ms in
    the native format, and its emulation factor against the real nodes of ``host_arch``.

    ``rows``: stage rows of the probes (the ok native ones on real nodes are used: all of ``work_ms``); ``scales``:
    node -> ``dtlab.io/cpu-scale`` (the worker does ``work_ms * scale`` reference ms there, so CPU is
    compared per reference ms); ``arch``: node -> its spec arch. Nodes of the host's arch get factor 1."""
    from ..fabric import worker

    host = host_arch or worker.HOST_ARCH
    cpu: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    for r in rows:
        k = r.get("kernel_cpu_ms")
        if (not r.get("ok") or r.get("node_kind") != "real" or r.get("format") != "native" or not _num(k)
                or str(r.get("node")) not in scales):
            continue
        node = str(r["node"])
        cpu.setdefault(node, []).append(float(r["kernel_cpu_ms"]))
        if _num(r.get("observed_ms")):
            wall.setdefault(node, []).append(float(r["observed_ms"]))
    per_ref = {n: statistics.median(v) / (work_ms * float(scales[n])) for n, v in cpu.items()}
    native = sorted(n for n in per_ref if arch.get(n) == host)
    if native:
        ref = statistics.median(per_ref[n] for n in native)
        reference = {"source": f"native real nodes of the host's arch {host}", "nodes": native,
                     "cpu_per_ref_ms": round(ref, 4)}
    else:
        ref = 1.0
        reference = {"source": f"nominal work (no real node of the host's arch {host} in this run)",
                     "nodes": [], "cpu_per_ref_ms": 1.0}
    per_node = {}
    for n in sorted(per_ref):
        factor = 1.0 if arch.get(n) == host else per_ref[n] / ref
        per_node[n] = {"arch": arch.get(n), "factor": round(factor, 3), "cpu_scale": float(scales[n]),
                       "kernel_cpu_ms": calibrate.summary_ms(cpu[n]),
                       "wall_ms": calibrate.summary_ms(wall[n]) if n in wall else None}
    return {"work_ms": float(work_ms), "host_arch": host, "reference": reference, "per_node": per_node}


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
                for fmt in keys:      # the native probe also measures the node's emulation factor
                    work = EMULATION_WORK_MS if fmt == "native" else calibrate.STARTUP_PROBE_MS
                    job = job_from_dict(_probe_job(f"su-{node}-{fmt}-{rep}", work))
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
        scales = sub.real_nodes()
    startup, per_node = summarise(rows)
    emu = emulation(rows, scales, {n: cluster.node(n).arch for n in formats})
    wanted = {f for keys in formats.values() for f in keys}
    return {"kind": "KubeStartupCalibration", "substrate": "kube",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"loadavg_1m": os.getloadavg()[0]}, "reps": int(reps), "seed": seed,
            "method": ("real pods on real kube nodes, one at a time: stage startup_ms = pod create -> the "
                       f"worker's own start; {calibrate.STARTUP_PROBE_MS} ms probe stages, formats interleaved, "
                       "after one uncounted warm-up pod per node; "
                       "median per format over the real nodes offering it; dispatch_ms: worker end -> "
                       "stage end observed by the substrate (the hand-off before a successor's pod); "
                       f"native probes do {EMULATION_WORK_MS} ms of reference work: emulation factor per node"),
            "nodes": formats, "worker_build": calibrate.worker.build_dir().name,
            "startup_ms": startup, "per_node": per_node, "warmup_ms": warmup, "dispatch_ms": handoff(rows),
            "emulation": emu, "unavailable": {f: "no successful probe pod" for f in sorted(wanted - set(startup))},
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


def factors_for(doc: dict[str, Any] | None, arch: dict[str, str], host_arch: str | None = None
                ) -> dict[str, dict[str, Any]]:
    """Real node -> ``{factor, source}`` from a start-up document's ``emulation``: the node's own
    measured factor; else the median measured factor of its arch (the cache is per worker build, not per
    cluster, so another cluster's node of that arch stands in); nodes of the host's arch 1; else 1 with
    ``source`` saying it was not measured. ``arch``: real node -> its spec arch."""
    from ..fabric import worker

    host = host_arch or worker.HOST_ARCH
    emu = (doc or {}).get("emulation") or {}
    per_node = emu.get("per_node") or {}
    by_arch: dict[str, list[float]] = {}
    for n, v in per_node.items():
        if isinstance(v, dict) and _num(v.get("factor")) and float(v["factor"]) > 0:
            by_arch.setdefault(str(v.get("arch")), []).append(float(v["factor"]))
    ref = (emu.get("reference") or {}).get("source", "")
    out: dict[str, dict[str, Any]] = {}
    for n, a in sorted(arch.items()):
        v = per_node.get(n)
        if a == host:
            out[n] = {"factor": 1.0, "source": f"host arch {host}: native"}
        elif isinstance(v, dict) and v.get("arch") == a and _num(v.get("factor")) and float(v["factor"]) > 0:
            out[n] = {"factor": float(v["factor"]), "source": f"measured on {n} (n={v['kernel_cpu_ms']['n']}; "
                                                              f"reference: {ref})"}
        elif by_arch.get(a):
            out[n] = {"factor": float(statistics.median(by_arch[a])),
                      "source": f"measured on other {a} nodes {sorted(k for k, x in per_node.items() if x.get('arch') == a)}"}
        else:
            out[n] = {"factor": 1.0, "source": f"not measured ({a} on a {host} host: the twin treats it as native)"}
    return out
