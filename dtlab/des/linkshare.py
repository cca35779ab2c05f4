"""Bandwidth sharing on one link: the transfer model of the engine, one object per link in use.

Concurrent transfers on one directed link (source node or origin zone -> destination node: the unit
the fabric shapes with one htb class) share its bandwidth by processor sharing, as :mod:`dtlab.des.ps`
shares a node's CPU: with ``n`` bulk phases in flight each progresses at
:func:`dtlab.timing.shared_speed` ``(link, n)`` of its speed alone (every flow on one link has the
same cap, so equal shares are the max-min fair ones). A flow's ``work`` is its bulk time alone on
the link (ms); all flows progress at the same rate, so one virtual clock ``v`` (work each flow has
done since the link became busy) and a heap of finishing points ``v_at_join + work`` suffice: an
event costs O(log n). One completion timeout is live at a time (a generation counter voids older ones).

A link whose parameters change (a ``link`` event) starts a new sharing group: flows already in
flight keep the rate rule of the link they started on (the model keeps a transfer's link fixed).
"""
from __future__ import annotations

from heapq import heappop, heappush
from typing import Callable

import simpy
from simpy.events import Timeout

from ..model import Link
from ..timing import shared_speed

EPS_MS = 1e-9


class SharedLink:
    """Flows in their bulk phase on one link, on a SimPy clock; ``on_done(token)`` when one ends."""
    __slots__ = ("env", "link", "heap", "v", "last_t", "seq", "gen", "speed")

    def __init__(self, env: simpy.Environment, link: Link):
        self.env = env
        self.link = link
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.v = 0.0
        self.last_t = env.now
        self.seq = 0
        self.gen = 0
        self.speed = 1.0

    @property
    def n(self) -> int:
        return len(self.heap)

    def _advance(self) -> None:
        now = self.env.now
        if self.heap:
            self.v += (now - self.last_t) * self.speed
        self.last_t = now

    def add(self, work_ms: float, on_done: Callable[[], None]) -> None:
        """A flow of ``work_ms`` (bulk ms alone on the link) joins now; ``on_done()`` when it is through."""
        self._advance()
        self.seq += 1
        heappush(self.heap, (self.v + max(0.0, work_ms), self.seq, on_done))
        self._reschedule()

    def _reschedule(self) -> None:
        self.gen += 1
        if not self.heap:
            self.v = 0.0          # idle: restart the clock so it stays small
            return
        self.speed = shared_speed(self.link, len(self.heap))
        wait = max(0.0, (self.heap[0][0] - self.v) / self.speed)
        ev = Timeout(self.env, wait)
        gen = self.gen
        ev.callbacks.append(lambda _e: self._fire(gen))

    def _fire(self, gen: int) -> None:
        if gen != self.gen:
            return
        self._advance()
        done = []
        while self.heap and self.heap[0][0] <= self.v + EPS_MS:
            done.append(heappop(self.heap)[2])
        self._reschedule()
        for cb in done:
            cb()
