"""Online recalibration: learn how much slower (or faster) each node really is than the twin thinks.

The twin predicts a stage's service time as ``duration_ms * overhead[format] / speed``.
When the world drifts (nodes age, a noisy neighbour arrives, jobs grow), that estimate
goes stale and so does every plan built on it. From the substrate's own stage-start/
stage-end events this estimator keeps, per node, an exponentially weighted mean of

    ratio = observed service time / (twin's nominal service time * contention slowdown)

and, when it moved by more than ``min_change``, corrects the twin with a ``node-add``
event carrying the node's spec with ``speed = spec speed / ratio``. Going through a
state event (not by poking the predictor) keeps the correction visible in snapshots,
atomic with the batch it came from, and identical on every substrate.

The ratio is taken against the *spec* speed, not the corrected one, so corrections do
not compound; the contention slowdown (demand over capacity at stage start, from the
twin's own state) is divided out so that a busy node is not mistaken for a slow one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..model import Job, Node
from ..plan import Plan
from ..timing import TimingModel


@dataclass
class _Expect:
    duration_ms: float
    cpu: float
    stage: Any


class OnlineCalibrator:
    """EWMA of observed/predicted service time per node; emits node-add speed corrections."""

    def __init__(self, twin, alpha: float = 0.2, min_change: float = 0.02, min_samples: int = 3,
                 timing: TimingModel | None = None, log_space: bool = True, contention: bool = True):
        if not 0 < alpha <= 1:
            from ..errors import SpecError
            raise SpecError("ewma_alpha", f"must be in (0, 1], got {alpha!r}")
        self.twin = twin
        self.alpha = float(alpha)
        self.min_change = float(min_change)
        self.min_samples = int(min_samples)
        self.log_space = bool(log_space)
        self.contention = bool(contention)
        self.timing = timing or getattr(twin, "timing", None) or TimingModel()
        snap = twin.state.snapshot()
        self.spec: dict[str, Node] = {n.name: n for n in snap.cluster.nodes}
        self.ratio: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.applied: dict[str, float] = {n: 1.0 for n in self.spec}
        self._expect: dict[tuple[str, str], _Expect] = {}
        self._started: dict[tuple[str, str], tuple[float, float]] = {}   # (ts_s, slowdown)
        self.history: list[dict[str, Any]] = []

    def expect(self, job: Job, plan: Plan) -> None:
        for stage in job.stages:
            self._expect[(job.name, stage.id)] = _Expect(stage.compute.duration_ms, stage.compute.cpu, stage)

    def observe(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        touched: set[str] = set()
        for e in events:
            kind = e.get("kind")
            if kind == "stage-start":
                key = (e.get("job"), e.get("stage"))
                if key in self._expect and e.get("ts") is not None and e.get("node") in self.spec:
                    self._started[key] = (float(e["ts"]), self._slowdown(e["node"], self._expect[key].cpu))
            elif kind == "stage-end":
                key = (e.get("job"), e.get("stage"))
                start = self._started.pop(key, None)
                exp = self._expect.get(key)
                node = e.get("node")
                if start is None or exp is None or not e.get("ok", True) or node not in self.spec \
                        or e.get("ts") is None:
                    continue
                self._expect.pop(key, None)
                observed = (float(e["ts"]) - start[0]) * 1000.0
                fmt = self.timing.exec_format(exp.stage, self.spec[node])
                if fmt is None or observed <= 0:
                    continue
                nominal = exp.duration_ms * fmt[1] / self.spec[node].speed * (start[1] if self.contention else 1.0)
                r = observed / nominal
                if not math.isfinite(r):
                    continue
                old = self.ratio.get(node)
                if old is None:
                    self.ratio[node] = r
                elif self.log_space:   # geometric EWMA: one heavy-tailed stage cannot swing the estimate
                    self.ratio[node] = math.exp((1 - self.alpha) * math.log(old) + self.alpha * math.log(r))
                else:
                    self.ratio[node] = (1 - self.alpha) * old + self.alpha * r
                self.count[node] = self.count.get(node, 0) + 1
                touched.add(node)
        out = []
        for node in sorted(touched):
            r = self.ratio[node]
            if self.count[node] >= self.min_samples and abs(r / self.applied[node] - 1) > self.min_change:
                self.applied[node] = r
                spec = self.spec[node]
                out.append({"kind": "node-add", "node": _node_dict(replace(spec, speed=spec.speed / r))})
                self.history.append({"node": node, "ratio": r, "speed": spec.speed / r,
                                     "ts": max((e.get("ts") or 0.0) for e in events)})
        return out

    def _slowdown(self, node: str, cpu: float) -> float:
        """Processor-sharing slowdown a new stage of ``cpu`` cores meets on ``node`` per the twin's state."""
        status = self.twin.state.snapshot().nodes.get(node)
        if status is None:
            return 1.0
        capacity = status.node.cores * (1.0 - status.cpu_util)
        demand = status.running_cpu + cpu
        return max(1.0, demand / capacity) if capacity > 0 else 1.0


def _node_dict(n: Node) -> dict[str, Any]:
    return {"name": n.name, "arch": n.arch, "cores": n.cores, "speed": n.speed, "mem_gb": n.mem_gb,
            "formats": list(n.formats), "zone": n.zone, "labels": dict(n.labels), "fail_prob": n.fail_prob}
