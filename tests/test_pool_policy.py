"""The pool policy on the real server: one killed backend does not recycle the pool."""

from __future__ import annotations

import asyncio

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from resilient_db import Database, create_async_engine
from resilient_db.engine._pool_policy import install_pool_policy, pre_ping_enabled


async def _pids_in_parallel(db: Database, n: int) -> list[int]:
    barrier = asyncio.Barrier(n)
    pids: list[int] = []

    async def hold(session: AsyncSession) -> None:
        pids.append(int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
        with anyio.fail_after(10):
            await barrier.wait()  # all n connections checked out at once

    with anyio.fail_after(20):
        await asyncio.gather(*(db.run(hold) for _ in range(n)))
    return pids


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # wait (bounded) until the backend is gone
        for _ in range(200):
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            one = row.fetchone()
            if one is not None and one[0] == 0:
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"backend {pid} did not exit")


@pytest.mark.parametrize("factory", ["resilient_db", "sqlalchemy"])
async def test_one_killed_backend_keeps_the_rest_of_the_pool(
    factory: str, pg_url: str, pg_dsn: str
) -> None:
    engine: AsyncEngine = (
        create_async_engine(pg_url, pool_size=3, max_overflow=0)
        if factory == "resilient_db"
        else sa_create_async_engine(pg_url, pool_size=3, max_overflow=0, pool_pre_ping=True)
    )
    db = Database(engine, breaker=None)
    assert pre_ping_enabled(engine)
    try:
        before = await _pids_in_parallel(db, 3)
        assert len(set(before)) == 3
        await anyio.to_thread.run_sync(_terminate, pg_dsn, before[0])
        after = await _pids_in_parallel(db, 3)
        # The two healthy connections were reused; only the killed one was replaced. (A
        # pool-wide recycle closes the older connections at their checkout or checkin, so
        # a second round shows it whatever the queue order.)
        again = await _pids_in_parallel(db, 3)
        assert len(set(before) & set(after)) == 2, (before, after)
        assert len(set(before) & set(again)) == 2, (before, again)
        assert before[0] not in after
    finally:
        await engine.dispose()


async def test_policy_is_installed_once(pg_url: str) -> None:
    engine = create_async_engine(pg_url, pool_size=1)
    try:
        install_pool_policy(engine)
        install_pool_policy(engine)
        Database(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        async with engine.connect() as conn:  # a pinged checkout
            assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
    finally:
        await engine.dispose()


async def test_timeline_probe_marks_the_engine(pg_url: str) -> None:
    from resilient_db.engine._pool_policy import timeline_supported

    engine = create_async_engine(pg_url, pool_size=1)
    try:
        Database(engine)
        assert not timeline_supported(engine)  # nothing connected yet
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert timeline_supported(engine)
    finally:
        await engine.dispose()
