"""Placement policies, looked up by name.

A policy turns a :class:`PlanContext` (snapshot, job, timing model, seeded rng, sample
budget, predictor name, deadline) into ``(placement, shadow)``: ``{stage id: node}`` and
``{stage id: backup node}`` (``{}`` when the policy keeps no shadow). Policies only ever
choose nodes that are schedulable (up, not cordoned), reachable from the stage's inputs
and feasible for the stage; when none exists they raise :class:`dtlab.InfeasibleError`
naming the stage.

Register your own with the decorator; a class is instantiated once per :class:`dtlab.Twin`
(so it may keep state, like ``round-robin``'s cursor), a plain function is called as is::

    @dtlab.policies.register("mine")
    def mine(ctx):
        return {s.id: ctx.snapshot.schedulable_nodes()[0].name for s in ctx.job.stages}, {}
"""
from __future__ import annotations

from typing import Callable

from ..errors import SpecError
from ..strict_json import short
from .base import PlanContext, Policy

__all__ = ["PlanContext", "Policy", "get", "names", "register"]

_REGISTRY: dict[str, Callable] = {}


class _FunctionPolicy:
    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def plan(self, ctx):
        return self.fn(ctx)


def register(name: str):
    """Decorator registering a policy class (with ``plan(ctx)``) or a function ``f(ctx)`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise SpecError("policy", "a policy name must be a non-empty string")

    def deco(obj):
        if isinstance(obj, type):
            if not callable(getattr(obj, "plan", None)):
                raise SpecError("policy", f"policy class {obj.__name__} has no plan(ctx) method")
            _REGISTRY[name] = obj
        elif callable(obj):
            _REGISTRY[name] = lambda: _FunctionPolicy(obj, name)
        else:
            raise SpecError("policy", f"cannot register {short(obj)}: need a class with plan(ctx) or a function")
        return obj
    return deco


def get(name: str):
    """A fresh instance of the policy registered as ``name``."""
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise SpecError("policy", f"unknown policy {short(name)}; known: {', '.join(names())}") from None
    policy = factory()
    if not getattr(policy, "name", None):
        try:
            policy.name = name
        except AttributeError:
            pass
    return policy


def names() -> list[str]:
    return sorted(_REGISTRY)


# built-in policies register themselves on import
from . import baselines, cvar, energy, greedy, heft, kube, resilient, rl_stub  # noqa: E402,F401
