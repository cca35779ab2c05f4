"""Local Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and the KWOK controller, all built from
source by ``cluster/localplane/build.sh`` (no Docker needed).

Public API (stdlib + pyyaml + the official ``kubernetes`` client)::

    up(nodes=6, workdir=None, *, name="default", timeout=120.0) -> dict      # state
    status(name="default") -> dict
    down(name="default", *, keep_workdir=True) -> None
    kubeconfig(name="default") -> str | None
    stop_component(component, name="default", *, graceful=False)   # SIGKILL: crash
    start_component(component, name="default", timeout=60.0)       # same flags/ports
    set_node_failed(node, failed=True, name="default")              # KWOK Ready=False
    register_nodes(nodes, kubeconfig_path, workers=16) -> list[str]
    node_manifest(node) -> dict ; default_nodes(n) -> list[dict]
    find_binaries() -> dict[str, Path]   (raises BinariesMissing)

Launcher choice: our own launcher rather than ``kwokctl --runtime binary``.
kwokctl would also start these processes, but (a) it wants to download
binaries or be pointed at them through its own config and keeps its state in
``~/.kwok``; (b) it picks fixed default ports (2379/6443/10247...), while the
tests here need several planes / free ports on a shared machine; (c) the fault
e2e must SIGKILL kube-apiserver and restart it with the same flags, and
failure tests need node-monitor / toleration periods in seconds; with our
launcher every flag and every pid is ours (``stop_component`` /
``start_component``) and ``down`` can prove no process and no port is left.
The flags follow kwokctl's binary runtime (sigs.k8s.io/kwok
pkg/kwokctl/components) so behaviour matches what KWOK's CI benchmarks.

Certificates: one CA, an apiserver serving cert (SANs 127.0.0.1, localhost,
kubernetes.default...), one admin client cert (O=system:masters) used by
kubeconfig and all components, and a service-account key pair; generated with
the ``openssl`` CLI (OpenSSL >= 3.0 for ``req -x509 -CA``).

Real nodes (``real_nodes=[names]`` / ``dtlab cluster up --real-nodes``): those nodes get their own
containerd and a real kubelet instead of a KWOK node (:mod:`dtlab.kube.realnodes`); ``status``
lists each node's kind and ``down`` removes their processes, mounts, netns, bridges, cgroups and
binfmt entries too.

Nodes: one KWOK node per node spec (annotation ``kwok.x-k8s.io/node=fake``),
with labels ``kubernetes.io/arch``, ``topology.kubernetes.io/zone``,
``dtlab.io/format-<fmt>=true``, NFD-style ``feature.node.kubernetes.io/...``
and capacity from ``cores``/``mem_gb``. Stages (``cluster/kwok/stages.yaml``):
nodes become Ready, pods Running, and a pod annotated
``pod-complete.stage.kwok.x-k8s.io/delay: "5s"`` becomes Succeeded 5 s after it
started running.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..atomic import atomic_write_text
from ..datadir import cache_dir

K8S_VERSION = "1.36.3"
ETCD_VERSION = "3.6.8"
KWOK_VERSION = "0.8.0"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
COMPLETE_DELAY_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/delay"
NODE_FAIL_LABEL = "node-not-ready.stage.kwok.x-k8s.io"  # KWOK's chaos stage; see cluster/kwok/stages.yaml
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

# Failure-detection timings. Fault tests fail nodes through KWOK's node-not-ready stage (immediate),
# not by stopping heartbeats, so the lease can be as long as KWOK's CI uses: a 10 s lease made
# healthy nodes flap NotReady on a loaded 2-core host (seen in CI-like runs and at 1,000 nodes).
NODE_LEASE_SECONDS = 40          # KWOK renews the node Lease every ~1/4 of this
NODE_MONITOR_PERIOD = "1s"
NODE_MONITOR_GRACE = "80s"       # Lease not renewed for this long -> node NotReady/Unknown
TOLERATION_SECONDS = 5           # default not-ready/unreachable NoExecute toleration

_REPO = Path(__file__).resolve().parents[2]
_ARCH_ALIASES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "riscv64": "riscv64", "armv7": "arm", "arm": "arm"}
_VENDOR = {"amd64": "Intel", "arm64": "ARM", "arm": "ARM", "riscv64": "RISCV"}


class LocalPlaneError(RuntimeError):
    """The local control plane could not be started or queried."""


class BinariesMissing(LocalPlaneError):
    """The control-plane binaries are not built (run `make cluster-bin`)."""


# ---------------------------------------------------------------- paths


def _plane_dir(name: str) -> Path:
    return cache_dir() / "localplane" / name


def _state_path(name: str) -> Path:
    return _plane_dir(name) / "state.json"


def find_binaries() -> dict[str, Path]:
    """Locate the binaries: $DTLAB_K8S_BIN / $DTLAB_KWOK_BIN, else the build cache."""
    k8s = Path(os.environ.get("DTLAB_K8S_BIN") or cache_dir() / "k8s" / f"v{K8S_VERSION}" / "bin")
    kwok = Path(os.environ.get("DTLAB_KWOK_BIN") or cache_dir() / "kwok" / f"v{KWOK_VERSION}" / "bin")
    paths = {t: k8s / t for t in ("etcd", "kube-apiserver", "kube-controller-manager",
                                  "kube-scheduler", "kubectl")}
    paths.update({t: kwok / t for t in ("kwok", "kwokctl")})
    missing = [str(p) for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise BinariesMissing("missing control-plane binaries (build them with "
                              "`bash cluster/localplane/build.sh`): " + ", ".join(missing))
    return paths


def binaries_available() -> tuple[bool, str]:
    try:
        find_binaries()
    except BinariesMissing as e:
        return False, str(e)
    if shutil.which("openssl") is None:
        return False, "the `openssl` CLI is required to generate certificates"
    return True, ""


def stages_file() -> Path:
    p = Path(os.environ.get("DTLAB_KWOK_STAGES") or _REPO / "cluster" / "kwok" / "stages.yaml")
    if not p.is_file():
        raise LocalPlaneError(f"KWOK stages file not found: {p}")
    return p


# ---------------------------------------------------------------- helpers

def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports *below* the ephemeral range, so that no outgoing
    connection can grab a component's port while it restarts (e.g. kube-apiserver)."""
    import random
    hi = _ephemeral_low()
    lo = max(1024, hi - 12000)
    rnd = random.SystemRandom()
    ports: list[int] = []
    for _ in range(2000):
        if len(ports) == n:
            return ports
        p = rnd.randrange(lo, hi)
        if p in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        ports.append(p)
    raise LocalPlaneError(f"no {n} free loopback ports in [{lo}, {hi})")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _alive(proc: Mapping[str, Any]) -> bool:
    pid = proc.get("pid")
    if not pid:
        return False
    if _proc_start_time(pid) != proc.get("start_time"):
        return False  # gone, or the pid was reused
    return _proc_state(pid) not in (None, "Z", "X")


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise LocalPlaneError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def _make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "rsa:2048", "-nodes", "-days", "3650", "-sha256"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt",
             "-subj", "/CN=dtlab-localplane-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
    sans = ",".join(["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
                     "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                     "DNS:kubernetes.default.svc.cluster.local"])
    _openssl("req", "-x509", *key, "-CA", "ca.crt", "-CAkey", "ca.key",
             "-keyout", "apiserver.key", "-out", "apiserver.crt", "-subj", "/CN=kube-apiserver",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
             "-addext", "extendedKeyUsage=serverAuth,clientAuth",
             "-addext", f"subjectAltName={sans}", cwd=pki)
    _openssl("req", "-x509", *key, "-CA", "ca.crt", "-CAkey", "ca.key",
             "-keyout", "admin.key", "-out", "admin.crt", "-subj", "/O=system:masters/CN=dtlab-admin",
             "-addext", "basicConstraints=critical,CA:FALSE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
             "-addext", "extendedKeyUsage=clientAuth", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for f in pki.glob("*.key"):
        f.chmod(0o600)


def _write_kubeconfig(path: Path, pki: Path, port: int) -> None:
    b64 = lambda f: base64.b64encode((pki / f).read_bytes()).decode()  # noqa: E731
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "dtlab-local", "cluster": {
            "server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "dtlab-admin", "user": {
            "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": "dtlab-local", "context": {"cluster": "dtlab-local", "user": "dtlab-admin"}}],
        "current-context": "dtlab-local",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)


def _commands(bins: Mapping[str, Path], wd: Path, ports: Mapping[str, int],
              node_grace: str = NODE_MONITOR_GRACE) -> dict[str, list[str]]:
    pki, kc = wd / "pki", str(wd / "kubeconfig")
    etcd_c, etcd_p = ports["etcd"], ports["etcd-peer"]
    sched_cfg = wd / "scheduler.yaml"
    sched_cfg.write_text(yaml.safe_dump({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": kc, "qps": 1000, "burst": 2000},
        "leaderElection": {"leaderElect": False}}))
    return {
        "etcd": [
            str(bins["etcd"]), "--name=node0", f"--data-dir={wd / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_c}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_c}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_p}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_p}",
            f"--initial-cluster=node0=http://127.0.0.1:{etcd_p}",
            "--auto-compaction-retention=1", "--quota-backend-bytes=8589934592",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ],
        "kube-apiserver": [
            str(bins["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_c}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # the loopback advertise address is not a valid Endpoints IP
            "--endpoint-reconciler-type=none",
            f"--default-not-ready-toleration-seconds={TOLERATION_SECONDS}",
            f"--default-unreachable-toleration-seconds={TOLERATION_SECONDS}",
            # as kwokctl: no request throttling, so KWOK benchmarks measure the plane, not APF
            "--enable-priority-and-fairness=false",
            "--max-requests-inflight=0", "--max-mutating-requests-inflight=0",
            "--profiling=false", "--v=1",
        ],
        "kube-controller-manager": [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kube-controller-manager']}",
            "--leader-elect=false",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--node-monitor-period={NODE_MONITOR_PERIOD}",
            f"--node-monitor-grace-period={node_grace}",
            # taint/evict failed nodes quickly instead of 1 node per 10 s per zone
            "--node-eviction-rate=10", "--secondary-node-eviction-rate=10",
            "--kube-api-qps=1000", "--kube-api-burst=2000",
            "--profiling=false", "--v=1",
        ],
        "kube-scheduler": [
            str(bins["kube-scheduler"]), f"--config={sched_cfg}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['kube-scheduler']}",
            "--profiling=false", "--v=1",
        ],
        "kwok": [
            str(bins["kwok"]), f"--kubeconfig={kc}", f"--config={wd / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-ip=127.0.0.1", f"--node-port={ports['kwok']}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            "--cidr=10.128.0.1/16",
            f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        ],
    }


def _spawn(name: str, cmd: list[str], wd: Path) -> dict[str, Any]:
    logdir = wd / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    with open(logdir / f"{name}.log", "ab") as log:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=wd, start_new_session=True, close_fds=True)
    # wait until /proc knows the start time (immediately, in practice)
    st = None
    for _ in range(50):
        st = _proc_start_time(p.pid)
        if st:
            break
        time.sleep(0.01)
    # do not keep a Popen object: the plane outlives this Python process
    p.returncode = 0  # silence ResourceWarning on GC; the child is reaped by init or by _kill
    return {"pid": p.pid, "start_time": st, "cmd": cmd, "log": str(logdir / f"{name}.log")}


def _kill(proc: Mapping[str, Any], timeout: float = 3.0, graceful: bool = True) -> None:
    """SIGTERM, then SIGKILL after `timeout` s (graceful=False: SIGKILL at once, like a crash)."""
    if not _alive(proc):
        _reap(proc.get("pid"))
        return
    pid = proc["pid"]
    steps = ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)) if graceful else ((signal.SIGKILL, 5.0),)
    for sig, wait in steps:
        try:
            os.killpg(pid, sig)  # each component leads its own session/process group
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(proc):
                return
            time.sleep(0.05)
    raise LocalPlaneError(f"could not kill pid {pid} ({proc.get('cmd', ['?'])[0]})")


