"""Host noise of a wall-clock run: what else the host did while we measured, and whether it mattered.

A wall-clock substrate opens a :class:`NoiseMonitor` when it starts and calls ``finish()`` when it
closes. The result (``noise`` dict, JSON-ready) holds:

* ``loadavg_1m`` at start / end / max (sampled every ``SAMPLE_S``), and per core;
* ``steal_share``: steal time / all CPU time over the run (``/proc/stat``; a VM whose hypervisor runs
  other guests on our cores);
* ``foreign_share_node_cpus``: CPU time on the nodes' cores that was not the nodes' own
  (busy time of those cores from ``/proc/stat`` minus the nodes' ``cpuacct`` usage), as a share of
  those cores' time -- the interference the cpuset cannot keep out (other users' processes);
* ``cpu_s``: the run's own CPU seconds by part (``nodes``, ``relay``, ``controller``, ``plane``), from
  the substrate's ``parts()`` callable;
* ``calibration``: the native kernel's CPU and wall time per iteration at the start and at the end
  against the host's cached ``iterations_per_ms`` (``cpu_ratio`` 1.0 = as calibrated); ``drift`` is
  end/start - 1 of the CPU ratio (the machine itself changed: frequency, thermal, cache pressure).

* ``rapl``: measured energy of the host's CPU packages over the run (``host_rapl_j``, RAPL counters
  under ``/sys/class/powercap``, the whole host: other tenants included) where they exist, else
  ``available: false`` and why (issue 23: energy is measured only there; ``energy_proxy_j`` is a model).

``noisy`` is True when any measure exceeds :data:`LIMITS` (``reasons`` says which); experiments put
the dict into their metrics (``host_noise``) and ``dtlab results`` flags such runs.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Mapping

SAMPLE_S = 2.0
# a run is "noisy" above any of these (override per run with the substrate's ``noise_limits``)
LIMITS: dict[str, float] = {
    "loadavg_per_core_max": 1.5,       # runnable tasks per core, 1-minute average
    "steal_share": 0.05,
    "foreign_share_node_cpus": 0.10,
    "calibration_drift": 0.15,         # |end/start - 1| of the native kernel's CPU time per iteration
    "calibration_wall_ratio": 1.25,    # native kernel wall/CPU on the nodes' cores at start or end
}


def read_stat() -> dict[str, list[int]]:
    """``/proc/stat`` cpu lines: name -> [user nice system idle iowait irq softirq steal ...] (ticks)."""
    out = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def _busy_total(fields: list[int]) -> tuple[int, int, int]:
    """(busy, total, steal) ticks of one cpu line; guest time is already inside user/nice."""
    f = (fields + [0] * 10)[:10]
    idle = f[3] + f[4]
    total = sum(f[:8])
    return total - idle, total, f[7]


def pids_cpu_s(pids) -> float:
    """CPU seconds (user+sys, with reaped children) of live processes ``pids`` (from /proc/<pid>/stat)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15])
    return total / hz


def check_kernel(join: str | None = None, target_ms: float = 40.0) -> dict[str, float]:
    """Run the native stage kernel once (in cgroups ``join``): CPU and wall ms per calibrated ms."""
    from .fabric import worker

    ipms = worker.iterations_per_ms(worker.KERNELS[-1])
    iters = max(1, int(target_ms * ipms))
    env = dict(os.environ, DTLAB_JOIN_CGROUP=join) if join else None
    r = worker.run_kernel("native", worker.KERNELS[-1], iters, env=env)
    expected = iters / ipms
    return {"cpu_ratio": round(r.cpu_ms / expected, 4) if r.cpu_ms > 0 else None,
            "wall_ratio": round(r.kernel_ms / expected, 4)}


def shared_host_slowdown(cal: Mapping[str, Any] | None) -> float | None:
    """The slowdown a shared host imposes on work without cores of its own, from an opening
    :func:`check_kernel`: its wall time over its CPU time (>= 1; None when not measured). The fabric
    without a cpuset split and real kube nodes (never isolated here) divide their nodes' speeds by it."""
    if not cal or not cal.get("cpu_ratio") or not cal.get("wall_ratio"):
        return None
    return round(max(1.0, float(cal["wall_ratio"]) / float(cal["cpu_ratio"])), 4)


