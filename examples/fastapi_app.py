"""An example FastAPI app on resilient_db: accounts and transfers.

Run it (``pip install 'resilient-db[fastapi,prometheus]' uvicorn``)::

    RESILIENT_DB_URL=postgresql+asyncpg://postgres@127.0.0.1/test \\
        uvicorn --factory examples.fastapi_app:app_from_env

What it shows:

* the lifespan creates the engine and the ``Database`` and closes them at shutdown;
* ``Session`` runs a request as one unit of work, committed before the response is sent;
* ``AccountsDep`` is a repository whose ``@transactional`` methods retry whole;
* the exception handlers turn an open breaker into 503 + ``Retry-After``, a deadline into
  504, a lost COMMIT into 500 with the xid (problem+json);
* ``GET /ready`` reports the breaker, ``GET /metrics`` the Prometheus metrics.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import INJECTED, Database, transactional
from resilient_db.integrations.fastapi import (
    add_exception_handlers,
    add_readiness_route,
    database_lifespan,
    repository,
    unit_of_work,
)

SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS account (id int PRIMARY KEY, balance bigint NOT NULL "
    "CHECK (balance >= 0))"
)


class Accounts:
    """A repository: each public method is a unit of work of its own, retried whole."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @transactional(read_only=True, name="accounts.balance")
    async def balance(self, account: int, *, session: AsyncSession = INJECTED) -> int | None:
        row = await session.execute(
            text("SELECT balance FROM account WHERE id = :i"), {"i": account}
        )
        return row.scalar_one_or_none()

    @transactional(name="accounts.open")
    async def open(self, account: int, balance: int, *, session: AsyncSession = INJECTED) -> None:
        await session.execute(
            text("INSERT INTO account VALUES (:i, :b)"), {"i": account, "b": balance}
        )


class Transfer(BaseModel):
    src: int
    dst: int
    amount: int = Field(gt=0)


Session = Annotated[AsyncSession, unit_of_work()]
AccountsDep = Annotated[Accounts, repository(Accounts)]


async def transfer(session: AsyncSession, src: int, dst: int, amount: int) -> int:
    """Move ``amount``; rows are locked in id order, so concurrent transfers never deadlock."""
    rows = await session.execute(
        text("SELECT id, balance FROM account WHERE id IN (:s, :d) ORDER BY id FOR UPDATE"),
        {"s": src, "d": dst},
    )
    balances: dict[int, int] = {row[0]: row[1] for row in rows}
    if len(balances) != len({src, dst}):
        raise HTTPException(404, "no such account")
    if balances[src] < amount:
        raise HTTPException(409, "insufficient funds")
    await session.execute(
        text("UPDATE account SET balance = balance - :a WHERE id = :i"), {"a": amount, "i": src}
    )
    await session.execute(
        text("UPDATE account SET balance = balance + :a WHERE id = :i"), {"a": amount, "i": dst}
    )
    return int(balances[src] - amount)


def create_app(
    url: str,
    *,
    engine_options: dict[str, Any] | None = None,
    registry: Any = None,
    instrument_with: list[Any] | None = None,
    **database_options: Any,
) -> FastAPI:
    """The app for ``url``; ``database_options`` go to ``Database(...)`` (retry, breaker,
    deadline, listeners...); ``registry`` is the Prometheus registry served at /metrics
    (default: ``prometheus_client.REGISTRY``) when the [prometheus] extra is installed;
    ``instrument_with``: more telemetry factories (e.g. ``[OpenTelemetry]``)."""
    instrument: list[Any] = list(instrument_with or ())
    try:
        import prometheus_client

        from resilient_db.integrations.prometheus import PrometheusMetrics
    except ImportError:  # pragma: no cover - the [prometheus] extra is not installed
        prometheus_client = None
    else:
        registry = registry if registry is not None else prometheus_client.REGISTRY
        instrument.append(functools.partial(PrometheusMetrics, registry=registry))
    app = FastAPI(
        title="accounts",
        lifespan=database_lifespan(
            url, engine_options=engine_options, instrument=instrument, **database_options
        ),
    )
    add_exception_handlers(app)
    add_readiness_route(app)
    if prometheus_client is not None:

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            latest = prometheus_client.generate_latest(registry)
            return Response(latest, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.get("/accounts/{account}")
    async def get_balance(account: int, accounts: AccountsDep) -> dict[str, int]:
        balance = await accounts.balance(account)
        if balance is None:
            raise HTTPException(404, "no such account")
        return {"id": account, "balance": balance}

    @app.put("/accounts/{account}", status_code=201)
    async def open_account(account: int, balance: int, accounts: AccountsDep) -> dict[str, int]:
        await accounts.open(account, balance)
        return {"id": account, "balance": balance}

    @app.post("/transfers")
    async def post_transfer(body: Transfer, session: Session) -> dict[str, int]:
        # The request's unit of work: committed after this returns, before the 200 is sent.
        left = await transfer(session, body.src, body.dst, body.amount)
        return {"src": body.src, "balance": left}

    return app


def app_from_env() -> FastAPI:  # pragma: no cover - for uvicorn --factory
    return create_app(os.environ["RESILIENT_DB_URL"])
