"""Energy: a per-node power model applied to CPU time (an estimate), and RAPL where it exists (a measurement).

Why a model: no node of the example clusters exists as hardware here, and this host has no power
meter, so energy can only be *estimated* from CPU time with a power model. The model is stated in
the Cluster spec (``spec.nodes[i].power``, :class:`dtlab.model.Power`) or taken from the defaults
below, chosen per arch and node class from published figures (sources in ``docs/energy.md``).

The rule, used everywhere (twin predictions, substrates, calibration, experiments):

    energy_j = cpu_seconds x busy_w_per_core(node)

``cpu_seconds`` is the CPU time of the work on that node (cores held x time); ``busy_w_per_core``
is the node's busy power divided by its cores, so a stage is charged its cores' share of the whole
node's power (idle share included: attributional, not marginal accounting). ``idle_w_per_core``
is kept in the model for the idle power of the node (``node_idle_w``) but not charged to jobs.

Names say what a number is: ``energy_j`` in a twin prediction (model x predicted CPU time),
``energy_proxy_j`` on a substrate (model x CPU time the substrate measured or, on sim/KWOK,
simulated), ``host_rapl_j`` (in every wall-clock run's host-noise record, dtlab/hostnoise.py) only
for a reading of ``/sys/class/powercap`` (:func:`rapl_status` says whether this host has it; this
one does not).
"""
from __future__ import annotations

import math
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from .model import Node, Power

if TYPE_CHECKING:   # pandas only where substrate tables are handled (dtlab plan stays light)
    import pandas as pd

# (arch, node class) -> (idle W per core, busy W per core); sources and caveats in docs/energy.md
IDLE_FRACTION_SERVER = 0.3   # assumed idle/busy ratio where a source gives only TDP (docs/energy.md)
DEFAULT_POWER: dict[tuple[str, str], tuple[float, float]] = {
    # Intel Xeon Platinum 8380: 270 W TDP, 40 cores (CPU package only)
    ("amd64", "server"): (IDLE_FRACTION_SERVER * 270.0 / 40, 270.0 / 40),
    # Ampere Altra Q80-30: 210 W TDP, 80 cores (CPU package only)
    ("arm64", "server"): (IDLE_FRACTION_SERVER * 210.0 / 80, 210.0 / 80),
    # Intel N100: 6 W TDP, 4 cores (package)
    ("amd64", "edge"): (IDLE_FRACTION_SERVER * 6.0 / 4, 6.0 / 4),
    # Raspberry Pi 4 Model B, whole board: 2.7 W idle, 6.4 W with 4 cores busy (stress --cpu 4)
    ("arm64", "edge"): (2.7 / 4, 6.4 / 4),
    # no vendor figure found for riscv64 boards: the arm64 figures of the same class (an assumption)
    ("riscv64", "edge"): (2.7 / 4, 6.4 / 4),
    ("riscv64", "server"): (IDLE_FRACTION_SERVER * 210.0 / 80, 210.0 / 80),
}
ENERGY_KEYS = ("energy_j", "energy_p95_j")   # added to every twin prediction (Twin.plan)
SERVER_MIN_CORES = 8          # a node with no stated class is a "server" from 8 cores up
RAPL_ROOT = Path("/sys/class/powercap")


def node_class(node: Node) -> str:
    """``power.node_class`` if the spec says it, else ``server`` for >= 8 cores, else ``edge``."""
    if node.power is not None and node.power.node_class:
        return node.power.node_class
    return "server" if node.cores >= SERVER_MIN_CORES else "edge"


def power_of(node: Node) -> tuple[float, float]:
    """(idle W per core, busy W per core) of ``node``: its spec's values, defaults for the rest."""
    idle, busy = DEFAULT_POWER[(node.arch, node_class(node))]
    p: Power | None = node.power
    if p is not None:
        if p.busy_w_per_core is not None:
            busy = p.busy_w_per_core
        if p.idle_w_per_core is not None:
            idle = p.idle_w_per_core
        idle = min(idle, busy)
    return idle, busy


def node_idle_w(node: Node) -> float:
    return power_of(node)[0] * node.cores


def energy_j(node: Node, cpu_ms: float) -> float:
    """Energy the model charges for ``cpu_ms`` of CPU time on ``node``."""
    return cpu_ms / 1000.0 * power_of(node)[1]


_BUSY_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def busy_w_array(nt) -> np.ndarray:
    """Busy W per core of every node of a :class:`dtlab.predict.NodeTable` (cached per cluster table)."""
    ct = getattr(nt, "static", nt)
    arr = _BUSY_CACHE.get(ct)
    if arr is None:
        arr = np.array([power_of(n)[1] for n in ct.nodes], dtype=float)
        _BUSY_CACHE[ct] = arr
    return arr


