"""Load generator: arrival processes have the rates they claim, Workload files load and replay."""
import numpy as np
import pytest

from dtlab.errors import SpecError
from dtlab.model import load_workload
from dtlab.workload import arrival_stream, readers
from dtlab.workload.generate import (TEMPLATES, arrival_times, diurnal_times, draw_durations, mmpp_times,
                                     write_workload)



def test_poisson_rate_and_exponential_gaps():
    t = arrival_times("poisson", np.random.default_rng(0), 20_000, 4.0)
    gaps = np.diff(t)
    assert np.all(gaps >= 0)
    assert 20_000 / t[-1] == pytest.approx(4.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)      # CV of Exp = 1


def test_mmpp_long_run_rate_and_burstiness():
    rates, stays = [20.0, 1.0], [5.0, 20.0]
    t = mmpp_times(np.random.default_rng(1), 50_000, rates, stays)
    assert np.all(np.diff(t) >= 0) and len(t) == 50_000
    expected = (20 * 5 + 1 * 20) / 25                                      # 4.8 / s
    assert len(t) / t[-1] == pytest.approx(expected, rel=0.1)
    counts = np.bincount(t.astype(int))                                    # arrivals per second
    assert counts.var() / counts.mean() > 3                                # Poisson would be ~1


def test_diurnal_rate_follows_the_cosine():
    t = diurnal_times(np.random.default_rng(2), 60_000, rate_per_s=1.0, amplitude=0.8, period_s=1000.0)
    phase = (t % 1000.0)
    near_peak = ((phase < 100) | (phase > 900)).sum()
    near_trough = ((phase > 400) & (phase < 600)).sum()
    # mean rate over +-100 s of the peak / trough: 1 + 0.8*sinc-ish factor ~ 1.75 vs 0.25
    assert near_peak / near_trough == pytest.approx(1.748 / 0.252, rel=0.15)


@pytest.mark.parametrize("bad,field", [
    (dict(process="mmpp", rates_per_s=[1.0], mean_sojourn_s=[1.0]), "mean_sojourn_s"),
    (dict(process="mmpp", rates_per_s=[1.0, 2.0]), "rates_per_s"),
    (dict(process="diurnal", amplitude=1.5), "amplitude"),
    (dict(process="diurnal", phase=3), "phase"),
    (dict(process="bursty"), "process"),
])
def test_bad_arrival_parameters_name_the_field(bad, field):
    process = bad.pop("process")
    with pytest.raises(SpecError, match=field):
        arrival_times(process, np.random.default_rng(0), 10, 1.0, **bad)


def test_durations_parametric_means():
    rng = np.random.default_rng(3)
    assert draw_durations({"dist": "lognormal", "mean_s": 2.0, "sigma": 0.8}, rng, 100_000).mean() == pytest.approx(2.0, rel=0.03)
    assert draw_durations({"dist": "exponential", "mean_s": 0.5}, rng, 100_000).mean() == pytest.approx(0.5, rel=0.03)
    with pytest.raises(SpecError, match="durations.dist"):
        draw_durations({"dist": "pareto"}, rng, 3)


def test_durations_from_a_trace_are_its_values():
    d = draw_durations({"trace": "azure-functions-2021"}, np.random.default_rng(4), 500)
    real_values = set(readers.read_azure_functions_2021()["duration_s"])
    assert set(d) <= real_values and len(set(d)) > 50


@pytest.mark.parametrize("process,extra", [("poisson", {}), ("mmpp", {"rates_per_s": [5.0, 0.5], "mean_sojourn_s": [2.0, 8.0]}),
                                           ("diurnal", {"amplitude": 0.5, "period_s": 60.0})])
def test_spec_workload_file_loads_and_streams_deterministically(tmp_path, process, extra):
    out = write_workload(tmp_path / "w.yaml", template="pipeline", count=200, process=process,
                         rate_per_s=2.0, arrivals=extra, durations={"dist": "lognormal", "sigma": 0.3})
    assert out.jobs_path is None
    w = load_workload(out.workload_path)
    assert w.arrivals.process == process and w.count == 200 and w.template.name == "pipeline"
    a = list(arrival_stream(w, np.random.default_rng(9)))
    b = list(arrival_stream(w, np.random.default_rng(9)))
    assert a == b and len(a) == 200
    times = np.array([x[0] for x in a])
    assert np.all(np.diff(times) >= 0) and times[0] > 0


