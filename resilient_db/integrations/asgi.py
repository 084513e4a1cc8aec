"""Framework-neutral ASGI pieces: a lifespan that owns the engine and the ``Database``, a
middleware answering database errors with RFC 9457 problem details, and a readiness report.

Works with any ASGI framework that supports lifespan state (Starlette, FastAPI, Litestar's
ASGI mode...); :mod:`resilient_db.integrations.fastapi` builds on it.

::

    app = FastAPI(lifespan=database_lifespan("postgresql+asyncpg://app@db/shop"))
    # every request: request.state.database is the Database

    app.add_middleware(ProblemMiddleware)   # problem+json for database errors
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import Any, Final

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._validate import config_error
from resilient_db.classify import Classifier
from resilient_db.engine import create_async_engine
from resilient_db.integrations._problems import Problem, problem_for
from resilient_db.integrations._telemetry import Instrumentation
from resilient_db.policies import BreakerState, CircuitBreaker
from resilient_db.units import Database

__all__ = [
    "DEFAULT_STATE_KEY",
    "ProblemMiddleware",
    "database_lifespan",
    "open_database",
    "readiness",
]

logger = logging.getLogger("resilient_db")

#: The lifespan-state key under which the ``Database`` is shared with every request.
DEFAULT_STATE_KEY: Final = "database"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NOT_READY: Final = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})


@contextlib.asynccontextmanager
async def open_database(
    url: str | URL,
    *,
    engine_options: Mapping[str, Any] | None = None,
    instrument: Sequence[Callable[[AsyncEngine], Instrumentation]] = (),
    **database_options: Any,
) -> AsyncIterator[Database]:
    """``async with open_database(url) as db:`` — an engine (:func:`create_async_engine`
    with ``engine_options``) and a ``Database(engine, **database_options)``, closed on exit
    with ``await db.aclose()`` (background COMMIT resolutions finish, bounded; the engine is
    disposed of).

    ``instrument``: telemetry factories called with the engine, e.g.
    ``[OpenTelemetry, PrometheusMetrics]``; each becomes a listener of the ``Database``,
    watches it, and is closed (if it has ``close()``) at exit. For an application's own
    lifespan that opens more than the database.
    """
    engine = create_async_engine(url, **dict(engine_options or {}))
    instruments: list[Instrumentation] = []
    try:
        instruments = [factory(engine) for factory in instrument]
        listeners = [*database_options.pop("listeners", ()), *instruments]
        db = Database(engine, listeners=listeners, **database_options)
        for instrumentation in instruments:
            instrumentation.watch(db)
    except BaseException:
        _close_instruments(instruments)
        await engine.dispose()
        raise
    try:
        yield db
    finally:
        try:
            await db.aclose()  # waits (bounded) for background COMMIT resolutions, disposes
        finally:
            _close_instruments(instruments)


def _close_instruments(instruments: Sequence[Instrumentation]) -> None:
    for instrumentation in instruments:
        close = getattr(instrumentation, "close", None)
        if callable(close):
            close()


def database_lifespan(
    url: str | URL,
    *,
    state_key: str = DEFAULT_STATE_KEY,
    engine_options: Mapping[str, Any] | None = None,
    instrument: Sequence[Callable[[AsyncEngine], Instrumentation]] = (),
    **database_options: Any,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``.

    At startup it creates the engine and the ``Database`` (as :func:`open_database`); the
    ``Database`` is shared through the lifespan state as ``request.state.<state_key>``; at
    shutdown it is closed (``await db.aclose()``). ``instrument`` as for :func:`open_database`.
    Configuration errors surface at startup, not at the first request.
    """
    if not isinstance(state_key, str) or not state_key.isidentifier():
        raise config_error(
            "database_lifespan",
            "state_key",
            state_key,
            "a Python identifier (it becomes request.state.<state_key>)",
            "state_key='database' (the default)",
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        async with open_database(
            url, engine_options=engine_options, instrument=instrument, **database_options
        ) as database:
            yield {state_key: database}

    return lifespan


class ProblemMiddleware:
    """Answers the database errors :func:`problem_for` knows with a problem+json response.

    Other exceptions, and errors raised after the response has started, pass through
    unchanged. Pure ASGI. In Starlette and FastAPI add it with
    ``app.add_middleware(ProblemMiddleware)`` (inside their outermost error middleware, which
    answers 500 before anything outside it sees the exception), or use
    :func:`resilient_db.integrations.fastapi.add_exception_handlers` instead.
    """

    def __init__(self, app: ASGIApp, *, classifier: Classifier | None = None) -> None:
        self.app = app
        self.classifier = classifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            problem = problem_for(exc, classifier=self.classifier)
            if problem is None or started:
                raise
            log_problem(problem, exc)
            await send_problem(problem, send)


def log_problem(problem: Problem, exc: BaseException) -> None:
    """One ``http.problem`` record per database error answered (never the SQL)."""
    logger.info(
        "http.problem",
        extra={
            "status": problem.status,
            "problem": problem.type.rsplit(":", 1)[-1],
            "error_type": type(exc).__qualname__,
        },
    )


async def send_problem(problem: Problem, send: Send) -> None:
    """Send ``problem`` as a complete ASGI HTTP response."""
    body = problem.encode()
    headers = [*problem.header_list(), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _breakers(sources: Iterable[Database | CircuitBreaker]) -> list[CircuitBreaker]:
    found: list[CircuitBreaker] = []
    for source in sources:
        breaker = source if isinstance(source, CircuitBreaker) else source.breaker
        if breaker is not None and all(breaker is not b for b in found):
            found.append(breaker)
    return found


def readiness(*sources: Database | CircuitBreaker) -> tuple[bool, dict[str, Any]]:
    """Whether the app is ready to serve, from its breakers' states (no I/O, cheap enough
    for a load balancer's every poll), and a JSON-able report::

        (False, {"status": "unavailable", "breakers": [{"name": "db:5432/shop",
                  "state": "open", "retry_after": 3.2}]})

    Not ready while any breaker is ``open`` or ``forced_open``; ``half_open`` is ready (it
    is letting probes through). A ``Database`` without a breaker reports none.
    """
    report = []
    ready = True
    for breaker in _breakers(sources):
        stats = breaker.statistics()
        report.append(
            {
                "name": stats.name,
                "state": stats.state.value,
                "retry_after": stats.retry_after if math.isfinite(stats.retry_after) else None,
                "trips": stats.trips,
                "last_reason": stats.last_reason,
            }
        )
        ready = ready and stats.state not in _NOT_READY
    return ready, {"status": "ready" if ready else "unavailable", "breakers": report}
