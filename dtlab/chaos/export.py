"""Chaos Mesh manifests from a FaultScenario, so a real cluster runs the same faults.

Mapping (Chaos Mesh v1alpha1 CRDs, commit 608b61e7; the tests check every manifest against
their openAPIV3Schema and, on the local control plane, by server-side dry-run):

* ``node-failure`` -> PodChaos ``pod-failure`` of every pod in the workload namespace on the
  selected nodes (``selector.nodes`` for names, ``selector.nodeSelectors`` for labels/zone:
  ``topology.kubernetes.io/zone``). Chaos Mesh has no Kubernetes-node fail-stop CRD in this
  set, so a node failure is approximated by failing all of its pods for ``duration``.
* ``partition`` -> NetworkChaos ``partition``, ``direction: both``, side A as ``selector``,
  side B as ``target``.
* ``link-degradation`` -> NetworkChaos ``delay`` / ``loss`` / ``bandwidth``, or ``netem`` when
  several change (delay + loss + rate), ``direction: both``. Spec values are what the link
  *is* during the fault, so with a cluster the export adds only the difference to the
  cluster's link (latency - base latency; loss such that 1-(1-base)(1-x) = loss).
* ``pod-kill`` -> PodChaos ``pod-kill`` of pods labelled ``dtlab.io/job`` (``dtlab.io/stage``).
* a permanent ``node-failure`` (no ``duration_s``) -> a standalone PodChaos without ``duration``
  (lasts until deleted); in the Workflow it is held until ``PERMANENT_HOLD_S`` after the
  scenario's end, since a workflow node needs a deadline.

Timing lives in one Workflow: a Parallel entry with one Serial branch per fault occurrence
(``Suspend`` for ``at_s``, then the chaos template whose ``deadline`` is ``duration_s``); a
``sequence`` is a Serial of its steps with Suspend gaps; repeats are unrolled. Standalone
chaos objects (one per fault or sequence step, applied immediately, timing in annotations)
are written too, for running one fault by hand.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..errors import SpecError
from ..model import Cluster, spec_link
from ..spec_reader import join
from .spec import (JOB_LABEL, STAGE_LABEL, ZONE_LABEL, Fault, FaultScenario, NodeSelector, Side,
                   occurrences)

API_VERSION = "chaos-mesh.org/v1alpha1"
POD_KILL_DEADLINE = "1s"     # a pod-kill is instantaneous; the workflow node only needs to exist briefly
PERMANENT_HOLD_S = 60.0      # a permanent node failure is held this long past the scenario's last fault
DEFAULT_NAMESPACE = "dtlab"


def go_duration(seconds: float) -> str:
    """A Go duration string (``90s``, ``1.5s``, ``250ms``) matching the CRD patterns."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{_plain(seconds * 1000)}ms"
    return f"{_plain(seconds)}s"


def _plain(x: float) -> str:
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return text or "0"


