"""CPU cgroups for fabric nodes: one cgroup per node (and one per running stage inside it).

A node's CPU share is ``cores * speed * scale`` host cores, where ``scale`` shrinks the whole
fabric to fit the host budget. Each stage process additionally gets ``speed * scale`` cores
(stages are single-threaded kernels), so an isolated stage runs at the node's per-core speed and
co-located stages share the node's quota (processor sharing, as the twin assumes). The work of a
stage is multiplied by the same ``scale`` (see worker.py), so wall times come out in reference
milliseconds whatever the scale.

cgroup v1 (``/sys/fs/cgroup/cpu/...``, cpu.cfs_quota_us/cfs_period_us) and v2 (``cpu.max``) are
both supported; a stage's period is short (10 ms) so a quota of a fraction of a core throttles finely
rather than letting a 100 ms stage finish in one burst. Two kernel facts bound that: the minimum
quota is 1 ms (so a 1 %-of-a-core stage gets a 100 ms period), and the quota is enforced at the
scheduler tick (4 ms here), so a stage overruns by up to a tick and repays it in later periods: its
time is quantised in steps of about ``tick / quota`` periods, i.e. ``tick`` ms of CPU work. A node's
group uses a quota of at least ``NODE_MIN_QUOTA_US`` (longer period) so it throttles only when its
stages together exceed its cores.

Isolation (issue 14): ``Cpuset`` confines the nodes' processes to their cores, ``Cpuacct`` counts
their CPU (v1 keeps both in their own hierarchies), ``split_cpus`` decides which cores go where.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from ..errors import SubstrateUnavailable
from ..timing import quota_period_us

CGROUP_ROOT = Path(os.environ.get("DTLAB_CGROUP_ROOT", "/sys/fs/cgroup"))
PREFIX = "dtlab-"
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000
MAX_PERIOD_US = 1_000_000
# a node's (not a stage's) quota: at least this much per period, so that node-level throttling only
# acts when the node's stages together exceed its cores (processor sharing) and never steals a
# stage's own period through per-tick overrun debt at two nested levels
NODE_MIN_QUOTA_US = 20_000


@dataclass(frozen=True)
class CgroupFS:
    """Where the CPU controller lives: ``version`` 1 or 2 and the directory new groups go under."""
    version: int
    base: Path

    @property
    def procs_file(self) -> str:
        return "cgroup.procs"


def detect(root: Path | None = None) -> CgroupFS:
    """Find a usable CPU controller, or raise SubstrateUnavailable naming what is missing."""
    root = Path(root or CGROUP_ROOT)
    v1 = root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        fs = CgroupFS(1, v1)
    elif (root / "cgroup.controllers").exists():
        controllers = (root / "cgroup.controllers").read_text().split()
        if "cpu" not in controllers:
            raise SubstrateUnavailable(f"cgroup v2 at {root} has no cpu controller (cgroup.controllers: {' '.join(controllers)})")
        fs = CgroupFS(2, root)
    else:
        raise SubstrateUnavailable(
            f"no CPU cgroup found: neither {v1}/cpu.cfs_quota_us (cgroup v1) nor {root}/cgroup.controllers (v2)")
    if not os.access(fs.base, os.W_OK):
        raise SubstrateUnavailable(f"cannot create cgroups under {fs.base}: not writable (run as root)")
    return fs


def cores_to_quota(cores: float, period_us: int = PERIOD_US, min_quota_us: int = MIN_QUOTA_US) -> tuple[int, int]:
    """(quota_us, period_us) for a share of ``cores``; the period grows (up to the kernel's 1 s) if the
    quota would fall under ``min_quota_us`` (1 ms, the kernel's minimum, by default). The rule lives in
    :func:`dtlab.timing.quota_period_us`, where the twin's model of these quotas reads it too."""
    return quota_period_us(cores, period_us, min_quota_us, MAX_PERIOD_US)


class Cgroup:
    """One CPU cgroup directory (created on construction)."""

    def __init__(self, fs: CgroupFS, rel: str, cores: float | None, min_quota_us: int = MIN_QUOTA_US):
        self.fs = fs
        self.path = fs.base / rel
        self.path.mkdir(parents=False, exist_ok=True)
        if fs.version == 2:
            _enable_cpu_controller(self.path.parent)
        self.cores = None
        if cores is not None:
            self.set_cores(cores, min_quota_us)

    def set_cores(self, cores: float, min_quota_us: int = MIN_QUOTA_US) -> None:
        quota, period = cores_to_quota(cores, min_quota_us=min_quota_us)
        if self.fs.version == 1:
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {period}")
        self.cores = cores

    def prioritise(self) -> None:
        """Maximum CPU weight: within its quota the fabric wins over background load on the host,
        so a node behaves like dedicated hardware of its speed (the quota still caps the total)."""
        if self.fs.version == 1:
            (self.path / "cpu.shares").write_text("262144")
        else:
            (self.path / "cpu.weight").write_text("10000")

    @property
    def procs_path(self) -> str:
        return str(self.path / self.fs.procs_file)

    def attach(self, pid: int) -> None:
        with open(self.procs_path, "w") as fh:
            fh.write(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / self.fs.procs_file).read_text().split()]
        except FileNotFoundError:
            return []

    def child(self, name: str, cores: float | None, min_quota_us: int = MIN_QUOTA_US) -> "Cgroup":
        return Cgroup(self.fs, str(self.path.relative_to(self.fs.base) / name), cores, min_quota_us)

    def cpu_usage_ms(self) -> float | None:
        """CPU time the group used (cpu.stat usage_usec on v2; cpuacct is separate on v1, so None)."""
        if self.fs.version == 2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) / 1000.0
        return None

    def kill_all(self, sig: int = 9) -> None:
        for sub in sorted(self.path.rglob("*"), reverse=True):
            if sub.is_dir():
                _kill_in(sub / self.fs.procs_file, sig)
        _kill_in(self.path / self.fs.procs_file, sig)

    def remove(self, timeout_s: float = 5.0) -> None:
        """Kill what is left inside and remove the directory tree (deepest first)."""
        remove_tree(self.path, self.fs.procs_file, timeout_s)


