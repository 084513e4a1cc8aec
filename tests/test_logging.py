"""Logs: stable event names, data in ``extra``, never SQL parameters or passwords."""

from __future__ import annotations

import logging
import secrets

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import Database, RetryPolicy, create_async_engine

SECRET = "s3cr3t-" + secrets.token_hex(4)


def _all_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for r in records:
        parts.append(r.getMessage())
        parts.append(repr(r.__dict__))
        if r.exc_info and r.exc_info[1] is not None:
            parts.append(repr(r.exc_info[1]))
    return "\n".join(parts)


async def test_retry_and_failure_logs_hold_no_parameters_or_passwords(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(pg_url).set(password=SECRET)
    engine = create_async_engine(url, pool_size=1)
    db = Database(
        engine,
        retry=RetryPolicy(attempts=3, initial=0.001, max_backoff=0.002),
        breaker=None,
        name="logs",
    )

    fn = f"rdb_conflict_{secrets.token_hex(3)}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {fn}(v text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'conflict'; END $$"
            )
        )

    async def body(session: AsyncSession, value: str) -> None:
        # a server-raised 40001 for a statement that binds the secret as a parameter
        await session.execute(text(f"SELECT {fn}(:v)"), {"v": value})

    caplog.set_level(logging.DEBUG, logger="resilient_db")
    try:
        with pytest.raises(DBAPIError):
            await db.with_options(name="logs").run(body, SECRET)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP FUNCTION {fn}(text)"))
        await engine.dispose()
    ours = [r for r in caplog.records if r.name == "resilient_db"]
    events = [r.getMessage() for r in ours]
    assert "retry.scheduled" in events
    assert "retry.gave_up" in events
    assert "unit.attempt_failed" in events
    failed = next(r for r in ours if r.getMessage() == "unit.attempt_failed")
    assert failed.__dict__["category"] == "serialization"
    assert failed.__dict__["sqlstate"] == "40001"
    assert SECRET not in _all_text(ours)
