"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Each replica calls :meth:`LeaseElector.tick` every ``retry_s`` (and at the moment the lease it
watches would expire). One tick is one ``tryAcquireOrRenew``:

* no Lease -> create it holding it (a 409 means another replica won the race);
* we hold it -> renew (``renewTime``), an update with the ``resourceVersion`` read just
  before, so two writers can never both succeed (optimistic concurrency on the API server);
* another replica holds it -> take it over only when its record has not changed for
  ``lease_s``, measured on *our* monotonic clock from when *we* first saw that record
  (client-go's ``observedTime``: no trust in the other host's clock).

The leader acts only while ``is_leader()``: its last successful renew is less than
``renew_deadline_s`` old (< ``lease_s``), so it stops acting before anyone else may take over.
A SIGKILLed leader stops renewing; a candidate that saw its last renew at ``t_o`` takes over at
``t_o + lease_s`` (it wakes at that moment), and candidates poll every ``retry_s / 2``, so ``t_o`` is
at most ``retry_s / 2`` after the last renew, which came before the kill: the handover happens
within ``lease_s + retry_s / 2`` (+ two API calls) of the kill, inside the ``lease_s + retry_s``
bound that tests/e2e/test_operator.py measures.
``release()`` (clean stop) empties ``holderIdentity`` so a successor need not wait.

The lease is a liveness mechanism, not a fence: a leader paused longer than the lease could act
once more after a takeover. The reconciler does not rely on it for safety: status writes carry a
``resourceVersion`` precondition and pod creates are idempotent by name and spec hash.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np


def _now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _status(exc: BaseException) -> int | None:
    from ..kube.actuator import _status as status_of
    return status_of(exc)


class LeaseElector:
    """One candidate for the Lease ``namespace/name``; see the module docstring."""

    def __init__(self, coord_api: Any, identity: str, name: str = "dtlab-operator", namespace: str = "dtlab",
                 lease_s: float = 15.0, renew_deadline_s: float = 10.0, retry_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, request_timeout_s: float = 5.0):
        if not 0 < retry_s < renew_deadline_s < lease_s:
            raise ValueError(f"need 0 < retry_s ({retry_s}) < renew_deadline_s ({renew_deadline_s}) "
                             f"< lease_s ({lease_s})")
        self.api = coord_api
        self.identity = identity
        self.name, self.namespace = name, namespace
        self.lease_s, self.renew_deadline_s, self.retry_s = float(lease_s), float(renew_deadline_s), float(retry_s)
        self._clock = clock
        self._timeout = request_timeout_s
        self._observed: tuple | None = None      # (holder, renewTime, resourceVersion) last seen
        self._observed_at = 0.0                  # our clock when it was first seen
        self._renewed_at: float | None = None    # our clock at our last successful acquire/renew
        self._last_tick = -1e18
        self.transitions = 0                     # times this candidate became leader
        self.errors = 0

    # ------------------------------------------------------------ queries
    def is_leader(self) -> bool:
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline_s

    def _interval(self) -> float:
        """The leader renews every retry period; a candidate looks twice as often, so it sees the last
        renewal of a dead leader at most retry/2 late and the handover keeps retry/2 of slack."""
        return self.retry_s if self.is_leader() else self.retry_s / 2

    def due(self) -> bool:
        """Whether a tick is due now (its interval passed, or the watched lease is about to expire)."""
        return self._clock() >= self._last_tick + self._interval() or self._clock() >= self._expiry()

    def wait_s(self) -> float:
        """Seconds until the next tick is due."""
        return max(0.0, min(self._last_tick + self._interval(), self._expiry()) - self._clock())

    def _expiry(self) -> float:
        if self._observed is None or not self._observed[0] or self._observed[0] == self.identity:
            return float("inf")
        return self._observed_at + self.lease_s

    # ------------------------------------------------------------ one round
    def tick(self) -> bool:
        """One tryAcquireOrRenew; returns is_leader() afterwards. API errors count as a failed round."""
        self._last_tick = self._clock()
        try:
            self._try()
        except Exception:  # noqa: BLE001 - a failed round: the renew deadline decides leadership
            self.errors += 1
        return self.is_leader()

    def _body(self, holder: str, acquire: str, transitions: int, rv: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv is not None:
            meta["resourceVersion"] = rv
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": max(1, int(round(self.lease_s))),
                         "acquireTime": acquire, "renewTime": _now_micro(), "leaseTransitions": transitions}}

    def _try(self) -> None:
        now = self._clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout)
        except Exception as exc:
            if _status(exc) != 404:
                raise
            try:
                self.api.create_namespaced_lease(self.namespace, self._body(self.identity, _now_micro(), 0),
                                                 _request_timeout=self._timeout)
            except Exception as exc2:
                if _status(exc2) == 409:
                    return            # another candidate created it first
                raise
            self._became(now)
            return
        spec = lease.spec
        holder = spec.holder_identity or ""
        rv = lease.metadata.resource_version
        seen = (holder, str(spec.renew_time), rv)
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        if holder and holder != self.identity and now < self._observed_at + self.lease_s:
            self._renewed_at = None   # someone else leads
            return
        transitions = int(spec.lease_transitions or 0)
        if holder == self.identity:
            acquire = spec.acquire_time
            acquire = acquire.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if hasattr(acquire, "strftime") else \
                (acquire or _now_micro())
        else:
            acquire, transitions = _now_micro(), transitions + 1
        try:
            out = self.api.replace_namespaced_lease(self.name, self.namespace,
                                                    self._body(self.identity, acquire, transitions, rv),
                                                    _request_timeout=self._timeout)
        except Exception as exc:
            if _status(exc) == 409:   # someone else wrote it since our read: not ours this round
                return
            raise
        self._observed = (self.identity, str(out.spec.renew_time), out.metadata.resource_version)
        self._observed_at = now
        if holder != self.identity:
            self._became(now)
        else:
            self._renewed_at = now

    def _became(self, now: float) -> None:
        self._renewed_at = now
        self.transitions += 1

    def release(self) -> None:
        """Clean stop: give the lease up at once (empty holder), if we hold it."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._timeout)
        except Exception:  # noqa: BLE001 - best effort: the lease expires anyway
            self.errors += 1


def default_identity() -> str:
    import os
    import socket
    return f"{socket.gethostname()}-{os.getpid()}-{np.random.default_rng().integers(1 << 16):04x}"
