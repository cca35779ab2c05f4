"""One paper style for every dtlab figure, and one figure function per experiment.

Why one module: a reader comparing V1 with V4 must see the same colour and the same name for the
same policy, at a size that drops into a one- or two-column paper without rescaling the fonts.
Colours are the Okabe–Ito palette (safe for the common colour-vision deficiencies) and every
series also differs by marker or line style so the figures survive greyscale printing.

Figure functions take the saved tables (``dtlab.results.load_tables(run_dir)``: ``{"results":
DataFrame, ...}``), never live objects, so ``dtlab figures`` redraws them from CSVs alone.
``savefig`` writes PDF and PNG with fixed metadata, so the same tables give the same bytes.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import stats
from .atomic import atomic_path
from .errors import DtlabError

# --- sizes -------------------------------------------------------------------------------------
# Text widths of the common two-column templates (IEEEtran 3.5in / 7.16in; ACM 3.33in / 7.0in):
# the IEEE widths are used, ACM figures then shrink by < 5 %, which keeps 8 pt text >= 7.6 pt.
ONE_COLUMN_IN = 3.5
TWO_COLUMN_IN = 7.16
GOLDEN = (5 ** 0.5 - 1) / 2
DPI = 300

# --- palette -----------------------------------------------------------------------------------
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
GREY = "#999999"
_CYCLE = [OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple",
                                 "sky_blue", "black", "yellow")]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_DASHES = ["-", "--", ":", "-."]   # by position in a plot, so overlapping lines stay distinguishable

# Every name a series can carry in any experiment: policies (V1, V4, V6), predictors (V2),
# execution formats (V3), failover strategies (V4). key -> (display name, colour, marker).
# DT policies are blue/green/purple, twin-less baselines warm or grey, so "DT vs no DT" reads at a glance.
SERIES: dict[str, tuple[str, str, str]] = {
    # policies
    "greedy": ("DT greedy", OKABE_ITO["blue"], "o"),
    "resilient": ("DT resilient", OKABE_ITO["bluish_green"], "s"),
    "cvar": ("DT CVaR", OKABE_ITO["reddish_purple"], "^"),
    "rl-stub": ("RL stub", OKABE_ITO["sky_blue"], "P"),
    "least-allocated": ("K8s least-allocated", OKABE_ITO["vermillion"], "D"),
    "k8s-default": ("K8s default + locality", OKABE_ITO["black"], "h"),
    "load-risk-balancing": ("Trimaran load-risk", OKABE_ITO["sky_blue"], "p"),   # rl-stub never runs in V1
    "heft": ("HEFT", OKABE_ITO["yellow"], "d"),
    "random": ("Random", GREY, "v"),
    "round-robin": ("Round-robin", OKABE_ITO["orange"], "X"),
    "kube-scheduler": ("kube-scheduler (real)", OKABE_ITO["yellow"], "*"),
    "kube-scheduler+extender": ("kube-scheduler + DT extender", OKABE_ITO["sky_blue"], "X"),
    # predictors
    "des": ("DES (SimPy)", OKABE_ITO["blue"], "o"),
    "fast": ("Fast path", OKABE_ITO["bluish_green"], "s"),
    "legacy": ("Legacy heuristic", OKABE_ITO["orange"], "^"),
    "none": ("No prediction", GREY, "v"),
    # execution formats
    "native": ("Native", OKABE_ITO["blue"], "o"),
    "qemu-arm64": ("QEMU arm64", OKABE_ITO["orange"], "s"),
    "qemu-riscv64": ("QEMU riscv64", OKABE_ITO["vermillion"], "^"),
    "qemu-amd64": ("QEMU amd64", OKABE_ITO["sky_blue"], "v"),
    "wasm": ("Wasm", OKABE_ITO["bluish_green"], "D"),
    # failover strategies (V4): the colour of the policy each one plans with
    "shadow-resilient": ("Shadow (DT resilient)", OKABE_ITO["bluish_green"], "s"),
    "shadow-cvar": ("Shadow (DT CVaR)", OKABE_ITO["reddish_purple"], "^"),
    "shadow-prestage": ("Shadow + pre-staged inputs", OKABE_ITO["sky_blue"], "P"),
    "replan-greedy": ("Re-plan (DT greedy)", OKABE_ITO["blue"], "o"),
    "no-twin": ("No twin (K8s least-alloc.)", OKABE_ITO["vermillion"], "D"),
    # drift handling
    "recalibrated": ("With recalibration", OKABE_ITO["bluish_green"], "o"),
    "static": ("Without recalibration", OKABE_ITO["vermillion"], "s"),
}
_ALIASES = {
    "least_allocated": "least-allocated", "leastallocated": "least-allocated",
    "roundrobin": "round-robin", "trimaran": "load-risk-balancing",
    "round_robin": "round-robin", "rl_stub": "rl-stub", "rl": "rl-stub", "qemu_arm64": "qemu-arm64",
    "qemu_riscv64": "qemu-riscv64",
    "no-dt": "no-twin", "no_dt": "no-twin", "nodt": "no-twin", "recalibration": "recalibrated",
    "online": "recalibrated", "with-recalibration": "recalibrated",
    "without-recalibration": "static", "no-recalibration": "static",
}


def series_key(name) -> str:
    """Canonical key of a series name (case, ``_``/``-`` and a few synonyms folded)."""
    key = str(name).strip().lower().replace(" ", "-")
    key = _ALIASES.get(key, key)
    return _ALIASES.get(key.replace("_", "-"), key.replace("_", "-"))


def display_name(name) -> str:
    """The name a paper shows for a policy/predictor/format: identical in every experiment."""
    entry = SERIES.get(series_key(name))
    return entry[0] if entry else str(name)


def style_of(name, index: int = 0) -> tuple[str, str]:
    """(colour, marker) of a series; unknown names take the palette in order of appearance."""
    entry = SERIES.get(series_key(name))
    if entry:
        return entry[1], entry[2]
    return _CYCLE[index % len(_CYCLE)], _MARKERS[index % len(_MARKERS)]


def color(name, index: int = 0) -> str:
    return style_of(name, index)[0]


def order(names: Iterable) -> list:
    """Series in the fixed paper order (SERIES order, unknown names after, alphabetically)."""
    rank = {k: i for i, k in enumerate(SERIES)}
    return sorted(dict.fromkeys(names), key=lambda n: (rank.get(series_key(n), len(rank)), str(n)))


# --- style -------------------------------------------------------------------------------------
RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=_CYCLE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#DDDDDD",
    "grid.linewidth": 0.5,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,      # TrueType in PDFs: publishers reject Type 3 fonts
    "ps.fonttype": 42,
    "svg.hashsalt": "dtlab",
}


@contextmanager
def paper_style():
    """Apply the paper rcParams inside a ``with`` block (figures keep the style they were made in)."""
    with matplotlib.rc_context(RC):
        yield


def figure(columns: int = 1, height_ratio: float = GOLDEN, ncols: int = 1, nrows: int = 1, **kw):
    """A paper-sized figure: ``columns=1`` (3.5 in wide) or ``2`` (7.16 in); height = width x ratio."""
    if columns not in (1, 2):
        raise DtlabError(f"columns: must be 1 or 2, got {columns!r}")
    width = ONE_COLUMN_IN if columns == 1 else TWO_COLUMN_IN
    # A bare Figure (not pyplot): nothing global to close in `dtlab figures`, and a notebook shows
    # it exactly once, when it is displayed.
    with paper_style():
        fig = Figure(figsize=(width, width * height_ratio), layout="constrained")
        axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def styled(func: Callable) -> Callable:
    """Draw a whole figure function inside the paper style (artists read rcParams when created)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with paper_style():
            return func(*args, **kwargs)
    return wrapper


