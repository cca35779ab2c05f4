"""Telemetry: node CPU and memory from a Prometheus server, and the freshness rule.

The twin plans on telemetry; telemetry that is older than the freshness budget
(default 1 s, the design's figure) makes a node *stale*. The controller must not
actuate a plan that relies on a stale node, and must say which and why.

Pieces (issue 20):

* :class:`PrometheusClient`: the HTTP API (instant queries).
* :class:`PrometheusProcess`: a real ``prometheus`` binary scraping given targets every
  ``scrape_interval_s`` (0.5 s by default), bound to loopback, storage in a temporary directory,
  stopped by :meth:`PrometheusProcess.stop` or when its parent dies.
* :class:`TelemetryPoller`: polls Prometheus every ``interval_s`` (default 0.5 s) for the per-node
  cgroup exporters' series (:mod:`dtlab.fabric.exporter`) and turns them into ``telemetry`` state
  events: ``cpu_util`` is the **background** utilisation (CPU in the node's cgroup outside the
  stages dtlab placed, over the node's capacity), ``mem_bytes`` the node's memory. Each event is
  stamped with the *scrape* time of its sample (``timestamp()`` in PromQL), not the query time, so
  the freshness rule measures how old the data really is; ``clock`` maps that epoch time to the
  state's clock (the fabric's reference ms). When Prometheus cannot be queried no events come, the
  nodes age and plans are refused; the poller's ``last_error`` says why.
* Nodes without a telemetry source: the poller also says which nodes are Prometheus' scrape
  targets (``telemetry-sources`` events). Freshness applies to those nodes and to any node that
  ever reported; a plan on a node with no source (a KWOK node beside real ones) is not refused
  but records that it relied on it (:func:`check_fresh` returns those nodes). Until the poller has
  spoken, every node counts as having a source: a Prometheus that never answers refuses everything.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import DtlabError, SubstrateUnavailable

DEFAULT_FRESHNESS_S = 1.0
NODE_CPU_QUERY = '1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{window}]))'
DEFAULT_POLL_S = 0.5
DEFAULT_SCRAPE_S = 0.5
SOURCES_EVERY = 20        # polls between two reads of Prometheus' scrape targets (which nodes have a source)
# background CPU of a node (not placed by dtlab) over its capacity, from the per-node exporters; irate
# (the last two samples in the window) so a step shows up one scrape interval later, not a window later
BACKGROUND_QUERY = ("(irate(dtlab_node_cpu_seconds_total[{window}]) - irate(dtlab_node_placed_cpu_seconds_total[{window}]))"
                    " / on (node) dtlab_node_cpu_capacity_cores")
SAMPLE_TS_QUERY = "timestamp(dtlab_node_cpu_seconds_total)"
MEMORY_QUERY = "dtlab_node_memory_bytes"


class TelemetryError(DtlabError):
    """Prometheus could not be queried or answered with an error."""


class StaleTelemetry(DtlabError):
    """A plan relies on nodes whose telemetry is older than the freshness budget."""

    def __init__(self, stale: Mapping[str, float | None], budget_s: float):
        self.stale = dict(stale)
        self.budget_s = budget_s
        ages = ", ".join(f"{n} ({'never reported' if a is None else f'{a:.1f} s old'})" for n, a in sorted(stale.items()))
        super().__init__(f"not actuating: telemetry of {ages} is older than the {budget_s:g} s freshness budget")


@dataclass
class PrometheusClient:
    """Minimal client of the Prometheus HTTP API (``/api/v1/query``)."""
    base_url: str
    timeout_s: float = 5.0
    last_stamps: list[float] = field(default_factory=list)   # epoch scrape times of the newest node_events

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>``: the answer's ``data`` (TelemetryError when unreachable or failed)."""
        import requests  # imported here: every `dtlab` command loads this module, few query Prometheus

        try:
            resp = requests.get(f"{self.base_url.rstrip('/')}/api/v1/{path}", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TelemetryError(f"Prometheus at {self.base_url} unreachable: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            raise TelemetryError(f"Prometheus answered HTTP {resp.status_code} with a non-JSON body") from None
        if body.get("status") != "success":
            raise TelemetryError(f"Prometheus query failed: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float, float]]:
        """Instant query: list of (labels, sample timestamp, value)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("query", params)
        if data["resultType"] == "vector":
            return [(r["metric"], float(r["value"][0]), float(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][0]), float(data["result"][1]))]
        raise TelemetryError(f"unsupported result type {data['resultType']!r}")

    def sources(self) -> set[str]:
        """The nodes that have a telemetry source: Prometheus' configured scrape targets labelled
        ``dtlab_node`` (:func:`prometheus_config`), up or not (``/api/v1/targets``, from the
        configuration, so known before the first scrape)."""
        data = self.get("targets", {"state": "active"})
        return {t["labels"]["dtlab_node"] for t in data.get("activeTargets", [])
                if t.get("labels", {}).get("dtlab_node")}

    def node_cpu_events(self, instance_to_node: Mapping[str, str], window: str = "30s") -> list[dict]:
        """Telemetry events (dtlab.state) of node CPU utilisation, timestamped with the sample time."""
        events = []
        stamps = {labels.get("instance", ""): value for labels, _, value in self.query("timestamp(node_cpu_seconds_total"
                                                                                   '{mode="idle",cpu="0"})')}
        for labels, ts, value in self.query(NODE_CPU_QUERY.format(window=window)):
            instance = labels.get("instance", "")
            node = instance_to_node.get(instance)
            if node is not None:      # stamped with the scrape time of the sample, not the query time
                events.append({"kind": "telemetry", "node": node, "cpu_util": min(1.0, max(0.0, value)),
                               "ts": stamps.get(instance, ts)})
        return events

    def node_events(self, window: str = "5s", clock: Callable[[float], float] | None = None) -> list[dict]:
        """Telemetry events from the per-node cgroup exporters: background ``cpu_util`` and ``mem_bytes``.

        A node appears only when its newest sample exists (a target that stopped answering is
        marked stale by Prometheus and drops out); ``ts`` is that sample's scrape time through ``clock``.
        """
        stamps = {lab.get("node"): v for lab, _, v in self.query(SAMPLE_TS_QUERY) if lab.get("node")}
        self.last_stamps = list(stamps.values())
        util = {lab.get("node"): v for lab, _, v in self.query(BACKGROUND_QUERY.format(window=window))}
        mem = {lab.get("node"): v for lab, _, v in self.query(MEMORY_QUERY)}
        events = []
        for node, stamp in sorted(stamps.items()):
            u = util.get(node)
            if u is None or u != u:      # fewer than two samples in the window yet
                continue
            ev: dict[str, Any] = {"kind": "telemetry", "node": node, "cpu_util": min(1.0, max(0.0, u)),
                                  "ts": clock(stamp) if clock else stamp}
            if node in mem:
                ev["mem_bytes"] = max(0.0, mem[node])
            events.append(ev)
        return events


def has_source(snapshot, name: str) -> bool:
    """Whether node ``name`` has (or had) a telemetry source: it reported once, or no ``telemetry-sources``
    event said it has none. A node that reported and went silent keeps counting as one (it is stale)."""
    status = snapshot.nodes[name]
    return status.telemetry_ts is not None or status.telemetry_source is not False


def stale_nodes(snapshot, nodes: Iterable[str], budget_s: float = DEFAULT_FRESHNESS_S,
                now: float | None = None) -> dict[str, float | None]:
    """Nodes among ``nodes`` with a telemetry source whose newest telemetry is older than ``budget_s``
    (None: never reported). Nodes without a source (:func:`has_source`) are not stale: they are
    *untelemetered*, see :func:`untelemetered`."""
    now = time.time() if now is None else now
    out = {}
    for name in set(nodes):
        if not has_source(snapshot, name):
            continue
        age = snapshot.telemetry_age_s(name, now)
        if age is None or age > budget_s:
            out[name] = age
    return out


def plan_nodes(plan) -> set[str]:
    """The nodes a plan relies on: its placement and its shadows."""
    return set(plan.placement.values()) | set(plan.shadow.values())


def untelemetered(plan, snapshot) -> list[str]:
    """The nodes ``plan`` relies on that have no telemetry source (sorted): the plan was made on the
    spec's view of them alone (e.g. KWOK nodes beside real ones)."""
    return sorted(n for n in plan_nodes(plan) if n in snapshot.nodes and not has_source(snapshot, n))


def check_fresh(plan, snapshot, budget_s: float = DEFAULT_FRESHNESS_S, now: float | None = None) -> list[str]:
    """Raise StaleTelemetry if the plan (placement or shadow) relies on a stale node; else return the
    untelemetered nodes it relies on (freshness does not apply to them; callers record them)."""
    stale = stale_nodes(snapshot, plan_nodes(plan), budget_s, now)
    if stale:
        raise StaleTelemetry(stale, budget_s)
    return untelemetered(plan, snapshot)


# ---------------------------------------------------------------- a real Prometheus, and the poller
def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks; the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when this process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def prometheus_config(targets: Mapping[str, str], scrape_interval_s: float,
                      kubelets: Mapping[str, str] | None = None, client_cert: tuple[str, str] | None = None) -> str:
    """prometheus.yml scraping each ``{node: "host:port"}`` exporter target every ``scrape_interval_s``
    (job ``dtlab-node``) and, given ``kubelets`` ({node: "127.0.0.1:port"}) and ``client_cert`` (cert, key
    files the kubelets' client CA signed), each real kubelet's ``/metrics/resource`` over HTTPS (job
    ``kubelet-resource``; the kubelet's self-signed serving certificate is not verified: loopback only)."""
    ms = max(1, int(round(scrape_interval_s * 1000)))
    lines = [f"global: {{scrape_interval: {ms}ms, scrape_timeout: {ms}ms, evaluation_interval: {ms}ms}}",
             "scrape_configs:", "  - job_name: dtlab-node", "    static_configs:"]
    for node, target in sorted(targets.items()):
        lines.append(f"      - {{targets: ['{target}'], labels: {{dtlab_node: '{node}'}}}}")
    if kubelets:
        if client_cert is None:
            raise DtlabError("prometheus_config: scraping kubelets needs a client certificate")
        lines += ["  - job_name: kubelet-resource", "    scheme: https", "    metrics_path: /metrics/resource",
                  f"    tls_config: {{cert_file: '{client_cert[0]}', key_file: '{client_cert[1]}', "
                  "insecure_skip_verify: true}", "    static_configs:"]
        for node, target in sorted(kubelets.items()):
            lines.append(f"      - {{targets: ['{target}'], labels: {{kubelet_node: '{node}'}}}}")
    return "\n".join(lines) + "\n"


def prometheus_argv(exe: str, config: Path, workdir: Path, port: int) -> list[str]:
    """The one Prometheus command line dtlab runs: loopback only, 2 h of local storage in ``workdir``."""
    return [exe, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h"]


def wait_targets_up(url: str, n_targets: int, timeout_s: float, dead: Callable[[], str | None]) -> None:
    """Until Prometheus at ``url`` reports ``n_targets`` node exporters (job ``dtlab-node``) up. ``dead()`` names a process that
    exited (then DtlabError at once); past ``timeout_s`` a DtlabError too."""
    client = PrometheusClient(url, timeout_s=1.0)
    deadline = time.monotonic() + timeout_s
    while True:
        why = dead()
        if why:
            raise DtlabError(why)
        try:
            if sum(v == 1 for _, _, v in client.query('up{job="dtlab-node"}')) >= n_targets:
                return
        except TelemetryError:
            pass
        if time.monotonic() > deadline:
            raise DtlabError(f"prometheus at {url}: targets not all up within {timeout_s:g} s")
        time.sleep(0.1)


@dataclass
class PrometheusProcess:
    """A real ``prometheus`` scraping ``targets`` ({node: "127.0.0.1:port"}); loopback only.

    ``start()`` waits until every target is up (bounded by ``ready_s``); ``stop()`` terminates it
    (it also dies with this process). ``port`` is fixed at construction, so a stopped
    Prometheus can be started again at the same URL (the e2e "Prometheus is back" check).
    """
    targets: Mapping[str, str]
    scrape_interval_s: float = DEFAULT_SCRAPE_S
    binary: str = "prometheus"
    port: int = 0
    ready_s: float = 30.0
    workdir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.05 <= self.scrape_interval_s <= 60:
            raise DtlabError(f"scrape interval {self.scrape_interval_s} s: must be in [0.05, 60] s")
        if self.port == 0:
            self.port = free_port()
        self._own_dir = self.workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dtlab-prom-")) if self.workdir is None else Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PrometheusProcess":
        exe = shutil.which(self.binary)
        if exe is None:
            raise SubstrateUnavailable(f"telemetry: `{self.binary}` not found (make test-deps installs Debian's prometheus)")
        assert self.workdir is not None
        config = self.workdir / "prometheus.yml"
        config.write_text(prometheus_config(self.targets, self.scrape_interval_s))
        self.log = self.workdir / "prometheus.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(prometheus_argv(exe, config, self.workdir, self.port),
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        proc, log_path = self.proc, self.log

        def dead() -> str | None:
            if proc.poll() is None:
                return None
            return f"prometheus exited with {proc.returncode}: {log_path.read_text(errors='replace')[-400:]}"
        try:
            wait_targets_up(self.url, len(self.targets), self.ready_s, dead)
        except DtlabError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class TelemetryPoller:
    """Polls Prometheus every ``interval_s`` in a thread and queues telemetry events for the state.

    ``events()`` drains the queue (the controller's sync does, with the substrate's events);
    a ``telemetry-sources`` event is queued whenever the set of nodes with a scrape target changes
    (the first successful poll included), so nodes without one (KWOK) are exempt from freshness;
    ``latencies`` records, per poll that produced events, the query time and the data age when
    the events were handed over (seconds, wall clock) for the benchmark. ``last_error`` is the
    newest query failure (None once a poll succeeds again).
    """

    def __init__(self, client: PrometheusClient, interval_s: float = DEFAULT_POLL_S, window: str = "5s",
                 clock: Callable[[float], float] | None = None, max_queue: int = 100_000):
        if not 0.01 <= float(interval_s) <= 3600:
            raise DtlabError(f"telemetry poll interval {interval_s!r} s: must be in [0.01, 3600] s")
        self.client, self.interval_s, self.window, self.clock = client, float(interval_s), window, clock
        self.last_error: str | None = None
        self.sources: list[str] | None = None       # nodes with a scrape target, as last queued
        self.polls = 0
        self.samples: list[dict[str, float]] = []    # per successful poll: query_s, newest sample age at hand-over
        self._queue: list[dict[str, Any]] = []
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[dict[str, Any]]:
        t0 = time.time()
        try:
            events = self.client.node_events(self.window, clock=self.clock)
            sources = None      # targets change only with Prometheus' configuration: asked every SOURCES_EVERY polls
            if hasattr(self.client, "sources") and (self.sources is None or self.polls % SOURCES_EVERY == 0):
                sources = sorted(self.client.sources())
        except TelemetryError as exc:
            self.last_error = str(exc)
            return []
        t1 = time.time()
        self.last_error = None
        self.polls += 1
        stamps = self.client.last_stamps
        with self._lock:
            if sources and sources != self.sources:   # none at all: not configured yet, nothing said
                self.sources = sources      # said once per change: nodes without a scrape target have none
                self._queue.append({"kind": "telemetry-sources", "nodes": sources})
            if events:
                self._queue.extend(events)
                del self._queue[:-self._max_queue]
                self.samples.append({"query_s": t1 - t0, "at": t1, "n": len(events),
                                     **({"age_s": t1 - max(stamps)} if stamps else {})})
        return events

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self._queue = self._queue, []
        return out

    def start(self) -> "TelemetryPoller":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="telemetry-poller")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
