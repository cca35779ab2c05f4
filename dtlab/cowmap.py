"""A copy-on-write map: O(buckets) snapshots that share every bucket a write did not touch.

Generic (keys and values of any kind); :mod:`dtlab.state` keeps the cluster's nodes and
stages in it so that taking a snapshot between events does not copy the cluster.
"""
from __future__ import annotations

from collections.abc import Mapping as _MappingABC
from typing import Any, Iterable, Iterator

_CHUNK = 256             # keys per insertion-order chunk
_BUCKET_LOAD = 16        # mean entries per bucket before the bucket count grows 4x


class CowMap:
    """Insertion-ordered mutable map with O(buckets) :meth:`freeze` sharing untouched buckets.

    Why not a dict: copying a dict of 50,000 nodes for every snapshot taken between
    events makes each plan O(cluster). Here keys are spread over ``hash(key) & mask``
    buckets (small dicts of key -> (position, value)) and an append-only list of key
    chunks records insertion order. ``freeze`` hands out the current bucket and chunk
    lists and bumps a generation; a later write copies a bucket (or the tail chunk)
    only if it was created before the freeze (copy-on-write), so frozen views never
    change. Removal leaves a tombstone in the order list (skipped on iteration;
    compacted when tombstones outnumber live keys). Iteration order is dict order
    (insertion; an update keeps the position, remove + re-add moves to the end),
    independent of PYTHONHASHSEED. Not thread-safe: ClusterState holds its lock.
    """

    def __init__(self, items: Iterable[tuple[Any, Any]] = ()):
        items = list(items)
        self._gen = 1
        self.layout = object()        # replaced when positions change (compaction)
        nb = 64
        while _BUCKET_LOAD * nb < len(items):
            nb *= 4
        self._reset(nb)
        for k, v in items:
            self[k] = v

    def _reset(self, nbuckets: int) -> None:
        self._mask = nbuckets - 1
        self._buckets: list[dict] = [{} for _ in range(nbuckets)]
        self._bgen = [self._gen] * nbuckets
        self._order: list[list] = []
        self._ogen: list[int] = []
        self._n = 0                   # positions used (live + tombstones)
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key) -> bool:
        return key in self._buckets[hash(key) & self._mask]

    def get(self, key, default=None):
        e = self._buckets[hash(key) & self._mask].get(key)
        return default if e is None else e[1]

    def pos(self, key) -> int:
        """The insertion position of ``key`` (stable until :attr:`layout` changes)."""
        return self._buckets[hash(key) & self._mask][key][0]

    @property
    def used(self) -> int:
        """Positions used so far (live keys + tombstones): the size position-indexed columns need."""
        return self._n

    def _own(self, b: int) -> dict:
        if self._bgen[b] != self._gen:
            self._buckets[b] = dict(self._buckets[b])
            self._bgen[b] = self._gen
        return self._buckets[b]

    def __setitem__(self, key, value) -> None:
        self.put(key, value)

    def put(self, key, value) -> int:
        """Set ``key`` (copy-on-write of its bucket); returns its position."""
        b = hash(key) & self._mask
        if self._bgen[b] == self._gen:
            d = self._buckets[b]
        else:
            d = self._buckets[b] = dict(self._buckets[b])
            self._bgen[b] = self._gen
        e = d.get(key)
        if e is not None:
            d[key] = (e[0], value)
            return e[0]
        pos = self._n
        c = pos // _CHUNK
        if c == len(self._order):
            self._order.append([])
            self._ogen.append(self._gen)
        elif self._ogen[c] != self._gen:
            self._order[c] = list(self._order[c])
            self._ogen[c] = self._gen
        self._order[c].append(key)
        d[key] = (pos, value)
        self._n += 1
        self._len += 1
        if self._len > _BUCKET_LOAD * (self._mask + 1):
            self._rebuild(4 * (self._mask + 1))
            return self.pos(key)
        return pos

    def pop(self, key, *default):
        b = hash(key) & self._mask
        if key not in self._buckets[b]:
            if default:
                return default[0]
            raise KeyError(key)
        _, value = self._own(b).pop(key)
        self._len -= 1
        if self._n > 2 * self._len + _CHUNK:
            self._rebuild(self._mask + 1)
        return value

    def _rebuild(self, nbuckets: int) -> None:
        items = list(self.items())
        self._gen += 1
        self._reset(nbuckets)
        self.layout = object()
        for k, v in items:
            self[k] = v

    def items(self) -> Iterator[tuple[Any, Any]]:
        return _iter_items(self._buckets, self._mask, self._order, self._n)

    def values(self) -> Iterator[Any]:
        return (v for _, v in self.items())

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def freeze(self) -> tuple:
        """(buckets, mask, order, n, len): an immutable view's data; later writes copy what they touch."""
        view = (tuple(self._buckets), self._mask, tuple(self._order), self._n, self._len)
        self._gen += 1
        return view


def _iter_items(buckets, mask, order, n) -> Iterator[tuple[Any, Any]]:
    pos = 0
    for chunk in order:
        for key in chunk:
            if pos >= n:
                return
            e = buckets[hash(key) & mask].get(key)
            if e is not None and e[0] == pos:
                yield key, e[1]
            pos += 1


class FrozenMap(_MappingABC):
    """Read-only view of a :class:`CowMap` at one moment (a snapshot's ``nodes`` / ``stages``)."""

    __slots__ = ("_buckets", "_mask", "_order", "_n", "_len")

    def __init__(self, view: tuple):
        self._buckets, self._mask, self._order, self._n, self._len = view

    def __getitem__(self, key):
        e = self._buckets[hash(key) & self._mask].get(key)
        if e is None:
            raise KeyError(key)
        return e[1]

    def __contains__(self, key) -> bool:
        return key in self._buckets[hash(key) & self._mask]

    def __len__(self) -> int:
        return self._len

    def pos(self, key) -> int:
        """The insertion position of ``key`` in the map this view was frozen from."""
        return self._buckets[hash(key) & self._mask][key][0]

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def items(self):   # a generator, cheaper than the ItemsView's per-key __getitem__
        return _iter_items(self._buckets, self._mask, self._order, self._n)

    def values(self):
        return (v for _, v in self.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} entries)"

    def __getstate__(self):
        return dict(self.items())

    def __setstate__(self, state):
        FrozenMap.__init__(self, CowMap(state.items()).freeze())
