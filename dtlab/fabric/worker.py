"""Run a stage's work as a real process: native, under ``qemu-<arch>-static``, or as Wasm.

Work is expressed in reference milliseconds (``duration_ms`` of the spec: one core of speed 1.0,
native amd64). ``iterations_per_ms`` measures, once per host and kernel build, how many kernel
iterations the native binary does per CPU millisecond and caches it in the cache dir; a stage of
``D`` reference ms then runs ``D * ipms`` iterations in whatever format the plan chose, so the
format's real overhead shows up in the measured time instead of being modelled.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..atomic import atomic_write_text
from ..datadir import cache_dir
from ..errors import DtlabError, SubstrateUnavailable

KERNELS = ("matmul", "sort", "hash", "mix")
FORMATS = ("native", "qemu-amd64", "qemu-arm64", "qemu-riscv64", "wasm")
QEMU_BIN = {"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static", "riscv64": "qemu-riscv64-static"}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64"}.get(platform.machine(), platform.machine())
WORKER_DIR = Path(__file__).resolve().parents[2] / "images" / "worker"
WASM_RUNNER = Path(__file__).resolve().parent / "wasm_run.py"


@lru_cache(maxsize=1)
def build_dir() -> Path:
    """Build the kernels (no-op when the source hash is already built) and return the output dir."""
    script = WORKER_DIR / "build.sh"
    if not script.exists():
        raise SubstrateUnavailable(f"worker sources not found at {WORKER_DIR} (needs a source checkout)")
    env = dict(os.environ, DTLAB_CACHE=str(cache_dir()))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SubstrateUnavailable(f"building worker kernels failed: {proc.stderr.strip()[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def binary(fmt: str) -> Path:
    d = build_dir()
    if fmt == "wasm":
        return d / "wasm" / "dtlab-kernel.wasm"
    arch = HOST_ARCH if fmt == "native" else fmt.split("-", 1)[1]
    return d / arch / "dtlab-kernel"


def missing(fmt: str) -> str | None:
    """Why ``fmt`` cannot run here (None when it can)."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r} (known: {', '.join(FORMATS)})"
    try:
        b = binary(fmt)
    except SubstrateUnavailable as exc:
        return str(exc)
    if not b.exists():
        return f"{b} not built (toolchain missing; run scripts/fabric-deps.sh)"
    if fmt.startswith("qemu-") and shutil.which(QEMU_BIN[fmt.split("-", 1)[1]]) is None:
        return f"{QEMU_BIN[fmt.split('-', 1)[1]]} not on PATH (apt-get install qemu-user-static)"
    if fmt == "wasm":
        try:
            import wasmtime  # noqa: F401
        except ImportError:
            return "Python package wasmtime not installed"
    return None


def command(fmt: str, kernel: str, iters: int, seed: int = 42) -> list[str]:
    """argv that runs ``iters`` iterations of ``kernel`` in format ``fmt``."""
    if kernel not in KERNELS:
        raise DtlabError(f"kernel: unknown {kernel!r} (known: {', '.join(KERNELS)})")
    why = missing(fmt)
    if why:
        raise SubstrateUnavailable(f"format {fmt}: {why}")
    args = [kernel, str(int(iters)), str(seed)]
    b = str(binary(fmt))
    if fmt == "native":
        return [b, *args]
    if fmt == "wasm":
        return [sys.executable, str(WASM_RUNNER), b, *args]
    return [shutil.which(QEMU_BIN[fmt.split("-", 1)[1]]), b, *args]


@dataclass(frozen=True)
class KernelRun:
    fmt: str
    kernel: str
    iters: int
    kernel_ms: float     # measured inside the process around the kernel (excludes start-up)
    cpu_ms: float        # process CPU clock inside the kernel (-1 where unsupported, e.g. WASI)
    process_ms: float    # wall time of the whole process as seen by the caller
    rusage_cpu_ms: float  # user+sys CPU of the whole process (includes emulator/runtime start-up)


def run_kernel(fmt: str, kernel: str, iters: int, preexec=None, seed: int = 42, env=None) -> KernelRun:
    argv = command(fmt, kernel, iters, seed)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec, env=env)
    out, err, ru = communicate_rusage(proc)
    wall = (time.monotonic() - t0) * 1000.0
    if proc.returncode != 0:
        raise DtlabError(f"{fmt} {kernel} exited {proc.returncode}: {err.strip()[-300:]}")
    return parse_run(fmt, out, wall, ru)


