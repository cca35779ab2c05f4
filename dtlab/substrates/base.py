"""The substrate protocol: where jobs really run and where observed numbers come from.

An experiment or the controller talks to every substrate (``sim``, ``fabric``,
``kube``) through these few calls and never branches on which one it has:

* ``cluster()``  the Cluster the substrate runs (spec view, what the twin starts from);
* ``now_ms()``   the substrate's clock (virtual ms on sim, ms since start on real ones);
* ``submit(plan, job)``  run ``job`` with ``plan.placement`` from now on; ``plan.shadow`` is kept so a
  node failure moves the affected stages to their shadow nodes instead of being lost;
* ``advance(until_ms)``  let time pass up to ``until_ms`` (sim: run the model; real: sleep/poll);
  ``None`` means until all submitted work has finished;
* ``events()``   state events (dicts, the kinds of :mod:`dtlab.state`) observed since the last call,
  in time order, each with ``ts`` in seconds of the substrate clock: what the twin may know;
* ``inject(fault)``  realise a FaultScenario fault dict (node-failure, link-degradation, partition,
  pod-kill) at ``fault['at_s']`` (default now);
* ``results()``  observed records: ``{"jobs": DataFrame, "stages": DataFrame}`` (columns below);
* ``close()``    release everything (processes, cgroups, API objects); idempotent.

Per-job columns: job, arrival_ms, start_ms, end_ms, latency_ms, deadline_ms, missed, ok, nodes.
Per-stage columns: job, stage, node, format, start_ms, end_ms, duration_ms, ok.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping, Protocol, runtime_checkable

import pandas as pd

from ..model import Cluster, Job
from ..plan import Plan

JOB_COLUMNS = ("job", "arrival_ms", "start_ms", "end_ms", "latency_ms", "deadline_ms", "missed", "ok", "nodes")
STAGE_COLUMNS = ("job", "stage", "node", "format", "start_ms", "end_ms", "duration_ms", "ok")


@runtime_checkable
class Substrate(Protocol):
    name: str

    def cluster(self) -> Cluster: ...

    def now_ms(self) -> float: ...

    def submit(self, plan: Plan, job: Job) -> None: ...

    def advance(self, until_ms: float | None) -> None: ...

    def events(self) -> list[dict[str, Any]]: ...

    def inject(self, fault: Mapping[str, Any]) -> None: ...

    def results(self) -> dict[str, pd.DataFrame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Substrate: ...

    def __exit__(self, *exc: object) -> None: ...


class SubstrateBase:
    """Optional mixin: context-manager support and the idempotent-close bookkeeping."""

    name = "base"
    _closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class WallClockSubstrate(SubstrateBase):
    """Shared pieces of the substrates that run in real time (fabric, kube).

    Observed state events queue in ``self._events`` (guarded by ``self._lock``) with ``ts`` in
    seconds of the substrate clock; ``events()`` hands over those that are due. ``_timed_fault``
    turns a FaultScenario fault into a timed chaos event no earlier than now and queues the
    notifications the twin is told about.
    """

    _events: list[dict[str, Any]]
    _lock: threading.RLock
    _cluster: Cluster

    def now_ms(self) -> float:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            from ..errors import DtlabError
            raise DtlabError(f"{self.name} substrate is closed")

    def events(self) -> list[dict[str, Any]]:
        now_s = self.now_ms() / 1000.0
        with self._lock:
            ready = [e for e in self._events if e["ts"] <= now_s]
            self._events = [e for e in self._events if e["ts"] > now_s]
        ready.sort(key=lambda e: e["ts"])
        return ready

    def _timed_fault(self, fault: Mapping[str, Any], observed: tuple[str, ...] = ()):
        """The fault as a ``ChaosEvent`` starting no earlier than now; queues its state notifications
        except the kinds in ``observed`` (those the substrate reports itself when they really happen)."""
        from dataclasses import replace

        from ..chaos.realise import as_event
        from ..chaos.spec import to_state_events

        self._check_open()
        ev = as_event(fault, self._cluster)
        now_s = self.now_ms() / 1000.0
        if ev.start_s < now_s:
            ev = replace(ev, start_s=now_s)
        with self._lock:
            self._events += [dict(e) for e in to_state_events(ev) if e["kind"] not in observed]
        return ev
