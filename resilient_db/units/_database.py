"""``Database``: units of work with retries, a circuit breaker and hard deadlines.

``Database`` validates its configuration, builds one frozen :class:`UnitContext` and hands
it to the runner (``_runner``), the attempt (``_attempt``) and the block forms
(``_blocks``); none of them calls back into it. Nested units join the outer one on the
same task (no retries of their own).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db._errors import ResilientDBError
from resilient_db._validate import config_error
from resilient_db.classify import Classifier, default_classifier
from resilient_db.engine import (
    endpoint_key,
    install_pool_policy,
)
from resilient_db.policies import CircuitBreaker, Clock, RetryBudget, RetryPolicy
from resilient_db.units._blocks import Attempts, Transaction
from resilient_db.units._context import Active, Reporter, UnitContext, drain, joinable
from resilient_db.units._keys import Ledger
from resilient_db.units._options import (
    _DEFAULT,
    DEFAULT_ALLOWANCE,
    UnitListener,
    UnitOptions,
)
from resilient_db.units._runner import run_unit
from resilient_db.units._session import (
    awaited,
    check_options,
    did_you_mean,
    one_clock,
    session_factory,
)
from resilient_db.units._shared import (
    shared_breaker,
    shared_budget,
    shared_gate,
    shared_resolutions,
)
from resilient_db.units._status import StatusMixin

__all__ = ["Database"]

logger = logging.getLogger("resilient_db")

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., None])


class Database(StatusMixin):
    """Runs units of work on ``engine`` with retries, a circuit breaker and hard deadlines.

    ``retry``, ``deadline``, ``idempotent``, ``read_only``, ``wait_for_breaker`` are the
    defaults for every unit. ``breaker`` and ``budget`` default to the ones shared by every
    ``Database`` on the same endpoint / engine; pass ``None`` to turn either off.
    ``classifier`` defaults to :func:`resilient_db.classify`'s rules. ``clock`` is the one
    clock of the deadline, the retry policy and the default breaker and budget (inject a
    fake one in tests). A unit returns at most ``allowance`` seconds (default 0.25) after
    its deadline, cleanup included. ``async with Database(engine) as db:`` (or ``await
    db.aclose()``) waits for background commit resolutions and disposes the engine.
    """

    @did_you_mean
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
        wait_for_breaker: bool = False,
        allowance: float = DEFAULT_ALLOWANCE,
        resolve_timeout: float = 2.0,
        cleanup_timeout: float = 2.0,
        clock: Clock | None = None,
        listeners: Sequence[UnitListener] = (),
        session_options: dict[str, Any] | None = None,
        ledger: Ledger | None = None,
        name: str | None = None,
    ) -> None:
        check_options(locals())  # every argument, checked before anything is built
        policy, clock = one_clock(retry, clock)
        self.engine = engine
        self.retry = policy
        self.options = UnitOptions(
            deadline=deadline,
            idempotent=idempotent,
            read_only=read_only,
            name=name,
            wait_for_breaker=wait_for_breaker,
        )
        self.classifier = classifier if classifier is not None else default_classifier()
        self.breaker = shared_breaker(engine, clock) if breaker is _DEFAULT else breaker
        self.budget = shared_budget(engine, clock) if budget is _DEFAULT else budget
        self.allowance = float(allowance)
        self.resolve_timeout = float(resolve_timeout)
        self.cleanup_timeout = float(cleanup_timeout)
        self.listeners = tuple(listeners)
        self._closed = False
        self._ctx = UnitContext(
            key=engine.sync_engine,
            engine=engine,
            make_session=session_factory(engine, session_options),
            breaker=self.breaker,
            budget=self.budget,
            classifier=self.classifier,
            retry=policy,
            clock=clock,
            allowance=self.allowance,
            cleanup_timeout=self.cleanup_timeout,
            resolve_timeout=self.resolve_timeout,
            resolutions=shared_resolutions(engine),
            reporter=Reporter(self.listeners),
            ledger=ledger if ledger is not None else Ledger(),
            gate=shared_gate(engine),
        )
        install_pool_policy(engine)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, *, dispose_engine: bool = True) -> None:
        """Stop accepting units, wait (at most ``resolve_timeout`` + ``cleanup_timeout``)
        for background commit resolutions and cleanups, and dispose the engine (unless
        ``dispose_engine=False``, e.g. when other code shares it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._ctx.resolutions.drain(self.resolve_timeout + self.cleanup_timeout)
        await drain(self.cleanup_timeout)
        if dispose_engine:
            await self.engine.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise ResilientDBError(
                f"this Database (engine {endpoint_key(self.engine)}) was closed by aclose(); "
                "fix: create a new Database, or run units before closing it"
            )

    # -- options -----------------------------------------------------------------------

    def with_options(
        self,
        *,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
        wait_for_breaker: bool = _DEFAULT,
    ) -> Database:
        """A view of this database with other per-unit defaults (shares breaker, budget)."""
        view = object.__new__(Database)
        view.__dict__.update(self.__dict__)
        view.options = self._call_options(
            deadline=deadline,
            idempotent=idempotent,
            read_only=read_only,
            name=name,
            wait_for_breaker=wait_for_breaker,
        )
        if retry is not _DEFAULT and retry is not None:
            view.retry = replace(retry, clock=self._ctx.clock)
            view._ctx = replace(self._ctx, retry=view.retry)
        return view

    def _call_options(self, **overrides: Any) -> UnitOptions:
        changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not _DEFAULT}
        return replace(self.options, **changes) if changes else self.options

    # -- units -------------------------------------------------------------------------

    if TYPE_CHECKING:  # ParamSpec leaves no room for key=: type checkers see fn's own

        async def run(
            self,
            fn: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
            /,
            *args: P.args,
            **kwargs: P.kwargs,
        ) -> T: ...

    else:

        async def run(self, fn, /, *args, key=None, **kwargs):
            """Run ``fn(session, *args, **kwargs)`` as one unit of work; return its result.

            Retryable errors re-run it whole on a fresh session; inside another unit on the
            same task it joins that unit's session instead (no transaction or retries of its
            own). ``key=`` (a str, int or UUID naming the operation) applies it at most once:
            the key is recorded in the ledger inside the unit's transaction, a lost COMMIT
            is settled by asking for the key, and a call whose key is already applied
            returns the stored result (or raises ``AlreadyApplied``) without committing
            anything.
            """
            # Flat on purpose: each await inside the unit resumes every frame above the
            # attempt (run -> run_unit -> run_attempt). Joining is decided here, on the
            # task that awaits (a task created inside a unit never joins it).
            active = joinable(self._ctx.key)
            if active is not None:
                return await self._joined(active, fn, args, kwargs, key)

            def body(session):
                return awaited(fn, fn(session, *args, **kwargs))

            return await self._run_unit(body, self.options, key)

    async def run_once(
        self,
        key: str | int | uuid.UUID,
        fn: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``run(fn, *args, key=key, **kwargs)`` with the key where type checkers see it:
        apply the operation named ``key`` at most once (see :meth:`run`)."""
        self._ctx.ledger.normalize_key(key)  # a clear error for a missing or bad key
        run: Any = self.run
        result: T = await run(fn, *args, key=key, **kwargs)
        return result

    async def _joined(
        self,
        active: Active,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: object,
    ) -> T:
        if key is not None:
            await self._record_joined(active.session, key)
        return await awaited(fn, fn(active.session, *args, **kwargs))

    async def _record_joined(self, session: AsyncSession, key: object) -> None:
        """A keyed unit inside another one: its key goes into the outer transaction."""
        record = await self._ctx.ledger.record(session, self._ctx.ledger.normalize_key(key))
        if not record.inserted:
            assert record.previous is not None
            raise record.previous.already_applied()

    def _run_unit(
        self,
        body: Callable[[AsyncSession], Awaitable[T]],
        options: UnitOptions,
        key: object = None,
    ) -> Coroutine[Any, Any, T]:
        """``body`` as one unit with ``options`` (already merged) and operation ``key``."""
        if self._closed:
            self._check_open()
        return run_unit(self._ctx, options, body, self._key(key, options))

    def _key(self, key: object, options: UnitOptions) -> str | None:
        if key is None:
            return None
        if options.read_only:
            raise config_error(
                "Database.run",
                "key",
                key,
                "absent on a read_only unit (recording the key is a write)",
                "drop read_only=True, or the key",
            )
        return self._ctx.ledger.normalize_key(key)

    def transaction(
        self,
        *,
        key: object = None,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
        wait_for_breaker: bool = _DEFAULT,
    ) -> Transaction:
        """``async with db.transaction() as session:`` — one attempt of a unit of work.

        Fails fast while the breaker is open; retries getting a healthy connection and BEGIN
        (never the body); commits on exit, rolls back on error; resolves a lost COMMIT.
        Inside another unit on the same task it joins that unit's session. ``key=`` applies
        it at most once (see :meth:`run`): a key already applied raises ``AlreadyApplied``.
        """
        self._check_open()
        options = self._call_options(
            deadline=deadline,
            idempotent=idempotent,
            read_only=read_only,
            retry=retry,
            name=name,
            wait_for_breaker=wait_for_breaker,
        )
        return Transaction(self._ctx, options, self._key(key, options))

    def attempts(
        self,
        *,
        deadline: float | None = _DEFAULT,
        idempotent: bool = _DEFAULT,
        read_only: bool = _DEFAULT,
        retry: RetryPolicy | None = _DEFAULT,
        name: str | None = _DEFAULT,
        wait_for_breaker: bool = _DEFAULT,
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
        self._check_open()
        options = self._call_options(
            deadline=deadline,
            idempotent=idempotent,
            read_only=read_only,
            retry=retry,
            name=name,
            wait_for_breaker=wait_for_breaker,
        )
        return Attempts(self._ctx, options)
