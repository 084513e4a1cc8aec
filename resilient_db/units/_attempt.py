"""One attempt of a unit of work: its options, its state, its errors and its events.

An attempt is a fresh ``AsyncSession``: breaker permit → checkout + BEGIN → the caller's
body → [xid capture] → COMMIT. On failure it classifies the error for its phase, cleans up
(rolls back, or invalidates a connection that may be broken or mid-query), records the
outcome in the breaker, and settles a lost COMMIT with the server (``_commit``).
:class:`~resilient_db.Database` strings attempts together with the retry policy.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resilient_db._errors import CommitOutcomeUnknown, ResilientDBError
from resilient_db.classify import Classification, ErrorKind, Phase
from resilient_db.engine import WROTE_KEY, server_in_hot_standby, timeline_supported
from resilient_db.policies import BreakerPermit, RetryDecision, RetryPolicy
from resilient_db.units._commit import (
    CommitOutcome,
    TxnIdentity,
    capture_identity,
    resolve_commit,
)

if TYPE_CHECKING:
    from resilient_db.units._database import Database

__all__ = ["DeadlineExceeded", "UnitEvent", "UnitListener", "UnitOptions"]

logger = logging.getLogger("resilient_db")

_DEFAULT: Any = object()
_READ_ONLY = {"postgresql_readonly": True}


class DeadlineExceeded(ResilientDBError, TimeoutError):
    """A unit of work did not finish within its deadline.

    ``__cause__`` is the last database error if an attempt failed before the deadline.
    """

    def __init__(self, message: str, *, name: str | None, deadline: float, attempts: int) -> None:
        self.name = name
        self.deadline = deadline
        self.attempts = attempts
        super().__init__(message)


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitOptions:
    """Per-unit options; ``Database(...)`` holds the defaults, calls may override them.

    * ``deadline``: seconds for the whole unit (every attempt, sleep and checkout wait);
      ``None`` for none (not recommended).
    * ``idempotent``: the body may safely run twice; skips commit-outcome resolution (a lost
      COMMIT is simply retried) and its one round trip.
    * ``read_only``: BEGIN READ ONLY; never captures an xid.
    * ``retry``: the :class:`RetryPolicy` (``None``: the database's).
    * ``name``: for logs and events.
    """

    deadline: float | None = 30.0
    idempotent: bool = False
    read_only: bool = False
    retry: RetryPolicy | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None and (
            isinstance(self.deadline, bool)
            or not isinstance(self.deadline, int | float)
            or not math.isfinite(self.deadline)
            or self.deadline <= 0
        ):
            raise ValueError(
                f"deadline must be a finite number of seconds > 0 (or None), got {self.deadline!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitEvent:
    """Something that happened to a unit of work; passed to every :class:`UnitListener`.

    ``event`` is one of the stable names ``unit.attempt_failed``, ``unit.deadline_exceeded``,
    ``commit.resolved``, ``commit.unknown``, ``retry.scheduled`` (``sleep`` is the backoff
    about to be slept) and ``retry.gave_up`` (``outcome`` is why: ``attempts``, ``deadline``
    or ``budget`` — the retry budget is exhausted).
    """

    event: str
    name: str | None
    attempt: int
    elapsed: float
    category: str | None = None
    sqlstate: str | None = None
    kind: str | None = None
    xid: int | None = None
    outcome: str | None = None
    error_type: str | None = None
    sleep: float | None = None


UnitListener = Callable[[UnitEvent], None]


@dataclass(slots=True)
class _Active:
    key: object
    session: AsyncSession
    task: object


_active: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "resilient_db_active_unit", default=None
)


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # pragma: no cover - not under asyncio
        return None


def _joinable(key: object) -> _Active | None:
    active = _active.get()
    if active is not None and active.key is key and active.task is _current_task():
        return active
    return None


@dataclass(slots=True)
class _Call:
    """Mutable state of one unit call (never shared)."""

    options: UnitOptions
    started: float
    scope: anyio.CancelScope | None = None
    attempts: int = 0
    last_exc: BaseException | None = None
    last: Classification | None = None
    decisions: dict[int, RetryDecision] = field(default_factory=dict)

    def decide(self, exc: BaseException) -> RetryDecision | None:
        return self.decisions.get(id(exc))


async def _invalidate(session: AsyncSession) -> None:
    """Terminate the session's connection (never returned to the pool politely)."""
    try:
        await session.invalidate()
    except Exception:  # the connection is gone either way
        logger.debug("unit.invalidate_failed")


class _Attempt:
    """One attempt: a fresh session, its breaker permit and the phase it reached."""

    __slots__ = ("call", "conn", "db", "ident", "permit", "phase", "session", "started", "token")

    def __init__(self, db: Database, call: _Call) -> None:
        self.db = db
        self.call = call
        self.session: AsyncSession | None = None
        self.conn: AsyncConnection | None = None
        self.permit: BreakerPermit | None = None
        self.phase = Phase.CHECKOUT
        self.ident: TxnIdentity | None = None
        self.token: contextvars.Token[_Active | None] | None = None
        self.started = 0.0

    async def begin(self) -> AsyncSession:
        db = self.db
        self.call.attempts += 1
        self.started = time.perf_counter()
        breaker = db.breaker
        if breaker is not None:
            self.permit = await breaker.acquire_async()
        session = self.session = db._make_session()
        self.token = _active.set(_Active(db._key, session, _current_task()))
        try:
            conn = self.conn = await session.connection(
                execution_options=_READ_ONLY if self.call.options.read_only else None
            )
            conn.sync_connection.info.pop(WROTE_KEY, None)  # type: ignore[union-attr]
        except BaseException as exc:
            await self.fail(exc)
            raise
        self.phase = Phase.STATEMENT
        return session

    async def commit(self) -> None:
        """Flush, capture the xid if the transaction wrote, COMMIT, record success."""
        session = self.session
        assert session is not None
        options = self.call.options
        try:
            if not options.read_only:
                sync = session.sync_session
                if sync.new or sync.deleted or sync.dirty:
                    await session.flush()  # COMMIT would flush anyway; capture after it
                if not options.idempotent and self._wrote():
                    self.ident = await capture_identity(
                        session, with_timeline=timeline_supported(self.db.engine)
                    )
            self.phase = Phase.COMMIT
            await session.commit()
        except BaseException as exc:
            await self.fail(exc)  # returns only when the COMMIT was resolved as applied
        else:
            if self.permit is not None:
                self.permit.success(time.perf_counter() - self.started)
            # After a COMMIT the connection goes back to the pool without I/O: no need for
            # the shielded, bounded close of the failure path. But the unit has succeeded:
            # nothing that happens while closing may turn it into a failure.
            self.session = None
            try:
                await session.close()
            except BaseException as exc:
                await self._discard(session, exc)
        finally:
            self._leave()

    async def _discard(self, session: AsyncSession, exc: BaseException) -> None:
        """The close after a successful COMMIT failed: drop the connection, keep the result.

        Re-raises only a cancellation that is not our own deadline's (the caller asked to
        stop; the COMMIT is done, which the caller cannot learn from a cancellation).
        """
        logger.info("unit.close_failed", extra={"error_type": type(exc).__qualname__})
        with anyio.CancelScope(shield=True):
            await _invalidate(session)
        scope = self.call.scope
        if not isinstance(exc, Exception) and not (scope is not None and scope.cancel_called):
            raise exc

    def _wrote(self) -> bool:
        conn = self.conn
        return conn is not None and bool(conn.sync_connection.info.get(WROTE_KEY))  # type: ignore[union-attr]

    def _leave(self) -> None:
        if self.token is not None:
            _active.reset(self.token)
            self.token = None

    def _in_recovery(self) -> bool | None:
        """Context for a 25006 (read-only transaction): was the server a standby?

        The server's ``in_hot_standby`` report is taken only as evidence *for* a standby:
        a standby promoted between the failed write and this check already reports
        ``off``, and calling that a program error would surface a failover to the caller.
        A unit declared ``read_only`` says the opposite (its own READ ONLY). Otherwise
        unknown, which the classifier treats as a failover.
        """
        try:
            assert self.conn is not None
            raw: Any = self.conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        except Exception:
            raw = None
        if raw is not None and server_in_hot_standby(raw):
            return True
        return False if self.call.options.read_only else None

    async def fail(self, exc: BaseException) -> None:
        """Classify ``exc``, clean up, record it; re-raise unless a lost COMMIT applied."""
        db, call = self.db, self.call
        own_timeout = call.scope is not None and call.scope.cancel_called
        cls = db.classifier.classify(
            exc, phase=self.phase, in_recovery=self._in_recovery(), own_timeout=own_timeout
        )
        call.last_exc, call.last = exc, cls
        broken = (
            not isinstance(exc, Exception)
            or cls.invalidate_pool
            or cls.kind is ErrorKind.COMMIT_UNKNOWN
            or cls.category in ("connection_lost", "timeout", "server_unavailable", "failover")
        )
        await self._close(invalidate=broken)
        self._leave()
        elapsed = time.perf_counter() - self.started
        permit = self.permit
        if not isinstance(exc, Exception) and not own_timeout:
            # Cancellation is not a failure. A COMMIT it interrupted has an unknown outcome.
            if permit is not None:
                permit.ignore()
            if self.phase is Phase.COMMIT:
                db._emit("commit.unknown", call, cls, xid=self._xid(), outcome="cancelled")
            return self._reraise(exc)
        if permit is not None:
            if (own_timeout and not isinstance(exc, Exception)) or (
                cls.counts_toward_breaker
                and (self.phase is Phase.CHECKOUT or cls.category != "connection_lost")
            ):
                # Our own deadline expiring mid-attempt counts: a database that does not
                # answer in time (a black-holed network) is as unavailable as one that
                # refuses, and only failures can open the breaker.
                permit.failure()
            else:
                # A connection lost after checkout says little about the database (one
                # backend killed, one idle timeout): if the server is really down, the next
                # attempt's checkout fails and counts.
                permit.ignore()
        db._emit("unit.attempt_failed", call, cls, elapsed=elapsed)
        if cls.kind is ErrorKind.COMMIT_UNKNOWN or (own_timeout and self.phase is Phase.COMMIT):
            if await self._resolve(exc, cls, own_timeout):
                return None  # the server committed: the unit succeeded
        elif cls.retryable and not own_timeout:
            call.decisions[id(exc)] = RetryDecision(
                category=cls.category, retry_after=cls.retry_after
            )
        return self._reraise(exc)

    def _xid(self) -> int | None:
        return self.ident.xid if self.ident is not None else None

    @staticmethod
    def _reraise(exc: BaseException) -> None:
        raise exc

    async def _resolve(self, exc: BaseException, cls: Classification, own_timeout: bool) -> bool:
        """Settle a lost COMMIT. True: it was applied; False: it was not (retryable)."""
        db, call = self.db, self.call
        ident = self.ident
        if ident is None:
            if call.options.idempotent or call.options.read_only or not self._wrote():
                # Nothing to lose by running it again.
                if not own_timeout:
                    call.decisions[id(exc)] = RetryDecision(category=cls.category)
                return False
            db._emit("commit.unknown", call, cls, outcome="no_xid")
            raise CommitOutcomeUnknown(
                f"the connection was lost during COMMIT of unit {call.options.name!r} and its "
                "transaction id was not captured, so its outcome is unknown; make the unit "
                "idempotent or check the data",
                xid=None,
                attempts=call.attempts,
            ) from exc
        # Resolve within what is left of the unit's deadline. When little or nothing is left
        # (the deadline fired during COMMIT), resolve shielded for resolve_timeout: the
        # cancellation allowance. Either way it is bounded, and a deadline never turns a
        # COMMIT in doubt into a plain failure.
        remaining = math.inf
        if call.options.deadline is not None:
            remaining = call.started + call.options.deadline - time.monotonic()
        shield = own_timeout or remaining < db.resolve_timeout
        timeout = db.resolve_timeout if shield else min(remaining - 0.005, 30.0)
        try:
            with anyio.CancelScope(shield=shield):
                outcome = await resolve_commit(db.engine, ident, timeout=timeout)
        except BaseException:
            if call.scope is not None and call.scope.cancel_called:
                outcome = CommitOutcome.UNKNOWN  # our deadline cut the resolution short
            else:
                raise  # the caller cancelled: propagate at once
        db._emit("commit.resolved", call, cls, xid=ident.xid, outcome=outcome.value)
        if outcome is CommitOutcome.COMMITTED:
            return True
        if outcome is CommitOutcome.ABORTED:
            exc.add_note(
                f"resilient_db: the connection was lost during COMMIT; the server rolled the "
                f"transaction back (pg_xact_status({ident.xid}) = aborted), so it is safe to "
                "run again"
            )
            if not own_timeout:
                call.decisions[id(exc)] = RetryDecision(category=cls.category)
            return False
        db._emit("commit.unknown", call, cls, xid=ident.xid, outcome="unknown")
        raise CommitOutcomeUnknown(
            f"the connection was lost during COMMIT of unit {call.options.name!r} (xid "
            f"{ident.xid}) and the server could not say whether it committed; query "
            f"pg_xact_status('{ident.xid}') later or check the data before retrying",
            xid=ident.xid,
            attempts=call.attempts,
            timeline=ident.timeline,
        ) from exc

    async def _close(self, *, invalidate: bool = False) -> None:
        """Return the connection politely, or invalidate (terminate) it; always bounded."""
        session = self.session
        if session is None:
            return
        self.session = None
        with anyio.CancelScope(shield=True):
            if not invalidate:
                with anyio.move_on_after(self.db.cleanup_timeout) as scope:
                    try:
                        await session.close()
                        return
                    except Exception:
                        pass
                if not scope.cancelled_caught:
                    logger.debug("unit.close_failed")
            await _invalidate(session)