def _enable_cpu_controller(parent: Path) -> None:
    ctl = parent / "cgroup.subtree_control"
    try:
        if "cpu" not in ctl.read_text().split():
            ctl.write_text("+cpu")
    except OSError:
        pass


def _kill_in(procs: Path, sig: int) -> None:
    try:
        pids = [int(x) for x in procs.read_text().split()]
    except (FileNotFoundError, ValueError):
        return
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _rmdir_bottom_up(path: Path, timeout_s: float, empty: Callable[[Path], bool]) -> None:
    """Remove ``path`` and its sub-cgroups deepest first; ``empty(d)`` clears ``d`` of processes
    (False: ``d`` is gone already). A busy directory is retried until ``timeout_s``, then raises."""
    if not path.exists():
        return
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [path]
    deadline = time.monotonic() + timeout_s
    for d in dirs:
        while True:
            if not empty(d):
                break
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def remove_tree(path: Path, procs_file: str = "cgroup.procs", timeout_s: float = 5.0) -> None:
    """Kill what runs inside ``path`` (SIGKILL) and remove the tree."""
    def kill(d: Path) -> bool:
        _kill_in(d / procs_file, 9)
        return True
    _rmdir_bottom_up(path, timeout_s, kill)


def sweep(prefix: str = PREFIX, root: Path | None = None, keep: Collection[str] = ()) -> list[str]:
    """Remove every cgroup whose top-level name starts with ``prefix`` (the `dtlab fabric cleanup` sweep),
    except those named in ``keep`` (a live local plane's real nodes)."""
    removed: list[str] = []
    try:
        fs = detect(root)
    except SubstrateUnavailable:
        return removed
    for d in fs.base.iterdir():
        if d.is_dir() and d.name.startswith(prefix) and d.name not in keep:
            remove_tree(d, fs.procs_file)
            removed.append(str(d))
    return removed


