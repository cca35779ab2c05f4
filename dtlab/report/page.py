"""``dtlab report --out DIR``: one static HTML page over every finished run under ``outputs/``.

One card per run (experiment, date, substrate, params that differ from the experiment's defaults,
headline metrics with CIs, its figures, a link to the executed notebook) and two filters
(experiment, substrate). Everything the page shows is copied into ``DIR`` (figures as PNG, the
executed notebook and, when nbconvert is installed, an HTML rendering of it), so ``DIR/index.html``
opens from the file system with no server, and can be zipped or published as it is.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..errors import DtlabError
from ..results import SavedRun, atomic_write_text, iter_runs
from .tables import fmt_ci, headline_frame

MAX_METRICS = 8      # headline metrics per card (the experiment's own order: most important first)


def params_diff(run: SavedRun) -> dict[str, Any]:
    """Params of the run that differ from the experiment module's DEFAULTS (all params if unknown)."""
    params = run.info.get("params") or {}
    try:
        from ..experiments import get
        defaults = get(run.experiment).defaults
    except Exception:  # noqa: BLE001 - an unknown experiment still gets a card, with all its params
        defaults = None
    if not isinstance(defaults, Mapping):
        return dict(params)
    return {k: v for k, v in params.items() if k == "out_dir" or defaults.get(k, object()) != v}


def _metrics_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    long = headline_frame(metrics)
    rows = []
    for r in long.itertuples(index=False):
        est, ci = fmt_ci(r.value, r.ci_low, r.ci_high)
        rows.append((f"{r.group}.{r.metric}" if r.group else r.metric, est, ci))
    return rows


def _copy_run_files(run: SavedRun, dest: Path) -> tuple[list[str], str | None, str | None]:
    """Figures (PNG) and the executed notebook copied under ``dest``; relative paths for the page."""
    dest.mkdir(parents=True, exist_ok=True)
    figs = []
    for png in sorted((run.run_dir / "figures").glob("*.png")):
        shutil.copy2(png, dest / png.name)
        figs.append(png.name)
    nb_rel = nb_html = None
    notebooks = sorted(run.run_dir.glob("*.ipynb"))
    if notebooks:
        shutil.copy2(notebooks[0], dest / notebooks[0].name)
        nb_rel = notebooks[0].name
        nb_html = _notebook_html(notebooks[0], dest)
    return figs, nb_rel, nb_html


