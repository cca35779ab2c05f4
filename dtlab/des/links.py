"""Link resolution shared by the engine and the predictors.

``overrides`` is the ``Snapshot.link_overrides`` shape: ``{(a, b): Link | None}`` with
zone or node names and ``None`` for a cut link (both directions stored). Node-pair
entries win over zone-pair entries, which win over the cluster spec
(``Cluster.link``), exactly as :meth:`dtlab.state.Snapshot.link` resolves them.

**Job input.** A job's ``input_mb`` comes from its origin *zone* (devices/clients
there, not a particular node), so root stages use a zone-level lookup:
``(origin_zone, dst_node)`` then ``(origin_zone, dst_zone)`` in the overrides, then
the spec's zone-pair link, then the intra-zone default when the stage runs in the
origin zone. A job with no origin zone has its input already in place (no transfer).
The transfer happens even when ``input_mb`` is 0 (the request itself crosses the link:
latency and jitter, no bulk or loss-tail term).
"""
from __future__ import annotations

from typing import Mapping

from ..errors import SpecError
from ..model import DEFAULT_INTRA_ZONE, Cluster, Link


class LinkCutError(SpecError):
    """The path between two endpoints is cut (partition)."""

    def __init__(self, src: str, dst: str):
        super().__init__("links", f"link {src}->{dst} is cut")


def resolve_link(cluster: Cluster, overrides: Mapping, src: str, dst: str) -> Link | None:
    """Link from node ``src`` to node ``dst`` (None: same node); raises LinkCutError if cut."""
    if src == dst:
        return None
    if overrides:
        by = cluster.by_name
        for key in ((src, dst), (by[src].zone, by[dst].zone)):
            if key in overrides:
                link = overrides[key]
                if link is None:
                    raise LinkCutError(*key)
                return link
    return cluster.link(src, dst)


def origin_link(cluster: Cluster, overrides: Mapping, zone: str | None, dst: str) -> Link | None:
    """Link carrying a job's input from its origin ``zone`` to node ``dst`` (None: no origin)."""
    if zone is None:
        return None
    dzone = cluster.by_name[dst].zone
    if overrides:
        for key in ((zone, dst), (zone, dzone)):
            if key in overrides:
                link = overrides[key]
                if link is None:
                    raise LinkCutError(*key)
                return link
    idx = cluster._link_index
    if (zone, dzone) in idx:
        return idx[(zone, dzone)]
    if zone == dzone:
        return Link(zone, zone, **DEFAULT_INTRA_ZONE)
    raise SpecError("metadata.origin.zone", f"no link from origin zone {zone!r} to zone {dzone!r}")


def pair_keys(cluster: Cluster, src: str, dst: str) -> tuple[tuple[str, str], ...]:
    """Override keys that can govern the path src->dst (src may be an origin zone)."""
    by = cluster.by_name
    zs = by[src].zone if src in by else src
    zd = by[dst].zone
    return ((src, dst), (zs, zd))
