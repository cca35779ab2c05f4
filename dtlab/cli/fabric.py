"""``dtlab calibrate compute|network|startup`` and ``dtlab fabric cleanup``.

``calibrate compute`` measures execution-format overhead factors on this host and writes the host
calibration YAML the twin loads (``TimingModel.with_overheads``); ``calibrate network`` samples
latency and throughput between fabric namespaces; ``fabric cleanup`` removes every cgroup,
namespace and veth a crashed fabric run left behind (by name prefix).
"""
from __future__ import annotations

import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    cal = subparsers.add_parser("calibrate", help="measure this host: format overheads, network",
                                description="Measure execution-format overhead factors (compute) or "
                                            "namespace RTT/throughput (network) on this host.")
    csub = cal.add_subparsers(dest="calibrate_cmd", required=True)
    comp = csub.add_parser("compute", help="overhead factor per format and kernel, with 95%% CIs")
    comp.add_argument("--quick", action="store_true", help="3 repetitions of ~30 ms kernels (under a minute)")
    comp.add_argument("--out", default=None, help="output YAML (default ${DTLAB_CACHE:-~/.cache/dtlab}/calibration.host.yaml)")
    comp.add_argument("--reps", type=int, default=None, help="repetitions (default 3 quick / 10 full)")
    comp.add_argument("--formats", default=None, help="comma-separated subset of formats")
    comp.add_argument("--kernels", default=None, help="comma-separated subset of kernels")
    comp.add_argument("--compare", action="store_true", help="also print the comparison with published figures")
    comp.set_defaults(func=run_compute)
    net = csub.add_parser("network", help="RTT and throughput between fabric namespaces, or between real "
                                          "kube nodes' pods (root)")
    net.add_argument("--reps", type=int, default=5)
    net.add_argument("--out", default=None, help="write the samples as YAML here")
    net.add_argument("--substrate", choices=("fabric", "kube"), default="fabric",
                     help="kube: over the shaped pod network between the real nodes of a running local "
                          "plane (one per zone of --cluster); the fitted links are cached for the twin")
    net.add_argument("--cluster", default=None, help="Cluster spec whose zone links are measured (kube)")
    net.add_argument("--plane", default="default", help="local plane name (kube)")
    net.set_defaults(func=run_network)
    up = csub.add_parser("startup", help="start-up ms per format on the fabric's launch path (root), or of real "
                                         "pods on kube real nodes; the twin uses it")
    up.add_argument("--reps", type=int, default=None, help="stages per format (default 7)")
    up.add_argument("--out", default=None, help="output YAML (default: the cache the twin reads, "
                                                 "${DTLAB_CACHE:-~/.cache/dtlab}/calibration.startup.<build>.yaml)")
    up.add_argument("--substrate", choices=("fabric", "kube"), default="fabric",
                    help="kube: pod create -> worker start of real pods on the real nodes of a running local "
                         "plane (the kube twin's cache, calibration.startup.kube.<build>.yaml)")
    up.add_argument("--cluster", default=None, help="Cluster spec whose real nodes are probed (kube)")
    up.add_argument("--plane", default="default", help="local plane name (kube)")
    up.set_defaults(func=run_startup)
    fab = subparsers.add_parser("fabric", help="fabric maintenance")
    fsub = fab.add_subparsers(dest="fabric_cmd", required=True)
    clean = fsub.add_parser("cleanup", help="remove leftover dtlab cgroups, namespaces, veths and their processes")
    clean.set_defaults(func=run_cleanup)


def _check_out(out: str | None) -> None:
    """``--out`` checked before a measurement that takes minutes (a directory or an unwritable path
    would otherwise fail only when the results are written: exit 2 at once instead)."""
    if out:
        from ..pathcheck import output_file
        output_file(out, "calibration YAML")


def run_compute(args) -> int:
    from ..fabric import calibrate

    def progress(i, n):
        print(f"  repetition {i}/{n}", file=sys.stderr, flush=True)

    _check_out(args.out)

    doc = calibrate.measure_compute(
        quick=args.quick, reps=args.reps,
        formats=args.formats.split(",") if args.formats else None,
        kernels=args.kernels.split(",") if args.kernels else None, progress=progress)
    path = calibrate.write(doc, args.out)
    print(f"wrote {path}")
    for fmt, per in doc["factors"].items():
        cells = ", ".join(f"{k} {v['factor']:.2f} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]" for k, v in per.items())
        print(f"  {fmt:13s} {cells}")
    print("  startup_ms: " + ", ".join(f"{k} {v}" for k, v in doc["startup_ms"].items()))
    for fmt, why in doc["unavailable"].items():
        print(f"  {fmt}: not measured ({why})")
    en = doc.get("energy") or {}
    if en.get("per_format"):
        m = en["model"]
        print(f"  energy per run (proxy: process CPU time x {m['busy_w_per_core']} W/core, {m['arch']} "
              f"{m['node_class']} model; not a measurement):")
        for fmt, v in en["per_format"].items():
            print(f"    {fmt:13s} {v['energy_proxy_j']:.4g} J  ({v['vs_native']}x native, CPU {v['cpu_ms_median']:.1f} ms)")
        print(f"  RAPL: {en['rapl']['why']}")
    if args.compare:
        df = calibrate.compare_published(doc)
        print(df.to_string(index=False))
        print(calibrate.qemu_claim_verdict(df))
    return 0