#: below this the shared-host slowdown is within the check's own noise and the speeds are left alone
SLOWDOWN_TOLERANCE = 1.02


class NoiseMonitor:
    """Start at substrate open, ``finish()`` at close (see the module docstring)."""

    def __init__(self, node_cpus: list[int] | None = None, nodes_usage_s: Callable[[], float] | None = None,
                 parts: Callable[[], Mapping[str, float]] | None = None, calibrate_join: str | None = None,
                 limits: Mapping[str, float] | None = None, recheck: bool = True, rapl_root: Any = None):
        unknown = set(limits or {}) - set(LIMITS)
        if unknown:
            from .errors import SpecError
            raise SpecError(f"substrate_opts.noise_limits.{sorted(unknown)[0]}", f"unknown limit (known: {sorted(LIMITS)})")
        self.limits = {**LIMITS, **dict(limits or {})}
        self.node_cpus = list(node_cpus or [])
        self._nodes_usage = nodes_usage_s
        self._parts = parts
        self._join = calibrate_join
        self._recheck = recheck
        self.ncpu = os.cpu_count() or 1
        self.cal0 = self._calibrate() if recheck else None     # before the counters: not counted as foreign
        from . import energy
        self._rapl_root = energy.RAPL_ROOT if rapl_root is None else rapl_root
        self.rapl0 = energy.read_rapl_uj(self._rapl_root)
        self.t0 = time.monotonic()
        self.stat0 = read_stat()
        self.usage0 = nodes_usage_s() if nodes_usage_s else None
        self.load0 = os.getloadavg()[0]
        self.load_max = self.load0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="dtlab-noise")
        self._thread.start()
        self.result: dict[str, Any] | None = None

    def _calibrate(self) -> dict[str, float] | None:
        try:
            return check_kernel(self._join)
        except Exception as exc:  # noqa: BLE001 - a failing probe is recorded, never fatal
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.load_max = max(self.load_max, os.getloadavg()[0])

    def finish(self) -> dict[str, Any]:
        """Stop sampling, re-check the calibration, compute the measures and the ``noisy`` verdict (once)."""
        if self.result is not None:
            return self.result
        self._stop.set()
        stat1 = read_stat()
        from . import energy
        rapl1 = energy.read_rapl_uj(self._rapl_root)
        usage1 = self._nodes_usage() if self._nodes_usage is not None else None
        load1 = os.getloadavg()[0]
        cal1 = self._calibrate() if self._recheck else None
        self.load_max = max(self.load_max, load1)
        b0, t0, s0 = _busy_total(self.stat0["cpu"])
        b1, t1, s1 = _busy_total(stat1["cpu"])
        dt = max(t1 - t0, 1)
        out: dict[str, Any] = {
            "duration_s": round(time.monotonic() - self.t0, 3),
            "loadavg_1m": {"start": round(self.load0, 2), "end": round(load1, 2), "max": round(self.load_max, 2)},
            "loadavg_per_core_max": round(self.load_max / self.ncpu, 3),
            "host_busy_share": round((b1 - b0) / dt, 4),
            "steal_share": round((s1 - s0) / dt, 4),
        }
        ok, why = energy.rapl_status(self._rapl_root)
        out["rapl"] = {"available": bool(ok and self.rapl0 and rapl1), "why": why}
        if out["rapl"]["available"]:
            out["rapl"]["host_rapl_j"] = round(energy.rapl_delta_j(self.rapl0, rapl1, self._rapl_root), 3)
        if self.node_cpus and self._nodes_usage is not None:
            hz = os.sysconf("SC_CLK_TCK")
            busy = total = 0
            for c in self.node_cpus:
                key = f"cpu{c}"
                if key in self.stat0 and key in stat1:
                    bb0, tt0, _ = _busy_total(self.stat0[key])
                    bb1, tt1, _ = _busy_total(stat1[key])
                    busy += bb1 - bb0
                    total += tt1 - tt0
            own = usage1 - (self.usage0 or 0.0)
            if total > 0 and own == own:
                out["node_cpus_busy_share"] = round(busy / total, 4)
                out["foreign_share_node_cpus"] = round(max(0.0, busy / hz - own) / (total / hz), 4)
        if self._parts is not None:
            try:
                out["cpu_s"] = {k: round(float(v), 3) for k, v in self._parts().items()}
            except Exception as exc:  # noqa: BLE001
                out["cpu_s"] = {"error": f"{type(exc).__name__}: {exc}"}
        if self._recheck:
            cal = {"start": self.cal0, "end": cal1}
            a, b = (self.cal0 or {}).get("cpu_ratio"), (cal1 or {}).get("cpu_ratio")
            if a and b:
                cal["drift"] = round(b / a - 1.0, 4)
            walls = [c.get("wall_ratio", 0) / c["cpu_ratio"] for c in (self.cal0, cal1)
                     if c and c.get("cpu_ratio") and c.get("wall_ratio")]
            if walls:
                cal["wall_ratio_max"] = round(max(walls), 4)
            out["calibration"] = cal
        out["limits"] = dict(self.limits)
        out["reasons"] = reasons(out, self.limits)
        out["noisy"] = bool(out["reasons"])
        self.result = out
        return out


