"""``dtlab serve``: the REST API on uvicorn (``dtlab.api.asgi``: /plan, /healthz and the extender on its event
loop, the other routes in the Flask app), loopback by default.

This module is the command (flags, their checks, the API limits, the TLS context, the twin and the
scheduler extender); serving them is :func:`dtlab.api.serve.serve`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..api.limits import ApiConfig
from ..errors import SpecError
from .args import port


def register(sub: Any) -> None:
    """Add ``serve``."""
    p = sub.add_parser("serve", help="serve the DT REST API (plan, observe, snapshot, metrics)")
    p.add_argument("--cluster", required=True,
                   help="Cluster spec the twin's state starts from (with --substrate: the nodes it runs)")
    p.add_argument("--substrate", choices=["sim", "fabric", "kube"],
                   help="also start from what this substrate's observer sees (its events feed the state)")
    p.add_argument("--plane", help="with --substrate kube: the local plane's name (default 'default')")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=port, default=8080)
    p.add_argument("--insecure-dev", action="store_true",
                   help="allow mutating calls without DTLAB_API_TOKEN (local experiments only)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000,
                   help="largest request body; a larger one is a 413 at once (default 1,000,000)")
    p.add_argument("--threads", type=int, default=8,
                   help="threads for the routes the Flask app answers (/observe, /snapshot, /metrics; default 8)")
    p.add_argument("--max-inflight", type=int, default=2, help="plans computing at once; more get 429 (default 2)")
    p.add_argument("--max-work", type=float, default=ApiConfig.max_work,
                   help="work cap of one /plan with a valid token: stages x (500 + samples x 2.5 fast, "
                        "2 legacy, 50 des), about its microseconds of CPU (default "
                        f"{ApiConfig.max_work:,.0f} = about 2 s of a core)")
    p.add_argument("--max-work-anonymous", type=float, default=ApiConfig.max_work_anonymous,
                   help=f"the same cap without a token (default {ApiConfig.max_work_anonymous:,.0f})")
    p.add_argument("--request-timeout", type=float, default=ApiConfig.request_timeout_s,
                   help="seconds before a plan answers 503 (default 10)")
    p.add_argument("--connection-limit", type=int, default=500,
                   help="open connections at once (default 500; more are closed; idle ones close after 30 s)")
    p.add_argument("--prometheus", metavar="URL",
                   help="poll node CPU (background) and memory from this Prometheus (the per-node cgroup "
                        "exporters' series, see dtlab.telemetry) into the twin's state ('auto': the substrate's "
                        "own: --substrate kube on a plane up with --telemetry prometheus)")
    p.add_argument("--poll-s", type=float, default=0.5, help="with --prometheus: poll interval (default 0.5 s)")
    p.add_argument("--freshness-s", type=float, default=None,
                   help="refuse plans (503) relying on telemetry older than this; default with --prometheus: "
                        "1 s (the design's budget), without: off")
    p.add_argument("--extender", action="store_true",
                   help="also serve the kube-scheduler extender routes /extender/filter and /extender/prioritize")
    p.add_argument("--kubeconfig", help="with --extender: annotate pods with the per-node explanation")
    p.add_argument("--extender-tls-cert", help="with --extender: serve its routes over mutual TLS with this "
                   "server certificate (PEM) on --extender-port instead of on the plain port")
    p.add_argument("--extender-tls-key", help="the certificate's private key (PEM; default: inside the cert file)")
    p.add_argument("--extender-client-ca", help="CA (PEM) that signed the scheduler's client certificate")
    p.add_argument("--extender-port", type=port, default=8443, help="mutual-TLS extender port (default 8443)")
    p.add_argument("--extender-max-nodes", type=int, default=None,
                   help="node names per extender call (default: max(5000, 2 x the cluster's nodes); "
                        "never below the node count)")
    p.set_defaults(func=run)


def telemetry_options(args: argparse.Namespace) -> float | None:
    """Check --prometheus/--poll-s/--freshness-s; the freshness budget to enforce (None: off)."""
    if not 0.01 <= args.poll_s <= 3600:
        raise SpecError("--poll-s", f"must be in [0.01, 3600] seconds (got {args.poll_s:g})")
    if args.freshness_s is not None and not 0 < args.freshness_s <= 86400:
        raise SpecError("--freshness-s", f"must be in (0, 86400] seconds (got {args.freshness_s:g})")
    if args.prometheus:
        if args.prometheus != "auto" and not str(args.prometheus).startswith(("http://", "https://")):
            raise SpecError("--prometheus", f"must be an http(s) URL (got {args.prometheus!r})")
        from ..telemetry import DEFAULT_FRESHNESS_S
        return DEFAULT_FRESHNESS_S if args.freshness_s is None else float(args.freshness_s)
    return args.freshness_s


def run(args: argparse.Namespace) -> int:
    """``dtlab serve``: check the flags, build the twin (and extender), serve until stopped."""
    from ..api.serve import build_twin, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("threads", "max_body_bytes", "max_inflight", "connection_limit", "max_work", "max_work_anonymous",
                 "request_timeout"):
        if not getattr(args, name) > 0:
            raise SpecError("--" + name.replace("_", "-"), "must be > 0")
    freshness = telemetry_options(args)
    config = ApiConfig(insecure_dev=args.insecure_dev, max_body_bytes=args.max_body_bytes,
                       max_inflight=args.max_inflight, max_work=args.max_work,
                       max_work_anonymous=args.max_work_anonymous, request_timeout_s=args.request_timeout,
                       freshness_s=freshness)
    if config.token is None and not config.insecure_dev:
        print("dtlab serve: DTLAB_API_TOKEN is not set: /observe and non-dry-run /plan will be refused",
              file=sys.stderr)
    context = None
    if args.extender_tls_cert or args.extender_client_ca:
        if not (args.extender and args.extender_tls_cert and args.extender_client_ca):
            raise SpecError("--extender-tls-cert", "mutual TLS needs --extender, --extender-tls-cert and "
                                                   "--extender-client-ca together")
        import ssl

        from ..api.tls import server_context
        from ..pathcheck import input_file
        for option in ("extender_tls_cert", "extender_tls_key", "extender_client_ca"):
            if getattr(args, option):
                input_file(getattr(args, option), "--" + option.replace("_", "-") + " file")
        try:
            context = server_context(args.extender_tls_cert, args.extender_tls_key, args.extender_client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise SpecError("--extender-tls-cert", f"cannot load the certificate, key or CA: {exc}") from None
    if args.extender and context is None and config.extender_secret is None and not config.insecure_dev:
        raise SpecError("DTLAB_EXTENDER_SECRET", "--extender needs a secret path prefix for its caller "
                        "(the scheduler's urlPrefix: http://HOST:PORT/extender/<secret>), or --insecure-dev")
    if args.prometheus == "auto" and args.substrate not in ("fabric", "kube"):
        raise SpecError("--prometheus", "auto needs --substrate kube (a plane up with --telemetry prometheus) "
                                        "or a URL")
    if args.plane is not None and args.substrate != "kube":
        raise SpecError("--plane", "only with --substrate kube")
    twin, substrate = build_twin(args.cluster, args.substrate, **({"plane": args.plane} if args.plane else {}))
    extender = None
    if args.extender:
        from ..extender import Extender, kube_annotator
        annotate = None
        if args.kubeconfig:
            from kubernetes import client, config as kconfig
            kconfig.load_kube_config(args.kubeconfig)
            annotate = kube_annotator(client.CoreV1Api())
        extender = Extender(twin, annotate=annotate, max_nodes=args.extender_max_nodes)
    poller = None
    if args.prometheus:
        from ..telemetry import PrometheusClient, TelemetryPoller
        url = getattr(substrate, "prometheus_url", None) if args.prometheus == "auto" else args.prometheus
        if not url:
            substrate.close()
            raise SpecError("--prometheus", "auto needs a substrate that runs its own Prometheus (--substrate "
                                            "kube on a plane started with `dtlab cluster up --telemetry prometheus`)")
        # epoch stamps, not the substrate's clock: the API checks freshness (and /metrics ages) against
        # time.time(); in the substrate's clock every node would look ~1.7e9 s old (every plan 503)
        poller = TelemetryPoller(PrometheusClient(url, timeout_s=max(0.2, args.poll_s)), args.poll_s)
        print(f"dtlab serve: polling {url} every {args.poll_s:g} s; plans on telemetry older than "
              f"{freshness:g} s are refused", file=sys.stderr, flush=True)
    serve(twin, config, substrate=substrate, extender=extender, tls_context=context, host=args.host,
          port=args.port, threads=args.threads, connection_limit=args.connection_limit,
          extender_port=args.extender_port, poller=poller)
    return 0
