"""What-if evaluation: the pure computation behind the dashboard.

``evaluate(cluster, job, policies, knobs)`` rebuilds the cluster and timing
model with the knobs applied and plans the job with every policy using the
``fast`` predictor. It has no widgets and no state, so notebooks, tests and the
dashboard all call the same function.

Knobs (all optional):

- ``arrival_rate_per_s``: jobs of this kind arriving per second (Poisson). Above 0 the
  latency distribution of every policy comes from a short ``Twin.simulate`` of
  ``sim_jobs`` (default 30) such arrivals with that policy placing each one, so queueing
  behind earlier jobs shows; ``apply_knobs`` still reports the first-order background
  utilisation ``rate * core-seconds per job / total core-speed`` (capped at 0.95).
- ``scenario`` (a ``chaos/scenarios`` name or a FaultScenario path) and ``scenario_at_s``:
  the world as it is at that time of the scenario (the twin's state after every fault
  event up to then: failed nodes down, links cut or degraded); a simulation starts from it.
- ``nodes``: ``{node: {"down": bool, "cordon": bool, "speed": float}}`` per-node overrides
  (a cordoned node takes no new work; in a simulation, which starts empty, that is the
  same as down).
- ``deadline_ms``, ``predictor`` (fast/des/legacy), ``samples``: override the job's
  deadline and the prediction settings.
- ``calibration``: a calibration file (``dtlab calibrate compute``); its measured format
  overheads apply first, explicit ``overheads`` on top.
- ``fail_prob``: probability that any node fails during the job (overrides the spec).
- ``latency_scale``: multiplies every link's latency.
- ``links``: ``{"zoneA|zoneB": {"latency_ms": .., "loss": ..}}`` per zone pair.
- ``overheads``: execution-format overhead factors (``qemu-arm64``, ``wasm``, ...).

Every outcome's ``prediction`` carries the twin's energy (``energy_j``, ``energy_p95_j``: the power
model x predicted CPU time of the plan, ``dtlab/energy.py``); with an arrival rate the latency keys come
from the simulation and the energy from the plan, since waiting in a queue burns no CPU in that model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .energy import ENERGY_KEYS
from .errors import SpecError
from .model import Cluster, Job, Link
from .timing import MAX_BACKGROUND, TimingModel


def pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def zone_pairs(cluster: Cluster) -> list[str]:
    """Zone pairs with a listed link, as ``a|b`` keys (the sliders' names)."""
    zones = set(cluster.zones)
    return sorted({pair_key(l.a, l.b) for l in cluster.links if l.a in zones and l.b in zones})


def apply_knobs(cluster: Cluster, job: Job, knobs: Mapping[str, Any]) -> tuple[Cluster, TimingModel, dict[str, float]]:
    """The cluster, timing model and per-node background utilisation the knobs describe."""
    scale = float(knobs.get("latency_scale", 1.0))
    per_pair = knobs.get("links") or {}
    links = []
    for link in cluster.links:
        changes = dict(per_pair.get(pair_key(link.a, link.b), {}))
        latency = changes.pop("latency_ms", link.latency_ms) * scale
        links.append(replace(link, latency_ms=latency, **changes))
    nodes = cluster.nodes
    if knobs.get("fail_prob") is not None:
        nodes = tuple(replace(n, fail_prob=float(knobs["fail_prob"])) for n in nodes)
    per_node = knobs.get("nodes") or {}
    for name in per_node:
        cluster.node(name)                      # unknown names are errors, not silently ignored
    nodes = tuple(replace(n, speed=float(per_node[n.name]["speed"]))
                  if (per_node.get(n.name) or {}).get("speed") is not None else n for n in nodes)
    out = replace(cluster, nodes=tuple(nodes), links=tuple(links))
    overheads: dict[str, float] = {}
    if knobs.get("calibration"):
        from .fabric.calibrate import load_overheads
        overheads.update(load_overheads(knobs["calibration"]))
    overheads.update(knobs.get("overheads") or {})
    timing = TimingModel().with_overheads(overheads)
    rate = float(knobs.get("arrival_rate_per_s", 0.0))
    core_seconds = sum(s.compute.duration_ms * s.compute.cpu for s in job.stages) / 1000.0
    capacity = sum(n.cores * n.speed for n in nodes)
    util = min(MAX_BACKGROUND, rate * core_seconds / capacity) if capacity else 0.0
    return out, timing, {n.name: util for n in nodes}


def scenario_events(cluster: Cluster, scenario: str | None, at_s: float) -> list[dict[str, Any]]:
    """State events of ``scenario`` up to (and including) ``at_s``: the world at that moment."""
    if not scenario:
        return []
    from .chaos.spec import expand, load_scenario, scenario_path, timeline
    events = timeline(expand(load_scenario(scenario_path(scenario)), cluster))
    return [e for e in events if e["ts"] <= at_s and e["kind"] != "chaos"]


def node_events(knobs: Mapping[str, Any], cordon_as_down: bool = False) -> list[dict[str, Any]]:
    out = []
    for name, o in (knobs.get("nodes") or {}).items():
        if o.get("down") or (cordon_as_down and o.get("cordon")):
            out.append({"kind": "node-down", "node": name, "ts": 0.0})
        elif o.get("cordon"):
            out.append({"kind": "node-cordon", "node": name, "ts": 0.0})
    return out


@dataclass
class PolicyOutcome:
    policy: str
    prediction: dict[str, float]
    placement: dict[str, str]
    shadow: dict[str, str]
    latencies_ms: np.ndarray
    error: str | None = None


def evaluate(cluster: Cluster, job: Job, policies: Sequence[str], knobs: Mapping[str, Any] | None = None,
             samples: int = 256, seed: int = 0) -> dict[str, PolicyOutcome]:
    """Plan ``job`` with each policy under ``knobs``; same knobs and seed give the same numbers."""
    from .model import Arrivals, Workload
    from .plan import summarize
    from .predict import sample_latencies
    from .twin import Twin

    knobs = knobs or {}
    if knobs.get("deadline_ms"):
        job = replace(job, deadline_ms=float(knobs["deadline_ms"]))
    predictor = knobs.get("predictor") or "fast"
    samples = int(knobs.get("samples") or samples)
    what_cluster, timing, background = apply_knobs(cluster, job, knobs)
    world = scenario_events(what_cluster, knobs.get("scenario"), float(knobs.get("scenario_at_s", 0.0)))
    twin = Twin(what_cluster, timing=timing)
    twin.state.apply_many(world + node_events(knobs))
    snap = twin.state.snapshot()
    rate = float(knobs.get("arrival_rate_per_s", 0.0))
    sim_twin = None
    if rate > 0:   # queueing: a short simulation of the arrivals, from the same world (cordoned = down)
        sim_twin = Twin(what_cluster, timing=timing)
        sim_twin.state.apply_many(world + node_events(knobs, cordon_as_down=True))
        workload = Workload(name="what-if", arrivals=Arrivals("poisson", rate), template=job,
                            count=int(knobs.get("sim_jobs", 30)))
    out: dict[str, PolicyOutcome] = {}
    for policy in policies:
        try:
            plan = twin.plan(job, policy=policy, samples=samples, seed=seed, predictor=predictor)
            if sim_twin is not None:
                df = sim_twin.simulate(workload, policy=policy, seed=seed)
                lat = df["latency_ms"].to_numpy(float)
                if "lost" in df:
                    lat = np.where(df["lost"].astype(bool), np.inf, lat)
                lat = np.where(np.isnan(lat), np.inf, lat)
                # latency from the simulation; energy stays the plan's (the model burns no CPU while waiting)
                prediction = {**summarize(lat, job.deadline_ms),
                              **{k: plan.prediction[k] for k in ENERGY_KEYS if k in plan.prediction}}
            else:
                lat = sample_latencies(snap, job, plan.placement, plan.shadow or None, predictor=predictor,
                                       samples=samples, rng=np.random.default_rng(seed), timing=timing)
                prediction = dict(plan.prediction)
        except Exception as exc:  # one infeasible policy must not blank the others
            out[policy] = PolicyOutcome(policy, {}, {}, {}, np.array([]), error=str(exc))
            continue
        out[policy] = PolicyOutcome(policy, prediction, dict(plan.placement), dict(plan.shadow),
                                    np.sort(np.asarray(lat, dtype=float)))
    return out


def save_params(experiment: str, path: str | Path, *, cluster_path: str | Path, job_path: str | Path,
                knobs: Mapping[str, Any], policies: Sequence[str], seed: int = 0) -> Path:
    """Write params for V1 or V4 (and the Workload file they name) reproducing this what-if setting.

    V1: the arrival rate, the policies, predictor and samples, on ``sim``. V4: the scenario (the whole
    of it: V4 runs scenarios from their start, not a moment of one), the arrival rate, predictor and
    samples. Knobs an experiment has no parameter for (link sliders, per-node overrides, overheads)
    are listed in the file's header comment as not carried. Checked by the experiment's own
    parameter check before it is written.
    """
    import yaml

    experiment = experiment.upper()
    if experiment not in ("V1", "V4"):
        raise SpecError("experiment", f"must be V1 or V4, got {experiment!r}")
    path = Path(path)
    rate = float(knobs.get("arrival_rate_per_s") or 0.0) or 0.5
    jobs = int(knobs.get("sim_jobs", 30))
    workload_path = path.with_name(path.stem + ".workload.yaml")
    workload = {"apiVersion": "dtlab/v1", "kind": "Workload", "metadata": {"name": f"whatif-{experiment.lower()}"},
                "arrivals": {"process": "poisson", "rate_per_s": rate},
                "jobs": {"template": str(Path(job_path).resolve()), "count": jobs}}
    common = {"cluster": str(Path(cluster_path).resolve()), "workload": str(workload_path.resolve()),
              "predictor": knobs.get("predictor") or "fast", "samples": int(knobs.get("samples") or 128)}
    if experiment == "V1":
        params = {**common, "substrate": "sim", "jobs": jobs, "rates_per_s": [rate],
                  "policies": list(policies), "seeds": [int(seed)]}
        from .experiments.v1 import check
    else:
        params = {**common, "jobs": jobs, "rate_per_s": rate,
                  "scenarios": [knobs.get("scenario") or "none"], "seeds": [int(seed)]}
        from .experiments.v4 import check
    dropped = [k for k in ("latency_scale", "links", "nodes", "overheads", "calibration", "fail_prob",
                           "deadline_ms", "scenario_at_s") if knobs.get(k) not in (None, {}, 1.0, 0.0, "")]
    if experiment == "V1" and knobs.get("scenario") not in (None, "", "none"):
        dropped.insert(0, "scenario")          # V1 runs without faults: say so rather than drop it silently
    path.parent.mkdir(parents=True, exist_ok=True)
    # the workload file first: the experiment's check loads every spec file its params name
    existed = workload_path.exists()
    workload_path.write_text(yaml.safe_dump(workload, sort_keys=False))
    try:
        check(params)
    except BaseException:
        if not existed:
            workload_path.unlink(missing_ok=True)
        raise
    header = (f"# {experiment} params saved from the what-if dashboard.\n"
              + (f"# Not carried (no {experiment} parameter): {', '.join(dropped)}\n" if dropped else ""))
    path.write_text(header + yaml.safe_dump(params, sort_keys=False))
    return path


def link_for(cluster: Cluster, a: str, b: str) -> Link | None:
    for link in cluster.links:
        if pair_key(link.a, link.b) == pair_key(a, b):
            return link
    return None
