"""Cluster resource arrays and the vectorised fit check every placement replay shares.

Why arrays and not Node objects: the openb replay places ~11k pods on 1,523 nodes
per policy; a per-node Python loop per pod is ~17M iterations. Here one pod's
fit over all nodes is a handful of numpy ops on (nodes,) and (nodes, max GPUs)
arrays: CPU, memory, "at least ``num_gpu`` GPUs each with ``gpu_milli`` free"
(GPU share: a sharing pod takes part of ONE GPU) and the GPU model allowed by
the pod's ``gpu_spec``.

Units follow the openb trace: CPU in milli-cores, memory in MiB, GPU in milli
(1000 = one whole GPU). Missing GPU slots of a node hold ``-1`` free, so no
request (``gpu_milli >= 1``) ever fits them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import SpecError

GPU_MILLI = 1000


@dataclass(frozen=True)
class Pods:
    """Pod requests as arrays (row i = pod i in arrival order)."""
    name: np.ndarray          # object
    cpu: np.ndarray           # milli-cores
    mem: np.ndarray           # MiB
    num_gpu: np.ndarray
    gpu_milli: np.ndarray     # per GPU
    spec: np.ndarray          # object: "" (any model) or "A|B"

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Pods":
        spec = df["gpu_spec"] if "gpu_spec" in df.columns else pd.Series([""] * len(df))
        return cls(name=df["name"].to_numpy(dtype=object),
                   cpu=df["cpu_milli"].to_numpy(np.int64), mem=df["memory_mib"].to_numpy(np.int64),
                   num_gpu=df["num_gpu"].to_numpy(np.int64), gpu_milli=df["gpu_milli"].to_numpy(np.int64),
                   spec=spec.fillna("").to_numpy(dtype=object))

    def __len__(self) -> int:
        return len(self.cpu)

    @property
    def gpu_demand(self) -> np.ndarray:
        """GPU milli each pod asks for in total."""
        return self.num_gpu * self.gpu_milli


class ClusterArrays:
    """Capacities and free resources of every node; :meth:`place` and :meth:`release` keep them exact."""

    def __init__(self, nodes: pd.DataFrame):
        self.names = nodes["name"].to_numpy(dtype=object)
        self.cpu_cap = nodes["cpu_milli"].to_numpy(np.int64).copy()
        self.mem_cap = nodes["memory_mib"].to_numpy(np.int64).copy()
        self.gpu_count = nodes["gpu"].to_numpy(np.int64).copy()
        models = nodes["model"].fillna("").to_numpy(dtype=object) if "model" in nodes else np.full(len(nodes), "", object)
        self.models = models
        n, g = len(nodes), int(self.gpu_count.max(initial=0))
        self.max_gpus = max(g, 1)
        slot = np.arange(self.max_gpus)[None, :]
        self.gpu_exists = slot < self.gpu_count[:, None]
        self._spec_masks: dict[str, np.ndarray | None] = {}
        self.reset()
        # normalisers for the scores: the largest node of the cluster (as the FGD simulator's MaxSpec)
        self.max_cpu = float(self.cpu_cap.max(initial=1))
        self.max_mem = float(self.mem_cap.max(initial=1))
        self.max_gpu_milli = float(max(self.gpu_count.max(initial=0), 1) * GPU_MILLI)
        if n == 0:
            raise SpecError("nodes", "the cluster has no nodes")

    def reset(self) -> None:
        self.cpu_free = self.cpu_cap.copy()
        self.mem_free = self.mem_cap.copy()
        self.gpu_free = np.where(self.gpu_exists, GPU_MILLI, -1).astype(np.int64)
        self.gpu_free_total = self.gpu_count * GPU_MILLI

    def __len__(self) -> int:
        return len(self.cpu_cap)

    # ------------------------------------------------------------------ fit
    def model_mask(self, spec: str) -> np.ndarray | None:
        """Nodes whose GPU model is in ``spec`` ("A|B"); None when any model will do."""
        if spec in self._spec_masks:
            return self._spec_masks[spec]
        allowed = [s.strip() for s in str(spec).split("|") if s.strip()]
        mask = np.isin(self.models, allowed) if allowed else None
        self._spec_masks[spec] = mask
        return mask

    def fits(self, cpu: int, mem: int, num_gpu: int, gpu_milli: int, spec: str = "") -> np.ndarray:
        """Boolean mask over nodes: the pod fits there now (CPU, memory, GPU count/share, model)."""
        ok = (self.cpu_free >= cpu) & (self.mem_free >= mem)
        if num_gpu > 0:
            if gpu_milli >= GPU_MILLI:  # whole GPUs: count fully free ones (cheap row sum)
                ok &= (self.gpu_free >= gpu_milli).sum(axis=1) >= num_gpu
            elif num_gpu == 1:
                ok &= (self.gpu_free >= gpu_milli).any(axis=1)
            else:
                ok &= (self.gpu_free >= gpu_milli).sum(axis=1) >= num_gpu
            mask = self.model_mask(spec)
            if mask is not None:
                ok &= mask
        return ok

    # ------------------------------------------------------------------ bookkeeping
    def choose_gpus(self, node: int, num_gpu: int, gpu_milli: int) -> np.ndarray:
        """GPU slots a pod takes on ``node``: the tightest-fitting ones (least free milli that fits).

        Tightest fit keeps whole GPUs free for later multi-GPU pods; ties go to the lower slot.
        """
        if num_gpu == 0:
            return np.empty(0, np.int64)
        free = self.gpu_free[node]
        key = np.where(free >= gpu_milli, free, np.iinfo(np.int64).max)
        slots = np.argsort(key, kind="stable")[:num_gpu]
        if (free[slots] < gpu_milli).any():
            raise SpecError("placement", f"pod does not fit the GPUs of node {self.names[node]!r}")
        return slots

    def place(self, node: int, cpu: int, mem: int, num_gpu: int, gpu_milli: int,
              slots: np.ndarray | None = None) -> np.ndarray:
        """Claim a pod's resources on ``node``; returns the GPU slots used (for :meth:`release`).

        ``slots``: the GPUs a policy chose (checked); None = :meth:`choose_gpus` (tightest fit).
        """
        if self.cpu_free[node] < cpu or self.mem_free[node] < mem:
            raise SpecError("placement", f"pod does not fit node {self.names[node]!r}")
        if slots is None:
            slots = self.choose_gpus(node, num_gpu, gpu_milli)
        else:
            slots = np.asarray(slots, dtype=np.int64)
            if (len(slots) != num_gpu or len(set(slots.tolist())) != len(slots)
                    or (num_gpu and (self.gpu_free[node, slots] < gpu_milli).any())):
                raise SpecError("placement", f"GPU slots {slots.tolist()} do not fit the pod on node "
                                             f"{self.names[node]!r}")
        self.cpu_free[node] -= cpu
        self.mem_free[node] -= mem
        if num_gpu:
            self.gpu_free[node, slots] -= gpu_milli
            self.gpu_free_total[node] -= num_gpu * gpu_milli
        return slots

    def release(self, node: int, cpu: int, mem: int, gpu_milli: int, slots: np.ndarray) -> None:
        self.cpu_free[node] += cpu
        self.mem_free[node] += mem
        if len(slots):
            self.gpu_free[node, slots] += gpu_milli
            self.gpu_free_total[node] += len(slots) * gpu_milli

    # ------------------------------------------------------------------ summary
    @property
    def gpu_capacity_milli(self) -> int:
        return int(self.gpu_count.sum() * GPU_MILLI)

    def gpu_alloc_pct(self) -> float:
        cap = self.gpu_capacity_milli
        return 100.0 * (cap - float(self.gpu_free_total.sum())) / cap if cap else 0.0

    def cpu_alloc_pct(self) -> float:
        cap = float(self.cpu_cap.sum())
        return 100.0 * (cap - float(self.cpu_free.sum())) / cap

    def check(self) -> None:
        """Raise if any node is over capacity (the replay's invariant; tests call it too)."""
        if (self.cpu_free < 0).any() or (self.mem_free < 0).any():
            raise AssertionError("cpu or memory over-allocated")
        used = self.gpu_free[self.gpu_exists]
        if (used < 0).any() or (used > GPU_MILLI).any():
            raise AssertionError("a GPU is over-allocated")
        if (self.gpu_free[~self.gpu_exists] != -1).any():
            raise AssertionError("a missing GPU slot was allocated")
