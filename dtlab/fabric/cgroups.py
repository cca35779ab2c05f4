"""CPU cgroups for fabric nodes: one cgroup per node (and one per running stage inside it).

A node's CPU share is ``cores * speed * scale`` host cores, where ``scale`` shrinks the whole
fabric to fit the host budget. Each stage process additionally gets ``speed * scale`` cores
(stages are single-threaded kernels), so an isolated stage runs at the node's per-core speed and
co-located stages share the node's quota (processor sharing, as the twin assumes). The work of a
stage is multiplied by the same ``scale`` (see worker.py), so wall times come out in reference
milliseconds whatever the scale.

cgroup v1 (``/sys/fs/cgroup/cpu/...``, cpu.cfs_quota_us/cfs_period_us) and v2 (``cpu.max``) are
both supported; the period is short (10 ms) so a quota of a fraction of a core throttles finely
rather than letting a 100 ms stage finish in one burst.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SubstrateUnavailable

CGROUP_ROOT = Path(os.environ.get("DTLAB_CGROUP_ROOT", "/sys/fs/cgroup"))
PREFIX = "dtlab-"
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000


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


def cores_to_quota(cores: float, period_us: int = PERIOD_US) -> tuple[int, int]:
    """(quota_us, period_us) for a share of ``cores``; the period grows if the quota would fall under 1 ms."""
    if cores <= 0:
        raise ValueError("cores must be positive")
    quota = int(round(cores * period_us))
    if quota < MIN_QUOTA_US:
        period_us = int(round(period_us * MIN_QUOTA_US / quota))
        quota = int(round(cores * period_us))
    return max(quota, MIN_QUOTA_US), period_us


class Cgroup:
    """One CPU cgroup directory (created on construction)."""

    def __init__(self, fs: CgroupFS, rel: str, cores: float | None):
        self.fs = fs
        self.path = fs.base / rel
        self.path.mkdir(parents=False, exist_ok=True)
        if fs.version == 2:
            _enable_cpu_controller(self.path.parent)
        self.cores = None
        if cores is not None:
            self.set_cores(cores)

    def set_cores(self, cores: float) -> None:
        quota, period = cores_to_quota(cores)
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

    def child(self, name: str, cores: float | None) -> "Cgroup":
        return Cgroup(self.fs, str(self.path.relative_to(self.fs.base) / name), cores)

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


def remove_tree(path: Path, procs_file: str = "cgroup.procs", timeout_s: float = 5.0) -> None:
    if not path.exists():
        return
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [path]
    deadline = time.monotonic() + timeout_s
    for d in dirs:
        while True:
            _kill_in(d / procs_file, 9)
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def sweep(prefix: str = PREFIX, root: Path | None = None) -> list[str]:
    """Remove every cgroup whose top-level name starts with ``prefix`` (the `dtlab fabric cleanup` sweep)."""
    removed: list[str] = []
    try:
        fs = detect(root)
    except SubstrateUnavailable:
        return removed
    for d in fs.base.iterdir():
        if d.is_dir() and d.name.startswith(prefix):
            remove_tree(d, fs.procs_file)
            removed.append(str(d))
    return removed
