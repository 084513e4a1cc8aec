"""The block forms of a unit of work: ``db.transaction()`` and ``db.attempts()``.

Their body is the caller's ``async with`` block, so the unit's deadline (one timer
handle) is armed in ``__aenter__`` and disarmed in ``__aexit__``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db.policies import RetryLoop
from resilient_db.units._attempt import Attempt
from resilient_db.units._context import Active, Call, UnitContext, joinable
from resilient_db.units._options import DeadlineExceeded, UnitOptions
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


class Transaction:
    """The async context manager returned by :meth:`Database.transaction`."""

    __slots__ = ("_attempt", "_call", "_ctx", "_joined", "_key", "_options")

    def __init__(self, ctx: UnitContext, options: UnitOptions, key: str | None = None) -> None:
        self._ctx = ctx
        self._options = options
        self._key = key
        self._joined: Active | None = None
        self._call: Call | None = None
        self._attempt: Attempt[Any] | None = None

    async def __aenter__(self) -> AsyncSession:
        ctx = self._ctx
        joined = joinable(ctx.key)
        if joined is not None:
            self._joined = joined
            return joined.session
        call = self._call = Call(self._options, ctx.clock(), self._key)
        observed = bool(ctx.reporter.listeners)
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
        assert self._attempt is not None
        assert self._call is not None
        outcome = await _settle(self._attempt, exc)
        # The body is never retried here: a retryable error ends the block like any other.
        error = None if isinstance(outcome, Committed | Replayed) else outcome.error
        try:
            _leave(self._ctx, self._call, error)
        except BaseException as late:
            error = late
            raise
        finally:
            if self._ctx.reporter.listeners:
                finished(self._ctx, self._call, error)
        if error is not None and error is not exc:
            raise error
        # None: committed; ``exc``: the original propagates unchanged


class Attempts:
    """The async iterator returned by :meth:`Database.attempts`."""

    __slots__ = ("_call", "_ctx", "_done", "_joined", "_loop", "_options", "_pending")

    def __init__(self, ctx: UnitContext, options: UnitOptions) -> None:
        self._ctx = ctx
        self._options = options
        self._call = Call(options, ctx.clock())
        self._loop: RetryLoop | None = None
        self._pending: Retry | None = None
        self._done = False
        self._joined = joinable(ctx.key)

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
            except BaseException:
                self._done = True
                raise
        return AttemptBlock(self)

    def _settle(self, outcome: Ended[Any]) -> bool:
        """After a block: True to swallow its error and run another attempt."""
        if isinstance(outcome, Retry):
            self._pending = outcome
            return True
        self._done = True
        loop = self._loop
        if isinstance(outcome, Committed | Replayed):
            if loop is not None:
                loop.succeeded()
            return False
        if loop is not None:
            error = outcome.error
            if isinstance(error, Exception):
                loop.not_retryable(error)
            else:
                loop.cancelled()
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
        try:
            self._attempt = await _enter(outer._ctx, outer._call)
        except BaseException:
            outer._done = True
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
        outcome = await _settle(self._attempt, exc)
        error = None if isinstance(outcome, Committed | Replayed) else outcome.error
        try:
            _leave(outer._ctx, outer._call, error)
        except DeadlineExceeded:
            outer._done = True
            raise
        if outer._settle(outcome):
            return True  # retryable: swallowed, the loop runs another attempt
        if error is None or error is exc:
            return False  # committed, or the original propagates unchanged
        raise error
