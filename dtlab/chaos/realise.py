"""Realise concrete faults on the SimPy engine (the `sim` substrate's ``inject``).

Kept here, next to the spec, so that every substrate reads the same FaultEvent and the
`sim` substrate's ``inject`` is one call: ``on_engine(engine, cluster, fault)``.
Virtual time is in ms in the engine, in seconds in scenarios.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import SubstrateUnavailable
from ..model import Cluster, spec_link
from .spec import FaultEvent, degraded_link, fault_event_from_dict


def as_event(fault: FaultEvent | Mapping[str, Any], cluster: Cluster) -> FaultEvent:
    return fault if isinstance(fault, FaultEvent) else fault_event_from_dict(fault, cluster)


def on_engine(engine: Any, cluster: Cluster, fault: FaultEvent | Mapping[str, Any],
              offset_ms: float = 0.0) -> FaultEvent:
    """Schedule ``fault`` on a dtlab.des Engine; ``offset_ms`` maps scenario time 0 to engine time.

    Partitions and degradations restore the cluster's spec link at the end (the engine's
    ``set_link`` takes the link to use, None = cut).
    """
    ev = as_event(fault, cluster)
    at = offset_ms + ev.start_s * 1000.0
    dur = None if ev.duration_s is None else ev.duration_s * 1000.0
    if ev.kind == "node-failure":
        for name in ev.nodes:
            engine.fail_node(name, at, dur)
    elif ev.kind in ("partition", "link-degradation"):
        for a, b in ev.pairs:
            new = None if ev.kind == "partition" else degraded_link(cluster, a, b, ev.link_map)
            engine.set_link(a, b, new, at)
            base = spec_link(cluster, a, b)
            if base is not None:
                engine.set_link(a, b, base, at + dur)
    elif ev.kind == "pod-kill":
        kill = getattr(engine, "kill_stage", None)
        if kill is None:
            raise SubstrateUnavailable("the SimPy engine has no kill_stage(job, stage, at_ms): pod-kill "
                                       "cannot be realised on sim")
        kill(ev.job, ev.stage, at)
    return ev
