"""Serve the DT REST API on uvicorn (``dtlab serve``; its flags are :mod:`dtlab.cli.serve`).

:func:`build_twin` makes the twin (from a cluster spec, or from what a substrate's observer sees),
:func:`feed` keeps a substrate's events flowing into its state, :func:`serve` runs the API (and
the scheduler extender, over mutual TLS on its own port when given a context) until stopped.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import DtlabError
from .limits import ApiConfig

if TYPE_CHECKING:
    import ssl


def build_twin(cluster_file: str, substrate_name: str | None = None, **opts: Any) -> tuple[Any, Any]:
    """The twin for ``cluster_file``; with a substrate, its state starts from what the observer sees.

    Returns ``(twin, substrate)``; the substrate is None without ``substrate_name``, else the
    caller closes it.
    """
    from ..model import load_cluster
    from ..twin import Twin

    cluster = load_cluster(cluster_file)
    if substrate_name is None:
        return Twin(cluster), None
    from ..substrates import make_substrate  # substrate-backed state: the observer feeds the twin
    substrate = make_substrate(substrate_name, cluster, **opts)
    twin = Twin(substrate.cluster())
    twin.state.apply_many(substrate.events())
    return twin, substrate


def feed(substrate, state, stop: "threading.Event", period_s: float = 0.2) -> None:
    """Keep the state fed from the substrate's observer: advance by one period, apply its events.

    Wall-clock substrates (fabric, kube) wait inside ``advance``; ``sim`` steps its virtual clock
    at the same pace, so the loop sleeps whatever ``advance`` did not.
    """
    while not stop.is_set():
        start = time.monotonic()
        substrate.advance(substrate.now_ms() + period_s * 1000)
        events = substrate.events()
        if events:
            state.apply_many(events)
        stop.wait(max(0.0, period_s - (time.monotonic() - start)))


def poll_into(poller: Any, state: Any, stop: "threading.Event") -> None:
    """Apply a :class:`dtlab.telemetry.TelemetryPoller`'s events to ``state`` every poll interval until
    ``stop``; a failing query leaves the nodes to age (the freshness rule then refuses plans), logged."""
    import logging

    reported = None
    while not stop.is_set():
        start = time.monotonic()
        poller.poll_once()
        events = poller.events()
        if events:
            state.apply_many(events)
        if poller.last_error != reported:
            reported = poller.last_error
            logging.getLogger("dtlab.serve").warning("telemetry: %s", reported or "recovered")
        stop.wait(max(0.0, poller.interval_s - (time.monotonic() - start)))


def serve(twin: Any, config: ApiConfig, *, substrate: Any = None, extender: Any = None,
          tls_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 8080,
          threads: int = 8, connection_limit: int = 500, extender_port: int = 8443,
          poller: Any = None) -> None:
    """Serve the API for ``twin`` until the process is stopped; then stop the feed and close the substrate.

    With ``extender`` its routes join the API, or, given ``tls_context``, are served over mutual
    TLS on ``extender_port`` instead. ``poller`` (a :class:`dtlab.telemetry.TelemetryPoller`)
    feeds the state from Prometheus (``--prometheus``).
    """
    from .app import create_app

    stop = threading.Event()
    if substrate is not None:
        threading.Thread(target=feed, args=(substrate, twin.state, stop), daemon=True, name="feed").start()
    if poller is not None:
        threading.Thread(target=poll_into, args=(poller, twin.state, stop), daemon=True, name="telemetry").start()
    app = create_app(twin, config, extender=None if tls_context is not None else extender)
    tls_server = None
    try:
        if tls_context is not None:
            from ..extender import extender_app
            from .tls import serve_in_thread
            try:
                tls_server = serve_in_thread(extender_app(extender, config.max_body_bytes), host,
                                             extender_port, tls_context)
            except OSError as exc:
                raise DtlabError(f"cannot listen on {host}:{extender_port} for the extender: "
                                 f"{exc.strerror or exc}") from None
            print(f"dtlab serve: scheduler extender at https://{host}:{extender_port}/extender/"
                  "{filter,prioritize} (client certificate required)", file=sys.stderr, flush=True)
        elif extender is not None:
            where = "/extender/<DTLAB_EXTENDER_SECRET>/" if config.extender_secret else "/extender/ (unauthenticated)"
            print(f"dtlab serve: scheduler extender at {where}{{filter,prioritize}}", file=sys.stderr, flush=True)
        from .asgi import ServiceFront, listen, run
        front = ServiceFront(app, extender=None if tls_context is not None else extender, wsgi_threads=threads)
        _raise_fd_limit(connection_limit + 64)
        sockets = listen(host, port)
        print(f"dtlab serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)
        _exit_on_sigterm()
        run(front, sockets, connection_limit)
    finally:
        stop.set()
        if tls_server is not None:
            tls_server.shutdown()
            tls_server.server_close()
        if substrate is not None:
            substrate.close()


def _exit_on_sigterm() -> None:
    """SIGTERM ends ``dtlab serve`` through :func:`serve`'s ``finally`` (the feed stops, the substrate
    closes), exit status 0: uvicorn shuts down gracefully on it, then raises it again with the handler
    it found, this one. (The default handler would end the process there, skipping the cleanup.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _raise_fd_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` sockets (soft RLIMIT_NOFILE up to the hard limit)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY
                                                        else wanted, hard))
    except (ImportError, ValueError, OSError):
        pass