def _reap(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _log_tail(proc: Mapping[str, Any], n: int = 30) -> str:
    try:
        lines = Path(proc["log"]).read_text(errors="replace").splitlines()
    except (OSError, KeyError):
        return ""
    return "\n".join(lines[-n:])


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
            return r.status == 200
    except Exception:
        return False


def _tls_ctx(wd: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(wd / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(wd / "pki" / "admin.crt"), str(wd / "pki" / "admin.key"))
    return ctx


def _wait(pred, what: str, timeout: float, procs: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for name, p in procs:
            if not _alive(p):
                raise LocalPlaneError(f"{name} exited while waiting for {what}:\n{_log_tail(p)}")
        time.sleep(0.2)
    detail = "\n".join(f"--- {n}:\n{_log_tail(p, 15)}" for n, p in procs)
    raise LocalPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")


# ---------------------------------------------------------------- nodes

def _get(node: Any, key: str, default: Any = None) -> Any:
    if isinstance(node, Mapping):
        return node.get(key, default)
    return getattr(node, key, default)


def _quantity_cpu(cores: float) -> str:
    return str(int(cores)) if float(cores).is_integer() else f"{int(round(cores * 1000))}m"


def default_nodes(n: int) -> list[dict[str, Any]]:
    """n heterogeneous nodes: cloud amd64, edge arm64, edge riscv64 in turn."""
    kinds = [
        {"arch": "amd64", "cores": 8, "speed": 1.0, "mem_gb": 32, "formats": ["native", "wasm"], "zone": "cloud"},
        {"arch": "arm64", "cores": 4, "speed": 0.6, "mem_gb": 8, "formats": ["native", "qemu", "wasm"], "zone": "edge-a"},
        {"arch": "riscv64", "cores": 4, "speed": 0.3, "mem_gb": 4, "formats": ["native", "qemu", "wasm"], "zone": "edge-b"},
    ]
    return [{"name": f"kwok-{kinds[i % 3]['zone']}-{i}", **kinds[i % 3], "labels": {}} for i in range(n)]


def node_manifest(node: Any) -> dict[str, Any]:
    """The v1 Node for one dtlab node spec (dict, dataclass or object with the same fields)."""
    name = _get(node, "name")
    if not name:
        raise ValueError(f"node without a name: {node!r}")
    arch = _ARCH_ALIASES.get(str(_get(node, "arch", "amd64")), str(_get(node, "arch", "amd64")))
    cores = float(_get(node, "cores", 1))
    mem_gb = float(_get(node, "mem_gb", 8.0))
    zone = str(_get(node, "zone", "default"))
    formats = list(_get(node, "formats", ("native",)) or ())
    labels: dict[str, str] = {
        "kubernetes.io/arch": arch,
        "dtlab.io/arch": arch,        # the spec's arch: a real kubelet resets kubernetes.io/arch to the host's
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
        "topology.kubernetes.io/zone": zone,
        "feature.node.kubernetes.io/cpu-model.vendor_id": str(_get(node, "vendor", None) or _VENDOR.get(arch, "unknown")),
        "dtlab.io/node": name,
        "dtlab.io/speed": str(_get(node, "speed", 1.0)),
        "dtlab.io/cores": _quantity_cpu(cores),
    }
    for f in formats:
        labels[f"dtlab.io/format-{f}"] = "true"
    extra = _get(node, "labels", None) or {}
    if not isinstance(extra, Mapping):
        extra = dict(extra)  # tuple of pairs (dtlab.model.Node)
    labels.update({str(k): str(v) for k, v in extra.items()})
    resources = {"cpu": _quantity_cpu(cores), "memory": f"{int(round(mem_gb * 1024))}Mi",
                 "pods": str(int(_get(node, "max_pods", 110) or 110))}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": {"allocatable": dict(resources), "capacity": dict(resources),
                   # every field is required by the kubernetes client's model validation
                   "nodeInfo": {"architecture": arch, "operatingSystem": "linux",
                                "kubeletVersion": f"v{K8S_VERSION}-kwok",
                                "kubeProxyVersion": "", "containerRuntimeVersion": f"kwok-v{KWOK_VERSION}",
                                "kernelVersion": f"kwok-v{KWOK_VERSION}", "osImage": "dtlab-kwok",
                                "bootID": "", "machineID": "", "systemUUID": ""}},
    }


def nodes_list(nodes: Any) -> list[Any]:
    if isinstance(nodes, int):
        return default_nodes(nodes)
    if hasattr(nodes, "nodes") and not isinstance(nodes, Mapping):
        nodes = nodes.nodes  # a dtlab Cluster
    elif isinstance(nodes, Mapping) and "nodes" in nodes:
        nodes = nodes["nodes"]
    return [asdict(n) if is_dataclass(n) and not isinstance(n, type) else n for n in nodes]


def _core_api(kubeconfig_path: str, pool: int = 4):
    from kubernetes import client, config  # imported lazily: heavy
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig_path), client_configuration=cfg)
    cfg.connection_pool_maxsize = max(pool, 4)
    return client.CoreV1Api(client.ApiClient(cfg))


