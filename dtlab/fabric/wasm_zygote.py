"""A warm Wasm launcher: load Wasmtime and the compiled module once, fork one child per stage.

    python wasm_zygote.py MODULE.wasm [TAG]  (requests on stdin, replies on stdout, JSON lines;
                                              TAG only names the processes, e.g. for cleanup)

Why: starting a Python interpreter and Wasmtime per stage costs 50-200 ms on a busy host, far
more than a production Wasm runtime's start-up (a few ms), and that cost would be charged to
every Wasm stage. Forking a process that already holds the deserialised module brings it to
the cost of a fork plus instantiation, which is what a real runtime pays.

Request:  {"id": 1, "args": ["mix", "1200", "43"], "cgroup": "/sys/fs/cgroup/.../cgroup.procs", "out": "/tmp/x.out"}
Replies:  {"id": 1, "pid": 1234}   then   {"id": 1, "exit": 0}
The child joins ``cgroup`` after instantiation (start-up is not the stage's work, see wasm_run.py)
and writes the module's stdout to ``out``. Single-threaded: SIGCHLD wakes the select loop.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys

from wasm_run import _load, run_start  # same directory; this file is run as a script


def main(path: str) -> int:
    import wasmtime

    engine = wasmtime.Engine()
    module = _load(engine, path, wasmtime)
    rpipe, wpipe = os.pipe()
    os.set_blocking(wpipe, False)
    signal.set_wakeup_fd(wpipe)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ids: dict[int, int] = {}
    buf = b""
    stdin = sys.stdin.fileno()
    reply(ready=True)
    while True:
        try:
            readable, _, _ = select.select([stdin, rpipe], [], [])
        except InterruptedError:
            readable = [rpipe]
        if rpipe in readable:
            try:
                os.read(rpipe, 4096)
            except BlockingIOError:
                pass
        _reap(ids)
        if stdin in readable:
            chunk = os.read(stdin, 65536)
            if not chunk:
                for pid in ids:
                    _kill(pid)
                return 0
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    req = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        os._exit(_child(engine, module, path, req, wasmtime))
                    ids[pid] = req["id"]
                    reply(id=req["id"], pid=pid)


def _child(engine, module, path, req, wasmtime) -> int:
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [os.path.basename(path), *req["args"]]
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        for procs in filter(None, str(req.get("cgroup") or "").split(os.pathsep)):   # ':'-separated, as DTLAB_JOIN_CGROUP
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))
        return run_start(instance, store, wasmtime)
    except BaseException as exc:   # report, never fall back into the parent's loop
        try:
            os.write(2, f"wasm child: {exc!r}\n".encode())
        except OSError:
            pass
        return 70


def _reap(ids: dict[int, int]) -> None:
    while ids:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        rid = ids.pop(pid, None)
        if rid is not None:
            reply(id=rid, exit=os.waitstatus_to_exitcode(status))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reply(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
