"""``unit.started`` / ``unit.finished`` around the block forms, ``db.attempts()`` and
``db.transaction()``, against the real PostgreSQL with real faults: once per unit, and an
end however it ends (committed, fatal, retries given up, the deadline, an open breaker, the
caller's cancellation in a block, in a backoff or in a cleanup, a loop left early)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    CircuitBreaker,
    CircuitOpenError,
    Database,
    DeadlineExceeded,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
)
from resilient_db.units._context import Call
from tests._relay import Relay, relay_to

FAST = RetryPolicy(attempts=5, initial=0.001, max_backoff=0.01, deadline=None, per_category={})
BOUND = 20.0  # every wait of the test itself is bounded by this many seconds

Ends = list[tuple[str, str | None, str | None]]


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    name = f"rdb_be_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {name} VALUES (0)")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(params=["asyncpg", "psycopg"])
async def engine(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[AsyncEngine]:
    url = pg_dsn.replace("postgresql://", f"postgresql+{request.param}://", 1)
    eng = create_async_engine(url, pool_size=2, max_overflow=2, command_timeout=10)
    yield eng
    await eng.dispose()


class Recorder:
    """A listener: every event, and an asyncio.Event per event name seen."""

    def __init__(self) -> None:
        self.events: list[UnitEvent] = []
        self.seen: dict[str, asyncio.Event] = {}

    def __call__(self, event: UnitEvent) -> None:
        self.events.append(event)
        self.flag(event.event).set()

    def flag(self, name: str) -> asyncio.Event:
        return self.seen.setdefault(name, asyncio.Event())

    async def wait(self, name: str) -> None:
        await asyncio.wait_for(self.flag(name).wait(), BOUND)

    def ends(self) -> Ends:
        return [
            (e.event, e.outcome, e.error_type)
            for e in self.events
            if e.event in ("unit.started", "unit.finished")
        ]

    def finished(self) -> UnitEvent:
        (event,) = [e for e in self.events if e.event == "unit.finished"]
        return event

    def names(self) -> list[str]:
        return [e.event for e in self.events]


STARTED = ("unit.started", None, None)
OK = ("unit.finished", "ok", None)


def error(error_type: str) -> tuple[str, str, str]:
    return ("unit.finished", "error", error_type)


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def kill_own_backend(session: AsyncSession, dsn: str) -> None:
    """Terminate this session's backend for real; the next statement fails (retryable)."""
    pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await asyncio.to_thread(_terminate, dsn, pid)
    await session.execute(text("SELECT 1"))


