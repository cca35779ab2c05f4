"""Telemetry of the local plane's real nodes: one cgroup exporter per real node and a real Prometheus.

``dtlab cluster up --real-nodes N --telemetry prometheus``. Each real node's pods live under its
cgroup parent ``dtlab-<plane>-<node>`` (:mod:`dtlab.kube.realnodes`); the same per-node exporter the
fabric uses (:mod:`dtlab.fabric.exporter`) reads that parent in the v1 ``cpuacct`` and ``memory``
hierarchies, and a real ``prometheus`` scrapes the exporters every 0.5 s on loopback. The exporter's
"placed" CPU is its sub-groups, i.e. the kubelet's ``kubepods`` tree (every pod of the node); the
background (what :class:`dtlab.telemetry.TelemetryPoller` turns into ``cpu_util``) is whatever runs
in the node's cgroup outside its pods: a noisy neighbour put there by hand.

The same Prometheus also scrapes each real kubelet's ``/metrics/resource`` (job ``kubelet-resource``,
label ``kubelet_node``; HTTPS with the plane's admin client certificate): per-pod and per-container
CPU and memory as cAdvisor sees them. The twin does not poll it: cAdvisor refreshes those figures
every ~10 s (measured: samples 4.6 s old at the median, 10.3 s at most), beyond the 1 s budget; the cgroup
exporter's are one scrape old (measured in tests/e2e/test_telemetry_kube.py; README, "Telemetry in the loop").

Why detached processes (own session, recorded under ``extra_processes`` of the plane state, which
``localplane.down`` kills): the plane outlives the ``dtlab cluster up`` process, so the fabric's
"die with the parent" does not fit; the exporters instead exit when the plane's API server is gone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import DtlabError
from ..fabric import exporter
from ..telemetry import DEFAULT_SCRAPE_S, free_port, prometheus_argv, prometheus_config, wait_targets_up

MODES = ("prometheus",)
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
MEMORY = Path("/sys/fs/cgroup/memory")


def exporter_argv(rec: Mapping[str, Any], port: int, parent_pid: int) -> list[str]:
    """The exporter command of one real node (its cgroup in cpuacct, and memory when mounted)."""
    mem = MEMORY / rec["cgroup"]
    return exporter.command(rec["name"], CPUACCT / rec["cgroup"], float(rec["cpus"]), parent_pid,
                            mem if mem.is_dir() else None, port)


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
    kubelets = {rec["name"]: f"127.0.0.1:{rec['ports'][0]}" for rec in recs if rec.get("ports")}
    pki = Path(st["workdir"]) / "pki"
    (wd / "prometheus.yml").write_text(prometheus_config(targets, scrape_interval_s, kubelets,
                                                         (str(pki / "admin.crt"), str(pki / "admin.key"))))
    extra["prometheus"] = spawn("prometheus", prometheus_argv(exe, wd / "prometheus.yml", wd, prom_port), wd)
    url = f"http://127.0.0.1:{prom_port}"
    st["telemetry"] = {"mode": "prometheus", "prometheus_url": url, "targets": targets, "kubelets": kubelets,
                       "scrape_interval_s": scrape_interval_s}
    save()

    def dead() -> str | None:
        gone = [k for k, p in extra.items() if (k == "prometheus" or k.startswith("exporter-")) and not alive(p)]
        return f"{', '.join(gone)} exited (logs in {wd / 'logs'})" if gone else None
    try:
        wait_targets_up(url, len(targets), timeout, dead)
    except DtlabError as exc:
        raise DtlabError(f"--telemetry prometheus: {exc}") from None
    return st["telemetry"]