def stage_energy_matrix(nt, st) -> np.ndarray:
    """Mean energy (J) of each stage (rows, topological order) on each node (columns); inf where infeasible.

    CPU time is the stage's ``cpu`` x its service time on the node (speed and format overhead included:
    an emulated stage burns more CPU), without processor-sharing slowdown (waiting burns no CPU).
    """
    return st.cpu[:, None] * st.cpu_svc / 1000.0 * busy_w_array(nt)[None, :]


def sample_energy(snapshot, job, placement: Mapping[str, str], timing, samples: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Energy samples (J) of ``job`` placed as ``placement`` and the mean per stage.

    Same random model as the predictors: lognormal service noise per stage, and a failure
    (probability ``fail_prob`` of the node) loses a uniform share of the stage's work, which is
    burnt and then redone (the rerun costs the stage's energy again, charged at the same node).
    """
    from .predict import node_table, stage_table

    nt, st = node_table(snapshot), stage_table(snapshot, job, timing)
    cols = np.array([nt.index[placement[sid]] for sid in st.ids], dtype=np.int64)
    rows = np.arange(st.t)     # only the placed columns: a plan on 50,000 nodes costs what one on 10 does
    busy = np.array([power_of(nt.nodes[int(c)])[1] for c in cols])
    mean = st.cpu * st.cpu_svc[rows, cols] / 1000.0 * busy
    noise = timing.service_noise(rng, (samples, st.t))
    e = noise * mean[None, :]
    pf = nt.fail_prob[cols]
    if (pf > 0).any():
        fail = rng.random((samples, st.t)) < pf[None, :]
        lost = rng.random((samples, st.t)) * e
        e = e + np.where(fail, lost, 0.0)
    return e.sum(axis=1), {sid: float(m) for sid, m in zip(st.ids, mean)}


def predict(snapshot, job, placement: Mapping[str, str], timing, samples: int, seed: int) -> dict[str, float]:
    """``{"energy_j": mean, "energy_p95_j": p95}`` for a plan (the twin's prediction keys).

    Its own random stream (derived from ``seed``) so adding energy leaves the latency numbers as they were.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE1E]))
    e, _ = sample_energy(snapshot, job, placement, timing, samples, rng)
    return {"energy_j": float(e.mean()), "energy_p95_j": float(np.percentile(e, 95))}


def stage_energy_j(snapshot, job, placement: Mapping[str, str], timing) -> dict[str, float]:
    """Mean predicted energy (J) per stage of a placement."""
    _, per_stage = sample_energy(snapshot, job, placement, timing, 1, np.random.default_rng(0))
    return per_stage


# ------------------------------------------------------------------ substrates: the proxy
def cpu_ms_of_attempts(stages: pd.DataFrame, work_col: str = "service_ms") -> pd.Series:
    """CPU time (ms) of simulated stage attempts: ``cpu`` x the work done, where the work is ``work_col``
    (the attempt's work at full allocation) for a finished attempt, and at most the time it ran for one
    that failed or was cancelled (an upper bound under processor sharing). Never-started attempts: 0."""
    import pandas as pd

    if stages.empty or work_col not in stages.columns or "cpu" not in stages.columns:
        return pd.Series(np.nan, index=stages.index, dtype=float)
    work = pd.to_numeric(stages[work_col], errors="coerce")
    ran = (pd.to_numeric(stages["end_ms"], errors="coerce") - pd.to_numeric(stages["start_ms"], errors="coerce"))
    ok = stages["ok"].astype("boolean").fillna(False).astype(bool) if "ok" in stages.columns else True
    done = np.where(ok, work, np.minimum(work, ran.fillna(0.0).clip(lower=0.0)))
    return pd.Series(pd.to_numeric(stages["cpu"], errors="coerce").to_numpy() * done, index=stages.index)


def energy_proxy(stages: pd.DataFrame, cluster) -> pd.DataFrame:
    """Per stage attempt ``energy_proxy_j`` = ``cpu_ms`` (the substrate's CPU time) x the node's model.

    ``stages`` is a substrate's ``results()["stages"]`` with a ``cpu_ms`` column; rows without CPU
    time (NaN) get NaN. Returns a copy with the column added.
    """
    import pandas as pd

    out = stages.copy()
    if "cpu_ms" not in out.columns or out.empty:
        out["energy_proxy_j"] = pd.Series(dtype=float)
        return out
    busy = {n.name: power_of(n)[1] for n in cluster.nodes}
    w = out["node"].map(busy).astype(float)
    out["energy_proxy_j"] = pd.to_numeric(out["cpu_ms"], errors="coerce") / 1000.0 * w
    return out


def job_energy_proxy(stages: pd.DataFrame, cluster) -> pd.Series:
    """``energy_proxy_j`` per job (sum over its stage attempts, failed ones included: their CPU was burnt)."""
    import pandas as pd

    e = energy_proxy(stages, cluster)
    if e.empty:
        return pd.Series(dtype=float, name="energy_proxy_j")
    return e.groupby("job")["energy_proxy_j"].sum(min_count=1).rename("energy_proxy_j")


