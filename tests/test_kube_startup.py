"""Kube start-up calibration plumbing (fakes): which rows count, the cache path, the twin's timing on kube
(real nodes -> the calibration; KWOK only -> none), what run.json records, CLI errors.
The measurement itself on real pods: tests/e2e/test_kube_startup.py."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dtlab.experiments.substrate import SubstrateChoice
from dtlab.fabric import calibrate
from dtlab.kube import startup as ks
from dtlab.model import load_cluster
from dtlab.timing import TimingModel

CLUSTER = load_cluster({"apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "su"},
                        "nodes": [{"name": "r0", "arch": "amd64", "cores": 2, "formats": ["native", "qemu", "wasm"]},
                                  {"name": "k0", "arch": "arm64", "cores": 2, "formats": ["native"]}]})


def test_probe_formats_are_the_node_format_keys():
    assert ks.probe_formats(CLUSTER, ["r0"]) == {"r0": ["native", "qemu-arm64", "qemu-riscv64", "wasm"]}
    assert ks.probe_formats(CLUSTER, ["k0", "not-in-spec"]) == {"k0": ["native"]}


def test_summarise_counts_only_ok_rows_of_real_nodes():
    rows = [{"ok": True, "node_kind": "real", "node": "r0", "format": "native", "startup_ms": 800.0},
            {"ok": True, "node_kind": "real", "node": "r0", "format": "native", "startup_ms": 1000.0},
            {"ok": True, "node_kind": "real", "node": "r1", "format": "native", "startup_ms": 1200.0},
            {"ok": True, "node_kind": "real", "node": "r0", "format": "wasm", "startup_ms": 1500.0},
            {"ok": False, "node_kind": "real", "node": "r0", "format": "wasm", "startup_ms": 9000.0},
            {"ok": True, "node_kind": "kwok", "node": "k0", "format": "native", "startup_ms": 5.0},
            {"ok": True, "node_kind": "real", "node": "r0", "format": "native", "startup_ms": float("nan")}]
    by_fmt, per_node = ks.summarise(rows)
    assert by_fmt["native"] == {"median_ms": 1000.0, "min_ms": 800.0, "max_ms": 1200.0, "n": 3}
    assert by_fmt["wasm"]["n"] == 1 and by_fmt["wasm"]["median_ms"] == 1500.0
    assert per_node["r0"]["native"]["n"] == 2 and per_node["r1"]["native"]["median_ms"] == 1200.0
    assert "k0" not in per_node


def test_kube_cache_path_is_apart_from_the_fabric_one():
    fab, kube = calibrate.startup_cache_path(), calibrate.startup_cache_path("kube")
    assert fab != kube and fab.parent == kube.parent
    assert kube.name.startswith(f"calibration.startup.kube.v{calibrate.KUBE_STARTUP_VERSION}.")
    assert fab.name.startswith(f"calibration.startup.v{calibrate.STARTUP_VERSION}.")


def test_handoff_is_worker_end_to_end_observed_on_ok_real_rows():
    rows = [{"ok": True, "node_kind": "real", "end_ms": 1000.0, "seen_ms": 2000.0},
            {"ok": True, "node_kind": "real", "end_ms": 1000.0, "seen_ms": 2400.0},
            {"ok": True, "node_kind": "real", "end_ms": 1000.0, "seen_ms": 1800.0},
            {"ok": False, "node_kind": "real", "end_ms": 1000.0, "seen_ms": 9000.0},
            {"ok": True, "node_kind": "kwok", "end_ms": 1000.0, "seen_ms": 9000.0},
            {"ok": True, "node_kind": "real", "end_ms": 1000.0, "seen_ms": None}]
    assert ks.handoff(rows) == {"median_ms": 1000.0, "min_ms": 800.0, "max_ms": 1400.0, "n": 3}
    assert ks.handoff(rows[3:]) is None


def _emu_rows(node, arch_cpu, n=3, ok=True, fmt="native"):
    return [{"ok": ok, "node_kind": "real", "node": node, "format": fmt, "kernel_cpu_ms": arch_cpu + i,
             "observed_ms": 2 * (arch_cpu + i)} for i in range(n)]


def test_emulation_factor_is_kernel_cpu_per_reference_ms_over_the_host_arch_nodes():
    """Issue 16/18: factor = median kernel CPU per reference ms on the node / the same on the real nodes of
    the host's arch; the worker does work_ms x cpu-scale reference ms, so the scale is divided out."""
    rows = (_emu_rows("amd", 75.0) + _emu_rows("arm", 420.0) + _emu_rows("rv", 1380.0)
            + _emu_rows("arm", 9999.0, ok=False) + _emu_rows("arm", 9999.0, fmt="wasm")
            + [{"ok": True, "node_kind": "real", "node": "arm", "format": "native", "kernel_cpu_ms": None}])
    scales = {"amd": 0.5, "arm": 0.5, "rv": 1.0}
    emu = ks.emulation(rows, scales, {"amd": "amd64", "arm": "arm64", "rv": "riscv64"}, work_ms=150.0,
                       host_arch="amd64")
    # amd: median 76 ms CPU for 75 reference ms -> 76/75 per ms; arm 421/75; rv 1381/150
    ref = 76.0 / 75.0
    assert emu["reference"]["nodes"] == ["amd"] and emu["reference"]["cpu_per_ref_ms"] == pytest.approx(ref, abs=1e-4)
    pn = emu["per_node"]
    assert pn["amd"]["factor"] == 1.0
    assert pn["arm"]["factor"] == pytest.approx(421.0 / 75.0 / ref, abs=1e-3)
    assert pn["rv"]["factor"] == pytest.approx(1381.0 / 150.0 / ref, abs=1e-3)
    assert pn["arm"]["kernel_cpu_ms"] == {"median_ms": 421.0, "min_ms": 420.0, "max_ms": 422.0, "n": 3}
    assert pn["arm"]["wall_ms"]["median_ms"] == 842.0
    # no real node of the host's arch: against the nominal work, and it says so
    alone = ks.emulation(_emu_rows("arm", 420.0), {"arm": 0.5}, {"arm": "arm64"}, work_ms=150.0, host_arch="amd64")
    assert alone["per_node"]["arm"]["factor"] == pytest.approx(421.0 / 75.0, abs=1e-3)
    assert "nominal" in alone["reference"]["source"] and alone["reference"]["nodes"] == []


