"""Hard deadlines, provoked for real through the protocol-aware relay (tests/_relay.py).

No unit call returns later than its deadline plus the allowance (0.25 s), cleanup included;
a COMMIT still in doubt at the deadline raises CommitOutcomeUnknown at the deadline, and its
resolution goes on in the background (``commit.resolved``, ``db.commit_status``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    CommitOutcomeUnknown,
    Database,
    DeadlineExceeded,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
)
from resilient_db.units import DEFAULT_ALLOWANCE
from tests._relay import Relay, relay_to
from tests._waiting import poll

FAST = RetryPolicy(attempts=5, initial=0.001, max_backoff=0.01, deadline=None)
#: Scheduling noise on a shared 2-core machine, on top of the promised allowance.
SLACK = 0.25


@pytest.fixture
def ops(pg_dsn: str) -> Iterator[str]:
    name = f"rdb_dl_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (op text PRIMARY KEY)")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(str(row[0]))


def _proxied(pg_dsn: str, relay: Relay, driver: str = "asyncpg", **kw: Any) -> AsyncEngine:
    url = make_url(pg_dsn).set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=relay.port)
    return create_async_engine(url, command_timeout=30, connect_timeout=30, **kw)


def test_the_allowance_is_documented_and_small() -> None:
    assert DEFAULT_ALLOWANCE <= 0.25
    assert "0.25" in (Database.__doc__ or "")


async def test_commit_in_doubt_raises_at_the_deadline_and_resolves_in_the_background(
    ops: str, pg_dsn: str
) -> None:
    """The server committed, the answer was lost and the network froze: the caller hears
    CommitOutcomeUnknown at its deadline (not 2 s later); once the network heals the
    background resolution settles it: commit.resolved(committed), commit_status()."""
    events: list[UnitEvent] = []
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        eng = _proxied(pg_dsn, relay)
        try:
            db = Database(
                eng, retry=FAST, breaker=None, deadline=1.0, resolve_timeout=5.0,
                listeners=[events.append],
            )  # fmt: skip

            async def insert(session: AsyncSession) -> None:
                await session.execute(text(f"INSERT INTO {ops} VALUES ('doubt')"))
                relay.cut_commit = "after"
                relay.black_hole_after_cut = True

            started = time.monotonic()
            with pytest.raises(CommitOutcomeUnknown) as info:
                await db.run(insert)
            elapsed = time.monotonic() - started
            assert elapsed <= 1.0 + DEFAULT_ALLOWANCE + SLACK, elapsed
            xid = info.value.xid
            assert xid is not None
            assert "commit_status" in str(info.value)
            assert not [e for e in events if e.event == "commit.resolved"]  # not yet
            relay.black_hole.clear()  # the network heals
            assert await poll(lambda: any(e.event == "commit.resolved" for e in events), 10)
            resolved = next(e for e in events if e.event == "commit.resolved")
            assert resolved.outcome == "committed"
            assert resolved.xid == xid
            assert await db.commit_status(xid) == "committed"  # from the settled resolution
        finally:
            relay.black_hole.clear()
            await eng.dispose()
    assert _count(pg_dsn, f"SELECT count(*) FROM {ops} WHERE op = 'doubt'") == 1


async def test_commit_status_waits_for_a_running_resolution(ops: str, pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        eng = _proxied(pg_dsn, relay)
        try:
            db = Database(eng, retry=FAST, breaker=None, deadline=0.5, resolve_timeout=5.0)

            async def insert(session: AsyncSession) -> None:
                await session.execute(text(f"INSERT INTO {ops} VALUES ('wait')"))
                relay.cut_commit = "after"
                relay.black_hole_after_cut = True

            with pytest.raises(CommitOutcomeUnknown) as info:
                await db.run(insert)
            assert info.value.xid is not None
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, relay.black_hole.clear)
            assert await db.commit_status(info.value.xid, timeout=8.0) == "committed"
        finally:
            relay.black_hole.clear()
            await eng.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_frozen_network_with_a_pool_of_frozen_connections(driver: str, pg_dsn: str) -> None:
    """Every pooled connection and every new one is frozen (no FIN/RST): all callers end
    within deadline + allowance, leave nothing checked out, and after the heal the next
    units succeed at once on fresh connections (no frozen one is handed out again)."""
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        eng = _proxied(pg_dsn, relay, driver, pool_size=4, max_overflow=2)
        try:
            db = Database(eng, retry=FAST, breaker=None, deadline=1.0)

            async def hold(session: AsyncSession) -> int:
                await session.execute(text("SELECT pg_sleep(0.05)"))
                return 1

            assert sum(await asyncio.gather(*(db.run(hold) for _ in range(4)))) == 4
            relay.black_hole.set()

            async def timed() -> tuple[float, BaseException | None]:
                t0 = time.monotonic()
                try:
                    await db.run(hold)
                except Exception as exc:
                    return time.monotonic() - t0, exc
                return time.monotonic() - t0, None

            results = await asyncio.gather(*(timed() for _ in range(8)))
            worst = max(t for t, _ in results)
            assert worst <= 1.0 + DEFAULT_ALLOWANCE + SLACK, results
            assert all(isinstance(e, DeadlineExceeded) for _, e in results), results
            assert await poll(lambda: eng.sync_engine.pool.checkedout() == 0, 5)  # type: ignore[attr-defined]
            relay.black_hole.clear()
            healed = time.monotonic()
            assert await db.run(hold) == 1
            assert time.monotonic() - healed < 0.5 + SLACK
            assert sum(await asyncio.gather(*(db.run(hold) for _ in range(6)))) == 6
        finally:
            relay.black_hole.clear()
            await eng.dispose()


async def test_a_commit_frozen_mid_flight_is_in_doubt_at_the_deadline(
    ops: str, pg_dsn: str
) -> None:
    """COMMIT sent into a frozen network (never reaches the server): the deadline makes it
    in doubt at once; the background resolution terminates the orphaned backend and finds
    the transaction aborted (the row is not there)."""
    events: list[UnitEvent] = []
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        eng = _proxied(pg_dsn, relay)
        try:
            db = Database(
                eng, retry=FAST, breaker=None, deadline=1.0, resolve_timeout=8.0,
                listeners=[events.append],
            )  # fmt: skip

            async def insert(session: AsyncSession) -> None:
                await session.execute(text(f"INSERT INTO {ops} VALUES ('frozen')"))
                await session.flush()
                relay.black_hole.set()  # COMMIT (and the xid capture's answer) vanish

            started = time.monotonic()
            with pytest.raises((CommitOutcomeUnknown, DeadlineExceeded)) as info:
                await db.run(insert)
            assert time.monotonic() - started <= 1.0 + DEFAULT_ALLOWANCE + SLACK
            relay.black_hole.clear()
            if isinstance(info.value, CommitOutcomeUnknown) and info.value.xid is not None:
                assert await poll(lambda: any(e.event == "commit.resolved" for e in events), 15)
                resolved = next(e for e in events if e.event == "commit.resolved")
                assert resolved.outcome == "aborted"
        finally:
            relay.black_hole.clear()
            await eng.dispose()
    assert await poll(
        lambda: (
            _count(pg_dsn, f"SELECT count(*) FROM {ops}") == 0
            and _count(
                pg_dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND query LIKE '%pg_current_xact_id%'",
            )
            == 0
        ),
        15,
    )
