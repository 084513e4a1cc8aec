"""One attempt of a unit of work, ending as a typed :mod:`outcome <resilient_db.units._outcome>`.

breaker permit → fresh ``AsyncSession``: checkout + BEGIN → the caller's body → [xid
capture] → COMMIT. On failure it classifies the error for its phase, settles the breaker
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

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resilient_db._errors import AlreadyApplied, CircuitOpenError, CommitOutcomeUnknown
from resilient_db.classify import Classification, ErrorKind, Phase
from resilient_db.engine import WROTE_KEY, server_in_hot_standby, timeline_supported
from resilient_db.policies import BreakerPermit, RetryDecision
from resilient_db.units._commit import CommitOutcome, TxnIdentity, capture_identity
from resilient_db.units._context import Active, Call, UnitContext, bounded, enter, leave
from resilient_db.units._keys import KeyRecord
from resilient_db.units._options import UnitEvent
from resilient_db.units._outcome import Committed, Ended, Opened, Outcome, Raise, Replayed, Retry

__all__ = ["Attempt", "run_attempt"]

logger = logging.getLogger("resilient_db")

T = TypeVar("T")

_READ_ONLY = {"postgresql_readonly": True}
_BROKEN = frozenset({"connection_lost", "timeout", "server_unavailable", "failover"})
_NOTHING: Any = object()
#: How long a cancelled caller waits for the interrupted connection to be dropped (the
#: drop goes on in the background): cancellation propagates well within 100 ms.
_CANCEL_WAIT = 0.05


async def _release(session: AsyncSession, invalidate: bool, timeout: float) -> None:
    """Return the connection politely within ``timeout``, else (or when asked) terminate it."""
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
    except Exception:  # the connection is gone either way
        logger.debug("unit.invalidate_failed")


class Attempt(Generic[T]):
    """One attempt: a fresh session, its breaker permit and the phase it reached."""

    __slots__ = (
        "call",
        "conn",
        "ctx",
        "ident",
        "permit",
        "phase",
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
        self.conn: AsyncConnection | None = None
        self.permit: BreakerPermit | None = None
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

    async def begin(self) -> AsyncSession:
        """Check out a connection and BEGIN (raises; the caller hands errors to fail())."""
        ctx = self.ctx
        self.started = ctx.clock()
        session = self.session = ctx.make_session()
        self.token = enter(ctx.key, session)
        conn = self.conn = await session.connection(
            execution_options=_READ_ONLY if self.call.options.read_only else None
        )
        conn.sync_connection.info.pop(WROTE_KEY, None)  # type: ignore[union-attr]
        self.phase = Phase.STATEMENT
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
            conn = self.conn
            assert conn is not None
            # Read now: after a lost COMMIT the connection may be closed (never touch it).
            self.wrote = bool(conn.sync_connection.info.get(WROTE_KEY))  # type: ignore[union-attr]
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
            await bounded(_release(session, True, ctx.cleanup_timeout), call.cleanup_bound(ctx))
            if not isinstance(exc, Exception) and not own:
                return Raise(exc)
        finally:
            self.leave()
        return None

    def leave(self) -> None:
        if self.token is not None:
            leave(self.token)
            self.token = None

    # -- failure ---------------------------------------------------------------------------

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
            return Retry(exc, RetryDecision(category=cls.category, retry_after=cls.retry_after))
        return Raise(exc)

    def _settle_permit(
        self, exc: BaseException, cls: Classification, *, own: bool, cancelled: bool
    ) -> None:
        permit = self.permit
        if permit is None:
            return
        self.permit = None
        if cancelled:
            permit.ignore()  # the caller's decision says nothing about the database
        elif own:
            # Our deadline expiring in the library's own I/O (checkout, COMMIT) counts: a
            # database that does not answer in time is as unavailable as one that refuses.
            # In the caller's statements it may be the caller's slow query: not counted.
            if self.phase is Phase.STATEMENT:
                permit.ignore()
            else:
                permit.failure(self.ctx.clock() - self.started)
        elif cls.counts_toward_breaker and (
            self.phase is Phase.CHECKOUT or cls.category != "connection_lost"
        ):
            permit.failure(self.ctx.clock() - self.started)
        else:
            # A connection lost after checkout says little about the database (one backend
            # killed, one idle timeout): if the server is really down, the next attempt's
            # checkout fails and counts.
            permit.ignore()

    async def _cleanup(self, *, invalidate: bool, bound: float | None = None) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        ctx = self.ctx
        wait = self.call.cleanup_bound(ctx)
        if bound is not None:
            wait = min(wait, bound)
        await bounded(_release(session, invalidate, ctx.cleanup_timeout), wait)

    # -- a lost COMMIT ---------------------------------------------------------------------

    async def _resolve(self, cls: Classification, exc: BaseException) -> Ended[T]:
        """The connection died during COMMIT: committed, safe to retry, or in doubt."""
        ctx, call = self.ctx, self.call
        ident = self.ident
        if self.record is not None:
            return await self._resolve_key(cls, exc, self.record)
        if ident is None:
            if call.options.idempotent or call.options.read_only or not self.wrote:
                assert isinstance(exc, Exception)
                return Retry(exc, RetryDecision(category=cls.category))  # nothing to lose
            return self._in_doubt(cls, exc, "no_xid")
        task = self._resolve_later(cls, exc)
        assert task is not None
        outcome: CommitOutcome | None = None
        try:
            done, _ = await asyncio.wait((task,), timeout=max(0.0, call.remaining(ctx.clock)))
            if done:
                outcome = task.result()
        except BaseException:
            if not call.own_deadline():
                raise  # the caller cancelled: propagate at once (resolution goes on)
            outcome = None  # our deadline: in doubt now, settled in the background
        if outcome is CommitOutcome.COMMITTED:
            return Committed(self.result)
        if outcome is CommitOutcome.ABORTED:
            exc.add_note(
                f"resilient_db: the connection was lost during COMMIT; the server rolled the "
                f"transaction back (pg_xact_status({ident.xid}) = aborted), so it is safe to "
                "run again"
            )
            assert isinstance(exc, Exception)
            return Retry(exc, RetryDecision(category=cls.category))
        return self._in_doubt(cls, exc, "unknown" if outcome is not None else "pending")

    async def _resolve_key(
        self, cls: Classification, exc: BaseException, record: KeyRecord
    ) -> Ended[T]:
        """A lost COMMIT of a keyed unit: ask whichever primary answers whether the key is
        there (true across a failover); within what is left of the deadline."""
        ctx, call = self.ctx, self.call
        left = min(max(call.remaining(ctx.clock), 0.0), 30.0)
        task = asyncio.ensure_future(ctx.ledger.resolve(ctx.engine, record, timeout=left))
        state = None
        try:
            done, _ = await asyncio.wait((task,), timeout=left + 0.05)
            state = task.result() if done else None
        except BaseException:
            if not call.own_deadline():
                raise
        if state is None:
            task.cancel()
            return self._in_doubt(cls, exc, "unknown")
        outcome = "committed" if state.committed else "aborted"
        self._emit("commit.resolved", cls, exc, outcome=outcome)
        if state.committed:
            return Committed(self.result)
        assert isinstance(exc, Exception)
        return Retry(exc, RetryDecision(category=cls.category))

    def _resolve_later(
        self, cls: Classification, exc: BaseException
    ) -> asyncio.Task[CommitOutcome] | None:
        """Start (or join) the background resolution of this attempt's COMMIT."""
        ident = self.ident
        if ident is None:
            return None
        ctx, call = self.ctx, self.call
        left = call.remaining(ctx.clock)
        timeout = (min(left, 30.0) if left > 0 else 0.0) + ctx.resolve_timeout

        def report(outcome: CommitOutcome) -> None:
            self._emit("commit.resolved", cls, exc, outcome=outcome.value)

        return ctx.resolutions.start(ident, timeout=timeout, report=report)

    def _in_doubt(self, cls: Classification, exc: BaseException, why: str) -> Ended[T]:
        call = self.call
        ident = self.ident
        key = call.key
        nothing_written = call.options.idempotent or call.options.read_only or not self.wrote
        if ident is None and key is None and why == "deadline" and nothing_written:
            # Nothing in doubt: the deadline simply ended the unit.
            if isinstance(exc, Exception):
                return Retry(exc, RetryDecision(category=cls.category))  # stops: deadline
            return Raise(exc)
        if why == "deadline":
            self._resolve_later(cls, exc)
        self._emit("commit.unknown", cls, exc, outcome=why)
        name = call.options.name
        if key is not None:
            message = (
                f"the COMMIT of unit {name!r} (operation key {key!r}) was lost and no primary "
                "said within the deadline whether it committed; ask later with "
                f"ledger.lookup(engine, {key!r}), or run the unit again with the same key "
                "(it applies at most once)"
            )
        elif ident is None:
            message = (
                f"the connection was lost during COMMIT of unit {name!r} and its transaction "
                "id was not captured, so its outcome is unknown; make the unit idempotent or "
                "check the data"
            )
        else:
            message = (
                f"the COMMIT of unit {name!r} (xid {ident.xid}) "
                + (
                    "was still unanswered at the unit's deadline"
                    if why in ("deadline", "pending")
                    else "was lost and the server could not say whether it committed"
                )
                + f"; its resolution goes on in the background: await "
                f"db.commit_status({ident.xid}) (or listen for commit.resolved) before "
                "retrying, or check the data"
            )
        err = CommitOutcomeUnknown(
            message,
            xid=ident.xid if ident is not None else None,
            attempts=call.attempts,
            timeline=ident.timeline if ident is not None else None,
            key=key,
        )
        err.__cause__ = exc if isinstance(exc, Exception) else None
        return Raise(err)

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
        session = await a.begin()
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
        await a.begin()
    except BaseException as exc:
        return await a.fail(exc)
    return Opened(a)
