"""`dtlab chaos validate | export`: check a FaultScenario and write its Chaos Mesh manifests.

Exit codes: 0 ok, 2 invalid scenario/cluster, or any other dtlab error (the message names the
field; printed by :func:`dtlab.cli.main` as ``dtlab chaos validate: MESSAGE``, see ``on_error``).
"""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import DtlabError


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..chaos.spec import load_scenario, scenario_path
    from ..model import load_cluster

    scenario = load_scenario(scenario_path(args.scenario))
    cluster = load_cluster(args.cluster) if args.cluster else scenario.cluster()
    return scenario, cluster


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..chaos.spec import expand

    scenario, cluster = _load(args)
    if cluster is None:
        print(f"{scenario.name}: {len(scenario.faults)} fault(s) valid (structure only: "
              f"no cluster given, selectors not resolved)")
        return 0
    events = expand(scenario, cluster)
    print(f"{scenario.name}: valid on cluster {cluster.name!r}: {len(events)} fault event(s), "
          f"ends at {scenario.end_s:g} s")
    for ev in events:
        where = ", ".join(ev.nodes) if ev.nodes else (
            " | ".join(f"{a}<->{b}" for a, b in ev.pairs) if ev.pairs else f"job {ev.job} stage {ev.stage or '*'}")
        until = f"-{ev.end_s:g}" if ev.duration_s is not None else ("-" if ev.kind == "node-failure" else "")
        print(f"  {ev.start_s:g}{until} s  {ev.kind:<17} {where}  ({ev.origin})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..chaos import export
    from ..pathcheck import output_dir

    output_dir(args.out, "manifest directory")
    scenario, cluster = _load(args)
    if cluster is not None:
        from ..chaos.spec import expand
        expand(scenario, cluster)  # reject selectors that match nothing before writing anything
    written = export.write(scenario, args.out, cluster=cluster, namespace=args.namespace)
    print(f"wrote {len(written)} manifest(s) under {written[0].parent}: apply workflow.yaml for the "
          f"timed scenario (needs Chaos Mesh), or one file of standalone/ for a single fault")
    return 0


def register(subparsers: Any) -> None:
    """Add ``chaos validate`` and ``chaos export`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("chaos", help="fault scenarios: validate, export to Chaos Mesh")
    sub = p.add_subparsers(dest="chaos_command", required=True)
    v = sub.add_parser("validate", help="validate a FaultScenario (and resolve it on a cluster)")
    v.add_argument("scenario", help="scenario file, or a name in chaos/scenarios/")
    v.add_argument("--cluster", help="Cluster spec (default: the scenario's `cluster:`)")
    v.set_defaults(func=_cmd_validate, on_error=((DtlabError, 2, "dtlab chaos validate: "),))
    e = sub.add_parser("export", help="write Chaos Mesh manifests (Workflow + NetworkChaos/PodChaos)")
    e.add_argument("scenario", help="scenario file, or a name in chaos/scenarios/")
    e.add_argument("-o", "--out", default="chaos/exported", help="output directory (default: chaos/exported)")
    e.add_argument("--cluster", help="Cluster spec (default: the scenario's `cluster:`)")
    e.add_argument("-n", "--namespace", default="dtlab", help="workload namespace (default: dtlab)")
    e.set_defaults(func=_cmd_export, on_error=((DtlabError, 2, "dtlab chaos export: "),))

