"""The fabric: real execution on this host (cgroups, network namespaces, multi-arch workers).

``available()`` is the fabric's availability check (registered with :mod:`dtlab.substrates`, whose
``pick`` is the one ``substrate: auto`` rule); it names every missing piece so the fallback message
in the output and run.json says why.
"""
from __future__ import annotations

import os
import shutil


def available(require_formats: bool = True) -> tuple[bool, str]:
    """(True, "") when this host can run the fabric substrate, else (False, what is missing)."""
    from ..errors import SubstrateUnavailable
    from . import cgroups, netns, worker

    missing: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        missing.append("root privileges (cgroups and network namespaces need root)")
    try:
        cgroups.detect()
    except SubstrateUnavailable as exc:
        missing.append(str(exc))
    why = netns.missing_tools()
    if why:
        missing.append(why)
    if not os.path.isdir("/var/run/netns") and shutil.which("ip") and os.geteuid() == 0:
        pass   # created by the first `ip netns add`
    formats = worker.FORMATS if require_formats else ("native",)
    for fmt in formats:
        why = worker.missing(fmt)
        if why:
            missing.append(f"{fmt}: {why}")
    return (not missing), "; ".join(missing)


__all__ = ["available"]
