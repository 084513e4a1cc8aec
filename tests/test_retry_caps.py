"""A classifier rule's ``max_retries`` cap is applied by the unit of work's retry loop.

A server ``statement_timeout`` (57014, "canceling statement due to statement timeout") is
retryable at most once: a query that times out again is not re-run a third time.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import Database, RetryPolicy, classify, create_async_engine


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, pg_url: str, psycopg_url: str) -> str:
    return pg_url if request.param == "asyncpg" else psycopg_url


async def test_statement_timeout_is_retried_at_most_once(url: str) -> None:
    engine = create_async_engine(url)
    attempts = 0

    async def slow(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SET LOCAL statement_timeout = '50ms'"))
        await session.execute(text("SELECT pg_sleep(2)"))

    try:
        db = Database(engine, retry=RetryPolicy(attempts=5, initial=0.01, max_backoff=0.02))
        with pytest.raises(DBAPIError) as caught:
            await db.run(slow)
        verdict = classify(caught.value)
        assert verdict.sqlstate == "57014"
        assert verdict.max_retries == 1
        assert attempts == 2  # the first run and one retry, not five
    finally:
        await engine.dispose()


async def test_other_categories_keep_the_policy_attempts(url: str) -> None:
    """The cap is per category: a serialization conflict still gets every attempt."""
    engine = create_async_engine(url)
    attempts = 0

    async def conflict(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(
            text(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; "
                "END $$"
            )
        )

    try:
        db = Database(engine, retry=RetryPolicy(attempts=4, initial=0.001, max_backoff=0.002))
        with pytest.raises(DBAPIError):
            await db.run(conflict)
        assert attempts == 4
    finally:
        await engine.dispose()
