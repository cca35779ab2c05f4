"""V2 with vs without telemetry on the fabric, paired by seed (issue 20).

Runs ``params/V2-telemetry-off.yaml`` and ``params/V2-telemetry.yaml`` one seed at a time, the two
arms interleaved (off/on, on/off, off/on ...) so slow drifts of this shared host's load fall on both,
then pairs the per-seed MAPE of each predictor with :func:`dtlab.stats.paired_diff_ci`
(on - off: negative = telemetry lowered the error). ``--pair-only`` pairs the finished runs under
``--out`` without running anything. Not in ``make bench``: about 1 minute of wall time per run,
plus waits for the host lock.

Usage: python benchmarks/v2_telemetry_pairs.py [--seeds 0 1 2] [--out /tmp/v2-telemetry] [--pair-only]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"none": ROOT / "params" / "V2-telemetry-off.yaml", "prometheus": ROOT / "params" / "V2-telemetry.yaml"}
PREDICTORS = ("fast", "des", "legacy", "none")


def run_arm(arm: str, seed: int, out: Path) -> None:
    params = yaml.safe_load(ARMS[arm].read_text())
    params["seeds"] = [seed]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(params, f)
    subprocess.run([sys.executable, "-m", "dtlab.cli", "run", "V2", "-p", f.name, "--out", str(out), "-q",
                    "--lock-timeout", "3000"], check=True, timeout=3600)
    Path(f.name).unlink()


def pair(out: Path) -> dict[str, Any]:
    """Per-seed MAPE of each predictor for both arms and the paired on - off difference with its CI."""
    import pandas as pd

    from dtlab.stats import paired_diff_ci
    runs: dict[tuple[str, int], tuple[str, pd.DataFrame, dict[str, Any]]] = {}
    for d in sorted((out / "V2").glob("*")):
        if (d / "results.csv").exists() and (d / "run.json").exists():
            p = json.loads((d / "run.json").read_text())["params"]
            if len(p["seeds"]) == 1 and p.get("substrate_opts", {}).get("neighbours"):
                key = (p["substrate_opts"].get("telemetry") or "none", int(p["seeds"][0]))
                runs[key] = (d.name, pd.read_csv(d / "results.csv"), json.loads((d / "metrics.json").read_text()))
    seeds = sorted(s for arm, s in runs if arm == "none" and ("prometheus", s) in runs)
    report: dict[str, Any] = {"seeds": seeds, "runs": {f"{a}/{s}": v[0] for (a, s), v in sorted(runs.items())},
                              "loadavg_1m_max": {f"{a}/{s}": v[2].get("host_noise", {}).get("loadavg_1m_max")
                                                 for (a, s), v in sorted(runs.items())}}
    for pred in PREDICTORS:
        mape = {}
        for key, (_, r, _) in runs.items():
            mape[key] = float(r[r["predictor"] == pred].dropna(subset=["ape"])["ape"].mean())
        off, on = [mape[("none", s)] for s in seeds], [mape[("prometheus", s)] for s in seeds]
        ci = paired_diff_ci(on, off) if seeds else None
        report[pred] = {"mape_off": off, "mape_on": on,
                        "on_minus_off": None if ci is None else {"mean": ci.mean, "low": ci.low, "high": ci.high}}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/v2-telemetry"))
    ap.add_argument("--pair-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.pair_only:
        for i, seed in enumerate(args.seeds):
            for arm in (("none", "prometheus") if i % 2 == 0 else ("prometheus", "none")):
                run_arm(arm, seed, args.out)
    print(json.dumps(pair(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
