"""V5: does the twin scale? Pure-twin plan latency and state throughput vs cluster size.

Hypothesis: a plan costs O(nodes) vectorised work and a state event O(1), so plan latency grows at
most linearly from 10 to 50,000 nodes and stays far below the 1 s a controller can spend per
arrival, while events/s stay flat.

Regime: one Python process planning back to back on this host, a cluster drawn from the example's
node types (no load in the twin: a plan's cost does not depend on it). The host is shared, so a
wall-clock p99 measures the neighbours as much as the twin: the run records the host's 1-min load
average at start and end (``regime.host_load1.*``, ``regime.host_cpus``) and the CPU time of every
plan next to its wall time (``plan_cpu_p99_ms.*``: what the twin itself spent). Seeds to CI: the
p50/p99 metrics are quantiles of the plan times pooled over seeds with a bootstrap interval
(:func:`plan_quantile_ci`); a p99 is only estimable with several samples above it, so
``plans x seeds`` is 400 in ``params/V5.yaml`` (4 above the p99); the mean of per-seed p99s over 30
plans (each one a seed's maximum) gave bands three decades wide. Cost: ~60 s of CPU for the full
run; on this 2-core host shared with other work (load ~13) that was 5 min of wall time at 500 plans.

Synthetic clusters of ``node_counts`` nodes are drawn from the example cluster's node
types (same zones, links, arch/format mix; :func:`dtlab.experiments.loop.synthetic_cluster`).
For each size and policy, ``plans`` wall-clock ``Twin.plan`` calls are timed twice:

* ``warm``:  consecutive plans on an unchanged state (the snapshot and its node tables are reused);
* ``fresh``: one telemetry event is applied before every plan, so each plan pays the snapshot
  rebuild and table refresh a live controller pays when the world keeps changing.

State costs per size: ``apply_events`` single-event ``ClusterState.apply`` calls (telemetry
on random nodes; events/s) and ``snapshots`` snapshot rebuilds after a change (ms).
The default sizes go to 50,000 nodes and the full run (5 seeds) still takes well under a
minute of CPU: state updates are O(changed objects) and a plan is vectorised O(nodes) numpy.

``substrate: kube`` (``params/V5-kube.yaml``): for each node count a local control plane
(:mod:`dtlab.kube.localplane`) with that many KWOK nodes; the twin lists + watches it
through :class:`dtlab.kube.observer.Observer` into its ClusterState, while it plans
``job`` after ``job`` and a load-generator *process* (so its client work does not steal
the twin's interpreter) creates the planned pods (``pods`` in all, pinned, each running
``pod_ms`` on KWOK). Measured: plan latency p50/p99 during the run (mode ``live``); observe
lag by probes - a node is cordoned/uncordoned ``probes_per_s`` times a second and the lag is
"cordon event applied to the state" minus "PATCH sent" (an upper bound that includes the
PATCH round trip; the observer's own Kubernetes-timestamp lags have 1 s resolution and are
reported alongside); the twin's list/watch memory (RSS growth of this process from before
the first LIST to the end); the API server's request latency during the run (delta of its
``apiserver_request_duration_seconds`` histogram, WATCH excluded); nodes and pods per second;
and whether the twin's state matches the API server's at the end (node count, pod phases).

Where one 24 GB, 2-core host stops (measured 2026-11-27, shared with other work): not at
memory - with 5,000 KWOK nodes and 5,000 pods kube-apiserver held about 1.5 GB and the
twin's RSS grew 127 MB (mostly the observer's copy of every v1 Node) - but at CPU: KWOK
renews each node's Lease every lease/4 s, so with localplane's 10 s lease 1,000 nodes
already flapped NotReady (see :class:`_scale_heartbeats`); with 40 s leases 5,000 nodes
stayed Ready (registered at ~31 nodes/s) and the run passed, while 10,000 nodes would need
~1,000 lease writes/s before a single pod, more than two cores serve. Pure twin: 50,000.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..model import load_job
from ..state import ClusterState
from . import regime
from .result import ExperimentResult
from .params import child_seed, load_cluster_param, require_choices, require_positive, resolve_path, validate
from .summary import mean_ci, put_ci
from .loop import synthetic_cluster

DEFAULTS: dict[str, Any] = {
    "cluster": "examples/cluster-hetero.yaml",
    "node_counts": [10, 100, 1000, 10000, 50000],
    "policies": ["greedy", "cvar"],
    "predictor": "fast",
    "samples": 256,
    "plans": 80,                # x seeds, pooled: 400 plans per point for a bootstrap p99 (see docstring)
    "job": "examples/job-pipeline.yaml",
    "apply_events": 20000,
    "snapshots": 20,
    "seeds": [0, 1, 2, 3, 4],
    "substrate": "twin",        # twin (pure, synthetic cluster in memory) | kube (local plane + KWOK nodes)
    "pods": 10000,              # kube: pods created per node count
    "pod_ms": 3000.0,           # kube: how long each pod runs on KWOK
    "probes_per_s": 4.0,        # kube: cordon/uncordon probes per second (observe lag)
    "kube_timeout_s": 900.0,    # kube: give up on one node count after this long
}
SUBSTRATES = ("twin", "kube")
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"node_counts": [10, 100], "plans": 3, "seeds": [0, 1], "apply_events": 2000, "snapshots": 5}


def _plan_times(twin, job, policy, predictor, samples, plans, seed, fresh, rng, names
                ) -> tuple[list[float], list[float]]:
    """(wall-clock ms, CPU ms of this thread) per plan. The CPU time leaves out the time the OS gave
    to other processes, so the two differ by how busy the host was."""
    wall, cpu = [], []
    for i in range(plans):
        if fresh:
            twin.state.apply({"kind": "telemetry", "node": names[int(rng.integers(len(names)))],
                              "cpu_util": float(rng.random() * 0.5), "ts": float(i)})
        c0 = time.thread_time()
        t0 = time.perf_counter()
        twin.plan(job, policy=policy, samples=samples, seed=child_seed(seed, policy, i), predictor=predictor)
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.thread_time() - c0) * 1000.0)
    return wall, cpu


def state_costs(cluster, events: int, snapshots: int, seed: int) -> dict[str, float]:
    """(events/s of single applies, ms per snapshot rebuild) on a fresh ClusterState of ``cluster``."""
    rng = np.random.default_rng(child_seed(seed, "state"))
    names = [n.name for n in cluster.nodes]
    idx = rng.integers(len(names), size=events)
    util = rng.random(events) * 0.5
    state = ClusterState(cluster)
    batch = [{"kind": "telemetry", "node": names[i], "cpu_util": float(u), "ts": float(k)}
             for k, (i, u) in enumerate(zip(idx, util))]
    t0 = time.perf_counter()
    for e in batch:
        state.apply(e)
    apply_s = time.perf_counter() - t0
    snap_ms = []
    for k in range(snapshots):
        state.apply(batch[k % len(batch)])
        t0 = time.perf_counter()
        state.snapshot()
        snap_ms.append((time.perf_counter() - t0) * 1000.0)
    return {"apply_events_per_s": events / apply_s if apply_s > 0 else float("nan"),
            "snapshot_ms": float(np.mean(snap_ms)) if snap_ms else float("nan")}


def check(params: dict[str, Any] | None) -> dict[str, Any]:
    """The validated params (what the runner checks before the kernel starts; ``run`` starts with it)."""
    from .. import policies
    from ..errors import SpecError

    p = validate(params, DEFAULTS, "V5")
    require_choices(p, "policies", [n for n in policies.names() if n != "rl_stub"])
    require_choices(p, "predictor", ("fast", "des", "legacy"))
    require_positive(p, "samples", "plans", "apply_events", "snapshots")
    if not p["node_counts"] or not all(isinstance(n, int) and n >= 1 for n in p["node_counts"]):
        raise SpecError("node_counts", "must be a non-empty list of integers >= 1")
    require_choices(p, "substrate", SUBSTRATES)
    require_positive(p, "pods", "pod_ms", "probes_per_s", "kube_timeout_s")
    return p


def run(params: dict[str, Any] | None = None) -> ExperimentResult:
    from ..twin import Twin

    p = check(params)
    template = load_cluster_param(p["cluster"])
    job = load_job(resolve_path(p["job"], "job"))
    if p["substrate"] == "kube":
        return _run_kube(p, template, job)
    rows, state_rows, samples_rows = [], [], []
    metrics: dict[str, Any] = {}
    host_start = regime.host({}, "start")     # added after the plan metrics (they are the headline)
    for nodes in p["node_counts"]:
        for seed in p["seeds"]:
            cluster = synthetic_cluster(template, nodes, seed=seed)
            names = [n.name for n in cluster.nodes]
            for policy in p["policies"]:
                for mode in ("warm", "fresh"):
                    twin = Twin(cluster)
                    rng = np.random.default_rng(child_seed(seed, nodes, policy, mode))
                    twin.plan(job, policy=policy, samples=p["samples"], seed=0, predictor=p["predictor"])  # warm-up
                    wall, cpu = _plan_times(twin, job, policy, p["predictor"], p["samples"], p["plans"],
                                            seed, mode == "fresh", rng, names)
                    ms = np.asarray(wall)
                    rows.append({"nodes": nodes, "policy": policy, "mode": mode, "seed": seed,
                                 "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                                 "mean_ms": float(ms.mean()), "cpu_p99_ms": float(np.percentile(cpu, 99)),
                                 "plans": int(ms.size)})
                    samples_rows.append(pd.DataFrame({"nodes": nodes, "policy": policy, "mode": mode, "seed": seed,
                                                      "wall_ms": wall, "cpu_ms": cpu}))
            state_rows.append({"nodes": nodes, "seed": seed,
                               **state_costs(cluster, p["apply_events"], p["snapshots"], seed)})
    end = regime.host({}, "end")
    table = pd.DataFrame(rows)
    state = pd.DataFrame(state_rows)
    plans = pd.concat(samples_rows, ignore_index=True)
    for (nodes, policy, mode), g in plans.groupby(["nodes", "policy", "mode"], sort=False):
        for q, name in ((0.5, "plan_p50_ms"), (0.99, "plan_p99_ms")):
            put_ci(metrics, f"{name}.{policy}.{mode}.{nodes}", plan_quantile_ci(g["wall_ms"], q))
        put_ci(metrics, f"plan_cpu_p99_ms.{policy}.{mode}.{nodes}", plan_quantile_ci(g["cpu_ms"], 0.99))
    for nodes, g in state.groupby("nodes", sort=False):    # bootstrap over seeds: one busy-host seed is not a
        for col in ("apply_events_per_s", "snapshot_ms"):     # reason for a band reaching zero (t-interval did)
            put_ci(metrics, f"{col}.{nodes}", stats.bootstrap_ci(g[col].tolist(), bounds=stats.NONNEG))
    metrics.update({**host_start, **end})
    return ExperimentResult(table=table, metrics=metrics, extra={"state": state, "plans": plans}, params=p)


def plan_quantile_ci(ms, q: float):
    """The ``q`` quantile of plan times pooled over seeds, with a bootstrap 95 % interval (>= 0).

    Pooled, not the mean of per-seed p99s: with 30 plans a seed's p99 is its slowest plan, and the
    mean of five maxima with a t-interval spanned decades. The bootstrap needs a handful of samples
    above the quantile: ``plans x seeds >= 500`` puts five above the p99 (params/V5.yaml).
    """
    return stats.quantile_ci(list(ms), q, bounds=stats.NONNEG, seed=0)


# ====================================================================== substrate: kube

def _rss_mb() -> float:
    """Resident set size of this process (MB), from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def scrape_apiserver(plane_state: dict) -> str:
    """The API server's /metrics text, with the plane's admin client certificate."""
    import ssl
    import urllib.request
    pki = os.path.join(plane_state["workdir"], "pki")
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
    url = f"https://127.0.0.1:{plane_state['ports']['kube-apiserver']}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
        return r.read().decode()


