"""Real kubelet nodes next to the KWOK nodes of the local plane (``dtlab cluster up --real-nodes``).

Each real node gets, on this host:

* its **own containerd** (Debian's 1.6 + runc): own ``root``, ``state``, gRPC socket and CNI config,
  so no kubelet ever sees another node's containers. ``restrict_oom_score_adj = true`` is required
  on this VM kind (it refuses to lower ``oom_score_adj`` even for root; without it every sandbox
  fails with ``can't get final child's PID from pipe``). The sandbox image is ``dtlab/pause:1``,
  imported with the worker images (``images/build.sh``) because no registry is reachable;
* a **real kubelet** (built by ``cluster/localplane/build.sh`` from the plane's own wrapper module)
  registered under the node's name: ``failCgroupV1: false`` (cgroup v1 here), ``cgroupDriver:
  cgroupfs``, ``cgroupRoot: /dtlab-<plane>-<node>`` so every pod lands under the node's own cgroup;
  that parent gets a CFS quota of ``cores * speed * scale`` CPUs (``scale = min(1, budget / sum of
  cores * speed over the real nodes)``, as the fabric scales its nodes to what the host can give),
  and the node's labels (arch, formats, zone, speed) are written over the kubelet's own (it always
  reports the host's amd64), plus ``dtlab.io/node-kind=real`` and ``dtlab.io/cpu-scale``;
* **no cpuset split** (unlike the fabric), measured: with the kubelet's default ``none`` CPU manager
  the kubelet writes every host core into its ``kubepods`` cpuset and refuses to start when the node
  cgroup's cpuset is narrower ("failed to write 0-1 ... permission denied"); the ``static`` manager with
  ``reservedSystemCPUs`` starts, but takes the reserved cores out of allocatable (1 of 2 here), and the
  Guaranteed stage pods then fail admission. Real-node pods therefore share the host's cores with the
  kubelets, containerd and the plane; only their CFS quotas bound them, and the kube substrate tells
  the twin the slowdown the shared host imposes (``KubeSubstrate._shared_host_slowdown``; README,
  Limitations);
* a **pod network**: the standard ``bridge`` + ``host-local`` CNI plugins, one bridge and one
  /24 pod CIDR per node (``10.244.<i>.0/24``), IPAM state under the node's dir.

Foreign-arch images run through ``binfmt_misc`` + ``qemu-user-static``: ``up`` registers
``dtlab-<plane>-aarch64`` / ``-riscv64`` entries (the ``F`` flag opens the interpreter at
registration, so it works inside containers) and ``down`` removes exactly those (and unmounts
binfmt_misc if it mounted it). No Wasm shim exists here (runwasi is not packaged); the wasm image
runs the WASI kernel under the wazero CLI inside an ordinary runc container.

``stop_all`` removes every process, mount, cgroup and bridge recorded in the state: it is also safe
on a half-started node.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..fabric import cgroups

REAL_ANNOTATION = "dtlab.io/real-node"
NODE_KIND_LABEL = "dtlab.io/node-kind"
CPU_SCALE_LABEL = "dtlab.io/cpu-scale"
PAUSE_IMAGE = "docker.io/dtlab/pause:1"
WORKER_IMAGES = {"amd64": "docker.io/dtlab/worker:amd64", "arm64": "docker.io/dtlab/worker:arm64",
                 "riscv64": "docker.io/dtlab/worker:riscv64", "wasm": "docker.io/dtlab/worker:wasm"}
NODE_NATIVE_IMAGE = "docker.io/dtlab/worker:node"   # per node: its own arch's worker (as a multi-arch image)
IMAGE_TARS = ("pause", "worker-amd64", "worker-arm64", "worker-riscv64", "worker-wasm")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ARCH = {"arm64": ("aarch64", "qemu-aarch64"), "riscv64": ("riscv64", "qemu-riscv64")}
CGROUP_V1 = Path("/sys/fs/cgroup")
POD_NET = "10.244"          # 10.244.<index>.0/24 per real node of plane "default"


def pod_net(plane: str) -> str:
    """The /16 a plane's pod CIDRs come from: 10.244 for "default", else 10.200-10.239 by the name's
    hash, so two planes on one host (a user's and a test's) do not route the same subnets."""
    import zlib
    return POD_NET if plane == "default" else f"10.{200 + zlib.crc32(plane.encode()) % 40}"
_REPO = Path(__file__).resolve().parents[2]


class RealNodeError(RuntimeError):
    """A real node could not be prepared, started or removed."""


# ---------------------------------------------------------------- what is needed
def kubelet_path() -> Path:
    from ..datadir import cache_dir
    from .localplane import K8S_VERSION
    return Path(os.environ.get("DTLAB_KUBELET_BIN") or cache_dir() / "kubelet" / f"v{K8S_VERSION}" / "bin") \
        / "kubelet"


def cni_bin_dir() -> str | None:
    for d in CNI_BIN_DIRS:
        if all(os.access(Path(d) / p, os.X_OK) for p in ("bridge", "host-local", "loopback")):
            return d
    return None


def missing() -> str | None:
    """Why real nodes cannot run here (None when they can). `make cluster-deps` installs it all."""
    if os.geteuid() != 0:
        return "real nodes need root (containerd, cgroups, bridges)"
    if not os.access(kubelet_path(), os.X_OK):
        return f"kubelet not built at {kubelet_path()} (make cluster-deps)"
    for tool in ("containerd", "runc", "ctr", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (make cluster-deps)"
    if cni_bin_dir() is None:
        return "CNI plugins bridge/host-local/loopback not found (apt-get install containernetworking-plugins)"
    if not (CGROUP_V1 / "cpu").is_dir() and not (CGROUP_V1 / "cpu,cpuacct").is_dir():
        return "cgroup v1 cpu hierarchy not found at /sys/fs/cgroup/cpu (only cgroup v1 hosts are supported)"
    return None


def images_dir() -> Path:
    """The docker-archive tarballs of images/build.sh (built now if their source changed; cached)."""
    r = subprocess.run(["bash", str(_REPO / "images" / "build.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RealNodeError(f"images/build.sh failed: {r.stderr.strip()[-800:]}")
    d = Path(r.stdout.strip().splitlines()[-1])
    absent = [t for t in IMAGE_TARS if not (d / f"{t}.tar").is_file()]
    if absent:
        raise RealNodeError(f"images missing in {d}: {absent}")
    return d


def image_for(node_arch: str, fmt: str) -> str:
    """The worker image that runs format ``fmt`` on a node of ``node_arch``."""
    if fmt.startswith("wasm"):
        return WORKER_IMAGES["wasm"]
    arch = node_arch if fmt == "native" else fmt.split("-", 1)[1]
    if arch not in WORKER_IMAGES:
        raise RealNodeError(f"no worker image for arch {arch!r} (format {fmt}, node arch {node_arch})")
    return WORKER_IMAGES[arch]


# ---------------------------------------------------------------- sizing
def host_budget() -> float:
    """CPUs the real nodes may use together: half the host (kubelets, containerd, the plane need the rest)."""
    return max(0.5, (os.cpu_count() or 1) * 0.5)


def cpu_scale(nodes: Iterable[Mapping[str, Any]], budget: float | None = None) -> float:
    demand = sum(float(n.get("cores", 1)) * float(n.get("speed", 1.0)) for n in nodes)
    return min(1.0, (budget or host_budget()) / demand) if demand > 0 else 1.0


# ---------------------------------------------------------------- cgroups v1
def _hierarchies() -> list[Path]:
    out = []
    for p in sorted(CGROUP_V1.iterdir()) if CGROUP_V1.is_dir() else []:
        if p.is_symlink() or not p.is_dir() or p.name == "unified":
            continue
        if (p / "cgroup.procs").exists():
            out.append(p)
    return out


def _make_cgroup(name: str, cpus: float) -> list[str]:
    """/<name> in every v1 hierarchy (cpuset seeded from the root), CFS quota ``cpus`` on cpu."""
    made = []
    for h in _hierarchies():
        d = h / name
        d.mkdir(exist_ok=True)
        made.append(str(d))
        if (d / "cpuset.cpus").exists():
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text().strip() or "0")
        if (d / "cpu.cfs_quota_us").exists():
            period = 100_000
            (d / "cpu.cfs_period_us").write_text(str(period))
            (d / "cpu.cfs_quota_us").write_text(str(max(1000, int(round(cpus * period)))))
    if (CGROUP_V1 / "unified" / "cgroup.procs").exists():
        made.append(str(CGROUP_V1 / "unified" / name))   # hybrid host: the kubelet makes it there too
    return made


def _remove_cgroup_tree(path: Path) -> list[str]:
    """rmdir bottom-up after killing what is left inside (dtlab.fabric.cgroups.remove_tree); returns
    what could not be removed."""
    try:
        cgroups.remove_tree(path, timeout_s=5.0)
    except OSError:
        pass
    return [str(d) for d in [path, *path.rglob("*")] if d.is_dir()] if path.is_dir() else []


# ---------------------------------------------------------------- binfmt_misc
def register_binfmt(arches: Iterable[str], plane: str) -> dict[str, Any]:
    """Register qemu-user-static for the foreign ``arches`` under names owned by this plane."""
    owned: dict[str, Any] = {"mounted": False, "entries": []}
    want = sorted({a for a in arches if a in BINFMT_ARCH})
    if not want:
        return owned
    if not (BINFMT_DIR / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RealNodeError(f"cannot mount binfmt_misc: {r.stderr.strip()}")
        owned["mounted"] = True
    for arch in want:
        qarch, conf = BINFMT_ARCH[arch]
        src = Path("/usr/lib/binfmt.d") / f"{conf}.conf"
        if not src.is_file():
            raise RealNodeError(f"{src} not found (apt-get install qemu-user-static)")
        fields = src.read_text().strip().split(":")   # :name:type:offset:magic:mask:interpreter:flags
        name = f"dtlab-{plane}-{qarch}"
        if (BINFMT_DIR / name).exists():
            _unregister(name)
        fields[1] = name
        if "F" not in fields[-1]:
            fields[-1] += "F"      # open the interpreter now: it must work inside containers' mount ns
        try:
            (BINFMT_DIR / "register").write_text(":".join(fields))
        except OSError as exc:
            raise RealNodeError(f"binfmt_misc register {name}: {exc}") from None
        owned["entries"].append(name)
    return owned


def _unregister(name: str) -> None:
    p = BINFMT_DIR / name
    if p.exists():
        p.write_text("-1")


def unregister_binfmt(owned: Mapping[str, Any]) -> list[str]:
    errors = []
    for name in owned.get("entries", []):
        try:
            _unregister(name)
        except OSError as exc:
            errors.append(f"binfmt {name}: {exc}")
    if owned.get("mounted"):
        others = [p.name for p in BINFMT_DIR.iterdir() if p.name not in ("register", "status")] \
            if BINFMT_DIR.is_dir() else []
        if not others:
            subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True)
    return errors


# ---------------------------------------------------------------- config files
def _containerd_config(d: Path, cni_conf: Path, cni_bin: str) -> str:
    return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d / 'containerd.sock'}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def _cni_conflist(idx: int, d: Path, bridge: str, net: str = POD_NET) -> dict[str, Any]:
    return {"cniVersion": "0.4.0", "name": f"dtlab-pods-{idx}", "plugins": [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": str(d / "ipam"),
                 "ranges": [[{"subnet": f"{net}.{idx}.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}


def _kubelet_config(d: Path, node: Mapping[str, Any], pki: Path, ports: tuple[int, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": "/" + node["cgroup"],
        "failSwapOn": False, "containerRuntimeEndpoint": f"unix://{d / 'containerd.sock'}",
        "address": "127.0.0.1", "port": ports[0], "healthzBindAddress": "127.0.0.1", "healthzPort": ports[1],
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},       # loopback-only plane
        "enforceNodeAllocatable": [], "evictionHard": {},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,   # images cannot be pulled again
        "podCIDR": f"{node.get('net', POD_NET)}.{node['index']}.0/24", "resolvConf": "", "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "2s", "nodeStatusReportFrequency": "10s", "nodeLeaseDurationSeconds": 10,
        "maxPods": 110, "staticPodPath": "", "registerNode": True,
    }


# ---------------------------------------------------------------- processes
def _spawn(cmd: list[str], log: Path) -> dict[str, Any]:
    from .localplane import _proc_start_time
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)
    return {"pid": p.pid, "start_time": _proc_start_time(p.pid), "cmd": cmd, "log": str(log)}


def _kill(proc: Mapping[str, Any] | None, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
    from .localplane import _alive
    if not proc or not _alive(proc):
        return
    try:
        os.kill(proc["pid"], sig)
    except OSError:
        return
    deadline = time.monotonic() + wait_s
    while _alive(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(proc):
        try:
            os.kill(proc["pid"], signal.SIGKILL)
        except OSError:
            pass
        deadline = time.monotonic() + 5
        while _alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:   # reap if it is our child (no zombie left behind)
        os.waitpid(proc["pid"], os.WNOHANG)
    except OSError:
        pass


def _wait_socket(path: Path, proc: Mapping[str, Any], timeout: float) -> None:
    from .localplane import _alive
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            r = subprocess.run(["ctr", "-a", str(path), "version"], capture_output=True, text=True)
            if r.returncode == 0:
                return
        if not _alive(proc):
            break
        time.sleep(0.1)
    tail = Path(proc["log"]).read_text(errors="replace")[-800:] if Path(proc["log"]).exists() else ""
    raise RealNodeError(f"containerd at {path} did not come up: {tail}")


def _import_images(sock: Path, tars: Path, ctr_log: Path, arch: str = "amd64") -> None:
    for t in IMAGE_TARS:
        r = subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import", "--all-platforms",
                            "--no-unpack", str(tars / f"{t}.tar")], capture_output=True, text=True, timeout=300)
        with open(ctr_log, "a") as fh:
            fh.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RealNodeError(f"importing {t} into {sock}: {r.stderr.strip()[-400:]}")
    r = subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", "images", "tag", "--force",
                        WORKER_IMAGES.get(arch, WORKER_IMAGES["amd64"]), NODE_NATIVE_IMAGE],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RealNodeError(f"tagging {NODE_NATIVE_IMAGE} in {sock}: {r.stderr.strip()[-400:]}")


def prepare(nodes: list[Mapping[str, Any]], real: Iterable[str], plane: str,
            budget: float | None = None) -> list[dict[str, Any]]:
    """The real-node records (index, cgroup name, CPU quota) for the names in ``real``."""
    real = list(real)
    by_name = {n["name"]: n for n in nodes}
    unknown = [r for r in real if r not in by_name]
    if unknown:
        raise RealNodeError(f"--real-nodes: not nodes of the cluster: {unknown} (known: {sorted(by_name)})")
    chosen = [by_name[r] for r in real]
    scale = cpu_scale(chosen, budget)
    out = []
    for i, n in enumerate(chosen, start=1):
        if i > 250:
            raise RealNodeError("at most 250 real nodes (one /24 pod CIDR each)")
        out.append({"name": n["name"], "index": i, "arch": n.get("arch", "amd64"),
                    "cgroup": f"dtlab-{plane}-{n['name']}"[:100], "bridge": f"dtrn{i}-{plane}"[:15],
                    "net": pod_net(plane),
                    "scale": scale, "cpus": float(n.get("cores", 1)) * float(n.get("speed", 1.0)) * scale,
                    "processes": {}, "cgroups": []})
    return out


def start_node(rec: dict[str, Any], wd: Path, kubeconfig: str, pki: Path, tars: Path,
               ports: tuple[int, int], timeout: float = 60.0, save=lambda: None) -> None:
    """containerd (+ images) and kubelet for one real node; ``rec`` records everything made (for stop)."""
    d = wd / "nodes" / rec["name"]
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)
    for sub in ("root", "state", "cni", "ipam", "kubelet", "opt", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    rec["dir"] = str(d)
    cni_bin = cni_bin_dir()
    if cni_bin is None:
        raise RealNodeError("CNI plugins not found")
    (d / "cni" / "10-dtlab.conflist").write_text(json.dumps(_cni_conflist(rec["index"], d, rec["bridge"], rec["net"]), indent=1))
    (d / "containerd.toml").write_text(_containerd_config(d, d / "cni", cni_bin))
    rec["cgroups"] = _make_cgroup(rec["cgroup"], rec["cpus"])
    save()
    rec["processes"]["containerd"] = _spawn(["containerd", "--config", str(d / "containerd.toml")],
                                            d / "logs" / "containerd.log")
    save()
    _wait_socket(d / "containerd.sock", rec["processes"]["containerd"], timeout)
    _import_images(d / "containerd.sock", tars, d / "logs" / "ctr.log", rec.get("arch", "amd64"))
    (d / "kubelet.yaml").write_text(yaml.safe_dump(_kubelet_config(d, rec, pki, ports), sort_keys=False))
    rec["ports"] = list(ports)
    rec["processes"]["kubelet"] = _spawn(
        [str(kubelet_path()), f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={kubeconfig}",
         f"--hostname-override={rec['name']}", f"--root-dir={d / 'kubelet'}", "--node-ip=127.0.0.1", "--v=1"],
        d / "logs" / "kubelet.log")
    save()


def label_patch(rec: Mapping[str, Any], node_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata patch that gives a registered kubelet node the spec's labels (arch, formats, zone...)."""
    labels = dict(node_manifest["metadata"]["labels"])
    labels["type"] = "real"
    labels[NODE_KIND_LABEL] = "real"
    labels[CPU_SCALE_LABEL] = f"{rec['scale']:.6g}"
    return {"metadata": {"labels": labels, "annotations": {REAL_ANNOTATION: "true"}}}