def test_factors_for_a_cluster_by_node_then_arch_host_arch_is_native():
    doc = {"emulation": {"reference": {"source": "native real nodes"}, "per_node": {
        "arm": {"arch": "arm64", "factor": 5.5, "kernel_cpu_ms": {"n": 3}},
        "arm2": {"arch": "arm64", "factor": 6.5, "kernel_cpu_ms": {"n": 3}},
        "amd": {"arch": "amd64", "factor": 1.0, "kernel_cpu_ms": {"n": 3}}}}}
    f = ks.factors_for(doc, {"arm": "arm64", "other-arm": "arm64", "amd-x": "amd64", "rv": "riscv64"}, host_arch="amd64")
    assert f["arm"]["factor"] == 5.5 and "measured on arm" in f["arm"]["source"]
    assert f["other-arm"]["factor"] == 6.0 and "other arm64 nodes" in f["other-arm"]["source"]
    assert f["amd-x"]["factor"] == 1.0 and "native" in f["amd-x"]["source"]
    assert f["rv"]["factor"] == 1.0 and "not measured" in f["rv"]["source"]
    assert ks.factors_for(None, {"rv": "riscv64"}, host_arch="amd64")["rv"]["factor"] == 1.0
    assert calibrate.KUBE_STARTUP_VERSION >= 4          # older caches have no factors: re-measured


class _FakeKube:
    """What SubstrateChoice.with_startup reads of a kube substrate."""
    def __init__(self, real):
        self._real, self.kubeconfig, self.opts = real, "/nonexistent/kubeconfig", {"time_scale": 1.0}

    def real_nodes(self):
        return dict(self._real)

    def cluster(self):
        return CLUSTER


def _cache(tmp_path, monkeypatch):
    path = tmp_path / "calibration.startup.kube.test.yaml"
    monkeypatch.setattr(calibrate, "startup_cache_path", lambda substrate="fabric": path)
    return path


def test_kwok_only_kube_keeps_no_startup(tmp_path, monkeypatch):
    _cache(tmp_path, monkeypatch)
    choice = SubstrateChoice(requested="kube", name="kube")
    t = choice.with_startup(TimingModel(), _FakeKube({}))
    assert t.startup_ms == {} and t.dispatch_ms == 0.0
    assert choice.startup is None and "startup" not in choice.calibration()


