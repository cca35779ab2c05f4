"""Multi-zone link latencies from measured Internet RTTs (RIPE Atlas country-to-country pings).

Why: a synthetic "edge 40 ms, cloud 10 ms" topology hides how uneven real
distances are; zones placed in real countries inherit measured delays.

Data: ``network/ripe-atlas-country-rtt.csv.gz`` (``cty1,cty2,rtt_cnt,rtt_avg,rtt_std,
rtt_min,rtt_max``, ms). Only one triangle is stored (the pair ``(a, b)`` or ``(b, a)``)
and the matrix is symmetric; pairs ``(a, a)`` are pings inside one country.
Country codes are ISO 3166 alpha-2 (``NA`` is Namibia, so CSV NA-parsing is off).

Conversion, documented once: one-way ``latency_ms = rtt / 2`` (paths assumed
symmetric, as the Link model's ``directed: false`` does), with ``rtt`` the mean
(``stat="avg"``, default) or the minimum (``stat="min"``: propagation floor). ``rtt_std``
mixes the spread across probe locations inside two countries with time variation, so it
is NOT packet jitter: ``jitter=True`` uses ``rtt_std / 2`` as an upper bound, off by
default. Loss is not measured by this data set: it is a parameter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..model import Cluster, Link, Node
from .readers import DATA_DIR, Col, read_table

RIPE_RTT = DATA_DIR / "network" / "ripe-atlas-country-rtt.csv.gz"


def read_ripe_rtt(path=RIPE_RTT) -> pd.DataFrame:
    """RIPE Atlas country RTTs: ``cty1, cty2, rtt_cnt, rtt_avg, rtt_std, rtt_min, rtt_max`` (ms)."""
    return read_table(path, [
        Col("cty1", "str"), Col("cty2", "str"), Col("rtt_cnt", ge=1),
        Col("rtt_avg", "float", ge=0), Col("rtt_std", "float", ge=0, empty="0"),
        Col("rtt_min", "float", ge=0), Col("rtt_max", "float", ge=0),
    ], "RIPE Atlas country RTT")


def latency_matrix(countries: Sequence[str], path=RIPE_RTT, stat: str = "avg",
                   table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One-way latency in ms between ``countries`` (symmetric DataFrame, index = columns = codes).

    The diagonal is the in-country value when measured, else NaN. A missing pair raises.
    """
    if stat not in ("avg", "min"):
        raise SpecError("stat", f"must be avg or min, got {stat!r}")
    countries = [str(c) for c in countries]
    if len(set(countries)) != len(countries):
        raise SpecError("countries", f"duplicate country in {countries}")
    df = read_ripe_rtt(path) if table is None else table
    pairs = _pair_index(df, f"rtt_{stat}")
    n = len(countries)
    m = np.full((n, n), np.nan)
    for i, a in enumerate(countries):
        for j, b in enumerate(countries[i:], start=i):
            rtt = pairs.get((a, b), pairs.get((b, a)))
            if rtt is None:
                if i == j:
                    continue
                raise SpecError("countries", f"no RTT measured between {a!r} and {b!r} in {path}")
            m[i, j] = m[j, i] = rtt / 2.0
    return pd.DataFrame(m, index=countries, columns=countries)


def _pair_index(df: pd.DataFrame, column: str) -> dict[tuple[str, str], float]:
    return dict(zip(zip(df["cty1"], df["cty2"]), df[column].astype(float)))


def topology_from_rtt(countries: Sequence[str], path=None, *, stat: str = "avg",
                      bandwidth_mbps: float = 1000.0, loss: float = 0.0, jitter: bool = False,
                      nodes: Sequence[Node] | Mapping[str, Sequence[Node]] | None = None,
                      name: str = "rtt-topology") -> tuple[Link, ...] | Cluster:
    """Zone links (one zone per country, named by its code) with latencies from measured RTTs.

    Without ``nodes``: the ``Link`` specs between every pair of zones (``latency_ms = RTT/2``,
    ``jitter_ms = rtt_std/2`` if ``jitter``). With ``nodes``: a ``Cluster`` whose zones are the
    countries; ``nodes`` is either a list of templates copied into every zone (names get
    ``-<country>``) or a mapping country -> nodes for that zone (names kept, zone set).
    """
    path = RIPE_RTT if path is None else Path(path)
    if len(countries) < 1:
        raise SpecError("countries", "name at least one country")
    df = read_ripe_rtt(path)
    lat = latency_matrix(countries, path, stat, table=df)
    std = _pair_index(df, "rtt_std")
    links = []
    for i, a in enumerate(countries):
        for b in countries[i + 1:]:
            s = std.get((a, b), std.get((b, a), 0.0))
            links.append(Link(a=a, b=b, latency_ms=float(lat.loc[a, b]), bandwidth_mbps=float(bandwidth_mbps),
                              loss=float(loss), jitter_ms=float(s) / 2.0 if jitter else 0.0))
    if nodes is None:
        return tuple(links)
    from dataclasses import replace

    zone_nodes: list[Node] = []
    if isinstance(nodes, Mapping):
        unknown = sorted(set(nodes) - set(countries))
        if unknown:
            raise SpecError(f"nodes.{unknown[0]}", f"not one of the countries {list(countries)}")
        for c in countries:
            zone_nodes += [replace(n, zone=c) for n in nodes.get(c, ())]
    else:
        for c in countries:
            zone_nodes += [replace(n, name=f"{n.name}-{c.lower()}", zone=c) for n in nodes]
    if not zone_nodes:
        raise SpecError("nodes", "no node in any zone")
    names = [n.name for n in zone_nodes]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise SpecError("nodes", f"duplicate node name {dup[0]!r}")
    zones = {n.zone for n in zone_nodes}
    kept = tuple(l for l in links if l.a in zones and l.b in zones)
    return Cluster(name=name, nodes=tuple(zone_nodes), links=kept)