def register_nodes(nodes: Any, kubeconfig_path: str | os.PathLike, workers: int = 16) -> list[str]:
    """Create (or update labels/capacity of) one KWOK node per spec, `workers` requests in
    parallel; returns the node names in input order."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes.client.rest import ApiException
    api = _core_api(str(kubeconfig_path), pool=workers)
    bodies = [node_manifest(n) for n in nodes_list(nodes)]
    names = [b["metadata"]["name"] for b in bodies]
    if len(set(names)) != len(names):
        raise ValueError("duplicate node names")

    def create(body: dict[str, Any]) -> None:
        try:
            api.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
            api.patch_node(body["metadata"]["name"], {"metadata": body["metadata"]})
            api.patch_node_status(body["metadata"]["name"], {"status": {
                "allocatable": body["status"]["allocatable"], "capacity": body["status"]["capacity"]}})

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(bodies) or 1))) as ex:
        list(ex.map(create, bodies))  # re-raises the first error
    return names


def set_node_failed(node: str, failed: bool = True, name: str = "default") -> None:
    """Fault injection: make KWOK report node Ready=False (failed=True) or Ready again.

    The node-lifecycle controller then taints it not-ready:NoExecute and evicts its pods
    after the TOLERATION_SECONDS (5 s) default toleration.
    """
    kc = kubeconfig(name)
    if not kc:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    _core_api(kc).patch_node(node, {"metadata": {"labels": {NODE_FAIL_LABEL: "true" if failed else None}}})


def _ready_nodes(api, names: Iterable[str]) -> set[str]:
    want = set(names)
    ready = set()
    for n in api.list_node().items:
        if n.metadata.name in want and any(c.type == "Ready" and c.status == "True"
                                           for c in (n.status.conditions or [])):
            ready.add(n.metadata.name)
    return ready


# ---------------------------------------------------------------- lifecycle

def load_state(name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_state_path(name).read_text())
    except (OSError, ValueError):
        return None


def _save_state(name: str, state: Mapping[str, Any]) -> None:
    atomic_write_text(_state_path(name), json.dumps(state, indent=2))


def live_cgroups() -> set[str]:
    """Top-level cgroup names (``dtlab-<plane>-<node>``) of the real nodes of every local plane that
    is up (a process of its state alive): ``dtlab fabric cleanup`` keeps them. A plane lives between
    runs without holding the host lock, so the lock alone does not protect it."""
    out: set[str] = set()
    base = cache_dir() / "localplane"
    if not base.is_dir():
        return out
    for path in sorted(base.glob("*/state.json")):
        st = load_state(path.parent.name)
        if not st:
            continue
        procs = list((st.get("processes") or {}).values())
        for rec in st.get("real_nodes") or []:
            procs += list((rec.get("processes") or {}).values())
        if any(isinstance(p, Mapping) and _alive(p) for p in procs):
            out |= {str(rec["cgroup"]) for rec in st.get("real_nodes") or [] if rec.get("cgroup")}
    return out


def kubeconfig(name: str = "default") -> str | None:
    """Kubeconfig path of the running plane `name`, or None."""
    st = load_state(name)
    return st["kubeconfig"] if st else None


def _start(component: str, st: dict[str, Any], timeout: float) -> None:
    wd = Path(st["workdir"])
    proc = _spawn(component, st["commands"][component], wd)
    st["processes"][component] = proc
    _save_state(st["name"], st)
    ports = st["ports"]
    if component == "etcd":
        _wait(lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), "etcd /health",
              timeout, [("etcd", proc)])
    elif component == "kube-apiserver":
        ctx = _tls_ctx(wd)
        _wait(lambda: _http_ok(f"https://127.0.0.1:{ports['kube-apiserver']}/readyz", ctx),
              "kube-apiserver /readyz", timeout, [("kube-apiserver", proc)])
    elif component in ("kube-controller-manager", "kube-scheduler"):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed serving certs
        _wait(lambda: _http_ok(f"https://127.0.0.1:{ports[component]}/healthz", ctx),
              f"{component} /healthz", timeout, [(component, proc)])
    else:  # kwok: healthz on its server address
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        _wait(lambda: _port_open(ports["kwok"]), "kwok server port", timeout, [("kwok", proc)])


def up(nodes: list[dict] | int | Any = 6, workdir: str | os.PathLike | None = None, *,
       name: str = "default", timeout: float = 120.0, real_nodes: Iterable[str] | str | None = None,
       node_grace_s: float | None = None, telemetry: str | None = None) -> dict[str, Any]:
    """Start the plane `name` and register `nodes` (an int -> default_nodes(n)).

    ``telemetry="prometheus"``: one cgroup exporter per real node and a real Prometheus scraping them
    (:mod:`dtlab.kube.nodetelemetry`; its URL in ``state["telemetry"]["prometheus_url"]``).

    ``real_nodes``: names of `nodes` (or "all") that run a real kubelet on containerd instead of
    KWOK. ``node_grace_s``: node-monitor grace period (default 80 s; a real node whose kubelet
    died turns NotReady after it). Returns the state dict: name, workdir, kubeconfig, ports,
    processes {component: {pid, start_time, cmd, log}}, nodes, real_nodes, versions. If a plane
    of that name is already running it is stopped first. On failure everything started is
    removed again.
    """
    bins = find_binaries()
    if shutil.which("openssl") is None:
        raise LocalPlaneError("the `openssl` CLI is required")
    node_list = nodes_list(nodes)
    if isinstance(real_nodes, str):
        real_nodes = [n["name"] for n in node_list] if real_nodes == "all" else \
            [r.strip() for r in real_nodes.split(",") if r.strip()]
    real = list(real_nodes or [])
    if real:
        from . import realnodes
        why = realnodes.missing()
        if why:
            raise LocalPlaneError(f"real nodes unavailable: {why}")
        unknown = sorted(set(real) - {n["name"] for n in node_list})
        if unknown:
            raise LocalPlaneError(f"real nodes not in the cluster: {unknown}")
    if telemetry is not None:
        from .nodetelemetry import MODES
        if telemetry not in MODES:
            raise LocalPlaneError(f"telemetry {telemetry!r}: must be one of {', '.join(MODES)}")
        if not real:
            raise LocalPlaneError("telemetry needs real nodes: KWOK nodes have no cgroup to read")
    for attempt in range(3):
        try:
            return _up_once(bins, node_list, workdir, name, timeout, real, node_grace_s, telemetry)
        except LocalPlaneError as e:  # a free port taken between probe and bind: retry
            if "address already in use" not in str(e) or attempt == 2:
                raise


def _up_once(bins: Mapping[str, Path], nodes: list[Any], workdir: str | os.PathLike | None,
             name: str, timeout: float, real: list[str], node_grace_s: float | None,
             telemetry: str | None = None) -> dict[str, Any]:
    if load_state(name):
        down(name)
    wd = Path(workdir) if workdir else _plane_dir(name) / "run"
    if wd.exists() and any(wd.iterdir()):
        if not ((wd / "pki").is_dir() or (wd / "kubeconfig").is_file()):
            raise LocalPlaneError(f"workdir {wd} is not empty and not a previous local plane")
        shutil.rmtree(wd)
    wd.mkdir(parents=True, exist_ok=True)
    _make_pki(wd / "pki")
    all_ports = _free_ports(6 + 2 * len(real))
    ports = dict(zip(("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager",
                      "kube-scheduler", "kwok"), all_ports[:6]))
    grace = f"{node_grace_s:g}s" if node_grace_s else NODE_MONITOR_GRACE
    _write_kubeconfig(wd / "kubeconfig", wd / "pki", ports["kube-apiserver"])
    shutil.copyfile(stages_file(), wd / "kwok.yaml")
    st: dict[str, Any] = {
        "name": name, "workdir": str(wd.resolve()), "kubeconfig": str((wd / "kubeconfig").resolve()),
        "ports": ports, "processes": {}, "commands": _commands(bins, wd.resolve(), ports, grace),
        "bins": {k: str(v) for k, v in bins.items()}, "nodes": [], "real_nodes": [], "binfmt": {},
        "versions": {"kubernetes": K8S_VERSION, "etcd": ETCD_VERSION, "kwok": KWOK_VERSION},
        "started_at": time.time(),
    }
    _save_state(name, st)
    try:
        for comp in COMPONENTS:
            _start(comp, st, timeout)
        api = _core_api(st["kubeconfig"])

        def _sa_ready() -> bool:  # pods need the `default` ServiceAccount (made by the KCM)
            try:
                api.read_namespaced_service_account("default", "default")
                return True
            except Exception:  # noqa: BLE001
                return False
        procs = [(c, st["processes"][c]) for c in COMPONENTS]
        _wait(_sa_ready, "default ServiceAccount", timeout, procs)
        kwok = [n for n in nodes if _get(n, "name") not in set(real)]
        names = register_nodes(kwok, st["kubeconfig"]) if kwok else []
        st["nodes"] = [_get(n, "name") for n in nodes]
        _save_state(name, st)
        if real:
            _start_real(st, nodes, real, all_ports[6:], api, timeout, procs)
        _wait(lambda: _ready_nodes(api, st["nodes"]) == set(st["nodes"]), f"{len(st['nodes'])} nodes Ready",
              timeout, procs + [(f"{r['name']}/{c}", p) for r in st["real_nodes"]
                                for c, p in r["processes"].items()])
        if telemetry:
            from . import nodetelemetry
            nodetelemetry.start(st, lambda n, cmd, d: _spawn(n, cmd, d), _alive, lambda: _save_state(name, st),
                                timeout=min(timeout, 60.0))
    except BaseException:
        down(name)
        raise
    st["ready_at"] = time.time()
    _save_state(name, st)
    return st


def _start_real(st: dict[str, Any], nodes: list[Any], real: list[str], ports: list[int], api,
                timeout: float, procs) -> None:
    """Start the real nodes (containerd + images + kubelet each), then give them the spec's labels."""
    from . import realnodes
    t0 = time.time()
    wd = Path(st["workdir"])
    tars = realnodes.images_dir()
    recs = realnodes.prepare([{k: _get(n, k) for k in ("name", "arch", "cores", "speed")} for n in nodes],
                             real, st["name"])
    st["real_nodes"] = recs
    arches = {r["arch"] for r in recs} | {"arm64", "riscv64"}   # qemu-* formats run foreign images anywhere
    st["binfmt"] = realnodes.register_binfmt(arches, st["name"])
    _save_state(st["name"], st)
    for i, rec in enumerate(recs):
        realnodes.start_node(rec, wd, st["kubeconfig"], wd / "pki", tars, (ports[2 * i], ports[2 * i + 1]),
                             timeout=timeout, save=lambda: _save_state(st["name"], st))
    manifests = {_get(n, "name"): node_manifest(n) for n in nodes}
    pending = {r["name"]: r for r in recs}

    def _labelled() -> bool:   # a kubelet registers its node itself; then the spec's labels go on
        from kubernetes.client.rest import ApiException
        for nm in list(pending):
            try:
                api.patch_node(nm, realnodes.label_patch(pending[nm], manifests[nm]))
                del pending[nm]
            except ApiException as e:
                if e.status != 404:
                    raise
        return not pending
    kprocs = list(procs) + [(f"{r['name']}/{c}", p) for r in recs for c, p in r["processes"].items()]
    _wait(_labelled, f"{len(recs)} kubelets registered", timeout, kprocs)
    _wait(lambda: _ready_nodes(api, real) == set(real), f"{len(real)} real nodes Ready", timeout, kprocs)
    st["real_ready_s"] = round(time.time() - t0, 2)
    for rec in recs:   # again once Ready: the kubelet's first status sync may have reset default labels
        api.patch_node(rec["name"], realnodes.label_patch(rec, manifests[rec["name"]]))
    _save_state(st["name"], st)


