"""Run experiments headlessly: params file -> validated params -> papermill -> ``outputs/<exp>/<run-id>/``.

The notebook is the experiment's record (it is what a reader opens), so the runner executes the
notebook rather than calling ``run()`` directly; the notebook itself saves its tables and figures
into the run directory it is given (``out_dir``). The runner adds what a notebook cannot know:
``run.json`` with params, seed, git revision, package versions, host and start/end time.

Guarantees (each one is tested):
- params are checked BEFORE any kernel starts: bad YAML, a key the notebook does not declare, or a
  value the experiment's own validation rejects -> ``SpecError`` naming the file and key;
- run-id = short hash of (experiment, effective params): the same params skip a finished run
  unless ``force``;
- a run is built in a temp directory and renamed into place, so a failing notebook or a crash
  leaves earlier results untouched (the failed attempt is kept under ``<exp>/_failed/<run-id>``);
- a notebook failure names the failing cell.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence


from . import experiments as _experiments
from . import results as _results
from .atomic import atomic_write_text, replace_dir
from .errors import DtlabError, SpecError
from .experiments import EXPERIMENTS, Experiment

KERNEL_NAME = "dtlab"
OUT_DIR_PARAM = "out_dir"     # set by the runner, never by a params file
FAILED_DIR = "_failed"
_PACKAGES = ("dtlab", "numpy", "pandas", "scipy", "simpy", "matplotlib", "papermill", "nbclient",
             "ipykernel", "pyyaml", "kubernetes", "wasmtime")


class RunFailed(DtlabError):
    """A notebook raised (or did not write its results); the message names the cell."""


@dataclass(frozen=True)
class RunOutcome:
    experiment: str
    run_id: str
    run_dir: Path
    status: str                 # "ok" | "skipped" | "failed"
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class PreparedRun:
    """Everything decided before a kernel starts (so errors surface before any work is done)."""

    experiment: Experiment
    notebook: Path
    params: dict = field(default_factory=dict)
    params_file: Path | None = None
    run_id: str = ""


# --- locating things ----------------------------------------------------------------------------
def project_root() -> Path:
    """The checkout holding ``notebooks/`` and ``params/`` (``$DTLAB_ROOT`` overrides)."""
    env = os.environ.get("DTLAB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "notebooks").is_dir():
        return here
    cwd = Path.cwd()
    return cwd if (cwd / "notebooks").is_dir() else here


def get_experiment(name: str | Experiment) -> Experiment:
    """The experiment record (:func:`dtlab.experiments.get`, the one registry)."""
    return _experiments.get(name)


def resolve_experiments(names: Sequence[str]) -> list[Experiment]:
    """``["all"]`` -> every experiment; otherwise each name (case-insensitive), in the order given."""
    if any(str(n).lower() == "all" for n in names):
        return list(EXPERIMENTS.values())
    return [get_experiment(n) for n in dict.fromkeys(names)]


def default_params_file(exp: Experiment, smoke: bool = False, root: Path | None = None) -> Path:
    """The experiment's params file under ``root`` (default: :func:`project_root`)."""
    return exp.params_file(smoke, root or project_root())


# --- params -------------------------------------------------------------------------------------
PARAMS_MAX_NODES = 50_000  # YAML nodes of a params file after alias expansion (real ones have < 500)

def load_params_file(path: str | os.PathLike) -> dict:
    """A params YAML as a dict; bad YAML or a non-mapping is a ``SpecError`` naming the file and line."""
    from .safe_yaml import load, read_text
    path = Path(path)
    data = load(read_text(path, what="params file"), where=str(path), max_nodes=PARAMS_MAX_NODES)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(str(path), f"must be a mapping of parameter: value, got {type(data).__name__}")
    return data


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """Parameters the notebook declares in its ``parameters`` cell: name -> default (as source text)."""
    import papermill

    nb = Path(notebook)
    if not nb.exists():
        raise DtlabError(f"{nb}: notebook not found")
    return {name: info.get("default") for name, info in papermill.inspect_notebook(str(nb)).items()}