def parse_run(fmt: str, stdout: str, process_ms: float, rusage_cpu_ms: float = -1.0) -> KernelRun:
    d: dict = {}
    for line in stdout.splitlines():      # the kernel's line, then (Wasm) the runner's CPU time
        if line.startswith("{"):
            d.update(json.loads(line))
    cpu = float(d["cpu_ms"])
    if cpu < 0 and "runner_cpu_ms" in d:
        cpu = float(d["runner_cpu_ms"])
    return KernelRun(fmt, d["kernel"], int(d["iters"]), float(d["wall_ms"]), cpu, process_ms, rusage_cpu_ms)


def communicate_rusage(proc: subprocess.Popen) -> tuple[str, str, float]:
    """Like ``communicate()`` but reaps the child with wait4 to get its own CPU time (user+sys ms)."""
    import threading
    err_chunks: list[str] = []
    t = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    t.start()
    out = proc.stdout.read()
    t.join()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, "".join(err_chunks), (ru.ru_utime + ru.ru_stime) * 1000.0


def warm(fmt: str) -> None:
    """Run ``fmt`` once so one-off costs (Wasm compilation into the module cache) are paid up front."""
    if missing(fmt) is None:
        run_kernel(fmt, "hash", 1)


# ------------------------------------------------------------ iterations per reference ms
def iterations_per_ms(kernel: str = "mix", refresh: bool = False) -> float:
    """Native kernel iterations per CPU millisecond on this host (measured once, cached)."""
    path = _ipms_path()
    table: dict[str, float] = {}
    if path.exists() and not refresh:
        try:
            table = json.loads(path.read_text())
        except ValueError:
            table = {}
    if kernel in table:
        return float(table[kernel])
    table[kernel] = measure_ipms(kernel)
    atomic_write_text(path, json.dumps(table, indent=1))
    return table[kernel]


#: re-measure the cached iterations per ms when the kernel's CPU time per iteration is off by more than this
IPMS_TOLERANCE = 0.05
#: a process re-checks at most this often: once, by default. An experiment runs in one process (V1 on
#: the fabric opens ~100 substrates in one kernel), so its policies, seeds and noise-floor re-run share one
#: unit of work. (Re-checking every 120 s, the table changed during one V2 run, 11.16 -> 10.56 it/ms, and
#: its noise floor -- the same plans run again -- was 9.5 % median against 2.3 % the day before; which of
#: its substrates re-measured was not recorded.)
IPMS_RECHECK_S = float("inf")
_last_recheck: dict[str, tuple[float, dict]] = {}


def recheck_ipms(kernel: str = "mix", probes: int = 3, target_ms: float = 60.0,
                 tolerance: float = IPMS_TOLERANCE, min_interval_s: float = IPMS_RECHECK_S) -> dict:
    """Check the cached iterations per ms against the machine as it is now; re-measure the whole table
    when the native kernel's CPU time per iteration is off by more than ``tolerance``.

    Why: the table is cached per host and build, but this VM's speed moves by 10 % and more between
    hours (measured: a table written under load made a quiet host's stages run 8-13 % short of their
    reference ms, and V2's median APE went from 4.6 % to 10.3 % with every prediction too long).
    A stage's work is ``D * ipms`` iterations, so a stale table shifts every stage the twin predicts.
    Returns ``{cpu_ratio, probes, refreshed, [old, new, cpu_ratio_after]}`` for the run's metadata
    (``cpu_ratio`` 1.0 = as cached; the median of ``probes`` short runs, since one run varies ~5 %)."""
    now = time.monotonic()
    last = _last_recheck.get(kernel)
    if last is not None and now - last[0] < min_interval_s:
        return {**last[1], "reused_s_ago": round(now - last[0], 1)}

    def ratio() -> list[float]:
        ipms = iterations_per_ms(kernel)
        iters = max(1, int(target_ms * ipms))
        out = []
        for _ in range(probes):
            r = run_kernel("native", kernel, iters)
            out.append(_cost(r) / (iters / ipms))
        return out

    before = ratio()
    res: dict = {"cpu_ratio": round(statistics.median(before), 4), "probes": [round(x, 4) for x in before],
                 "tolerance": tolerance, "refreshed": False}
    if abs(res["cpu_ratio"] - 1.0) > tolerance:
        path = _ipms_path()
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        new = {k: measure_ipms(k) for k in sorted(set(old) | {kernel})}
        atomic_write_text(path, json.dumps(new, indent=1))
        res.update(refreshed=True, old={k: round(float(v), 4) for k, v in old.items()},
                   new={k: round(v, 4) for k, v in new.items()}, cpu_ratio_after=round(statistics.median(ratio()), 4))
    _last_recheck[kernel] = (now, res)
    return res