def kill_kubelet(node: str, name: str = "default") -> None:
    """Fault injection on a real node: SIGKILL its kubelet (node NotReady after the grace period)."""
    from . import realnodes
    st = load_state(name)
    if not st:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    rec = next((r for r in st.get("real_nodes", []) if r["name"] == node), None)
    if rec is None:
        raise LocalPlaneError(f"{node!r} is not a real node of plane {name!r}")
    realnodes.kill_kubelet(rec)


def restart_kubelet(node: str, name: str = "default") -> None:
    """Start a real node's kubelet again with the same flags (recovery after kill_kubelet)."""
    from . import realnodes
    st = load_state(name)
    rec = next((r for r in (st or {}).get("real_nodes", []) if r["name"] == node), None)
    if rec is None:
        raise LocalPlaneError(f"{node!r} is not a real node of plane {name!r}")
    if realnodes.restart_kubelet(rec):
        _save_state(name, st)


EXTENDER_SCHEDULER = "dtlab-extender"


SCHEDULER_QPS, SCHEDULER_BURST = 1000, 2000   # client rate of every scheduler here (default 50/100 caps binding)


def scheduler_config(kubeconfig_path: str, scheduler_name: str) -> dict[str, Any]:
    """KubeSchedulerConfiguration of an extra scheduler: one profile ``scheduler_name`` (default plugins),
    client QPS/burst raised to SCHEDULER_QPS/SCHEDULER_BURST, no leader election."""
    return {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig_path, "qps": SCHEDULER_QPS, "burst": SCHEDULER_BURST},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": scheduler_name}]}


