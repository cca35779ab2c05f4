"""Latency/SLO columns for the placement replay: the twin's predicted latency of each placed pod's job class.

Why: the ATC'23 study reports allocation only; its users ask for latency and SLOs next to it.
The openb traces carry requests, not run times, so each pod gets a **job class** from its GPU
request (the study's own split: CPU-only, GPU-sharing, 1/2/4/8 whole GPUs, other) and each class
a one-stage reference job with a duration and an SLO (:data:`JOB_CLASSES`, an assumption of this
module, stated; pass ``classes=`` for your own). The twin (:class:`dtlab.Twin`, ``fast``
predictor, its lognormal service noise) predicts that job on a twin node standing for the openb
node the pod got, with a speed from the node's GPU model for GPU classes (:data:`GPU_SPEED`: peak FP32 throughput relative to V100, from the vendors' datasheets;
the anonymised models G2/G3 have none and count as 1.0). Requests always fit in this replay, so
co-runners never slow a pod down and the prediction depends on (class, speed) only; what moves the SLO columns between policies is which GPU
models pods land on and, mostly, how many pods find no node at all (an unplaced pod misses).

Per pod: ``job_class``, ``pred_p95_ms`` and ``miss_prob`` (the twin's deadline-miss probability;
1 for an unplaced pod). Per arrived-percent row: ``placed_pct`` (pods placed / arrived),
``pred_p95_ms`` (mean predicted p95 of the pods placed so far) and ``slo_miss_pct`` (expected
share of arrived pods that miss their SLO).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..model import Cluster, Compute, Job, Node, Stage

#: class -> (reference duration on a speed-1.0 device in ms, SLO in ms). An assumption, not data.
JOB_CLASSES: dict[str, tuple[float, float]] = {
    "cpu": (1000.0, 2000.0),
    "gpu-share": (2000.0, 4000.0),
    "gpu-1": (4000.0, 8000.0),
    "gpu-2": (6000.0, 12000.0),
    "gpu-4": (8000.0, 16000.0),
    "gpu-8": (10000.0, 20000.0),
    "gpu-other": (8000.0, 16000.0),
}

#: Peak FP32 TFLOPS relative to V100 (15.7): T4 8.1, P100 9.3, A10 31.2 (NVIDIA datasheets).
GPU_SPEED: dict[str, float] = {"V100M16": 1.0, "V100M32": 1.0, "P100": 9.3 / 15.7, "T4": 8.1 / 15.7,
                               "A10": 31.2 / 15.7}

SLO_COLUMNS = ["placed_pct", "pred_p95_ms", "slo_miss_pct"]


def job_class(num_gpu: np.ndarray, gpu_milli: np.ndarray) -> np.ndarray:
    """The study's GPU-request classes (its GpuNumTypeList), per pod."""
    num_gpu, gpu_milli = np.asarray(num_gpu), np.asarray(gpu_milli)
    out = np.full(len(num_gpu), "gpu-other", dtype=object)
    out[num_gpu == 0] = "cpu"
    out[(num_gpu == 1) & (gpu_milli < 1000)] = "gpu-share"
    out[(num_gpu == 1) & (gpu_milli >= 1000)] = "gpu-1"
    for k in (2, 4, 8):
        out[num_gpu == k] = f"gpu-{k}"
    return out


def predict_pods(pods: pd.DataFrame, node_of: np.ndarray, node_models: np.ndarray,
                 classes: dict[str, tuple[float, float]] | None = None, samples: int = 256,
                 seed: int = 0) -> pd.DataFrame:
    """Per pod: job_class, pred_p95_ms, miss_prob (one twin prediction per distinct class/CPU/speed)."""
    from ..twin import Twin

    classes = dict(JOB_CLASSES if classes is None else classes)
    cls = job_class(pods["num_gpu"].to_numpy(), pods["gpu_milli"].to_numpy())
    placed = node_of >= 0
    model = np.where(placed, node_models[np.maximum(node_of, 0)], "")
    speed = np.array([1.0 if c == "cpu" else GPU_SPEED.get(str(m), 1.0) for c, m in zip(cls, model)])
    p95 = np.full(len(pods), np.nan)
    miss = np.ones(len(pods))
    for c in np.unique(cls[placed]):
        duration, slo = classes[c]
        job = Job(name=c, deadline_ms=slo,
                  stages=(Stage(id="main", compute=Compute(cpu=1.0, mem_gb=0.0, duration_ms=duration)),))
        for v in np.unique(speed[placed & (cls == c)]):
            node = Node(name="n", arch="amd64", cores=1, speed=float(v), mem_gb=1.0)
            pred = Twin(Cluster(name="replay", nodes=(node,))).predict(job, {"main": "n"}, samples=samples,
                                                                       seed=seed)
            rows = placed & (cls == c) & (speed == v)
            p95[rows] = pred["p95_ms"]
            miss[rows] = pred["deadline_miss_prob"]
    return pd.DataFrame({"job_class": cls, "pred_p95_ms": p95, "miss_prob": miss})


def slo_at_marks(per_pod: pd.DataFrame, placed: np.ndarray, mark_at: np.ndarray) -> pd.DataFrame:
    """The SLO columns after pod ``mark_at[k]`` (inclusive) for every mark k."""
    n = np.arange(1, len(placed) + 1)
    cum_placed = np.cumsum(placed)
    p95 = np.where(placed, per_pod["pred_p95_ms"].fillna(0.0).to_numpy(), 0.0)
    cum_p95 = np.cumsum(p95)
    cum_miss = np.cumsum(per_pod["miss_prob"].to_numpy())
    i = np.asarray(mark_at, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "placed_pct": 100.0 * cum_placed[i] / n[i],
            "pred_p95_ms": np.where(cum_placed[i] > 0, cum_p95[i] / np.maximum(cum_placed[i], 1), np.nan),
            "slo_miss_pct": 100.0 * cum_miss[i] / n[i],
        })


__all__ = ["GPU_SPEED", "JOB_CLASSES", "SLO_COLUMNS", "job_class", "predict_pods", "slo_at_marks"]
