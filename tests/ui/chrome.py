"""Headless Debian Chromium driven by Selenium for the browser tests, and the teardown that proves
it (and anything else a test started) left no process behind."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _stop(procs, grace_s: float = 10.0) -> list[str]:
    """Terminate, then kill, the given psutil processes; returns the ones that needed SIGKILL."""
    import psutil

    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    _, survivors = psutil.wait_procs(alive, timeout=grace_s)
    killed = []
    for p in survivors:
        try:
            killed.append(f"{p.pid} {p.name()}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=5)
    return killed


def _assert_gone(procs, who: str) -> None:
    import psutil

    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    assert not left, f"{who} left processes behind: {left}"


@contextmanager
def headless_chrome(tmp_path: Path, window: str, extra_flags: Iterable[str] = ()) -> Iterator:
    """A Chrome WebDriver on a private profile under ``tmp_path``; chromedriver and every Chromium process
    it started are stopped by pid afterwards and checked gone."""
    import psutil
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window}", f"--user-data-dir={tmp_path / 'chromium'}", *extra_flags):
        opts.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER,
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(60)
    procs = []
    try:
        root = psutil.Process(service.process.pid)
        procs = [root] + root.children(recursive=True)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            _stop(procs)
            _assert_gone(procs, "chromedriver/Chromium")
