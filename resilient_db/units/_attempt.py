"""One attempt of a unit of work, ending as a typed :mod:`outcome <resilient_db.units._outcome>`.

breaker permit → a place in the engine's fair queue (``_gate``) → fresh ``AsyncSession``:
checkout + BEGIN (lazily, by the first statement) → the caller's body → [xid capture] →
COMMIT. On failure it classifies the error for its phase, settles the breaker
permit, hands the session to a bounded cleanup (a task of its own: the caller waits at most
until its deadline plus the allowance, and a cancellation propagates at once), and settles a
lost COMMIT with the server (``_commit``). It reads a :class:`UnitContext`; it never calls
back into ``Database``.

Cancellation is never swallowed and never retried: the caller's cancellation (or
``KeyboardInterrupt``) invalidates the connection it interrupted, leaves the breaker alone
and propagates. Our own deadline firing is the unit's business: during COMMIT it makes the
outcome in doubt (``CommitOutcomeUnknown`` now, the resolution in the background).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db._errors import AlreadyApplied, CircuitOpenError
from resilient_db.classify import Classification, ErrorKind, Phase
from resilient_db.engine import WROTE_KEY, server_in_hot_standby, timeline_supported
from resilient_db.policies import BreakerPermit, RetryDecision
from resilient_db.units._commit import TxnIdentity, capture_identity
from resilient_db.units._context import Active, Call, UnitContext, bounded, enter, leave
from resilient_db.units._doubt import LostCommit
from resilient_db.units._gate import Gate, release
from resilient_db.units._keys import KeyRecord
from resilient_db.units._options import UnitEvent
from resilient_db.units._outcome import Committed, Ended, Opened, Outcome, Raise, Replayed, Retry
from resilient_db.units._session import BEGAN

__all__ = ["Attempt", "run_attempt"]

logger = logging.getLogger("resilient_db")

T = TypeVar("T")

_READ_ONLY = {"postgresql_readonly": True}
_BROKEN = frozenset({"connection_lost", "timeout", "server_unavailable", "failover"})
_NOTHING: Any = object()
_CANCEL_WAIT = 0.05  #: a cancelled caller waits this long for the drop (then background)


class Attempt(LostCommit[T]):
    """One attempt: a fresh session, its breaker permit and the phase it reached."""

    __slots__ = (
        "call",
        "conn",
        "ctx",
        "gate",
        "ident",
        "permit",
        "phase",
        "queued",
        "record",
        "result",
        "session",
        "started",
        "token",
        "wrote",
    )

    def __init__(self, ctx: UnitContext, call: Call) -> None:
        self.ctx = ctx
        self.call = call
        self.session: AsyncSession | None = None
        self.conn: Connection | None = None
        self.permit: BreakerPermit | None = None
        self.gate: Gate | None = None  # our place in the engine's fair queue, once taken
        self.queued = False
        self.phase = Phase.CHECKOUT
        self.ident: TxnIdentity | None = None
        self.record: KeyRecord | None = None
        self.token: contextvars.Token[Active | None] | None = None
        self.started = 0.0
        self.wrote = False
        self.result: T = _NOTHING

    # -- the happy path ------------------------------------------------------------------

    async def admit(self) -> CircuitOpenError | None:
        """A breaker permit, or the rejection (after waiting for a probe if the unit asked)."""
        ctx, call = self.ctx, self.call
        call.attempts += 1
        breaker = ctx.breaker
        if breaker is None:
            return None
        while True:
            try:
                self.permit = await breaker.acquire_async()
                return None
            except CircuitOpenError as exc:
                if not call.options.wait_for_breaker:
                    return exc
                wait = max(exc.retry_after, 0.01)  # half-open and busy: look again soon
                if wait >= call.remaining(ctx.clock):
                    return exc  # the deadline does not outlast the breaker: fail now
                await ctx.retry.sleep(wait)  # bounded: by the deadline (just checked)

    def enter_gate(self) -> bool:
        """True: a place in the engine's fair queue now (or no queue); else await queue()."""
        gate = self.ctx.gate
        if gate is None:
            return True
        if gate.try_enter():
            self.gate = gate
            return True
        return False

    async def queue(self) -> None:
        """Wait for a place, first come first served (bounded by pool_timeout)."""
        gate = self.ctx.gate
        assert gate is not None
        self.queued = True
        await gate.enter()
        self.queued = False
        self.gate = gate

    def open(self) -> AsyncSession:
        """A fresh session; the connection is checked out lazily, by the first statement
        (no extra round trip into SQLAlchemy's greenlet): :meth:`began` marks the phase."""
        ctx = self.ctx
        self.started = ctx.clock()
        session = self.session = ctx.make_session()
        session.sync_session.info[BEGAN] = self.began
        self.token = enter(ctx.key, session)
        return session

    def began(self, conn: Connection) -> None:
        """SQLAlchemy's ``after_begin``: checkout and BEGIN done, the statements start."""
        if self.conn is None:
            self.conn = conn
            conn.info.pop(WROTE_KEY, None)
            self.phase = Phase.STATEMENT

    async def begin(self) -> AsyncSession:
        """Open a session, check out and BEGIN now (the block forms, read-only units)."""
        session = self.open()
        await session.connection(
            execution_options=_READ_ONLY if self.call.options.read_only else None
        )
        return session

    async def commit(self) -> bool:
        """Flush, record the key or capture the xid if the transaction wrote, COMMIT (raises
        on failure). False: the key was already applied — nothing was committed."""
        session = self.session
        assert session is not None
        options, key = self.call.options, self.call.key
        if not options.read_only:
            sync = session.sync_session
            if sync.new or sync.deleted or sync.dirty:
                await session.flush()  # COMMIT would flush anyway; capture after it
            # Read now: after a lost COMMIT the connection may be closed (never touch it).
            conn = self.conn
            self.wrote = conn is not None and bool(conn.info.get(WROTE_KEY))
            if key is not None:  # the key's insert replaces the xid capture
                record = self.record = await self.ctx.ledger.record(session, key, self.result)
                if not record.inserted:
                    return False
                self.wrote = True
            elif self.wrote and not options.idempotent:
                self.ident = await capture_identity(
                    session, with_timeline=timeline_supported(self.ctx.engine)
                )
        self.phase = Phase.COMMIT
        await session.commit()
        return True

    async def committed(self) -> Ended[T]:
        """After COMMIT: breaker success, return the connection; the unit has succeeded."""
        stop = await self._close_after_success()
        return stop if stop is not None else Committed(self.result)

    async def replayed(self, *, block: bool = False) -> Ended[T]:
        """The key was already applied: roll this attempt back (its writes must not commit
        twice) and answer with the stored result, or :class:`AlreadyApplied`."""
        stop = await self._close_after_success()  # close() rolls the transaction back
        if stop is not None:
            return stop
        assert self.record is not None
        previous = self.record.previous
        assert previous is not None
        if block or not previous.has_result:
            return Raise(previous.already_applied())
        try:
            return Replayed(previous.replay())
        except AlreadyApplied as exc:  # pragma: no cover - has_result says it is stored
            return Raise(exc)

    async def _close_after_success(self) -> Raise | None:
        """Nothing while closing may turn a success into a failure — but a caller's
        cancellation still propagates (the connection it interrupted is dropped)."""
        ctx, call = self.ctx, self.call
        if self.permit is not None:
            self.permit.success(ctx.clock() - self.started)
        session, self.session = self.session, None
        assert session is not None
        try:
            await session.close()
        except BaseException as exc:
            logger.info(
                "unit.close_failed",
                extra={"unit": call.options.name, "error_type": type(exc).__qualname__},
            )
            own = call.own_deadline()
            gate, self.gate = self.gate, None  # the release gives the place back
            await bounded(
                release(session, True, ctx.cleanup_timeout, gate), call.cleanup_bound(ctx)
            )
            if not isinstance(exc, Exception) and not own:
                return Raise(exc)
        finally:
            self.leave()
            gate, self.gate = self.gate, None
            if gate is not None:
                gate.exit()
        return None

    def leave(self) -> None:
        if self.token is not None:
            leave(self.token)
            self.token = None

    # -- failure ---------------------------------------------------------------------------

    def _in_recovery(self) -> bool | None:
        """Context for a 25006 (read-only transaction): was the server a standby?

        ``in_hot_standby`` is evidence only *for* a standby (one promoted since the failed
        write already reports ``off``: calling that a program error would surface a
        failover). A ``read_only`` unit says no (its own READ ONLY); otherwise unknown,
        which the classifier treats as a failover.
        """
        try:
            assert self.conn is not None
            raw: Any = self.conn.connection.driver_connection
        except Exception:
            raw = None
        if raw is not None and server_in_hot_standby(raw):
            return True
        return False if self.call.options.read_only else None

    async def fail(self, exc: BaseException) -> Ended[T]:
        """Classify ``exc``, settle the permit, clean up; the attempt's outcome."""
        ctx, call = self.ctx, self.call
        own = call.own_deadline()
        cancelled = not isinstance(exc, Exception) and not own
        in_recovery = self._in_recovery() if isinstance(exc, Exception) else None
        cls = ctx.classifier.classify(
            exc, phase=self.phase, in_recovery=in_recovery, own_timeout=own
        )
        call.last_exc, call.last = exc, cls
        self.leave()
        self._settle_permit(exc, cls, own=own, cancelled=cancelled)
        self._emit("unit.attempt_failed", cls, exc)
        if cancelled:
            if self.phase is Phase.COMMIT:
                # The caller stopped waiting; the outcome is settled in the background.
                self._emit("commit.unknown", cls, exc, outcome="cancelled")
                self._resolve_later(cls, exc)
            await self._cleanup(invalidate=True, bound=_CANCEL_WAIT)
            return Raise(exc)
        broken = (
            not isinstance(exc, Exception)
            or cls.invalidate_pool
            or cls.kind is ErrorKind.COMMIT_UNKNOWN
            or cls.category in _BROKEN
        )
        try:
            await self._cleanup(invalidate=broken)
        except BaseException:
            if not call.own_deadline():
                raise  # the caller cancelled meanwhile: propagate at once
            own = True  # our deadline fired while cleaning up
        if own and cls.kind is ErrorKind.COMMIT_UNKNOWN:
            return self._in_doubt(cls, exc, "deadline")
        if own and not isinstance(exc, Exception):
            return Raise(exc)  # the runner turns our deadline into DeadlineExceeded
        if cls.kind is ErrorKind.COMMIT_UNKNOWN:
            return await self._resolve(cls, exc)
        if cls.retryable:
            assert isinstance(exc, Exception)
            decision = RetryDecision(
                category=cls.category, retry_after=cls.retry_after, max_retries=cls.max_retries
            )
            return Retry(exc, decision)
        return Raise(exc)

    def _settle_permit(
        self, exc: BaseException, cls: Classification, *, own: bool, cancelled: bool
    ) -> None:
        permit = self.permit
        if permit is None:
            return
        self.permit = None
        if cancelled or self.queued:
            # The caller's decision, or our own queue's wait: nothing about the database.
            permit.ignore()
        elif own:
            # Our deadline expiring in the library's own I/O (checkout, COMMIT) counts: a
            # database that does not answer in time is as unavailable as one that refuses.
            # In the caller's statements it may be the caller's slow query: not counted.
            if self.phase is Phase.STATEMENT:
                permit.ignore()
            else:
                permit.failure(self.ctx.clock() - self.started)
        elif cls.counts_toward_breaker and cls.category != "connection_lost":
            permit.failure(self.ctx.clock() - self.started)
        elif cls.counts_toward_breaker and self.phase is Phase.CHECKOUT:
            # A pooled connection the server had accepted died at checkout/BEGIN (a killed
            # backend, a pool-wide invalidation): never opens the breaker by itself, only
            # through a trip its health check confirms against the server.
            permit.failure(self.ctx.clock() - self.started, accepted=True)
        else:
            # A connection lost after checkout says little about the database (one backend
            # killed, one idle timeout): if the server is really down, the next attempt's
            # checkout fails and counts.
            permit.ignore()

    async def _cleanup(self, *, invalidate: bool, bound: float | None = None) -> None:
        session, self.session = self.session, None
        gate, self.gate = self.gate, None
        if session is None:
            if gate is not None:
                gate.exit()
            return
        ctx = self.ctx
        wait = self.call.cleanup_bound(ctx)
        if bound is not None:
            wait = min(wait, bound)
        await bounded(release(session, invalidate, ctx.cleanup_timeout, gate), wait)

    def _emit(
        self,
        event: str,
        cls: Classification | None,
        exc: BaseException | None,
        *,
        outcome: str | None = None,
    ) -> None:
        ctx, call = self.ctx, self.call
        ctx.reporter.emit(
            UnitEvent(
                event=event,
                name=call.options.name,
                attempt=call.attempts,
                elapsed=ctx.clock() - call.started,
                category=cls.category if cls is not None else None,
                sqlstate=cls.sqlstate if cls is not None else None,
                kind=cls.kind.value if cls is not None else None,
                xid=self.ident.xid if self.ident is not None else None,
                outcome=outcome,
                error_type=type(exc).__qualname__ if exc is not None else None,
            )
        )


async def run_attempt(
    ctx: UnitContext, call: Call, body: Callable[[AsyncSession], Awaitable[T]]
) -> Ended[T]:
    """One whole attempt of the function form (``db.run``, ``@transactional``)."""
    a: Attempt[T] = Attempt(ctx, call)
    rejected = await a.admit()
    if rejected is not None:
        return Raise(rejected)
    try:
        if not a.enter_gate():
            await a.queue()
        session = await a.begin() if call.options.read_only else a.open()
        a.result = await body(session)
        applied = await a.commit()
    except BaseException as exc:
        return await a.fail(exc)
    return await a.committed() if applied else await a.replayed()


async def open_attempt(ctx: UnitContext, call: Call) -> Outcome[Attempt[Any]]:
    """The block forms' first step: a permit, a connection and BEGIN."""
    a: Attempt[Any] = Attempt(ctx, call)
    rejected = await a.admit()
    if rejected is not None:
        return Raise(rejected)
    try:
        if not a.enter_gate():
            await a.queue()
        await a.begin()
    except BaseException as exc:
        return await a.fail(exc)
    return Opened(a)
