"""Shaped links between real kube nodes: stage data moves between pods over the pod network.

Each real node ``i`` of the local plane (:mod:`dtlab.kube.realnodes`) has its CNI bridge with the
gateway ``<net>.<i>.1``. While a :class:`PodLinks` is open (the kube substrate opens one when the
cluster has real nodes of the local plane; ``dtlab calibrate network --substrate kube`` too):

* a **node store** listens on ``<net>.<i>.1:STORE_PORT``: it holds what stages on node ``i`` produced
  (the data is synthetic, as on the fabric: a request names the bytes, the store streams them);
* a stage on node ``j`` whose predecessor ran on node ``i != j`` fetches the predecessor's
  ``output_mb`` from node ``i`` *inside its own container*, before its work (the worker's ``--fetch``,
  ``images/worker/launcher.c``), so the transfer is part of the stage's measured time, as the twin
  counts it;
* the link ``i -> j`` (the cluster's zone-to-zone latency/bandwidth/loss/jitter, ``Cluster.link``)
  is shaped on the egress of node ``j``'s bridge, towards its pods, with the fabric's own tools: an
  htb class per source node (:func:`dtlab.fabric.netns.htb_shape`) for bandwidth, and for latency,
  jitter and loss a netem leaf where the kernel has netem, else (this host) the fabric's user-space
  delay line (:func:`dtlab.fabric.relay.delay_line`, :func:`dtlab.fabric.relay.chunk_release`): the
  pod then fetches through a relay on its own gateway, port ``RELAY_PORT_BASE + i``, which pulls from
  node ``i``'s store and releases the chunks as the link says;
* a job's ``input_mb`` comes from its **origin zone** (the twin's zone -> node link, intra-zone
  default included, as :mod:`dtlab.des.engine` counts it): each zone of the cluster is a data source
  with its own index (``ZONE_INDEX_BASE + k``) whose bytes a root stage on node ``j`` reads through
  the link ``zone -> j``, shaped like a node's (its own htb class; the relay on ``j``'s gateway at
  ``RELAY_PORT_BASE + index``, or under netem a zone store on ``j``'s gateway); a fault between
  zones changes these links with the node pairs' (:meth:`PodLinks.set_link`);
* :meth:`PodLinks.set_link` changes a link while jobs run (chaos ``link-degradation``; ``None`` =
  ``partition``: the relay holds the data until the link is restored, netem drops everything).

A predecessor on a **KWOK node** ran no container and produced no bytes: its successor on a real node
fetches the predecessor's ``output_mb`` from the KWOK node's *zone* source (above) over the zone -> node
link, which is the link the twin charges between the two nodes, so the transfer is measured and
charged; only the bytes' store is a stand-in (``KubeSubstrate._fetch_args``).

Pods the **real kube-scheduler** places (policy ``kube-scheduler``) have no node when they are made,
so their ``--fetch`` values cannot name the destination's relay. They name the source's *any-node
endpoint* instead (:meth:`PodLinks.fetch_arg_any`): one listener per source (a real node's on its own
gateway, an origin zone's on the first real node's gateway) at ``ANY_PORT_BASE + index``, which works
out the destination node from the fetching pod's address (each real node has its own /24 pod CIDR)
and then serves the bytes through that ``src -> dst`` link exactly as above (the link's htb class on
the destination's bridge also matches this endpoint's replies; the delay line, or netem). A pod that
lands on its source's own node reads the bytes unshaped over its bridge (milliseconds; the twin
counts nothing there); one that lands on a KWOK node runs no container and reads nothing.

Not covered: an origin zone with no link to the stage's node (nothing is read, as the twin has no
path either).

One process per plane holds the data path (fixed ports on the gateways): a second kube substrate on
the same plane meanwhile runs unshaped and says so (a warning, ``metadata()["links"]``).

``close`` stops the servers and removes the qdiscs it added; the bridges belong to the plane
(``dtlab cluster down`` deletes them).
"""
from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import DtlabError
from ..fabric import netns
from ..fabric.relay import CHUNK, HEADER, close_listener, recv_exact, delay_line, wait_up
from ..model import Cluster, Link, spec_link

# below the ephemeral and NodePort ranges, past the fabric's (see dtlab.fabric.netns.RELAY_PORT_BASE)
STORE_PORT = 25_200
RELAY_PORT_BASE = 25_300          # + the source's index (real nodes 1..250, origin zones ZONE_INDEX_BASE + k)
ZONE_INDEX_BASE = 256             # origin zones' source indices (256..319): past any real node's
MAX_ZONES = 64
ZONE_STORE_PORT_BASE = 25_400     # + a zone's index (25_656..): a zone store on each gateway (netem mode)
ANY_PORT_BASE = 26_000            # + a source's index: its data for a pod on a node not known in advance
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


