"""Skip-or-fail for tests that need a heavy real component (control plane, fabric, Prometheus, Chromium).

On a user's machine that lacks the component the test is skipped with the reason;
CI sets DTLAB_REQUIRE_HEAVY=1 so a missing component fails the run instead of hiding.
"""
import os

import pytest


def required() -> bool:
    return os.environ.get("DTLAB_REQUIRE_HEAVY", "") not in ("", "0", "false", "no")


def require(condition: bool, why: str) -> None:
    """Skip (or, under DTLAB_REQUIRE_HEAVY=1, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if required():
        pytest.fail(f"required heavy component missing: {why}", pytrace=False)
    pytest.skip(why)
