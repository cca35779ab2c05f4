"""The predictor registry: a predictor registers itself by name, as policies do (:mod:`dtlab.policies`).

Why a registry and not a fixed tuple: the twin, the CLI, the API and the dashboard offer
"every predictor"; a new one (the design's learned/GNN hook) must show up there by
registering, without editing each of them. Names keep registration order (``fast``,
``legacy``, ``des`` for the built-ins), which is the order messages and menus list them in.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..errors import SpecError
from ..strict_json import short

# (snapshot, job, placement, shadow, samples, rng, timing) -> latencies (ms), shape (samples,)
Predictor = Callable[..., np.ndarray]

_REGISTRY: dict[str, Predictor] = {}


def register(name: str) -> Callable[[Predictor], Predictor]:
    """Decorator registering ``f(snapshot, job, placement, shadow, samples, rng, timing) -> ndarray`` as ``name``.

    The plan is checked before ``f`` is called (every stage placed on a known node,
    ``samples >= 1``, ``rng`` a Generator); ``f`` returns ``samples`` latencies in ms, ``inf``
    where the job cannot complete. Registering an existing name replaces it.
    """
    if not isinstance(name, str) or not name:
        raise SpecError("predictor", "a predictor name must be a non-empty string")

    def deco(fn: Predictor) -> Predictor:
        if not callable(fn):
            raise SpecError("predictor", f"cannot register {short(fn)}: need a function")
        _REGISTRY[name] = fn
        return fn
    return deco


def names() -> list[str]:
    """Registered predictor names, in registration order."""
    return list(_REGISTRY)


def check(name: object, field: str = "predictor") -> str:
    """``name`` if a predictor is registered under it, else SpecError naming ``field`` and the known names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SpecError(field, f"must be one of {names()}, got {name!r}")
    return name


def get(name: object) -> Predictor:
    """The predictor function registered as ``name`` (SpecError listing the known names otherwise)."""
    return _REGISTRY[check(name)]


def registered() -> Mapping[str, Predictor]:
    """A read-only view of the registry (for introspection and tests)."""
    return dict(_REGISTRY)
