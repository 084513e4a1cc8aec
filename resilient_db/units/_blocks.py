"""The block forms of a unit of work: ``db.transaction()`` and ``db.attempts()``.

Their body is the caller's ``async with`` block, so the unit's deadline (one timer
handle) is armed in ``__aenter__`` and disarmed in ``__aexit__``.

Both tell the listeners ``unit.started`` and ``unit.finished`` once per outermost unit, as
``db.run`` does (a joined block tells nothing; no listener, no cost): see
:class:`Transaction` and :class:`Attempts` for when each form starts and ends.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db.policies import RetryLoop
from resilient_db.units._attempt import Attempt
from resilient_db.units._context import Active, Call, UnitContext, joinable
from resilient_db.units._options import UnitOptions
from resilient_db.units._outcome import Committed, Ended, Replayed, Retry
from resilient_db.units._runner import deadline_error, finished, open_unit, started

__all__ = ["AttemptBlock", "Attempts", "Transaction"]


async def _settle(attempt: Attempt[Any], exc: BaseException | None) -> Ended[Any]:
    """The end of a block: COMMIT (``exc`` is None) or fail the attempt with ``exc``."""
    if exc is None:
        try:
            applied = await attempt.commit()
        except BaseException as err:
            return await attempt.fail(err)
        return await attempt.committed() if applied else await attempt.replayed(block=True)
    return await attempt.fail(exc)


async def _enter(ctx: UnitContext, call: Call) -> Attempt[Any]:
    """Arm the deadline for what is left of it, then open an attempt (retried)."""
    call.arm(ctx.clock)
    try:
        return await open_unit(ctx, call)
    except BaseException as exc:
        _leave(ctx, call, exc)
        raise


def _leave(ctx: UnitContext, call: Call, error: BaseException | None) -> None:
    """Leave the deadline: raises :class:`DeadlineExceeded` when it ended the block."""
    ours = isinstance(error, asyncio.CancelledError) and call.own_deadline()
    call.disarm()
    if ours:
        raise deadline_error(ctx, call)


async def _close(
    ctx: UnitContext, call: Call, attempt: Attempt[Any], exc: BaseException | None
) -> tuple[Ended[Any], BaseException | None]:
    """Settle the block and leave its deadline: the outcome and the error that ends it
    (None: committed). Raises what ended it late — :class:`DeadlineExceeded`, or the
    caller's cancellation arriving during the cleanup — with the deadline left either way."""
    try:
        outcome = await _settle(attempt, exc)
    except BaseException as late:
        _leave(ctx, call, late)
        raise
    error = None if isinstance(outcome, Committed | Replayed) else outcome.error
    _leave(ctx, call, error)
    return outcome, error


class Transaction:
    """The async context manager returned by :meth:`Database.transaction`.

    Listeners hear ``unit.started`` when the block is entered and ``unit.finished`` once
    when it ends: ``ok`` when it committed, else ``error`` with the error that left the
    block — the body's, a failed opening (``CircuitOpenError``, the last error once the
    retry policy stops), ``AlreadyApplied`` (its key was applied before),
    ``DeadlineExceeded``, or the caller's cancellation (``CancelledError``, also when it
    arrives during the cleanup). A ``break``/``return`` inside the block is a normal exit:
    it commits.
    """

    __slots__ = ("_attempt", "_call", "_ctx", "_joined", "_key", "_observed", "_options")

    def __init__(self, ctx: UnitContext, options: UnitOptions, key: str | None = None) -> None:
        self._ctx = ctx
        self._options = options
        self._key = key
        self._joined: Active | None = None
        self._call: Call | None = None
        self._attempt: Attempt[Any] | None = None
        self._observed = False

    async def __aenter__(self) -> AsyncSession:
        ctx = self._ctx
        joined = joinable(ctx.key)
        if joined is not None:
            self._joined = joined
            return joined.session
        call = self._call = Call(self._options, ctx.clock(), self._key)
        observed = self._observed = bool(ctx.reporter.listeners)
        if observed:
            started(ctx, call)
        try:
            self._attempt = await _enter(ctx, call)
        except BaseException as exc:
            if observed:
                finished(ctx, call, exc)
            raise
        assert self._attempt.session is not None
        return self._attempt.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._joined is not None:
            return
        ctx, call, attempt = self._ctx, self._call, self._attempt
        assert attempt is not None
        assert call is not None
        try:
            # The body is never retried here: a retryable error ends the block like any other.
            _, error = await _close(ctx, call, attempt, exc)
        except BaseException as late:
            if self._observed:
                finished(ctx, call, late)
            raise
        if self._observed:
            finished(ctx, call, error)
        if error is not None and error is not exc:
            raise error
        # None: committed; ``exc``: the original propagates unchanged


