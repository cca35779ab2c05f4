"""Data path between stages: receivers in the destination namespaces, and a user-space shaping relay.

Where the kernel has netem, latency/jitter/loss are applied by tc and senders connect straight to
the destination's receiver. Where it has not (this project's CI host), senders connect to a relay
in the root namespace that forwards to the destination and adds, per link, what netem would:

* **delay**: every chunk is released ``latency + jitter*|N(0,1)|`` after it arrived (a delay line:
  chunks in flight overlap, so the bandwidth set by htb on the sender's egress is kept);
* **loss**: a chunk of ``CHUNK`` bytes carries ~``CHUNK/MSS`` segments and is lost with probability
  ``1-(1-loss)^segments``; a lost chunk is retransmitted after one RTT (fast retransmit), or
  after an RTO of ``max(200 ms, 2*RTT)`` when it is the last chunk of the message (a tail loss
  has no duplicate ACKs to trigger fast retransmit);
* **cut**: while a link is cut, the relay holds the data (TCP keeps retransmitting) until it is
  restored, and the transfer completes late.

Random draws come from a ``numpy.random.Generator`` seeded per (seed, transfer id).
"""
from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..model import Link
from .netns import RECV_PORT, NetFabric, socket_in

HEADER = struct.Struct("!QQI")   # transfer id, payload bytes, source node index
CHUNK = 64 * 1024
MSS = 1448
MIN_RTO_MS = 200.0


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("peer closed early")
        buf += part
    return bytes(buf)


def chunk_release(arrived: float, restored_at: float, nbytes: int, last: bool, link: Link,
                  rng: np.random.Generator) -> float:
    """When (monotonic s) the relay may forward a chunk that arrived at ``arrived`` (see module doc)."""
    lat = link.latency_ms + (link.jitter_ms * abs(rng.standard_normal()) if link.jitter_ms > 0 else 0.0)
    at = max(arrived, restored_at) + lat / 1000.0
    if link.loss > 0:
        p_chunk = 1.0 - (1.0 - link.loss) ** max(1.0, nbytes / MSS)
        if rng.random() < p_chunk:
            rtt = 2 * link.latency_ms
            at += (max(MIN_RTO_MS, 2 * rtt) if last else rtt) / 1000.0
    return at


@dataclass
class Transfer:
    tid: int
    src: str
    dst: str
    nbytes: int
    start: float
    done: threading.Event
    end: float | None = None
    error: str | None = None


ACCEPT_THREAD = "fabric-accept-"      # name prefix of the data path's accept threads (+ host:port)


