"""``dtlab controller``: the sense-simulate-act loop as a long-running service.

This module is the command (flags, substrate, twin, metrics and API servers); the service itself
is :class:`dtlab.controller_service.ControllerService`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Iterable

from ..errors import SpecError
from .args import port


def register(sub: Any) -> None:
    """Add ``controller``."""
    p = sub.add_parser("controller", help="run the sense-simulate-act controller as a service",
                       description="Plan each arriving job on the twin and run it on the substrate; fail stages "
                                   "over to their shadows on node-down; refuse plans on stale telemetry; "
                                   "export metrics; stop cleanly on SIGTERM.")
    p.add_argument("--substrate", required=True, choices=["sim", "fabric", "kube"])
    p.add_argument("--cluster", required=True, help="Cluster spec the substrate runs (and the twin starts from)")
    p.add_argument("--workload", help="Workload spec of arriving jobs (none: serve plans handed in via --api-port)")
    p.add_argument("--jobs", type=int, help="override the workload's job count")
    p.add_argument("--rate", type=float, help="override the workload's arrival rate (jobs/s)")
    p.add_argument("--policy", default="greedy")
    p.add_argument("--predictor", default="fast", choices=["fast", "des", "legacy"])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freshness-s", type=float, help="refuse plans relying on telemetry older than this (seconds)")
    p.add_argument("--prometheus", metavar="URL",
                   help="poll node CPU (background) and memory from this Prometheus into the twin ('auto': the "
                        "fabric's own, with --opt telemetry=prometheus); --freshness-s then defaults to 1 s")
    p.add_argument("--poll-s", type=float, default=0.5, help="with --prometheus: poll interval (default 0.5 s)")
    p.add_argument("--speed", type=float, default=1.0, help="sim: substrate seconds per wall second (default 1)")
    p.add_argument("--duration-s", type=float, help="stop after this many wall seconds")
    p.add_argument("--drain-s", type=float, default=0.0, help="on stop, let in-flight jobs finish for this long")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="substrate option (e.g. failure_rate_per_h=0); repeatable")
    p.add_argument("--record", help="JSON-lines record of every decision and failover (flushed as it happens)")
    p.add_argument("--host", default="127.0.0.1", help="bind address of --port and --api-port")
    p.add_argument("--port", type=port, help="serve Prometheus /metrics on this port (0: any free port)")
    p.add_argument("--api-port", type=port,
                   help="also serve the REST API with this controller attached (non-dry-run /plan acts)")
    p.add_argument("--insecure-dev", action="store_true", help="with --api-port: allow mutating calls without a token")
    p.set_defaults(func=run)


def _opts(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError("--opt", f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    """``dtlab controller``: build the substrate, twin and service from the flags; run until stopped."""
    from ..controller_service import (ControllerService, ServiceConfig, forever, json_default, serve_api,
                                      shutdown_server)
    from ..model import load_cluster
    from ..substrates import make_substrate
    from ..twin import Twin

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.workload and args.duration_s is None and args.api_port is None:
        raise SpecError("--workload", "nothing to do: give --workload, --api-port or --duration-s")
    from .serve import telemetry_options
    if args.prometheus == "auto":
        telemetry_options(argparse.Namespace(prometheus=None, poll_s=args.poll_s, freshness_s=args.freshness_s))
        freshness = 1.0 if args.freshness_s is None else args.freshness_s
    else:
        freshness = telemetry_options(args)
    config = ServiceConfig(policy=args.policy, predictor=args.predictor, samples=args.samples, seed=args.seed,
                           freshness_s=freshness, speed=args.speed, drain_s=args.drain_s)
    cluster = load_cluster(args.cluster)
    stream: Iterable[Any] = ()
    if args.workload:
        import numpy as np

        from ..experiments.params import load_workload_param
        from ..workload.stream import job_stream
        workload = load_workload_param(args.workload, args.jobs, args.rate)
        stream = job_stream(workload, np.random.default_rng(args.seed))
    servers: list[Any] = []
    substrate = make_substrate(args.substrate, cluster, seed=args.seed, **_opts(args.opt))
    record = poller = None
    try:
        record = open(args.record, "a", encoding="utf-8") if args.record else None
        twin = Twin(substrate.cluster())
        if args.prometheus:
            from ..telemetry import PrometheusClient, TelemetryPoller
            url = getattr(substrate, "prometheus_url", None) if args.prometheus == "auto" else args.prometheus
            if not url:
                raise SpecError("--prometheus", "auto needs a substrate that runs its own Prometheus "
                                                "(--substrate fabric --opt telemetry=prometheus)")
            poller = TelemetryPoller(PrometheusClient(url, timeout_s=max(0.2, args.poll_s)), args.poll_s,
                                     clock=getattr(substrate, "ts_of_epoch", None)).start()
        service = ControllerService(twin, substrate, config, record=record, telemetry=poller)
        service.install_signal_handlers()
        if args.port is not None:
            from prometheus_client import start_http_server
            server, _thread = start_http_server(args.port, addr=args.host, registry=service.metrics.registry)
            servers.append(server)
            print(f"dtlab controller: metrics on http://{args.host}:{server.server_address[1]}/metrics",
                  file=sys.stderr, flush=True)
        if args.api_port is not None:
            servers.append(serve_api(service, args.host, args.api_port, args.insecure_dev))
        print(f"dtlab controller: running on substrate {substrate.name} (policy {config.policy})",
              file=sys.stderr, flush=True)
        summary = service.run(stream if args.workload else forever(), duration_s=args.duration_s)
        print(json.dumps(summary, default=json_default, sort_keys=True), flush=True)
    finally:
        for server in servers:
            shutdown_server(server)
        if poller is not None:
            poller.stop()
        substrate.close()
        if record is not None:
            record.close()
    return 0