@dataclass(frozen=True)
class NodeNet:
    """A real node's pod network as the links see it."""
    name: str
    index: int
    net: str                     # the plane's /16 prefix, e.g. "10.244"
    bridge: str

    @property
    def gateway(self) -> str:
        return f"{self.net}.{self.index}.1"


def node_nets(records: Iterable[Mapping[str, Any]], names: Iterable[str] | None = None) -> dict[str, NodeNet]:
    """NodeNet per real-node record of the plane state (``localplane`` state ``real_nodes``)."""
    keep = None if names is None else set(names)
    from .realnodes import POD_NET
    return {r["name"]: NodeNet(r["name"], int(r["index"]), r.get("net", POD_NET), r["bridge"])
            for r in records if keep is None or r["name"] in keep}


class PodLinks:
    """Node stores, relays and tc shaping for the links between the real nodes in ``nodes``."""

    def __init__(self, nodes: Mapping[str, NodeNet], cluster: Cluster, seed: int = 0,
                 use_relay: bool | None = None):
        why = netns.missing_tools()
        if why:
            raise DtlabError(why)
        self.nodes = dict(nodes)
        self.cluster = cluster
        self.seed = int(seed)
        self.netem = netns.netem_available()
        self.use_relay = (not self.netem) if use_relay is None else bool(use_relay)
        self._links: dict[tuple[str, str], Link | None] = {
            (a, b): spec_link(cluster, a, b) for a in self.nodes for b in self.nodes if a != b}
        # origin zones (a job's input_mb comes from its origin zone, the twin's zone -> node link):
        # every zone the cluster names, as a data source towards every real node it has a link to
        self.zones = origin_zones(cluster)
        for z in self.zones:
            for b in self.nodes:
                link = spec_link(cluster, z, b)
                if link is not None:
                    self._links[(z, b)] = link
        self.mechanism: dict[str, str] = {}
        self._shaped: list[str] = []            # bridges whose root qdisc we added
        self._classes: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._first = min(self.nodes.values(), key=lambda n: n.index) if self.nodes else None
        try:
            for n in self.nodes.values():
                self._prepare_bridge(n)
            for (a, b) in self._links:
                self._reshape(a, b)
            for n in self.nodes.values():
                self._listen(n.gateway, STORE_PORT, self._store)
                if self.use_relay:
                    for src in self.nodes.values():
                        if src.name != n.name:
                            self._listen(n.gateway, RELAY_PORT_BASE + src.index, self._relay_for(src.name, n.name))
                for z, zi in self.zones.items():
                    if (z, n.name) not in self._links:
                        continue
                    if self.use_relay:
                        self._listen(n.gateway, RELAY_PORT_BASE + zi, self._relay_for(z, n.name))
                    else:
                        self._listen(n.gateway, ZONE_STORE_PORT_BASE + zi, self._store)
            for source in [*self.nodes, *self.zones]:        # for pods placed by the real scheduler
                self._listen(*self.any_endpoint(source), self._any_for(source))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ public
    def index(self, src: str) -> int:
        """A source's index: a real node's, or ``ZONE_INDEX_BASE + k`` for an origin zone."""
        return self.nodes[src].index if src in self.nodes else self.zones[src]

    def endpoint(self, src: str, dst: str) -> tuple[str, int]:
        """Where a pod on ``dst`` fetches data that ``src`` (a real node, or an origin zone) produced:
        the relay on its gateway, else src's store (a zone's store sits on ``dst``'s gateway)."""
        d = self.nodes[dst]
        if self.use_relay:
            return d.gateway, RELAY_PORT_BASE + self.index(src)
        if src in self.nodes:
            return self.nodes[src].gateway, STORE_PORT
        return d.gateway, ZONE_STORE_PORT_BASE + self.zones[src]

    def fetch_arg(self, src: str, dst: str, size_mb: float) -> str:
        """The worker's ``--fetch`` value for ``size_mb`` of ``src``'s output read on ``dst``."""
        host, port = self.endpoint(src, dst)
        return f"{host}:{port}:{max(1, int(size_mb * 1e6))}:{self.index(src)}"

    def any_endpoint(self, src: str) -> tuple[str, int]:
        """Where a pod on a node not known in advance fetches ``src``'s data (a real node's own gateway,
        an origin zone's on the first real node's gateway); the node comes from the pod's address."""
        host = self.nodes[src].gateway if src in self.nodes else self._first.gateway   # type: ignore[union-attr]
        return host, ANY_PORT_BASE + self.index(src)

    def fetch_arg_any(self, src: str, size_mb: float) -> str | None:
        """The ``--fetch`` value for ``size_mb`` of ``src``'s data (a real node or an origin zone) read by
        a pod whose node is unknown when it is made (the real kube-scheduler places it); None for an
        unknown source."""
        if src not in self.nodes and src not in self.zones:
            return None
        host, port = self.any_endpoint(src)
        return f"{host}:{port}:{max(1, int(size_mb * 1e6))}:{self.index(src)}"

    def node_of_address(self, ip: str) -> str | None:
        """The real node whose pod CIDR (``<net>.<index>.0/24``) holds ``ip``."""
        for n in self.nodes.values():
            if ip.startswith(f"{n.net}.{n.index}."):
                return n.name
        return None

    def input_fetch_arg(self, zone: str, dst: str, size_mb: float) -> str | None:
        """The ``--fetch`` value for a job's ``input_mb`` from its origin ``zone`` read on ``dst``
        (over the twin's zone -> node link, intra-zone default included); None when no link joins them."""
        if zone not in self.zones or (zone, dst) not in self._links:
            return None
        return self.fetch_arg(zone, dst, size_mb)

    def link(self, src: str, dst: str) -> Link | None:
        return self._links.get((src, dst))

    def set_link(self, src: str, dst: str, link: Link | None) -> None:
        """Change the shaping of ``src -> dst`` now (None: cut). ``src`` may be a KWOK node: its zone's
        source (which stands in for its stages' outputs) towards ``dst`` changes."""
        if (src, dst) in self._links:
            self._links[(src, dst)] = link
            self._reshape(src, dst)
        zone = self.cluster.by_name[src].zone if src in self.cluster.by_name else None
        if zone is not None and (zone, dst) in self._links:    # a fault between zones cuts their inputs too
            self._links[(zone, dst)] = link
            self._reshape(zone, dst)

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            close_listener(s)
        self._sockets.clear()
        for br in self._shaped:
            if Path(f"/sys/class/net/{br}").exists():
                netns.sh("tc", "qdisc", "del", "dev", br, "root", check=False)
        self._shaped.clear()

    def __enter__(self) -> "PodLinks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ shaping
    def _prepare_bridge(self, n: NodeNet) -> None:
        """The node's CNI bridge (made now if no pod ran yet: the bridge plugin adopts it) with its
        gateway address, a real tx queue (a bridge has none: htb's leaves would hold one packet)
        and the htb root."""
        br = n.bridge
        if not Path(f"/sys/class/net/{br}").exists():
            netns.sh("ip", "link", "add", "name", br, "type", "bridge", check=False)
        have = netns.sh("ip", "-4", "-o", "addr", "show", "dev", br, check=False).stdout
        if f" {n.gateway}/" not in have:
            netns.sh("ip", "addr", "add", f"{n.gateway}/24", "dev", br, check=False)
        netns.sh("ip", "link", "set", br, "txqueuelen", "1000", "up")
        netns.sh("tc", "qdisc", "del", "dev", br, "root", check=False)    # a crashed run's shaping
        netns.htb_root(["tc"], br)
        self._shaped.append(br)

    def _reshape(self, src: str, dst: str) -> None:
        d = self.nodes[dst]
        si = self.index(src)
        link = self._links[(src, dst)]
        matches = None
        if (src, dst) not in self._classes:
            self._classes.add((src, dst))
            if self.use_relay:      # relay -> pod: from dst's gateway, from the port of src
                host, port = d.gateway, RELAY_PORT_BASE + si
            else:                   # src's store -> pod (a zone's store: on dst's gateway)
                host, port = self.endpoint(src, dst)
            any_host, any_port = self.any_endpoint(src)      # the same link for a scheduler-placed pod
            matches = [["match", "ip", "src", f"{h}/32", "match", "ip", "sport", str(p), "0xffff"]
                       for h, p in ((host, port), (any_host, any_port))]
        cid = 10 + si
        if link is None:
            netns.htb_shape(["tc"], d.bridge, cid, matches, 1e4, 0.0, 0.0, 1.0 if self.netem and not self.use_relay else 0.0,
                            self.netem and not self.use_relay)
            self.mechanism[f"{src}->{dst}"] = "cut:" + ("relay hold" if self.use_relay else "netem loss 100%")
            return
        self.mechanism[f"{src}->{dst}"] = netns.htb_shape(
            ["tc"], d.bridge, cid, matches, link.bandwidth_mbps, link.latency_ms, link.jitter_ms, link.loss,
            self.netem and not self.use_relay)

    # ------------------------------------------------------------ servers
    def _listen(self, host: str, port: int, handler: Callable[[socket.socket], None]) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            s.close()
            raise DtlabError(f"pod-network data path: cannot listen on {host}:{port} ({exc.strerror}); "
                             "is another dtlab process using this plane's real nodes?") from None
        s.listen(64)
        self._sockets.append(s)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                threading.Thread(target=handler, args=(conn,), daemon=True).start()
        threading.Thread(target=loop, daemon=True, name=f"links-{host}:{port}").start()

    def _store(self, conn: socket.socket) -> None:
        """Stream the bytes a request names (the node's stored output)."""
        with conn:
            try:
                _, nbytes, _ = HEADER.unpack(recv_exact(conn, HEADER.size))
                zeros = bytes(CHUNK)
                left = nbytes
                while left > 0 and not self._stop.is_set():
                    n = min(left, CHUNK)
                    conn.sendall(zeros[:n])
                    left -= n
                conn.shutdown(socket.SHUT_WR)
            except (OSError, ConnectionError, struct.error):
                return

    def _any_for(self, src: str) -> Callable[[socket.socket], None]:
        return lambda conn: self._any(conn, src)

    def _any(self, conn: socket.socket, src: str) -> None:
        """``src``'s data for a pod whose node is known only now, from its address: through the
        ``src -> node`` link (relay or netem-shaped store); on ``src``'s own node straight from the store."""
        try:
            dst = self.node_of_address(conn.getpeername()[0])
        except OSError:
            dst = None
        if dst is None or (dst != src and (src, dst) not in self._links):
            conn.close()          # not a pod of a real node of this cluster, or no path (the twin has none)
            return
        if dst != src and self.use_relay:
            self._relay(conn, src, dst)
        else:
            self._store(conn)

    def _relay_for(self, src: str, dst: str) -> Callable[[socket.socket], None]:
        return lambda conn: self._relay(conn, src, dst)

    def _relay(self, conn: socket.socket, src: str, dst: str) -> None:
        """Pull a request from ``src``'s store and hand it to the pod through the link's delay line."""
        with conn:
            try:
                head = recv_exact(conn, HEADER.size)
                tid, nbytes, _ = HEADER.unpack(head)
                rng = np.random.default_rng([self.seed, tid % (1 << 63)])
                store = self.nodes[src if src in self.nodes else dst].gateway    # a zone's bytes: dst's store
                with socket.create_connection((store, STORE_PORT), timeout=30) as up:
                    up.settimeout(None)
                    up.sendall(head)
                    delay_line(up, conn, nbytes, lambda: wait_up(lambda a, b: self._links.get((a, b)), src, dst,
                                                                 self._stop), rng)
                conn.shutdown(socket.SHUT_WR)
            except (OSError, ConnectionError, struct.error):
                return




