"""Allocation replay after Weng et al., "Beware of Fragmentation" (USENIX ATC 2023).

Methodology (their evaluation on these openb traces): pods are sampled from the
trace until the arrived GPU demand reaches ``inflate`` (130 %) of the cluster's
GPU capacity; they are scheduled one by one in that order and never deleted; a
pod that fits no node fails (and is not retried). At every 1 % of arrived GPU
demand (relative to capacity) we record the share of GPU and CPU capacity
allocated and the number of failed pods so far. The gap between arrived and
allocated GPU beyond ~90 % is what fragmentation costs a policy.

Sampling is with replacement, by the seeded ``numpy.random.Generator``
(the FGD simulator appends clones drawn uniformly from the trace; here the
whole sequence is drawn that way so the stream depends on the seed only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..atomic import atomic_path
from ..errors import SpecError
from .fit import ClusterArrays, Pods
from .policies import make_chooser
from .published import compare_curves, curve_deviation, published_curves
from .slo import predict_pods, slo_at_marks

COLUMNS = ["policy", "seed", "arrived_pct", "gpu_alloc_pct", "cpu_alloc_pct", "failed_pods",
           "placed_pct", "pred_p95_ms", "slo_miss_pct"]   # the last three: the twin's latency/SLO (slo.py)

def inflate(pods: pd.DataFrame, gpu_capacity_milli: int, ratio: float,
            rng: np.random.Generator) -> pd.DataFrame:
    """Pods sampled with replacement until their GPU demand reaches ``ratio`` x capacity.

    The pod whose arrival crosses the target is the last one. Names get ``-<k>`` suffixes
    (k = position in the stream) so every arrival is distinct.
    """
    if ratio <= 0:
        raise SpecError("inflate", f"must be > 0, got {ratio}")
    demand = (pods["num_gpu"].to_numpy(np.int64) * pods["gpu_milli"].to_numpy(np.int64))
    if demand.sum() == 0:
        raise SpecError("pods", "no pod requests a GPU: cannot inflate by GPU demand")
    target = ratio * gpu_capacity_milli
    mean = demand.mean()
    chosen: list[np.ndarray] = []
    total = 0.0
    while total < target:
        block = rng.integers(len(pods), size=max(64, int(1.1 * (target - total) / mean) + 1))
        cum = total + np.cumsum(demand[block])
        stop = int(np.searchsorted(cum, target, side="left"))
        if stop < len(block):
            chosen.append(block[:stop + 1])
            break
        chosen.append(block)
        total = float(cum[-1])
    idx = np.concatenate(chosen)
    out = pods.iloc[idx].reset_index(drop=True)
    out["name"] = [f"{n}-{k}" for k, n in enumerate(out["name"])]
    return out


@dataclass
class AllocationResult:
    table: pd.DataFrame        # COLUMNS, one row per arrived_pct
    placements: pd.DataFrame   # per arrived pod: name, node (-1 = failed), gpus (slot list)
    seconds: float             # wall time of the scheduling loop
    pods: pd.DataFrame | None = None   # the arrived pods (after inflation), row i = placements row i


def replay_allocation(nodes: pd.DataFrame, pods: pd.DataFrame, policy: str, seed: int = 0,
                      inflate_ratio: float | None = 1.3, step_pct: float = 1.0,
                      slo_classes: dict | None = None) -> AllocationResult:
    """Schedule ``pods`` in arrival order, no deletions.

    With ``inflate_ratio``: the seeded sample of :func:`inflate`, in sampling order. Without: the
    pods as given, sorted by ``creation_time`` when every pod has one (file order otherwise).
    The SLO columns come from :mod:`dtlab.replay.slo` (``slo_classes`` overrides its job classes).
    """
    import time

    rng = np.random.default_rng(seed)
    cluster = ClusterArrays(nodes)
    choose = make_chooser(policy, cluster, workload=pods)   # FGD's target workload: the pods before inflation
    if inflate_ratio is not None:
        pods = inflate(pods, cluster.gpu_capacity_milli, inflate_ratio, rng)
    elif "creation_time" in pods.columns and pods["creation_time"].notna().all():
        pods = pods.sort_values("creation_time", kind="stable").reset_index(drop=True)  # arrival order
    p = Pods.from_frame(pods)
    n = len(p)
    cap = cluster.gpu_capacity_milli
    if cap == 0:
        raise SpecError("nodes", "the cluster has no GPUs: arrived GPU demand is undefined")
    cum = np.cumsum(p.gpu_demand)
    last_pct = int(np.floor(100.0 * cum[-1] / cap / step_pct + 1e-9)) if n else 0
    marks = np.arange(1, last_pct + 1) * step_pct
    # pod index after which each mark is recorded: the first pod whose arrival reaches it
    mark_at = np.searchsorted(cum, marks * cap / 100.0 - 1e-9, side="left")
    node_of = np.full(n, -1, dtype=np.int64)
    slots_of: list = [()] * n
    rows = []
    failed = 0
    m = 0
    cpu, mem, ng, gm, spec = (p.cpu.tolist(), p.mem.tolist(), p.num_gpu.tolist(),
                              p.gpu_milli.tolist(), p.spec.tolist())
    t0 = time.perf_counter()
    for i in range(n):
        req = (cpu[i], mem[i], ng[i], gm[i])
        idx = np.flatnonzero(cluster.fits(*req, spec[i]))
        if len(idx):
            node, chosen = choose(cluster, idx, req, rng)
            slots_of[i] = tuple(cluster.place(node, *req, slots=chosen).tolist())
            node_of[i] = node
        else:
            failed += 1
        while m < len(marks) and mark_at[m] == i:
            rows.append((policy, seed, float(marks[m]), cluster.gpu_alloc_pct(),
                         cluster.cpu_alloc_pct(), failed))
            m += 1
    seconds = time.perf_counter() - t0
    cluster.check()
    per_pod = predict_pods(pods, node_of, cluster.models, classes=slo_classes, seed=seed)
    table = pd.concat([pd.DataFrame(rows, columns=COLUMNS[:6]),
                       slo_at_marks(per_pod, node_of >= 0, mark_at[:len(rows)])], axis=1)
    placements = pd.DataFrame({"name": p.name, "node": node_of,
                               "node_name": np.where(node_of >= 0, cluster.names[np.maximum(node_of, 0)], ""),
                               "gpus": slots_of})
    placements = pd.concat([placements, per_pod], axis=1)
    return AllocationResult(table=table, placements=placements, seconds=seconds, pods=pods)


def write_allocation(results: list[AllocationResult] | pd.DataFrame, out_dir,
                     compare_published: bool = False) -> dict[str, Path]:
    """Write ``allocation.csv`` and the figure (``allocation.pdf``/``.png``) into ``out_dir``.

    ``compare_published`` (only meaningful for the study's setting: default openb trace, inflate 1.3)
    also writes ``published_comparison.csv`` (per policy and arrived %: ours, the study's mean/min/max,
    difference, inside the band) and ``published_deviation.csv`` (one summary row per policy, see
    :func:`dtlab.replay.published.curve_deviation`), and draws the study's min-max bands in the figure.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = results if isinstance(results, pd.DataFrame) else pd.concat([r.table for r in results],
                                                                       ignore_index=True)
    csv = out / "allocation.csv"
    with atomic_path(csv) as tmp:
        table[COLUMNS].to_csv(tmp, index=False)
    paths = {"csv": csv}
    if compare_published:
        for key, frame in (("published_comparison", compare_curves(table)),
                           ("published_deviation", curve_deviation(table))):
            paths[key] = out / f"{key}.csv"
            with atomic_path(paths[key]) as tmp:
                frame.to_csv(tmp, index=False, float_format="%.4f")
    for i, p in enumerate(plot_allocation(table, out, published=compare_published)):
        paths[p.suffix.lstrip(".")] = p
    return paths


