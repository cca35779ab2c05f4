"""The fixed listening ports of the fabric and of the real-node links stay out of the kernel's ephemeral
range and Kubernetes' NodePort range, and out of each other's way.

Why: an outgoing connection takes an ephemeral source port on the same local address as these
listeners (the fabric's bridge IP, a node's gateway), so a listener inside Linux's default 32768-60999
could find its port taken. And a closed fabric must free its ports: its listeners stayed open (the
EADDRINUSE that two long V1 fabric runs hit), see the last test."""
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


def test_close_listener_frees_the_port_of_a_socket_blocked_in_accept():
    """The fabric's data path serves each listener from a thread blocked in accept(). close() alone left
    the socket listening (the blocked call holds it): the port stayed bound for the life of the process
    and a later fabric on the same subnet failed with EADDRINUSE. close_listener wakes the accept."""
    import socket
    import threading
    import time

    from dtlab.fabric.relay import close_listener

    def listener(port: int = 0) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(4)
        return s

    s = listener()
    port = s.getsockname()[1]
    accepted: list[str] = []

    def serve() -> None:
        try:
            s.accept()
            accepted.append("connection")
        except OSError:
            accepted.append("closed")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    time.sleep(0.2)                 # the thread is in accept(): it holds the file now
    close_listener(s)
    t.join(5)
    assert not t.is_alive() and accepted == ["closed"]
    listener(port).close()          # the same port binds again at once