def origin_zones(cluster: Cluster) -> dict[str, int]:
    """Index per zone a job's input may come from (a job's origin is one of the cluster's zones),
    sorted; at most ``MAX_ZONES``."""
    zones = [z for z in cluster.zones if z not in cluster.by_name]
    if len(zones) > MAX_ZONES:
        raise DtlabError(f"pod-network data path: {len(zones)} zones, at most {MAX_ZONES} supported")
    return {z: ZONE_INDEX_BASE + k for k, z in enumerate(zones)}


# ------------------------------------------------------------ calibration
def pod_netns_of(ip: str) -> str | None:
    """The CNI network namespace (``/var/run/netns/cni-*``) holding address ``ip``."""
    base = Path("/var/run/netns")
    for p in sorted(base.glob("cni-*")) if base.is_dir() else []:
        r = netns.sh("ip", "-n", p.name, "-4", "-o", "addr", check=False)
        if f" {ip}/" in r.stdout:
            return p.name
    return None


def fetch_in(ns: str, host: str, port: int, nbytes: int, src_index: int, tid: int, timeout_s: float = 120.0) -> float:
    """Fetch ``nbytes`` as a worker would, from inside netns ``ns``; returns the wall ms it took."""
    t0 = time.monotonic()
    s = netns.socket_in(ns)
    with s:
        s.settimeout(timeout_s)
        s.connect((host, port))
        s.sendall(HEADER.pack(tid, nbytes, src_index))
        left = nbytes
        while left > 0:
            part = s.recv(min(left, 1 << 20))
            if not part:
                raise DtlabError(f"fetch from {host}:{port}: closed with {left} of {nbytes} bytes left")
            left -= len(part)
    return (time.monotonic() - t0) * 1000.0


