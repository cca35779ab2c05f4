"""Trace readers: row counts and units on the real files, line+column errors on malformed fixtures."""
from pathlib import Path

import numpy as np
import pytest

from dtlab.errors import SpecError
from dtlab.workload import readers as r

FIXTURES = Path(__file__).parent / "data" / "traces"


def test_openb_nodes_real_file():
    df = r.read_openb_nodes()
    assert len(df) == 1523
    assert list(df.columns) == ["name", "cpu_milli", "memory_mib", "gpu", "model"]
    assert df["gpu"].sum() == 6212                     # whole-cluster GPU count used by the replay
    assert set(df.loc[df["gpu"] == 0, "model"]) == {""}
    assert (df.loc[df["gpu"] > 0, "model"] != "").all()


@pytest.mark.parametrize("variant,rows", [("default", 8152), ("gpushare40", 8152),
                                          ("cpu050", 7439), ("multigpu50", 9061)])
def test_openb_pods_real_files(variant, rows):
    df = r.read_openb_pods(r.TRACE_DIR / "alibaba-openb" / f"openb_pod_list_{variant}.csv")
    assert len(df) == rows
    assert df["gpu_milli"].between(0, 1000).all()
    assert ((df["num_gpu"] == 0) == (df["gpu_milli"] == 0)).all()
    if variant == "multigpu50":          # this list carries no times: they read as NaN, not 0
        assert df["creation_time"].isna().all()
    else:
        assert df["creation_time"].notna().all()
        assert (df["deletion_time"] >= df["creation_time"]).all()


def test_v2017_batch_task_real_file():
    df = r.read_alibaba_v2017_batch_task()
    assert len(df) == 80553
    assert df["cpu_per_instance"].max() <= 64          # stored in 1/100 core, read in cores
    assert set(df["cpu_per_instance"].dropna().unique()) >= {0.5, 1.0}
    assert df.loc[df["status"] == "Terminated", "end_time_s"].notna().all()
    assert df["end_time_s"].isna().sum() == 208        # end 0 in the file = not ended


def test_azure_2021_real_file():
    df = r.read_azure_functions_2021()
    # the data README says 198; the file has 199 data rows (200 lines, no trailing newline)
    assert len(df) == 199
    np.testing.assert_allclose(df["start_s"] + df["duration_s"], df["end_s"])


@pytest.mark.parametrize("reader,fixture,line,column", [
    (r.read_openb_nodes, "openb_nodes_bad_memory.csv", 5, "memory_mib"),     # after a blank line
    (r.read_openb_nodes, "openb_nodes_gpu_without_model.csv", 3, "model"),
    (r.read_openb_pods, "openb_pods_bad_gpu_milli.csv", 3, "gpu_milli"),
    (r.read_openb_pods, "openb_pods_extra_field.csv", 3, "#12 (extra field)"),
    (r.read_openb_pods, "openb_pods_short_row.csv", 3, "num_gpu"),
    (r.read_openb_pods, "openb_pods_missing_column.csv", 1, "num_gpu"),
    (r.read_alibaba_v2017_batch_task, "v2017_batch_task_fractional_instances.csv", 3, "number_of_instances"),
    (r.read_azure_functions_2021, "azure2021_negative_duration.csv", 3, "duration"),
])
def test_malformed_rows_name_file_line_and_column(reader, fixture, line, column):
    path = FIXTURES / fixture
    with pytest.raises(r.TraceError) as info:
        reader(path)
    err = info.value
    assert isinstance(err, SpecError)
    assert (err.line, err.column) == (line, column)
    assert fixture in str(err) and f"line {line}" in str(err) and column in str(err)


def test_good_rows_of_a_fixture_parse(tmp_path):
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
                    "a,1000,512,1,250,V100M16|V100M32\n\nb,2000,1024,0,0,\n")
    df = r.read_openb_pods(path)
    assert df["name"].tolist() == ["a", "b"]
    assert df["gpu_spec"].tolist() == ["V100M16|V100M32", ""]
    assert df["deletion_time"].isna().all()


