"""`dtlab serve`: the REST API on a production WSGI server (waitress), loopback by default."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import DtlabError
from .app import ApiConfig, create_app


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the DT REST API (plan, observe, snapshot, metrics)")
    p.add_argument("--cluster", help="Cluster spec the twin's state starts from (required for sim and fabric)")
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

    from ..errors import SpecError

    cluster = load_cluster(args.cluster) if args.cluster else None
    if args.substrate is None:
        if cluster is None:
            raise SpecError("--cluster", "give a Cluster spec, or --substrate to observe one")
        return Twin(cluster), None
    if cluster is None and args.substrate != "kube":
        raise SpecError("--cluster", f"the {args.substrate} substrate is built from a Cluster spec")
    from ..substrates import make_substrate  # substrate-backed state: the observer feeds the twin
    substrate = make_substrate(args.substrate, cluster)
    twin = Twin(substrate.cluster())
    twin.state.apply_many(substrate.events())
    return twin, substrate


def run(args: argparse.Namespace) -> int:
    from waitress import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    twin, _substrate = build_twin(args)
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
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="dtlab")
    return 0
