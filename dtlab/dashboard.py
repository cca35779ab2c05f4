"""Interactive what-if exploration in JupyterLab (ipywidgets).

Rendering only: every number comes from :func:`dtlab.whatif.evaluate`, a pure
function, so what the sliders show is what a test or a notebook computes.
Slider changes recompute after a short debounce; ``update()`` recomputes now
and records how long it took (``last_update_ms``) so responsiveness is measured,
not assumed.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import ipywidgets as w
import numpy as np

from . import plots
from .model import Cluster, Job, load_cluster, load_job
from .errors import SpecError
from .predict import names as predictor_names
from .timing import DEFAULT_OVERHEADS
from .whatif import evaluate, link_for, save_params, zone_pairs

DEFAULT_POLICIES = ("greedy", "resilient", "cvar", "least-allocated")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NODE_KEYS = ("down[", "cordon[", "speed[")


def shipped_scenarios() -> list[str]:
    from .chaos.spec import SCENARIO_DIR
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.exists() else []


class WhatIf:
    """``WhatIf(cluster, job, policies=[...])``: sliders in, predicted latency per policy out.

    ``controls`` maps names to widgets (``arrival_rate`` and ``sim_jobs`` (a short simulation of
    that many arrivals, so queueing shows), ``scenario`` and ``scenario_at_s`` (a chaos/scenarios
    fault scenario at that time), ``deadline_ms``, ``predictor``, ``samples``, ``calibration``
    (a calibration file), ``down[n]``/``cordon[n]``/``speed[n]`` per node, ``fail_prob``,
    ``latency_scale``, ``latency_ms[a|b]`` and ``loss[a|b]`` per zone pair, ``overhead[<format>]``,
    ``policies``, ``cluster_path``, ``job_path``, ``load``, ``recompute``, and ``save_experiment``,
    ``save_path``, ``save`` for "Save as params"); ``result`` maps policy names to prediction
    dicts as in ``Plan.prediction``.
    """

    def __init__(self, cluster: Cluster | str | Path, job: Job | str | Path,
                 policies: Sequence[str] = DEFAULT_POLICIES, samples: int = 256, seed: int = 0,
                 debounce_s: float = 0.3):
        self.samples, self.seed, self.debounce_s = samples, seed, debounce_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.result: dict[str, dict[str, float]] = {}
        self.outcomes: dict = {}
        self.last_update_ms: float | None = None   # compute + table + figure
        self.last_numbers_ms: float | None = None  # compute + table: until the new numbers are on the page
        self._updates = 0
        self.last_compute_ms: float | None = None
        # CPU time of this thread for compute + table: the update's own cost, apart from a loaded host's waiting
        self.last_numbers_cpu_ms: float | None = None
        self.cluster = load_cluster(cluster) if isinstance(cluster, (str, Path)) else cluster
        self.job = load_job(job, cluster=self.cluster) if isinstance(job, (str, Path)) else job
        self._cluster_path = cluster if isinstance(cluster, (str, Path)) else None
        self._job_path = job if isinstance(job, (str, Path)) else None
        import dtlab.des.simulate  # noqa: F401 - SimPy loads now, not inside the first update a user waits for
        self.controls: dict[str, w.Widget] = {}
        self._policies = list(policies)
        self._figure_out = w.Image(format="png")  # a widget: updates from the debounce thread reach the page
        self._table = w.HTML()
        self._status = w.HTML()
        self._build_controls(cluster, job)
        self.widget = w.VBox([
            w.HBox([self.controls["cluster_path"], self.controls["job_path"], self.controls["load"]]),
            w.HBox([self._sliders_box(), w.VBox([self._table, self._status])]),
            self._figure_out,
        ])

    # ------------------------------------------------------------ controls
    def _build_controls(self, cluster, job) -> None:
        c = self.controls
        style = {"description_width": "initial"}
        c["cluster_path"] = w.Text(str(cluster) if isinstance(cluster, (str, Path)) else "", description="cluster",
                                   placeholder=str(EXAMPLES / "cluster-hetero.yaml"), style=style)
        c["job_path"] = w.Text(str(job) if isinstance(job, (str, Path)) else "", description="job",
                               placeholder=str(EXAMPLES / "job-pipeline.yaml"), style=style)
        c["load"] = w.Button(description="Load")
        c["load"].on_click(lambda _: self.load(c["cluster_path"].value, c["job_path"].value))
        c["recompute"] = w.Button(description="Recompute")
        c["recompute"].on_click(lambda _: self.update())
        c["policies"] = w.SelectMultiple(options=self._all_policies(), value=tuple(self._policies),
                                         description="policies", style=style)
        c["arrival_rate"] = w.FloatSlider(0.0, min=0.0, max=20.0, step=0.1, description="arrivals /s", style=style)
        c["fail_prob"] = w.FloatSlider(0.0, min=0.0, max=0.5, step=0.01, description="node failure prob",
                                       style=style)
        c["latency_scale"] = w.FloatSlider(1.0, min=0.1, max=10.0, step=0.1, description="latency ×", style=style)
        c["sim_jobs"] = w.IntSlider(30, min=5, max=200, step=5, description="simulated arrivals", style=style)
        c["scenario"] = w.Dropdown(options=["none"] + shipped_scenarios(), value="none", description="fault scenario",
                                   style=style)
        c["scenario_at_s"] = w.FloatSlider(30.0, min=0.0, max=300.0, step=1.0, description="scenario time s",
                                           style=style)
        c["deadline_ms"] = w.FloatSlider(0.0, min=0.0, max=60_000.0, step=100.0,
                                         description="deadline ms (0: the job's)", style=style)
        c["predictor"] = w.Dropdown(options=predictor_names(), value="fast", description="predictor", style=style)
        c["samples"] = w.IntSlider(self.samples, min=16, max=1024, step=16, description="samples", style=style)
        c["calibration"] = w.Text("", description="calibration file", placeholder="(none: default overheads)",
                                  style=style, continuous_update=False)
        c["save_experiment"] = w.Dropdown(options=["V1", "V4"], value="V1", description="save for", style=style)
        c["save_path"] = w.Text("outputs/whatif/params-V1.yaml", description="params file", style=style)
        c["save"] = w.Button(description="Save as params")
        c["save"].on_click(lambda _: self.save_params())
        self._build_cluster_controls()
        for name in ("policies", "arrival_rate", "fail_prob", "latency_scale", "sim_jobs", "scenario", "scenario_at_s",
                     "deadline_ms", "predictor", "samples", "calibration"):
            c[name].observe(self._changed, names="value")

    def _build_cluster_controls(self) -> None:
        c = self.controls
        for key in [k for k in c if k.startswith(NODE_KEYS + ("latency_ms[", "loss[", "overhead["))]:
            del c[key]
        style = {"description_width": "initial"}
        for node in sorted(self.cluster.nodes, key=lambda n: (n.zone, n.name)):
            c[f"down[{node.name}]"] = w.Checkbox(False, description=f"{node.name} down", indent=False)
            c[f"cordon[{node.name}]"] = w.Checkbox(False, description="cordon", indent=False)
            c[f"speed[{node.name}]"] = w.FloatSlider(node.speed, min=0.05, max=2.0, step=0.05, description="speed",
                                                     style=style)
        for pair in zone_pairs(self.cluster):
            link = link_for(self.cluster, *pair.split("|"))
            c[f"latency_ms[{pair}]"] = w.FloatSlider(link.latency_ms, min=0.0, max=max(500.0, link.latency_ms * 4),
                                                     step=1.0, description=f"{pair} latency ms", style=style)
            c[f"loss[{pair}]"] = w.FloatSlider(link.loss, min=0.0, max=0.3, step=0.005, readout_format=".3f",
                                               description=f"{pair} loss", style=style)
        for fmt, factor in DEFAULT_OVERHEADS.items():
            if fmt != "native":
                c[f"overhead[{fmt}]"] = w.FloatSlider(factor, min=1.0, max=10.0, step=0.05,
                                                      description=f"{fmt} overhead ×", style=style)
        for key in c:
            if key.startswith(NODE_KEYS + ("latency_ms[", "loss[", "overhead[")):
                c[key].observe(self._changed, names="value")

    def _sliders_box(self) -> w.VBox:
        c = self.controls
        order = ["policies", "arrival_rate", "sim_jobs", "scenario", "scenario_at_s", "deadline_ms", "predictor",
                 "samples", "calibration", "fail_prob", "latency_scale"]
        order += sorted(k for k in c if k.startswith(("latency_ms[", "loss[", "overhead[")))
        nodes = [w.HBox([c[f"down[{n.name}]"], c[f"cordon[{n.name}]"], c[f"speed[{n.name}]"]])
                 for n in sorted(self.cluster.nodes, key=lambda n: (n.zone, n.name))]
        save = w.HBox([c["save_experiment"], c["save_path"], c["save"]])
        self._sliders = w.VBox([c[k] for k in order] + nodes + [c["recompute"], save])
        return self._sliders

    @staticmethod
    def _all_policies() -> list[str]:
        from .policies import names
        return [n for n in names() if n != "rl_stub"]

    # ------------------------------------------------------------ state
    def knobs(self) -> dict[str, Any]:
        c = self.controls
        links = {}
        for key, widget in c.items():
            if key.startswith(("latency_ms[", "loss[")):
                field, pair = key[:-1].split("[")
                links.setdefault(pair, {})[field] = widget.value
        nodes = {}
        for n in self.cluster.nodes:
            o = {"down": c[f"down[{n.name}]"].value, "cordon": c[f"cordon[{n.name}]"].value}
            if c[f"speed[{n.name}]"].value != n.speed:
                o["speed"] = c[f"speed[{n.name}]"].value
            if o["down"] or o["cordon"] or "speed" in o:
                nodes[n.name] = o
        return {
            "arrival_rate_per_s": c["arrival_rate"].value,
            "sim_jobs": c["sim_jobs"].value,
            "scenario": None if c["scenario"].value == "none" else c["scenario"].value,
            "scenario_at_s": c["scenario_at_s"].value,
            "deadline_ms": c["deadline_ms"].value or None,
            "predictor": c["predictor"].value,
            "samples": c["samples"].value,
            "calibration": c["calibration"].value.strip() or None,
            "nodes": nodes,
            "fail_prob": c["fail_prob"].value if c["fail_prob"].value > 0 else None,
            "latency_scale": c["latency_scale"].value,
            "links": links,
            "overheads": {k[len("overhead["):-1]: v.value for k, v in c.items() if k.startswith("overhead[")},
        }

    def save_params(self, experiment: str | None = None, path: str | Path | None = None) -> Path | None:
        """Write V1/V4 params reproducing the current setting (:func:`dtlab.whatif.save_params`)."""
        experiment = experiment or self.controls["save_experiment"].value
        path = Path(path or self.controls["save_path"].value)
        try:
            if self._job_path is None:
                raise SpecError("job", "saving params needs the job as a file (load one by path)")
            out = save_params(experiment, path, cluster_path=self._cluster_path or EXAMPLES / "cluster-hetero.yaml",
                              job_path=self._job_path, knobs=self.knobs(),
                              policies=list(self.controls["policies"].value) or self._policies, seed=self.seed)
        except Exception as exc:
            self._status.value = f"<b style='color:#D55E00'>save failed: {exc}</b>"
            return None
        self._status.value = f"saved {experiment} params to {out}"
        return out

    def load(self, cluster_path: str, job_path: str) -> None:
        """Switch to another cluster/job (paths); errors show in the dashboard instead of raising."""
        try:
            cluster = load_cluster(cluster_path or EXAMPLES / "cluster-hetero.yaml")
            job = load_job(job_path or EXAMPLES / "job-pipeline.yaml", cluster=cluster)
        except Exception as exc:
            self._status.value = f"<b style='color:#D55E00'>{exc}</b>"
            return
        self.cluster, self.job = cluster, job
        self._cluster_path = cluster_path or EXAMPLES / "cluster-hetero.yaml"
        self._job_path = job_path or EXAMPLES / "job-pipeline.yaml"
        self._build_cluster_controls()
        self.widget.children[1].children = (self._sliders_box(), self.widget.children[1].children[1])
        self.update()

    def _changed(self, _change) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.debounce_s, self.update)
        self._timer.daemon = True
        self._timer.start()

    def update(self) -> dict[str, dict[str, float]]:
        """Recompute now with the current control values; returns ``result``."""
        with self._lock:
            start, cpu_start = time.perf_counter(), time.thread_time()
            policies = list(self.controls["policies"].value) or self._policies
            try:
                self.outcomes = evaluate(self.cluster, self.job, policies, self.knobs(), self.samples, self.seed)
            except Exception as exc:  # a bad calibration file or scenario: say so, keep the last result
                self._status.value = f"<b style='color:#D55E00'>{exc}</b>"
                return self.result
            self.result = {p: o.prediction for p, o in self.outcomes.items() if o.error is None}
            self.last_compute_ms = (time.perf_counter() - start) * 1000
            self._updates += 1
            self._render_table()
            # the numbers are on the page now; the figure (matplotlib, slow on a loaded host) follows
            self.last_numbers_ms = (time.perf_counter() - start) * 1000
            self.last_numbers_cpu_ms = (time.thread_time() - cpu_start) * 1000
            head = (f"updated in {self.last_numbers_ms:.0f} ms (update #{self._updates}: "
                    f"predictions {self.last_compute_ms:.0f} ms, CPU {self.last_numbers_cpu_ms:.0f} ms)")
            self._status.value = f"{head}; drawing the figure"
            self._render_figure()
            self.last_update_ms = (time.perf_counter() - start) * 1000
            self._status.value = f"{head}; figure redrawn, {self.last_update_ms:.0f} ms in all"
            return self.result

    # ------------------------------------------------------------ rendering
    def _render(self) -> None:
        self._render_table()
        self._render_figure()

    def _render_table(self) -> None:
        rows = "".join(
            f"<tr><td>{plots.display_name(p)}</td>"
            + ("".join(f"<td>{o.prediction[k]:.0f}</td>" for k in ("p50_ms", "p95_ms", "cvar95_ms"))
               + f"<td>{o.prediction['deadline_miss_prob']:.3f}</td>"
               + f"<td>{o.prediction.get('energy_j', float('nan')):.3g}</td>" if o.error is None
               else f"<td colspan=5>{o.error}</td>")
            + "</tr>"
            for p, o in self.outcomes.items())
        self._table.value = ("<table><tr><th>policy</th><th>p50 ms</th><th>p95 ms</th><th>CVaR95 ms</th>"
                             f"<th>P(miss)</th><th>energy J</th></tr>{rows}</table>")

    def _render_figure(self) -> None:
        # PNG bytes into an Image widget, not display() into an Output: a bare Figure has no PNG formatter unless
        # pyplot's inline backend is active, and display() from the Timer thread has no parent message to go to
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=110)
        self._figure_out.value = buf.getvalue()

    def figure(self):
        """Latency CDF per policy next to the node × stage placement map (zones on the node axis)."""
        return whatif_figure(self.outcomes, self.cluster, self.job)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


@plots.styled
def whatif_figure(outcomes, cluster: Cluster, job: Job):
    fig, (cdf, grid) = plots.figure(columns=2, height_ratio=0.42, ncols=2)
    ok = {p: o for p, o in outcomes.items() if o.error is None}
    for i, (policy, o) in enumerate(ok.items()):
        colour, marker = plots.style_of(policy, i)
        y = np.arange(1, o.latencies_ms.size + 1) / o.latencies_ms.size
        cdf.plot(o.latencies_ms / 1000, y, color=colour, label=plots.display_name(policy))
    if job.deadline_ms:
        cdf.axvline(job.deadline_ms / 1000, color=plots.GREY, linestyle="--", linewidth=0.8, label="deadline")
    cdf.set_xscale("log")  # policies differ by orders of magnitude when a link degrades
    cdf.set_xlabel("predicted job latency (s, log scale)")
    cdf.set_ylabel("CDF")
    if ok:
        cdf.legend(loc="lower right")
    nodes = sorted(cluster.nodes, key=lambda n: (n.zone, n.name))
    stages = list(job.topo_order)
    policies = list(ok)
    width = 1.0 / max(1, len(policies))
    for i, policy in enumerate(policies):
        colour, marker = plots.style_of(policy, i)
        for j, sid in enumerate(stages):
            node = ok[policy].placement.get(sid)
            if node is None:
                continue
            y = [n.name for n in nodes].index(node)
            grid.scatter(j + (i - (len(policies) - 1) / 2) * width * 0.8, y, color=colour, marker=marker, s=18,
                         label=plots.display_name(policy) if j == 0 else None)
    # the cluster's zones as bands behind the placement, so "where" reads as edge vs cloud at a glance
    for k, zone in enumerate(sorted({n.zone for n in nodes})):
        rows = [i for i, n in enumerate(nodes) if n.zone == zone]
        grid.axhspan(min(rows) - 0.5, max(rows) + 0.5, color=plots.GREY, alpha=0.08 if k % 2 else 0.18, lw=0)
        grid.text(1.01, (min(rows) + max(rows)) / 2, zone, transform=grid.get_yaxis_transform(), va="center",
                  fontsize=7, rotation=90)
    grid.set_yticks(range(len(nodes)), [f"{n.name} ({n.zone})" for n in nodes])
    grid.set_xticks(range(len(stages)), stages)
    grid.set_xlim(-0.6, len(stages) - 0.4)
    grid.set_ylim(-0.6, len(nodes) - 0.4)
    grid.set_xlabel("stage")
    grid.grid(True, linewidth=0.3)
    return fig
