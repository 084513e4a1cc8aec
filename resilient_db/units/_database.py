"""``Database``: units of work with retries, a circuit breaker and deadlines.

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

Nested units join the outer one on the same task (no retries of their own). The attempt
itself lives in ``_unit``; the block forms (``transaction()``, ``attempts()``) in ``_blocks``.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db._errors import CircuitOpenError
from resilient_db.classify import Classification, Classifier, default_classifier
from resilient_db.engine import install_pool_policy
from resilient_db.policies import (
    CircuitBreaker,
    RetryBudget,
    RetryEvent,
    RetryHooks,
    RetryPolicy,
    RetryStatistics,
    retry_call,
)
from resilient_db.units._attempt import (
    _DEFAULT,
    DeadlineExceeded,
    UnitEvent,
    UnitListener,
    UnitOptions,
    _Attempt,
    _Call,
    _joinable,
)
from resilient_db.units._blocks import Attempts, Transaction
from resilient_db.units._commit import (
    CommitOutcome,
    transaction_status,
)

__all__ = ["Database", "engine_health_check"]

logger = logging.getLogger("resilient_db")

P = ParamSpec("P")
T = TypeVar("T")

_SELECT_1 = text("SELECT 1")


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

    async def commit_status(
        self, xid: int, *, timeline: str | None = None, timeout: float = 5.0
    ) -> CommitOutcome:
        """What became of transaction ``xid`` (from :class:`CommitOutcomeUnknown` or a
        ``commit.unknown`` event): ``committed``, ``aborted`` or ``unknown``.

        Pass the ``timeline`` the exception carries: after a failover the new primary may
        have given the same xid number to another transaction, and the answer is then
        ``unknown``. Asks ``pg_xact_status`` on a fresh connection; terminates nothing.
        """
        if isinstance(xid, bool) or not isinstance(xid, int) or xid < 0:
            raise ValueError(f"xid must be a non-negative int (a transaction id), got {xid!r}")
        return await transaction_status(self.engine, xid, timeout=timeout, timeline=timeline)

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
        self._notify(data)

    def _notify(self, data: UnitEvent) -> None:
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
                hooks=self._hooks(call),
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

    def _hooks(self, call: _Call) -> RetryHooks | None:
        """Retry events for the listeners; None (no cost at all) when there are none."""
        if not self.listeners:
            return None
        return _ListenerHooks(self, call)

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


class _ListenerHooks(RetryHooks):
    r"""Turns the retry engine's hooks into :class:`UnitEvent`\ s for the listeners."""

    __slots__ = ("call", "db")

    def __init__(self, db: Database, call: _Call) -> None:
        self.db = db
        self.call = call

    def on_retry(self, event: RetryEvent) -> None:
        self.db._notify(
            UnitEvent(
                event="retry.scheduled",
                name=event.name,
                attempt=event.attempt,
                elapsed=event.elapsed,
                category=event.category,
                error_type=type(event.exception).__qualname__,
                sleep=event.sleep,
            )
        )

    def on_finish(self, statistics: RetryStatistics) -> None:
        if statistics.stop_reason in ("attempts", "deadline", "budget"):
            self.db._notify(
                UnitEvent(
                    event="retry.gave_up",
                    name=statistics.name,
                    attempt=statistics.attempts,
                    elapsed=statistics.elapsed,
                    category=statistics.last_category,
                    outcome=statistics.stop_reason,
                )
            )
