"""The run pieces experiments share: one controller run of a workload (twin + substrate + loop),
its per-run job metrics, and the synthetic clusters V5 scales to."""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..controller import Controller
from ..errors import SpecError
from ..model import Cluster, Node, Workload
from ..twin import Twin
from . import regime
from .params import child_seed
from .substrate import SubstrateChoice, open_substrate


def run_controller(params: Mapping[str, Any], cluster: Cluster, workload: Workload, seed: int, policy: str,
                   predictor: str, samples: int, substrate_extra: Mapping[str, Any] | None = None,
                   on_plan: Sequence[Callable[..., Any]] = (), recalibrate: dict[str, Any] | None = None,
                   before: Callable[[Twin], Any] | None = None,
                   choice: SubstrateChoice | None = None, limit: int | None = None) -> tuple[pd.DataFrame, Controller]:
    """One controller run (fresh twin + substrate) of a workload; returns (per-job DataFrame, controller).

    With a ``choice`` the twin plans with ``choice.timing`` (on the fabric: this host's calibration).
    A substrate that runs its own Prometheus (fabric ``substrate_opts: {telemetry: prometheus}``)
    feeds the twin through a :class:`dtlab.telemetry.TelemetryPoller` (0.5 s), as a deployment would.
    ``limit``: submit only the stream's first ``limit`` jobs (the same arrivals as the full run's first ones).
    """
    from ..workload.stream import job_stream

    twin = Twin(cluster, timing=choice.timing if choice is not None else None)
    if choice is not None:
        events = choice.link_events(cluster)
        if events:
            twin.state.apply_many(events)     # the twin's links: fitted to this host's data path
    if before is not None:
        before(twin)      # lets a caller hold the run's twin (V2 predicts with its timing model)
    with open_substrate(params, cluster, seed, choice, **dict(substrate_extra or {})) as sub:
        if choice is not None:
            twin.timing = choice.with_startup(twin.timing, sub)   # start-up in this substrate's time
        recal = None
        if recalibrate is not None:
            from ..calibration.online import OnlineCalibrator
            recal = OnlineCalibrator(twin, **recalibrate)
        poller = None
        prometheus_url = getattr(sub, "prometheus_url", None)
        if prometheus_url:
            from ..telemetry import PrometheusClient, TelemetryPoller
            poller = TelemetryPoller(PrometheusClient(prometheus_url, timeout_s=1.0),
                                     clock=getattr(sub, "ts_of_epoch", None)).start()
        ctl = Controller(twin, sub, policy=policy, predictor=predictor, samples=samples,
                         seed=child_seed(seed, policy, predictor), on_plan=on_plan, recalibrator=recal,
                         telemetry=poller)
        stream: Any = job_stream(workload, np.random.default_rng(child_seed(seed, "workload")))
        if limit is not None:
            stream = itertools.islice(stream, int(limit))
        try:
            df = ctl.run_workload(stream)
        finally:
            if poller is not None:
                poller.stop()
        stages = sub.results()["stages"]
    df.insert(0, "seed", seed)
    df.attrs["regime"] = regime.measure(df, stages, cluster, workload.template)   # small dict: the run's regime
    return df, ctl


def latency_stats(df: pd.DataFrame) -> dict[str, float]:
    """Per-run job metrics: latency mean/p95/p99 over completed jobs, miss rate over all planned jobs."""
    lat = df.loc[df["ok"], "latency_ms"].to_numpy(dtype=float)
    return {
        "jobs": int(len(df)),
        "completed": int(df["ok"].sum()),
        "latency_mean_ms": float(lat.mean()) if lat.size else math.nan,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else math.nan,
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else math.nan,
        "miss_rate": float(df["missed"].mean()) if len(df) else math.nan,
    }


def synthetic_cluster(template: Cluster, nodes: int, seed: int = 0) -> Cluster:
    """A cluster of ``nodes`` nodes drawn from ``template``'s node types, in the template's zones and links.

    The first ``len(template.nodes)`` nodes copy the template in order (so a 7-node template at 7 nodes is
    the template), later ones are random draws of its node types; zones and zone links stay the template's,
    so the arch/format/zone mix is preserved while the node count scales (V5).
    """
    if nodes < 1:
        raise SpecError("nodes", "must be >= 1")
    rng = np.random.default_rng(seed)
    k = len(template.nodes)
    picks = list(range(min(k, nodes))) + rng.integers(0, k, size=max(0, nodes - k)).tolist()
    out = []
    for i, j in enumerate(picks):
        base = template.nodes[j]
        out.append(Node(name=f"{base.zone}-{base.arch}-{i:05d}", arch=base.arch, cores=base.cores,
                        speed=base.speed, mem_gb=base.mem_gb, formats=base.formats, zone=base.zone,
                        labels=base.labels, fail_prob=base.fail_prob))
    zones = {n.zone for n in out}
    links = tuple(l for l in template.links if l.a in zones and l.b in zones)
    return Cluster(name=f"{template.name}-x{nodes}", nodes=tuple(out), links=links)
