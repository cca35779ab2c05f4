"""Run a WASI command module with Wasmtime (the PyPI ``wasmtime`` package) and pass its exit code on.

    python -m dtlab.fabric.wasm_run MODULE.wasm [ARGS...]

Why a tiny runner instead of the wasmtime CLI: the Python package is already a dtlab dependency,
while the CLI would have to be built from crates.io (minutes on a small host) or fetched as a
prebuilt binary. Start-up cost is kept down by caching the Cranelift-compiled module next to the
``.wasm`` (``<module>.cwasm``, keyed by the wasmtime version), so only the first run compiles.
This file imports nothing from dtlab: it is started once per stage and must stay light.
"""
from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m dtlab.fabric.wasm_run MODULE.wasm [ARGS...]", file=sys.stderr)
        return 2
    import wasmtime

    path = argv[0]
    engine = wasmtime.Engine()
    module = _load(engine, path, wasmtime)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = [os.path.basename(path), *argv[1:]]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    # Join the stage's CPU cgroup only now: the runtime's start-up is the worker's cost, not the
    # stage's, and under a small quota it would otherwise dominate short stages.
    for procs in filter(None, os.environ.get("DTLAB_JOIN_CGROUP", "").split(os.pathsep)):
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    return run_start(instance, store, wasmtime)


def run_start(instance, store, wasmtime) -> int:
    """Call ``_start`` and report its CPU time as a JSON line after the module's own output
    (WASI has no process CPU clock, so the kernel cannot measure it itself)."""
    t0 = time.process_time()
    code = 0
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:   # proc_exit(n)
        code = exc.code
    cpu_ms = (time.process_time() - t0) * 1000.0
    sys.stdout.flush()
    os.write(1, ('{"runner_cpu_ms": %.3f}\n' % cpu_ms).encode())
    return code


def _load(engine, path: str, wasmtime):
    version = getattr(wasmtime, "__version__", None) or _pkg_version()
    cached = f"{path}.{version}.cwasm"
    if os.path.exists(cached) and os.path.getmtime(cached) >= os.path.getmtime(path):
        try:
            return wasmtime.Module.deserialize_file(engine, cached)
        except Exception:   # stale or foreign artefact: recompile below
            pass
    module = wasmtime.Module.from_file(engine, path)
    tmp = f"{cached}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(module.serialize())
    os.replace(tmp, cached)
    return module


def _pkg_version() -> str:
    from importlib.metadata import version
    try:
        return version("wasmtime")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
