"""Run every benchmarks/bench_*.py in turn and print what each reports (``make bench``).

Each script runs in its own process (a fresh interpreter, so one benchmark's caches and
warm-up do not flatter the next) with this interpreter; its output is printed as it
comes. Exit status: the number of scripts that failed (0 = all ran).

Usage: python benchmarks/run_all.py [NAME ...]   (NAME filters, e.g. ``plan`` -> bench_plan.py)
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"== {script.name}: {status} in {time.perf_counter() - t0:.1f} s\n", flush=True)
        if proc.returncode:
            failed.append(script.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
