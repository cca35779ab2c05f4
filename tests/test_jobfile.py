"""Older job files (a top-level ``jobs:`` list): dtlab.load_jobs, and `dtlab plan` / `simulate` --job-id."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import dtlab
from dtlab import cli
from dtlab.jobfile import STAGE_TYPE_MS_PER_MB, load_jobs

OLDER = "examples/jobs-older.yaml"
CLUSTER = "examples/cluster-hetero.yaml"


def _older(**job):
    base = {"id": "j", "stages": [{"id": "s", "type": "compute", "size_mb": 10}]}
    base.update(job)
    return {"jobs": [base]}


def test_load_jobs_maps_every_field_and_carries_the_unmodelled_ones():
    jobs = dtlab.load_jobs(OLDER)
    assert [j.name for j in jobs] == ["etl-1", "detect-1"]
    etl, detect = jobs
    assert etl.deadline_ms == 4000 and etl.carried == {"priority": 2, "redundancy": 1}
    assert [s.id for s in etl.stages] == ["extract", "transform", "load"]
    assert [s.after for s in etl.stages] == [(), ("extract",), ("transform",)]      # a chain, in order
    extract, transform, load = etl.stages
    assert extract.compute.cpu == 1 and extract.compute.mem_gb == 1
    assert extract.compute.duration_ms == 200 * STAGE_TYPE_MS_PER_MB["ingest"]
    assert transform.compute.duration_ms == 50 * STAGE_TYPE_MS_PER_MB["compute"]
    assert extract.output_mb == 50 and load.output_mb == 0                           # next stage's input
    assert extract.constraints.formats == ("native", "wasm") and load.constraints.formats is None
    assert extract.carried == {"type": "ingest", "size_mb": 200, "gpu_vram_gb": 0}
    assert detect.stages[1].carried["gpu_vram_gb"] == 8 and detect.carried["redundancy"] == 2


def test_carried_fields_do_not_change_equality_or_prediction():
    a = load_jobs(_older(priority=1))[0]
    b = load_jobs(_older(priority=9))[0]
    assert a == b and hash(a) == hash(b)
    twin = dtlab.Twin(dtlab.load_cluster(CLUSTER))
    pa = twin.plan(a, policy="greedy", samples=64, seed=0).prediction
    pb = twin.plan(b, policy="greedy", samples=64, seed=0).prediction
    assert pa == pb


@pytest.mark.parametrize("doc, field", [
    (_older(owner="x"), "jobs[0].owner"),
    (_older(stages=[{"id": "s", "type": "compute", "size_mb": 1, "gpus": 1}]), "jobs[0].stages[0].gpus"),
    (_older(stages=[{"id": "s", "type": "compute", "resources": {"cpu_cores": 1, "gpu": 1}}]),
     "jobs[0].stages[0].resources.gpu"),
    (_older(stages=[{"id": "s", "type": "warp", "size_mb": 1}]), "jobs[0].stages[0].type"),
    (_older(stages=[{"id": "s", "type": "compute", "size_mb": -1}]), "jobs[0].stages[0].size_mb"),
    (_older(stages=[{"id": "s", "type": "compute", "allowed_formats": ["docker"]}]),
     "jobs[0].stages[0].allowed_formats[0]"),
    (_older(stages=[{"id": "s", "type": "compute"}, {"id": "s", "type": "store"}]), "jobs[0].stages[1].id"),
    (_older(deadline_ms=0), "jobs[0].deadline_ms"),
    ({"jobs": [{"id": "a", "stages": [{"id": "s", "type": "store"}]},
               {"id": "a", "stages": [{"id": "s", "type": "store"}]}]}, "jobs[1].id"),
])
def test_bad_older_files_name_the_field(doc, field):
    with pytest.raises(dtlab.SpecError) as err:
        load_jobs(doc)
    assert err.value.field == field, str(err.value)


def test_unknown_key_error_lists_every_accepted_key_even_absent_ones():
    doc = {"jobs": [{"id": "a", "bogus": 1, "stages": [{"id": "s", "type": "store"}]}]}
    with pytest.raises(dtlab.SpecError) as err:
        load_jobs(doc)
    assert err.value.field == "jobs[0].bogus"
    for key in ("deadline_ms", "id", "priority", "redundancy", "stages"):
        assert key in str(err.value), str(err.value)


def test_load_jobs_reads_dtlab_job_files_too_and_custom_type_tables():
    assert [j.name for j in load_jobs("examples/job-pipeline.yaml")] == ["video-1"]
    job = load_jobs(_older(stages=[{"id": "s", "type": "warp", "size_mb": 2}]), ms_per_mb={"warp": 7.0})[0]
    assert job.stages[0].compute.duration_ms == 14.0


def test_plan_picks_a_job_by_id_and_shows_carried_fields(capsys):
    code = cli.main(["plan", OLDER, "--job-id", "detect-1", "--cluster", CLUSTER, "--samples", "64", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["job"] == "detect-1" and set(data["placement"]) == {"decode", "infer"}
    assert data["carried"]["priority"] == 5 and data["carried"]["stages"]["infer"]["gpu_vram_gb"] == 8


@pytest.mark.parametrize("argv, needle", [
    (["plan", OLDER, "--cluster", CLUSTER], "--job-id: "),                 # two jobs, none picked
    (["plan", OLDER, "--job-id", "nope", "--cluster", CLUSTER], "no job 'nope'"),
    (["simulate", "--cluster", CLUSTER, "--out", "/dev/null"], "--workload"),
])
def test_job_id_errors_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_simulate_accepts_an_older_job_file(tmp_path, capsys):
    out = tmp_path / "r.csv"
    code = cli.main(["simulate", "--cluster", CLUSTER, "--jobs", OLDER, "--job-id", "etl-1", "--rate-per-s", "2",
                     "--count", "20", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(out)
    assert len(df) == 20 and df["latency_ms"].gt(0).all()
    # with a Workload spec, --jobs replaces its template (arrivals and count from the workload)
    out2 = tmp_path / "r2.csv"
    assert cli.main(["simulate", "--cluster", CLUSTER, "--workload", "examples/workload.yaml", "--jobs", OLDER,
                     "--job-id", "detect-1", "--out", str(out2)]) == 0
    assert len(pd.read_csv(out2)) == dtlab.load_workload("examples/workload.yaml").count