# ------------------------------------------------------------ cpusets and CPU accounting (isolation, noise)
def parse_cpus(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (the kernel's cpu list format)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. '1' or '1-3,6')") from None
    return sorted(set(out))


def format_cpus(cpus) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def controller_dir(name: str, root: Path | None = None) -> Path | None:
    """Where controller ``name`` (cpuset, cpuacct) lives: the cgroup v1 mount, or the v2 root; None if absent."""
    root = Path(root or CGROUP_ROOT)
    v1 = root / name
    if (v1 / "cgroup.procs").exists() and any(v1.glob(f"{name}.*")):
        return v1
    ctl = root / "cgroup.controllers"
    if ctl.exists() and name in ctl.read_text().split() and os.access(root, os.W_OK):
        return root
    return None


class Group:
    """A plain cgroup directory of one controller (cpuset or cpuacct) named ``rel`` under ``base``."""

    def __init__(self, base: Path, rel: str):
        self.base = base
        self.path = base / rel
        self.path.mkdir(parents=False, exist_ok=True)

    @property
    def procs_path(self) -> str:
        return str(self.path / "cgroup.procs")

    def attach(self, pid: int) -> None:
        with open(self.procs_path, "w") as fh:
            fh.write(str(pid))

    def remove(self, timeout_s: float = 5.0) -> None:
        """Move what is left inside to the controller's root (never kill: the controller's own process
        may be in a cpuset) and remove the directory tree."""
        evacuate_tree(self.path, self.base, timeout_s)


def evacuate_tree(path: Path, base: Path, timeout_s: float = 5.0) -> None:
    """Move what runs inside ``path`` to ``base`` (never kill) and remove the tree."""
    def move(d: Path) -> bool:
        try:
            pids = (d / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return False
        for pid in pids:
            try:
                with open(base / "cgroup.procs", "w") as fh:
                    fh.write(pid)
            except OSError:
                pass
        return True
    _rmdir_bottom_up(path, timeout_s, move)


class Cpuset(Group):
    """A cpuset confining its processes to ``cpus`` (cgroup v1 ``cpuset.cpus``/``mems``, v2 the same files)."""

    def __init__(self, base: Path, rel: str, cpus):
        super().__init__(base, rel)
        parent = self.path.parent
        mems = (parent / "cpuset.mems").read_text().strip() or (parent / "cpuset.effective_mems").read_text().strip()
        (self.path / "cpuset.cpus").write_text(format_cpus(cpus))
        (self.path / "cpuset.mems").write_text(mems)     # v1: a cpuset without mems refuses tasks
        self.cpus = sorted(cpus)


class Cpuacct(Group):
    """CPU accounting of a set of processes (cgroup v1 ``cpuacct.usage``; v2 ``cpu.stat usage_usec``)."""

    def usage_s(self) -> float:
        f = self.path / "cpuacct.usage"
        try:
            if f.exists():
                return int(f.read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) / 1e6
        except (OSError, ValueError):
            pass
        return float("nan")


def own_cgroup(controller: str, pid: int | str = "self") -> str | None:
    """The cgroup path (relative to the controller's mount) ``pid`` is in, from /proc/<pid>/cgroup."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(",") or (ctrls == "" and controller_dir(controller) == CGROUP_ROOT):
            return path
    return None


def host_cpus(root: Path | None = None) -> list[int]:
    """CPUs this process may use (the root cpuset's effective CPUs where readable, else the affinity)."""
    base = controller_dir("cpuset", root)
    for f in ((base / "cpuset.effective_cpus") if base else None, (base / "cpuset.cpus") if base else None,
              (base / "cpuset.cpus.effective") if base else None):
        if f is not None and f.exists():
            try:
                cpus = parse_cpus(f.read_text())
                if cpus:
                    return cpus
            except (OSError, ValueError):
                pass
    return sorted(os.sched_getaffinity(0))


def split_cpus(cpus: list[int], node_cpus: str = "auto") -> tuple[list[int], list[int], str]:
    """(CPUs for the emulated nodes, CPUs for everything else, why) -- see substrates/fabric.py.

    ``auto``: one core -> no split (nodes share it; the twin is told, see ``host_shared``); 2-3
    cores -> the first core for the controller/relay/plane, the rest for the nodes; 4+ cores ->
    a quarter (at least one) for the controller side, the rest for the nodes. ``off``: no split.
    A CPU list (``"1"``, ``"2-7"``) names the nodes' CPUs; the others go to the rest.
    """
    cpus = sorted(cpus)
    if node_cpus == "off":
        return cpus, cpus, "isolation off (node_cpus: off): nodes share every core with the controller"
    if node_cpus in ("auto", None, ""):
        if len(cpus) < 2:
            return cpus, cpus, "one core: nodes share it with the controller, relay and plane (no cpuset split)"
        rest_n = 1 if len(cpus) < 4 else max(1, len(cpus) // 4)
        return cpus[rest_n:], cpus[:rest_n], f"auto: {len(cpus)} cores, {len(cpus) - rest_n} for nodes"
    nodes = parse_cpus(node_cpus)
    bad = [c for c in nodes if c not in cpus]
    if bad or not nodes:
        raise ValueError(f"node_cpus {node_cpus!r}: CPUs {bad or nodes} not available (this host: {format_cpus(cpus)})")
    rest = [c for c in cpus if c not in nodes] or cpus
    return nodes, rest, f"node_cpus {node_cpus}" + ("" if rest != cpus else " (no CPU left for the rest: shared)")


def sweep_controllers(prefix: str = PREFIX, root: Path | None = None, keep: Collection[str] = ()) -> list[str]:
    """Remove leftover cpuset/cpuacct groups named ``prefix*`` (the `dtlab fabric cleanup` sweep),
    except those named in ``keep``."""
    removed: list[str] = []
    for name in ("cpuset", "cpuacct"):
        base = controller_dir(name, root)
        if base is None or base == Path(root or CGROUP_ROOT):
            continue
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith(prefix) and d.name not in keep:
                try:
                    evacuate_tree(d, base)
                    removed.append(str(d))
                except OSError:
                    pass
    return removed
