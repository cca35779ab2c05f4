"""One wall-clock measurement at a time on this host: an exclusive, reentrant, inheritable host lock.

Why: two runs that measure real time on the same small host (fabric, kube with real nodes) measure
each other: V2 on the fabric beside V1 gave fast-path MAPE 22 %, alone 15 %. Twin/sim-only work
does not take the lock and may run beside a locked run.

How:

* an ``fcntl.flock`` on one file per host, ``/run/dtlab/host.lock`` when ``/run`` is writable (root,
  the fabric's case), else ``<cache dir>/host.lock``; ``$DTLAB_HOSTLOCK`` names another file. The
  kernel drops a flock when its holder dies, so a crashed run never leaves the host locked. The
  file holds the holder's pid and what it runs (``holder()``), so a waiting run can say for whom.
* **reentrant** in one process (a fabric opened while ``dtlab run`` already holds the lock, or
  nested fabrics in one test) and **inherited** by children: the holder exports
  ``DTLAB_HOSTLOCK_HELD=<pid>:<path>``; a child whose ancestor holds the lock on the same file runs
  under it (the papermill kernel of ``dtlab run``, a sweep's Dask workers).
* waiting is bounded: ``timeout_s`` (default ``$DTLAB_LOCK_TIMEOUT`` or 3600 s); a run that did not
  get the lock in time raises :class:`HostBusy` naming the holder. A run that waited prints so
  (``on_wait``) and records ``waited_s`` (``Hold.info()``, which ``run.json`` stores as ``host_lock``).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import DtlabError

ENV_PATH = "DTLAB_HOSTLOCK"
ENV_HELD = "DTLAB_HOSTLOCK_HELD"
ENV_TIMEOUT = "DTLAB_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0
POLL_S = 0.2


class HostBusy(DtlabError):
    """The host lock was not free within the timeout (the message names the holder)."""


def wall_clock(params: Mapping[str, Any]) -> str | None:
    """Why a run with these experiment params measures wall-clock time (so it needs the lock), or None.

    ``fabric`` always; ``auto`` when the fabric is available here (it will be chosen); ``kube`` when
    ``substrate_opts.exclusive`` says its nodes really execute work on this host, or ``real_nodes`` asks for
    real kubelets.
    """
    sub = params.get("substrate", "sim")
    opts = params.get("substrate_opts") or {}
    if sub == "fabric":
        return "substrate fabric"
    if sub == "kube" and isinstance(opts, Mapping) and opts.get("exclusive"):
        return "substrate kube with exclusive: true (real nodes on this host)"
    if sub == "kube" and isinstance(opts, Mapping) and opts.get("real_nodes"):
        return f"substrate kube with real_nodes: {opts['real_nodes']} (real kubelets run the work on this host)"
    if sub == "auto":
        from . import substrates     # the one home of the `auto` rule
        if substrates.pick("fabric", fallback="sim")[0] == "fabric":
            return "substrate auto -> fabric (available on this host)"
    return None


def lock_path() -> Path:
    env = os.environ.get(ENV_PATH)
    if env:
        return Path(env)
    run = Path("/run")
    if os.access(run, os.W_OK):
        return run / "dtlab" / "host.lock"
    from .datadir import cache_dir
    return cache_dir() / "host.lock"


def default_timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DtlabError(f"${ENV_TIMEOUT}: not a number of seconds ({raw!r})") from None
    if value < 0:
        raise DtlabError(f"${ENV_TIMEOUT}: must be >= 0 seconds (got {raw})")
    return value


@dataclass
class Hold:
    """How this process holds the lock: ``mode`` own (flock here), inherited (an ancestor holds it)."""
    path: Path
    mode: str
    what: str
    waited_s: float = 0.0
    holder_while_waiting: str | None = None
    acquired_at: float = field(default_factory=time.time)

    def info(self) -> dict:
        """What run.json records (``host_lock``): the run was exclusive, how long it waited and for whom."""
        return {"exclusive": True, "path": str(self.path), "mode": self.mode, "waited_s": round(self.waited_s, 3),
                "waited_for": self.holder_while_waiting}


_state = threading.local()
_mutex = threading.RLock()
_owned: dict[str, list] = {}          # path -> [fd, depth, Hold] for locks this process flocked


def holder(path: Path | None = None) -> str | None:
    """Who holds (or last held) the lock, as written by the holder: "pid 123: dtlab run V2"."""
    try:
        doc = json.loads(Path(path or lock_path()).read_text() or "{}")
    except (OSError, ValueError):
        return None
    if not doc:
        return None
    return f"pid {doc.get('pid')}: {doc.get('what')}"


def _inherited(path: Path) -> bool:
    raw = os.environ.get(ENV_HELD, "")
    pid_s, _, held_path = raw.partition(":")
    if not pid_s.isdigit() or Path(held_path) != path:
        return False
    pid = int(pid_s)
    # the holder must be this process or an ancestor still alive (else the variable is stale)
    cur = os.getpid()
    for _ in range(64):
        if cur == pid:
            return True
        try:
            stat = Path(f"/proc/{cur}/stat").read_text()
        except OSError:
            return False
        cur = int(stat.rsplit(")", 1)[1].split()[1])
        if cur <= 1:
            return pid == cur
    return False


def held(path: Path | None = None) -> bool:
    """True when this process already runs under the lock (owns it or inherited it)."""
    path = Path(path or lock_path())
    with _mutex:
        if str(path) in _owned:
            return True
    return _inherited(path)


def acquire(what: str, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None,
            path: Path | None = None) -> Hold:
    """Take the host lock (reentrant; see the module docstring). Raise :class:`HostBusy` after ``timeout_s``."""
    path = Path(path or lock_path())
    timeout_s = default_timeout() if timeout_s is None else float(timeout_s)
    key = str(path)
    with _mutex:
        if key in _owned:
            _owned[key][1] += 1
            return Hold(path, "reentrant", what)
    if _inherited(path):
        return Hold(path, "inherited", what)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    t0 = time.monotonic()
    told = False
    busy_with = None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            busy_with = holder(path) or busy_with
            waited = time.monotonic() - t0
            if not told and on_wait is not None:
                on_wait(f"{what}: waiting for the host lock {path} (held by {busy_with or 'another run'}; "
                        f"timeout {timeout_s:.0f} s)")
                told = True
            if waited >= timeout_s:
                raise HostBusy(f"{what}: the host lock {path} was not free within {timeout_s:.0f} s "
                               f"(held by {busy_with or 'another run'}); wall-clock runs are exclusive so that "
                               f"they do not measure each other (raise ${ENV_TIMEOUT} or wait for it to finish)")
            time.sleep(min(POLL_S, max(0.01, timeout_s - waited)))
    except BaseException:
        os.close(fd)
        raise
    waited = time.monotonic() - t0
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what,
                              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
    hold = Hold(path, "own", what, waited_s=waited if told else 0.0, holder_while_waiting=busy_with if told else None)
    with _mutex:
        _owned[key] = [fd, 1, hold]
    os.environ[ENV_HELD] = f"{os.getpid()}:{path}"
    if told and on_wait is not None:
        on_wait(f"{what}: got the host lock after waiting {waited:.1f} s")
    return hold


def release(hold: Hold) -> None:
    """Undo one :func:`acquire` (the flock goes when the outermost own hold is released)."""
    if hold.mode == "inherited":
        return
    key = str(hold.path)
    with _mutex:
        entry = _owned.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _owned[key]
        fd = entry[0]
    if os.environ.get(ENV_HELD) == f"{os.getpid()}:{hold.path}":
        del os.environ[ENV_HELD]
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)       # closing the descriptor drops the flock


@contextlib.contextmanager
def exclusive(what: str, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None,
              path: Path | None = None) -> Iterator[Hold]:
    """``with exclusive("dtlab run V2", on_wait=print) as hold:`` -- the run, alone on the host."""
    hold = acquire(what, timeout_s, on_wait, path)
    try:
        yield hold
    finally:
        release(hold)