def savefig(fig, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` and ``.png`` with no dates/versions in the metadata.

    Temp file + rename so a crash never leaves a truncated figure; returns the two paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with paper_style():
        for ext, metadata in (("pdf", {"CreationDate": None, "Producer": None, "Creator": None}),
                              ("png", {"Software": None})):
            final = out / f"{name}.{ext}"
            with atomic_path(final, suffix=f".{ext}") as tmp:
                fig.savefig(tmp, format=ext, metadata=metadata)
            paths.append(final)
    return paths


# --- helpers shared by the experiment figures ---------------------------------------------------
def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DtlabError(f"{what}: table lacks column(s) {missing}; has {list(df.columns)}")


def _first(df: pd.DataFrame, *candidates: str, what: str) -> str:
    for c in candidates:
        if c in df.columns:
            return c
    raise DtlabError(f"{what}: table has none of the columns {list(candidates)}; has {list(df.columns)}")


def _log_y(ax, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log y axis labelled 0.2, 0.5, 1, 2, 5 ... in plain numbers (no 4x10^0 minor labels);
    ``subs=(1.0,)`` labels decades only, for data spanning many of them."""
    from matplotlib import ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _legend(ax, **kw):
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, **kw)


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of a sample as (mean, lo, hi): dtlab.stats.mean_ci, the same rule as
    metrics.json, so error bars and metrics agree."""
    ci = stats.mean_ci(values)
    return ci.mean, ci.low, ci.high


def _per_group_ci(df: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and 95 % CI of ``value`` over the rows of each group (rows = seeds)."""
    rows = []
    for keys, grp in df.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        m, lo, hi = mean_ci(grp[value])
        rows.append({**dict(zip(by, keys)), "mean": m, "lo": lo, "hi": hi, "n": int(grp[value].notna().sum())})
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def _per_group_boot(df: pd.DataFrame, by: Sequence[str], value: str, q: float | None = None,
                    bounds: stats.Bounds = stats.NONNEG) -> pd.DataFrame:
    """Per group, the mean (``q=None``) or the ``q`` quantile of ``value`` over its pooled rows (jobs,
    plans, recovery events) with a percentile-bootstrap 95 % interval clipped to ``bounds``
    (:func:`dtlab.stats.bootstrap_ci` / :func:`dtlab.stats.quantile_ci`): the method for rates and
    quantiles, which a t-interval over a few seeds gets wrong (negative rates, decades-wide p99s)."""
    rows = []
    for keys, grp in df.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        x = grp[value].astype(float).tolist()
        ci = stats.quantile_ci(x, q, bounds=bounds) if q is not None else stats.bootstrap_ci(x, bounds=bounds)
        rows.append({**dict(zip(by, keys)), "mean": ci.mean, "lo": ci.low, "hi": ci.high, "n": ci.n})
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def _bars(ax, labels: Sequence, means, los, his, colours, hatches=None, width=0.8, offset=0.0,
          bounds: tuple[float, float] = (0.0, np.inf)):
    """Bars with CI whiskers; ``bounds`` clips the interval to the quantity's range (a rate stays
    within [0, 100] % even when a t-interval over two seeds says otherwise)."""
    x = np.arange(len(labels)) + offset
    means, los, his = (np.asarray(v, dtype=float) for v in (means, los, his))
    los, his = np.clip(los, *bounds), np.clip(his, *bounds)
    err = np.vstack([np.clip(means - los, 0, None), np.clip(his - means, 0, None)])
    bars = ax.bar(x, means, width=width, color=colours, edgecolor="black", linewidth=0.4,
                  yerr=err, error_kw={"elinewidth": 0.6, "ecolor": "black"})
    if hatches:
        for bar, h in zip(bars, hatches):
            bar.set_hatch(h)
    return x


def _panel_label(ax, text: str) -> None:
    ax.set_title(text, loc="left", fontweight="bold")


# --- one figure per experiment ------------------------------------------------------------------
@styled
def figure_v1(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V1: job latency (mean, p95, p99) and deadline-miss rate per policy, 95 % CI over seeds."""
    df = tables["results"]
    _require(df, ["policy", "latency_mean_ms", "latency_p95_ms", "latency_p99_ms", "miss_rate"], "V1 results")
    if "rate_per_s" in df.columns and df["rate_per_s"].nunique() > 1:
        return _figure_v1_sweep(df)
    policies = order(df["policy"].unique())
    fig, (ax_lat, ax_miss) = figure(columns=2, height_ratio=0.33, ncols=2,
                                    gridspec_kw={"width_ratios": [2.2, 1]})
    stats = [("latency_mean_ms", "mean", ""), ("latency_p95_ms", "p95", "//"), ("latency_p99_ms", "p99", "..")]
    width = 0.8 / len(stats)
    for i, (col, label, hatch) in enumerate(stats):
        ci = _per_group_ci(df, ["policy"], col).set_index("policy").loc[policies]
        _bars(ax_lat, policies, ci["mean"], ci["lo"], ci["hi"], [color(p) for p in policies],
              hatches=[hatch] * len(policies), width=width, offset=(i - 1) * width)
        ax_lat.bar(0, 0, color="white", edgecolor="black", linewidth=0.4, hatch=hatch, label=label)
    ax_lat.set_xticks(np.arange(len(policies)), [display_name(p) for p in policies], rotation=20, ha="right")
    ax_lat.set_ylabel("job latency (ms)")
    ax_lat.set_ylim(bottom=0)
    _legend(ax_lat, ncols=3, loc="upper left")
    _panel_label(ax_lat, "(a) latency, 95 % CI over seeds")
    ci = _per_group_ci(df, ["policy"], "miss_rate").set_index("policy").loc[policies]
    _bars(ax_miss, policies, 100 * ci["mean"], 100 * ci["lo"], 100 * ci["hi"], [color(p) for p in policies],
          bounds=(0.0, 100.0))
    ax_miss.set_xticks(np.arange(len(policies)), [display_name(p) for p in policies], rotation=40, ha="right",
                       rotation_mode="anchor")
    ax_miss.set_ylabel("deadline misses (%)")
    ax_miss.set_ylim(bottom=0)
    _panel_label(ax_miss, "(b) deadline-miss rate")
    return fig


def _figure_v1_sweep(df: pd.DataFrame) -> Figure:
    """V1 over several arrival rates: mean and p95 latency and miss rate vs load, one line per policy."""
    fig, axes = figure(columns=2, height_ratio=0.3, ncols=3)
    panels = ((axes[0], "latency_mean_ms", 1e-3, "mean job latency (s)", "(a) mean latency"),
              (axes[1], "latency_p95_ms", 1e-3, "p95 job latency (s)", "(b) p95 latency"),
              (axes[2], "miss_rate", 100.0, "deadline misses (%)", "(c) deadline-miss rate"))
    for i, p in enumerate(order(df["policy"].unique())):
        c, m = style_of(p, i)
        dash = "-" if series_key(p) in ("greedy", "resilient", "cvar") else "--"   # DT solid, baselines dashed
        sub = df[df["policy"] == p]
        for ax, col, scale, _, _ in panels:
            ci = _per_group_ci(sub, ["rate_per_s"], col).sort_values("rate_per_s")
            ax.plot(ci["rate_per_s"], scale * ci["mean"], dash, color=c, marker=m, label=display_name(p))
            top = 100.0 if col == "miss_rate" else np.inf
            ax.fill_between(ci["rate_per_s"], (scale * ci["lo"]).clip(lower=0), (scale * ci["hi"]).clip(upper=top),
                            color=c, alpha=0.12, linewidth=0)
    for ax, _, _, ylabel, title in panels:
        ax.set_xlabel("arrival rate (jobs/s)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        _panel_label(ax, title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=6)
    return fig


@styled
def figure_v2(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V2: predicted vs observed latency per predictor, and the CDF of absolute percentage error."""
    df = tables["results"]
    _require(df, ["predictor", "observed_ms", "predicted_ms", "ape"], "V2 results")
    predictors = order(df["predictor"].unique())
    fig, (ax_sc, ax_cdf) = figure(columns=2, height_ratio=0.36, ncols=2)
    for i, p in enumerate(predictors):
        sub = df[df["predictor"] == p]
        c, m = style_of(p, i)
        # hollow markers: predictors that agree (DES and fast path) must not hide each other
        ax_sc.scatter(sub["observed_ms"], sub["predicted_ms"], s=8, marker=m, facecolors="none",
                      edgecolors=c, alpha=0.7, linewidths=0.6, label=display_name(p))
        ape = np.sort(sub["ape"].to_numpy(dtype=float))
        ape = ape[np.isfinite(ape)]
        if ape.size:
            ax_cdf.step(100 * ape, np.arange(1, ape.size + 1) / ape.size, _DASHES[i % 4], where="post",
                        color=c, label=display_name(p))
    both = pd.concat([df["observed_ms"], df["predicted_ms"]]).to_numpy(dtype=float)
    both = both[np.isfinite(both) & (both > 0)]
    if both.size:
        lo, hi = both.min() * 0.8, both.max() * 1.25
        ax_sc.plot([lo, hi], [lo, hi], color="black", linewidth=0.6, linestyle="--", label="perfect")
        ax_sc.set_xscale("log")
        ax_sc.set_yscale("log")
        for axis in (ax_sc.xaxis, ax_sc.yaxis):   # minor labels on a narrow log range overlap
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_sc.set_xlim(lo, hi)
        ax_sc.set_ylim(lo, hi)
    ax_sc.set_xlabel("observed latency (ms)")
    ax_sc.set_ylabel("predicted latency (ms)")
    _legend(ax_sc, loc="upper left", markerscale=2)
    _panel_label(ax_sc, "(a) predicted vs observed")
    ax_cdf.set_xlabel("absolute percentage error (%)")
    ax_cdf.set_ylabel("fraction of jobs")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.set_xlim(left=0)
    _legend(ax_cdf, loc="lower right")
    _panel_label(ax_cdf, "(b) error CDF")
    return fig


@styled
def figure_v3(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V3: overhead factor per execution format (observed with CI vs the twin's factor), and the
    controller's own plan latency per policy and predictor."""
    df = tables["results"]
    _require(df, ["format", "observed_mean", "ci_low", "ci_high"], "V3 results")
    plan = tables.get("plan_latency")
    fig, axes = figure(columns=2, height_ratio=0.36, ncols=2 if plan is not None else 1)
    ax_fmt = axes[0] if plan is not None else axes
    formats = order(df["format"].unique())
    # one point per node that offers the format (CI over seeds), the twin's factor as a black dash
    for i, fmt in enumerate(formats):
        sub = df[df["format"] == fmt].sort_values("node" if "node" in df.columns else "format")
        offsets = np.linspace(-0.3, 0.3, len(sub)) if len(sub) > 1 else np.zeros(1)
        mean = sub["observed_mean"].to_numpy(dtype=float)
        err = np.vstack([np.clip(mean - sub["ci_low"].clip(lower=0).to_numpy(dtype=float), 0, None),
                         np.clip(sub["ci_high"].to_numpy(dtype=float) - mean, 0, None)])
        c, m = style_of(fmt, i)
        ax_fmt.errorbar(i + offsets, mean, yerr=err, fmt=m, color=c, markersize=3.5, elinewidth=0.7)
        if "twin_factor" in sub.columns:
            ax_fmt.hlines(sub["twin_factor"].mean(), i - 0.4, i + 0.4, color="black", linewidth=1.2,
                          label="twin's default factor" if i == 0 else None)
        if "host_calibration_factor" in sub.columns and sub["host_calibration_factor"].notna().any():
            # on fabric the twin plans with the host's measured calibration, not the defaults
            ax_fmt.hlines(sub["host_calibration_factor"].mean(), i - 0.4, i + 0.4, color="black", linewidth=0.8,
                          linestyles="--", label="host calibration" if i == 0 else None)
        if "truth_factor" in sub.columns and sub["truth_factor"].notna().any():
            ax_fmt.hlines(sub["truth_factor"].mean(), i - 0.4, i + 0.4, color="black", linewidth=0.8,
                          linestyles=":", label="ground truth (sim)" if i == 0 else None)
    ax_fmt.errorbar([], [], yerr=[], fmt="o", color="black", markersize=3.5, elinewidth=0.7,
                    label="observed, one per node")   # neutral legend proxy: colours mean formats
    ax_fmt.axhline(1.0, color=GREY, linewidth=0.5)
    ax_fmt.set_xticks(np.arange(len(formats)), [display_name(f).replace(" ", "\n", 1) for f in formats])
    ax_fmt.set_ylabel("slowdown vs native (x)")
    top = np.nanmax(np.concatenate([df["ci_high"].to_numpy(dtype=float), df["observed_mean"].to_numpy(dtype=float)]))
    ax_fmt.set_ylim(0, 1.45 * top if np.isfinite(top) and top > 0 else None)   # headroom for the legend
    _legend(ax_fmt, loc="upper left")
    _panel_label(ax_fmt, "(a) execution-format overhead, 95 % CI")
    if plan is not None:
        ax_plan = axes[1]
        _require(plan, ["policy", "predictor", "mean_ms", "ci_low", "ci_high"], "V3 plan_latency")
        policies = order(plan["policy"].unique())
        predictors = order(plan["predictor"].unique())
        width = 0.8 / max(len(predictors), 1)
        hatch_cycle = ["", "//", "..", "xx"]
        for j, pred in enumerate(predictors):
            sub = plan[plan["predictor"] == pred].set_index("policy").reindex(policies)
            _bars(ax_plan, policies, sub["mean_ms"], sub["ci_low"], sub["ci_high"],
                  [color(p) for p in policies], hatches=[hatch_cycle[j % 4]] * len(policies),
                  width=width, offset=(j - (len(predictors) - 1) / 2) * width)
            ax_plan.bar(0, 0, color="white", edgecolor="black", linewidth=0.4, hatch=hatch_cycle[j % 4],
                        label=display_name(pred))
        ax_plan.set_xticks(np.arange(len(policies)), [display_name(p) for p in policies], rotation=20, ha="right")
        ax_plan.set_yscale("log")
        top = np.nanmax(plan["ci_high"].to_numpy(dtype=float))
        if np.isfinite(top) and top > 0:
            ax_plan.set_ylim(top=top * 10)   # headroom for the legend above the bars
        ax_plan.set_ylabel("plan latency (ms, log)")
        _legend(ax_plan, loc="upper left", ncols=len(predictors), fontsize="small", columnspacing=0.8,
                handlelength=1.5)
        _panel_label(ax_plan, "(b) controller overhead per plan")
    return fig


@styled
def figure_v5(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V5: plan latency p50 and p99 vs twin size per policy (warm/fresh twin as line style), and
    the twin state's update throughput and snapshot time. Plan-latency bands are bootstrap 95 % CIs of
    the quantile of plan times pooled over seeds (``plans`` table; without it, t-intervals over
    per-seed quantiles); state bands are 95 % CIs over seeds. With a ``kube``
    table (substrate kube): observe lag p50/p99 and live plan p99 vs KWOK nodes against the 1 s budget."""
    df = tables["results"]
    _require(df, ["nodes", "policy", "p50_ms", "p99_ms"], "V5 results")
    state = tables.get("state")
    kube = tables.get("kube")       # substrate kube: observe lag vs nodes against the 1 s freshness budget
    fig, axes = figure(columns=2, height_ratio=0.3, ncols=2 + (state is not None) + (kube is not None))
    modes = list(dict.fromkeys(df["mode"])) if "mode" in df.columns else [None]
    dashes = ["-", "--", ":", "-."]
    plans = tables.get("plans")     # every plan's time: pooled quantiles with bootstrap CIs
    pooled = plans is not None and {"nodes", "policy", "wall_ms"} <= set(plans.columns)
    for ax, col, q, title in ((axes[0], "p50_ms", 0.5, "(a) median plan latency"),
                              (axes[1], "p99_ms", 0.99, "(b) p99 plan latency")):
        for i, p in enumerate(order(df["policy"].unique())):
            c, m = style_of(p, i)
            for j, mode in enumerate(modes):
                src = plans if pooled else df
                sub = src[(src["policy"] == p) & ((src["mode"] == mode) if mode is not None else True)]
                ci = (_per_group_boot(sub, ["nodes"], "wall_ms", q) if pooled
                      else _per_group_ci(sub, ["nodes"], col)).sort_values("nodes")
                label = display_name(p) + (f" ({mode})" if mode is not None and len(modes) > 1 else "")
                ax.plot(ci["nodes"], ci["mean"], dashes[j % 4], color=c, marker=m, label=label)
                ax.fill_between(ci["nodes"], ci["lo"].clip(lower=ci["mean"] / 100), ci["hi"], color=c,
                                alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        _log_y(ax)
        ax.set_xlabel("twin size (nodes)")
        ax.set_ylabel("plan latency (ms)")
        _panel_label(ax, title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=min(4, len(axes[0].get_legend_handles_labels()[0])))
    if state is not None:
        ax2 = axes[2]
        _require(state, ["nodes", "apply_events_per_s"], "V5 state")
        ci = _per_group_boot(state, ["nodes"], "apply_events_per_s").sort_values("nodes")   # as metrics.json
        ax2.plot(ci["nodes"], ci["mean"], "-o", color=OKABE_ITO["blue"], label="events applied / s")
        ax2.fill_between(ci["nodes"], ci["lo"].clip(lower=ci["mean"] / 100), ci["hi"], color=OKABE_ITO["blue"],
                         alpha=0.15, linewidth=0)
        ax2.set_xscale("log")
        _log_y(ax2)
        ax2.set_xlabel("twin size (nodes)")
        ax2.set_ylabel("events applied / s")
        if "snapshot_ms" in state.columns:
            ax3 = ax2.twinx()
            ax3.spines["right"].set_visible(True)
            ci = _per_group_boot(state, ["nodes"], "snapshot_ms").sort_values("nodes")
            ax3.plot(ci["nodes"], ci["mean"], "--s", color=OKABE_ITO["vermillion"], label="snapshot (ms, right)")
            _log_y(ax3)
            ax3.set_ylabel("snapshot time (ms)")
            ax3.grid(False)
            h1, l1 = ax2.get_legend_handles_labels()
            h2, l2 = ax3.get_legend_handles_labels()
            # below the panel, never on the curves (they cross the whole axes)
            ax2.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=1)
        _panel_label(ax2, "(c) twin state cost")
    if kube is not None:
        ax4 = axes[-1]
        _require(kube, ["nodes", "observe_lag_p50_ms", "observe_lag_p99_ms"], "V5 kube")
        for col, (c, m), label in (("observe_lag_p50_ms", (OKABE_ITO["blue"], "o"), "observe lag p50"),
                                   ("observe_lag_p99_ms", (OKABE_ITO["vermillion"], "s"), "observe lag p99")):
            ci = _per_group_ci(kube, ["nodes"], col).sort_values("nodes")
            ax4.plot(ci["nodes"], ci["mean"], "-", color=c, marker=m, label=label)
        ci = _per_group_ci(df, ["nodes"], "p99_ms").sort_values("nodes")
        ax4.plot(ci["nodes"], ci["mean"], ":", color=OKABE_ITO["black"], marker="^", label="plan p99")
        ax4.axhline(1000.0, color=GREY, linestyle="--", linewidth=1, label="1 s budget")
        ax4.set_xscale("log")
        ax4.set_yscale("log")
        ax4.set_xlabel("KWOK nodes")
        ax4.set_ylabel("ms")
        ax4.legend(loc="best")
        _panel_label(ax4, f"({'abcd'[len(axes) - 1]}) observe lag")
    return fig


@styled
def figure_v4(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V4: recovery time, deadline-miss rate and jobs lost per fault scenario and failover strategy.

    With the saved ``recovery`` and ``jobs`` tables: median recovery time of the affected stages and
    the miss rate of the jobs, pooled over seeds, each with a bootstrap 95 % CI (the rate's clipped to
    [0, 100] %); the no-fault control is shaded. Without them, 95 % t-intervals over seeds. Jobs
    lost are summed over seeds, since the claim is that it is zero."""
    df = tables["results"]
    _require(df, ["scenario", "strategy", "recovery_ms_mean", "deadline_miss_rate", "jobs_lost"], "V4 results")
    scenarios = list(dict.fromkeys(df["scenario"]))
    strategies = order(df["strategy"].unique())
    fig, axes = figure(columns=2, height_ratio=0.34, ncols=3)
    width = 0.8 / max(len(strategies), 1)
    x = np.arange(len(scenarios))
    jobs = tables.get("jobs")           # per job: miss rate bootstrapped over jobs
    recovery = tables.get("recovery")   # per affected stage: median recovery, bootstrapped
    for j, strat in enumerate(strategies):
        sub = df[df["strategy"] == strat]
        c, m = style_of(strat, j)
        off = (j - (len(strategies) - 1) / 2) * width
        if recovery is not None and {"scenario", "strategy", "recovery_ms"} <= set(recovery.columns):
            rs = recovery[recovery["strategy"] == strat]
            ci = _per_group_boot(rs, ["scenario"], "recovery_ms", 0.5).set_index("scenario").reindex(scenarios)
            mean = 1e-3 * ci["mean"].to_numpy(dtype=float)
            err = np.vstack([np.clip(mean - 1e-3 * ci["lo"].to_numpy(dtype=float), 0, None),
                             np.clip(1e-3 * ci["hi"].to_numpy(dtype=float) - mean, 0, None)])
            axes[0].errorbar(x + off, mean, yerr=err, fmt=m, color=c, markersize=3.5, elinewidth=0.7)
        else:
            ci = _per_group_ci(sub, ["scenario"], "recovery_ms_mean").set_index("scenario").reindex(scenarios)
            _bars(axes[0], scenarios, 1e-3 * ci["mean"], 1e-3 * ci["lo"], 1e-3 * ci["hi"], [c] * len(scenarios),
                  width=width, offset=off)
        if jobs is not None and {"scenario", "strategy", "missed"} <= set(jobs.columns):
            js = jobs[jobs["strategy"] == strat].assign(missed=lambda d: d["missed"].astype(float))
            ci = _per_group_boot(js, ["scenario"], "missed", bounds=stats.RATE)
        else:
            ci = _per_group_ci(sub, ["scenario"], "deadline_miss_rate")
        ci = ci.set_index("scenario").reindex(scenarios)
        _bars(axes[1], scenarios, 100 * ci["mean"], 100 * ci["lo"], 100 * ci["hi"], [c] * len(scenarios),
              width=width, offset=off, bounds=(0.0, 100.0))
        lost = sub.groupby("scenario")["jobs_lost"].sum().reindex(scenarios)
        axes[2].bar(x + off, lost, width=width, color=c, edgecolor="black", linewidth=0.4,
                    label=display_name(strat))
    labels = [s.replace("-", " ") for s in scenarios]
    for ax, ylabel, title in ((axes[0], "median recovery (s)", "(a) recovery after a fault"),
                              (axes[1], "deadline misses (%)", "(b) deadline misses"),
                              (axes[2], "jobs lost (sum over seeds)", "(c) jobs lost")):
        ax.set_xticks(x, labels, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_ylabel(ylabel)
        if ax is not axes[0] or recovery is None:
            ax.set_ylim(bottom=0)
        _panel_label(ax, title)
    if recovery is not None and len(recovery) and (recovery["recovery_ms"] > 0).any():
        _log_y(axes[0], subs=(1.0,))     # partitions clear in ms, waiting for a repair takes minutes
    if "none" in scenarios:  # the no-fault control: what the world costs without any fault
        axes[1].axvspan(scenarios.index("none") - 0.5, scenarios.index("none") + 0.5, color=GREY, alpha=0.12,
                        linewidth=0)
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    if not np.nansum(df["jobs_lost"].to_numpy(dtype=float)):
        # an empty panel looks like a plotting bug; say what it means
        axes[2].set_ylim(0, 1)
        axes[2].text(0.5, 0.5, "no job lost\nin any run", transform=axes[2].transAxes, ha="center",
                     va="center")
    fig.legend(*axes[2].get_legend_handles_labels(), loc="outside lower center", ncols=len(strategies))
    return fig


@styled
def figure_v6(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """V6: prediction error and deadline misses over time under drift, with vs without recalibration.

    With the saved ``jobs`` table, each window's MAPE and miss rate over the jobs pooled across seeds
    with a bootstrap 95 % CI (the rate's clipped to [0, 100] %); without it, t-intervals over seeds."""
    df = tables["results"]
    _require(df, ["mode", "window_start_s", "mape", "miss_rate"], "V6 results")
    fig, (ax_err, ax_miss) = figure(columns=2, height_ratio=0.33, ncols=2)
    jobs = tables.get("jobs")     # per job: window means bootstrapped over the pooled jobs
    pooled = jobs is not None and {"mode", "window_start_s", "ape", "missed"} <= set(jobs.columns)
    for i, mode in enumerate(order(df["mode"].unique())):
        c, m = style_of(mode, i)
        sub = df[df["mode"] == mode]
        for ax, col, cap in ((ax_err, "mape", np.inf), (ax_miss, "miss_rate", 1.0)):
            if pooled:
                js = jobs[jobs["mode"] == mode].assign(missed=lambda d: d["missed"].astype(float))
                value = "ape" if col == "mape" else "missed"
                ci = _per_group_boot(js.dropna(subset=[value]), ["window_start_s"], value,
                                     bounds=stats.RATE if col == "miss_rate" else stats.NONNEG)
            else:
                ci = _per_group_ci(sub, ["window_start_s"], col)
            ci = ci.sort_values("window_start_s")
            # the window the arrivals end in holds a handful of jobs: a point from it is noise
            ci = ci[ci["n"] >= 0.5 * ci["n"].median()] if len(ci) > 2 else ci
            ax.plot(ci["window_start_s"], 100 * ci["mean"], "-", color=c, marker=m,
                    label=display_name(mode))
            # a rate's interval cannot leave [0, 1]; clipping keeps few-seed bands honest-looking
            ax.fill_between(ci["window_start_s"], 100 * ci["lo"].clip(lower=0), 100 * ci["hi"].clip(upper=cap),
                            color=c, alpha=0.2, linewidth=0)
    for ax, ylabel, title in ((ax_err, "prediction MAPE (%)", "(a) prediction error over time"),
                              (ax_miss, "deadline misses (%)", "(b) deadline misses over time")):
        ax.set_xlabel("time (s, window start)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        _panel_label(ax, title)
    ax_miss.set_ylim(0, 100)
    fig.legend(*ax_err.get_legend_handles_labels(), loc="outside lower center", ncols=2)   # off the data
    return fig


FIGURES: dict[str, tuple[str, Callable[[Mapping[str, pd.DataFrame]], Figure]]] = {
    "V1": ("V1_controller_vs_baseline", figure_v1),
    "V2": ("V2_prediction_accuracy", figure_v2),
    "V3": ("V3_execution_overhead", figure_v3),
    "V4": ("V4_shadow_failover", figure_v4),
    "V5": ("V5_scalability", figure_v5),
    "V6": ("V6_drift_robustness", figure_v6),
}


def experiment_figure(experiment: str, tables: Mapping[str, pd.DataFrame]) -> tuple[str, Figure]:
    """(file stem, Figure) of an experiment's key figure drawn from its saved tables."""
    key = str(experiment).upper()
    if key not in FIGURES:
        raise DtlabError(f"no figure function for experiment {experiment!r}; known: {', '.join(FIGURES)}")
    name, func = FIGURES[key]
    return name, func(tables)


def save_experiment_figures(experiment: str, tables: Mapping[str, pd.DataFrame],
                            out_dir: str | os.PathLike) -> list[Path]:
    """Draw and save (PDF + PNG) an experiment's figure into ``out_dir``; returns the files."""
    name, fig = experiment_figure(experiment, tables)
    return savefig(fig, out_dir, name)