def measure_network(cluster: Cluster, plane: str = "default", sizes_mb: Iterable[float] = (0.001, 1.0, 5.0),
                    reps: int = 3, seed: int = 0, timeout_s: float = 120.0) -> dict[str, Any]:
    """Transfer times over the shaped pod network of plane ``plane``, in the shape of
    :func:`dtlab.fabric.host_calibration.measure_network` (so ``fit_links`` fits them).

    One real node per zone of ``cluster`` (the first by name) runs a probe pod (the sandbox image:
    it only holds a network namespace); from inside each probe's namespace the data of every other
    probe's node is fetched through the same path a stage's worker uses, ``reps`` times per size.
    """
    from ..timing import TimingModel
    from . import localplane
    from .actuator import Actuator, PodSpec
    from .realnodes import PAUSE_IMAGE

    st = localplane.load_state(plane)
    kc = localplane.kubeconfig(plane)
    if not st or not kc:
        raise DtlabError(f"local plane {plane!r} is not running (`dtlab cluster up --real-nodes ...`)")
    real = node_nets(st.get("real_nodes", []), [n.name for n in cluster.nodes])
    per_zone: dict[str, str] = {}
    for n in sorted(cluster.nodes, key=lambda n: n.name):
        if n.name in real:
            per_zone.setdefault(n.zone, n.name)
    if len(per_zone) < 2:
        raise DtlabError(f"need real nodes in at least two zones of {cluster.name!r} on plane {plane!r}, "
                         f"have {per_zone or 'none'}")
    probes = sorted(per_zone.values())
    act = Actuator(kc, namespace="dtlab", seed=seed)
    act.ensure_namespace()
    tm = TimingModel()
    rows: list[dict[str, Any]] = []
    specs = [PodSpec("netcal", n, n, image=PAUSE_IMAGE, node_kind="real", cpu=0.01, mem_gb=0.03) for n in probes]
    with PodLinks({n: real[n] for n in probes}, cluster, seed=seed) as links:
        try:
            for sp in specs:
                act.create_pod(sp)
            ns = {}
            deadline = time.monotonic() + timeout_s
            for sp in specs:
                while True:
                    pod = act.core.read_namespaced_pod(sp.name, "dtlab", _request_timeout=10)
                    ip = pod.status.pod_ip if pod.status.phase == "Running" else None
                    found = pod_netns_of(ip) if ip else None
                    if found:
                        ns[sp.node] = found
                        break
                    if time.monotonic() > deadline:
                        raise DtlabError(f"probe pod {sp.name} on {sp.node} not running after {timeout_s:.0f} s "
                                         f"(phase {pod.status.phase})")
                    time.sleep(0.2)
            tid = 1
            for a in probes:
                for b in probes:
                    if a == b:
                        continue
                    host, port = links.endpoint(a, b)
                    spec = spec_link(cluster, a, b)
                    for size in sizes_mb:
                        times = []
                        for _ in range(reps):
                            times.append(fetch_in(ns[b], host, port, max(1, int(size * 1e6)), real[a].index, tid,
                                                  timeout_s))
                            tid += 1
                        med = statistics.median(times)
                        rows.append({"src": a, "dst": b, "size_mb": size, "median_ms": round(med, 3),
                                     "min_ms": round(min(times), 3), "max_ms": round(max(times), 3),
                                     "predicted_ms": round(tm.mean_transfer_ms(size, spec), 3) if spec else None,
                                     "throughput_mbps": round(size * 8 / (med / 1000.0), 3) if size >= 0.5 else None,
                                     "mechanism": links.mechanism.get(f"{a}->{b}")})
        finally:
            for sp in specs:
                try:
                    act.delete_pod(sp.name)
                except DtlabError:
                    pass
    return {"kind": "HostNetworkCalibration", "substrate": "kube", "plane": plane, "netem": links.netem,
            "reps": reps, "probes": {z: n for z, n in per_zone.items()}, "samples": rows,
            "note": "fetched from inside probe pods' network namespaces over the shaped pod network"}
