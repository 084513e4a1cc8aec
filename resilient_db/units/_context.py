"""What every attempt of a unit needs, handed down as one frozen object, and a call's state.

:class:`UnitContext` is built once per :class:`~resilient_db.Database` (and per view from
``with_options``): the lower layers (attempt, runner, blocks) read it and never call back
into ``Database``. :class:`Call` is the mutable state of one unit call (never shared).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db.classify import Classification, Classifier
from resilient_db.policies import (
    CircuitBreaker,
    Clock,
    RetryBudget,
    RetryEvent,
    RetryHooks,
    RetryPolicy,
    RetryStatistics,
)
from resilient_db.units._commit import CommitResolutions
from resilient_db.units._gate import Gate
from resilient_db.units._keys import Ledger
from resilient_db.units._options import UnitEvent, UnitListener, UnitOptions

__all__ = ["Call", "Reporter", "UnitContext", "bounded", "joinable"]

logger = logging.getLogger("resilient_db")

_WARN = frozenset({"commit.unknown", "unit.deadline_exceeded"})


class Reporter:
    """Logs unit events (the stable name; the data in ``extra``) and tells listeners."""

    __slots__ = ("listeners",)

    def __init__(self, listeners: tuple[UnitListener, ...]) -> None:
        self.listeners = listeners

    def emit(self, data: UnitEvent, *, log: bool = True) -> None:
        if log:
            logger.log(
                logging.WARNING if data.event in _WARN else logging.INFO,
                data.event,  # the message is rendered from the data (resilient_db._logging)
                extra={
                    "unit": data.name,
                    "attempt": data.attempt,
                    "category": data.category,
                    "sqlstate": data.sqlstate,
                    "kind": data.kind,
                    "xid": data.xid,
                    "outcome": data.outcome,
                    "error_type": data.error_type,
                },
            )
        for listener in self.listeners:
            try:
                listener(data)
            except Exception:
                logger.exception(
                    "unit.listener_failed: a listener raised on %s",
                    data.event,
                    extra={"unit": data.name},
                )

    def hooks(self) -> RetryHooks | None:
        """Retry events for the listeners; None (no cost at all) when there are none."""
        return _ListenerHooks(self) if self.listeners else None


class _ListenerHooks(RetryHooks):
    r"""Turns the retry engine's hooks into :class:`UnitEvent`\ s for the listeners."""

    __slots__ = ("reporter",)

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def on_retry(self, event: RetryEvent) -> None:
        self.reporter.emit(
            UnitEvent(
                event="retry.scheduled",
                name=event.name,
                attempt=event.attempt,
                elapsed=event.elapsed,
                category=event.category,
                error_type=type(event.exception).__qualname__,
                sleep=event.sleep,
            ),
            log=False,  # the retry engine logs it
        )

    def on_finish(self, statistics: RetryStatistics) -> None:
        if statistics.stop_reason in ("attempts", "deadline", "budget"):
            self.reporter.emit(
                UnitEvent(
                    event="retry.gave_up",
                    name=statistics.name,
                    attempt=statistics.attempts,
                    elapsed=statistics.elapsed,
                    category=statistics.last_category,
                    outcome=statistics.stop_reason,
                ),
                log=False,
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitContext:
    """Everything an attempt needs; one per ``Database``, shared by its calls."""

    key: object  # units on the same key and task join each other
    engine: AsyncEngine
    make_session: Callable[[], AsyncSession]
    breaker: CircuitBreaker | None
    budget: RetryBudget | None
    classifier: Classifier
    retry: RetryPolicy
    clock: Clock
    allowance: float
    cleanup_timeout: float
    resolve_timeout: float
    resolutions: CommitResolutions
    reporter: Reporter
    ledger: Ledger
    gate: Gate | None = None  # FIFO admission to the pool (None: no queue pool)


class Deadline:
    """One unit's deadline on the event loop (a timer handle; no cancel scope).

    At ``delay`` it cancels the task, and keeps cancelling it every :data:`NUDGE` seconds
    until the unit acknowledges (level-triggered, as anyio's scopes are): a library that
    shields its own cleanup — SQLAlchemy's graceful close of an invalidated asyncpg
    connection waits up to 2 s — is interrupted again, so the call still ends within its
    allowance. Its cancel requests are withdrawn (``Task.uncancel``) when acknowledged, so
    the caller's own cancellation accounting (``asyncio.timeout``, task groups) is intact.
    """

    __slots__ = ("_handle", "_loop", "acked", "baseline", "fired", "task")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "a unit of work runs in an asyncio task"
        self.task = task
        self.baseline = task.cancelling()
        self.fired = 0
        self.acked = False
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        if self.acked or self.task.done():
            return
        self.fired += 1
        self.task.cancel("resilient_db: the unit's deadline expired")
        self._handle = self._loop.call_later(NUDGE, self._fire)

    def expired(self) -> bool:
        return self.fired > 0

    def ours(self) -> bool:
        """The deadline fired, and nobody else cancelled the task meanwhile."""
        return self.fired > 0 and self.task.cancelling() <= self.baseline + (
            0 if self.acked else self.fired
        )

    def acknowledge(self) -> None:
        """Stop cancelling, withdraw our cancel requests (idempotent)."""
        if self.acked:
            return
        self.acked = True
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        for _ in range(self.fired):
            self.task.uncancel()


#: Seconds between re-deliveries of an expired deadline's cancellation.
NUDGE = 0.02


class Call:
    """Mutable state of one unit call (never shared)."""

    __slots__ = (
        "attempts",
        "deadline",
        "deadline_at",
        "key",
        "last",
        "last_exc",
        "options",
        "started",
    )

    def __init__(self, options: UnitOptions, started: float, key: str | None = None) -> None:
        self.options = options
        #: The operation key (normalised), recorded in the ledger instead of the xid capture.
        self.key = key
        self.started = started
        self.deadline_at: float | None = None
        self.deadline: Deadline | None = None
        self.attempts = 0
        self.last_exc: BaseException | None = None
        self.last: Classification | None = None

    def arm(self, clock: Clock) -> bool:
        """Start the deadline timer for what is left of it; False: the unit has none."""
        deadline = self.options.deadline
        if deadline is None:
            return False
        if self.deadline_at is None:
            self.deadline_at = self.started + deadline
            left = deadline
        else:
            left = self.deadline_at - clock()
        self.deadline = Deadline(max(left, 0.0))
        return True

    def disarm(self) -> None:
        deadline, self.deadline = self.deadline, None
        if deadline is not None:
            deadline.acknowledge()

    def own_deadline(self) -> bool:
        """Our deadline fired, and nobody else cancelled the task meanwhile; stops its
        re-delivery (the unit has noticed)."""
        deadline = self.deadline
        if deadline is None or not deadline.ours():
            return False
        deadline.acknowledge()
        return True

    def expired(self) -> bool:
        return self.deadline is not None and self.deadline.expired()

    def remaining(self, clock: Clock) -> float:
        return math.inf if self.deadline_at is None else self.deadline_at - clock()

    def cleanup_bound(self, ctx: UnitContext) -> float:
        """How long the caller may wait for a cleanup: never past deadline + allowance."""
        left = self.remaining(ctx.clock) + ctx.allowance
        return max(0.0, min(ctx.cleanup_timeout, left))


# -- nesting -------------------------------------------------------------------------------


@dataclass(slots=True)
class Active:
    key: object
    session: AsyncSession
    task: object


_active: contextvars.ContextVar[Active | None] = contextvars.ContextVar(
    "resilient_db_active_unit", default=None
)


def enter(key: object, session: AsyncSession) -> contextvars.Token[Active | None]:
    return _active.set(Active(key, session, asyncio.current_task()))


def leave(token: contextvars.Token[Active | None]) -> None:
    _active.reset(token)


def joinable(key: object) -> Active | None:
    """The unit active on this task for ``key`` (a nested unit joins it), if any."""
    active = _active.get()
    if active is not None and active.key is key and active.task is asyncio.current_task():
        return active
    return None


# -- bounded work in a task of its own ------------------------------------------------------

_background: set[asyncio.Future[Any]] = set()


async def bounded(work: Coroutine[Any, Any, object], seconds: float) -> bool:
    """Run ``work`` in a task of its own and wait for it at most ``seconds``: True if it
    finished. The caller's cancellation propagates at once; ``work`` then goes on in the
    background, so it must bound itself (every cleanup here does)."""
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    done, _ = await asyncio.wait((task,), timeout=seconds)
    return bool(done)


async def drain(seconds: float) -> None:
    """Wait (at most ``seconds``) for the background work of every unit to finish."""
    pending: list[Awaitable[Any]] = list(_background)
    if pending:
        await asyncio.wait(pending, timeout=seconds)  # type: ignore[type-var]
