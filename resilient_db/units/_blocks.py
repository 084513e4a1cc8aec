"""The block forms of a unit of work: ``db.transaction()`` and ``db.attempts()``.

Their body is the caller's ``async with`` block, so the unit's deadline scope is entered in
``__aenter__`` and left in ``__aexit__`` by hand (:class:`_ScopedAttempt`).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db.policies import RetryDecision, RetryLoop, RetryPolicy
from resilient_db.units._attempt import (
    DeadlineExceeded,
    UnitOptions,
    _Active,
    _Attempt,
    _Call,
    _joinable,
)

if TYPE_CHECKING:
    from resilient_db.units._database import Database

__all__ = ["AttemptBlock", "Attempts", "Transaction"]


class _ScopedAttempt:
    """One attempt under the unit's deadline scope, opened and closed by hand: the shared
    core of :class:`Transaction` and :class:`AttemptBlock` (context managers whose body is
    the caller's block, so the scope is entered in ``__aenter__`` and left in
    ``__aexit__``)."""

    __slots__ = ("attempt", "call", "db", "scope")

    def __init__(self, db: Database, call: _Call) -> None:
        self.db = db
        self.call = call
        self.attempt: _Attempt | None = None
        self.scope: anyio.CancelScope | None = None

    async def open(self, policy: RetryPolicy) -> AsyncSession:
        """Enter the deadline scope; get a healthy connection and BEGIN (retried)."""
        db, call = self.db, self.call
        deadline_at = None
        deadline = call.options.deadline
        if deadline is not None:
            left = deadline - (time.monotonic() - call.started)
            scope = self.scope = anyio.CancelScope(deadline=anyio.current_time() + left)
            scope.__enter__()
            call.scope = scope
            deadline_at = policy.clock() + left

        async def begin() -> _Attempt:
            a = _Attempt(db, call)
            await a.begin()
            return a

        try:
            # Getting a healthy connection and BEGIN is retried here; never the block.
            self.attempt = await db._retry(begin, call, policy, deadline_at)
        except BaseException as exc:
            self.exit_scope(exc)
            raise
        assert self.attempt.session is not None
        return self.attempt.session

    async def close(self, exc: BaseException | None) -> BaseException | None:
        """Commit (``exc`` is None) or fail the attempt; leave the scope.

        Returns the error the block ends with (``exc`` itself, a new one, or None), or
        raises :class:`DeadlineExceeded` when the deadline ended it.
        """
        a = self.attempt
        assert a is not None
        error: BaseException | None = exc
        try:
            if exc is None:
                await a.commit()
            else:
                try:
                    await a.fail(exc)
                finally:
                    a._leave()
        except BaseException as err:
            error = err
        self.exit_scope(error)
        return error

    def exit_scope(self, exc: BaseException | None) -> None:
        scope, self.scope = self.scope, None
        if scope is None:
            return
        caught = scope.__exit__(
            type(exc) if exc is not None else None, exc, exc.__traceback__ if exc else None
        )
        if caught or (scope.cancelled_caught and exc is None):
            raise self.db._deadline_error(self.call) from None


class Transaction:
    """The async context manager returned by :meth:`Database.transaction`."""

    __slots__ = ("_db", "_joined", "_options", "_scoped")

    def __init__(self, db: Database, options: UnitOptions) -> None:
        self._db = db
        self._options = options
        self._joined: _Active | None = None
        self._scoped: _ScopedAttempt | None = None

    async def __aenter__(self) -> AsyncSession:
        db, options = self._db, self._options
        joined = _joinable(db._key)
        if joined is not None:
            self._joined = joined
            return joined.session
        scoped = self._scoped = _ScopedAttempt(db, _Call(options=options, started=time.monotonic()))
        return await scoped.open(options.retry or db.retry)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._joined is not None:
            return
        assert self._scoped is not None
        error = await self._scoped.close(exc)
        if error is not None and error is not exc:
            raise error
        # None: committed; ``exc``: the original propagates unchanged


class Attempts:
    """The async iterator returned by :meth:`Database.attempts`."""

    __slots__ = ("_call", "_db", "_done", "_failed", "_joined", "_loop", "_options", "_policy")

    def __init__(self, db: Database, options: UnitOptions) -> None:
        self._db = db
        self._options = options
        self._policy = options.retry or db.retry
        self._call = _Call(options=options, started=time.monotonic())
        self._loop: RetryLoop | None = None
        self._failed: Exception | None = None
        self._done = False
        self._joined = _joinable(db._key)

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> AttemptBlock:
        if self._done:
            raise StopAsyncIteration
        exc = self._failed
        if exc is not None:
            self._failed = None
            loop = self._loop
            if loop is None:
                loop = self._loop = RetryLoop(
                    exc,
                    self._call.decide(exc) or RetryDecision(),
                    policy=self._policy,
                    budget=self._db.budget,
                    deadline_at=self._deadline_at(),
                    hooks=self._db._hooks(self._call),
                    name=self._options.name,
                )
            else:
                loop.failed(exc, self._call.decide(exc) or RetryDecision())
            await loop.backoff()  # re-raises the last error when the policy stops
        return AttemptBlock(self)

    def _deadline_at(self) -> float | None:
        deadline = self._options.deadline
        if deadline is None:
            return None
        return self._policy.clock() + deadline - (time.monotonic() - self._call.started)

    def _settle(self, exc: BaseException | None) -> bool:
        """After a block: True to swallow ``exc`` and run another attempt."""
        if exc is None:
            self._done = True
            if self._loop is not None:
                self._loop.succeeded()
            elif self._db.budget is not None:
                self._db.budget.deposit()
            return False
        if isinstance(exc, Exception) and self._call.decide(exc) is not None:
            self._failed = exc
            return True
        self._done = True
        if self._loop is not None:
            if isinstance(exc, Exception):
                self._loop.not_retryable(exc)
            else:
                self._loop.cancelled()
        return False


class AttemptBlock:
    """One attempt of :meth:`Database.attempts`: ``async with attempt as session``."""

    __slots__ = ("_attempts", "_scoped")

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts
        self._scoped = _ScopedAttempt(attempts._db, attempts._call)

    async def __aenter__(self) -> AsyncSession:
        outer = self._attempts
        if outer._joined is not None:
            return outer._joined.session
        try:
            return await self._scoped.open(outer._policy)
        except BaseException:
            outer._done = True
            raise

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
        try:
            error = await self._scoped.close(exc)
        except DeadlineExceeded:
            outer._done = True
            raise
        if outer._settle(error):
            return True  # retryable: swallowed, the loop runs another attempt
        if error is None or error is exc:
            return False  # committed, or the original propagates unchanged
        raise error