def scheduler_extender_config(kubeconfig_path: str, url: str, node_cache_capable: bool = True) -> dict[str, Any]:
    """KubeSchedulerConfiguration of the second scheduler: profile ``dtlab-extender`` (default plugins)
    with ``dtlab serve --extender`` at ``url`` (filter + prioritize, weight 1) in its loop. This is the
    configuration other work reuses to put the twin into the real scheduler.

    ``nodeCacheCapable`` (default true): the scheduler sends node names, not full v1 Node objects
    (the twin has its own node state); at 1,000 nodes that is a few kB per call instead of MBs
    (benchmarks/bench_extender.py)."""
    return {**scheduler_config(kubeconfig_path, EXTENDER_SCHEDULER),
            "extenders": [{"urlPrefix": url.rstrip("/") + "/extender", "filterVerb": "filter",
                           "prioritizeVerb": "prioritize", "weight": 1, "enableHTTPS": False,
                           "nodeCacheCapable": bool(node_cache_capable), "ignorable": False,
                           "httpTimeout": "5s"}]}


def start_extender_scheduler(url: str, name: str = "default", timeout: float = 60.0,
                             node_cache_capable: bool = True) -> dict[str, Any]:
    """Start (or restart) a second kube-scheduler whose pods (``schedulerName: dtlab-extender``) go
    through the extender at ``url``; ``down`` stops it with the plane."""
    st = load_state(name)
    if not st:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    return start_scheduler(scheduler_extender_config(st["kubeconfig"], url, node_cache_capable), name,
                           "kube-scheduler-extender", timeout)


