"""Host calibration: measurements on this host's fabric that the twin's timing is fitted to.

Why a module of its own next to ``fabric/calibrate.py``: these functions run the fabric substrate
(``FabricSubstrate``), and the fabric substrate reads the calibration file through
``fabric/calibrate.py``; keeping the measurements that need the substrate in this module leaves one
direction of import: ``fabric.host_calibration -> substrates.fabric -> fabric.calibrate``.
``fabric/calibrate.py`` keeps the file format, the compute measurement (worker processes only) and
the link model fit.

- :func:`measure_network`: RTT and throughput between fabric namespaces over the shaped links;
- :func:`network_calibration`: the fitted link model of a cluster's zone links, measured once and cached;
- :func:`measure_startup`, :func:`startup_calibration`: start-up per format and the dispatch delay on
  the fabric's own launch path, measured once per worker build and cached (format in ``fabric/calibrate.py``);
- :func:`host_timing`: the twin's timing model with this host's format factors, measured once
  (under a file lock, so parallel runs do not both measure) when the calibration is missing.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from ..atomic import atomic_write_text
from ..errors import DtlabError
from . import calibrate
from ..model import Cluster, cluster_from_dict
from ..substrates.fabric import FabricSubstrate
from ..timing import TimingModel


def measure_network(cluster: Cluster | None = None, sizes_mb: tuple[float, ...] = (0.001, 2.0), reps: int = 5,
                    seed: int = 0) -> dict[str, Any]:
    """RTT (tiny message) and throughput (bulk) between fabric namespaces over the shaped links.

    Builds a throw-away fabric of ``cluster`` (default: two zones joined by a 10 ms / 50 Mbit/s
    link), sends each size ``reps`` times both ways and compares with the twin's
    ``mean_transfer_ms``. Returns per-pair medians and the mechanism that shaped each link.
    """
    cluster = cluster or cluster_from_dict({
        "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "netcal"},
        "nodes": [{"name": "a", "arch": "amd64", "cores": 1, "zone": "za"},
                  {"name": "b", "arch": "amd64", "cores": 1, "zone": "zb"}],
        "links": [{"a": "za", "b": "zb", "latency_ms": 10, "bandwidth_mbps": 50}]})
    tm = TimingModel()
    rows = []
    # time_scale 1: the transfers are timed in wall ms against the spec links (no compute involved)
    with FabricSubstrate(cluster, seed=seed, host_cores=0.2, time_scale=1.0) as sub:
        names = [n.name for n in cluster.nodes]
        pairs = [(a, b) for a in names for b in names if a != b]
        for a, b in pairs:
            link = cluster.link(a, b)
            for size in sizes_mb:
                times = []
                for _ in range(reps):
                    tr = sub.datapath.send(a, b, size)
                    if not tr.done.wait(120) or tr.error:
                        raise DtlabError(f"transfer {a}->{b} failed: {tr.error or 'timeout'}")
                    times.append((tr.end - tr.start) * 1000.0)
                med = statistics.median(times)
                rows.append({"src": a, "dst": b, "size_mb": size, "median_ms": round(med, 3),
                             "min_ms": round(min(times), 3), "max_ms": round(max(times), 3),
                             "predicted_ms": round(tm.mean_transfer_ms(size, link), 3),
                             "throughput_mbps": round(size * 8 / (med / 1000.0), 3) if size >= 0.5 else None,
                             "mechanism": sub.mechanism.get(f"{a}->{b}")})
        meta = sub.metadata()
    return {"kind": "HostNetworkCalibration", "netem": meta["netem"], "reps": reps, "samples": rows,
            "note": "RTT ~ time of the smallest message (one way + ack); bulk includes latency"}


def network_calibration(cluster: Cluster, reps: int = 3, refresh: bool = False, substrate: str = "fabric",
                        plane: str = "default") -> tuple[dict[str, Any], Path]:
    """(fitted link document, its path) for ``cluster``'s zone links on this host's fabric, or with
    ``substrate="kube"`` over the shaped pod network between the real nodes of local plane ``plane``
    (:func:`dtlab.kube.links.measure_network`: one real node per zone, probe pods).

    Measured once (probe namespaces or pods, :data:`~dtlab.fabric.calibrate.NETCAL_SEED`, sizes
    :data:`~dtlab.fabric.calibrate.NETCAL_SIZES_MB`) and cached by the links' parameters (and the
    substrate) under the host calibration's directory; ``refresh`` re-measures.
    """
    if substrate not in ("fabric", "kube"):
        raise DtlabError(f"network calibration: substrate must be fabric or kube, got {substrate!r}")
    path = calibrate.network_cache_path(cluster, substrate)
    fit_on = calibrate.calibration_cluster(cluster) if substrate == "fabric" else cluster
    if path.exists() and not refresh:
        doc = yaml.safe_load(path.read_text())
        doc["links"] = calibrate.fit_links(doc, fit_on)   # the current model, on the stored samples
        return doc, path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and not refresh:
            return yaml.safe_load(path.read_text()), path
        if substrate == "kube":
            from ..kube import links as kube_links
            doc = kube_links.measure_network(cluster, plane, sizes_mb=calibrate.NETCAL_SIZES_MB, reps=reps,
                                             seed=calibrate.NETCAL_SEED)
        else:
            doc = measure_network(fit_on, sizes_mb=calibrate.NETCAL_SIZES_MB, reps=reps, seed=calibrate.NETCAL_SEED)
        fitted = {"kind": "HostNetworkFit", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "substrate": substrate, "host": {"loadavg_1m": os.getloadavg()[0]}, "netem": doc["netem"],
                  "reps": reps, "model": "t = latency + size * 8000 / goodput (least squares over sizes, both directions)",
                  "links": calibrate.fit_links(doc, fit_on), "samples": doc["samples"]}
        if substrate == "kube":
            fitted["probes"] = doc["probes"]
        atomic_write_text(path, yaml.safe_dump(fitted, sort_keys=False))
    return fitted, path


def host_timing(calibrate_if_missing: bool = True) -> tuple[TimingModel, str]:
    """(TimingModel with this host's measured format factors, note).

    A missing host calibration is measured once with ``dtlab calibrate compute --quick`` (under a
    minute): on the fabric the twin predicts real runs, and with the default factors (QEMU 3.0x where
    this host measures ~3.7x) V2 would report the error of an uncalibrated twin, not the design's
    "after calibration" number. If that measurement fails the defaults are used and the note says so.
    """
    timing, note = calibrate.timing_model()
    if not note:
        return timing, f"twin timing: host calibration {calibrate.default_out()}"
    if not calibrate_if_missing:
        return timing, note
    t0 = time.monotonic()
    lock_path = calibrate.default_out().with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:        # `dtlab run all -j 2`: V1 and V2 must not both measure
        fcntl.flock(lock, fcntl.LOCK_EX)
        timing, note_now = calibrate.timing_model()
        if not note_now:
            return timing, f"twin timing: host calibration {calibrate.default_out()} (measured by a parallel run)"
        try:
            path = calibrate.write(calibrate.measure_compute(quick=True))
        except Exception as exc:  # noqa: BLE001 - any failure: run with defaults, say so
            return timing, f"{note}; quick calibration failed: {type(exc).__name__}: {exc}"
    timing, note2 = calibrate.timing_model(path)
    if note2:
        return timing, note2
    return timing, (f"twin timing: host calibration was missing, measured it now with the quick "
                    f"calibration ({time.monotonic() - t0:.0f} s) -> {path}")


# ------------------------------------------------------------ start-up per format (fabric launch path)
def _startup_probe_cluster() -> Cluster:
    """One amd64 node offering every format: each probe stage is forced into one format by its plan."""
    return cluster_from_dict({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "startcal"},
                              "nodes": [{"name": "probe", "arch": "amd64", "cores": 1, "zone": "z",
                                         "formats": ["native", "qemu", "wasm"]}]})


def measure_startup(formats: list[str] | None = None, reps: int = calibrate.STARTUP_REPS,
                    seed: int = calibrate.STARTUP_SEED,
                    progress: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """Start-up cost per execution format as the fabric pays it, in wall ms.

    Opens a throw-away fabric (one probe node, its network namespace, the Wasm launcher, time_scale
    1) and runs ``reps`` tiny two-stage chains per format, interleaved, through the substrate's own
    launch path (``/bin/sh`` cgroup join, ``nsenter``, the worker native / under
    ``qemu-<arch>-static`` / from the warm Wasm launcher). A stage's start-up is its measured time
    (spawn to exit) minus the kernel time the worker measured inside itself: spawn, exec, emulator or
    runtime start, exit and reaping, i.e. what the twin's ``duration_ms`` model misses. Median per
    format with min/max. ``dispatch_ms``: inputs ready (job submitted, predecessor ended) -> the
    stage's process is being started, the executor's own hand-off (threads, locks; grows with host
    load), pooled over formats.
    """
    from ..model import job_from_dict
    from ..plan import Plan
    from ..fabric import worker

    formats = list(formats or worker.FORMATS)
    unavailable = {f: worker.missing(f) for f in formats if worker.missing(f)}
    formats = [f for f in formats if f not in unavailable]
    samples: dict[str, list[float]] = {f: [] for f in formats}
    handoff: list[float] = []
    stages = [{"id": "s1", "compute": {"cpu": 1, "duration_ms": calibrate.STARTUP_PROBE_MS}},
              {"id": "s2", "after": ["s1"], "compute": {"cpu": 1, "duration_ms": calibrate.STARTUP_PROBE_MS}}]
    with FabricSubstrate(_startup_probe_cluster(), seed=seed, host_cores=0.5, time_scale=1.0) as sub:
        for rep in range(reps):
            for f in formats:
                job = job_from_dict({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": f"su-{f}-{rep}"},
                                     "spec": {"stages": stages}})
                sub.submit(Plan(job=job.name, policy="calibration", placement={"s1": "probe", "s2": "probe"},
                                formats={"s1": f, "s2": f}), job)
                sub.advance(None)
            if progress:
                progress(rep + 1, reps)
        res = sub.results()
        meta = {"time_scale": sub.time_scale, "isolated": sub.isolated}
    arrival = dict(zip(res["jobs"]["job"], res["jobs"]["arrival_ms"]))
    recs = {(r["job"], r["stage"]): r for r in res["stages"].to_dict("records")}
    for (job, sid), r in recs.items():
        if not r.get("ok") or r.get("kernel_ms") is None or r["format"] not in samples:
            continue
        samples[r["format"]].append(max(0.0, float(r["duration_ms"]) - float(r["kernel_ms"])))
        prev = recs.get((job, "s1")) if sid == "s2" else None
        ready = arrival.get(job) if sid == "s1" else (prev["end_ms"] if prev and prev.get("ok") else None)
        if ready is not None:
            handoff.append(max(0.0, float(r["start_ms"]) - float(ready)))
    startup = {f: calibrate.summary_ms(v) for f, v in samples.items() if v}
    return {"kind": "HostStartupCalibration",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"loadavg_1m": os.getloadavg()[0]}, "reps": reps, "seed": seed,
            "method": ("fabric launch path, time_scale 1: stage time (spawn to exit) - in-process kernel time; "
                       f"{calibrate.STARTUP_PROBE_MS} ms probe stages, formats interleaved; median per format"),
            "fabric": meta, "worker_build": worker.build_dir().name,
            "startup_ms": startup, "dispatch_ms": calibrate.summary_ms(handoff) if handoff else None,
            "unavailable": unavailable}


def startup_calibration(refresh: bool = False) -> tuple[dict[str, Any], Path]:
    """(start-up document, its path): measured once per worker build on this host and cached."""
    return calibrate.cached_startup(calibrate.startup_cache_path(), measure_startup, refresh)
