"""Network namespaces for fabric nodes: one netns per node, veth pairs to a bridge, tc shaping.

Layout of a fabric with id ``ID`` (all names carry the ``dtl`` prefix so `dtlab fabric cleanup` can
sweep them): bridge ``dtb<ID>`` with the relay address ``.1``; node ``i`` lives in netns
``dtlab-<ID>-<i>`` with address ``.(i+2)`` on ``eth0``, its peer ``dtv<ID>x<i>`` on the bridge.
Bandwidth is shaped on the node's egress with an htb class per destination (matched by the
destination address, or by the relay port of that destination); latency, jitter and loss go into
a netem leaf under that class when the kernel has netem, else the user-space relay (relay.py)
adds them and the run metadata says so.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import DtlabError, SubstrateUnavailable

NETNS_PREFIX = "dtlab-"
LINK_PREFIX = "dtb", "dtv"
# Fixed listening ports live below the kernel's ephemeral range (Linux default 32768-60999) and below
# Kubernetes' NodePort range (30000-32767): an outgoing connection takes an ephemeral source port on the
# same address (the bridge IP, a gateway), so a listener inside that range could find its port held by
# a connection (they were at 40_000-42_319). The EADDRINUSE V1 runs hit had another cause, listeners
# left open by close (dtlab.fabric.relay.close_listener). tests/test_fabric_ports.py checks both.
RELAY_PORT_BASE = 24_000          # + the destination node's index
RECV_PORT = 25_000
CLONE_NEWNET = 0x40000000


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DtlabError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def missing_tools() -> str | None:
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install iproute2)"
    return None


@lru_cache(maxsize=1)
def netem_available() -> bool:
    """Whether the kernel can attach a netem qdisc (tried on the loopback of a scratch netns)."""
    ns = f"{NETNS_PREFIX}probe-{os.getpid()}"
    if sh("ip", "netns", "add", ns, check=False).returncode != 0:
        return False
    try:
        return sh("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


def _subnet(fid: str) -> str:
    h = hashlib.sha1(fid.encode()).digest()
    return f"10.{200 + h[0] % 50}.{h[1]}"


def htb_root(tc: list[str], dev: str) -> None:
    """An htb root on ``dev`` whose default class 1:1 is unshaped (10 Gbit/s); ``tc`` is the command
    prefix (``["tc"]`` or ``["tc", "-n", ns]``). Used by the fabric and the real kube nodes' bridges."""
    sh(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
    sh(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit")


def htb_shape(tc: list[str], dev: str, cid: int, matches: list[list[str]] | None, bandwidth_mbps: float,
              latency_ms: float = 0.0, jitter_ms: float = 0.0, loss: float = 0.0, netem: bool = False) -> str:
    """Class ``1:cid`` of the htb on ``dev`` at ``bandwidth_mbps`` (added with its u32 ``matches`` when
    given, else changed), with a netem leaf for latency/jitter/loss when ``netem``; returns the
    mechanism: ``htb``, ``htb+netem``, or ``htb+relay`` (the user-space relay must add the rest)."""
    rate = f"{max(bandwidth_mbps, 0.01):.3f}mbit"
    burst = f"{max(int(bandwidth_mbps * 1e6 / 8 / 250), 16 * 1024)}b"   # ~4 ms of data, >= 16 KiB
    verb = "add" if matches is not None else "change"
    sh(*tc, "class", verb, "dev", dev, "parent", "1:", "classid", f"1:{cid}",
       "htb", "rate", rate, "ceil", rate, "burst", burst)
    for match in matches or ():
        sh(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
           "u32", *match, "flowid", f"1:{cid}")
    if netem and (latency_ms > 0 or loss > 0 or jitter_ms > 0):
        args = ["delay", f"{latency_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms > 0 else []) + (["loss", f"{loss * 100}%"] if loss > 0 else [])
        sh(*tc, "qdisc", "replace", "dev", dev, "parent", f"1:{cid}", "handle", f"{cid}:", "netem", *args)
        return "htb+netem"
    return "htb+relay" if (latency_ms > 0 or loss > 0 or jitter_ms > 0) else "htb"


@dataclass
class NetFabric:
    """The namespaces, veths and bridge of one fabric; ``close()`` removes them all."""
    fid: str
    nodes: list[str]
    created: list[tuple[str, str]] = field(default_factory=list)   # (kind, name) for cleanup

    def __post_init__(self):
        why = missing_tools()
        if why:
            raise SubstrateUnavailable(why)
        self.net = _subnet(self.fid)
        self.bridge = f"dtb{self.fid}"
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.netem = netem_available()
        self._classes: dict[tuple[str, str], int] = {}
        try:
            self._build()
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------ addresses
    @property
    def bridge_ip(self) -> str:
        return f"{self.net}.1"

    def ip(self, node: str) -> str:
        return f"{self.net}.{self.index[node] + 2}"

    def ns(self, node: str) -> str:
        return f"{NETNS_PREFIX}{self.fid}-{self.index[node]}"

    def relay_port(self, dst: str) -> int:
        return RELAY_PORT_BASE + self.index[dst]

    # ------------------------------------------------------------ build / shape
    def _build(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", self.bridge))
        sh("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for node, i in self.index.items():
            ns, host_if = self.ns(node), f"dtv{self.fid}x{i}"
            sh("ip", "netns", "add", ns)
            self.created.append(("netns", ns))
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.created.append(("link", host_if))
            sh("ip", "link", "set", host_if, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(node)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            htb_root(["tc", "-n", ns], "eth0")

    def shape(self, src: str, dst: str, bandwidth_mbps: float, latency_ms: float = 0.0,
              jitter_ms: float = 0.0, loss: float = 0.0) -> str:
        """Shape traffic from ``src`` to ``dst`` (direct or via the relay); returns the mechanism used."""
        ns, j = self.ns(src), self.index[dst]
        cid = self._classes.get((src, dst))
        matches = None
        if cid is None:
            cid = 10 + j
            self._classes[(src, dst)] = cid
            matches = [["match", "ip", "dst", f"{self.ip(dst)}/32"],
                       ["match", "ip", "dst", f"{self.bridge_ip}/32", "match", "ip", "dport", str(self.relay_port(dst)), "0xffff"]]
        return htb_shape(["tc", "-n", ns], "eth0", cid, matches, bandwidth_mbps, latency_ms, jitter_ms, loss,
                         self.netem)

    def close(self) -> None:
        for kind, name in reversed(self.created):
            if kind == "netns":
                kill_netns_pids(name)
                sh("ip", "netns", "del", name, check=False)
            else:
                sh("ip", "link", "del", name, check=False)
        self.created.clear()


# ------------------------------------------------------------ entering a namespace
_libc = None


def setns(ns_name: str | None) -> None:
    """Move the *calling thread* into netns ``ns_name`` (None: the init namespace of PID 1)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    path = f"/var/run/netns/{ns_name}" if ns_name else "/proc/1/ns/net"
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DtlabError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(ns_name: str | None) -> socket.socket:
    """A TCP socket created inside ``ns_name``; it stays there whatever thread uses it later."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(ns_name)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        global _libc
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
    return s


def kill_netns_pids(ns_name: str) -> None:
    out = sh("ip", "netns", "pids", ns_name, check=False).stdout.split()
    for pid in out:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


def sweep(prefix: str = NETNS_PREFIX) -> list[str]:
    """Delete every netns named ``prefix*`` and every ``dtb*``/``dtv*`` link (cleanup sweep)."""
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            kill_netns_pids(name)
            sh("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(LINK_PREFIX) and len(name) > 3:
                sh("ip", "link", "del", name, check=False)
                removed.append(f"link {name}")
    return removed
