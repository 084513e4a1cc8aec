"""Typed attempt outcomes, provoked for real: lost COMMITs on units that wrote nothing,
waiting on an open breaker, one clock, closing a Database."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import (
    INJECTED,
    CircuitBreaker,
    CircuitOpenError,
    Database,
    ResilientDBError,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
    transactional,
)
from resilient_db.units import _attempt, _blocks, _database, _runner
from tests._relay import CutMode, relay_to

FAST = RetryPolicy(attempts=5, initial=0.001, max_backoff=0.01, deadline=None)


@pytest.fixture
def ops(pg_dsn: str) -> Iterator[str]:
    name = f"rdb_oc_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (op text PRIMARY KEY)")
        conn.execute(f"INSERT INTO {name} VALUES ('seed')")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


class Reports:
    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table
        self.calls = 0

    @transactional  # not declared read_only, writes nothing
    async def count(self, *, session: AsyncSession = INJECTED) -> int:
        self.calls += 1
        return int((await session.execute(text(f"SELECT count(*) FROM {self.table}"))).scalar_one())


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_lost_commit_of_a_unit_that_wrote_nothing_is_retried(
    driver: str, when: CutMode, ops: str, pg_dsn: str
) -> None:
    """Bug 3: the connection cut at COMMIT of a read-only @transactional method used to
    crash with ResourceClosedError (read from the closed connection); it is retried."""
    events: list[UnitEvent] = []
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        eng = create_async_engine(
            url.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=relay.port),
            command_timeout=5,
        )
        try:
            repo = Reports(Database(eng, retry=FAST, listeners=[events.append]), ops)
            relay.cut_commit = when
            assert await repo.count() == 1
        finally:
            await eng.dispose()
    assert relay.cuts == 1
    assert repo.calls == 2  # run again: nothing was written, nothing to resolve
    assert not [e for e in events if e.event in ("commit.resolved", "commit.unknown")]
    assert [e.event for e in events].count("retry.scheduled") == 1


async def test_wait_for_breaker_waits_for_the_probe_when_the_deadline_allows(
    pg_url: str,
) -> None:
    probes: list[float] = []

    async def health_check() -> None:
        probes.append(time.monotonic())

    engine = create_async_engine(pg_url)
    try:
        breaker = CircuitBreaker(
            f"wait-{secrets.token_hex(3)}", open_for=0.3, open_jitter=0.0,
            health_check=health_check, probe_interval=0.1, confirm_trips=False,
        )  # fmt: skip
        db = Database(engine, retry=FAST, breaker=breaker, deadline=5.0)
        breaker.force_open()
        with pytest.raises(CircuitOpenError):  # forced open: retry_after is infinite
            await db.with_options(wait_for_breaker=True).run(lambda s: s.execute(text("SELECT 1")))
        breaker.reset()
        _trip(breaker)
        started = time.monotonic()
        with pytest.raises(CircuitOpenError):  # fail-fast stays the default
            await db.run(lambda s: s.execute(text("SELECT 1")))
        assert time.monotonic() - started < 0.05
        waiting = db.with_options(wait_for_breaker=True)
        result = await waiting.run(lambda s: s.execute(text("SELECT 7")))
        assert result.scalar_one() == 7
        assert probes  # it waited for the probe, which closed the way
        _trip(breaker)
        short = db.with_options(wait_for_breaker=True, deadline=0.05)
        with pytest.raises(CircuitOpenError):  # the deadline does not outlast retry_after
            await short.run(lambda s: s.execute(text("SELECT 1")))
    finally:
        await engine.dispose()


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(30):
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            return
        permit.failure()
    assert breaker.state == "open"


async def test_one_clock_drives_deadline_retry_and_the_default_budget(pg_url: str) -> None:
    ticks = {"now": 1000.0}

    def clock() -> float:
        return ticks["now"]

    engine = create_async_engine(pg_url)
    try:
        db = Database(engine, clock=clock, breaker=None, deadline=30.0)
        assert db.retry.clock is clock
        assert db._ctx.clock is clock
        budget = db.budget
        assert budget is not None
        events: list[UnitEvent] = []
        db2 = Database(engine, clock=clock, breaker=None, listeners=[events.append])

        async def slow(session: AsyncSession) -> int:
            ticks["now"] += 7.5  # the injected clock says 7.5 s passed
            return int((await session.execute(text("SELECT 1"))).scalar_one())

        assert await db2.run(slow) == 1
        finished = next(e for e in events if e.event == "unit.finished")
        assert finished.elapsed == pytest.approx(7.5)  # measured on the one clock
    finally:
        await engine.dispose()


async def test_database_closes_and_refuses_new_units(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    async with Database(engine, breaker=None) as db:
        assert await db.run(lambda s: s.execute(text("SELECT 1"))) is not None
    with pytest.raises(ResilientDBError, match="closed by aclose"):
        await db.run(lambda s: s.execute(text("SELECT 1")))
    await db.aclose()  # idempotent


async def test_run_of_a_sync_function_says_it_needs_an_async_function(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        db = Database(engine, breaker=None)

        def sync_fn(session: AsyncSession) -> int:
            return 1

        with pytest.raises(TypeError, match=r"needs an async function.*async def sync_fn"):
            await db.run(sync_fn)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


def test_no_exception_identity_tables_and_no_back_calls() -> None:
    """Outcomes are values: nothing keyed by id(exc); the lower layers never import
    Database (the attempt, runner and blocks get one frozen UnitContext)."""
    for module in (_attempt, _runner, _blocks):
        source = Path(module.__file__ or "").read_text()
        assert "id(exc)" not in source
        assert "units._database" not in source
    assert "decisions" not in Path(_database.__file__ or "").read_text()


async def test_cancellation_propagates_within_100_ms_and_is_not_retried(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        events: list[UnitEvent] = []
        breaker = CircuitBreaker(f"cancel-{secrets.token_hex(3)}")
        db = Database(engine, retry=FAST, breaker=breaker, listeners=[events.append])

        started = asyncio.Event()

        async def slow(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))  # the transaction is open on the server
            started.set()
            await session.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.ensure_future(db.run(slow))
        await asyncio.wait_for(started.wait(), 10)  # bounded: the unit reached the server
        await asyncio.sleep(0)  # bounded poll: one turn, so pg_sleep is on the wire
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - cancelled_at < 0.1
        assert [e.event for e in events].count("retry.scheduled") == 0
        assert breaker.statistics().failures_total == 0
    finally:
        await engine.dispose()