def request_histograms(text: str) -> dict[str, dict[float, float]]:
    """verb -> {le: cumulative count} of apiserver_request_duration_seconds, summed over the other labels."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "apiserver_request_duration_seconds":
            continue
        for smp in fam.samples:
            if smp.name.endswith("_bucket"):
                verb = smp.labels.get("verb", "?")
                le = float(smp.labels["le"])
                out.setdefault(verb, {})
                out[verb][le] = out[verb].get(le, 0.0) + smp.value
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus-style quantile from cumulative buckets (linear within the bucket; +Inf -> last bound)."""
    les = sorted(buckets)
    total = buckets[les[-1]] if les else 0.0
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def apiserver_latency(before: str, after: str) -> list[dict[str, Any]]:
    """Per verb (and ``all`` but WATCH/CONNECT): requests and p50/p99 ms during the run (histogram delta)."""
    h0, h1 = request_histograms(before), request_histograms(after)
    rows: list[dict[str, Any]] = []
    total: dict[float, float] = {}
    for verb in sorted(h1):
        delta = {le: c - h0.get(verb, {}).get(le, 0.0) for le, c in h1[verb].items()}
        n = delta.get(float("inf"), 0.0)
        if n <= 0:
            continue
        rows.append({"verb": verb, "requests": int(n), "p50_ms": histogram_quantile(delta, 0.5) * 1e3,
                     "p99_ms": histogram_quantile(delta, 0.99) * 1e3})
        if verb not in ("WATCH", "CONNECT"):
            for le, c in delta.items():
                total[le] = total.get(le, 0.0) + c
    if total:
        rows.append({"verb": "all", "requests": int(total[float("inf")]),
                     "p50_ms": histogram_quantile(total, 0.5) * 1e3, "p99_ms": histogram_quantile(total, 0.99) * 1e3})
    return rows


