"""Small helpers for tests that start real servers on loopback."""
import socket
import time


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks; racy in theory, fine for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, *, procs=(), interval_s: float = 0.25, reraise=()):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout_s``.

    Exceptions from the predicate mean "not ready yet" unless they are instances of ``reraise``;
    ``procs`` are (name, Popen) pairs whose early exit fails the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for {what}")
        try:
            last = predicate()
            if last:
                return last
        except reraise:
            raise
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: {last!r}")


def stop_group(proc, grace_s: float = 15.0) -> None:
    """SIGTERM the process group a test started (``start_new_session=True``), SIGKILL it after ``grace_s``."""
    import os
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