class Attempts:
    """The async iterator returned by :meth:`Database.attempts`.

    Listeners hear ``unit.started`` when the first attempt's block is entered (a loop left
    before that ran no unit: nothing is told) and ``unit.finished`` once, when the unit
    ends: ``ok`` after the block that commits, else ``error`` with what propagates out of
    the loop — a fatal error, the last error when the retry policy stops (from the loop's
    backoff), a failed opening, ``DeadlineExceeded`` or the caller's cancellation (in a
    block or in a backoff sleep). Retried attempts in between are ``unit.attempt_failed``
    and ``retry.scheduled``, not ends.

    Leaving the loop early: ``break`` (or ``return``) *inside* ``async with attempt`` is a
    normal exit of the block: it commits, and the unit finishes there. Leaving *between*
    blocks, after an attempt whose retryable error was swallowed, abandons the unit — no
    attempt is made any more, and nothing committed; an ``async for`` gives the iterator no
    sign of it, so it is reported when the iterator is closed: :meth:`aclose` (or
    ``async with contextlib.aclosing(db.attempts()) as attempts:``) finishes the unit with
    ``error`` and the last attempt's error (its type and category). A loop left so and
    never closed tells no end (a telemetry span of it stays open). Closing a loop that
    ended, or that never entered a block, tells nothing.
    """

    __slots__ = (
        "_call",
        "_ctx",
        "_done",
        "_joined",
        "_loop",
        "_observed",
        "_options",
        "_pending",
        "_reported",
    )

    def __init__(self, ctx: UnitContext, options: UnitOptions) -> None:
        self._ctx = ctx
        self._options = options
        self._call = Call(options, ctx.clock())
        self._loop: RetryLoop | None = None
        self._pending: Retry | None = None
        self._done = False
        self._joined = joinable(ctx.key)
        self._observed = False  # unit.started told, unit.finished owed
        self._reported = False  # unit.finished told

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> AttemptBlock:
        if self._done:
            raise StopAsyncIteration
        pending, self._pending = self._pending, None
        if pending is not None:
            loop = self._loop
            if loop is None:
                ctx, call = self._ctx, self._call
                loop = self._loop = RetryLoop(
                    pending.error,
                    pending.decision,
                    policy=self._options.retry or ctx.retry,
                    budget=ctx.budget,
                    deadline_at=call.deadline_at,
                    hooks=ctx.reporter.hooks(),
                    name=self._options.name,
                    start=call.started,
                    clock=ctx.clock,
                )
            else:
                loop.failed(pending.error, pending.decision)
            try:
                await loop.backoff()  # re-raises the last error when the policy stops
            except BaseException as exc:
                self._end(exc)
                raise
        return AttemptBlock(self)

    async def aclose(self) -> None:
        """End the loop: a unit abandoned between attempts finishes (``error``, the last
        attempt's error); idempotent, and nothing to do once the unit has ended."""
        if self._done:
            return
        self._pending = None
        if self._loop is not None:
            self._loop.cancelled()  # the retry statistics end: the caller stopped
        self._end(self._call.last_exc)

    def _begin(self) -> None:
        """An attempt's block is entered: the first one starts the unit."""
        if not self._observed and not self._reported and self._ctx.reporter.listeners:
            self._observed = True
            started(self._ctx, self._call)

    def _end(self, error: BaseException | None) -> None:
        """The unit ended (``error`` None: committed); unit.finished if it was started."""
        self._done = True
        if self._observed:
            self._observed = False
            self._reported = True
            finished(self._ctx, self._call, error)

    def _settle(self, outcome: Ended[Any], error: BaseException | None) -> bool:
        """After a block: True to swallow its error and run another attempt."""
        if isinstance(outcome, Retry):
            self._pending = outcome
            return True
        loop = self._loop
        if loop is not None:
            if error is None:
                loop.succeeded()
            elif isinstance(error, Exception):
                loop.not_retryable(error)
            else:
                loop.cancelled()
        self._end(error)
        return False


class AttemptBlock:
    """One attempt of :meth:`Database.attempts`: ``async with attempt as session``."""

    __slots__ = ("_attempt", "_attempts")

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts
        self._attempt: Attempt[Any] | None = None

    async def __aenter__(self) -> AsyncSession:
        outer = self._attempts
        if outer._joined is not None:
            return outer._joined.session
        outer._begin()
        try:
            self._attempt = await _enter(outer._ctx, outer._call)
        except BaseException as exc:
            outer._end(exc)
            raise
        assert self._attempt.session is not None
        return self._attempt.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        outer = self._attempts
        if outer._joined is not None:
            outer._done = True
            return False
        assert self._attempt is not None
        try:
            outcome, error = await _close(outer._ctx, outer._call, self._attempt, exc)
        except BaseException as late:  # DeadlineExceeded, or cancelled during the cleanup
            outer._end(late)
            raise
        if outer._settle(outcome, error):
            return True  # retryable: swallowed, the loop runs another attempt
        if error is None or error is exc:
            return False  # committed, or the original propagates unchanged
        raise error
