"""Units of work: ``Database`` runs whole transactions with retries, a breaker and deadlines.

One unit of work, end to end (DESIGN §2):

    deadline scope (anyio) ─ covers every attempt and every sleep
    breaker gate ─ open → CircuitOpenError at once, no I/O
    attempt n: fresh AsyncSession → checkout + BEGIN → body → [xid capture] → COMMIT
      success → breaker success, budget deposit → result
      failure → classify(exc, phase) →
        fatal          → rollback, re-raise the original exception (breaker: ignored)
        retryable      → rollback or invalidate, breaker failure if infrastructure,
                         backoff sleep (tenacity, budget, deadline) → next attempt
        commit_unknown → resolve on a fresh connection: committed → success;
                         aborted → retryable; unknown → CommitOutcomeUnknown

Nested units join the outer one on the same task (no retries of their own).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from resilient_db._breaker import BreakerPermit, CircuitBreaker
from resilient_db._budget import RetryBudget
from resilient_db._classify import Classification, Classifier, ErrorKind, Phase, default_classifier
from resilient_db._commit import (
    CommitOutcome,
    TxnIdentity,
    capture_identity,
    resolve_commit,
    transaction_status,
)
from resilient_db._errors import CircuitOpenError, CommitOutcomeUnknown, ResilientDBError
from resilient_db._pool_policy import WROTE_KEY, install_pool_policy, server_in_hot_standby
from resilient_db._retry import RetryDecision, RetryLoop, RetryPolicy, retry_call

__all__ = [
    "AttemptBlock",
    "Attempts",
    "Database",
    "DeadlineExceeded",
    "Transaction",
    "UnitEvent",
    "UnitListener",
    "UnitOptions",
    "engine_health_check",
]

logger = logging.getLogger("resilient_db")

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT: Any = object()
_SELECT_1 = text("SELECT 1")
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
    ``commit.resolved``, ``commit.unknown``.
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


_breakers: weakref.WeakKeyDictionary[Any, CircuitBreaker] = weakref.WeakKeyDictionary()
_budgets: weakref.WeakKeyDictionary[Any, RetryBudget] = weakref.WeakKeyDictionary()


def engine_health_check(engine: AsyncEngine) -> Callable[[], Awaitable[None]]:
    """A breaker health check for ``engine``: a pooled connection (a new one during an
    outage) and ``SELECT 1``. Pass it to ``CircuitBreaker(..., health_check=...)``.
    """

    async def health_check() -> None:
        async with engine.connect() as conn:
            await conn.execute(_SELECT_1)
            await conn.rollback()

    return health_check


def _endpoint(engine: AsyncEngine) -> str:
    url = engine.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


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
                    self.ident = await capture_identity(session)
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
            try:
                await session.invalidate()
            except Exception:
                logger.debug("unit.invalidate_failed")
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
        try:
            assert self.conn is not None
            raw: Any = self.conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        except Exception:
            return None
        return server_in_hot_standby(raw)

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
            try:
                await session.invalidate()
            except Exception:  # the connection is gone either way
                logger.debug("unit.invalidate_failed")


class Database:
    """Runs units of work on ``engine`` with retries, a circuit breaker and deadlines.

    ``retry``, ``deadline``, ``idempotent``, ``read_only`` are the defaults for every unit.
    ``breaker`` and ``budget`` default to the ones shared by every ``Database`` on the same
    engine (one breaker per endpoint, one budget per engine); pass ``None`` to turn either
    off. ``classifier`` defaults to :func:`resilient_db.classify`'s rules.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = _DEFAULT,
        budget: RetryBudget | None = _DEFAULT,
        classifier: Classifier | None = None,
        deadline: float | None = 30.0,
        idempotent: bool = False,
        read_only: bool = False,
        resolve_timeout: float = 2.0,
        cleanup_timeout: float = 2.0,
        listeners: Sequence[UnitListener] = (),
        session_options: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise TypeError(
                f"Database() needs a SQLAlchemy AsyncEngine, got {type(engine).__name__}; "
                "create one with resilient_db.create_async_engine(url)"
            )
        for option, value in (
            ("resolve_timeout", resolve_timeout),
            ("cleanup_timeout", cleanup_timeout),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{option} must be a finite number of seconds > 0, got {value!r}")
        checks: tuple[tuple[str, object, type, str], ...] = (
            ("retry", retry, RetryPolicy, "RetryPolicy(attempts=5, ...)"),
            ("breaker", breaker, CircuitBreaker, "CircuitBreaker('name', ...), or None for none"),
            ("budget", budget, RetryBudget, "RetryBudget(...), or None for none"),
            ("classifier", classifier, Classifier, "Classifier().with_rules(...)"),
        )
        for option, given, kind, hint in checks:
            if given is not None and given is not _DEFAULT and not isinstance(given, kind):
                raise TypeError(
                    f"Database({option}=...) must be a {kind.__name__} or None, got "
                    f"{type(given).__name__}; pass e.g. {hint}"
                )
        if not all(callable(listener) for listener in listeners):
            raise TypeError(
                "Database(listeners=...) must be callables taking a UnitEvent, e.g. "
                "listeners=[events.append]"
            )
        for option, flag in (("idempotent", idempotent), ("read_only", read_only)):
            if not isinstance(flag, bool):
                raise TypeError(f"Database({option}=...) must be True or False, got {flag!r}")
        self.engine = engine
        self._key: object = engine.sync_engine
        self.retry = retry if retry is not None else RetryPolicy(deadline=None)
        self.options = UnitOptions(
            deadline=deadline, idempotent=idempotent, read_only=read_only, name=name
        )
        self.classifier = classifier if classifier is not None else default_classifier()
        self.breaker = self._shared_breaker() if breaker is _DEFAULT else breaker
        self.budget = self._shared_budget() if budget is _DEFAULT else budget
        self.resolve_timeout = float(resolve_timeout)
        self.cleanup_timeout = float(cleanup_timeout)
        self.listeners = tuple(listeners)
        self._session_options = {"expire_on_commit": False, **(session_options or {})}
        install_pool_policy(engine)

    # -- shared per-engine parts -------------------------------------------------------

    def _shared_breaker(self) -> CircuitBreaker:
        breaker = _breakers.get(self._key)
        if breaker is None:
            breaker = CircuitBreaker(
                _endpoint(self.engine), health_check=engine_health_check(self.engine)
            )
            _breakers[self._key] = breaker
        return breaker

    def _shared_budget(self) -> RetryBudget:
        budget = _budgets.get(self._key)
        if budget is None:
            budget = _budgets[self._key] = RetryBudget()
        return budget

    async def commit_status(self, xid: int, *, timeout: float = 5.0) -> CommitOutcome:
        """What became of transaction ``xid`` (from :class:`CommitOutcomeUnknown` or a
        ``commit.unknown`` event): ``committed``, ``aborted`` or ``unknown``.

        Asks ``pg_xact_status`` on a fresh connection; never terminates anything.
        """
        if isinstance(xid, bool) or not isinstance(xid, int) or xid < 0:
            raise ValueError(f"xid must be a non-negative int (a transaction id), got {xid!r}")
        return await transaction_status(self.engine, xid, timeout=timeout)

    async def health_check(self) -> None:
        """A cheap probe: a connection from the pool (a new one during an outage), SELECT 1."""
        await engine_health_check(self.engine)()

    def _make_session(self) -> AsyncSession:
        return AsyncSession(self.engine, **self._session_options)

    def _emit(
        self,
        event: str,
        call: _Call,
        cls: Classification | None,
        *,
        elapsed: float | None = None,
        xid: int | None = None,
        outcome: str | None = None,
    ) -> None:
        exc = call.last_exc
        data = UnitEvent(
            event=event,
            name=call.options.name,
            attempt=call.attempts,
            elapsed=elapsed if elapsed is not None else time.monotonic() - call.started,
            category=cls.category if cls is not None else None,
            sqlstate=cls.sqlstate if cls is not None else None,
            kind=cls.kind.value if cls is not None else None,
            xid=xid,
            outcome=outcome,
            error_type=type(exc).__qualname__ if exc is not None else None,
        )
        level = (
            logging.WARNING
            if event in ("commit.unknown", "unit.deadline_exceeded")
            else (logging.INFO)
        )
        logger.log(
            level,
            event,
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
                logger.exception("unit.listener_failed", extra={"unit": data.name})

    # -- options -----------------------------------------------------------------------

    def with_options(
        self,
        *,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
    ) -> Database:
        """A view of this database with other per-unit defaults (shares breaker, budget)."""
        view = object.__new__(Database)
        view.__dict__.update(self.__dict__)
        view.options = self._call_options(
            deadline=deadline, idempotent=idempotent, read_only=read_only, name=name
        )
        if retry is not _DEFAULT and retry is not None:
            view.retry = retry
        return view

    def _call_options(self, **overrides: Any) -> UnitOptions:
        changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not _DEFAULT}
        return replace(self.options, **changes) if changes else self.options

    # -- units -------------------------------------------------------------------------

    async def run(
        self,
        fn: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(session, *args, **kwargs)`` as one unit of work; return its result.

        Retryable errors re-run it whole on a fresh session; inside another unit on the same
        task it joins that unit's session instead (no transaction or retries of its own).
        """
        active = _joinable(self._key)
        if active is not None:
            return await fn(active.session, *args, **kwargs)
        return await self._unit(lambda session: fn(session, *args, **kwargs), self.options)

    async def _unit(self, body: Callable[[AsyncSession], Awaitable[T]], options: UnitOptions) -> T:
        call = _Call(options=options, started=time.monotonic())
        policy = options.retry or self.retry

        async def attempt() -> T:
            a = _Attempt(self, call)
            session = await a.begin()
            try:
                result = await body(session)
            except BaseException as exc:
                try:
                    await a.fail(exc)
                finally:
                    a._leave()
                raise  # pragma: no cover - fail() always raises for body errors
            await a.commit()
            return result

        if options.deadline is None:
            return await self._retry(attempt, call, policy, None)
        deadline_at = policy.clock() + options.deadline
        with anyio.CancelScope(deadline=anyio.current_time() + options.deadline) as scope:
            call.scope = scope
            return await self._retry(attempt, call, policy, deadline_at)
        raise self._deadline_error(call)

    async def _retry(
        self,
        attempt: Callable[[], Awaitable[T]],
        call: _Call,
        policy: RetryPolicy,
        deadline_at: float | None,
    ) -> T:
        try:
            return await retry_call(
                attempt,
                policy=policy,
                decide=call.decide,
                budget=self.budget,
                deadline_at=deadline_at,
                name=call.options.name,
            )
        except CircuitOpenError as exc:
            if call.last_exc is not None and call.last_exc is not exc:
                category = call.last.category if call.last is not None else "?"
                exc.add_note(
                    f"resilient_db: the previous attempt failed with "
                    f"{type(call.last_exc).__qualname__} ({category})"
                )
            raise

    def _deadline_error(self, call: _Call) -> DeadlineExceeded:
        options = call.options
        assert options.deadline is not None
        self._emit("unit.deadline_exceeded", call, call.last)
        last = call.last_exc
        err = DeadlineExceeded(
            f"unit {options.name!r} did not finish within its deadline of "
            f"{options.deadline:g}s ({call.attempts} attempt(s)"
            + (f", last error {type(last).__qualname__}" if last is not None else "")
            + "); raise the deadline if the work is slow, or check the database's health",
            name=options.name,
            deadline=options.deadline,
            attempts=call.attempts,
        )
        if last is not None and isinstance(last, Exception):
            err.__cause__ = last
        return err

    def transaction(
        self,
        *,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
    ) -> Transaction:
        """``async with db.transaction() as session:`` — one attempt of a unit of work.

        Fails fast while the breaker is open; retries getting a healthy connection and BEGIN
        (never the body); commits on exit, rolls back on error; resolves a lost COMMIT.
        Inside another unit on the same task it joins that unit's session.
        """
        options = self._call_options(
            deadline=deadline, idempotent=idempotent, read_only=read_only, retry=retry, name=name
        )
        return Transaction(self, options)

    def attempts(
        self,
        *,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
    ) -> Attempts:
        """The block form of :meth:`run`::

            async for attempt in db.attempts():
                async with attempt as session:
                    ...

        Each attempt is a fresh session and transaction, committed when the block ends;
        a retryable error ends the block, and the loop backs off and runs it again. The
        loop ends after the first attempt that commits; a fatal error, or the last one when
        the policy stops, propagates unchanged.
        """
        options = self._call_options(
            deadline=deadline, idempotent=idempotent, read_only=read_only, retry=retry, name=name
        )
        return Attempts(self, options)


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
