"""A unit's way into the pool and back: a first-come-first-served queue in front of an
engine's pool (one per engine), and the release of the unit's connection.

SQLAlchemy's async queue pool is not fair: a connection checked in wakes the oldest
waiter, but a task that asks for a connection before that waiter runs takes it first
(``asyncio.Queue`` lets newcomers barge). Under saturation — more busy callers than
connections — a few callers keep the connections and the others wait until their deadline:
64 looping callers on a healthy server and a pool of 9 lost ~110 units in 5 s to
``DeadlineExceeded``, every one of them waiting in the pool's queue.

The gate admits at most the pool's capacity of units at once, in arrival order; a unit
releases its place when its connection is back in the pool (closed or invalidated). A wait
is bounded by the pool's own ``pool_timeout`` (and by the unit's deadline), and ends in the
error the pool raises then (``sqlalchemy.exc.TimeoutError``), so classification and retries
are unchanged. It orders units only: other code on the same engine goes straight to the
pool, as before.

The gate is also the one place that knows how many units wait for a connection and how long
they waited (SQLAlchemy's pool has no hook for either): :meth:`Gate.statistics` reads the
counters, and wait listeners (:meth:`Gate.add_wait_listener`) hear each wait that ended with
a place. Both cost nothing on the happy path: only :meth:`Gate.enter` (a unit that queued)
reads the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["Gate", "GateStatistics", "WaitListener", "release"]

logger = logging.getLogger("resilient_db")

#: Called with the seconds a unit waited in the queue before it got a place.
WaitListener = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot of a gate: ``capacity`` places, ``free`` of them free now, ``waiting``
    units queued now; ``waited_total`` units that queued and got a place, after
    ``wait_seconds_total`` seconds of waiting together (units that got a place at once, and
    waits that timed out or were cancelled, are not counted)."""

    capacity: int
    free: int
    waiting: int
    waited_total: int
    wait_seconds_total: float


class Gate:
    """FIFO admission of units to a pool of ``capacity`` connections (not bound to a loop)."""

    __slots__ = (
        "capacity",
        "free",
        "listeners",
        "timeout",
        "wait_seconds_total",
        "waited_total",
        "waiters",
    )

    def __init__(self, capacity: int, timeout: float) -> None:
        self.capacity = capacity
        self.free = capacity
        self.timeout = timeout
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.waited_total = 0
        self.wait_seconds_total = 0.0
        self.listeners: tuple[WaitListener, ...] = ()

    def statistics(self) -> GateStatistics:
        """The gate's counters now (safe to call from another thread, e.g. a scrape)."""
        return GateStatistics(
            capacity=self.capacity,
            free=self.free,
            waiting=len(self.waiters),
            waited_total=self.waited_total,
            wait_seconds_total=self.wait_seconds_total,
        )

    def add_wait_listener(self, listener: WaitListener) -> None:
        """Hear the seconds of each wait that ended with a place (not the happy path's)."""
        self.listeners = (*self.listeners, listener)

    def remove_wait_listener(self, listener: WaitListener) -> None:
        """Unregister a listener added with :meth:`add_wait_listener` (no-op if absent)."""
        listeners = list(self.listeners)
        if listener in listeners:
            listeners.remove(listener)
            self.listeners = tuple(listeners)

    def try_enter(self) -> bool:
        """Take a place at once if one is free and nobody is waiting (the happy path)."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def enter(self) -> None:
        """Wait for a place, in arrival order, at most ``timeout`` seconds."""
        start = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            async with asyncio.timeout(self.timeout):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.exit()  # handed a place while being cancelled: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):  # exit() may have dropped it
                    self.waiters.remove(fut)  # only live waiters stay queued
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no connection of the pool became free within {self.timeout:g}s "
                    f"({self.capacity} connections, {len(self.waiters)} units waiting); "
                    "lower the concurrency or enlarge the pool (pool_size, max_overflow)"
                ) from None
            raise
        self._waited(time.monotonic() - start)

    def _waited(self, seconds: float) -> None:
        self.waited_total += 1
        self.wait_seconds_total += seconds
        for listener in self.listeners:
            try:
                listener(seconds)
            except Exception:  # a metrics back end never fails the unit holding the place
                logger.exception("unit.listener_failed", extra={"hook": "gate.wait"})

    def exit(self) -> None:
        """Give a place back: to the oldest live waiter, else to the free count."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


async def release(
    session: AsyncSession, invalidate: bool, timeout: float, gate: Gate | None
) -> None:
    """Return the connection politely within ``timeout``, else (or when asked) terminate
    it; then give the unit's place in the queue back (the pool has the connection again)."""
    try:
        if not invalidate:
            try:
                async with asyncio.timeout(timeout):
                    await session.close()
                return
            except Exception:  # TimeoutError included: a frozen socket
                logger.debug("unit.close_failed")
        try:
            async with asyncio.timeout(timeout):
                await session.invalidate()
        except Exception as exc:  # the pool may still count the connection as checked out
            bind: Any = session.bind
            pool: Any = getattr(bind, "pool", None)
            logger.warning(
                "unit.invalidate_failed",
                extra={
                    "error_type": type(exc).__qualname__,
                    "checked_out": pool.checkedout() if hasattr(pool, "checkedout") else None,
                },
            )
    finally:
        if gate is not None:
            gate.exit()
