"""Fabric pieces that need no root: quotas, cgroup detection, statistics, calibration files,
published-figure comparison, relay timing, availability messages."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from dtlab.errors import DtlabError, SpecError, SubstrateUnavailable
from dtlab import stats
from dtlab.fabric import calibrate, cgroups, worker
from dtlab.model import Link


# ------------------------------------------------------------ cgroups
def test_quota_keeps_period_short_and_grows_it_for_tiny_shares():
    assert cgroups.cores_to_quota(0.25) == (2500, 10_000)
    assert cgroups.cores_to_quota(2.0) == (20_000, 10_000)
    quota, period = cgroups.cores_to_quota(0.02)          # 200 us would be under the 1 ms minimum
    assert quota >= cgroups.MIN_QUOTA_US
    assert quota / period == pytest.approx(0.02, rel=0.01)
    with pytest.raises(ValueError):
        cgroups.cores_to_quota(0)


def test_detect_v1_v2_and_missing(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroups.detect(v1).version == 1
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory")
    fs = cgroups.detect(v2)
    assert (fs.version, fs.base) == (2, v2)
    (v2 / "cgroup.controllers").write_text("memory pids")
    with pytest.raises(SubstrateUnavailable, match="no cpu controller"):
        cgroups.detect(v2)
    with pytest.raises(SubstrateUnavailable, match="cpu.cfs_quota_us.*cgroup.controllers"):
        cgroups.detect(tmp_path / "empty")


def test_cgroup_writes_v1_and_v2_quota_files(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    g = cgroups.Cgroup(cgroups.detect(tmp_path), "dtlab-x", 0.5)
    assert (g.path / "cpu.cfs_quota_us").read_text() == "5000"
    assert (g.path / "cpu.cfs_period_us").read_text() == "10000"
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu")
    (v2 / "cgroup.subtree_control").write_text("")
    g2 = cgroups.Cgroup(cgroups.detect(v2), "dtlab-y", 1.5)
    assert (g2.path / "cpu.max").read_text() == "15000 10000"
    assert "+cpu" in (v2 / "cgroup.subtree_control").read_text()


# ------------------------------------------------------------ availability
def test_available_names_missing_root_and_cgroups(monkeypatch, tmp_path):
    from dtlab import fabric

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "nothing")
    ok, why = fabric.available()
    assert not ok
    assert "root" in why and "no CPU cgroup" in why


def test_make_substrate_raises_naming_what_is_missing(monkeypatch, tmp_path):
    from dtlab.model import cluster_from_dict
    from dtlab.substrates import make_substrate

    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "nothing")
    cluster = cluster_from_dict({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "c"},
                                 "nodes": [{"name": "n", "arch": "amd64", "cores": 1}]})
    with pytest.raises(SubstrateUnavailable, match="no CPU cgroup"):
        make_substrate("fabric", cluster)


def test_missing_format_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(worker, "build_dir", lambda: tmp_path)
    assert "not built" in worker.missing("qemu-riscv64")
    assert "unknown format" in worker.missing("qemu-sparc")
    with pytest.raises(SubstrateUnavailable, match="format native"):
        worker.command("native", "mix", 10)


def test_command_per_format(monkeypatch, tmp_path):
    for arch in ("amd64", "arm64", "riscv64"):
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "dtlab-kernel").write_text("")
    (tmp_path / "wasm").mkdir()
    (tmp_path / "wasm" / "dtlab-kernel.wasm").write_text("")
    monkeypatch.setattr(worker, "build_dir", lambda: tmp_path)
    monkeypatch.setattr(worker.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert worker.command("qemu-arm64", "sort", 5, seed=3) == ["/usr/bin/qemu-aarch64-static", str(tmp_path / "arm64" / "dtlab-kernel"), "sort", "5", "3"]
    assert worker.command("qemu-riscv64", "hash", 1)[0].endswith("qemu-riscv64-static")
    wasm = worker.command("wasm", "mix", 7)
    assert wasm[1].endswith("wasm_run.py") and wasm[2].endswith("dtlab-kernel.wasm")
    with pytest.raises(DtlabError, match="kernel"):
        worker.command("native", "fft", 1)


def test_parse_run_reads_last_json_line():
    out = 'noise\n{"kernel": "mix", "arch": "amd64", "iters": 12, "wall_ms": 3.5, "cpu_ms": -1.000, "checksum": 9}\n'
    r = worker.parse_run("wasm", out, 10.0, 2.0)
    assert (r.kernel, r.iters, r.kernel_ms, r.cpu_ms, r.process_ms) == ("mix", 12, 3.5, -1.0, 10.0)


# ------------------------------------------------------------ statistics and calibration files
def test_geo_ci_is_geometric_and_covers_the_mean():
    ratios = [2.0, 4.0, 8.0]
    st = calibrate.geo_ci(ratios)
    assert st["factor"] == pytest.approx(4.0)
    assert st["ci_low"] < 4.0 < st["ci_high"]
    half = stats.t975(2) * np.std(np.log(ratios), ddof=1) / math.sqrt(3)
    assert st["ci_high"] == pytest.approx(4.0 * math.exp(half))
    flat = calibrate.geo_ci([1.5] * 5)
    assert flat["ci_low"] == pytest.approx(1.5) and flat["ci_high"] == pytest.approx(1.5)
    assert stats.t975(1) > stats.t975(10) > stats.t975(1000) == 1.96


def test_paired_ratio_prefers_cpu_clock():
    nat = worker.KernelRun("native", "mix", 1, kernel_ms=10, cpu_ms=5, process_ms=11, rusage_cpu_ms=5)
    q = worker.KernelRun("qemu-arm64", "mix", 1, kernel_ms=40, cpu_ms=20, process_ms=50, rusage_cpu_ms=25)
    w = worker.KernelRun("wasm", "mix", 1, kernel_ms=12, cpu_ms=-1, process_ms=90, rusage_cpu_ms=80)
    assert calibrate.paired_ratio(q, nat) == 4.0
    assert calibrate.paired_ratio(w, nat) == 1.2


def _doc(qemu=(3.5, 3.0, 4.0), wasm=(1.1, 1.0, 1.2)):
    f = lambda m, lo, hi: {"factor": m, "ci_low": lo, "ci_high": hi, "n": 10}
    return {"overheads": {"native": 1.0, "qemu-arm64": qemu[0], "wasm": wasm[0]},
            "factors": {"qemu-arm64": {"mix": f(*qemu), "matmul": f(12.0, 10.0, 14.0)}, "wasm": {"mix": f(*wasm)}}}


def test_load_overheads_roundtrip_and_validation(tmp_path):
    path = calibrate.write(_doc(), tmp_path / "cal.yaml")
    assert calibrate.load_overheads(path) == {"native": 1.0, "qemu-arm64": 3.5, "wasm": 1.1}
    from dtlab.timing import TimingModel
    assert TimingModel().with_overheads(calibrate.load_overheads(path)).overheads["qemu-arm64"] == 3.5
    bad = _doc()
    bad["overheads"]["wasm"] = -1
    calibrate.write(bad, tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="overheads.wasm"):
        calibrate.load_overheads(tmp_path / "bad.yaml")
    with pytest.raises(DtlabError, match="dtlab calibrate compute"):
        calibrate.load(tmp_path / "none.yaml")


PUBLISHED = {
    "seed_assumption": {"qemu_cpu_overhead": {"low": 1.25, "high": 1.80}},
    "qemu_user_mode": [{"source": "TCG", "aarch64": {"matmult_double": 22.6, "qsort_int32": 14.0}},
                       {"source": "HQEMU", "int": 6.0, "fp": 8.4},
                       {"source": "issues", "range": [2.0, 8.0]}],
    "wasm": [{"source": "Jangda et al., 2019", "chrome": 1.55, "firefox": 1.45}],
}


def test_compare_published_flags_claim(tmp_path):
    pub = tmp_path / "pub.yaml"
    pub.write_text(yaml.safe_dump(PUBLISHED))
    df = calibrate.compare_published(_doc(), pub)
    claim = df[(df["reference"].str.startswith("design claim")) & (df["kernel"] == "mix")].iloc[0]
    assert claim["above"] and not claim["consistent"]
    issues = df[(df["reference"].str.startswith("issue")) & (df["kernel"] == "mix")].iloc[0]
    assert issues["consistent"]
    tcg = df[df["reference"].str.startswith("TCG")]
    assert list(tcg["ref_low"]) == [22.6] and tcg["unit"].iloc[0].startswith("host instr")
    wasm = df[df["format"] == "wasm"].iloc[0]
    assert wasm["below"]                      # 1.0-1.2 lies under 1.45-1.55
    assert calibrate.qemu_claim_verdict(df).startswith("does not hold")
    inside = calibrate.compare_published(_doc(qemu=(1.5, 1.3, 1.7)), pub)
    assert calibrate.qemu_claim_verdict(inside).startswith("holds")


def test_compare_published_reads_shared_file_when_present():
    path = calibrate.published_path()
    if not path.exists():
        pytest.skip(f"{path} not present")
    df = calibrate.compare_published(_doc())
    assert {"design claim: QEMU adds 25-80%"} <= set(df["reference"])


# ------------------------------------------------------------ relay timing
def test_chunk_release_delay_loss_and_tail_rto():
    from dtlab.fabric.relay import MIN_RTO_MS, chunk_release

    rng = np.random.default_rng(0)
    clean = Link("a", "b", latency_ms=20, bandwidth_mbps=10)
    assert chunk_release(1.0, 0.0, 65536, False, clean, rng) == pytest.approx(1.020)
    assert chunk_release(1.0, 5.0, 65536, False, clean, rng) == pytest.approx(5.020)   # held while cut
    lossy = Link("a", "b", latency_ms=20, bandwidth_mbps=10, loss=1.0)
    assert chunk_release(1.0, 0.0, 65536, False, lossy, rng) == pytest.approx(1.060)  # + one RTT
    assert chunk_release(1.0, 0.0, 65536, True, lossy, rng) == pytest.approx(1.020 + MIN_RTO_MS / 1000)
    some = Link("a", "b", latency_ms=20, bandwidth_mbps=10, loss=0.01)
    draws = [chunk_release(0.0, 0.0, 65536, False, some, np.random.default_rng(s)) > 0.021 for s in range(400)]
    p_chunk = 1 - 0.99 ** (65536 / 1448)
    assert abs(np.mean(draws) - p_chunk) < 0.08
    a = [chunk_release(0.0, 0.0, 1448, False, Link("a", "b", 5, 10, jitter_ms=3), np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]                        # same seed, same draw
