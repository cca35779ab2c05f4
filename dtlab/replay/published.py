"""The ATC'23 fragmentation study's published allocation curves, and how far a replay lies from them.

The one home of the study's published numbers: ``data/traces/alibaba-openb/published_alloc_curves.csv``
(derived from the artefact's ``experiments/analysis/expected_results/analysis_allo_discrete.csv``,
hkust-adsl/kubernetes-scheduler-simulator, commit 1853fc0e; provenance in ``data/README.md``): per
policy and arrived GPU demand 0..130 % of capacity, the mean, min and max over the study's seeds
42-51 of the GPU allocated (% of capacity), workload ``openb_pod_list_default``, inflation 1.3.
Only the policies dtlab implements are kept (study names 01-Random, 02-DotProd, 05-BestFit, 06-FGD).

A replay matches the study's setting only on the default openb trace at ``--inflate 1.3``;
:func:`curve_deviation` compares its per-arrived-% curve (mean over the replay's seeds) with the
published mean and min-max band at the arrived percentages both have.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..datadir import data_dir, require
from ..errors import SpecError

PUBLISHED_CURVES_CSV = Path("traces") / "alibaba-openb" / "published_alloc_curves.csv"  # under data_dir()
CURVE_COLUMNS = ["policy", "arrived_pct", "mean", "min", "max", "seeds"]
#: the setting the published curves were measured in (the replay must match it to be compared)
PUBLISHED_INFLATE = 1.3


@lru_cache(maxsize=1)
def published_curves() -> pd.DataFrame:
    """The published table (CURVE_COLUMNS), read once from the data folder."""
    path = require(data_dir() / PUBLISHED_CURVES_CSV)
    table = pd.read_csv(path)
    if list(table.columns) != CURVE_COLUMNS:
        raise SpecError(str(path), f"columns {list(table.columns)}, expected {CURVE_COLUMNS}")
    return table


def published_final() -> dict[str, float]:
    """Mean GPU allocated at the last published arrived % (130), per policy, rounded to 0.01."""
    t = published_curves()
    last = t[t["arrived_pct"] == t["arrived_pct"].max()]
    return {str(p): round(float(m), 2) for p, m in zip(last["policy"], last["mean"])}


def compare_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Per policy with a published curve and per arrived % both have: the replay's GPU allocation
    (mean over its seeds), the published mean/min/max, the difference and whether it lies in the band.

    ``table`` has the replay's columns ``policy, arrived_pct, gpu_alloc_pct`` (allocation.csv).
    Policies without a published curve (e.g. first-fit) are left out.
    """
    pub = published_curves()
    ours = (table[table["policy"].isin(set(pub["policy"]))]
            .groupby(["policy", "arrived_pct"], as_index=False)["gpu_alloc_pct"].mean())
    merged = ours.merge(pub, on=["policy", "arrived_pct"], how="inner")
    merged["diff"] = merged["gpu_alloc_pct"] - merged["mean"]
    # the published values carry two decimals: a replay value within half a unit of the band is inside it
    merged["inside_band"] = (merged["gpu_alloc_pct"] >= merged["min"] - 0.005) & \
                            (merged["gpu_alloc_pct"] <= merged["max"] + 0.005)
    return merged[["policy", "arrived_pct", "gpu_alloc_pct", "mean", "min", "max", "diff", "inside_band"]]


def curve_deviation(table: pd.DataFrame) -> pd.DataFrame:
    """One row per compared policy: points compared, max and mean |difference| (allocation points),
    the arrived % of the largest difference, the share of points inside the published band, and the
    difference at the last common arrived %."""
    cmp = compare_curves(table)
    rows = []
    for policy, g in cmp.groupby("policy", sort=False):
        g = g.sort_values("arrived_pct")
        absd = g["diff"].abs()
        rows.append({"policy": policy, "points": len(g), "max_abs_diff": float(absd.max()),
                     "max_at_arrived_pct": float(g["arrived_pct"].iloc[int(absd.to_numpy().argmax())]),
                     "mean_abs_diff": float(absd.mean()),
                     "inside_band_pct": 100.0 * float(g["inside_band"].mean()),
                     "final_arrived_pct": float(g["arrived_pct"].iloc[-1]),
                     "final_diff": float(g["diff"].iloc[-1])})
    return pd.DataFrame(rows, columns=["policy", "points", "max_abs_diff", "max_at_arrived_pct", "mean_abs_diff",
                                       "inside_band_pct", "final_arrived_pct", "final_diff"])
