"""A processor-sharing node: the CPU model of the engine, one object per node.

Every stage (a *run*) on a node shares its capacity ``cores * (1 - background)``; each run is
capped at its ``cpu`` cores and the rest is split max-min fairly (water-filling), which is what
the Linux CFS scheduler approximates for CPU-bound work under cgroup quotas.

**Efficiency.** Water-filling gives every run with the same cpu cap the same rate, so runs are
grouped by cap: a :class:`Group` keeps a virtual clock ``v`` (work done per run since the group
formed) and a heap of finishing points ``target = v_at_start + work``. An event costs
O(groups + log n), not O(n), which keeps a busy node (M/M/1 at rho 0.9) as cheap as an idle
one. Remaining work is advanced lazily (:meth:`PSNode.advance`) and allocations recomputed only
when the active set or the capacity changes; one completion timeout per node is live at a
time (a generation counter turns earlier ones into no-ops, cheaper in SimPy than interrupting
a process).

What a run must offer (the engine's ``_Run``): ``cpu``, ``work`` (ms at full allocation),
``group``, ``target``, ``running``. The node calls ``on_done(run)`` for every run that
completes, after it has rescheduled the others.
"""
from __future__ import annotations

import math
from heapq import heappop, heappush
from typing import Any, Callable

import simpy
from simpy.events import Timeout

EPS_MS = 1e-9


class Group:
    """Running stages of one node with the same cpu cap (they always get the same rate)."""
    __slots__ = ("cpu", "v", "frac", "heap", "n")

    def __init__(self, cpu: float):
        self.cpu = cpu
        self.v = 0.0                # virtual clock: work (ms at full rate) each member has done since
        self.frac = 1.0             # rate as a fraction of the cap
        self.heap: list = []        # (target v, seq, run)
        self.n = 0