def test_missing_file_and_unknown_format():
    with pytest.raises(r.TraceError, match="not found"):
        r.read_openb_nodes(FIXTURES / "nope.csv")
    with pytest.raises(SpecError, match="trace.format"):
        r.read_trace("google-borg")


# ------------------------------------------------------------------ RIPE Atlas RTT -> topology
from dtlab.model import Cluster, Link, Node  # noqa: E402
from dtlab.workload import topology as topo  # noqa: E402



def test_ripe_rtt_real_file_and_symmetric_half_rtt_matrix():
    df = topo.read_ripe_rtt()
    assert len(df) == 6827
    assert "NA" in set(df["cty1"]) | set(df["cty2"])     # Namibia survives (no NA parsing)
    m = topo.latency_matrix(["DE", "US", "JP"])
    np.testing.assert_allclose(m.to_numpy(), m.to_numpy().T)
    row = df[((df.cty1 == "DE") & (df.cty2 == "US")) | ((df.cty1 == "US") & (df.cty2 == "DE"))]
    assert len(row) == 1
    assert m.loc["US", "DE"] == pytest.approx(row["rtt_avg"].iloc[0] / 2)


def test_topology_links_and_cluster():
    links = topo.topology_from_rtt(["DE", "US", "JP"], bandwidth_mbps=100, loss=0.01)
    assert len(links) == 3 and all(isinstance(l, Link) for l in links)
    assert {(l.a, l.b) for l in links} == {("DE", "US"), ("DE", "JP"), ("US", "JP")}
    assert all(l.latency_ms > 0 and l.loss == 0.01 and l.jitter_ms == 0 for l in links)
    cluster = topo.topology_from_rtt(["DE", "JP"], nodes=[Node("w", "amd64", 4), Node("g", "arm64", 2)])
    assert isinstance(cluster, Cluster) and cluster.zones == ("DE", "JP")
    assert cluster.link("w-de", "g-jp").latency_ms == links[1].latency_ms   # DE-JP
    per_zone = topo.topology_from_rtt(["DE", "JP"], nodes={"DE": [Node("cloud-0", "amd64", 8)],
                                                          "JP": [Node("edge-0", "arm64", 4)]})
    assert per_zone.node("edge-0").zone == "JP"


def test_rtt_missing_pair_and_bad_row(tmp_path):
    path = tmp_path / "rtt.csv"
    path.write_text("cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max\n"
                    "AA,BB,3,20.0,1.0,19.0,21.0\nBB,CC,3,30.0,1.0,29.0,31.0\n")
    assert topo.latency_matrix(["BB", "AA"], path).loc["AA", "BB"] == 10.0
    with pytest.raises(SpecError, match="'AA' and 'CC'"):
        topo.latency_matrix(["AA", "CC"], path)
    path.write_text("cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max\nAA,BB,3,fast,1.0,19.0,21.0\n")
    with pytest.raises(r.TraceError) as info:
        topo.read_ripe_rtt(path)
    assert (info.value.line, info.value.column) == (2, "rtt_avg")


def test_data_dir_env_override_and_missing_data_says_where_to_get_it(tmp_path, monkeypatch):
    from dtlab import datadir
    from dtlab.errors import SpecError
    assert (datadir.data_dir() / "README.md").exists()          # a checkout ships its data
    monkeypatch.setenv("DTLAB_DATA_DIR", str(tmp_path))
    assert datadir.data_dir() == tmp_path
    with pytest.raises(SpecError, match="DTLAB_DATA_DIR"):
        r.read_openb_nodes(datadir.data_path("traces", "alibaba-openb", "openb_node_list_all_node.csv"))
    with pytest.raises(SpecError, match="file not found$"):     # a user's own path: no data hint
        datadir.require("/nonexistent/trace.csv")


def test_project_never_reads_the_sibling_shared_folder():
    """The repository is self-contained: nothing outside the changelog names the sibling shared folder."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    hits = [f for f in files if f != "CHANGELOG.md" and (root / f).is_file()
            and (".." + "/shared") in (root / f).read_text(errors="ignore")]
    assert hits == [], f"files referring to the sibling shared folder: {hits}"
