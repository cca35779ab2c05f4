"""Placement policies for the trace replay: pick one node among those a pod fits.

Each policy scores only the feasible nodes (an index array from
:meth:`ClusterArrays.fits`), vectorised; ties go to the lowest node index so a
run is a function of the seed alone. Resources are normalised by the cluster's
largest node, as the FGD paper's simulator does (its ``MaxSpec``).

* ``random``: uniform over feasible nodes (the seeded generator).
* ``first-fit``: the first feasible node in node-list order.
* ``best-fit``: least weighted leftover after placement,
  ``0.5*(cpu_free-cpu)/max_cpu + 0.5*(gpu_free-gpu)/max_gpu`` (FGD's BestFit baseline).
* ``dot-product``: Tetris-style alignment of the pod's (cpu, gpu) request with the node's free
  (cpu, gpu), both normalised; the node with the SMALLEST dot product wins, as in the FGD
  simulator's DotProduct baseline (a packing rule: it favours nodes with little left where the
  pod needs much).
* ``least-allocated``: Kubernetes' default NodeResourcesLeastAllocated: the most free CPU and
  memory after placement, each as a share of the node's capacity, equally weighted.
* ``fgd``: fragmentation gradient descent, the study's own policy (:mod:`dtlab.replay.fgd`);
  it needs the target workload (the pods before inflation) to weigh fragmentation.

**GPU choice within the node** (which GPU a sharing pod gets), as the study's runs configure
each baseline (its ``generate_run_scripts.py``: ``-gpusel``; default ``best``): ``random``
takes a uniformly random GPU among those with enough free milli; ``fgd`` the GPU that adds
least fragmentation; every other policy the tightest-fitting GPU (least free milli that fits,
lowest number on ties). Whole-GPU pods always take the lowest-numbered fully free GPUs.

The twin's ``greedy`` (and resilient/cvar) policies do not apply here: they rank nodes by the
predicted latency of a multi-stage job from stage durations, node speeds and link latencies,
and the openb placement replay has none of those (no durations at placement time, no node
speeds, no network), so their score would be constant over nodes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import pandas as pd

from ..errors import SpecError
from .fit import GPU_MILLI, ClusterArrays

Policy = Callable[[ClusterArrays, np.ndarray, tuple, np.random.Generator], int]


def _random(c: ClusterArrays, idx: np.ndarray, pod: tuple, rng: np.random.Generator) -> int:
    return int(idx[rng.integers(len(idx))])


def _first_fit(c: ClusterArrays, idx: np.ndarray, pod: tuple, rng) -> int:
    return int(idx[0])


def _best_fit(c: ClusterArrays, idx: np.ndarray, pod: tuple, rng) -> int:
    cpu, mem, num_gpu, gpu_milli = pod
    left = (0.5 * (c.cpu_free[idx] - cpu) / c.max_cpu
            + 0.5 * (c.gpu_free_total[idx] - num_gpu * gpu_milli) / c.max_gpu_milli)
    return int(idx[np.argmin(left)])


def _dot_product(c: ClusterArrays, idx: np.ndarray, pod: tuple, rng) -> int:
    cpu, mem, num_gpu, gpu_milli = pod
    dot = ((cpu / c.max_cpu) * (c.cpu_free[idx] / c.max_cpu)
           + (num_gpu * gpu_milli / c.max_gpu_milli) * (c.gpu_free_total[idx] / c.max_gpu_milli))
    return int(idx[np.argmin(dot)])


def _least_allocated(c: ClusterArrays, idx: np.ndarray, pod: tuple, rng) -> int:
    cpu, mem, num_gpu, gpu_milli = pod
    score = ((c.cpu_free[idx] - cpu) / c.cpu_cap[idx] + (c.mem_free[idx] - mem) / c.mem_cap[idx])
    return int(idx[np.argmax(score)])


def random_gpu(c: ClusterArrays, node: int, pod: tuple, rng: np.random.Generator) -> np.ndarray | None:
    """A GPU-sharing pod's GPU drawn uniformly among those that fit (the study's ``-gpusel random``)."""
    cpu, mem, num_gpu, gpu_milli = pod
    if num_gpu != 1 or gpu_milli >= GPU_MILLI:
        return None                      # none, or whole GPUs: the lowest-numbered free ones
    fit = np.flatnonzero(c.gpu_free[node] >= gpu_milli)
    return np.array([fit[rng.integers(len(fit))]], dtype=np.int64)


POLICIES: dict[str, Policy] = {
    "random": _random,
    "first-fit": _first_fit,
    "best-fit": _best_fit,
    "dot-product": _dot_product,
    "least-allocated": _least_allocated,
    "fgd": None,  # built per run by make_chooser: it needs the target workload
}

Chooser = Callable[[ClusterArrays, np.ndarray, tuple, np.random.Generator], "tuple[int, np.ndarray | None]"]


def make_chooser(name: str, cluster: ClusterArrays, workload: pd.DataFrame | None = None) -> Chooser:
    """``(cluster, feasible idx, pod, rng) -> (node, GPU slots or None = tightest fit)`` for policy ``name``.

    ``workload``: the pods whose request distribution FGD measures fragmentation against
    (the trace before inflation); required for ``fgd`` only.
    """
    choose_node = get(name)
    if name == "fgd":
        if workload is None:
            raise SpecError("policy", "fgd needs the target workload (the pods before inflation)")
        from .fgd import FGD, typical_pods
        fgd = FGD(cluster, typical_pods(workload))
        return fgd.choose
    if name == "random":
        def choose_random(c, idx, pod, rng):
            node = choose_node(c, idx, pod, rng)
            return node, random_gpu(c, node, pod, rng)
        return choose_random
    return lambda c, idx, pod, rng: (choose_node(c, idx, pod, rng), None)


def get(name: str) -> Policy | None:
    try:
        return POLICIES[name]
    except KeyError:
        raise SpecError("policy", f"must be one of {sorted(POLICIES)}, got {name!r}") from None


def names() -> list[str]:
    return list(POLICIES)
