"""The one strict JSON reader and writer of dtlab (HTTP routes, the extender, JSON spec files).

Python's ``json`` accepts ``NaN``/``Infinity`` literals, turns ``1e400`` into ``inf``, recurses
once per nesting level (a 10,000-deep array is a ``RecursionError``) and refuses integers over
4,300 digits with a plain ``ValueError``. Any of those reaching the twin is a 500 or a poisoned
state, so every JSON input goes through :func:`loads`, which rejects them up front with a
:class:`StrictJSONError` naming the problem (``field`` is ``"body"``). :func:`dumps` is the
matching writer: it refuses non-finite floats, so no response ever carries a bare ``Infinity``.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import SpecError

MAX_DEPTH = 64          # nesting levels of arrays/objects; dtlab documents need < 10
MAX_INT_DIGITS = 30     # a seed is < 2**63 (19 digits); nothing dtlab reads needs more

# strings (with escapes) are skipped; brackets outside strings move the depth
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class StrictJSONError(SpecError):
    """Input that is not strict, bounded JSON. ``field`` names where (``body`` or a file)."""


def check_depth(raw: bytes, max_depth: int = MAX_DEPTH, where: str = "body") -> None:
    """Reject nesting deeper than ``max_depth`` without recursing (linear scan of the bytes)."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return   # fewer openers than the limit (even inside strings): cannot be deeper; skips the scan
    depth = 0
    for m in _TOKENS.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise StrictJSONError(where, f"JSON nested deeper than {max_depth} levels")
        elif tok in (b"]", b"}"):
            depth -= 1


def _constant(name: str):
    raise ValueError(f"{name} is not valid JSON (only finite numbers are accepted)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]!r} is out of range (not a finite double)")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text.lstrip('-'))} digits is too large (at most {MAX_INT_DIGITS})")
    return int(text)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH, where: str = "body") -> Any:
    """Parse strict JSON: finite numbers only, integers of at most MAX_INT_DIGITS, bounded depth."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    check_depth(raw, max_depth, where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(where, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(where, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise StrictJSONError(where, f"malformed JSON: {str(exc)[:200]}") from None


def dumps(obj: Any, **kwargs) -> str:
    """Serialize to JSON, refusing NaN/Infinity (``ValueError``) instead of writing invalid JSON."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted input."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