def kill_kubelet(rec: Mapping[str, Any]) -> None:
    """Fault injection: SIGKILL the node's kubelet (its containers go on; the node goes NotReady)."""
    _kill(rec.get("processes", {}).get("kubelet"), signal.SIGKILL)


def restart_kubelet(rec: dict[str, Any]) -> bool:
    """Start the kubelet again with its recorded command; False if it is still running."""
    from .localplane import _alive
    proc = rec.get("processes", {}).get("kubelet")
    if not proc or _alive(proc):
        return False
    rec["processes"]["kubelet"] = _spawn(proc["cmd"], Path(proc["log"]))
    return True


def _mounts_under(prefix: str) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        mp = ln.split()[4].replace("\\040", " ")
        if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
            out.append(mp)
    return sorted(out, key=len, reverse=True)


def stop_node(rec: Mapping[str, Any]) -> list[str]:
    """Remove everything of one real node: kubelet, containers (shims), containerd, mounts, netns,
    bridge, cgroups. Returns error strings (empty when nothing is left)."""
    errors: list[str] = []
    procs = rec.get("processes", {})
    _kill(procs.get("kubelet"))
    d = Path(rec["dir"]) if rec.get("dir") else None
    sock = d / "containerd.sock" if d else None
    if sock is not None and sock.exists() and procs.get("containerd"):
        # stop the pods first so the CNI plugin releases their veths and IPs
        crictl_less_cleanup(sock)
    # shims are reparented away from containerd: kill them by the containerd address they serve
    if d is not None:
        for pid in _pids_with_arg(str(d)):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    _kill(procs.get("containerd"))
    if d is not None:
        for pid in _pids_with_arg(str(d)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for mp in _mounts_under(str(d)):
            r = subprocess.run(["umount", "-l", mp], capture_output=True, text=True)
            if r.returncode != 0 and Path(mp).exists():
                errors.append(f"umount {mp}: {r.stderr.strip()}")
    # pod network namespaces of this node's sandboxes (CRI makes them as /var/run/netns/cni-*): the
    # ones with an address in the node's pod CIDR; deleting one also removes its veth pair
    for ns in pod_netns(rec):
        r = subprocess.run(["ip", "netns", "delete", ns], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"netns {ns}: {r.stderr.strip()}")
    br = rec.get("bridge")
    if br and Path(f"/sys/class/net/{br}").exists():
        r = subprocess.run(["ip", "link", "delete", br], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"delete bridge {br}: {r.stderr.strip()}")
    for cg in rec.get("cgroups", []):
        errors += [f"cgroup left: {p}" for p in _remove_cgroup_tree(Path(cg))]
    if d is not None and d.exists():
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            errors.append(f"could not remove {d}")
    return errors


def pod_netns(rec: Mapping[str, Any]) -> list[str]:
    """Names of the network namespaces holding an address of this node's pod CIDR."""
    if not rec.get("index"):
        return []
    prefix = f"{rec.get('net', POD_NET)}.{rec['index']}."
    out = []
    for p in sorted(Path("/var/run/netns").glob("cni-*")) if Path("/var/run/netns").is_dir() else []:
        r = subprocess.run(["ip", "-n", p.name, "-4", "-o", "addr"], capture_output=True, text=True)
        if prefix in r.stdout:
            out.append(p.name)
    return out


def crictl_less_cleanup(sock: Path) -> None:
    """Stop and remove every task and container of this containerd (ctr, k8s.io namespace), so the
    shims exit cleanly; then remove shim sockets a killed shim left in /run/containerd/s."""
    import hashlib
    ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
    r = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, timeout=30)
    cs = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True, timeout=30)
    for cid in r.stdout.split():
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", cid], capture_output=True, timeout=30)
    time.sleep(0.3)
    for cid in r.stdout.split():
        subprocess.run([*ctr, "tasks", "delete", "-f", cid], capture_output=True, timeout=30)
    for cid in set(r.stdout.split()) | set(cs.stdout.split()):
        # containerd 1.6 shim.SocketAddress: /run/containerd/s/sha256(<grpc address>/<ns>/<id>)
        digest = hashlib.sha256(os.path.join(str(sock), "k8s.io", cid).encode()).hexdigest()
        for base in ("/run/containerd/s", "/var/run/containerd/s"):
            try:
                Path(base, digest).unlink()
            except OSError:
                pass


def _pids_with_arg(needle: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            out.append(int(p.name))
    return out


def leftovers(records: Iterable[Mapping[str, Any]], binfmt: Mapping[str, Any] | None = None) -> list[str]:
    """What of these real nodes still exists on the host (processes, mounts, bridges, cgroups, binfmt)."""
    from .localplane import _alive
    left = []
    for rec in records:
        for name, proc in rec.get("processes", {}).items():
            if _alive(proc):
                left.append(f"{rec['name']}: {name} pid {proc['pid']}")
        if rec.get("dir"):
            left += [f"{rec['name']}: mount {m}" for m in _mounts_under(rec["dir"])]
            left += [f"{rec['name']}: process {p}" for p in _pids_with_arg(rec["dir"])]
        left += [f"{rec['name']}: netns {n}" for n in pod_netns(rec)]
        if rec.get("bridge") and Path(f"/sys/class/net/{rec['bridge']}").exists():
            left.append(f"{rec['name']}: bridge {rec['bridge']}")
        left += [f"{rec['name']}: cgroup {c}" for c in rec.get("cgroups", []) if Path(c).exists()]
    for e in (binfmt or {}).get("entries", []):
        if (BINFMT_DIR / e).exists():
            left.append(f"binfmt {e}")
    return left