def _pod_writer(kubeconfig: str, queue, result, workers: int) -> None:
    """Load generator (own process): create the PodSpecs arriving on ``queue`` with ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from ..kube.actuator import Actuator
    act = Actuator(kubeconfig, timeout_s=30.0, deadline_s=120.0)
    errors: list[str] = []
    created = 0

    def create(spec):
        nonlocal created
        try:
            act.create_pod(spec)
            created += 1
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"{spec.name}: {exc}"[:300])

    with ThreadPoolExecutor(workers) as pool:
        while True:
            spec = queue.get()
            if spec is None:
                break
            pool.submit(create, spec)
    result.put({"created": created, "errors": errors[:20], "n_errors": len(errors), "retries": act.retries})


def _put(queue, writer, item) -> None:
    """Hand ``item`` to the load generator; fail (instead of blocking forever) if it died."""
    import queue as queue_mod
    while True:
        try:
            queue.put(item, timeout=1.0)
            return
        except queue_mod.Full:
            if not writer.is_alive():
                from ..errors import DtlabError
                raise DtlabError(f"V5 kube: the pod writer process exited (code {writer.exitcode}); "
                                 "note a script using substrate kube needs an `if __name__ == '__main__':` guard "
                                 "(the writer is a spawned process)") from None


class _scale_heartbeats:
    """Lengthen the plane's node lease (and the node-monitor grace that must exceed it) while it starts.

    Why: KWOK renews every node's Lease each ``lease/4`` seconds; with localplane's 10 s (chosen so
    fault tests detect a dead node in seconds) 1,000 nodes are 400 lease PUTs/s, which a shared 2-core
    host cannot serve: leases expire and healthy nodes flap NotReady (their pods get evicted). V5
    measures the twin, not failure detection, so it uses ``lease_s`` (default 40 s, grace 2x). The
    values are localplane's module settings read by ``up``; restored on exit.
    """

    def __init__(self, lp, lease_s: float):
        self.lp, self.lease_s = lp, lease_s

    def __enter__(self):
        self.saved = (self.lp.NODE_LEASE_SECONDS, self.lp.NODE_MONITOR_GRACE)
        if self.lease_s:
            self.lp.NODE_LEASE_SECONDS = int(self.lease_s)
            self.lp.NODE_MONITOR_GRACE = f"{int(2 * self.lease_s)}s"
        return self

    def __exit__(self, *exc):
        self.lp.NODE_LEASE_SECONDS, self.lp.NODE_MONITOR_GRACE = self.saved
        return False


def kube_scale(template, job, nodes: int, seed: int, p: dict, plane: str | None = None,
               lease_s: float = 40.0) -> dict[str, Any]:
    """One node count on a fresh local plane: plans, observe lag, memory, API latency, state agreement.

    ``lease_s``: KWOK node lease for this plane (see :class:`_scale_heartbeats`; 0 keeps localplane's).
    """
    import multiprocessing as mp
    from dataclasses import replace

    from ..kube import localplane as lp
    from ..kube.actuator import NAMESPACE, Actuator, pod_spec_for
    from ..kube.observer import Observer
    from ..twin import Twin

    ok, why = lp.binaries_available()
    if not ok:
        from ..errors import SubstrateUnavailable
        raise SubstrateUnavailable(f"substrate kube: {why}")
    plane = plane or f"v5-{os.getpid()}-{nodes}"
    cluster = synthetic_cluster(template, nodes, seed=seed)
    specs = [{"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed, "mem_gb": n.mem_gb,
              "formats": list(n.formats), "zone": n.zone, "labels": dict(n.labels or {}), "max_pods": 1000}
             for n in cluster.nodes]
    deadline = time.monotonic() + p["kube_timeout_s"]
    t0 = time.perf_counter()
    with _scale_heartbeats(lp, lease_s):
        st = lp.up(specs, name=plane, timeout=max(180.0, nodes * 0.2))
    up_s = time.perf_counter() - t0
    obs = writer = None
    out: dict[str, Any] = {"nodes": nodes, "seed": seed, "up_s": up_s, "nodes_per_s": nodes / up_s}
    try:
        kc = st["kubeconfig"]
        act = Actuator(kc)
        act.ensure_namespace()
        state = ClusterState(cluster)
        twin = Twin(state)
        names = [n.name for n in cluster.nodes]
        probe = names[-1]
        applied: list[tuple[str, float]] = []
        cond = threading.Condition()

        def sink(batch):
            state.apply_many(batch)
            now = time.time()
            hits = [(e["kind"], now) for e in batch
                    if e.get("node") == probe and e["kind"] in ("node-cordon", "node-uncordon")]
            if hits:
                with cond:
                    applied.extend(hits)
                    cond.notify_all()

        rss0 = _rss_mb()
        t0 = time.perf_counter()
        obs = Observer(kc, sink=sink, known_nodes=names).start(wait_s=120.0)
        out["list_s"] = time.perf_counter() - t0
        out["rss_after_list_mb"] = _rss_mb() - rss0
        metrics0 = scrape_apiserver(st)

        # observe-lag probes on a background thread
        lags: list[float] = []
        stop = threading.Event()

        def prober():
            k = 0
            while not stop.wait(1.0 / p["probes_per_s"]):
                want = "node-cordon" if k % 2 == 0 else "node-uncordon"
                t_send = time.time()
                try:
                    act.cordon(probe, on=(k % 2 == 0))
                except Exception:  # noqa: BLE001 - a failed probe is just not counted
                    continue
                with cond:
                    if cond.wait_for(lambda: len(applied) > k and applied[k][0] == want, timeout=10.0):
                        lags.append(applied[k][1] - t_send)
                    else:
                        return      # lost track of the probe sequence: stop probing
                k += 1

        ctx = mp.get_context("spawn")
        queue, result = ctx.Queue(maxsize=256), ctx.Queue()
        writer = ctx.Process(target=_pod_writer, args=(kc, queue, result, 16), daemon=True)
        writer.start()
        probe_t = threading.Thread(target=prober, daemon=True)
        probe_t.start()

        n_jobs = -(-p["pods"] // len(job.stages))
        plan_ms: list[float] = []
        pods_sent = 0
        t_pods = time.perf_counter()
        for k in range(n_jobs):
            jk = replace(job, name=f"v5-{k}")
            t1 = time.perf_counter()
            plan = twin.plan(jk, policy=p["policies"][k % len(p["policies"])], samples=p["samples"],
                             seed=child_seed(seed, "kube", k), predictor=p["predictor"])
            plan_ms.append((time.perf_counter() - t1) * 1e3)
            for sid, node in plan.placement.items():
                if pods_sent >= p["pods"]:
                    break
                _put(queue, writer, pod_spec_for(jk, sid, cluster.by_name[node], plan.formats[sid] or "native",
                                                 0, p["pod_ms"]))
                pods_sent += 1
            if time.monotonic() > deadline:
                break
        _put(queue, writer, None)
        writer.join(timeout=max(1.0, deadline - time.monotonic()))
        wres: dict[str, Any] = result.get(timeout=10) if not writer.is_alive() else {"created": -1, "errors": ["writer timed out"],
                                                                       "n_errors": 1, "retries": 0}
        create_s = time.perf_counter() - t_pods
        out.update(pods=pods_sent, pods_created=wres["created"], pod_errors=wres["n_errors"],
                   pods_per_s=wres["created"] / create_s if create_s > 0 else float("nan"))

        def ended() -> int:
            return sum(1 for s in state.snapshot().stages.values() if s.phase in ("succeeded", "failed"))
        while ended() < wres["created"] and time.monotonic() < deadline:
            time.sleep(0.5)
        out["all_done_s"] = time.perf_counter() - t_pods
        stop.set()
        probe_t.join(timeout=15)
        metrics1 = scrape_apiserver(st)
        out["twin_rss_mb"] = _rss_mb() - rss0
        time.sleep(1.0)   # let the last probe's uncordon settle
        out.update(compare_with_api(act, state, NAMESPACE))
        lag = np.asarray(lags) * 1e3
        out.update(probes=int(lag.size),
                   observe_lag_p50_ms=float(np.percentile(lag, 50)) if lag.size else float("nan"),
                   observe_lag_p99_ms=float(np.percentile(lag, 99)) if lag.size else float("nan"),
                   observe_lag_max_ms=float(lag.max()) if lag.size else float("nan"))
        k8s = obs.lag_stats()
        out.update(k8s_lag_p50_s=k8s["p50_s"], k8s_lag_p95_s=k8s["p95_s"], observer_errors=obs.counters["errors"],
                   sink_errors=obs.counters["sink_errors"], observer_relists=obs.counters["lists"])
        api_rows = apiserver_latency(metrics0, metrics1)
        allrow = next((r for r in api_rows if r["verb"] == "all"), {})
        out.update(apiserver_requests=allrow.get("requests", 0), apiserver_p50_ms=allrow.get("p50_ms", float("nan")),
                   apiserver_p99_ms=allrow.get("p99_ms", float("nan")))
        ms = np.asarray(plan_ms)
        out["plan_ms"] = ms
        out["apiserver"] = api_rows
        return out
    finally:
        if obs is not None:
            obs.stop()
        if writer is not None and writer.is_alive():
            writer.kill()
            writer.join(timeout=5)
        lp.down(plane, keep_workdir=False)


def compare_with_api(act, state: ClusterState, namespace: str) -> dict[str, Any]:
    """Node count and pod phases on the API server vs the twin's state (stage phases)."""
    api_nodes = len(act.list_nodes())
    pods = act.pods()
    api_phase = {"Succeeded": 0, "Failed": 0, "Running": 0, "Pending": 0}
    for pod in pods:
        api_phase[pod.status.phase] = api_phase.get(pod.status.phase, 0) + 1
    snap = state.snapshot()
    twin_phase = {"succeeded": 0, "failed": 0, "running": 0, "pending": 0}
    for s in snap.stages.values():
        twin_phase[s.phase] = twin_phase.get(s.phase, 0) + 1
    match = (api_nodes == len(snap.nodes) and api_phase["Succeeded"] == twin_phase["succeeded"]
             and api_phase["Failed"] == twin_phase["failed"] and api_phase["Running"] == twin_phase["running"]
             and len(pods) == sum(twin_phase.values()) + api_phase["Pending"])
    return {"api_nodes": api_nodes, "twin_nodes": len(snap.nodes), "api_pods": len(pods),
            "api_succeeded": api_phase["Succeeded"], "api_failed": api_phase["Failed"],
            "api_running": api_phase["Running"], "api_pending": api_phase["Pending"],
            "twin_succeeded": twin_phase["succeeded"], "twin_failed": twin_phase["failed"],
            "twin_running": twin_phase["running"], "state_matches": bool(match)}


def _run_kube(p: dict, template, job) -> ExperimentResult:
    rows, kube_rows, api_rows = [], [], []
    for nodes in p["node_counts"]:
        for seed in p["seeds"]:
            r = kube_scale(template, job, nodes, seed, p)
            ms = r.pop("plan_ms")
            for a in r.pop("apiserver"):
                api_rows.append({"nodes": nodes, "seed": seed, **a})
            rows.append({"nodes": nodes, "policy": "+".join(p["policies"]), "mode": "live", "seed": seed,
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                         "mean_ms": float(ms.mean()), "plans": int(ms.size)})
            kube_rows.append(r)
    table, kube = pd.DataFrame(rows), pd.DataFrame(kube_rows)
    metrics: dict[str, Any] = {"substrate": "kube"}
    for (nodes, policy), g in table.groupby(["nodes", "policy"], sort=False):
        put_ci(metrics, f"plan_p50_ms.{policy}.live.{nodes}", mean_ci(g["p50_ms"]))
        put_ci(metrics, f"plan_p99_ms.{policy}.live.{nodes}", mean_ci(g["p99_ms"]))
    for nodes, g in kube.groupby("nodes", sort=False):
        for col in ("observe_lag_p50_ms", "observe_lag_p99_ms", "twin_rss_mb", "apiserver_p99_ms", "pods_per_s",
                    "nodes_per_s"):
            put_ci(metrics, f"{col}.{nodes}", mean_ci(g[col]))
    metrics["state_matches"] = bool(kube["state_matches"].all())
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"kube": kube, "apiserver": pd.DataFrame(api_rows)}, params=p)
