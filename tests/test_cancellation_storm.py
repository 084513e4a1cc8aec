"""A cancellation storm under backend kills, on both drivers, against the real server.

Callers cancel units three ways — ``task.cancel()``, ``asyncio.timeout`` and
``anyio.fail_after`` — at random points (checkout, statements, COMMIT, backoff), while every
backend of the application is terminated every 100–200 ms. Afterwards: no connection left
checked out, no backend left ``idle in transaction``, no cancellation swallowed (a cancelled
call always ended with its cancellation), and the breaker never opened.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import CircuitBreaker, Database, RetryPolicy, create_async_engine

FAST = RetryPolicy(attempts=8, initial=0.002, max_backoff=0.02, deadline=None)
STORM_SECONDS = 3.0


@pytest.fixture
def counters(pg_dsn: str) -> Iterator[str]:
    name = f"rdb_storm_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(0, 9) g")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _scalar(dsn: str, sql: str, *args: Any) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
        assert row is not None
        return int(str(row[0]))


def _kill_all(dsn: str, app: str) -> int:
    return _scalar(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        app,
    )


class Storm:
    def __init__(self, db: Database, table: str, seed: int) -> None:
        self.db = db
        self.table = table
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.swallowed: list[str] = []

    async def body(self, session: AsyncSession, i: int, pause: float) -> None:
        await session.execute(
            text(f"UPDATE {self.table} SET n = n + 1 WHERE id = :i"), {"i": i % 10}
        )
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": pause})

    async def one(self, i: int) -> None:
        mode, delay, pause = i % 4, self.rng.uniform(0.005, 0.25), self.rng.uniform(0.01, 0.2)
        try:
            if mode == 0:
                await self._task_cancel(i, delay, pause)
            elif mode == 1:
                async with asyncio.timeout(delay) as cm:
                    await self.db.run(self.body, i, pause)
                if cm.expired():
                    self.swallowed.append(f"asyncio.timeout #{i}")
                self.outcomes["ok"] += 1
            elif mode == 2:
                started = time.monotonic()
                with anyio.fail_after(delay):
                    await self.db.run(self.body, i, pause)
                if time.monotonic() - started > delay + 0.1:
                    self.swallowed.append(f"anyio.fail_after #{i}")
                self.outcomes["ok"] += 1
            else:
                await self.db.run(self.body, i, pause)
                self.outcomes["ok"] += 1
        except TimeoutError:
            self.outcomes["timed_out"] += 1
        except Exception as exc:  # a kill the retries could not absorb: allowed, counted
            self.outcomes[type(exc).__name__] += 1

    async def _task_cancel(self, i: int, delay: float, pause: float) -> None:
        task = asyncio.ensure_future(self.db.run(self.body, i, pause))
        await asyncio.sleep(delay)
        requested = task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            self.outcomes["cancelled"] += 1
            return
        if requested:
            self.swallowed.append(f"task.cancel #{i}")  # cancelled, yet it returned
        self.outcomes["ok"] += 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_cancellation_storm_under_backend_kills(
    driver: str, counters: str, pg_dsn: str
) -> None:
    app = f"rdb_storm_{secrets.token_hex(3)}"
    url = make_url(pg_dsn).set(drivername=f"postgresql+{driver}")
    engine = create_async_engine(url, pool_size=6, max_overflow=4, application_name=app)
    breaker = CircuitBreaker(f"storm-{app}")
    storm = Storm(Database(engine, retry=FAST, breaker=breaker, deadline=10.0), counters, 7)
    kills = 0
    try:
        stop = time.monotonic() + STORM_SECONDS

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < stop:
                await storm.one(i)
                i += 8

        async def killer() -> None:
            nonlocal kills
            rng = random.Random(3)
            while time.monotonic() < stop:
                await asyncio.sleep(rng.uniform(0.1, 0.2))  # bounded: the storm's length
                kills += await asyncio.to_thread(_kill_all, pg_dsn, app)

        with anyio.fail_after(STORM_SECONDS + 30):
            await asyncio.gather(killer(), *(worker(w) for w in range(8)))
        pool = engine.sync_engine.pool
        end = time.monotonic() + 10
        while pool.checkedout() and time.monotonic() < end:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # bounded poll: background drops finish
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    idle_sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = %s AND state LIKE 'idle in transaction%%'"
    )
    end = time.monotonic() + 10
    while _scalar(pg_dsn, idle_sql, app) and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # bounded poll: the server notices the closed sockets
    assert _scalar(pg_dsn, idle_sql, app) == 0
    assert storm.swallowed == [], storm.swallowed
    out = storm.outcomes
    assert out["cancelled"] + out["timed_out"] > 10, out  # the storm really cancelled
    assert out["ok"] >= 3, out  # plain units (a quarter) get through the kills
    assert kills > 5
    stats = breaker.statistics()
    assert breaker.state == "closed", stats
    assert stats.rejected_total == 0, stats