def start_scheduler(config: dict[str, Any], name: str = "default", key: str = "kube-scheduler-extra",
                    timeout: float = 60.0) -> dict[str, Any]:
    """Start (or restart) an extra kube-scheduler process ``key`` with ``config`` (a
    KubeSchedulerConfiguration dict; its kubeconfig is the plane's); ``down`` stops it with the plane."""
    st = load_state(name)
    if not st:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    stop_scheduler(name, key)
    st = load_state(name) or st
    wd = Path(st["workdir"])
    cfg = wd / f"{key}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    port = _free_ports(1)[0]
    cmd = [st["bins"]["kube-scheduler"], f"--config={cfg}", f"--authentication-kubeconfig={st['kubeconfig']}",
           f"--authorization-kubeconfig={st['kubeconfig']}", "--bind-address=127.0.0.1",
           f"--secure-port={port}", "--profiling=false", "--v=1"]
    proc = _spawn(key, cmd, wd)
    st.setdefault("extra_processes", {})[key] = {**proc, "port": port}
    _save_state(name, st)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    _wait(lambda: _http_ok(f"https://127.0.0.1:{port}/healthz", ctx), f"{key} /healthz",
          timeout, [(key, proc)])
    return proc


def stop_extender_scheduler(name: str = "default") -> None:
    stop_scheduler(name, "kube-scheduler-extender")


