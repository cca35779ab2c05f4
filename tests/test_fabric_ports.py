"""The fixed listening ports of the fabric and of the real-node links stay out of the kernel's ephemeral
range and Kubernetes' NodePort range, and out of each other's way.

Why: an outgoing connection takes an ephemeral source port on the same local address as these
listeners (the fabric's bridge IP, a node's gateway). With the relay at 40_000 (inside Linux's default
32768-60999) a V1 fabric run failed on its 85th substrate open with EADDRINUSE."""
from __future__ import annotations

from pathlib import Path

from dtlab.fabric import netns
from dtlab.kube import links

NODEPORT_LOW = 30_000          # kube-apiserver --service-node-port-range default: 30000-32767
FABRIC_MAX_NODES = 253         # one /24 per fabric: node i at .i+2


def ephemeral_low() -> int:
    """This host's lowest ephemeral port (Linux default 32768)."""
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    return int(path.read_text().split()[0]) if path.exists() else 32_768


def port_ranges() -> dict[str, range]:
    zone_sources = links.ZONE_INDEX_BASE + links.MAX_ZONES
    return {
        "fabric relay": range(netns.RELAY_PORT_BASE, netns.RELAY_PORT_BASE + FABRIC_MAX_NODES),
        "fabric receive": range(netns.RECV_PORT, netns.RECV_PORT + 1),
        "kube store": range(links.STORE_PORT, links.STORE_PORT + 1),
        "kube relay": range(links.RELAY_PORT_BASE, links.RELAY_PORT_BASE + zone_sources),
        "kube zone store": range(links.ZONE_STORE_PORT_BASE + links.ZONE_INDEX_BASE,
                                 links.ZONE_STORE_PORT_BASE + zone_sources),
        "kube any": range(links.ANY_PORT_BASE, links.ANY_PORT_BASE + zone_sources),
    }


def test_fixed_ports_below_ephemeral_and_nodeport_ranges():
    low = min(ephemeral_low(), NODEPORT_LOW)
    for name, r in port_ranges().items():
        assert 1024 <= r.start and r.stop <= low, f"{name} ports {r.start}-{r.stop - 1} reach {low}"


def test_fixed_port_ranges_do_not_overlap():
    items = sorted(port_ranges().items(), key=lambda kv: kv[1].start)
    for (a, ra), (b, rb) in zip(items, items[1:]):
        assert ra.stop <= rb.start, f"{a} ({ra.start}-{ra.stop - 1}) overlaps {b} ({rb.start}-{rb.stop - 1})"