# Policies only the replay knows get colours the shared style leaves free (random and
# least-allocated keep theirs from dtlab.plots, so figures agree across experiments).
_REPLAY_STYLE = {"best-fit": ("Best-fit", "blue", "o"), "first-fit": ("First-fit", "orange", "s"),
                 "dot-product": ("Dot-product", "bluish_green", "^"), "fgd": ("FGD", "vermillion", "D")}


def plot_allocation(table: pd.DataFrame, out_dir, published: bool = False) -> list[Path]:
    """GPU allocation vs arrived GPU demand, one line per policy (mean over seeds), with y = x;
    with ``published``, each policy's published min-max band over the study's seeds, shaded."""
    with plots.paper_style():
        fig, ax = plots.figure(columns=1)
        _draw_allocation(ax, table, published_curves() if published else None)
    return plots.savefig(fig, out_dir, "allocation")


def _draw_allocation(ax, table: pd.DataFrame, published: pd.DataFrame | None = None) -> None:
    """Lines per policy; with ``published``, the study's min-max bands (shaded, one legend entry) and an
    inset zoomed on arrived >= 85 %, where the policies part and the bands are wide enough to see."""
    names = plots.order(table["policy"].unique())
    hi = float(table["arrived_pct"].max())
    ax.plot([0, 100], [0, 100], color="#999999", lw=0.8, ls=":", label="all arrived allocated")
    inset = ax.inset_axes((0.5, 0.1, 0.47, 0.45)) if published is not None else None
    ys: list[float] = []
    band_label: str | None = None
    for k, name in enumerate(names):
        sub = table[table["policy"] == name].groupby("arrived_pct")["gpu_alloc_pct"].mean()
        if name in _REPLAY_STYLE:
            label, key, marker = _REPLAY_STYLE[name]
            colour = plots.OKABE_ITO[key]
        else:
            colour, marker = plots.style_of(name, k)
            label = plots.display_name(name)
        ax.plot(sub.index, sub.values, color=colour, marker=marker, markevery=(k * 2, 10), label=label)
        band = published[published["policy"] == name] if published is not None else None
        if inset is None or band is None:
            continue
        inset.plot(sub.index, sub.values, color=colour, lw=1.0)
        ys += sub[sub.index >= 85].tolist()
        if len(band):
            first = band_label is None
            band_label = f"published (ATC'23), min-max of {int(band['seeds'].max())} seeds"
            for a in (ax, inset):
                a.fill_between(band["arrived_pct"], band["min"], band["max"], color=colour, alpha=0.35, lw=0,
                               label=band_label if a is ax and first else None)
            ys += band.loc[band["arrived_pct"] >= 85, ["min", "max"]].to_numpy().ravel().tolist()
    if inset is not None and ys:
        inset.set_xlim(85, hi)
        inset.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
        inset.tick_params(labelsize=6)
        inset.set_title("arrived >= 85 %", fontsize=6)
    ax.set_xlabel("Arrived GPU demand (% of cluster GPU capacity)")
    ax.set_ylabel("GPU allocated (% of capacity)")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left" if inset is not None else "lower right")
