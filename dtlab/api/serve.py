"""`dtlab serve`: the REST API on a production WSGI server (waitress), loopback by default."""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from ..errors import DtlabError
from .app import ApiConfig, create_app


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the DT REST API (plan, observe, snapshot, metrics)")
    p.add_argument("--cluster", required=True,
                   help="Cluster spec the twin's state starts from (with --substrate: the nodes it runs)")
    p.add_argument("--substrate", choices=["sim", "fabric", "kube"],
                   help="also start from what this substrate's observer sees (its events feed the state)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--insecure-dev", action="store_true",
                   help="allow mutating calls without DTLAB_API_TOKEN (local experiments only)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--extender", action="store_true",
                   help="also serve the kube-scheduler extender routes /extender/filter and /extender/prioritize")
    p.add_argument("--kubeconfig", help="with --extender: annotate pods with the per-node explanation")
    p.set_defaults(func=run)


def build_twin(args):
    from ..model import load_cluster
    from ..twin import Twin

    cluster = load_cluster(args.cluster)
    if args.substrate is None:
        return Twin(cluster), None
    from ..substrates import make_substrate  # substrate-backed state: the observer feeds the twin
    substrate = make_substrate(args.substrate, cluster)
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


def run(args: argparse.Namespace) -> int:
    from waitress import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    twin, substrate = build_twin(args)
    stop = threading.Event()
    if substrate is not None:
        threading.Thread(target=feed, args=(substrate, twin.state, stop), daemon=True, name="feed").start()
    config = ApiConfig(insecure_dev=args.insecure_dev, max_body_bytes=args.max_body_bytes)
    if config.token is None and not config.insecure_dev:
        print("dtlab serve: DTLAB_API_TOKEN is not set: /observe and non-dry-run /plan will be refused",
              file=sys.stderr)
    extender = None
    if args.extender:
        from ..extender import Extender, kube_annotator
        annotate = None
        if args.kubeconfig:
            from kubernetes import client, config as kconfig
            kconfig.load_kube_config(args.kubeconfig)
            annotate = kube_annotator(client.CoreV1Api())
        extender = Extender(twin, annotate=annotate)
    app = create_app(twin, config, extender=extender)
    print(f"dtlab serve: listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        serve(app, host=args.host, port=args.port, threads=args.threads, ident="dtlab")
    finally:
        stop.set()
        if substrate is not None:
            substrate.close()
    return 0