def validate_params(exp: Experiment, params: Mapping[str, Any], notebook: Path,
                    source: str = "params") -> dict:
    """Check ``params`` and return the effective params the notebook will get.

    Effective = the experiment module's ``DEFAULTS`` overlaid by ``params`` (so a partial file
    means "defaults for the rest", never the notebook's smoke-sized defaults); the module's own
    ``check`` must accept it (it only moves errors before the kernel: ``run`` re-checks anyway).
    """
    declared = notebook_parameters(notebook)
    if OUT_DIR_PARAM in params:
        raise SpecError(f"{source}:{OUT_DIR_PARAM}", "is set by the runner (use --out), not by a params file")
    for key in params:
        if key not in declared:
            known = ", ".join(k for k in declared if k != OUT_DIR_PARAM)
            raise SpecError(f"{source}:{key}", f"unknown parameter of {exp.id} (its notebook declares: {known})")
    module = exp.load()
    effective = dict(module.DEFAULTS)
    effective.update(params)
    effective = {k: v for k, v in effective.items() if k in declared and k != OUT_DIR_PARAM}
    try:
        module.check(dict(effective))
    except SpecError as exc:
        raise SpecError(f"{source}:{exc.field}" if exc.field else source, exc.rule) from None
    return effective


def import_experiment(exp: Experiment) -> ModuleType:
    """The experiment's module (:meth:`dtlab.experiments.Experiment.load`)."""
    return exp.load()


def run_id_for(exp: Experiment, params: Mapping[str, Any]) -> str:
    """The run id of ``exp`` with ``params`` (:func:`dtlab.results.run_id`, shared with sweeps)."""
    return _results.run_id(exp.id, params)


def prepare(exp: str | Experiment, params_file: str | os.PathLike | None = None, smoke: bool = False,
            overrides: Mapping[str, Any] | None = None, root: Path | None = None) -> PreparedRun:
    """Load and validate one experiment's params; raises ``SpecError`` before anything runs."""
    exp = get_experiment(exp)
    root = root or project_root()
    path = Path(params_file) if params_file else default_params_file(exp, smoke, root)
    params = load_params_file(path) if (params_file or path.exists()) else {}
    if overrides:
        params.update(overrides)
    notebook = Path(exp.notebook)
    notebook = notebook if notebook.is_absolute() else root / notebook
    effective = validate_params(exp, params, notebook, source=str(path))
    return PreparedRun(experiment=exp, notebook=notebook, params=effective, params_file=path,
                       run_id=run_id_for(exp, effective))


# --- kernel ---------------------------------------------------------------------------------------
KERNEL_QUIET = "--IPKernelApp.log_level=ERROR"   # ipykernel's per-start TCP warning is noise in batch runs


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """A kernelspec that runs THIS interpreter, so a fresh .venv works without a global Jupyter.

    Installed into ``sys.prefix`` (the venv); a user-level spec of another Python cannot shadow it
    because the name is ours. Falls back to a private dir on ``JUPYTER_PATH`` if the prefix is read-only.
    Check and install run under a file lock: installing replaces the spec's directory, and a second
    ``dtlab run`` started at the same moment in a fresh clone read ``kernel.json`` in between (CI: "No
    such file or directory", tests/e2e/test_hostlock_fabric.py).
    """
    import fcntl
    import tempfile

    from .datadir import cache_dir

    try:
        lock_dir = cache_dir() / "jupyter"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = open(lock_dir / "kernel.lock", "w")
    except OSError:      # no writable home: the lock is per user in the temp dir
        lock = open(Path(tempfile.gettempdir()) / f"dtlab-kernel-{os.getuid()}.lock", "w")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_kernel_locked(name)


