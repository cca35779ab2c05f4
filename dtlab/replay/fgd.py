"""FGD, fragmentation gradient descent (Weng et al., "Beware of Fragmentation", USENIX ATC 2023).

The definitions, as the paper states them and its artefact simulator computes them
(hkust-adsl/kubernetes-scheduler-simulator, ``pkg/utils/frag.go`` and
``pkg/simulator/plugin/fgd_score.go``; this is an independent numpy implementation):

* **Target workload** ("typical pods"): the distribution of pod request shapes
  ``m = (milli-CPU, milli-GPU per GPU, GPU count, GPU model constraint)`` in the workload
  before inflation, CPU-only pods included; shapes are taken most popular first until they
  cover ``popularity`` (95 %) of the pods, and their frequencies ``p_m`` renormalised
  (the artefact's run configuration: ``isInvolvedCpuPods: true``, ``podPopularityThreshold: 95``;
  see :data:`POPULARITY` for why the default here keeps every shape).
* **Fragmentation of node n for shape m**, ``f_n(m)``, in milli-GPU:

  - n can host m (at least ``count_m`` GPUs each with ``>= milli_m`` free, enough CPU left,
    and its GPU model allowed by m): the free GPU milli on the GPUs with less than
    ``milli_m`` free (they cannot serve m), the rest of the node is usable;
  - otherwise (m lacks CPU or GPU there, the GPU model is not allowed, or m needs no GPU):
    ALL the node's free GPU milli counts as fragmented for m.

  ``F_n = sum_m p_m f_n(m)``: the expected fragmentation the next arrival sees on n.
* **FGD placement**: among the nodes the pod fits, pick the one whose ``F_n`` grows least
  when the pod is placed there (the "gradient"); for a GPU-sharing pod (one GPU, < 1000 milli)
  each fitting GPU of the node is tried and the best one is both the node's score and the GPU
  the pod gets; whole-GPU pods take the node's lowest-numbered fully free GPUs.

Differences from the artefact, stated: its score is ``int(sigmoid(dF/1000) * 100)`` and the
Kubernetes framework breaks ties among equal integer scores at random; here the continuous
``dF`` is compared and ties go to the lowest node index (as in every policy of this package),
so a run depends on the seed only through the inflation sample. (Tried, with the 95 % shape cut: the
integer score with random ties ended at 90.8 % on seed 0, far below the published curve, so it is
not used.)

Cost: ``dF`` of a (node, pod shape) pair is cached and dropped when that node's free
resources change (checked against a snapshot, so releases in the timed replay are seen too);
each pod then computes ``dF`` only for the few feasible nodes that changed since that shape
was last seen (openb default at 1.3x: ~9 s for ~10k pods on this 2-core host, loaded).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .fit import GPU_MILLI, ClusterArrays

# Shapes kept, by popularity. The artefact's run configuration says 95 %; with that cut the rare
# multi-GPU shapes (8-GPU pods are 0.5 % of openb) drop out, nothing protects whole 8-GPU nodes
# and here FGD then trails best-fit by up to 0.7 points at 89-94 % arrived (seed 0, measured);
# keeping every shape (1.0) it matches best-fit up to 93 % (within 0.02 points, seeds 0-1) and leads
# from 94 % on, ending at 94.9 % / 94.7 % (published, seeds 42-51: 95.4 %).
POPULARITY = 1.0


@dataclass(frozen=True)
class TypicalPods:
    """Request shapes of the target workload and their frequencies (sum 1)."""
    cpu: np.ndarray      # (M,) milli-CPU
    milli: np.ndarray    # (M,) milli-GPU per GPU (0 for CPU-only)
    count: np.ndarray    # (M,) GPUs
    spec: np.ndarray     # (M,) object: "" any model, else "A|B"
    p: np.ndarray        # (M,) frequency

    def __len__(self) -> int:
        return len(self.p)


def typical_pods(pods: pd.DataFrame, popularity: float = POPULARITY) -> TypicalPods:
    """The shapes of ``pods`` most popular first, until they cover ``popularity`` of the pods."""
    num = pods["num_gpu"].to_numpy(np.int64)
    milli = np.where(num > 0, pods["gpu_milli"].to_numpy(np.int64), 0)
    spec = (pods["gpu_spec"].fillna("").astype(str) if "gpu_spec" in pods.columns
            else pd.Series([""] * len(pods))).to_numpy(dtype=object)
    spec = np.where(num > 0, spec, "")
    shapes = pd.DataFrame({"cpu": pods["cpu_milli"].to_numpy(np.int64), "milli": milli, "count": num, "spec": spec})
    counts = shapes.value_counts(sort=False).reset_index(name="n")
    # most popular first; equal counts in a fixed order (the artefact's order there is a Go map's)
    counts = counts.sort_values(["n", "cpu", "milli", "count", "spec"], ascending=[False, True, True, True, True],
                                kind="stable").reset_index(drop=True)
    total = float(counts["n"].sum())
    cum = np.cumsum(counts["n"].to_numpy()) / total
    keep = int(np.searchsorted(cum, popularity - 1e-12, side="left")) + 1
    top = counts.iloc[:keep]
    p = top["n"].to_numpy(float)
    return TypicalPods(cpu=top["cpu"].to_numpy(np.int64), milli=top["milli"].to_numpy(np.int64),
                       count=top["count"].to_numpy(np.int64), spec=top["spec"].to_numpy(dtype=object),
                       p=p / p.sum())


class FGD:
    """The FGD chooser for one cluster and one target workload: :meth:`choose` -> (node, GPU slots)."""

    def __init__(self, cluster: ClusterArrays, typical: TypicalPods):
        self.t = typical
        n = len(cluster)
        self._shapes: dict[tuple, int] = {}
        self._delta = np.full((n, 16), np.nan)
        self._slot = np.zeros((n, 16), np.int64)
        self._snap_cpu = cluster.cpu_free.copy()
        self._snap_gpu = cluster.gpu_free.copy()
        m = len(typical)
        # access[n, m]: node n's GPU model is allowed for shape m (a node without GPUs: never)
        access = np.ones((len(cluster), m), dtype=bool)
        for j in range(m):
            mask = cluster.model_mask(typical.spec[j]) if typical.spec[j] else None
            if mask is not None:
                access[:, j] = mask
        access &= (cluster.gpu_count > 0)[:, None]
        self.access = access
        self.gpu_shape = typical.count > 0

    # ------------------------------------------------------------------ the measure
    def _stats(self, free: np.ndarray):
        """Per row of ``free`` (rows, G; -1 = no GPU): K (rows, M) GPUs with >= milli_m free, P (rows, M)
        free milli on GPUs with < milli_m free, T (rows,) free milli in all."""
        f = free[:, :, None]
        mil = self.t.milli[None, None, :]
        ok = f >= mil
        K = ok.sum(axis=1)
        P = (np.maximum(f, 0) * (~ok & (f >= 0))).sum(axis=1)
        T = np.maximum(free, 0).sum(axis=1)
        return K, P, T

    def _frag(self, K, P, T, C, access) -> np.ndarray:
        """F = sum_m p_m f(m) for arrays of node states (leading shapes broadcast)."""
        host = (K >= self.t.count) & (C[..., None] >= self.t.cpu) & access & self.gpu_shape
        f = np.where(host, P, T[..., None])
        return f @ self.t.p

    def fragmentation(self, cluster: ClusterArrays, nodes: np.ndarray | None = None) -> np.ndarray:
        """``F_n`` of the given nodes (all by default), in milli-GPU."""
        idx = np.arange(len(cluster)) if nodes is None else np.asarray(nodes)
        K, P, T = self._stats(cluster.gpu_free[idx])
        return self._frag(K, P, T, cluster.cpu_free[idx], self.access[idx])

    # ------------------------------------------------------------------ placement
    def choose(self, c: ClusterArrays, idx: np.ndarray, pod: tuple, rng=None) -> tuple[int, np.ndarray]:
        """The node (and GPUs) among ``idx`` (where the pod fits) whose fragmentation grows least."""
        cpu, mem, num, milli = pod
        col = self._column((int(cpu), int(num), int(milli)))
        self._invalidate_changed(c, idx)
        todo = idx[np.isnan(self._delta[idx, col])]
        if len(todo):
            d, g = self._deltas(c, todo, int(cpu), int(num), int(milli))
            self._delta[todo, col] = d
            self._slot[todo, col] = g
        delta = self._delta[idx, col]
        # continuous dF; equal (to 1e-6 milli) -> the lowest node index
        node = int(idx[np.argmin(np.round(delta, 6))])
        if num == 0:
            return node, np.empty(0, np.int64)
        if num == 1 and milli < GPU_MILLI:
            return node, np.array([self._slot[node, col]], dtype=np.int64)
        if milli >= GPU_MILLI:
            return node, np.flatnonzero(c.gpu_free[node] >= GPU_MILLI)[:num].astype(np.int64)
        return node, c.choose_gpus(node, num, milli)

    # per (node, pod shape) cache of dF and the sharing pod's GPU: a node's entries are dropped
    # when its free resources change (placement or release), checked against a snapshot
    def _column(self, shape: tuple) -> int:
        col = self._shapes.get(shape)
        if col is None:
            col = self._shapes[shape] = len(self._shapes)
            if col >= self._delta.shape[1]:
                grow = self._delta.shape[1]
                self._delta = np.hstack([self._delta, np.full((len(self._delta), grow), np.nan)])
                self._slot = np.hstack([self._slot, np.zeros((len(self._slot), grow), np.int64)])
        return col

    def _invalidate_changed(self, c: ClusterArrays, idx: np.ndarray) -> None:
        changed = idx[(c.cpu_free[idx] != self._snap_cpu[idx]) | (c.gpu_free[idx] != self._snap_gpu[idx]).any(axis=1)]
        if len(changed):
            self._delta[changed] = np.nan
            self._snap_cpu[changed] = c.cpu_free[changed]
            self._snap_gpu[changed] = c.gpu_free[changed]

    def _deltas(self, c: ClusterArrays, nodes: np.ndarray, cpu: int, num: int, milli: int):
        """dF of placing the pod on each of ``nodes`` (+ the GPU a sharing pod would take)."""
        free = c.gpu_free[nodes]
        cpu_left = c.cpu_free[nodes]
        acc = self.access[nodes]
        K, P, T = self._stats(free)
        before = self._frag(K, P, T, cpu_left, acc)
        cpu_after = cpu_left - cpu
        slot = np.zeros(len(nodes), np.int64)
        if num == 0:                                 # CPU-only: only the CPU left changes
            return self._frag(K, P, T, cpu_after, acc) - before, slot
        if num == 1 and milli < GPU_MILLI:           # GPU sharing: try every GPU that fits
            fits = free >= milli
            mil = self.t.milli[None, None, :]
            vv, nv = free[:, :, None], (free - milli)[:, :, None]
            K2 = K[:, None, :] - (vv >= mil) + (nv >= mil)       # (nodes, G, M)
            P2 = (P[:, None, :] - np.where((vv < mil) & (vv >= 0), vv, 0)
                  + np.where(nv < mil, np.maximum(nv, 0), 0))
            T2 = np.broadcast_to((T - milli)[:, None], fits.shape)
            after = self._frag(K2, P2, T2, np.broadcast_to(cpu_after[:, None], fits.shape), acc[:, None, :])
            delta = np.where(fits, np.round(after - before[:, None], 6), np.inf)
            slot = np.argmin(delta, axis=1)                       # lowest-numbered best GPU
            return delta[np.arange(len(nodes)), slot], slot
        if milli >= GPU_MILLI:                       # whole GPUs: fully free ones -> 0
            K2 = K - num * self.gpu_shape
            return self._frag(K2, P, T - num * GPU_MILLI, cpu_after, acc) - before, slot
        # several partial GPUs (not in the openb traces): the tightest-fitting GPUs, scored exactly
        out = np.empty(len(nodes))
        for r, node in enumerate(nodes):
            new = free[r].copy()
            new[c.choose_gpus(int(node), num, milli)] -= milli
            K2, P2, T2 = self._stats(new[None, :])
            out[r] = (self._frag(K2, P2, T2, cpu_after[r:r + 1], acc[r:r + 1]) - before[r])[0]
        return out, slot
