"""Argument types shared by several ``dtlab`` commands (argparse turns their errors into exit 2)."""
from __future__ import annotations

import argparse


def port(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port). Out of range, the socket layer fails late: the server
    printed "listening on :99999" and served elsewhere, ``--port -1`` was a gaierror traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text[:40]!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in [0, 65535], got {value}")
    return value
