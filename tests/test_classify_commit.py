"""Connection lost during COMMIT, before and after the server committed: same exception,
so the classifier must say ``commit_unknown`` for both (only the phase tells).

The PostgreSQL-protocol-aware TCP relay of ``tests/_relay.py`` sits between the client and
the server and cuts both sides either when the client sends COMMIT (the server never sees
it: rolled back) or when the server's CommandComplete for COMMIT passes (committed, but the
client never hears it). The test checks on the server which of the two really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from resilient_db import ErrorKind, Phase, classify
from tests._relay import CutMode, Relay, relay_to

WAIT = 20.0


@pytest.fixture(scope="module")
def commit_table(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS clf_commit_cut (marker text PRIMARY KEY)")
    yield "clf_commit_cut"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS clf_commit_cut")


@contextlib.asynccontextmanager
async def cutter(pg_dsn: str, mode: CutMode) -> AsyncIterator[tuple[Relay, str]]:
    port = int(pg_dsn.rsplit(":", 1)[1].split("/", 1)[0])
    db = pg_dsn.rsplit("/", 1)[1]
    async with relay_to("127.0.0.1", port) as relay:
        relay.cut_commit = mode
        yield relay, f"postgresql://postgres@127.0.0.1:{relay.port}/{db}"


async def _write_and_commit(driver: str, dsn: str, marker: str) -> BaseException:
    """Insert ``marker`` and COMMIT through ``driver``; return what COMMIT raised."""
    sql = f"INSERT INTO clf_commit_cut VALUES ('{marker}')"
    if driver == "asyncpg":
        conn = await asyncpg.connect(dsn, ssl=False, timeout=10)
        try:
            tr = conn.transaction()
            await tr.start()
            await conn.execute(sql)
            try:
                await tr.commit()
            except Exception as exc:
                return exc
        finally:
            conn.terminate()
        raise AssertionError("COMMIT did not fail")
    name = driver.removeprefix("sa_")
    args: dict[str, object] = (
        {"ssl": False} if name == "asyncpg" else {"sslmode": "disable", "gssencmode": "disable"}
    )
    engine = create_async_engine(
        dsn.replace("postgresql://", f"postgresql+{name}://", 1), connect_args=args
    )
    try:
        async with engine.connect() as sa:
            await sa.execute(text(sql))
            try:
                await sa.commit()
            except Exception as exc:
                return exc
    finally:
        await engine.dispose()
    raise AssertionError("COMMIT did not fail")


@pytest.mark.parametrize("driver", ["asyncpg", "sa_asyncpg", "sa_psycopg"])
@pytest.mark.parametrize("mode", ["before", "after"])
async def test_connection_lost_during_commit_is_commit_unknown(
    driver: str, mode: CutMode, pg_dsn: str, commit_table: str
) -> None:
    marker = f"{driver}-{mode}-{secrets.token_hex(4)}"
    async with asyncio.timeout(WAIT), cutter(pg_dsn, mode) as (relay, dsn):
        exc = await _write_and_commit(driver, dsn, marker)
        assert relay.cut.is_set(), "the relay did not see the COMMIT"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {commit_table} WHERE marker = %s", (marker,)
        ).fetchone()
    assert row is not None
    assert row[0] == (1 if mode == "after" else 0), "the cut happened at the wrong moment"

    c = classify(exc, phase=Phase.COMMIT)
    assert (c.kind, c.category) == (ErrorKind.COMMIT_UNKNOWN, "connection_lost"), (c, exc)
    assert c.counts_toward_breaker
    assert c.sqlstate is None  # nothing the server said: the link was cut
    # The same exception outside COMMIT is a plain retryable connection loss.
    assert classify(exc, phase=Phase.STATEMENT).kind is ErrorKind.RETRYABLE
