"""A tiny validating reader for plain dicts: every access knows its field path.

Specs arrive as YAML/JSON dicts; errors must name the field path and the rule
(``spec.stages[1].compute.duration_ms: must be > 0``). Rather than a schema
library, each loader walks the dict with a :class:`Fields` view that records
which keys it consumed, so unknown keys are reported too.
"""
from __future__ import annotations

import builtins
import math
from pathlib import Path
from typing import Any, Iterable, Literal, overload

from .errors import SpecError
from .strict_json import loads as strict_json_loads, short

# Every number a spec or an event gives the twin is finite and within [-MAX_NUMBER, MAX_NUMBER];
# a positive one (``gt=0``) is at least MIN_POSITIVE. Sums and products of a few such values stay
# far from float overflow, so no prediction, snapshot or response can become inf/NaN.
MAX_NUMBER = 1e9
MIN_POSITIVE = 1e-6
MAX_INT = 10**9


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """Read-only view of one mapping in a spec, with its path and consumed-key tracking."""

    def __init__(self, data: Any, path: str = ""):
        if not isinstance(data, dict):
            raise SpecError(path or "<root>", f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None, required: bool = False) -> Any:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise SpecError(self.at(key), "is required")
            return default
        return self.data[key]

    # The overloads say what a loader can rely on: ``required=True`` or a non-None default never
    # gives None (the method names shadow the builtins inside the class, hence ``builtins.``).
    @overload
    def sub(self, key: builtins.str, required: Literal[True]) -> Fields: ...
    @overload
    def sub(self, key: builtins.str, required: builtins.bool = False) -> Fields | None: ...

    def sub(self, key: builtins.str, required: builtins.bool = False) -> Fields | None:
        value = self.raw(key, required=required)
        return None if value is None else Fields(value, self.at(key))

    @overload
    def str(self, key: builtins.str, default: builtins.str, required: builtins.bool = False,
            choices: Iterable[builtins.str] | None = None) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, default: None = None, *, required: Literal[True],
            choices: Iterable[builtins.str] | None = None) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, default: builtins.str | None = None, required: builtins.bool = False,
            choices: Iterable[builtins.str] | None = None) -> builtins.str | None: ...

    def str(self, key: builtins.str, default: builtins.str | None = None, required: builtins.bool = False,
            choices: Iterable[builtins.str] | None = None) -> builtins.str | None:
        value = self.raw(key, default, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise SpecError(self.at(key), f"must be a non-empty string, got {short(value)}")
        if choices is not None and value not in choices:
            raise SpecError(self.at(key), f"must be one of {sorted(choices)}, got {short(value)}")
        return value

    @overload
    def num(self, key: builtins.str, default: float, required: builtins.bool = False,
            gt: float | None = None, ge: float | None = None, le: float | None = None,
            lt: float | None = None) -> float: ...
    @overload
    def num(self, key: builtins.str, default: None = None, *, required: Literal[True],
            gt: float | None = None, ge: float | None = None, le: float | None = None,
            lt: float | None = None) -> float: ...
    @overload
    def num(self, key: builtins.str, default: float | None = None, required: builtins.bool = False,
            gt: float | None = None, ge: float | None = None, le: float | None = None,
            lt: float | None = None) -> float | None: ...

    def num(self, key: builtins.str, default: float | None = None, required: builtins.bool = False,
            gt: float | None = None, ge: float | None = None, le: float | None = None,
            lt: float | None = None) -> float | None:
        value = self.raw(key, default, required)
        if value is None:
            return None
        return check_number(value, self.at(key), gt=gt, ge=ge, le=le, lt=lt)

    @overload
    def int(self, key: builtins.str, default: builtins.int, required: builtins.bool = False,
            ge: builtins.int | None = None, le: builtins.int = MAX_INT, why: builtins.str = "") -> builtins.int: ...
    @overload
    def int(self, key: builtins.str, default: None = None, *, required: Literal[True],
            ge: builtins.int | None = None, le: builtins.int = MAX_INT, why: builtins.str = "") -> builtins.int: ...
    @overload
    def int(self, key: builtins.str, default: builtins.int | None = None, required: builtins.bool = False,
            ge: builtins.int | None = None, le: builtins.int = MAX_INT,
            why: builtins.str = "") -> builtins.int | None: ...

    def int(self, key: builtins.str, default: builtins.int | None = None, required: builtins.bool = False,
            ge: builtins.int | None = None, le: builtins.int = MAX_INT, why: builtins.str = "") -> builtins.int | None:
        value = self.raw(key, default, required)
        if value is None:
            return None
        return check_int(value, self.at(key), ge=ge, le=le, why=why)

    def bool(self, key: builtins.str, default: builtins.bool = False) -> builtins.bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {short(value)}")
        return value

    def str_list(self, key: builtins.str, choices: Iterable[builtins.str] | None = None,
                 default: tuple[builtins.str, ...] | None = None) -> tuple[builtins.str, ...] | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise SpecError(self.at(key), "must be a non-empty list of strings")
        allowed = set(choices) if choices is not None else None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(join(self.at(key), i), f"must be a string, got {short(item)}")
            if allowed is not None and item not in allowed:
                raise SpecError(join(self.at(key), i), f"must be one of {sorted(allowed)}, got {short(item)}")
        return tuple(value)

    def list(self, key: builtins.str, required: builtins.bool = False) -> builtins.list[Any]:
        value = self.raw(key, [], required)
        if not isinstance(value, list):
            raise SpecError(self.at(key), f"must be a list, got {type(value).__name__}")
        if required and not value:
            raise SpecError(self.at(key), "must not be empty")
        return value

    def str_map(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self.raw(key, {})
        if not isinstance(value, dict):
            raise SpecError(self.at(key), "must be a mapping of strings")
        return {str(k): str(v) for k, v in value.items()}

    def done(self, ignore: Iterable[builtins.str] = ()) -> None:
        """Reject keys nobody asked for: typos must not pass silently."""
        unknown = sorted((str(k) for k in set(self.data) - self._seen - set(ignore)))
        if unknown:
            raise SpecError(self.at(short(unknown[0], 40).strip("'")), "unknown key"
                            + (f" (known: {', '.join(sorted(self._seen))})" if self._seen else ""))


def check_number(value: Any, path: str, gt=None, ge=None, le=None, lt=None) -> float:
    """The one range check of a spec/event number: finite, within MAX_NUMBER, then the field's rule."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number, got {short(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise SpecError(path, f"must be at most {MAX_NUMBER:g} in magnitude") from None
    if not math.isfinite(value):
        raise SpecError(path, f"must be finite, got {value!r}")
    if abs(value) > MAX_NUMBER and le is None and lt is None:
        raise SpecError(path, f"must be at most {MAX_NUMBER:g} in magnitude")
    if gt == 0 and 0 < value < MIN_POSITIVE:
        raise SpecError(path, f"must be >= {MIN_POSITIVE:g} (smaller positive values are not computable)")
    if gt is not None and not value > gt:
        raise SpecError(path, f"must be > {gt:g}")
    if ge is not None and not value >= ge:
        raise SpecError(path, f"must be >= {ge:g}")
    if lt is not None and not value < lt:
        raise SpecError(path, f"must be < {lt:g}")
    if le is not None and not value <= le:
        raise SpecError(path, f"must be <= {le:g}")
    return value


def check_int(value: Any, path: str, ge: int | None = None, le: int = MAX_INT, why: str = "") -> int:
    """An integer field: an int (or an integral float), ``ge <= value <= le``; ``why`` explains the cap."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be an integer, got {short(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise SpecError(path, f"must be an integer, got {short(value)}")
        value = int(value)
    if ge is not None and value < ge:
        raise SpecError(path, f"must be >= {ge}")
    if le is not None and value > le:
        raise SpecError(path, f"must be <= {le:,}" + (f" ({why})" if why else ""))
    return value


def read_documents(source: str | Path | dict | list) -> list[dict]:
    """Load one or more spec documents from a path, a YAML/JSON string path, or already-parsed data."""
    if isinstance(source, dict):
        return [source]
    if isinstance(source, list):
        return list(source)
    from .safe_yaml import load_all, read_text
    path = Path(source)
    text = read_text(path)
    if path.suffix == ".json":
        data = strict_json_loads(text, where=str(path))
        docs = data if isinstance(data, list) else [data]
    else:
        docs = [d for d in load_all(text, where=str(path)) if d is not None]
    if not docs:
        raise SpecError(str(path), "contains no document")
    return docs


def job_to_spec(job: Any) -> dict[str, Any]:
    """The ``spec`` part of a dtlab/v1 Job document for a loaded Job (either file layout): the
    inverse of the Job reader, used wherever a Job is written back (workload files, DTJobs)."""
    stages = []
    for s in job.stages:
        st: dict[str, Any] = {"id": s.id, "compute": {"cpu": s.compute.cpu, "mem_gb": s.compute.mem_gb,
                                                      "duration_ms": s.compute.duration_ms}}
        if s.after:
            st["after"] = list(s.after)
        if s.output_mb:
            st["output_mb"] = s.output_mb
        cons = {k: list(v) for k, v in vars(s.constraints).items() if v is not None}
        if cons:
            st["constraints"] = cons
        stages.append(st)
    out: dict[str, Any] = {"stages": stages}
    if job.input_mb:
        out["input_mb"] = job.input_mb
    return out