def test_materialised_trace_workload_replays_the_written_stream(tmp_path):
    out = write_workload(tmp_path / "azure.yaml", template="single", count=300, process="mmpp",
                         arrivals={"rates_per_s": [10.0, 1.0], "mean_sojourn_s": [1.0, 5.0]},
                         durations={"trace": "azure-functions-2021"}, seed=5)
    assert out.jobs_path.exists()
    w = load_workload(out.workload_path)
    assert w.arrivals.process == "trace" and w.arrivals.trace["format"] == "dtlab-jobs"
    stream = list(arrival_stream(w, np.random.default_rng(0)))
    scales = np.array([s for _, _, s in stream])
    assert len(stream) == 300 and scales.mean() == pytest.approx(1.0, rel=1e-3)
    again = write_workload(tmp_path / "again.yaml", template="single", count=300, process="mmpp",
                           arrivals={"rates_per_s": [10.0, 1.0], "mean_sojourn_s": [1.0, 5.0]},
                           durations={"trace": "azure-functions-2021"}, seed=5)
    assert again.jobs_path.read_text() == out.jobs_path.read_text()     # same seed, same file


def test_openb_trace_arrivals_in_a_workload():
    from dtlab.model import workload_from_dict
    w = workload_from_dict({"arrivals": {"trace": {"format": "alibaba-openb", "time_scale": 0.001}},
                            "jobs": {"template": TEMPLATES["single"], "count": 50}})
    stream = list(arrival_stream(w, np.random.default_rng(0)))
    pods = readers.read_openb_pods().sort_values("creation_time", kind="stable").head(50)
    expected_ms = (pods["creation_time"] - pods["creation_time"].iloc[0]).to_numpy() * 1000 * 0.001
    np.testing.assert_allclose([t for t, _, _ in stream], expected_ms)


def test_template_from_file_and_unknown_duration_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("apiVersion: dtlab/v1\nkind: Job\nmetadata: {name: j}\n"
                   "spec: {stages: [{id: a, compute: {cpu: 2, duration_ms: 500}}]}\n")
    out = write_workload(tmp_path / "w.yaml", template=str(job), count=5, durations={"dist": "constant", "mean_s": 2.0})
    w = load_workload(out.workload_path)
    assert w.template.stages[0].compute.duration_ms == pytest.approx(2000.0)
    with pytest.raises(SpecError, match="durations.mu"):
        write_workload(tmp_path / "x.yaml", durations={"dist": "lognormal", "mu": 1})


def test_workload_generate_cli(tmp_path):
    from dtlab.cli import main
    out = tmp_path / "burst.yaml"
    assert main(["workload", "generate", "--out", str(out), "--process", "mmpp", "--rates", "5,0.5",
                 "--sojourn-s", "2,8", "--count", "40", "--template", "fanout"]) == 0
    w = load_workload(out)
    assert w.arrivals.process == "mmpp" and dict(w.arrivals.extra)["rates_per_s"] == [5.0, 0.5]
    assert main(["workload", "generate", "--out", str(out), "--process", "mmpp", "--count", "4"]) == 2


def test_trace_absolute_durations_reproduce_creation_to_deletion():
    from dtlab.model import workload_from_dict
    w = workload_from_dict({"arrivals": {"trace": {"format": "alibaba-openb", "time_scale": 0.01,
                                                   "durations": "absolute"}},
                            "jobs": {"template": TEMPLATES["single"], "count": 20}})   # one 1000 ms stage
    stream = list(arrival_stream(w, np.random.default_rng(0)))
    pods = readers.read_openb_pods().sort_values("creation_time", kind="stable").head(20)
    expected_ms = (pods["deletion_time"] - pods["creation_time"]).to_numpy() * 1000 * 0.01
    np.testing.assert_allclose([s * 1000.0 for _, _, s in stream], expected_ms)
    with pytest.raises(SpecError, match="arrivals.trace.durations"):
        bad = workload_from_dict({"arrivals": {"trace": {"format": "alibaba-openb", "durations": "exact"}},
                                  "jobs": {"template": TEMPLATES["single"], "count": 2}})
        next(arrival_stream(bad, np.random.default_rng(0)))
