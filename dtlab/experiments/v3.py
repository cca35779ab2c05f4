"""V3: what do execution formats cost, and what does the controller itself cost?

Hypothesis: QEMU user-mode emulation costs a multiple of native time, Wasm a fraction more than
native, and the twin's factors lie within the measured intervals (after host calibration on the
fabric); planning costs milliseconds, far below a job's seconds.

Regime: one stage at a time on an otherwise idle node -- no contention by design, so a factor is the
format's and not the load's. The factor is paired (format / native on the same node and seed), so
node speed cancels and the per-seed spread is the service noise alone; wall-clock numbers on a
shared host include the neighbours, so the run records the host's load (``regime.host_load1.end``,
``regime.host_cpus``).

**Format overhead**, measured through the substrate protocol (so the same code measures
``sim`` now and ``fabric`` later): :func:`measure_formats` pins single-stage, input-free
jobs of ``duration_ms`` reference work to a node in each execution format the node
offers (native, qemu-<arch>, wasm), one job at a time, and reports the *paired* factor
observed service time / observed native service time on the same node. On ``sim`` the
ground truth's factors are known and reported next to the twin's assumed ones, so the
table shows how far the twin's defaults are off (what calibration would fix).

**Controller overhead**: wall-clock plan latency (``Twin.plan``) per policy and predictor
for the example jobs on the experiment's cluster, mean with a 95% t-interval over seeds,
plus p50/p99 over all plans.

**Substrate**: ``substrate: auto`` (default) measures on the ``fabric`` when this host can (real
native, ``qemu-*-static`` and Wasm processes in cgroups), else on ``sim`` (``substrate_note`` says
why). On the fabric the table also carries the factors of this host's calibration file
(``host_calibration_factor``, what the twin plans with there), the table ``published`` compares the
measured factors with published figures and the design's "QEMU adds 25-80%" claim
(:func:`dtlab.fabric.calibrate.compare_published`, for the V3 measurement and for the host
calibration), and metric ``qemu_claim_verdict`` says whether the claim holds on this host. Fabric
runs are wall-clock, so there the ``fabric`` sizes replace the top-level ones: 3 reps of 300 ms
probes over 2 seeds (~20 probes per rep: about 2 minutes), the same plan-latency sizes.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ..model import Compute, Constraints, Job, Stage, load_job
from ..plan import Plan
from ..timing import TimingModel, exec_format
from . import regime
from ..stats import NONNEG
from .summary import CI, mean_ci, put_ci
from .result import ExperimentResult
from .substrate import auto_substrate_defaults, check_params, open_substrate, resolve
from .params import child_seed, load_cluster_param, require_choices, require_positive, resolve_path

# on the fabric (wall-clock), these sizes replace the top-level ones (see the module docstring)
FABRIC_SIZES: dict[str, Any] = {"reps": 3, "duration_ms": 300.0, "seeds": [0, 1],
                                "substrate_opts": {"host_cores": 2.0}}
DEFAULTS: dict[str, Any] = {
    **auto_substrate_defaults(FABRIC_SIZES),
    "reps": 50,
    "duration_ms": 500.0,
    "policies": ["greedy", "resilient", "cvar", "least-allocated", "random", "round-robin"],
    "predictors": ["fast", "legacy", "des"],
    "plans": 30,
    "samples": 128,
    "jobs": ["examples/job-single.yaml", "examples/job-pipeline.yaml", "examples/job-fanout.yaml"],
    "seeds": [0, 1, 2],
}
# seconds-sized parameters (tests, params/smoke/)
SMOKE: dict[str, Any] = {"substrate": "sim", "reps": 4, "plans": 2, "seeds": [0, 1], "predictors": ["fast", "legacy"]}


def format_probes(cluster, duration_ms: float = 500.0) -> list[tuple[str, str, Stage]]:
    """(node, format key, stage) for every execution format each node offers, native first.

    The stage's constraints force the format: native = the node's own arch; qemu-<a> = a
    binary for another arch a, formats [qemu]; wasm = formats [wasm].
    """
    out = []
    compute = Compute(cpu=1.0, mem_gb=0.1, duration_ms=float(duration_ms))
    for node in cluster.nodes:
        options = []
        if "native" in node.formats:
            options.append(Constraints(arch=(node.arch,), formats=("native",), nodes=(node.name,)))
        if "qemu" in node.formats:
            for arch in ("amd64", "arm64", "riscv64"):
                if arch != node.arch:
                    options.append(Constraints(arch=(arch,), formats=("qemu",), nodes=(node.name,)))
        if "wasm" in node.formats:
            options.append(Constraints(formats=("wasm",), nodes=(node.name,)))
        for c in options:
            stage = Stage(id="probe", compute=compute, constraints=c)
            fmt = exec_format(stage, node)
            if fmt is not None:
                out.append((node.name, fmt[0], stage))
    return out


def measure_formats(substrate, reps: int = 10, duration_ms: float = 500.0, tag: str = "fmt") -> pd.DataFrame:
    """Observed service time of every (node, format) probe, ``reps`` times, one job at a time.

    The hook the fabric substrate reuses for real measurements: it only needs the substrate
    protocol. Returns rows node, format, rep, service_ms (end - start of the stage's successful attempt)
    and ``energy_proxy_j`` (the substrate's CPU time of the attempt x the node's power model,
    :mod:`dtlab.energy`: measured CPU time on the fabric, simulated on sim; a model, not a measurement).
    and startup_ms (pod create -> the worker's own start on real kube nodes: sandbox, image and runtime
    start-up, kept apart from the service time; NaN where the substrate does not measure it).
    """
    from ..energy import energy_proxy

    probes = format_probes(substrate.cluster(), duration_ms)
    rows = []
    for rep in range(reps):
        for node, fmt, stage in probes:
            job = Job(name=f"{tag}-{node}-{fmt}-{rep}", stages=(stage,))
            substrate.submit(Plan(job=job.name, policy="pinned", placement={"probe": node}), job)
            substrate.advance(None)
            substrate.events()
    stages = energy_proxy(substrate.results()["stages"], substrate.cluster())
    ok = stages[stages["ok"].astype(bool) & stages["job"].str.startswith(f"{tag}-")]
    for row in ok.itertuples(index=False):
        _, rest = row.job.split("-", 1)
        rep = int(rest.rsplit("-", 1)[1])
        startup = getattr(row, "startup_ms", None)
        rows.append({"node": row.node, "format": row.format, "rep": rep, "service_ms": float(row.duration_ms),
                     "energy_proxy_j": float(row.energy_proxy_j),
                     "startup_ms": float(startup) if startup is not None and startup == startup else np.nan})
    return pd.DataFrame(rows, columns=["node", "format", "rep", "service_ms", "energy_proxy_j", "startup_ms"])


def paired_factors(measured: pd.DataFrame) -> pd.DataFrame:
    """Per node and format: mean service time over the node's native mean (nodes without native are skipped)."""
    cols = [c for c in ("service_ms", "energy_proxy_j") if c in measured.columns]
    means = measured.groupby(["node", "format"], sort=False)[cols].mean().reset_index()
    native = means[means["format"] == "native"].set_index("node")["service_ms"]
    means = means[means["node"].isin(native.index)].copy()
    means["factor"] = means["service_ms"] / means["node"].map(native)
    return means


def plan_latency(cluster, jobs: list[Job], policy: str, predictor: str, plans: int, samples: int,
                 seed: int) -> list[float]:
    """Wall-clock ms of ``plans`` Twin.plan calls on an idle twin (jobs rotated)."""
    from ..twin import Twin

    twin = Twin(cluster)
    out = []
    for i in range(plans):
        job = jobs[i % len(jobs)]
        t0 = time.perf_counter()
        twin.plan(job, policy=policy, samples=samples, seed=child_seed(seed, policy, predictor, i),
                  predictor=predictor)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def published_comparison(factors: pd.DataFrame, kernel: str) -> tuple[pd.DataFrame, str, str]:
    """(table, verdict on V3's measurement, verdict on the host calibration file) against published
    figures and the "QEMU adds 25-80%" claim. V3's per-(node, rep) paired ratios become one
    geometric-mean factor per format (the calibration file's convention) for ``kernel``."""
    from ..errors import DtlabError
    from ..fabric import calibrate

    doc: dict[str, Any] = {"factors": {}}
    for fmt, g in factors[factors["format"] != "native"].groupby("format", sort=False):
        ratios = [float(x) for x in g["factor"] if x > 0]
        if ratios:
            st = calibrate.geo_ci(ratios)
            doc["factors"][fmt] = {kernel: {k: (None if v != v else v) for k, v in st.items()}}
    tables, verdicts = [], []
    for source, measured in (("V3 substrate", doc), ("host calibration", None)):
        try:
            t = calibrate.compare_published(measured)
        except (DtlabError, OSError) as exc:
            verdicts.append(f"not compared: {exc}")
            continue
        verdicts.append(calibrate.qemu_claim_verdict(t) if not t.empty else "no QEMU measurements")
        t.insert(0, "source", source)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return table, verdicts[0], verdicts[1]


def check(params: dict | None) -> dict[str, Any]:
    """What the runner checks before the kernel starts (see dtlab.experiments.substrate.check_params)."""
    return check_params(params, DEFAULTS, "V3")[0]


def run(params: dict | None = None) -> ExperimentResult:
    from .. import policies

    p, choice = resolve(params, DEFAULTS, "V3")
    require_choices(p, "policies", [n for n in policies.names() if n != "rl_stub"])
    require_choices(p, "predictors", ("fast", "des", "legacy"))
    require_positive(p, "reps", "duration_ms", "plans", "samples")
    cluster = load_cluster_param(p["cluster"])
    jobs = [load_job(resolve_path(j, f"jobs[{i}]"), cluster) for i, j in enumerate(p["jobs"])]
    if not jobs:
        from ..errors import SpecError
        raise SpecError("jobs", "must list at least one job file")
    twin_overheads = dict(TimingModel().overheads)

    # -------------------------------------------------- format factors
    per_seed, truth, raw = [], {}, []
    for seed in p["seeds"]:
        with open_substrate(p, cluster, seed, choice) as sub:
            measured = measure_formats(sub, p["reps"], p["duration_ms"])
            raw.append(measured.assign(seed=seed))
            if hasattr(sub, "true_overheads"):
                t = sub.true_overheads()
                truth = {k: v / t.get("native", 1.0) for k, v in t.items()}
        f = paired_factors(measured)
        f.insert(0, "seed", seed)
        per_seed.append(f)
    factors = pd.concat(per_seed, ignore_index=True)
    host = dict(choice.timing.overheads) if choice.timing is not None else {}
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for (node, fmt), g in factors.groupby(["node", "format"], sort=False):
        ci = mean_ci(g["factor"])
        rows.append({"format": fmt, "node": node, "twin_factor": twin_overheads.get(fmt, np.nan),
                     "truth_factor": truth.get(fmt, np.nan), "host_calibration_factor": host.get(fmt, np.nan),
                     "observed_mean": ci.mean,
                     "ci_low": ci.low, "ci_high": ci.high, "n": ci.n,
                     "energy_proxy_j": float(g["energy_proxy_j"].mean()) if "energy_proxy_j" in g else np.nan})
    by_format = factors.groupby(["format", "seed"], sort=False)["factor"].mean().reset_index()
    for fmt, g in by_format.groupby("format", sort=False):
        put_ci(metrics, f"{fmt}.observed_factor", mean_ci(g["factor"]))
        metrics[f"{fmt}.twin_factor"] = twin_overheads.get(fmt)
        if fmt in truth:
            metrics[f"{fmt}.truth_factor"] = round(truth[fmt], 6)
        if fmt in host:
            metrics[f"{fmt}.host_calibration_factor"] = round(host[fmt], 6)
    # energy per format (issue 23): mean energy_proxy_j of one probe, over nodes, CI over seeds
    if "energy_proxy_j" in factors:
        e_seed = factors.groupby(["format", "seed"], sort=False)["energy_proxy_j"].mean().reset_index()
        for fmt, g in e_seed.groupby("format", sort=False):
            put_ci(metrics, f"{fmt}.energy_proxy_j", mean_ci(g["energy_proxy_j"], bounds=NONNEG))
    table = pd.DataFrame(rows)
    extra_tables: dict[str, pd.DataFrame] = {}
    up = pd.concat(raw, ignore_index=True).dropna(subset=["startup_ms"]) if raw else pd.DataFrame()
    if len(up):     # real kube nodes: container start-up (sandbox, image, runtime) reported apart
        start_rows = []
        for fmt, g in up.groupby("format", sort=False):
            ci = mean_ci(g.groupby("seed")["startup_ms"].mean())
            start_rows.append({"format": fmt, "startup_ms": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                               "n": int(len(g))})
            put_ci(metrics, f"{fmt}.startup_ms", ci)
        extra_tables["startup"] = pd.DataFrame(start_rows)
    if p["substrate"] == "fabric":
        published, verdict, verdict_cal = published_comparison(factors, choice.metadata.get("kernel", "mix"))
        extra_tables["published"] = published
        metrics["qemu_claim_verdict"] = verdict
        metrics["qemu_claim_verdict_host_calibration"] = verdict_cal

    # -------------------------------------------------- controller overhead
    lat_rows: list[dict[str, Any]] = []
    all_ms: dict[Any, list[float]] = {}
    for seed in p["seeds"]:
        for policy in p["policies"]:
            for predictor in p["predictors"]:
                ms = plan_latency(cluster, jobs, policy, predictor, p["plans"], p["samples"], seed)
                lat_rows.append({"policy": policy, "predictor": predictor, "seed": seed,
                                 "mean_ms": float(np.mean(ms))})
                all_ms.setdefault((policy, predictor), []).extend(ms)
    per_seed_lat = pd.DataFrame(lat_rows)
    plan_rows = []
    for (policy, predictor), g in per_seed_lat.groupby(["policy", "predictor"], sort=False):
        ci = mean_ci(g["mean_ms"])
        x = np.asarray(all_ms[(policy, predictor)])
        plan_rows.append({"policy": policy, "predictor": predictor, "mean_ms": ci.mean, "ci_low": ci.low,
                          "ci_high": ci.high, "p50_ms": float(np.percentile(x, 50)),
                          "p99_ms": float(np.percentile(x, 99)), "plans": int(x.size)})
        put_ci(metrics, f"plan_ms.{policy}.{predictor}", ci)
    metrics.update(choice.metrics())
    regime.host(metrics, "end")      # isolated stages on an otherwise idle node: the host's load is the regime
    return ExperimentResult(table=table, metrics=metrics,
                            extra={"plan_latency": pd.DataFrame(plan_rows), "plan_latency_per_seed": per_seed_lat,
                                   "format_factors_per_seed": factors, **extra_tables},
                            params=p)
