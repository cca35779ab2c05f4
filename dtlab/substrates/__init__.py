"""Substrates by name: ``make_substrate("sim", cluster, seed=0, **opts)``.

Each substrate module registers a factory and an availability check, so ``fabric``
and ``kube`` plug in without the experiments knowing them. ``available(name)`` returns
``(ok, why_not)``; ``make_substrate`` raises :class:`dtlab.SubstrateUnavailable` naming
what is missing, and ``pick(preferred, fallback)`` is the "fabric when available,
else sim" rule experiments use.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

from ..errors import SpecError, SubstrateUnavailable
from ..model import Cluster
from .base import JOB_COLUMNS, STAGE_COLUMNS, Substrate, SubstrateBase

Factory = Callable[..., Substrate]
Check = Callable[[], "tuple[bool, str]"]

_FACTORIES: dict[str, Factory] = {}
_CHECKS: dict[str, Check] = {}
# modules imported lazily on first use of their name (heavy deps stay out of `import dtlab`)
_MODULES = {"sim": "dtlab.substrates.sim", "fabric": "dtlab.substrates.fabric", "kube": "dtlab.substrates.kube"}


def register(name: str, factory: Factory, check: Check | None = None) -> None:
    """Register a substrate factory ``factory(cluster, **opts)`` and its availability check."""
    _FACTORIES[name] = factory
    _CHECKS[name] = check or (lambda: (True, ""))


def _load(name: str) -> None:
    if name not in _FACTORIES and name in _MODULES:
        try:
            import_module(_MODULES[name])
        except ImportError as exc:
            why = f"cannot import {_MODULES[name]}: {exc}"
            _CHECKS[name] = lambda: (False, why)


def names() -> list[str]:
    return sorted(set(_MODULES) | set(_FACTORIES))


def available(name: str) -> tuple[bool, str]:
    if name not in names():
        return False, f"unknown substrate {name!r} (known: {names()})"
    _load(name)
    check = _CHECKS.get(name)
    if check is None:
        return False, f"substrate {name!r} is not implemented yet"
    return check()


def make_substrate(name: str, cluster: Cluster, **opts: Any) -> Substrate:
    if name not in names():
        raise SpecError("substrate", f"unknown substrate {name!r} (known: {names()})")
    ok, why = available(name)
    if not ok:
        raise SubstrateUnavailable(f"substrate {name!r} is unavailable: {why}")
    return _FACTORIES[name](cluster, **opts)


def pick(preferred: str, fallback: str = "sim") -> tuple[str, str]:
    """(substrate to use, note): ``preferred`` when available, else ``fallback`` with the reason.

    The one home of the ``substrate: auto`` rule (experiments call it through
    :func:`dtlab.experiments.substrate.choose_substrate`)."""
    ok, why = available(preferred)
    if ok:
        return preferred, ""
    return fallback, f"{preferred} unavailable ({why}); ran on {fallback}"


__all__ = ["JOB_COLUMNS", "STAGE_COLUMNS", "Substrate", "SubstrateBase", "available", "make_substrate",
           "names", "pick", "register"]
