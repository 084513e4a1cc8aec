"""The engines a chaos run uses: the application's Database and a direct, fault-free one.

Below both the scenario runner and the judge (and the fleet's worker processes), so none of
them imports another for these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_engine
from sqlalchemy.pool import NullPool

from resilient_db.chaos._model import Workload, WorkloadContext
from resilient_db.engine import create_async_engine
from resilient_db.units import Database

__all__ = ["build_database", "direct_engine"]


@asynccontextmanager
async def direct_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A plain SQLAlchemy engine straight to the database (no pool, no fault)."""
    engine = sa_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        with anyio.CancelScope(shield=True):
            await engine.dispose()


def build_database(workload: Workload, wctx: WorkloadContext) -> Database:
    """The application's Database (its own factory, or the library's defaults)."""
    if workload.database is not None:
        db = workload.database(wctx.url)
        if not isinstance(db, Database):
            raise TypeError(f"workload {workload.name!r}: database() must return a Database")
        return db
    engine = create_async_engine(
        wctx.url, application_name=wctx.application_name, pgbouncer=wctx.pgbouncer
    )
    return Database(engine, deadline=wctx.deadline)