def _notebook_html(notebook: Path, dest: Path) -> str | None:
    """The executed notebook as static HTML (nbconvert), or None where nbconvert is missing or fails."""
    try:
        import nbformat
        from nbconvert import HTMLExporter
    except ImportError:
        return None
    try:
        body, _ = HTMLExporter(template_name="classic").from_notebook_node(nbformat.read(notebook, as_version=4))
    except Exception:  # noqa: BLE001 - the .ipynb link is still there
        return None
    name = notebook.stem + ".html"
    atomic_write_text(dest / name, body)
    return name


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _card(run: SavedRun, rel: str, figs: list[str], nb: str | None, nb_html: str | None) -> str:
    info = run.info
    substrate = info.get("substrate") or "unknown"
    started = str(info.get("started") or "")[:19].replace("T", " ")
    diff = params_diff(run)
    params_html = ("".join(f"<li><code>{_esc(k)}</code>: <code>{_esc(json.dumps(v))}</code></li>"
                           for k, v in diff.items()) or "<li>defaults</li>")
    all_rows = [f"<tr><td>{_esc(m)}</td><td class='num'>{_esc(e)}</td><td class='ci'>{_esc(c)}</td></tr>"
                for m, e, c in _metrics_rows(run.metrics)]
    head = "<thead><tr><th>metric</th><th>estimate</th><th>95 % CI</th></tr></thead>"
    rows = "".join(all_rows[:MAX_METRICS])
    more = (f"<details class='more'><summary>all {len(all_rows)} metrics</summary><table class='metrics'>{head}"
            f"<tbody>{''.join(all_rows)}</tbody></table></details>" if len(all_rows) > MAX_METRICS else "")
    figs_html = "".join(f"<img class='fig' src='{_esc(rel)}/{_esc(f)}' alt='{_esc(f)}'>" for f in figs)
    links = []
    if nb_html:
        links.append(f"<a href='{_esc(rel)}/{_esc(nb_html)}'>executed notebook (HTML)</a>")
    if nb:
        links.append(f"<a href='{_esc(rel)}/{_esc(nb)}'>executed notebook (.ipynb)</a>")
    rev = (info.get("git") or {}).get("revision") or ""
    return f"""
<section class="card" data-experiment="{_esc(run.experiment)}" data-substrate="{_esc(substrate)}" id="{_esc(run.experiment)}-{_esc(run.run_id)}">
  <h2>{_esc(run.experiment)} <span class="rid">{_esc(run.run_id)}</span></h2>
  <p class="meta">{_esc(started)} UTC &middot; substrate <b>{_esc(substrate)}</b> &middot; {_esc(info.get('duration_s', '?'))} s
     &middot; code <code>{_esc(rev[:10] or 'unknown')}{'+dirty' if (info.get('git') or {}).get('dirty') else ''}</code></p>
  <details><summary>params that differ from the defaults ({len(diff)})</summary><ul>{params_html}</ul></details>
  <table class="metrics headline">{head}<tbody>{rows}</tbody></table>{more}
  <div class="figs">{figs_html}</div>
  <p class="links">{' &middot; '.join(links) or 'no executed notebook saved'}</p>
</section>"""


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.filters{margin-bottom:1em} .filters label{margin-right:1.5em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:0.8em 1.2em;margin:0 0 1.2em 0}
.card h2{margin:0.2em 0;font-size:1.2em} .rid{color:#888;font-weight:normal;font-size:0.8em}
.meta{color:#555;font-size:0.9em} table.metrics{border-collapse:collapse;font-size:0.9em}
table.metrics td,table.metrics th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.ci{color:#666}
img.fig{max-width:480px;margin:6px 6px 0 0;border:1px solid #eee}
"""

_SCRIPT = """
function applyFilters(){
  const e=document.getElementById('f-experiment').value, s=document.getElementById('f-substrate').value;
  let shown=0;
  for(const c of document.querySelectorAll('section.card')){
    const ok=(!e||c.dataset.experiment===e)&&(!s||c.dataset.substrate===s);
    c.style.display=ok?'':'none'; if(ok) shown++;
  }
  document.getElementById('shown').textContent=shown;
}
document.getElementById('f-experiment').addEventListener('change',applyFilters);
document.getElementById('f-substrate').addEventListener('change',applyFilters);
applyFilters();
"""


def _select(name: str, values: list[str]) -> str:
    opts = "".join(f"<option value='{_esc(v)}'>{_esc(v)}</option>" for v in values)
    return f"<label>{name} <select id='f-{name}'><option value=''>all</option>{opts}</select></label>"


def build(out_dir: str | Path, outputs: str | Path = "outputs") -> tuple[Path, int]:
    """Write ``out_dir/index.html`` (+ copied figures/notebooks) over the finished runs; (page, run count)."""
    out = Path(out_dir)
    root = Path(outputs)
    if not root.is_dir():
        raise DtlabError(f"{root}: no outputs directory (run an experiment first: dtlab run V1 --smoke)")
    runs = [r for r in iter_runs(root) if r.status == "ok" and r.metrics]
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    for run in runs:
        rel = f"runs/{run.experiment}-{run.run_id}"
        figs, nb, nb_html = _copy_run_files(run, out / rel)
        cards.append(_card(run, rel, figs, nb, nb_html))
    exps = sorted({r.experiment for r in runs})
    subs = sorted({str(r.info.get("substrate") or "unknown") for r in runs})
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dtlab runs</title><style>{_STYLE}</style></head>
<body>
<h1>dtlab runs</h1>
<p>{len(runs)} finished run(s) under <code>{_esc(root)}</code>; <span id="shown">{len(runs)}</span> shown.
Estimates are means over seeds with 95 % CIs, rounded to their interval.</p>
<div class="filters">{_select('experiment', exps)}{_select('substrate', subs)}</div>
{''.join(cards) if cards else '<p id="empty">no finished runs yet: <code>make experiments</code></p>'}
<script>{_SCRIPT}</script>
</body></html>
"""
    page_path = atomic_write_text(out / "index.html", page)
    return page_path, len(runs)
