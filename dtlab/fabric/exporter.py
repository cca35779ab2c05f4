"""Per-node cgroup exporter: one small HTTP server per fabric node, scraped by Prometheus.

Why one per node: on one host a node exporter reports the host for every node; a real node's
telemetry is its own cgroup. This exporter reads one node's cgroup directory (cgroup v1
``cpuacct.usage`` / ``memory.usage_in_bytes``, or v2 ``cpu.stat`` / ``memory.current``) at every
scrape (``/metrics``, Prometheus text format) and serves:

* ``dtlab_node_cpu_seconds_total``: CPU time of everything in the node's cgroup tree;
* ``dtlab_node_placed_cpu_seconds_total``: CPU time of its sub-cgroups, which is where dtlab puts
  the stages it placed. Monotonic although stage groups come and go: a vanished group's last
  reading is kept (the fabric keeps a finished stage's group a little longer than one scrape
  interval, so that last reading is its total). The difference is the **background load**: work
  in the node's own cgroup that dtlab did not place (a noisy neighbour);
* ``dtlab_node_cpu_capacity_cores``: the node's CPU capacity in host cores (its quota);
* ``dtlab_node_memory_bytes`` when a memory cgroup directory is given.

Standalone on purpose (standard library only, run as a script): it starts in ~50 ms and never
imports the twin. It binds to loopback and stops by itself when ``--parent-pid`` is gone or after
``--max-s`` seconds, so a crashed run leaves no exporter behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def cpu_usage_s(d: Path) -> float | None:
    """CPU seconds of cgroup ``d`` and its children (v1 cpuacct.usage, v2 cpu.stat usage_usec); None if unreadable."""
    try:
        f = d / "cpuacct.usage"
        if f.exists():
            return int(f.read_text()) / 1e9
        for line in (d / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) / 1e6
    except (OSError, ValueError):
        pass
    return None


def memory_bytes(d: Path) -> float | None:
    for name in ("memory.usage_in_bytes", "memory.current"):
        try:
            return float(int((d / name).read_text()))
        except (OSError, ValueError):
            continue
    return None


class NodeReader:
    """Reads one node's cgroup; keeps the placed-CPU counter monotonic across vanishing stage groups."""

    def __init__(self, node: str, cpu_dir: Path, capacity_cores: float, memory_dir: Path | None = None):
        self.node, self.cpu_dir, self.capacity = node, cpu_dir, capacity_cores
        self.memory_dir = memory_dir
        self._last: dict[str, float] = {}
        self._gone = 0.0
        self._lock = threading.Lock()

    def placed_s(self) -> float:
        with self._lock:
            seen: dict[str, float] = {}
            try:
                children = [c for c in self.cpu_dir.iterdir() if c.is_dir()]
            except OSError:
                children = []
            for c in children:
                u = cpu_usage_s(c)
                if u is not None:
                    seen[c.name] = max(u, self._last.get(c.name, 0.0))
            for name, last in self._last.items():
                if name not in seen:
                    self._gone += last
            self._last = seen
            return self._gone + sum(seen.values())

    def metrics(self) -> str:
        label = '{node="%s"}' % self.node.replace("\\", "\\\\").replace('"', '\\"')
        total = cpu_usage_s(self.cpu_dir)
        if total is None:
            return ""           # the node's cgroup is gone: no samples, Prometheus marks the series stale
        placed = min(self.placed_s(), total)
        lines = ["# TYPE dtlab_node_cpu_seconds_total counter", f"dtlab_node_cpu_seconds_total{label} {total:.9f}",
                 "# TYPE dtlab_node_placed_cpu_seconds_total counter",
                 f"dtlab_node_placed_cpu_seconds_total{label} {placed:.9f}",
                 "# TYPE dtlab_node_cpu_capacity_cores gauge", f"dtlab_node_cpu_capacity_cores{label} {self.capacity:.9g}"]
        mem = memory_bytes(self.memory_dir) if self.memory_dir is not None else None
        if mem is not None:
            lines += ["# TYPE dtlab_node_memory_bytes gauge", f"dtlab_node_memory_bytes{label} {mem:.0f}"]
        return "\n".join(lines) + "\n"


def serve(reader: NodeReader, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:   # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics")
                return
            body = reader.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def command(node: str, cpu_dir: Path, capacity_cores: float, parent_pid: int,
            memory_dir: Path | None = None, port: int = 0) -> list[str]:
    """The command that runs this exporter for one node (the fabric's nodes and the real kube nodes)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--node", node, "--cpu-dir", str(cpu_dir),
            "--capacity-cores", repr(float(capacity_cores)), "--port", str(port), "--parent-pid", str(parent_pid)]
    return argv + (["--memory-dir", str(memory_dir)] if memory_dir is not None else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node", required=True)
    p.add_argument("--cpu-dir", required=True, type=Path, help="the node's cgroup directory with CPU accounting")
    p.add_argument("--memory-dir", type=Path, help="the node's memory cgroup directory (optional)")
    p.add_argument("--capacity-cores", required=True, type=float)
    p.add_argument("--port", type=int, default=0, help="0 (default): any free port; the port is printed on stdout")
    p.add_argument("--parent-pid", type=int, default=os.getppid(), help="exit when this process is gone")
    p.add_argument("--max-s", type=float, default=24 * 3600.0, help="exit after this many seconds")
    args = p.parse_args(argv)
    if cpu_usage_s(args.cpu_dir) is None:
        # no CPU accounting there (e.g. cgroup v1 without cpuacct): refuse now rather than export
        # nothing, which would leave the node stale forever and every plan refused
        print(f"exporter: no CPU accounting readable in {args.cpu_dir} (cpuacct.usage or cpu.stat)",
              file=sys.stderr, flush=True)
        return 2
    server = serve(NodeReader(args.node, args.cpu_dir, args.capacity_cores, args.memory_dir), args.port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    end = time.monotonic() + args.max_s
    while time.monotonic() < end:
        try:
            os.kill(args.parent_pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(0.5)
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