def run_network(args) -> int:
    from ..fabric import host_calibration as host
    from ..errors import SpecError

    if not 1 <= args.reps <= 50:
        raise SpecError("--reps", f"must be in [1, 50], got {args.reps}")
    _check_out(args.out)
    if args.substrate == "kube":
        from ..model import load_cluster
        from ..pathcheck import input_file
        if not args.cluster:
            raise SpecError("--cluster", "required with --substrate kube (the zone links to measure)")
        doc, path = host.network_calibration(load_cluster(input_file(args.cluster, "--cluster")),
                                             reps=args.reps, refresh=True, substrate="kube", plane=args.plane)
        print(f"netem available: {doc['netem']}; probes {doc.get('probes')}; fitted links cached in {path}")
        for r in doc["samples"]:
            print(f"  {r['src']}->{r['dst']} {r['size_mb']:>7} MB  median {r['median_ms']:.1f} ms "
                  f"(predicted {r['predicted_ms']})  via {r['mechanism']}")
        for l in doc["links"]:
            print(f"  fit {l['a']}<->{l['b']}: latency {l['latency_ms']} ms, goodput {l['goodput_mbps']} Mbit/s "
                  f"(MAPE {l['fit_mape']})")
    else:
        doc = host.measure_network(reps=args.reps)
        print(f"netem available: {doc['netem']}")
        for r in doc["samples"]:
            print(f"  {r['src']}->{r['dst']} {r['size_mb']:>7} MB  median {r['median_ms']:.1f} ms "
                  f"(predicted {r['predicted_ms']:.1f})  via {r['mechanism']}")
    if args.out:
        import yaml
        from pathlib import Path
        Path(args.out).write_text(yaml.safe_dump(doc, sort_keys=False))
        print(f"wrote {args.out}")
    return 0


def run_startup(args) -> int:
    """Measure (and cache, per worker build) the start-up cost per format the twin adds to every stage: on the
    fabric's launch path, or (``--substrate kube``) of real pods on the real nodes of a running plane."""
    from ..fabric import host_calibration as host
    from ..errors import SpecError
    from ..fabric import calibrate

    if args.reps is not None and not 1 <= args.reps <= 100:
        raise SpecError("--reps", f"must be in [1, 100], got {args.reps}")
    _check_out(args.out)
    if args.substrate == "kube":
        from ..kube import startup as kube_startup
        from ..model import load_cluster
        from ..pathcheck import input_file
        if not args.cluster:
            raise SpecError("--cluster", "required with --substrate kube (its real nodes are probed)")
        if args.reps is not None and args.reps > 50:
            raise SpecError("--reps", f"must be in [1, 50] with --substrate kube, got {args.reps}")
        doc = kube_startup.measure_startup(load_cluster(input_file(args.cluster, "--cluster")), plane=args.plane,
                                           reps=args.reps or kube_startup.STARTUP_REPS)
        path = calibrate.write(doc, args.out or calibrate.startup_cache_path("kube"))
    else:
        doc = host.measure_startup(reps=args.reps or calibrate.STARTUP_REPS)
        path = calibrate.write(doc, args.out or calibrate.startup_cache_path())
    print(f"wrote {path}")
    for fmt, v in doc["startup_ms"].items():
        print(f"  {fmt:13s} median {v['median_ms']:.1f} ms  (min {v['min_ms']:.1f}, max {v['max_ms']:.1f}, n {v['n']})")
    for fmt, why in doc["unavailable"].items():
        print(f"  {fmt}: not measured ({why})")
    emu = doc.get("emulation") or {}
    for node, v in (emu.get("per_node") or {}).items():
        k = v["kernel_cpu_ms"]
        print(f"  emulation {node} ({v['arch']}): factor {v['factor']:.2f}  (kernel CPU median {k['median_ms']:.1f} ms "
              f"for {emu['work_ms']:.0f} ref ms, n {k['n']})")
    if emu:
        print(f"  emulation reference: {emu['reference']['source']}")
    return 0


def run_cleanup(args) -> int:
    """Remove leftovers of crashed runs -- only while no wall-clock run holds the host lock (a crashed
    run's lock is gone with its process), so a live run's cgroups and namespaces are never swept."""
    from .. import hostlock
    from ..fabric import cgroups, netns
    from ..kube import localplane

    try:
        with hostlock.exclusive("dtlab fabric cleanup", timeout_s=0):
            keep = localplane.live_cgroups()      # a plane that is up holds no lock between runs
            removed = cgroups.sweep(keep=keep) + cgroups.sweep_controllers(keep=keep) + netns.sweep()
    except hostlock.HostBusy as exc:
        print(f"dtlab fabric cleanup: nothing removed, a wall-clock run is live: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"removed": removed, "kept": sorted(keep)}))
    return 0


def _f(x) -> str:
    return "nan" if x is None else f"{x:.2f}"