def _ensure_kernel_locked(name: str) -> str:
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        if spec.argv and spec.argv[0] == sys.executable and KERNEL_QUIET in spec.argv:
            return name
    except NoSuchKernel:
        pass
    display = f"Python (dtlab, {Path(sys.prefix).name})"
    try:
        where = install(kernel_name=name, display_name=display, prefix=sys.prefix)
    except OSError:
        private = Path.home() / ".cache" / "dtlab" / "jupyter"
        where = install(kernel_name=name, display_name=display, prefix=str(private))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(private / "share" / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    spec_file = Path(where) / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["argv"] = [*spec["argv"], KERNEL_QUIET]
    atomic_write_text(spec_file, json.dumps(spec, indent=1) + "\n")
    return name


# --- provenance -----------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(root: Path) -> dict:
    """Git revision, package versions and host: what a reader needs to reproduce a number."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "git": {"revision": _git(root, "rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None},
        "packages": versions,
        "host": {"name": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
    }


def now_iso() -> str:
    """UTC now, ISO 8601 to the second (run.json's ``started``/``finished``; sweeps use it too)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def seed_of(params: Mapping[str, Any]):
    """The run's ``seed`` (or ``seeds``) parameter as given; None without one."""
    for key in ("seed", "seeds"):
        if key in params:
            return params[key]
    return None


# --- running ----------------------------------------------------------------------------------------
def is_finished(run_dir: Path) -> bool:
    info = _results.read_json(run_dir / _results.RUN_FILE) if (run_dir / _results.RUN_FILE).exists() else {}
    return info.get("status") == "ok" and (run_dir / _results.METRICS_FILE).exists()


def _describe_failure(exc: BaseException, exp: Experiment) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        src = next((ln.strip() for ln in (exc.source or "").splitlines() if ln.strip()), "")
        # cell_index counts the injected-parameters cell; exec_count is what Jupyter shows as In [n].
        return (f"{exp.id}: notebook {Path(exp.notebook).name} failed in cell In[{exc.exec_count}] "
                f"(cell index {exc.cell_index}): {exc.ename}: {exc.evalue}\n    > {src}")
    return f"{exp.id}: notebook {Path(exp.notebook).name} failed: {type(exc).__name__}: {exc}"


def _expected_outputs(run_dir: Path) -> list[str]:
    missing = [n for n in (f"{_results.MAIN_TABLE}.csv", _results.METRICS_FILE) if not (run_dir / n).exists()]
    figs = run_dir / _results.FIGURES_DIR
    if not (list(figs.glob("*.pdf")) and list(figs.glob("*.png"))):
        missing.append("figures/*.pdf|png")
    return missing


def wall_clock_reason(prep: PreparedRun) -> str | None:
    """Why this run measures wall-clock time (see :func:`dtlab.hostlock.wall_clock`), or None."""
    from . import hostlock
    return hostlock.wall_clock(prep.params)


def execute(prep: PreparedRun, out_root: str | os.PathLike = "outputs", force: bool = False,
            progress: bool = False, kernel: str | None = None, lock_timeout_s: float | None = None) -> RunOutcome:
    """Execute a prepared run (skip if finished unless ``force``); never raises for a notebook error.

    A wall-clock run (:func:`wall_clock_reason`) first takes the host lock (dtlab/hostlock.py) and
    keeps it until its notebook finished; waiting is printed and recorded in run.json
    (``host_lock``: exclusive, waited_s); not getting it within ``lock_timeout_s`` fails the run.
    """
    from . import hostlock

    exp = prep.experiment
    out_root = Path(out_root).resolve()
    final = out_root / exp.id / prep.run_id
    if not force and is_finished(final):
        return RunOutcome(exp.id, prep.run_id, final, "skipped")
    reason = wall_clock_reason(prep)
    if reason is None:
        return _execute(prep, out_root, progress, kernel, {"exclusive": False, "why": "no wall-clock substrate"})
    try:
        hold = hostlock.acquire(f"dtlab run {exp.id} {prep.run_id} (pid {os.getpid()})", lock_timeout_s,
                                on_wait=lambda msg: print(msg, file=sys.stderr, flush=True))
    except hostlock.HostBusy as exc:
        return RunOutcome(exp.id, prep.run_id, final, "failed", error=str(exc))
    try:
        return _execute(prep, out_root, progress, kernel, {**hold.info(), "why": reason})
    finally:
        hostlock.release(hold)


def _execute(prep: PreparedRun, out_root: Path, progress: bool, kernel: str | None, host_lock: dict) -> RunOutcome:
    import papermill

    exp = prep.experiment
    final = out_root / exp.id / prep.run_id
    kernel = kernel or ensure_kernel()
    root = project_root()
    tmp = out_root / exp.id / f".tmp-{prep.run_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    started, t0 = now_iso(), time.perf_counter()
    info = {"experiment": exp.id, "run_id": prep.run_id, "status": "running", "notebook": exp.notebook,
            "params_file": str(prep.params_file) if prep.params_file else None, "params": _results.jsonable(prep.params, nonfinite="text"),
            "seed": seed_of(prep.params), "substrate": prep.params.get("substrate", "sim"),
            "host_lock": host_lock, "started": started, **provenance(root)}
    error = None
    try:
        papermill.execute_notebook(
            str(prep.notebook), str(tmp / prep.notebook.name),
            parameters={**prep.params, OUT_DIR_PARAM: "."}, kernel_name=kernel, cwd=str(tmp),
            progress_bar=progress, log_output=False, report_mode=False)
        missing = _expected_outputs(tmp)
        if missing:
            error = f"{exp.id}: notebook ran but did not write {', '.join(missing)}"
    except Exception as exc:  # noqa: BLE001 - any kernel/notebook failure becomes a failed run
        error = _describe_failure(exc, exp)
    except BaseException:      # Ctrl-C: leave no half-built run directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    # `substrate: auto` is a request; the experiment's metrics say which substrate it actually got
    info.update(substrate_info(tmp, info["substrate"]))
    info.update(status="failed" if error else "ok", error=error, finished=now_iso(), duration_s=round(seconds, 3))
    atomic_write_text(tmp / _results.RUN_FILE, _results.dumps(info))
    if error:
        failed = out_root / exp.id / FAILED_DIR / prep.run_id
        failed.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, failed)
        return RunOutcome(exp.id, prep.run_id, failed, "failed", seconds, error)
    replace_dir(tmp, final)
    return RunOutcome(exp.id, prep.run_id, final, "ok", seconds)


def substrate_info(run_dir: Path, requested: str) -> dict:
    """The substrate the run really used (``substrate: auto`` resolves inside the experiment), from
    the metrics the notebook saved: ``substrate``, ``substrate_requested``, ``substrate_note`` and, on
    the fabric, ``substrate_metadata`` (cgroups, scale, link-shaping mechanism per link)."""
    path = run_dir / _results.METRICS_FILE
    try:
        metrics = _results.read_json(path) if path.exists() else {}
    except (OSError, DtlabError):
        metrics = {}
    if not isinstance(metrics.get("substrate"), str):
        return {}
    out = {"substrate_requested": metrics.get("substrate_requested", requested)}
    for key in ("substrate", "substrate_note", "substrate_metadata", "host_noise", "calibration"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def schedule(preps: Sequence[PreparedRun]) -> list[list[PreparedRun]]:
    """Tasks for parallel workers: every wall-clock run in ONE task (one after the other, so they
    never measure each other), then one task per sim/twin-only run (those run in parallel with
    each other, before the wall-clock task: :func:`run`)."""
    wall = [p for p in preps if wall_clock_reason(p)]
    return ([wall] if wall else []) + [[p] for p in preps if p not in wall]


def _execute_in_worker(preps: Sequence[PreparedRun], out_root: str, force: bool,
                       lock_timeout_s: float | None = None) -> list[RunOutcome]:
    """Run ``preps`` one after the other in this worker process (a list: the wall-clock runs share one
    worker so that they never run at the same time; the others come one per task)."""
    out = []
    for prep in preps:
        # an unexpected error in one run must not hide the other experiments' outcomes
        try:
            out.append(execute(prep, out_root, force=force, progress=False, lock_timeout_s=lock_timeout_s))
        except Exception as exc:  # noqa: BLE001
            out.append(RunOutcome(prep.experiment.id, prep.run_id, Path(out_root) / prep.experiment.id, "failed",
                                  error=f"{prep.experiment.id}: {type(exc).__name__}: {exc}"))
    return out


def run(names: Sequence[str], params_file: str | os.PathLike | None = None, smoke: bool = False,
        out_root: str | os.PathLike = "outputs", jobs: int = 1, force: bool = False,
        progress: bool = True, overrides: Mapping[str, Any] | None = None,
        lock_timeout_s: float | None = None) -> list[RunOutcome]:
    """Run experiments (``["all"]`` for all six). Every params file is validated before the first
    kernel starts, so a typo in V6's file does not waste V1's minutes. ``jobs`` > 1 runs
    experiments in parallel processes: first the sim/twin-only ones, then the wall-clock ones (fabric)
    one at a time under the host lock (:func:`execute`) with nothing of this run beside them. (They
    used to run beside the sims, which take a minute or two: a V1 fabric run that had them beside it
    for its first two minutes saw 82 % foreign CPU on its node cores and was flagged NOISY.)"""
    from tqdm.auto import tqdm

    experiments = resolve_experiments(names)
    if params_file and len(experiments) > 1:
        raise SpecError("--params", "one params file can only go with one experiment")
    preps = [prepare(e, params_file, smoke, overrides) for e in experiments]
    ensure_kernel()
    outcomes: list[RunOutcome] = []
    bar = tqdm(total=len(preps), desc="experiments", unit="exp", disable=not progress or len(preps) < 2)

    def report(o: RunOutcome) -> None:
        outcomes.append(o)
        msg = {"ok": f"done in {o.seconds:.1f} s", "skipped": "already finished (use --force to re-run)",
               "failed": "FAILED"}[o.status]
        bar.write(f"{o.experiment} {o.run_id}: {msg} -> {o.run_dir}")
        bar.update(1)

    if jobs > 1 and len(preps) > 1:
        import multiprocessing as mp

        tasks = schedule(preps)
        wall = [t for t in tasks if any(wall_clock_reason(p) for p in t)]
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            for phase in ([t for t in tasks if t not in wall], wall):     # sims first, then the measured lane alone
                futures = [pool.submit(_execute_in_worker, t, str(out_root), force, lock_timeout_s) for t in phase]
                for fut in as_completed(futures):
                    for o in fut.result():
                        report(o)
    else:
        for p in preps:
            report(execute(p, out_root, force=force, progress=progress and len(preps) == 1,
                           lock_timeout_s=lock_timeout_s))
    bar.close()
    order = {p.experiment.id: i for i, p in enumerate(preps)}
    return sorted(outcomes, key=lambda o: order[o.experiment])


def regenerate_figures(out_root: str | os.PathLike = "outputs",
                       experiments: Iterable[str] | None = None) -> tuple[list[Path], list[str]]:
    """Redraw every finished run's figures from its saved CSVs (no experiment code runs).

    Returns (files written, experiments skipped because they have no figure function yet).
    """
    from . import plots

    written: list[Path] = []
    skipped: list[str] = []
    for saved in _results.iter_runs(out_root, experiments):
        if saved.status != "ok":
            continue
        if saved.experiment.upper() not in plots.FIGURES:
            skipped.append(saved.experiment)
            continue
        written += plots.save_experiment_figures(saved.experiment, saved.tables(),
                                                 saved.run_dir / _results.FIGURES_DIR)
    return written, sorted(set(skipped))