def stop_scheduler(name: str = "default", key: str = "kube-scheduler-extra") -> None:
    """Stop the extra scheduler ``key`` started by :func:`start_scheduler` (no-op if not running)."""
    st = load_state(name)
    if st is None:
        return
    proc = st.get("extra_processes", {}).pop(key, None)
    if proc:
        _kill(proc)
        _save_state(name, st)


def real_node_names(name: str = "default") -> list[str]:
    st = load_state(name)
    return [r["name"] for r in (st or {}).get("real_nodes", [])]


def stop_component(component: str, name: str = "default", *, graceful: bool = False) -> None:
    """Kill one component (e.g. kube-apiserver for fault tests): SIGKILL by default, like a
    crash; graceful=True sends SIGTERM first. Its entry stays in the state for start_component."""
    st = load_state(name)
    if not st:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    _kill(st["processes"][component], graceful=graceful)


def start_component(component: str, name: str = "default", timeout: float = 60.0) -> None:
    """(Re)start one component with the same flags and ports; no-op if it is running."""
    st = load_state(name)
    if not st:
        raise LocalPlaneError(f"local plane {name!r} is not running")
    if _alive(st["processes"].get(component, {})):
        return
    for attempt in range(5):
        try:
            _start(component, st, timeout)
            return
        except LocalPlaneError as e:  # the old socket may linger a moment after a kill
            if "address already in use" not in str(e) or attempt == 4:
                raise
            time.sleep(1.0)