def _ipms_path() -> Path:
    return cache_dir() / f"ipms.{build_dir().name}.{platform.node() or 'host'}.json"


def measure_ipms(kernel: str, target_ms: float = 150.0, reps: int = 5) -> float:
    """Median over ``reps`` native runs of iterations per CPU ms (CPU time resists host contention)."""
    probe = run_kernel("native", kernel, 50)
    per_iter = max(_cost(probe) / 50, 1e-4)
    iters = max(int(target_ms / per_iter), 10)
    rates = []
    for _ in range(reps):
        r = run_kernel("native", kernel, iters)
        rates.append(iters / max(_cost(r), 1e-3))
    return float(statistics.median(rates))


def _cost(r: KernelRun) -> float:
    """CPU ms of the kernel when the platform reports it, else its wall ms."""
    return r.cpu_ms if r.cpu_ms > 0 else r.kernel_ms


def iterations_for(duration_ms: float, kernel: str = "mix", scale: float = 1.0) -> int:
    """Iterations that take ``duration_ms * scale`` CPU ms natively (at least one)."""
    return max(1, int(round(duration_ms * scale * iterations_per_ms(kernel))))


# ------------------------------------------------------------ warm Wasm launcher
class WasmZygote:
    """Client of wasm_zygote.py: ``spawn(args, cgroup_procs) -> ZygoteProc`` (see that module)."""

    def __init__(self, launch_prefix: list[str] | None = None, tag: str = ""):
        import tempfile
        import threading

        why = missing("wasm")
        if why:
            raise SubstrateUnavailable(f"format wasm: {why}")
        self._tmp = tempfile.mkdtemp(prefix="dtlab-wasm-")
        script = Path(__file__).resolve().parent / "wasm_zygote.py"
        self.proc = subprocess.Popen([*(launch_prefix or []), sys.executable, str(script), str(binary("wasm")),
                                      *([tag] if tag else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self.proc.stdout.readline()
        if '"ready"' not in first:
            raise SubstrateUnavailable(f"wasm launcher did not start: {first.strip() or self.proc.poll()}")
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, "ZygoteProc"] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def spawn(self, args: list[str], cgroup_procs: str | None) -> "ZygoteProc":
        with self._lock:
            self._next += 1
            zp = ZygoteProc(self._next, os.path.join(self._tmp, f"{self._next}.out"))
            self._waiting[zp.id] = zp
            self.proc.stdin.write(json.dumps({"id": zp.id, "args": args, "cgroup": cgroup_procs, "out": zp.out}) + "\n")
            self.proc.stdin.flush()
        return zp

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            zp = self._waiting.get(msg.get("id"))
            if zp is None:
                continue
            if "pid" in msg:
                zp.pid = msg["pid"]
                zp.started.set()
            if "exit" in msg:
                zp.returncode = msg["exit"]
                self._waiting.pop(zp.id, None)
                zp.finished.set()
        for zp in list(self._waiting.values()):   # launcher died: fail what is left
            zp.returncode = -9
            zp.started.set()
            zp.finished.set()

    def close(self) -> None:
        for zp in list(self._waiting.values()):
            zp.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)


class ZygoteProc:
    """Popen-like handle of a stage forked by the Wasm launcher."""

    def __init__(self, id_: int, out: str):
        import threading
        self.id = id_
        self.out = out
        self.pid: int | None = None
        self.returncode: int | None = None
        self.started = threading.Event()
        self.finished = threading.Event()

    def kill(self) -> None:
        self.started.wait(5)
        if self.pid and self.returncode is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass

    def communicate(self) -> tuple[str, str]:
        self.finished.wait()
        try:
            text = Path(self.out).read_text()
            os.unlink(self.out)
        except FileNotFoundError:
            text = ""
        return text, text
