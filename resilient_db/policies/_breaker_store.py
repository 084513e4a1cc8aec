"""Sharing breaker *decisions* between breakers: the :class:`BreakerStore` protocol.

A store shares what a breaker decided, not what it saw: "open for N more seconds" (a
:class:`FleetDecision` with a generation number) and a **probe lease** (one owner at a time,
expiring after the probe interval), so that one breaker of the whole fleet probes per
interval. Failure windows and slow-call statistics stay local.

The breaker's hot path never waits on a store: :meth:`BreakerStore.publish` must not block
(queue the write), decisions arrive through the ``on_decision`` callback registered with
:meth:`BreakerStore.bind` (called on the breaker's event loop), and only the probe task
(never a caller) awaits :meth:`BreakerStore.acquire_probe_lease`, which must be bounded by
the store's own small budget and answer True when the store cannot be reached (the breaker
then decides locally: never "closed with zero failures").

:class:`LocalBreakerStore` is the in-process implementation (breakers of one process sharing
an endpoint); ``resilient_db.fleet.RedisBreakerStore`` shares across processes and hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from resilient_db._validate import check_callable

__all__ = ["BreakerStore", "DecisionSink", "FleetDecision", "LocalBreakerStore"]


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetDecision:
    """A shared decision: open (for ``remaining`` more seconds, maybe 0), or closed.

    An open decision whose time is up still stands (a breaker with a health check leaves
    OPEN only through a passing probe); only an explicit close closes.
    """

    is_open: bool
    #: Increases with every shared decision; a breaker adopts only newer generations.
    generation: int
    #: Seconds the breaker stays open, measured when the decision was read.
    remaining: float = 0.0


class DecisionSink(Protocol):
    """Receives shared decisions (the breaker's ``_adopt``)."""

    def __call__(self, decision: FleetDecision, /) -> None: ...


class BreakerStore(Protocol):
    """Where breakers share decisions (see the module documentation for the contract)."""

    def bind(self, name: str, on_decision: DecisionSink) -> None:
        """Deliver decisions about breaker ``name`` to ``on_decision`` (on its loop)."""
        ...

    def publish(self, name: str, *, open_for: float | None) -> None:
        """Share "open for ``open_for`` seconds" (or closed for None); never blocks."""
        ...

    async def acquire_probe_lease(self, name: str, ttl: float) -> bool:
        """Own the probe of ``name`` for ``ttl`` seconds? True when unreachable."""
        ...


class LocalBreakerStore:
    """In-process store: breakers of one process with the same name share decisions.

    ``clock`` (keyword-only, default :func:`time.monotonic`) times open decisions and leases.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        check_callable("LocalBreakerStore", "clock", clock, fix="pass time.monotonic or a fake")
        self._clock = clock
        self._sinks: dict[str, list[DecisionSink]] = {}
        self._generation: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._leases: dict[str, float] = {}

    def bind(self, name: str, on_decision: DecisionSink) -> None:
        self._sinks.setdefault(name, []).append(on_decision)

    def publish(self, name: str, *, open_for: float | None) -> None:
        now = self._clock()
        if open_for is not None and self._open_until.get(name, 0.0) > now:
            return  # already open fleet-wide: keep the first decision
        if open_for is None and self._open_until.get(name) is None:
            return  # already closed
        generation = self._generation[name] = self._generation.get(name, 0) + 1
        if open_for is None:
            self._open_until.pop(name, None)
            decision = FleetDecision(is_open=False, generation=generation)
        else:
            self._open_until[name] = now + open_for
            decision = FleetDecision(is_open=True, generation=generation, remaining=open_for)
        for sink in tuple(self._sinks.get(name, ())):
            sink(decision)

    async def acquire_probe_lease(self, name: str, ttl: float) -> bool:
        now = self._clock()
        if self._leases.get(name, -1.0) > now:
            return False
        self._leases[name] = now + ttl
        return True