class _Builder:
    def __init__(self, scenario: FaultScenario, cluster: Cluster | None, namespace: str):
        self.scenario = scenario
        self.cluster = cluster
        self.namespace = namespace

    # ------------------------------------------------------------ selectors
    def _node_selector(self, sel: NodeSelector, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"namespaces": [self.namespace]}
        labels = dict(sel.labels or ())
        if sel.zones is not None:
            if len(sel.zones) > 1:
                if self.cluster is None:
                    raise SpecError(join(path, "zone"), "several zones need a cluster to export "
                                                        "(Chaos Mesh nodeSelectors take one value per key)")
                names = [n.name for n in self.cluster.nodes if sel.matches(n)]
                if not names:
                    raise SpecError(path, f"selects no node of cluster {self.cluster.name!r}")
                out["nodes"] = names
                return out
            labels[ZONE_LABEL] = sel.zones[0]
        if sel.names is not None:
            out["nodes"] = list(sel.names)
        if labels:
            out["nodeSelectors"] = labels
        return out

    def _side(self, side: Side, path: str) -> dict[str, Any]:
        if side.selector is not None:
            return self._node_selector(side.selector, path)
        ref = side.ref
        if self.cluster is not None:
            if ref in self.cluster.zones:
                return {"namespaces": [self.namespace], "nodeSelectors": {ZONE_LABEL: ref}}
            if ref in self.cluster.by_name:
                return {"namespaces": [self.namespace], "nodes": [ref]}
            raise SpecError(path, f"{ref!r} is neither a zone nor a node of cluster {self.cluster.name!r}")
        # Without a cluster a bare name is read as a zone: scenarios name zones far more often.
        return {"namespaces": [self.namespace], "nodeSelectors": {ZONE_LABEL: ref}}

    # ------------------------------------------------------------ one fault -> (Kind, spec)
    def chaos(self, fault: Fault) -> tuple[str, dict[str, Any]]:
        if fault.kind == "node-failure":
            return "PodChaos", {"action": "pod-failure", "mode": "all",
                                "selector": self._node_selector(fault.selector, join(fault.path, "selector"))}
        if fault.kind == "pod-kill":
            labels = {JOB_LABEL: fault.job, **({STAGE_LABEL: fault.stage} if fault.stage else {})}
            return "PodChaos", {"action": "pod-kill", "mode": "all", "gracePeriod": 0,
                                "selector": {"namespaces": [self.namespace], "labelSelectors": labels}}
        a = self._side(fault.between[0], join(join(fault.path, "between"), 0))
        b = self._side(fault.between[1], join(join(fault.path, "between"), 1))
        spec: dict[str, Any] = {"mode": "all", "selector": a, "direction": "both",
                                "target": {"mode": "all", "selector": b}}
        if fault.kind == "partition":
            spec["action"] = "partition"
            return "NetworkChaos", spec
        change = self._link_delta(fault)
        parts = {}
        if "latency_ms" in change or "jitter_ms" in change:
            delay = {"latency": go_duration(change.get("latency_ms", 0.0) / 1000.0)}
            if change.get("jitter_ms"):
                delay["jitter"] = go_duration(change["jitter_ms"] / 1000.0)
            parts["delay"] = delay
        if "loss" in change:
            parts["loss"] = {"loss": _plain(change["loss"] * 100.0)}
        if "bandwidth_mbps" in change:
            parts["bandwidth"] = {"rate": f"{_plain(change['bandwidth_mbps'])}mbps"}
        if len(parts) == 1:
            (action, body), = parts.items()
            if action == "bandwidth":
                # tc tbf needs a queue limit and a bucket; ~1 s of traffic and 10 kB are tc's usual picks
                body = {**body, "limit": max(1, int(change["bandwidth_mbps"] * 125_000)), "buffer": 10_000}
            spec.update({"action": action, action: body})
        else:
            spec["action"] = "netem"
            for key, body in parts.items():
                spec["rate" if key == "bandwidth" else key] = body
        return "NetworkChaos", spec

    def _link_delta(self, fault: Fault) -> dict[str, float]:
        change = fault.link_map
        if self.cluster is None or any(s.ref is None for s in fault.between):
            return change
        base = spec_link(self.cluster, fault.between[0].ref, fault.between[1].ref)
        if base is None:
            return change
        out = dict(change)
        if "latency_ms" in out:
            out["latency_ms"] = max(0.0, out["latency_ms"] - base.latency_ms)
        if "loss" in out:
            out["loss"] = max(0.0, 1 - (1 - out["loss"]) / (1 - base.loss))
        return out

    # ------------------------------------------------------------ objects
    def meta(self, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "dtlab", "dtlab.io/scenario": self.scenario.name},
                "annotations": annotations}

    def standalone(self) -> list[dict[str, Any]]:
        out = []
        for i, fault in enumerate(self.scenario.faults):
            steps = fault.steps if fault.kind == "sequence" else (fault,)
            for j, step in enumerate(steps):
                kind, spec = self.chaos(step)
                if step.duration_s is not None:
                    spec["duration"] = go_duration(step.duration_s)
                suffix = f"f{i}" + (f"s{j}" if fault.kind == "sequence" else "")
                notes = {"dtlab.io/fault-path": step.path, "dtlab.io/at-s": _plain(fault.at_s)}
                if fault.repeat:
                    notes["dtlab.io/repeat"] = f"every {_plain(fault.repeat.every_s)}s x{fault.repeat.times}"
                out.append({"apiVersion": API_VERSION, "kind": kind,
                            "metadata": self.meta(f"{self.scenario.name}-{suffix}-{step.kind}", notes),
                            "spec": spec})
        return out

    def workflow(self) -> dict[str, Any]:
        templates: list[dict[str, Any]] = []
        branches: list[str] = []

        def chaos_template(name: str, fault: Fault, start: float) -> str:
            kind, spec = self.chaos(fault)
            if fault.kind == "pod-kill":
                deadline = POD_KILL_DEADLINE
            elif fault.duration_s is None:   # permanent: hold the failure until the whole scenario is over
                deadline = go_duration(max(self.scenario.end_s - start, 0.0) + PERMANENT_HOLD_S)
            else:
                deadline = go_duration(fault.duration_s)
            key = "networkChaos" if kind == "NetworkChaos" else "podChaos"
            templates.append({"name": name, "templateType": kind, "deadline": deadline, key: spec})
            return name

        def suspend(name: str, seconds: float) -> str:
            templates.append({"name": name, "templateType": "Suspend", "deadline": go_duration(seconds)})
            return name

        for k, (start, fault, origin) in enumerate(occurrences(self.scenario)):
            base = f"o{k}"
            children = [suspend(f"{base}-wait", start)] if start > 0 else []
            if fault.kind == "sequence":
                steps = []
                for j, step in enumerate(fault.steps):
                    if j and fault.gap_s > 0:
                        steps.append(suspend(f"{base}-gap{j}", fault.gap_s))
                    steps.append(chaos_template(f"{base}-s{j}-{step.kind}", step, start))
                templates.append({"name": f"{base}-sequence", "templateType": "Serial",
                                  "deadline": go_duration(fault.length_s + 60.0), "children": steps})
                children.append(f"{base}-sequence")
            else:
                children.append(chaos_template(f"{base}-{fault.kind}", fault, start))
            templates.append({"name": base, "templateType": "Serial",
                              "deadline": go_duration(start + fault.length_s + 60.0), "children": children})
            branches.append(base)
        entry = {"name": "entry", "templateType": "Parallel",
                 "deadline": go_duration(self.scenario.end_s + 120.0), "children": branches}
        notes = {"dtlab.io/description": self.scenario.description} if self.scenario.description else {}
        return {"apiVersion": API_VERSION, "kind": "Workflow",
                "metadata": self.meta(self.scenario.name, notes),
                "spec": {"entry": "entry", "templates": [entry] + templates}}


def to_manifests(scenario: FaultScenario, cluster: Cluster | None = None,
                 namespace: str = DEFAULT_NAMESPACE) -> dict[str, list[dict[str, Any]]]:
    """``{"workflow": [Workflow], "standalone": [NetworkChaos | PodChaos, ...]}``."""
    b = _Builder(scenario, cluster, namespace)
    return {"workflow": [b.workflow()], "standalone": b.standalone()}


def write(scenario: FaultScenario, out_dir: str | Path, cluster: Cluster | None = None,
          namespace: str = DEFAULT_NAMESPACE) -> list[Path]:
    """Write ``<out>/<name>/workflow.yaml`` and ``<out>/<name>/standalone/<object>.yaml``."""
    manifests = to_manifests(scenario, cluster, namespace)
    root = Path(out_dir) / scenario.name
    (root / "standalone").mkdir(parents=True, exist_ok=True)
    written = []
    for obj in manifests["workflow"]:
        written.append(_dump(root / "workflow.yaml", obj))
    for obj in manifests["standalone"]:
        written.append(_dump(root / "standalone" / f"{obj['metadata']['name']}.yaml", obj))
    return written


def _dump(path: Path, obj: dict[str, Any]) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))
