"""FastAPI (and Starlette) integration: lifespan, dependencies, error handlers, readiness.

Install with ``pip install 'resilient-db[fastapi]'``::

    from typing import Annotated
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession
    from resilient_db.integrations.fastapi import (
        add_exception_handlers, add_readiness_route, database_lifespan, repository,
        unit_of_work,
    )

    app = FastAPI(lifespan=database_lifespan("postgresql+asyncpg://app@db/shop"))
    add_exception_handlers(app)      # 503 + Retry-After, 504, 500 + xid (problem+json)
    add_readiness_route(app)         # GET /ready: 200 or 503 with each breaker's state

    Session = Annotated[AsyncSession, unit_of_work()]
    Accounts = Annotated[AccountsRepo, repository(AccountsRepo)]

    @app.post("/orders")
    async def create_order(order: Order, session: Session) -> dict[str, int]:
        ...  # one transaction for the request, committed before the response is sent

**When the request's unit of work commits.** ``unit_of_work()`` is a dependency with
``yield`` around :meth:`Database.transaction <resilient_db.Database.transaction>`. With
FastAPI >= 0.121 it is declared with ``Depends(scope="function")`` (the default here,
``commit="before_response"``): the transaction commits right after the endpoint returns and
*before* the response is sent, so a failed or doubtful COMMIT becomes the error response
(503, 500 with the xid) and a client never sees 200 for work that was not saved. With
``commit="after_response"`` (``scope="request"``) it commits after the response has been
sent: the response is faster, but a COMMIT that fails then can only be logged — use it for
read-only requests. FastAPI before 0.121 has no ``scope``: there the exit code of
dependencies with ``yield`` runs when that version runs it (see its documentation);
``SUPPORTS_DEPENDENCY_SCOPE`` tells which case applies. Prefer FastAPI >= 0.121.

The transaction is one attempt: getting a healthy connection and BEGIN are retried, the
endpoint is not (FastAPI cannot run it again). Work that must be retried whole belongs in
``@transactional`` repository methods or ``db.run`` — inside the request's unit they join
its transaction; for a retried unit per call, use them without ``unit_of_work``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette

from resilient_db._errors import (
    AlreadyApplied,
    CircuitOpenError,
    CommitOutcomeUnknown,
    ConfigurationError,
)
from resilient_db._validate import check_callable, check_choice, check_text
from resilient_db.classify import Classifier
from resilient_db.integrations._problems import PROBLEM_JSON, Problem, problem_for
from resilient_db.integrations.asgi import (
    DEFAULT_STATE_KEY,
    database_lifespan,
    log_problem,
    open_database,
    readiness,
)
from resilient_db.units import Database, DeadlineExceeded

__all__ = [
    "IDEMPOTENCY_KEY",
    "SUPPORTS_DEPENDENCY_SCOPE",
    "add_exception_handlers",
    "add_readiness_route",
    "database_lifespan",
    "get_database",
    "open_database",
    "problem_response",
    "readiness_endpoint",
    "repository",
    "unit_of_work",
]

R = TypeVar("R")

#: True when the installed FastAPI has ``Depends(scope=...)`` (FastAPI >= 0.121).
SUPPORTS_DEPENDENCY_SCOPE: Final = "scope" in inspect.signature(Depends).parameters

#: The request header whose value becomes the unit's operation key.
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
_KEY_CHARS: Final = re.compile(r"[\x21-\x7e]{1,255}")
_UNSET: Any = object()
_HANDLED: Final[tuple[type[Exception], ...]] = (
    CircuitOpenError,
    DeadlineExceeded,
    CommitOutcomeUnknown,
    AlreadyApplied,
    SQLAlchemyError,
    OSError,  # only when a unit of work gave up on it (see problem_for)
)


def get_database(request: Request, state_key: str = DEFAULT_STATE_KEY) -> Database:
    """The ``Database`` shared through the lifespan state (see :func:`database_lifespan`)."""
    db = getattr(request.state, state_key, None)
    if not isinstance(db, Database):
        raise ConfigurationError(
            f"request.state.{state_key} is {type(db).__name__}, not a Database: create the app "
            "with FastAPI(lifespan=database_lifespan(url)) (or yield "
            f"{{{state_key!r}: database}} from your own lifespan)"
        )
    return db


def _operation_key(unit: str, sent: str, header: str) -> str:
    if not _KEY_CHARS.fullmatch(sent):
        raise HTTPException(
            400, f"{header} must be 1 to 255 visible ASCII characters (e.g. a UUID)"
        )
    return f"{unit}|{sent}"


def _unit_name(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return f"{request.method} {path}"


def _check_unit_options(commit: str, name: str | None, idempotency_header: str | None) -> None:
    check_choice(
        "unit_of_work",
        "commit",
        commit,
        ("before_response", "after_response"),
        fix="commit='before_response' (the default) or 'after_response' for read-only requests",
    )
    if name is not None:
        check_text("unit_of_work", "name", name, fix="name='orders.create'")
    if idempotency_header is not None:
        check_text(
            "unit_of_work",
            "idempotency_header",
            idempotency_header,
            fix="idempotency_header='Idempotency-Key' (the default), or None to ignore it",
        )


def unit_of_work(
    *,
    commit: Literal["before_response", "after_response"] = "before_response",
    name: str | None = None,
    deadline: float | None = _UNSET,
    read_only: bool = _UNSET,
    idempotent: bool = _UNSET,
    idempotency_header: str | None = IDEMPOTENCY_KEY,
    state_key: str = DEFAULT_STATE_KEY,
) -> Any:
    """A dependency giving the request one ``AsyncSession`` in one transaction (a unit of
    work named ``"<METHOD> <route path>"`` unless ``name`` is given), committed when the
    endpoint returns, rolled back if it raises (``HTTPException`` included).

    A request carrying an ``Idempotency-Key`` header (``idempotency_header``; ``None`` to
    ignore it) runs with that operation key, scoped to the unit (``"POST /orders|<key>"``):
    a client's retry of a request that was applied is not applied again — its unit is
    rolled back and :class:`~resilient_db.AlreadyApplied` answers 409 (see
    :func:`add_exception_handlers`). The key ledger must exist (``create_ledger``). A
    malformed key (empty, over 255 characters, not visible ASCII) is a 400.

    ``commit`` chooses when (see the module documentation); the other options override the
    ``Database``'s defaults for this unit. Use it as ``Annotated[AsyncSession,
    unit_of_work()]``.
    """
    _check_unit_options(commit, name, idempotency_header)
    options: dict[str, Any] = {
        k: v
        for k, v in (("deadline", deadline), ("read_only", read_only), ("idempotent", idempotent))
        if v is not _UNSET
    }

    async def session(request: Request) -> AsyncIterator[AsyncSession]:
        db = get_database(request, state_key)
        unit = name or _unit_name(request)
        keyed = dict(options)
        sent = request.headers.get(idempotency_header) if idempotency_header else None
        if sent is not None:
            keyed["key"] = _operation_key(unit, sent, idempotency_header or "")
        async with db.transaction(name=unit, **keyed) as active:
            yield active

    if SUPPORTS_DEPENDENCY_SCOPE:
        scope: Literal["function", "request"] = (
            "function" if commit == "before_response" else "request"
        )
        return Depends(session, scope=scope)  # type: ignore[call-arg,unused-ignore]
    return Depends(session)


def repository(factory: Callable[[Database], R], *, state_key: str = DEFAULT_STATE_KEY) -> Any:
    """A dependency building ``factory(database)`` per request — e.g. a repository class
    whose ``@transactional`` methods find ``self.database``. Use it as
    ``Annotated[Accounts, repository(Accounts)]``."""
    check_callable(
        "repository", "factory", factory, fix="pass the class, e.g. repository(Accounts)"
    )

    def build(request: Request) -> R:
        return factory(get_database(request, state_key))

    return Depends(build)


def problem_response(problem: Problem) -> Response:
    """``problem`` as a Starlette ``Response`` (``application/problem+json``)."""
    return Response(
        content=problem.encode(),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def add_exception_handlers(app: Starlette, *, classifier: Classifier | None = None) -> None:
    """Answer database errors with problem+json (a FastAPI or Starlette app):

    open breaker → 503 + ``Retry-After`` (whole seconds, rounded up); deadline → 504;
    retries exhausted on a retryable database error → 503; commit outcome unknown → 500
    with the ``xid``; an operation key already applied → 409. Fatal errors (constraint,
    syntax...) and everything else are re-raised untouched, to your handlers or the
    server's 500. Handlers you register for more specific classes take precedence.
    """

    async def handle(request: Request, exc: Exception) -> Response:
        problem = problem_for(exc, classifier=classifier)
        if problem is None:
            raise exc
        log_problem(problem, exc)
        return problem_response(problem)

    for kind in _HANDLED:
        app.add_exception_handler(kind, handle)


def readiness_endpoint(*, state_key: str = DEFAULT_STATE_KEY) -> Callable[[Request], Any]:
    """An endpoint reporting readiness from the breakers' states (no I/O): 200
    ``{"status": "ready", "breakers": [...]}``, or 503 while a breaker is open."""

    async def ready(request: Request) -> JSONResponse:
        ok, report = readiness(get_database(request, state_key))
        return JSONResponse(report, status_code=200 if ok else 503)

    return ready


def add_readiness_route(
    app: FastAPI,
    path: str = "/ready",
    *,
    state_key: str = DEFAULT_STATE_KEY,
    tags: Sequence[str] = ("health",),
) -> None:
    """Add ``GET <path>`` (default ``/ready``) answering as :func:`readiness_endpoint`."""
    app.add_api_route(
        path,
        readiness_endpoint(state_key=state_key),
        methods=["GET"],
        include_in_schema=True,
        tags=list(tags),
        summary="Readiness from the database circuit breakers",
    )