def reasons(noise: Mapping[str, Any], limits: Mapping[str, float] = LIMITS) -> list[str]:
    """Which limits a noise record exceeds, as readable strings (empty: a clean run)."""
    why = []

    def over(key, value, fmt="{:.3g}"):
        if value is not None and key in limits and value > limits[key]:
            why.append(f"{key} {fmt.format(value)} > {limits[key]:g}")

    over("loadavg_per_core_max", noise.get("loadavg_per_core_max"))
    over("steal_share", noise.get("steal_share"))
    over("foreign_share_node_cpus", noise.get("foreign_share_node_cpus"))
    cal = noise.get("calibration") or {}
    if cal.get("drift") is not None:
        over("calibration_drift", abs(cal["drift"]))
    over("calibration_wall_ratio", cal.get("wall_ratio_max"))
    return why


def combine(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One run's noise from the noise of each substrate it opened (worst case per measure, CPU summed)."""
    records = [r for r in records if r]
    if not records:
        return {}
    out: dict[str, Any] = {"substrates": len(records)}
    for key in ("loadavg_per_core_max", "steal_share", "foreign_share_node_cpus", "host_busy_share"):
        vals = [r[key] for r in records if r.get(key) is not None]
        if vals:
            out[key] = max(vals)
    out["loadavg_1m_max"] = max(r["loadavg_1m"]["max"] for r in records)
    parts: dict[str, float] = {}
    for r in records:
        for k, v in (r.get("cpu_s") or {}).items():
            if isinstance(v, (int, float)):
                parts[k] = round(parts.get(k, 0.0) + v, 3)
    if parts:
        out["cpu_s"] = parts
    rapl = [r["rapl"] for r in records if isinstance(r.get("rapl"), Mapping)]
    if rapl:      # measured host energy over all the substrates' runs, only where every one had RAPL
        have = all(x.get("available") for x in rapl)
        why = next((x.get("why") for x in rapl if not x.get("available")), rapl[0].get("why"))
        out["rapl"] = {"available": have, "why": why}
        if have:
            out["rapl"]["host_rapl_j"] = round(sum(float(x.get("host_rapl_j", 0.0)) for x in rapl), 3)
    drifts = [r["calibration"]["drift"] for r in records if (r.get("calibration") or {}).get("drift") is not None]
    if drifts:
        out["calibration_drift_max"] = max(drifts, key=abs)
    walls = [r["calibration"]["wall_ratio_max"] for r in records
             if (r.get("calibration") or {}).get("wall_ratio_max") is not None]
    if walls:
        out["calibration_wall_ratio_max"] = max(walls)
    limits = next((r["limits"] for r in records if r.get("limits")), LIMITS)
    worst = {k: out.get(k) for k in ("loadavg_per_core_max", "steal_share", "foreign_share_node_cpus")}
    worst["calibration"] = {"drift": out.get("calibration_drift_max"), "wall_ratio_max": out.get("calibration_wall_ratio_max")}
    out["reasons"] = reasons(worst, limits)
    out["noisy"] = bool(out["reasons"]) or any(r.get("noisy") for r in records)
    return out
