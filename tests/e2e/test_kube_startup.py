"""e2e: container start-up per format measured from real pods on a real kubelet node, and the kube twin using it.

A local plane with one real amd64 node (native, qemu, wasm) and one KWOK node.
`dtlab calibrate startup --substrate kube` runs probe pods in every format the real node offers and
writes the start-up document (pod create -> worker start, medians per format); the kube substrate's
twin timing then carries those start-ups (SubstrateChoice.with_startup, recorded in run.json's
calibration), and a real stage's measured start-up is of the calibrated order.

Needs root and `make cluster-deps` (else skipped; failed under DTLAB_REQUIRE_HEAVY=1). About 1-2 minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.planes import local_plane

from dtlab.model import load_cluster, load_job
from dtlab.plan import Plan

REPO = Path(__file__).resolve().parents[2]
PLANE = f"su{os.getpid() % 100000}"
CLUSTER_DOC = {
    "apiVersion": "dtlab/v1", "kind": "Cluster", "metadata": {"name": "startup-e2e"},
    "nodes": [{"name": "su-real", "arch": "amd64", "cores": 1, "speed": 1.0, "mem_gb": 2,
               "formats": ["native", "qemu", "wasm"], "zone": "za"},
              {"name": "su-kw", "arch": "amd64", "cores": 2, "speed": 1.0, "mem_gb": 4, "formats": ["native"],
               "zone": "za"}]}
CLUSTER = load_cluster(CLUSTER_DOC)
FORMATS = {"native", "qemu-arm64", "qemu-riscv64", "wasm"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with local_plane(tmp_path_factory, CLUSTER, PLANE, timeout=240, real_nodes=["su-real"]) as st:
        yield st


def test_kube_startup_calibration_feeds_the_twin(plane, tmp_path, monkeypatch):
    from dtlab.experiments.substrate import SubstrateChoice
    from dtlab.fabric import calibrate
    from dtlab.substrates.kube import KubeSubstrate
    from dtlab.timing import TimingModel

    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump(CLUSTER_DOC))
    out = tmp_path / "startup.kube.yaml"
    r = subprocess.run([sys.executable, "-m", "dtlab.cli", "calibrate", "startup", "--substrate", "kube",
                        "--cluster", str(spec), "--plane", PLANE, "--reps", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=400, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    print(r.stdout)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = calibrate.load_startup(out)
    assert doc["kind"] == "KubeStartupCalibration" and doc["nodes"] == {"su-real": sorted(FORMATS, key=[
        "native", "qemu-arm64", "qemu-riscv64", "wasm"].index)}
    assert set(doc["startup_ms"]) == FORMATS, doc
    for fmt, v in doc["startup_ms"].items():
        assert v["n"] == 2 and 0 < v["min_ms"] <= v["median_ms"] <= v["max_ms"] < 60_000, (fmt, v)
    assert "su-kw" not in doc["per_node"]        # KWOK: annotated delays, nothing measured
    assert set(doc["warmup_ms"]) == {"su-real"}   # the uncounted first pod, recorded apart
    emu = doc["emulation"]        # the native probes' work: the host's arch is the reference, factor 1
    assert emu["reference"]["nodes"] == ["su-real"] and emu["per_node"]["su-real"]["factor"] == 1.0, emu
    assert emu["per_node"]["su-real"]["kernel_cpu_ms"]["n"] == 2 and "su-kw" not in emu["per_node"]

    # the twin on this plane takes the cached document (here: the one just written)
    monkeypatch.setattr(calibrate, "startup_cache_path", lambda substrate="fabric": out)
    sub = KubeSubstrate(CLUSTER, seed=3, kubeconfig=plane["kubeconfig"], plane=PLANE, start_plane=False,
                        drain_limit_s=120, noise=False)
    try:
        choice = SubstrateChoice(requested="kube", name="kube")
        timing = choice.with_startup(TimingModel(), sub)
        assert timing.startup_ms == {f: round(v["median_ms"], 3) for f, v in doc["startup_ms"].items()}
        cal = choice.metrics()["calibration"]
        assert cal["startup"].startswith(str(out)) and cal["startup_ms"] == timing.startup_ms
        job = load_job({"apiVersion": "dtlab/v1", "kind": "Job", "metadata": {"name": "su-check"},
                        "spec": {"stages": [{"id": "a", "compute": {"cpu": 1, "mem_gb": 0.25, "duration_ms": 50}}]}},
                       CLUSTER)
        sub.submit(Plan(job.name, "pinned", {"a": "su-real"}, {}, {"a": "native"}), job)
        sub.advance(None)
        row = sub.results()["stages"].iloc[0]
    finally:
        sub.close()
    assert row["ok"] and row["node_kind"] == "real"
    measured, predicted = float(row["startup_ms"]), timing.startup("native")
    print(f"native start-up: measured {measured:.0f} ms, twin (calibrated median) {predicted:.0f} ms")
    assert predicted / 5 < measured < predicted * 5