def close_listener(s: socket.socket) -> None:
    """Stop a listening socket that a thread may be blocked in ``accept()`` on. ``close()`` alone leaves
    it listening: the blocked call holds the file, so the port stays bound and the thread waits forever
    (each fabric leaked its relay and receive listeners this way, and a later fabric that hashed to the
    same subnet failed to bind: EADDRINUSE, 7 and 28 minutes into two long V1 runs). ``shutdown`` wakes the
    ``accept`` (EINVAL), then ``close`` frees the port."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class DataPath:
    """Receivers per node, the relay per destination when needed, and ``send()``."""

    def __init__(self, net: NetFabric, links: Callable[[str, str], Link | None], use_relay: bool, seed: int = 0):
        self.net = net
        self.links = links              # current link (None: cut) for (src, dst)
        self.use_relay = use_relay
        self.seed = seed
        self._lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}
        self._next = 1
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self.cpu_s = 0.0                # CPU seconds of the data-path threads that finished (host noise)
        try:
            self._listen_all(net, use_relay)
        except BaseException:
            self.close()                # the listeners already bound must not outlive a failed open
            raise

    def _listen_all(self, net: NetFabric, use_relay: bool) -> None:
        for node in net.nodes:
            s = socket_in(net.ns(node))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((net.ip(node), RECV_PORT))
            s.listen(64)
            self._serve(s, self._receive)
            if use_relay:
                r = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                r.bind((net.bridge_ip, net.relay_port(node)))
                r.listen(64)
                self._serve(r, lambda c, node=node: self._relay(c, node))

    # ------------------------------------------------------------ public
    def send(self, src: str, dst: str, size_mb: float) -> Transfer:
        """Start sending ``size_mb`` from ``src`` to ``dst``; wait on ``.done``."""
        nbytes = max(int(size_mb * 1e6), 1)
        with self._lock:
            tid = self._next
            self._next += 1
            tr = Transfer(tid, src, dst, nbytes, time.monotonic(), threading.Event())
            self._transfers[tid] = tr
        threading.Thread(target=self._counted(self._send), args=(tr,), daemon=True, name=f"send-{tid}").start()
        return tr

    def close(self) -> None:
        self._stop.set()
        for s in self._sockets:
            close_listener(s)
        self._sockets.clear()
        for tr in list(self._transfers.values()):
            if not tr.done.is_set():
                tr.error = "closed"
                tr.done.set()

    # ------------------------------------------------------------ internals
    def _counted(self, fn):
        """``fn`` run in its own thread, its CPU time (``time.thread_time``) added to ``cpu_s``."""
        def run(*args):
            try:
                return fn(*args)
            finally:
                spent = time.thread_time()
                with self._lock:
                    self.cpu_s += spent
        return run

    def _serve(self, s: socket.socket, handler) -> None:
        self._sockets.append(s)

        def loop():
            while not self._stop.is_set():
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                threading.Thread(target=self._counted(handler), args=(conn,), daemon=True).start()
        host, port = s.getsockname()[:2]
        threading.Thread(target=loop, daemon=True, name=f"{ACCEPT_THREAD}{host}:{port}").start()

    def _send(self, tr: Transfer) -> None:
        try:
            s = socket_in(self.net.ns(tr.src))
            with s:
                if self.use_relay:
                    s.connect((self.net.bridge_ip, self.net.relay_port(tr.dst)))
                else:
                    s.connect((self.net.ip(tr.dst), RECV_PORT))
                s.sendall(HEADER.pack(tr.tid, tr.nbytes, self.net.index[tr.src]))
                zeros = bytes(CHUNK)
                left = tr.nbytes
                while left > 0:
                    n = min(left, CHUNK)
                    s.sendall(zeros[:n])
                    left -= n
                s.shutdown(socket.SHUT_WR)
                s.recv(1)   # wait for the receiver's ack so a dropped connection is noticed
        except OSError as exc:
            if not tr.done.is_set():
                tr.error = f"send: {exc}"
                tr.done.set()

    def _receive(self, conn: socket.socket) -> None:
        with conn:
            try:
                tid, nbytes, _ = HEADER.unpack(recv_exact(conn, HEADER.size))
                left = nbytes
                while left > 0:
                    part = conn.recv(min(left, 1 << 20))
                    if not part:
                        raise ConnectionError("sender closed early")
                    left -= len(part)
                end = time.monotonic()
                conn.sendall(b"k")
            except (OSError, ConnectionError, struct.error):
                return
        tr = self._transfers.get(tid)
        if tr is not None and not tr.done.is_set():
            tr.end = end
            tr.done.set()

    def _relay(self, conn: socket.socket, dst: str) -> None:
        """Forward one transfer to ``dst`` through a delay line with loss/retransmit (see module doc)."""
        with conn:
            try:
                head = recv_exact(conn, HEADER.size)
                tid, nbytes, src_i = HEADER.unpack(head)
                src = self.net.nodes[src_i]
                rng = np.random.default_rng([self.seed, tid])
                out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with out:
                    out.connect((self.net.ip(dst), RECV_PORT))
                    out.sendall(head)
                    delay_line(conn, out, nbytes, lambda: wait_up(self.links, src, dst, self._stop), rng,
                               self._counted)
                    out.shutdown(socket.SHUT_WR)
                    ack = out.recv(1)
                conn.sendall(ack or b"k")
            except (OSError, ConnectionError, struct.error):
                return


def delay_line(src: socket.socket, out: socket.socket, nbytes: int,
               current: Callable[[], tuple[Link, float]], rng: np.random.Generator,
               wrap: Callable = lambda fn: fn) -> None:
    """Read ``nbytes`` from ``src`` and write them to ``out``, each chunk released per
    :func:`chunk_release` on the link ``current()`` returns (blocking while it is cut). A reader
    thread (run through ``wrap``, e.g. to count its CPU) stamps arrivals, so chunks in flight overlap
    and the bandwidth shaped elsewhere is kept. Used by the fabric's relay and the kube nodes' relay."""
    chunks: queue.Queue = queue.Queue()

    def reader():   # stamps arrival times so the delay line overlaps chunks in flight
        left = nbytes
        try:
            while left > 0:
                part = src.recv(min(left, CHUNK))
                if not part:
                    break
                left -= len(part)
                chunks.put((time.monotonic(), part, left == 0))
        finally:
            chunks.put(None)
    threading.Thread(target=wrap(reader), daemon=True).start()
    release = 0.0
    while (item := chunks.get()) is not None:
        arrived, part, last = item
        link, restored_at = current()
        at = chunk_release(arrived, restored_at, len(part), last, link, rng)
        release = max(release, at)
        delay = release - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.sendall(part)


def wait_up(links: Callable[[str, str], Link | None], src: str, dst: str,
            stop: threading.Event) -> tuple[Link, float]:
    """The current link ``links(src, dst)``, blocking while it is cut (None); and when it came (back)
    up (0 if never cut)."""
    restored = 0.0
    while True:
        link = links(src, dst)
        if link is not None or stop.is_set():
            return (link or Link(src, dst, 0.0, 1e4)), restored
        time.sleep(0.01)
        restored = time.monotonic()
