"""Telemetry of the local plane's real nodes: one cgroup exporter per real node and a real Prometheus.

``dtlab cluster up --real-nodes N --telemetry prometheus``. Each real node's pods live under its
cgroup parent ``dtlab-<plane>-<node>`` (:mod:`dtlab.kube.realnodes`); the same per-node exporter the
fabric uses (:mod:`dtlab.fabric.exporter`) reads that parent in the v1 ``cpuacct`` and ``memory``
hierarchies, and a real ``prometheus`` scrapes the exporters every 0.5 s on loopback. The exporter's
"placed" CPU is its sub-groups, i.e. the kubelet's ``kubepods`` tree (every pod of the node); the
background (what :class:`dtlab.telemetry.TelemetryPoller` turns into ``cpu_util``) is whatever runs
in the node's cgroup outside its pods: a noisy neighbour put there by hand.

Why detached processes (own session, recorded under ``extra_processes`` of the plane state, which
``localplane.down`` kills): the plane outlives the ``dtlab cluster up`` process, so the fabric's
"die with the parent" does not fit; the exporters instead exit when the plane's API server is gone.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import DtlabError
from ..telemetry import DEFAULT_SCRAPE_S, PrometheusClient, TelemetryError, free_port, prometheus_config

MODES = ("prometheus",)
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
MEMORY = Path("/sys/fs/cgroup/memory")


def exporter_argv(rec: Mapping[str, Any], port: int, parent_pid: int) -> list[str]:
    """The exporter command of one real node (its cgroup in cpuacct, and memory when mounted)."""
    script = Path(__file__).resolve().parent.parent / "fabric" / "exporter.py"
    argv = [sys.executable, str(script), "--node", rec["name"], "--cpu-dir", str(CPUACCT / rec["cgroup"]),
            "--capacity-cores", repr(float(rec["cpus"])), "--port", str(port), "--parent-pid", str(parent_pid)]
    if (MEMORY / rec["cgroup"]).is_dir():
        argv += ["--memory-dir", str(MEMORY / rec["cgroup"])]
    return argv


def start(st: dict[str, Any], spawn, alive, save, timeout: float = 60.0,
          scrape_interval_s: float = DEFAULT_SCRAPE_S) -> dict[str, Any]:
    """Start exporters and Prometheus for ``st['real_nodes']``; record them in ``st`` (``telemetry`` and
    ``extra_processes``). ``spawn(name, cmd, wd)``, ``alive(proc)`` and ``save()`` are the plane's."""
    from shutil import which
    recs = st.get("real_nodes") or []
    if not recs:
        raise DtlabError("--telemetry prometheus: needs real nodes (--real-nodes); KWOK nodes have no cgroup")
    exe = which("prometheus")
    if exe is None:
        raise DtlabError("--telemetry prometheus: `prometheus` not found (make test-deps installs Debian's)")
    wd = Path(st["workdir"]) / "telemetry"
    wd.mkdir(parents=True, exist_ok=True)
    extra = st.setdefault("extra_processes", {})
    parent = int(st["processes"]["kube-apiserver"]["pid"])   # exporters go when the plane goes
    targets = {}
    for rec in recs:
        port = free_port()
        extra[f"exporter-{rec['name']}"] = spawn(f"exporter-{rec['name']}", exporter_argv(rec, port, parent), wd)
        targets[rec["name"]] = f"127.0.0.1:{port}"
    save()
    prom_port = free_port()
    (wd / "prometheus.yml").write_text(prometheus_config(targets, scrape_interval_s))
    extra["prometheus"] = spawn("prometheus", [
        exe, f"--config.file={wd / 'prometheus.yml'}", f"--storage.tsdb.path={wd / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=2h"], wd)
    url = f"http://127.0.0.1:{prom_port}"
    st["telemetry"] = {"mode": "prometheus", "prometheus_url": url, "targets": targets,
                       "scrape_interval_s": scrape_interval_s}
    save()
    client = PrometheusClient(url, timeout_s=1.0)
    deadline = time.monotonic() + timeout
    while True:
        dead = [k for k, p in extra.items() if (k == "prometheus" or k.startswith("exporter-")) and not alive(p)]
        if dead:
            raise DtlabError(f"--telemetry prometheus: {', '.join(dead)} exited (logs in {wd / 'logs'})")
        try:
            if sum(v == 1 for _, _, v in client.query("up")) >= len(targets):
                return st["telemetry"]
        except TelemetryError:
            pass
        if time.monotonic() > deadline:
            raise DtlabError(f"--telemetry prometheus: targets not all up within {timeout:g} s at {url}")
        time.sleep(0.1)