def add_job_energy(jobs: pd.DataFrame, substrate, cluster) -> pd.DataFrame:
    """``jobs`` (one row per job, column ``job``) with the substrate's ``energy_proxy_j`` per job."""
    stages = substrate.results()["stages"]
    per_job = job_energy_proxy(stages, cluster)
    out = jobs.drop(columns=["energy_proxy_j"], errors="ignore")
    merged = out.merge(per_job.reset_index(), on="job", how="left")
    merged.attrs.update(jobs.attrs)          # a merge drops attrs; the run's measured regime rides there
    return merged


def energy_stats(jobs: pd.DataFrame) -> dict[str, float]:
    """Per-run energy metric of a controller run's job table: mean ``energy_proxy_j`` of completed jobs."""
    if "energy_proxy_j" not in jobs.columns:
        return {"energy_proxy_j": math.nan}
    ok = jobs["ok"].astype(bool) if "ok" in jobs.columns else slice(None)
    e = jobs.loc[ok, "energy_proxy_j"].astype(float)
    return {"energy_proxy_j": float(e.mean()) if e.notna().any() else math.nan}


HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv64"}


def host_node(node_class_: str | None = None) -> Node:
    """This host as a Node (arch from ``platform.machine()``, cores from ``os.cpu_count()``) for the model."""
    import platform

    arch = HOST_ARCH.get(platform.machine().lower(), "amd64")
    return Node(name=platform.node() or "host", arch=arch, cores=os.cpu_count() or 1,
                power=Power(node_class=node_class_) if node_class_ else None)


def format_energy(cpu_ms: Mapping[str, list[float]], node: Node | None = None) -> dict:
    """``dtlab calibrate compute``'s energy section: per format, the CPU time of one run of the same
    work (median over runs, whole process: emulator/runtime start-up included) x ``node``'s power model,
    and its ratio to native. A proxy (model x measured CPU time); RAPL status says if a measurement exists."""
    node = node or host_node()
    idle, busy = power_of(node)
    per = {}
    for fmt, values in cpu_ms.items():
        xs = sorted(v for v in values if v is not None and v > 0)
        if not xs:
            continue
        med = float(np.median(xs))
        per[fmt] = {"cpu_ms_median": round(med, 3), "energy_proxy_j": round(med / 1000.0 * busy, 6), "n": len(xs)}
    nat = per.get("native", {}).get("energy_proxy_j")
    for fmt, v in per.items():
        v["vs_native"] = round(v["energy_proxy_j"] / nat, 4) if nat else None
    ok, why = rapl_status()
    return {"model": {"arch": node.arch, "node_class": node_class(node), "busy_w_per_core": round(busy, 4),
                      "idle_w_per_core": round(idle, 4), "source": "dtlab.energy defaults (docs/energy.md)"},
            "per_format": per, "rapl": {"available": ok, "why": why},
            "note": "energy_proxy_j = measured process CPU time x the power model: an estimate, not a measurement"}


# ------------------------------------------------------------------ RAPL: measured, where it exists
def rapl_status(root: Path = RAPL_ROOT) -> tuple[bool, str]:
    """(available, why): RAPL energy counters readable under ``/sys/class/powercap``."""
    if not root.exists():
        return False, f"{root} does not exist on this host (no RAPL driver; VMs usually hide it): no energy is measured"
    zones = sorted(root.glob("intel-rapl:*/energy_uj"))
    if not zones:
        return False, f"{root} has no intel-rapl:*/energy_uj counter: no energy is measured"
    if not all(os.access(z, os.R_OK) for z in zones):
        return False, f"RAPL counters under {root} are not readable (root only since CVE-2020-8694)"
    return True, f"RAPL package counters: {', '.join(z.parent.name for z in zones)}"


def read_rapl_uj(root: Path = RAPL_ROOT) -> dict[str, int] | None:
    """Current energy counters (microjoules) per RAPL zone, or None where there are none."""
    ok, _ = rapl_status(root)
    if not ok:
        return None
    return {z.parent.name: int(z.read_text().strip()) for z in sorted(root.glob("intel-rapl:*/energy_uj"))}


def rapl_delta_j(before: dict[str, int] | None, after: dict[str, int] | None,
                 root: Path = RAPL_ROOT) -> float:
    """Joules between two readings (counter wrap handled with ``max_energy_range_uj``); NaN without RAPL."""
    if not before or not after:
        return math.nan
    total = 0
    for zone, b in before.items():
        a = after.get(zone, b)
        if a < b:
            rng_file = root / zone / "max_energy_range_uj"
            a += int(rng_file.read_text().strip()) if rng_file.exists() else 0
        total += a - b
    return total / 1e6