def status(name: str = "default") -> dict[str, Any]:
    """{'running': bool, 'name', 'kubeconfig', 'workdir', 'ports', 'components': {c: {'pid', 'alive'}},
    'apiserver_ready': bool, 'nodes': int, 'nodes_ready': int, 'versions'}; running False if not up."""
    st = load_state(name)
    if not st:
        return {"running": False, "name": name}
    comps = {c: {"pid": p.get("pid"), "alive": _alive(p)} for c, p in st["processes"].items()}
    out: dict[str, Any] = {
        "name": name, "kubeconfig": st["kubeconfig"], "workdir": st["workdir"], "ports": st["ports"],
        "components": comps, "versions": st.get("versions", {}), "apiserver_ready": False,
        "nodes": 0, "nodes_ready": 0,
    }
    if comps.get("kube-apiserver", {}).get("alive"):
        wd = Path(st["workdir"])
        out["apiserver_ready"] = _http_ok(
            f"https://127.0.0.1:{st['ports']['kube-apiserver']}/readyz", _tls_ctx(wd))
        if out["apiserver_ready"]:
            try:
                api = _core_api(st["kubeconfig"])
                items = api.list_node().items
                out["nodes"] = len(items)
                out["nodes_ready"] = len(_ready_nodes(api, [n.metadata.name for n in items]))
            except Exception as e:  # noqa: BLE001 - status must not raise
                out["error"] = str(e)
    real = {r["name"]: r for r in st.get("real_nodes", [])}
    out["node_kinds"] = {n: ("real" if n in real else "kwok") for n in st.get("nodes", [])}
    out["real_nodes"] = {n: {c: {"pid": p.get("pid"), "alive": _alive(p)} for c, p in r["processes"].items()}
                         for n, r in real.items()}
    if real:
        out["real_ready_s"] = st.get("real_ready_s")
        out["cpu_scale"] = next(iter(real.values())).get("scale")
    if st.get("telemetry"):
        out["telemetry"] = dict(st["telemetry"], processes={k: {"pid": p.get("pid"), "alive": _alive(p)}
                                                            for k, p in st.get("extra_processes", {}).items()
                                                            if k == "prometheus" or k.startswith("exporter-")})
    out["running"] = all(c["alive"] for c in comps.values()) and len(comps) == len(COMPONENTS)
    return out


def down(name: str = "default", *, keep_workdir: bool = True) -> None:
    """Kill every process of plane `name` (reverse start order), wait until its ports are free,
    and remove the state file. Logs stay in the workdir unless keep_workdir=False."""
    st = load_state(name)
    if not st:
        return
    errors = []
    for proc in st.get("extra_processes", {}).values():
        try:
            _kill(proc)
        except LocalPlaneError as e:
            errors.append(str(e))
    if st.get("real_nodes") or st.get("binfmt"):
        from . import realnodes
        for rec in st.get("real_nodes", []):
            errors += realnodes.stop_node(rec)
        errors += realnodes.unregister_binfmt(st.get("binfmt") or {})
        left = realnodes.leftovers(st.get("real_nodes", []), st.get("binfmt"))
        errors += [f"left after down: {x}" for x in left]
    for comp in reversed(COMPONENTS):
        proc = st.get("processes", {}).get(comp)
        if proc:
            try:
                _kill(proc)
            except LocalPlaneError as e:
                errors.append(str(e))
    deadline = time.monotonic() + 10
    busy = [p for p in st.get("ports", {}).values() if _port_open(p)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.1)
        busy = [p for p in busy if _port_open(p)]
    if busy:
        errors.append(f"ports still open after down: {busy}")
    if errors:
        raise LocalPlaneError("; ".join(errors))
    _state_path(name).unlink(missing_ok=True)
    if not keep_workdir:
        shutil.rmtree(st["workdir"], ignore_errors=True)
    try:
        _plane_dir(name).rmdir()  # only if empty (workdir elsewhere or removed)
    except OSError:
        pass


if __name__ == "__main__":  # python -m dtlab.kube.localplane up|status|down [N]
    import sys
    cmd = sys.argv[1] if len(sys.argv) > 1 else "status"
    if cmd == "up":
        s = up(int(sys.argv[2]) if len(sys.argv) > 2 else 6)
        print(json.dumps({k: s[k] for k in ("kubeconfig", "workdir", "ports", "nodes")}, indent=2))
    elif cmd == "down":
        down()
    else:
        print(json.dumps(status(), indent=2))
