"""The twin's timing model: one place that says how long a stage and a transfer take.

Both predictors (the SimPy engine and the vectorised fast path) draw from the
functions here, so they model the same world and can only differ in how they
combine the draws (contention, failures). The ground-truth `sim` substrate uses
the same shapes with different parameters (see ``TimingModel.truth``).

Model, documented once:

* **Execution format.** A stage's binary exists for ``constraints.arch`` (any arch if
  unset). On a node whose arch is in that list it runs ``native``; otherwise under
  ``qemu-<binary arch>`` user-mode emulation if the node offers ``qemu``; or as
  ``wasm`` if the node offers it. The cheapest allowed format (lowest overhead
  factor) is used. Default factors: native 1.0; QEMU 3.0 (arm64/amd64 guests) and
  3.5 (riscv64), inside the 2-8x range of published user-mode QEMU figures
  (``data/calibration/published-overheads.yaml``); wasm 1.3 (Wasmtime-class
  runtimes: 1.2-1.55x). Measured calibration replaces them (``TimingModel.overheads``).
* **Service time.** ``duration_ms`` is the time on one core of speed 1.0, native
  amd64, when the stage gets its ``cpu`` cores. On node n in format f:
  ``duration_ms * overhead[f] / speed[n] * X`` with ``X ~ LogNormal`` of mean 1 and
  log-sd ``service_sigma`` (workload-level scale draws multiply on top).
* **CPU contention: processor sharing**, each stage capped at its ``cpu`` cores,
  capacity ``cores * (1 - background utilisation)``. PS is what the Linux CFS
  scheduler approximates for CPU-bound work (a quota-limited cgroup shares, it does
  not queue), and with a one-core cap it has the M/M/c birth-death process, so
  queueing theory still validates it.
* **Transfer** of ``size_mb`` over a link: ``latency + jitter*|N(0,1)| +
  size*8/throughput``, where throughput is ``min(bandwidth, Mathis TCP bound
  MSS*8/RTT * 1.22/sqrt(loss))`` (RTT = 2*latency). Loss also hits the tail: with
  probability ``loss`` per message the last segment is lost and costs one
  retransmission timeout ``max(200 ms, 2*RTT)`` (Linux' minimum RTO is 200 ms).
* **Link sharing** (issue 18): concurrent transfers on one directed link (source node or origin
  zone -> destination node, the unit the fabric shapes with one htb class) share its bandwidth by
  processor sharing: with ``n`` bulk phases in flight each gets ``min(throughput, bandwidth / n)``
  (:func:`shared_speed`), so two equal transfers that start together both take twice the bulk
  time. Latency, jitter and the loss tail are per transfer and not shared. The engine runs it
  exactly (``des/linkshare.py``); the fast path adds the first-order overlap
  :func:`shared_extra_ms` for the flows the state reports in flight (``Snapshot.flows``).
* **CPU bandwidth control** (issue 18; :class:`CpuQuota`, set on the fabric): a stage whose cgroup
  has a CFS quota of ``Q`` per period ``P`` (a share ``q = Q/P`` of a core) does not get its CPU
  continuously, as the fluid model above assumes: the kernel hands out ``Q`` at each period's start,
  and a fresh cgroup starts with a full period's quota. A stage that needs ``x = C/Q`` periods of
  quota therefore ends with its last partial quota, ``frac(x) * (P - Q)`` before the fluid time;
  over a uniform phase that is half a period, ``P (1 - q) / 2``, capped at ``fluid * (1 - q)`` (a
  stage that fits in its first quota waits for nothing). On the fabric's full V2 run (1,200 stages,
  T = 1) the fluid model over-predicted decode by 0.56 and publish by 0.70 of their ~43 ms period;
  with the expected half period (not fitted) the re-run's job-level median APE was 3.4 % (4.4 %
  before). A bare kernel in a fresh cgroup ends earlier still (~1.5 periods, e2e test), so the model
  is conservative there.
* **Start-up** per execution format (``startup_ms``: process spawn, emulator or Wasm runtime
  start, exit) plus one ``dispatch_ms`` (inputs ready -> the process is being started: the
  executor's own hand-off): a fixed delay ``stage_delay(format)`` between a stage's inputs arriving
  and its work starting, not scaled by node speed or contention (on the fabric it runs outside the
  stage's CPU quota). Default none (0); the fabric's measured values
  (``dtlab.fabric.host_calibration.startup_calibration``) fill them in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from .model import Link, Node, Stage, format_keys

DEFAULT_OVERHEADS: dict[str, float] = {
    "native": 1.0,
    "qemu-amd64": 3.0,
    "qemu-arm64": 3.0,
    "qemu-riscv64": 3.5,
    "wasm": 1.3,
}
MSS_BYTES = 1448
MIN_RTO_MS = 200.0


def quota_period_us(cores: float, period_us: int, min_quota_us: int, max_period_us: int) -> tuple[int, int]:
    """(quota_us, period_us) of a CFS quota worth ``cores``: ``period_us`` unless the quota would fall
    under ``min_quota_us`` (the kernel's 1 ms minimum), then the period grows (up to ``max_period_us``).
    The one home of this rule: the fabric's cgroups set it, the twin's :class:`CpuQuota` predicts with it."""
    if cores <= 0:
        raise ValueError("cores must be positive")
    quota = int(round(cores * period_us))
    if quota < min_quota_us:
        period_us = min(max_period_us, int(round(period_us * min_quota_us / max(cores * period_us, 1e-9))))
        quota = int(round(cores * period_us))
    return max(quota, min_quota_us), period_us


SMALL_DRAW = 32   # service_noise draws sizes up to this one value at a time (see there)


@dataclass(frozen=True)
class CpuQuota:
    """Each stage runs in its own fresh cgroup with a CFS quota of ``cpu * share_per_cpu[node]`` cores
    (the fabric; a container's CPU limit is the same mechanism), in substrate time stretched by
    ``time_scale`` (periods are wall time: ``P / time_scale`` reference ms). See the module docstring
    for the model; :meth:`saving_ms` is what it takes off the fluid service time."""
    share_per_cpu: Mapping[str, float]      # node -> cores of quota per requested cpu (wall)
    time_scale: float = 1.0
    period_us: int = 10_000
    min_quota_us: int = 1_000
    max_period_us: int = 1_000_000

    def period_ms(self, node: str, cpu: float) -> tuple[float, float]:
        """(period in reference ms, share q = quota/period) of a ``cpu``-core stage on ``node``; (0, 1)
        for a node without a quota."""
        share = self.share_per_cpu.get(node)
        if share is None or share <= 0 or cpu <= 0:
            return 0.0, 1.0
        quota, period = quota_period_us(cpu * share, self.period_us, self.min_quota_us, self.max_period_us)
        return period / 1000.0 / self.time_scale, min(1.0, quota / period)

    def saving_ms(self, node: str, cpu: float, fluid_ms):
        """Expected time the quota's per-period hand-out saves over the fluid ``fluid_ms`` (scalar or
        array): ``min(P (1 - q) / 2, fluid (1 - q))``."""
        period, q = self.period_ms(node, cpu)
        fluid = np.asarray(fluid_ms, dtype=float)
        return np.minimum(0.5 * period * (1.0 - q), np.maximum(fluid, 0.0) * (1.0 - q))

    def describe(self, cpus=(1.0,)) -> dict[str, dict[str, float]]:
        """node -> {cpu: period ms (reference)} for run records."""
        return {n: {str(c): round(self.period_ms(n, c)[0], 3) for c in cpus} for n in sorted(self.share_per_cpu)}


@dataclass(frozen=True)
class TimingModel:
    overheads: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_OVERHEADS))
    service_sigma: float = 0.10       # log-sd of the per-stage service noise
    detect_ms: float = 1_000.0        # time to notice a failed node (heartbeat/freshness budget)
    replan_ms: float = 50.0           # extra time to plan from scratch after a failure (no shadow)
    startup_ms: Mapping[str, float] = field(default_factory=dict)   # format -> start-up delay (ms)
    dispatch_ms: float = 0.0          # inputs ready -> the stage's process is being started (controller side)
    cpu_quota: CpuQuota | None = None  # per-stage CFS quota (the fabric): its hand-out per period, see above

    def with_overheads(self, overheads: Mapping[str, float]) -> "TimingModel":
        merged = dict(self.overheads)
        merged.update(overheads)
        return replace(self, overheads=merged)

    def with_startup(self, startup_ms: Mapping[str, float], dispatch_ms: float | None = None) -> "TimingModel":
        """This model with the start-up delay per format replaced by ``startup_ms`` (ms, >= 0) and,
        when given, the dispatch delay every stage pays before its start-up."""
        out: dict[str, float] = {}
        for k, v in startup_ms.items():
            v = float(v)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"startup_ms.{k}: must be a finite number >= 0, got {v!r}")
            out[str(k)] = v
        d = self.dispatch_ms if dispatch_ms is None else float(dispatch_ms)
        if not (math.isfinite(d) and d >= 0):
            raise ValueError(f"dispatch_ms: must be a finite number >= 0, got {d!r}")
        return replace(self, startup_ms=out, dispatch_ms=d)

    def with_cpu_quota(self, quota: CpuQuota | None) -> "TimingModel":
        """This model with stages' CFS quotas modelled (:class:`CpuQuota`; None: the fluid model)."""
        return replace(self, cpu_quota=quota)

    def startup(self, fmt: str | None) -> float:
        """Start-up delay (ms) of a stage run in format ``fmt`` (0 when not calibrated)."""
        return float(self.startup_ms.get(fmt, 0.0)) if fmt else 0.0

    def stage_delay(self, fmt: str | None) -> float:
        """Everything a stage pays before its work besides its inputs: dispatch + the format's start-up (ms)."""
        return self.dispatch_ms + self.startup(fmt)

    # ------------------------------------------------------------ formats
    def exec_format(self, stage: Stage, node: Node) -> tuple[str, float] | None:
        """(format key, overhead factor) of the cheapest way ``stage`` can run on ``node``; None if it cannot."""
        return exec_format(stage, node, self.overheads)

    # ------------------------------------------------------------ service
    def mean_service_ms(self, stage: Stage, node: Node, factor: float) -> float:
        fluid = stage.compute.duration_ms * factor / node.speed
        if self.cpu_quota is None:
            return fluid
        return fluid - float(self.cpu_quota.saving_ms(node.name, stage.compute.cpu, fluid))

    def quota_saving_ms(self, names, cpu: float, fluid_ms: np.ndarray) -> np.ndarray:
        """:meth:`CpuQuota.saving_ms` per node of ``names`` for fluid times ``fluid_ms`` (zeros without a quota)."""
        fluid = np.asarray(fluid_ms, dtype=float)
        if self.cpu_quota is None:
            return np.zeros_like(fluid)
        return np.array([float(self.cpu_quota.saving_ms(n, cpu, f)) for n, f in zip(names, fluid)], dtype=float)

    def service_noise(self, rng: np.random.Generator, size) -> np.ndarray:
        """Multiplicative noise with mean 1 (lognormal, log-sd ``service_sigma``).

        A small integer ``size`` is drawn one value at a time (the same values as one sized draw):
        numpy's Generator releases the GIL around every sized draw, and the DES makes one per job start
        and sample, thousands per plan. A thread that lets go of the GIL and takes it back that often
        starves the others (CPython then never forces a switch): in ``dtlab serve`` /healthz waited up to
        1.56 s behind 0.6 s DES plans on the planning thread (a CI failure). Measured in-process, the
        longest wait of a 1 ms sleeper beside such a plan: 164-324 ms with sized draws, 6-21 ms with these."""
        s = self.service_sigma
        if s <= 0:
            return np.ones(size)
        mu = -0.5 * s * s
        if isinstance(size, (int, np.integer)) and 0 <= size <= SMALL_DRAW:
            return np.array([rng.lognormal(mu, s) for _ in range(int(size))], dtype=float)
        return rng.lognormal(mu, s, size)

    # ------------------------------------------------------------ transfer
    def mean_transfer_ms(self, size_mb: float, link: Link | None) -> float:
        if link is None:
            return 0.0
        base = link.latency_ms + link.jitter_ms * math.sqrt(2 / math.pi)
        tail = link.loss * rto_ms(link) if size_mb > 0 else 0.0
        return base + bulk_ms(size_mb, link) + tail

    def sample_transfer_ms(self, size_mb: float, link: Link | None, rng: np.random.Generator, size) -> np.ndarray:
        if link is None:
            return np.zeros(size)
        out = np.full(size, link.latency_ms + bulk_ms(size_mb, link), dtype=float)
        if link.jitter_ms > 0:
            out += link.jitter_ms * np.abs(rng.standard_normal(size))
        if link.loss > 0 and size_mb > 0:
            out += (rng.random(size) < link.loss) * rto_ms(link)
        return out

    def sample_transfer_parts(self, size_mb: float, link: Link, rng: np.random.Generator,
                              size) -> tuple[np.ndarray, float]:
        """(per-transfer part: latency + jitter + loss tail, samples; bulk ms alone on the link): the
        bulk is what link sharing stretches. Same draws, in the same order, as ``sample_transfer_ms``."""
        out = np.full(size, link.latency_ms, dtype=float)
        if link.jitter_ms > 0:
            out += link.jitter_ms * np.abs(rng.standard_normal(size))
        if link.loss > 0 and size_mb > 0:
            out += (rng.random(size) < link.loss) * rto_ms(link)
        return out, bulk_ms(size_mb, link)


MAX_BACKGROUND = 0.95  # a saturated node predicts "very slow" (20x), never "never"


def background_share(cores, cpu_util, running_cpu):
    """Share of a node's cores a newly placed stage cannot use (scalars or numpy arrays).

    Telemetry background ``cpu_util`` is capacity lost outright. Stages already running
    (``running_cpu`` cores) are co-runners under processor sharing: while they fit, they
    take their cores; once the node is oversubscribed a newcomer still gets its fair
    share ``avail / (running + 1)`` rather than nothing. ``running_cpu`` as given is
    assumed to stay for the whole stage; pass :func:`overlap_cpu` of the co-runners whose
    remaining work is known instead, so those that leave early count only for the part
    of the stage they overlap.
    """
    avail = np.asarray(cores, dtype=float) * (1.0 - np.minimum(cpu_util, MAX_BACKGROUND))
    running = np.asarray(running_cpu, dtype=float)
    usable = np.maximum(avail - running, avail / (running + 1.0))
    share = 1.0 - usable / np.asarray(cores, dtype=float)
    return np.clip(share, 0.0, MAX_BACKGROUND)


def progress_share(cores, cpu_util, running_cpu):
    """Fraction of its ``cpu`` a running co-runner has been getting: 1, or ``avail / running`` if oversubscribed.

    A first-order guess at its past: the twin does not replay the node's history, so it
    takes today's load (telemetry background, cores of the stages running now) as the
    load since the co-runner started.
    """
    avail = np.asarray(cores, dtype=float) * (1.0 - np.minimum(cpu_util, MAX_BACKGROUND))
    running = np.asarray(running_cpu, dtype=float)
    return np.minimum(1.0, avail / np.maximum(running, 1e-12))


def overlap_cpu(cpu, remaining_ms, service_ms):
    """Cores co-runners claim on average over a newcomer's stage: ``cpu * min(1, remaining / service)``.

    ``remaining_ms`` (a co-runner's work left) and ``service_ms`` (the newcomer's) are
    both at full allocation. Under processor sharing both slow down by about the same
    factor while they overlap, so the co-runner is present for about ``remaining /
    service`` of the newcomer's work; averaging its cores over the newcomer's work is
    the first-order (work-weighted mean demand) version of the PS replay the des path
    runs. It is optimistic when the node flips from oversubscribed to not mid-stage
    (slowdown is convex in demand). ``remaining_ms`` inf = stays; ``service_ms`` 0 =
    full overlap. Broadcasts.
    """
    rem = np.asarray(remaining_ms, dtype=float)
    svc = np.asarray(service_ms, dtype=float)
    frac = np.where(svc > 0, np.minimum(1.0, rem / np.where(svc > 0, svc, 1.0)), 1.0)
    return np.asarray(cpu, dtype=float) * frac


def remaining_work_ms(service_ms, start_ts, now: float | None, share):
    """Co-runners' work left (ms at full allocation): ``max(0, service_ms - elapsed * share)``. Broadcasts.

    ``start_ts`` and ``now`` in seconds; a NaN start or no clock counts as nothing elapsed
    (an upper bound). Same rule as :meth:`dtlab.state.CoRunner.remaining_ms`.
    """
    svc = np.asarray(service_ms, dtype=float)
    if now is None:
        return svc.copy()
    start = np.asarray(start_ts, dtype=float)
    elapsed = np.where(np.isnan(start), 0.0, np.maximum(0.0, (now - np.where(np.isnan(start), 0.0, start)) * 1000.0))
    return np.maximum(0.0, svc - elapsed * np.asarray(share, dtype=float))


def corunner_work(status, now: float | None) -> tuple[list[tuple[float, float]], float]:
    """Co-runners of a node: ``([(cpu, remaining ms)] of those with known work, cores of those that stay)``.

    ``status`` is a :class:`dtlab.state.NodeStatus` (duck-typed: ``node.cores``,
    ``cpu_util``, ``running_cpu``, optional ``corunners``); ``now`` its snapshot's clock
    (seconds). Remaining work = ``max(0, service_ms - elapsed * share)`` with ``share``
    from :func:`progress_share` (full speed unless the node is oversubscribed now).
    Stages the twin did not plan (no ``service_ms``) and running cores no co-runner
    accounts for (mappings without ``corunners``) stay. Both predictors read this, so
    they start from the same remaining work.
    """
    corunners = getattr(status, "corunners", ())
    running = float(status.running_cpu)
    if not corunners:
        return [], running
    share = float(progress_share(status.node.cores, status.cpu_util, running))
    planned = [c for c in corunners if c.service_ms is not None]
    if not planned:
        return [], running
    rem = remaining_work_ms([c.service_ms for c in planned],
                            [math.nan if c.start_ts is None else c.start_ts for c in planned], now, share)
    known = [(float(c.cpu), float(r)) for c, r in zip(planned, rem)]
    return known, max(0.0, running - sum(c for c, _ in known))


def throughput_mbps(link: Link) -> float:
    """Bandwidth, capped by the Mathis et al. (1997) TCP bound when the link loses packets."""
    rtt_s = 2 * link.latency_ms / 1000.0
    if link.loss <= 0 or rtt_s <= 0:  # (a denormal latency underflows to an RTT of 0)
        return link.bandwidth_mbps
    mathis = MSS_BYTES * 8 / rtt_s * 1.22 / math.sqrt(link.loss) / 1e6
    return min(link.bandwidth_mbps, mathis)


def bulk_ms(size_mb: float, link: Link) -> float:
    return size_mb * 8.0 / throughput_mbps(link) * 1000.0 if size_mb > 0 else 0.0


def shared_speed(link: Link, n: int) -> float:
    """Rate of each of ``n`` concurrent bulk transfers on ``link``, as a fraction of one alone:
    ``min(throughput, bandwidth / n) / throughput`` (each TCP flow keeps its own Mathis cap)."""
    alone = throughput_mbps(link)
    return min(alone, link.bandwidth_mbps / max(n, 1)) / alone if alone > 0 else 1.0


def shared_extra_ms(bulk, start, others: list[tuple[float, float]], link: Link):
    """First-order processor-sharing delay a bulk transfer of ``bulk`` ms (alone) starting at ``start``
    (scalars or numpy arrays) gets from ``others``: flows ``(start, bulk ms alone)`` on the same link.
    Each overlapping pair shares from the later start while both last: the transfer loses the other's
    progress there, ``min(its remaining, the other's remaining)`` scaled by how much two flows slow each
    other (:func:`shared_speed`; 0 when the link's Mathis cap leaves room for both). Exact for two flows."""
    slow = 1.0 / shared_speed(link, 2) - 1.0         # 1.0 when two flows halve each other's rate
    extra = np.zeros_like(np.asarray(bulk + start, dtype=float))
    if slow <= 0:
        return extra
    for a, b in others:
        s = np.maximum(start, a)
        mine = bulk - (s - start)
        theirs = b - (s - a)
        extra = extra + np.maximum(0.0, np.minimum(mine, theirs))
    return extra * slow


def rto_ms(link: Link) -> float:
    return max(MIN_RTO_MS, 4 * link.latency_ms)


def exec_format(stage: Stage, node: Node, overheads: Mapping[str, float] = DEFAULT_OVERHEADS) -> tuple[str, float] | None:
    """(format key, overhead factor) of the cheapest of :func:`dtlab.model.format_keys`; None if it cannot run."""
    options: list[tuple[float, str]] = []
    for key in format_keys(stage, node):
        if key == "native":
            options.append((overheads.get("native", 1.0), key))
        elif key == "wasm":
            options.append((overheads.get("wasm", DEFAULT_OVERHEADS["wasm"]), key))
        else:
            options.append((overheads.get(key, DEFAULT_OVERHEADS.get(key, 3.0)), key))
    if not options:
        return None
    factor, key = min(options)
    return key, factor
