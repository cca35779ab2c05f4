"""``dtlab operator`` (the reconcile loop behind a Lease) and ``dtlab submit --operator``.

``dtlab operator`` runs one replica: every ``--retry-period-s`` it tries to acquire or renew
the Lease (:mod:`dtlab.operator.lease`); while it leads, it reconciles every open DTJob each
``--resync-s`` (:mod:`dtlab.operator.reconciler`). Start two or more for high availability:
only the leader acts; a killed leader is replaced within lease duration + retry period. It is
level-triggered by periodic LISTs (DTJobs, their pods, nodes) rather than by watch events, so
a lost event or a restart cannot leave anything behind; the cost is three LISTs per resync.
SIGTERM/SIGINT: finish the DTJob in progress, give the Lease up, exit 0.

``dtlab submit JOB --operator`` creates a DTJob from a Job spec file and waits until the
operator recorded its plan (printed), with ``--wait`` until it finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from ..errors import DtlabError, SpecError, SubstrateUnavailable

log = logging.getLogger("dtlab.operator")


def register(sub: Any) -> None:
    p = sub.add_parser("operator", help="run the DT controller as a Kubernetes operator (DTJob custom resources)",
                       description="Reconcile DTJobs (dtlab.io/v1alpha1): plan once into status, create stage pods "
                                   "from the recorded plan, advance from pod phases, fail over to recorded shadows. "
                                   "Leader election on a coordination.k8s.io Lease: run several replicas.")
    p.add_argument("--kubeconfig", help="kubeconfig (default: the running local plane --plane)")
    p.add_argument("--plane", default="default", help="local plane name when --kubeconfig is not given")
    p.add_argument("--namespace", default="dtlab", help="namespace of DTJobs, pods and the Lease (default dtlab)")
    p.add_argument("--cluster", help="Cluster spec for the links between zones (Kubernetes does not know them)")
    p.add_argument("--identity", help="this replica's name in the Lease (default host-pid-random)")
    p.add_argument("--lease-name", default="dtlab-operator", help="Lease name (default dtlab-operator)")
    p.add_argument("--lease-duration-s", type=float, default=15.0, help="default 15 (as client-go)")
    p.add_argument("--renew-deadline-s", type=float, default=10.0, help="default 10 (as client-go)")
    p.add_argument("--retry-period-s", type=float, default=2.0, help="default 2 (as client-go)")
    p.add_argument("--resync-s", type=float, default=0.5, help="seconds between reconcile passes (default 0.5)")
    p.add_argument("--duration-s", type=float, help="stop after this many seconds")
    p.add_argument("--no-install-crd", action="store_true", help="do not create/update the DTJob CRD at start")
    p.add_argument("--record", help="JSON-lines record of every action (plan, create, failover, ...)")
    p.set_defaults(func=run)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise SpecError(name, f"must be > 0, got {value!r}")


def _kubeconfig(args: argparse.Namespace) -> str:
    from ..kube import localplane as lp
    import os
    if args.kubeconfig and not os.path.isfile(args.kubeconfig):
        raise SpecError("--kubeconfig", f"no such file: {args.kubeconfig}")
    kc = args.kubeconfig or lp.kubeconfig(args.plane)
    if kc is None:
        raise SubstrateUnavailable(f"no --kubeconfig and local plane {args.plane!r} is not running "
                                   "(`dtlab cluster up`)")
    return kc


def run(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from ..kube.actuator import Actuator, KubeError
    from ..substrates.kube import _ensure_runtime_class
    from ..operator.crd import install_on
    from ..operator.lease import LeaseElector, default_identity
    from ..operator.reconciler import KubeIO, Reconciler, twin_planner

    for name in ("--lease-duration-s", "--renew-deadline-s", "--retry-period-s", "--resync-s", "--duration-s"):
        _positive(name, getattr(args, name[2:].replace("-", "_")))
    if not args.retry_period_s < args.renew_deadline_s < args.lease_duration_s:
        raise SpecError("--renew-deadline-s", "need --retry-period-s < --renew-deadline-s < --lease-duration-s")
    if args.cluster:
        from ..model import load_cluster
        load_cluster(args.cluster)     # a bad links file fails now, not at the first plan
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    kc = _kubeconfig(args)
    identity = args.identity or default_identity()
    api = config.new_client_from_config(config_file=kc)
    actuator = Actuator(core=client.CoreV1Api(api), namespace=args.namespace, deadline_s=20.0)
    if not args.no_install_crd:
        install_on(kc)
    try:
        actuator.ensure_namespace()
    except KubeError as exc:
        if exc.status != 403:    # least-privilege RBAC may not create namespaces: it must exist then
            raise
    _ensure_runtime_class(actuator)   # wasm stages name it; a 403 (least-privilege RBAC) is fine
    elector = LeaseElector(client.CoordinationV1Api(api), identity, name=args.lease_name, namespace=args.namespace,
                           lease_s=args.lease_duration_s, renew_deadline_s=args.renew_deadline_s,
                           retry_s=args.retry_period_s)
    record = open(args.record, "a", buffering=1) if args.record else None
    rec = Reconciler(KubeIO(actuator, client.CustomObjectsApi(api), args.namespace), identity,
                     planner=twin_planner(kc, args.namespace, args.cluster), record=record)
    rec.note("start", "", namespace=args.namespace, lease=args.lease_name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    t_end = None if args.duration_s is None else time.monotonic() + args.duration_s
    leading = False
    next_pass = 0.0

    def heartbeat() -> bool:
        """Between DTJobs: renew when due; act only while leading and not stopping."""
        if elector.due():
            elector.tick()
        return elector.is_leader() and not stop.is_set()

    log.info("operator %s started (namespace %s, lease %s/%s %.0f s)", identity, args.namespace, args.namespace,
             args.lease_name, args.lease_duration_s)
    try:
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            if elector.due():
                elector.tick()
            if elector.is_leader() != leading:
                leading = elector.is_leader()
                log.info("operator %s %s", identity, "is the leader" if leading else "is not the leader")
                rec.note("leader" if leading else "follower", "")
            if leading and time.monotonic() >= next_pass:
                try:
                    rec.pass_once(heartbeat)
                except DtlabError as exc:        # listing failed for good: try again next pass
                    log.error("reconcile pass failed: %s", exc)
                next_pass = time.monotonic() + args.resync_s
            wait = elector.wait_s()
            if leading:
                wait = min(wait, max(0.0, next_pass - time.monotonic()))
            stop.wait(max(0.01, wait))
    finally:
        elector.release()
        log.info("operator %s stopped: %s", identity, json.dumps(rec.counts))
        if record is not None:
            rec.note("stopped", "", counts=rec.counts)
            record.close()
    return 0


# ------------------------------------------------------------------ submit --operator
def submit(args: argparse.Namespace) -> int:
    """``dtlab submit JOB --operator``: create a DTJob, wait for its plan (and with --wait its end)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from ..model import load_job
    from ..operator.crd import GROUP, PLURAL, TERMINAL, VERSION
    from ..operator.spec import dtjob_for

    kc = _kubeconfig(args)
    job = load_job(args.job)                 # the twin's own checks, with field paths, before the API sees it
    body = dtjob_for(job, name=args.job_name, namespace=args.namespace, policy=args.policy,
                     samples=args.samples, seed=args.seed, timeScale=args.time_scale)
    name = body["metadata"]["name"]
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=kc))
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, body, _request_timeout=30)
    except ApiException as exc:
        if exc.status == 404 and "namespaces" in _api_message(exc):
            raise SubstrateUnavailable(f"namespace {args.namespace!r} does not exist") from None
        if exc.status == 404:
            raise SubstrateUnavailable("the DTJob CRD is not installed (`dtlab cluster up` installs it, or "
                                       "kubectl apply -f cluster/manifests/dtjob-crd.yaml)") from None
        if exc.status == 422:
            raise SpecError("DTJob", _api_message(exc)) from None
        if exc.status == 409:
            raise DtlabError(f"DTJob {args.namespace}/{name} already exists (use --job-name)") from None
        raise DtlabError(f"create DTJob {args.namespace}/{name}: {exc.status} {_api_message(exc)}") from None
    deadline = time.monotonic() + args.timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj: Any = custom.get_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, name,
                                                       _request_timeout=30)
        status = obj.get("status") or {}
        if status.get("phase") in TERMINAL or (status.get("plans") and not args.wait):
            break
        time.sleep(0.25)
    out = {"dtjob": f"{args.namespace}/{name}", **status}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        _print_status(name, status)
    if not status.get("plans") and status.get("phase") != "Invalid":
        print(f"dtlab submit: no operator recorded a plan for DTJob {name} within {args.timeout:g} s "
              "(is `dtlab operator` running?)", file=sys.stderr)
        return 1
    if args.wait and status.get("phase") not in TERMINAL:
        print(f"dtlab submit: DTJob {name} did not finish within {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0 if status.get("phase") not in ("Failed", "Invalid") else 1


def _print_status(name: str, status: dict[str, Any]) -> None:
    print(f"dtjob {name}: phase {status.get('phase', '-')}"
          + (f" ({status['message']})" if status.get("message") else ""))
    for plan in status.get("plans") or []:
        pred = plan.get("prediction") or {}
        print(f"  plan v{plan['version']} ({plan.get('reason')}, {plan.get('policy')}, by {plan.get('by')}): "
              f"predicted mean {pred.get('mean_ms', float('nan')):.0f} ms, p95 {pred.get('p95_ms', float('nan')):.0f} ms")
        for sid, node in plan["placement"].items():
            shadow = (plan.get("shadow") or {}).get(sid)
            print(f"    {sid:<14} -> {node:<16}" + (f" shadow {shadow}" if shadow else ""))
    stages = status.get("stages") or {}
    if stages:
        print(f"  {'stage':<14} {'node':<16} {'pod':<34} {'attempt':>7}  phase")
        for sid, st in stages.items():
            print(f"  {sid:<14} {str(st.get('node') or '-'):<16} {str(st.get('pod') or '-'):<34} "
                  f"{st.get('attempt', -1):>7}  {st['phase']}")


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or str(exc.reason)
    except (ValueError, TypeError, AttributeError):
        return str(getattr(exc, "reason", exc))