def rows(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


async def _in_transaction(db: Database, body: Callable[[AsyncSession], Awaitable[None]]) -> None:
    async with db.transaction() as session:
        await body(session)


async def _in_attempts(db: Database, body: Callable[[AsyncSession], Awaitable[None]]) -> None:
    async for attempt in db.attempts():
        async with attempt as session:
            await body(session)


FORMS = {"transaction": _in_transaction, "attempts": _in_attempts}


# -- db.attempts() ---------------------------------------------------------------------------


async def test_attempts_tell_one_start_and_one_end_around_a_real_retry(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    runs = 0
    async for attempt in db.attempts(name="transfer"):
        async with attempt as session:
            runs += 1
            await session.execute(text(f"INSERT INTO {table} VALUES (1)"))
            if runs == 1:
                await kill_own_backend(session, pg_dsn)
    assert runs == 2
    assert rows(pg_dsn, table) == [0, 1]
    assert rec.ends() == [STARTED, OK]
    names = rec.names()
    assert names.index("unit.started") == 0
    assert names.index("unit.attempt_failed") < names.index("retry.scheduled")
    assert names[-1] == "unit.finished"  # the end comes after every attempt
    finished = rec.finished()
    assert finished.name == "transfer"
    assert finished.attempt == 2
    assert finished.category is None  # a success carries no error


async def test_attempts_end_with_the_fatal_error(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])

    async def duplicate(session: AsyncSession) -> None:
        await session.execute(text(f"INSERT INTO {table} VALUES (0)"))

    with pytest.raises(IntegrityError):
        await _in_attempts(db, duplicate)
    assert rec.ends() == [STARTED, error("IntegrityError")]
    finished = rec.finished()
    assert (finished.category, finished.sqlstate, finished.attempt) == ("integrity", "23505", 1)


async def test_attempts_end_with_the_last_error_when_the_policy_stops(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    policy = RetryPolicy(attempts=3, initial=0.001, max_backoff=0.002, deadline=None)
    db = Database(engine, retry=policy, breaker=None, listeners=[rec])
    with psycopg.connect(pg_dsn) as locker:
        locker.execute(f"SELECT * FROM {table} WHERE id = 0 FOR UPDATE")

        async def nowait(session: AsyncSession) -> None:  # 55P03, retryable: `locker` has it
            await session.execute(text(f"SELECT * FROM {table} WHERE id = 0 FOR UPDATE NOWAIT"))

        with pytest.raises(DBAPIError) as info:
            await _in_attempts(db, nowait)
        locker.rollback()
    assert rec.ends() == [STARTED, error(type(info.value).__qualname__)]
    finished = rec.finished()
    assert (finished.sqlstate, finished.attempt) == ("55P03", 3)
    names = rec.names()
    assert names.count("unit.attempt_failed") == 3
    assert names.index("retry.gave_up") < names.index("unit.finished")


async def test_attempts_end_when_the_caller_cancels_in_a_block(
    engine: AsyncEngine, table: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    on_server = asyncio.Event()

    async def go() -> None:
        async for attempt in db.attempts():
            async with attempt as session:
                await session.execute(text("SELECT 1"))
                on_server.set()
                await session.execute(text("SELECT pg_sleep(10)"))

    task = asyncio.ensure_future(go())
    await asyncio.wait_for(on_server.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert rec.ends() == [STARTED, error("CancelledError")]
    assert "retry.scheduled" not in rec.names()


async def test_attempts_end_when_the_caller_cancels_in_a_backoff(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    slow = RetryPolicy(
        initial=10.0, max_backoff=10.0, jitter="none", deadline=None, per_category={}
    )
    db = Database(engine, retry=slow, breaker=None, deadline=None, listeners=[rec])

    async def go() -> None:
        async for attempt in db.attempts():
            async with attempt as session:
                await kill_own_backend(session, pg_dsn)

    task = asyncio.ensure_future(go())
    await rec.wait("retry.scheduled")  # the loop is about to sleep 10 s
    assert rec.ends() == [STARTED]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert rec.ends() == [STARTED, error("CancelledError")]
    assert rec.finished().attempt == 1


async def test_a_break_inside_the_block_commits_and_ends_the_unit_ok(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    async for attempt in db.attempts():
        async with attempt as session:
            await session.execute(text(f"INSERT INTO {table} VALUES (2)"))
            break  # a normal exit of the block: it commits
    assert rows(pg_dsn, table) == [0, 2]
    assert rec.ends() == [STARTED, OK]


async def test_a_loop_left_between_blocks_ends_when_the_iterator_is_closed(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    blocks = 0
    async with contextlib.aclosing(db.attempts()) as attempts:
        async for attempt in attempts:
            async with attempt as session:
                blocks += 1
                await session.execute(text(f"INSERT INTO {table} VALUES (3)"))
                await kill_own_backend(session, pg_dsn)  # swallowed: retryable
            assert rec.ends() == [STARTED]  # not an end: the loop may run another attempt
            break  # ...but the caller gives up
    assert blocks == 1
    assert rows(pg_dsn, table) == [0]  # nothing committed
    (failed,) = [e for e in rec.events if e.event == "unit.attempt_failed"]
    assert failed.error_type is not None
    assert rec.ends() == [STARTED, error(failed.error_type)]
    finished = rec.finished()
    assert (finished.category, finished.attempt) == ("connection_lost", 1)
    await attempts.aclose()  # closing again: nothing more
    assert len(rec.ends()) == 2


async def test_a_loop_left_before_its_first_block_ran_no_unit(engine: AsyncEngine) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    async with contextlib.aclosing(db.attempts()) as attempts:
        async for _ in attempts:
            break
    assert rec.events == []


async def test_attempts_without_listeners_tell_nothing(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=None)
    attempts = db.attempts()
    runs = 0
    async for attempt in attempts:
        async with attempt as session:
            runs += 1
            if runs == 1:
                await kill_own_backend(session, pg_dsn)
    assert runs == 2
    assert not attempts._observed  # no unit.started was told: nothing is owed either
    assert not attempts._reported


# -- both block forms ------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_the_unit_deadline_ends_the_unit(engine: AsyncEngine, form: str) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, deadline=0.3, listeners=[rec])

    async def sleeps(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(10)"))

    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(FORMS[form](db, sleeps), BOUND)
    assert rec.ends() == [STARTED, error("DeadlineExceeded")]


@pytest.mark.parametrize("form", FORMS)
async def test_an_open_breaker_ends_the_unit_at_its_opening(engine: AsyncEngine, form: str) -> None:
    rec = Recorder()
    breaker = CircuitBreaker(f"events-{secrets.token_hex(3)}")
    breaker.force_open()
    db = Database(engine, retry=FAST, breaker=breaker, listeners=[rec])

    async def never(session: AsyncSession) -> None:
        raise AssertionError("the body must not run")

    with pytest.raises(CircuitOpenError):
        await FORMS[form](db, never)
    assert rec.ends() == [STARTED, error("CircuitOpenError")]
    assert rec.finished().attempt == 1


@pytest.mark.parametrize("form", FORMS)
async def test_a_cancellation_during_the_cleanup_still_ends_the_unit(
    pg_dsn: str, form: str
) -> None:
    """The body fails; while its connection is being returned (the ROLLBACK goes into a
    black hole) the caller is cancelled: the unit ends, and its deadline timer is gone."""
    rec = Recorder()
    url = make_url(pg_dsn)
    calls: list[Call | None] = []
    databases: list[Database] = []
    try:
        async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
            eng = create_async_engine(
                url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port),
                command_timeout=5,
            )
            db = Database(
                eng, retry=FAST, breaker=None, deadline=15.0, cleanup_timeout=1.0, listeners=[rec]
            )
            databases.append(db)
            await _cancel_during_cleanup(db, form, relay, rec, calls)
        # The relay is gone: the connection left in the background is dropped at once.
    finally:
        for db in databases:
            await db.aclose()
    assert rec.ends() == [STARTED, error("CancelledError")]
    (call,) = calls
    assert call is not None
    assert call.deadline is None  # disarmed: it would cancel the caller's task later


async def _cancel_during_cleanup(
    db: Database, form: str, relay: Relay, rec: Recorder, calls: list[Call | None]
) -> None:
    async def fails(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))
        relay.black_hole.set()  # the server goes silent: the cleanup hangs
        raise LookupError("the application's own error")

    async def go() -> None:
        if form == "transaction":
            tx = db.transaction()
            async with tx as session:
                calls.append(tx._call)
                await fails(session)
        else:
            attempts = db.attempts()
            calls.append(attempts._call)
            async for attempt in attempts:
                async with attempt as session:
                    await fails(session)

    task = asyncio.ensure_future(go())
    await rec.wait("unit.attempt_failed")  # told just before the cleanup starts
    assert "unit.finished" not in rec.names()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)


async def test_a_transaction_tells_its_end_ok_or_with_the_body_error(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])
    async with db.transaction(name="ok") as session:
        await session.execute(text(f"INSERT INTO {table} VALUES (4)"))
    with pytest.raises(LookupError):
        async with db.transaction(name="app") as session:
            raise LookupError("the application's own error")
    with pytest.raises(DBAPIError) as info:
        async with db.transaction(name="lost") as session:  # never retried: one attempt
            await kill_own_backend(session, pg_dsn)
    assert rows(pg_dsn, table) == [0, 4]
    lost = type(info.value).__qualname__
    assert rec.ends() == [STARTED, OK, STARTED, error("LookupError"), STARTED, error(lost)]
    last = [e for e in rec.events if e.event == "unit.finished"][-1]
    assert (last.name, last.outcome, last.category) == ("lost", "error", "connection_lost")


async def test_blocks_inside_a_unit_join_it_and_tell_nothing_of_their_own(
    engine: AsyncEngine, table: str
) -> None:
    rec = Recorder()
    db = Database(engine, retry=FAST, breaker=None, listeners=[rec])

    async def outer(session: AsyncSession) -> None:
        async with db.transaction() as inner:
            assert inner is session
        async for attempt in db.attempts():
            async with attempt as inner:
                assert inner is session

    await db.run(outer)
    assert rec.ends() == [STARTED, OK]
