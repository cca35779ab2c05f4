"""The twin's state as observed from a live cluster: one LIST of its nodes and dtlab pods.

Used by ``dtlab submit --substrate kube`` and by the operator's planner
(:func:`dtlab.operator.reconciler.twin_planner`); it lives here, below both, so the operator
does not import the command line. Zones the links file does not connect get
:data:`DEFAULT_WAN`.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

from ..errors import DtlabError
from ..model import Cluster, Link, load_cluster
from ..state import ClusterState
from .observer import Observer

DEFAULT_WAN: dict[str, Any] = {"latency_ms": 20.0, "bandwidth_mbps": 100.0}


def observed_state(kubeconfig: str, namespace: str = "dtlab", links_from: str | None = None) -> ClusterState:
    """A ClusterState built from one list of the cluster's nodes and dtlab pods (and links_from's links)."""
    spec_links = load_cluster(links_from).links if links_from else ()
    events: list[dict[str, Any]] = []
    Observer(kubeconfig, sink=events.extend, namespace=namespace).list_once()
    adds = [e for e in events if e["kind"] == "node-add"]
    if not adds:
        raise DtlabError(f"no nodes in the cluster of {kubeconfig}")
    zones = sorted({e["node"]["zone"] for e in adds})
    have = {frozenset((l.a, l.b)) for l in spec_links}
    links = list(spec_links) + [Link(a, b, **DEFAULT_WAN) for a, b in combinations(zones, 2)
                                if frozenset((a, b)) not in have]
    state = ClusterState(Cluster("observed", (), tuple(links)))
    state.apply_many(adds)
    rest = [e for e in events if e["kind"] != "node-add"]
    if rest:
        state.apply_many(rest)
    return state