class PSNode:
    """Processor sharing on one node of ``cores`` with background utilisation ``bg``, on a SimPy clock."""
    __slots__ = ("env", "on_done", "cores", "bg", "capacity", "groups", "count", "seq", "g1", "claimed", "last_t",
                 "gen", "next_run", "next_t", "exact", "peak")

    def __init__(self, env: simpy.Environment, cores: float, bg: float, on_done: Callable[[Any], None]):
        self.env = env
        self.on_done = on_done
        self.cores = float(cores)
        self.bg = bg
        self.capacity = self.cores * (1.0 - bg)
        self.groups: dict[float, Group] = {}   # cpu cap -> runs sharing the node with that cap
        self.g1: Group | None = None    # the only group, when there is exactly one (fast path)
        self.count = 0              # running stages
        self.seq = 0                # start order (heap tie-break)
        self.claimed = 0.0          # sum of cpu caps of running stages
        self.last_t = 0.0
        self.gen = 0
        self.next_run: Any = None
        self.next_t = math.inf
        self.exact = True           # the pending timeout is the real next completion (not early)
        self.peak = 0.0             # max over time of (allocated cores - capacity), should stay <= 0

    def advance(self, now: float) -> None:
        """Bring every group's virtual clock to ``now``."""
        dt = now - self.last_t
        if dt > 0 and self.count:
            g = self.g1
            if g is not None:
                g.v += dt * g.frac
            else:
                for g in self.groups.values():
                    g.v += dt * g.frac
        self.last_t = now

    def add(self, run: Any, now: float) -> None:
        """Start ``run`` on this node at ``now``."""
        self.advance(now)
        g = self.groups.get(run.cpu)
        if g is None:
            g = self.groups[run.cpu] = Group(run.cpu)
            self.g1 = g if len(self.groups) == 1 else None
        run.group = g
        run.target = g.v + run.work
        run.running = True
        self.seq += 1
        heappush(g.heap, (run.target, self.seq, run))
        g.n += 1
        self.count += 1
        self.claimed += run.cpu
        if self.claimed <= self.capacity + EPS_MS and self.next_run is not None:
            # uncontended before and after: nobody's rate changed; only the new run may finish first
            g.frac = 1.0
            t = now + run.work
            if t < self.next_t:
                self.arm(run, t, now)
            return
        self.schedule(now, arrival=True)

    def remove(self, run: Any, now: float) -> None:
        """Take a running run off the node (killed/cancelled); its heap entry is dropped lazily."""
        self.advance(now)
        self.drop(run)
        self.schedule(now)

    def drop(self, run: Any) -> None:
        run.running = False
        g: Group = run.group
        g.n -= 1
        self.count -= 1
        self.claimed -= run.cpu
        if g.n == 0 and self.groups.get(g.cpu) is g:
            del self.groups[g.cpu]
            self.g1 = next(iter(self.groups.values())) if len(self.groups) == 1 else None
        if self.count == 0:
            self.claimed = 0.0

    def running(self) -> list[Any]:
        """The runs sharing the node now, in start order."""
        runs = [e for g in self.groups.values() for e in g.heap if e[2].running]
        runs.sort(key=_seq_of)
        return [e[2] for e in runs]

    def clear(self) -> None:
        """Forget every run (the node failed) and cancel the pending completion."""
        self.groups = {}
        self.g1 = None
        self.count = 0
        self.claimed = 0.0
        self.gen += 1
        self.next_run, self.next_t = None, math.inf

    def schedule(self, now: float, arrival: bool = False) -> None:
        """Recompute allocations (max-min fair, capped at each run's cpu) and arm the next completion.

        After an ``arrival`` every rate can only drop (water-filling is monotone), so a pending
        timeout can only be early: it is kept unless the newcomer finishes first, and the early
        tick re-arms once. That saves a timeout per arrival on a busy node.
        """
        groups = self.groups
        if not self.count:
            self.gen += 1
            self.next_run, self.next_t = None, math.inf
            return
        cap = self.capacity
        g = self.g1
        if g is not None:
            # one cap on the node: everyone gets min(1, capacity / demand) of it (alloc <= cap by construction)
            if self.claimed <= cap + EPS_MS:
                g.frac = 1.0
            else:
                g.frac = cap / (g.n * g.cpu)
            heap = g.heap
            while not heap[0][2].running:
                heappop(heap)
            if g.frac <= 0:
                self.gen += 1
                self.next_run, self.next_t = None, math.inf
                return
            best = heap[0][2]
            t = now + max((heap[0][0] - g.v) / g.frac, 0.0)
            if arrival and self.next_run is not None and t >= self.next_t:
                self.exact = False
                return
            self.arm(best, t, now)
            return
        if self.claimed <= cap + EPS_MS:
            alloc = self.claimed
            for g in groups.values():
                g.frac = 1.0
        elif len(groups) == 1:
            for g in groups.values():
                g.frac = cap / (g.n * g.cpu)     # one cap, contended: an equal share each
            alloc = cap
        else:
            # water-filling: smallest caps are served in full, the rest share what is left equally
            left, k, alloc = cap, self.count, 0.0
            order = sorted(groups.values(), key=_cpu_of)
            for i, g in enumerate(order):
                share = left / k
                if g.cpu <= share:
                    g.frac = 1.0
                    left -= g.cpu * g.n
                    k -= g.n
                    alloc += g.cpu * g.n
                else:
                    for g2 in order[i:]:
                        g2.frac = share / g2.cpu
                    alloc += share * k
                    break
        if alloc - cap > self.peak:
            self.peak = alloc - cap
        best, best_t = None, math.inf
        for g in groups.values():
            heap = g.heap
            while not heap[0][2].running:
                heappop(heap)
            if g.frac > 0:
                t = (heap[0][0] - g.v) / g.frac
                if t < best_t:
                    best, best_t = heap[0][2], t
        if best is None:
            self.gen += 1
            self.next_run, self.next_t = None, math.inf
            return
        t = now + max(best_t, 0.0)
        if arrival and self.next_run is not None and t >= self.next_t:
            self.exact = False
            return
        self.arm(best, t, now)

    def arm(self, run: Any, t: float, now: float) -> None:
        """Make ``run`` finishing at ``t`` the pending completion (earlier timeouts become no-ops)."""
        self.gen += 1
        self.exact = True
        self.next_run, self.next_t = run, t
        ev = _Completion(self.env, t - now)
        ev.gen = self.gen
        ev.callbacks.append(self._tick)

    def _tick(self, ev: _Completion) -> None:
        if ev.gen != self.gen:
            return  # superseded by a later reallocation
        now = self.env.now
        self.advance(now)
        if not self.exact:
            # armed before arrivals slowed the node down: nothing is due yet, arm the real time
            self.next_run, self.next_t = None, math.inf
            self.schedule(now)
            return
        first = self.next_run
        done = []
        for g in list(self.groups.values()):
            heap, v = g.heap, g.v
            while heap:
                run = heap[0][2]
                if not run.running:
                    heappop(heap)
                elif run is first or heap[0][0] - v <= EPS_MS:
                    heappop(heap)
                    done.append(run)
                    self.drop(run)
                else:
                    break
        self.next_run, self.next_t = None, math.inf
        self.schedule(now)
        for r in done:
            self.on_done(r)


class _Completion(Timeout):
    """The node's pending completion, tagged with the node's generation when it was armed."""
    gen: int


def _cpu_of(item: Group) -> float:
    return item.cpu


def _seq_of(entry: tuple) -> int:
    return entry[1]