def test_real_kube_nodes_give_the_twin_the_cached_calibration(tmp_path, monkeypatch):
    path = _cache(tmp_path, monkeypatch)
    calibrate.write({"kind": "KubeStartupCalibration", "created": "2026-12-04T00:00:00+00:00",
                     "startup_ms": {"native": {"median_ms": 900.0}, "wasm": {"median_ms": 1400.0}},
                     "dispatch_ms": None}, path)
    choice = SubstrateChoice(requested="kube", name="kube")
    t = choice.with_startup(TimingModel(), _FakeKube({"r0": 1.0}))
    assert t.startup("native") == 900.0 and t.startup("wasm") == 1400.0 and t.dispatch_ms == 0.0
    path.unlink()     # a v3 document: the hand-off lag becomes the twin's dispatch delay
    calibrate.write({"kind": "KubeStartupCalibration", "created": "2026-12-04T00:00:00+00:00",
                     "startup_ms": {"native": {"median_ms": 900.0}}, "dispatch_ms": {"median_ms": 1100.0}}, path)
    choice2 = SubstrateChoice(requested="kube", name="kube")
    t2 = choice2.with_startup(TimingModel(), _FakeKube({"r0": 1.0}))
    assert t2.dispatch_ms == 1100.0 and t2.stage_delay("native") == 2000.0
    assert choice2.calibration()["dispatch_ms"] == 1100.0
    cal = choice.metrics()["calibration"]
    assert cal["startup"].startswith(str(path)) and "kube real nodes" in cal["startup"]
    assert cal["startup_ms"] == {"native": 900.0, "wasm": 1400.0}


def test_with_startup_gives_a_kube_substrate_the_emulation_factors_and_records_them(tmp_path, monkeypatch):
    """The calibration document also carries the factors: with_startup hands it to the substrate
    (set_emulation) and the run's substrate_metadata records what the substrate applied."""
    path = _cache(tmp_path, monkeypatch)
    doc = {"kind": "KubeStartupCalibration", "created": "2026-12-05T00:00:00+00:00",
           "startup_ms": {"native": {"median_ms": 900.0}}, "dispatch_ms": None,
           "emulation": {"per_node": {"k0": {"arch": "arm64", "factor": 5.0, "kernel_cpu_ms": {"n": 3}}}}}
    calibrate.write(doc, path)
    seen = []

    class Emulating(_FakeKube):
        def set_emulation(self, d):
            seen.append(d)
            return {"k0": {"factor": d["emulation"]["per_node"]["k0"]["factor"], "source": "measured"}}

    choice = SubstrateChoice(requested="kube", name="kube", metadata={"substrate": "kube"})
    choice.with_startup(TimingModel(), Emulating({"k0": 1.0}))
    assert seen and seen[0]["emulation"] == doc["emulation"]
    assert choice.metrics()["substrate_metadata"]["emulation_factors"] == {"k0": {"factor": 5.0, "source": "measured"}}


def test_failed_kube_measurement_is_said_not_raised(tmp_path, monkeypatch):
    _cache(tmp_path, monkeypatch)      # no cache: it measures, and there is no plane behind the fake
    choice = SubstrateChoice(requested="kube", name="kube")
    t = choice.with_startup(TimingModel(), _FakeKube({"r0": 1.0}))
    assert t.startup_ms == {} and "start-up calibration failed" in choice.note


def test_bad_kube_cache_is_a_spec_error(tmp_path, monkeypatch):
    path = _cache(tmp_path, monkeypatch)
    calibrate.write({"startup_ms": {"native": {"median_ms": -3}}}, path)
    with pytest.raises(Exception, match=r"startup_ms\.native\.median_ms"):
        ks.startup_calibration(CLUSTER)


@pytest.mark.parametrize("argv, needle", [
    (["calibrate", "startup", "--substrate", "kube"], "--cluster"),
    (["calibrate", "startup", "--substrate", "kube", "--cluster", "examples/cluster-hetero.yaml", "--reps", "60"],
     "--reps"),
])
def test_cli_kube_startup_bad_input_exits_2(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "dtlab.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
