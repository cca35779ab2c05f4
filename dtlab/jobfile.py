"""Job files of the project's predecessor: a top-level ``jobs:`` list, loaded into :class:`~dtlab.model.Job`.

The older layout (no ``apiVersion``/``kind``)::

    jobs:
      - id: etl-1                 # -> Job.name
        deadline_ms: 4000         # -> Job.deadline_ms
        priority: 2               # carried (Job.carried["priority"]): the twin has no priorities
        redundancy: 2             # carried (Job.carried["redundancy"]): replicas are not modelled
        stages:                   # run in the listed order (a chain: stage i+1 after stage i)
          - id: extract           # -> Stage.id
            type: ingest          # with size_mb, gives the service time (table below); carried too
            size_mb: 200          # data the stage processes; also the data the previous stage sends it
            resources: {cpu_cores: 1, mem_gb: 1, gpu_vram_gb: 0}   # cpu, mem_gb; gpu_vram_gb carried
            allowed_formats: [native, wasm]                       # -> constraints.formats

How each field maps, and why:

* The older files carry no durations; the predecessor derived a stage's time from its data
  size and kind. Here ``duration_ms = size_mb * STAGE_TYPE_MS_PER_MB[type]`` (at least 1 ms),
  the reference time on one core of speed 1.0, native amd64, like ``Compute.duration_ms``.
  The table is an assumption of this loader, not a measurement: pass ``ms_per_mb=`` to
  :func:`load_jobs` to use your own. An unknown ``type`` is an error naming the known ones.
* Stages form a chain in list order; stage i sends stage i+1 its input (``size_mb`` of stage
  i+1) as ``output_mb``. The first stage's data is local (the older files have no origin zone).
* Fields the twin does not model are accepted and carried unchanged in ``Job.carried``
  (``priority``, ``redundancy``) and ``Stage.carried`` (``type``, ``size_mb``, ``gpu_vram_gb``),
  so a user's tooling can still read them; predictors ignore them.
* Any other key is an error naming its path (``jobs[0].stages[1].resources.gpus: unknown key``).

:func:`load_jobs` also reads ``dtlab/v1`` / ``fabric.dt/v1`` Job files (every ``kind: Job``
document), so ``dtlab plan`` and ``dtlab simulate --jobs`` take either; :func:`pick_job` selects
one by id (``--job-id``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .errors import SpecError
from .model import NODE_FORMATS, Compute, Constraints, Job, Stage, _topo_order, job_from_dict
from .spec_reader import Fields, join, read_documents

#: Reference service time per MB of data by stage type (ms per MB on one speed-1.0 core).
#: An assumption of this loader (the older files carried none); override with ``ms_per_mb=``.
STAGE_TYPE_MS_PER_MB: dict[str, float] = {
    "ingest": 1.0,       # read/parse
    "preprocess": 4.0,   # filter, resize, decode
    "compute": 10.0,     # generic CPU-bound transform
    "inference": 20.0,   # model inference
    "aggregate": 2.0,    # reduce/merge
    "store": 1.0,        # write out
}
MIN_DURATION_MS = 1.0


def is_older_jobs_file(doc: Any) -> bool:
    """A document of the older layout: a mapping whose ``jobs`` is a list and that has no ``kind``."""
    return isinstance(doc, dict) and "kind" not in doc and isinstance(doc.get("jobs"), list)


def load_jobs(source: str | Path | dict, ms_per_mb: Mapping[str, float] | None = None) -> list[Job]:
    """Every job of a file: the older ``jobs:`` list, or each ``kind: Job`` document of a dtlab file."""
    docs = read_documents(source)
    table = dict(STAGE_TYPE_MS_PER_MB if ms_per_mb is None else ms_per_mb)
    jobs: list[Job] = []
    for d, doc in enumerate(docs):
        prefix = f"documents[{d}]." if len(docs) > 1 else ""
        if is_older_jobs_file(doc):
            jobs.extend(_older_jobs(doc, table, prefix))
        elif isinstance(doc, dict) and (doc.get("kind") == "Job" or ("kind" not in doc and "spec" in doc)):
            jobs.append(job_from_dict({**doc, "kind": "Job"}))
    if not jobs:
        raise SpecError(str(source) if not isinstance(source, dict) else "<input>",
                        "no jobs: expected a top-level `jobs:` list (older layout) or a `kind: Job` document")
    names = [j.name for j in jobs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"jobs[{i}].id", f"duplicate job id {name!r}")
    return jobs


def pick_job(jobs: list[Job], job_id: str | None, source: Any = "jobs") -> Job:
    """The job named ``job_id``; without one, the only job (several jobs need ``--job-id``)."""
    if job_id is None:
        if len(jobs) == 1:
            return jobs[0]
        raise SpecError("--job-id", f"{source} holds {len(jobs)} jobs ({', '.join(j.name for j in jobs)}): pick one")
    for job in jobs:
        if job.name == job_id:
            return job
    raise SpecError("--job-id", f"no job {job_id!r} in {source} (has: {', '.join(j.name for j in jobs)})")


def _older_jobs(doc: dict, table: Mapping[str, float], prefix: str) -> list[Job]:
    top = Fields(doc, prefix.rstrip("."))
    raw_jobs = top.list("jobs", required=True)
    top.done()
    return [_older_job(Fields(raw, join(prefix + "jobs", i)), table) for i, raw in enumerate(raw_jobs)]


def _older_job(f: Fields, table: Mapping[str, float]) -> Job:
    name = f.str("id", required=True)
    deadline = f.num("deadline_ms", None, gt=0)
    carried: dict[str, Any] = {}
    # read even when absent, so an unknown-key error lists them among the known keys
    priority, redundancy = f.int("priority", None), f.int("redundancy", None, ge=1)
    if priority is not None:
        carried["priority"] = priority
    if redundancy is not None:
        carried["redundancy"] = redundancy
    raw_stages = f.list("stages", required=True)
    f.done()
    parsed = []
    for i, raw in enumerate(raw_stages):
        s = Fields(raw, join(f.at("stages"), i))
        sid = s.str("id", required=True)
        kind = s.str("type", required=True)
        if kind not in table:
            raise SpecError(s.at("type"), f"unknown stage type {kind!r} (known: {', '.join(sorted(table))}; "
                                          "pass ms_per_mb= to load_jobs for others)")
        size = s.num("size_mb", 0.0, ge=0)
        r = s.sub("resources")
        cpu, mem, vram = 1.0, 0.5, None
        if r is not None:
            cpu = r.num("cpu_cores", 1.0, gt=0)
            mem = r.num("mem_gb", 0.5, ge=0)
            vram = r.num("gpu_vram_gb", None, ge=0)
            r.done()
        formats = s.str_list("allowed_formats", NODE_FORMATS)
        s.done()
        stage_carried: dict[str, Any] = {"type": kind, "size_mb": size}
        if vram is not None:
            stage_carried["gpu_vram_gb"] = vram
        duration = max(size * float(table[kind]), MIN_DURATION_MS)
        parsed.append((sid, Compute(cpu=cpu, mem_gb=mem, duration_ms=duration), size,
                       Constraints(formats=formats), stage_carried))
    stages = []
    for i, (sid, compute, size, constraints, stage_carried) in enumerate(parsed):
        if sid in [p[0] for p in parsed[:i]]:
            raise SpecError(join(f.at("stages"), i) + ".id", f"duplicate stage id {sid!r}")
        after = (parsed[i - 1][0],) if i else ()
        out_mb = parsed[i + 1][2] if i + 1 < len(parsed) else 0.0
        stages.append(Stage(id=sid, compute=compute, after=after, output_mb=out_mb,
                            constraints=constraints, carried=stage_carried))
    _topo_order(tuple(stages), f.at("stages"))
    return Job(name=name, stages=tuple(stages), deadline_ms=deadline, carried=carried)
