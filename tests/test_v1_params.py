"""params/V1-fabric-long.yaml is params/V1.yaml on the fabric with the seeds V1's verdict needs there:
it validates, and differs only in ``substrate`` and ``fabric.seeds`` (so its result is the full V1's
with more seeds, not another experiment)."""
from __future__ import annotations

from pathlib import Path

import yaml

from dtlab.experiments import v1

ROOT = Path(__file__).resolve().parents[1]


def test_fabric_long_params_are_v1_with_more_fabric_seeds():
    full = yaml.safe_load((ROOT / "params/V1.yaml").read_text())
    long = yaml.safe_load((ROOT / "params/V1-fabric-long.yaml").read_text())
    v1.check(long)
    assert long.pop("substrate") == "fabric" and full.pop("substrate") == "auto"
    seeds = long["fabric"].pop("seeds")
    assert seeds == list(range(32)) and len(seeds) > len(full["fabric"].pop("seeds"))
    assert long == full
