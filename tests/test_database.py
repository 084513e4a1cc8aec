"""Units of work against the real PostgreSQL, with real faults."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    INJECTED,
    CircuitBreaker,
    CommitOutcomeUnknown,
    ConfigurationError,
    Database,
    DeadlineExceeded,
    RetryBudget,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
    transactional,
)
from tests._relay import relay_to

FAST = RetryPolicy(attempts=5, initial=0.01, max_backoff=0.05, deadline=None)


@pytest.fixture
def table(admin_conn: psycopg.Connection[tuple[object, ...]], pg_dsn: str) -> Iterator[str]:
    name = f"acct_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute(f"CREATE TABLE {name}_ops (op text PRIMARY KEY, amount int NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 1000 FROM generate_series(1, 10) g")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_ops")


@pytest.fixture(params=["asyncpg", "psycopg"])
async def engine(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[AsyncEngine]:
    url = pg_dsn.replace("postgresql://", f"postgresql+{request.param}://", 1)
    eng = create_async_engine(url, pool_size=4, max_overflow=2, command_timeout=5)
    yield eng
    await eng.dispose()


def _breaker() -> CircuitBreaker:
    return CircuitBreaker("test", minimum_calls=5, failure_rate=0.5, open_for=0.2)


def _sync_scalar(dsn: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
        return None if row is None else row[0]


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_run_commits_and_returns(engine: AsyncEngine, table: str, pg_dsn: str) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())

    async def debit(session: AsyncSession, account: int, amount: int) -> int:
        await session.execute(
            text(f"UPDATE {table} SET balance = balance - :a WHERE id = :i"),
            {"a": amount, "i": account},
        )
        return amount

    assert await db.run(debit, 1, 10) == 10
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 1") == 990


async def test_fatal_error_is_raised_unchanged_without_retry(
    engine: AsyncEngine, table: str
) -> None:
    breaker = _breaker()
    db = Database(engine, retry=FAST, breaker=breaker)
    calls = 0

    async def dup(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))

    with pytest.raises(IntegrityError) as info:
        await db.run(dup)
    assert calls == 1
    assert "23505" in str(info.value.orig.sqlstate)  # type: ignore[union-attr]
    assert breaker.state == "closed"
    assert breaker.statistics().failures_total == 0
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_terminated_backend_mid_unit_is_retried(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    calls = 0

    async def body(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await session.execute(text(f"UPDATE {table} SET balance = balance + 1 WHERE id = 2"))
        if calls == 1:
            await anyio.to_thread.run_sync(_terminate, pg_dsn, pid)
        await session.execute(text(f"UPDATE {table} SET balance = balance + 1 WHERE id = 3"))
        return calls

    assert await db.run(body) == 2
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 2") == 1001
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 3") == 1001


async def test_real_serialization_conflict_is_retried(engine: AsyncEngine, table: str) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    both_read = asyncio.Barrier(2)
    calls = {"a": 0, "b": 0}

    async def bump(session: AsyncSession, who: str) -> None:
        calls[who] += 1
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        total = (await session.execute(text(f"SELECT sum(balance) FROM {table}"))).scalar_one()
        if calls[who] == 1:
            with anyio.fail_after(5):
                await both_read.wait()
        await session.execute(
            text(f"UPDATE {table} SET balance = :t WHERE id = :i"),
            {"t": total, "i": 4 if who == "a" else 5},
        )

    with anyio.fail_after(30):
        await asyncio.gather(db.run(bump, "a"), db.run(bump, "b"))
    assert sorted(calls.values()) == [1, 2]  # exactly one of them was retried


async def test_transfers_survive_repeated_backend_termination(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=RetryPolicy(attempts=8, initial=0.01, max_backoff=0.1))
    acknowledged: set[str] = set()
    failed: set[str] = set()

    async def transfer(session: AsyncSession, op: str, src: int, dst: int) -> None:
        await session.execute(text(f"INSERT INTO {table}_ops VALUES (:op, 1)"), {"op": op})
        await session.execute(
            text(f"UPDATE {table} SET balance = balance - 1 WHERE id = :i"), {"i": src}
        )
        await session.execute(
            text(f"UPDATE {table} SET balance = balance + 1 WHERE id = :i"), {"i": dst}
        )

    async def worker(n: int) -> None:
        for i in range(25):
            op = f"w{n}-{i}"
            try:
                await db.run(transfer, op, (n + i) % 10 + 1, (n + 2 * i + 1) % 10 + 1)
            except Exception:
                failed.add(op)
            else:
                acknowledged.add(op)

    async def killer(stop: anyio.Event) -> None:
        while not stop.is_set():
            await anyio.to_thread.run_sync(
                _sync_scalar,
                pg_dsn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'resilient_db' AND datname = current_database() "
                "AND pid <> pg_backend_pid()",
            )
            with anyio.move_on_after(0.05):
                await stop.wait()

    stop = anyio.Event()
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer, stop)
            async with anyio.create_task_group() as workers:
                for n in range(6):
                    workers.start_soon(worker, n)
            stop.set()

    total = _sync_scalar(pg_dsn, f"SELECT sum(balance) FROM {table}")
    assert total == 10 * 1000  # money conserved
    with psycopg.connect(pg_dsn) as conn:
        ops = {str(r[0]) for r in conn.execute(f"SELECT op FROM {table}_ops").fetchall()}
    assert acknowledged <= ops  # every acknowledged transfer is there (once: primary key)
    assert not (failed & ops)  # no failed one applied
    assert len(acknowledged) + len(failed) == 150
    assert len(acknowledged) > 100
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_connection_lost_during_commit(
    when: str, driver: str, table: str, pg_dsn: str
) -> None:
    url = make_url(pg_dsn)
    events: list[UnitEvent] = []
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=relay.port)
        eng = create_async_engine(proxied, command_timeout=5)
        try:
            db = Database(eng, retry=FAST, breaker=_breaker(), listeners=[events.append])
            calls = 0

            async def insert(session: AsyncSession) -> str:
                nonlocal calls
                calls += 1
                await session.execute(text(f"INSERT INTO {table}_ops VALUES ('c1', 1)"))
                if calls == 1:
                    relay.cut_commit = "before" if when == "before" else "after"
                return "done"

            with anyio.fail_after(30):
                assert await db.run(insert) == "done"
        finally:
            await eng.dispose()
    assert relay.cuts == 1
    assert _sync_scalar(pg_dsn, f"SELECT count(*) FROM {table}_ops WHERE op = 'c1'") == 1
    resolved = [e for e in events if e.event == "commit.resolved"]
    assert len(resolved) == 1
    if when == "after":
        assert calls == 1  # the server had committed: not run again
        assert resolved[0].outcome == "committed"
    else:
        assert calls == 2  # the server never committed: retried once
        assert resolved[0].outcome == "aborted"
    assert resolved[0].xid is not None


async def test_read_only_unit_captures_no_xid(engine: AsyncEngine, table: str) -> None:
    statements: list[str] = []
    from sqlalchemy import event

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        db = Database(engine, retry=FAST, breaker=_breaker())

        async def read(session: AsyncSession) -> int:
            return int(
                (await session.execute(text(f"SELECT sum(balance) FROM {table}"))).scalar_one()
            )

        async def write(session: AsyncSession) -> None:
            await session.execute(text(f"UPDATE {table} SET balance = balance WHERE id = 1"))

        assert await db.run(read) == 10_000
        assert not any("pg_current_xact_id" in s for s in statements)
        statements.clear()
        await db.run(write)
        assert sum("pg_current_xact_id" in s for s in statements) == 1
        statements.clear()
        await db.with_options(idempotent=True).run(write)
        assert not any("pg_current_xact_id" in s for s in statements)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_deadline_bounds_a_black_holed_unit(table: str, pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        eng = create_async_engine(proxied, command_timeout=30, connect_timeout=30)
        try:
            db = Database(eng, retry=FAST, breaker=_breaker(), deadline=1.0)

            async def read(session: AsyncSession) -> int:
                relay.black_hole.set()
                return int((await session.execute(text("SELECT 1"))).scalar_one())

            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises(DeadlineExceeded) as info:
                await db.run(read)
            elapsed = time.monotonic() - started
            assert elapsed < 1.0 + 2.0, elapsed  # deadline + cancellation allowance
            assert info.value.deadline == 1.0
            assert eng.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            relay.black_hole.clear()
            db2 = Database(eng, retry=FAST, breaker=_breaker(), deadline=5.0)

            async def ok(session: AsyncSession) -> int:
                return int((await session.execute(text("SELECT 7"))).scalar_one())

            assert await db2.run(ok) == 7
        finally:
            await eng.dispose()


async def test_transaction_context_manager_commits_and_rolls_back(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    async with db.transaction() as session:
        await session.execute(text(f"UPDATE {table} SET balance = 5 WHERE id = 6"))
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 6") == 5

    async def failing() -> None:
        async with db.transaction() as session:
            await session.execute(text(f"UPDATE {table} SET balance = 6 WHERE id = 6"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing()
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 6") == 5
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_transaction_retries_checkout_not_body(table: str, pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        eng = create_async_engine(proxied, command_timeout=5, pool_size=1)
        try:
            db = Database(eng, retry=FAST, breaker=_breaker())
            async with db.transaction() as session:  # warm one pooled connection
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            _terminate(pg_dsn, pid)  # killed while idle in the pool
            async with db.transaction() as session:
                assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        finally:
            await eng.dispose()


class Accounts:
    """A repository defined before any engine exists."""

    def __init__(self, database: Database, table: str) -> None:
        self.database = database
        self.table = table
        self.outer_calls = 0

    @transactional
    async def balance(self, account: int, *, session: AsyncSession = INJECTED) -> int:
        row = await session.execute(
            text(f"SELECT balance FROM {self.table} WHERE id = :i"), {"i": account}
        )
        return int(row.scalar_one())

    @transactional
    async def move(self, src: int, dst: int, *, session: AsyncSession = INJECTED) -> int:
        self.outer_calls += 1
        await self.add(src, -1)
        await self.add(dst, 1)
        return await self.balance(dst)

    @transactional(name="accounts.add")
    async def add(self, account: int, amount: int, *, session: AsyncSession = INJECTED) -> None:
        await session.execute(
            text(f"UPDATE {self.table} SET balance = balance + :a WHERE id = :i"),
            {"a": amount, "i": account},
        )


async def test_nested_decorated_calls_join_the_outer_unit(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    repo = Accounts(db, table)
    seen: list[int] = []
    from sqlalchemy import event

    def on_begin(conn: Any) -> None:
        seen.append(1)

    event.listen(engine.sync_engine, "begin", on_begin)
    try:
        assert await repo.move(7, 8) == 1001
    finally:
        event.remove(engine.sync_engine, "begin", on_begin)
    assert seen == [1]  # one transaction for the three calls
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 7") == 999


async def test_nested_failure_retries_only_the_outer_unit(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    repo = Accounts(db, table)
    original_add = Accounts.add
    kills = 0

    async def add_then_die(self: Accounts, account: int, amount: int) -> None:
        nonlocal kills
        await original_add(self, account, amount)
        if kills == 0:
            kills += 1
            pid = await self.database.run(lambda s: s.execute(text("SELECT pg_backend_pid()")))
            await anyio.to_thread.run_sync(_terminate, pg_dsn, pid.scalar_one())

    repo.add = add_then_die.__get__(repo)  # type: ignore[method-assign]
    assert await repo.move(9, 10) == 1001
    assert repo.outer_calls == 2  # the outer unit ran again, whole
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 9") == 999


async def test_decorator_without_database_says_how_to_fix() -> None:
    @transactional
    async def orphan(x: int, *, session: AsyncSession = INJECTED) -> int:
        return x

    with pytest.raises(TypeError, match="could not find a Database"):
        await orphan(1)


async def test_cancelling_units_leaks_nothing_and_leaves_breaker_alone(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    breaker = _breaker()
    db = Database(engine, retry=FAST, breaker=breaker)

    async def slow(session: AsyncSession, i: int) -> None:
        await session.execute(
            text(f"UPDATE {table} SET balance = balance WHERE id = :i"), {"i": i % 10 + 1}
        )
        await session.execute(text("SELECT pg_sleep(0.2)"))

    async def one(i: int) -> None:
        with anyio.move_on_after(0.1 if i % 10 < 3 else 30):
            await db.run(slow, i)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
    assert breaker.state == "closed"
    stats = breaker.statistics()
    assert stats.failures_total == 0
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def server_side() -> int:
        return int(
            _sync_scalar(
                pg_dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'resilient_db' AND state <> 'idle'",
            )
        )

    with anyio.fail_after(10):
        while server_side() != 0:  # noqa: ASYNC110 - poll server state with a deadline
            await anyio.sleep(0.05)


async def test_attempts_block_form_retries_the_whole_block(
    engine: AsyncEngine, table: str, pg_dsn: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    runs = 0
    async for attempt in db.attempts(name="block"):
        async with attempt as session:
            runs += 1
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await session.execute(text(f"UPDATE {table} SET balance = balance + 5 WHERE id = 1"))
            if runs == 1:
                await anyio.to_thread.run_sync(_terminate, pg_dsn, pid)
            await session.execute(text("SELECT 1"))
    assert runs == 2
    assert _sync_scalar(pg_dsn, f"SELECT balance FROM {table} WHERE id = 1") == 1005


async def test_attempts_block_form_raises_fatal_errors_unchanged(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    runs = 0

    async def go() -> None:
        nonlocal runs
        async for attempt in db.attempts():
            async with attempt as session:
                runs += 1
                await session.execute(text(f"INSERT INTO {table} VALUES (2, 0)"))

    with pytest.raises(IntegrityError):
        await go()
    assert runs == 1
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_attempts_give_up_with_the_original_error_annotated(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine, retry=RetryPolicy(attempts=3, initial=0.001, max_backoff=0.002))
    runs = 0

    async def go() -> None:
        nonlocal runs
        async for attempt in db.attempts():
            async with attempt as session:
                runs += 1
                # 55P03 (lock not available, retryable): the row is locked by `locker`
                await session.execute(text(f"SELECT * FROM {table} WHERE id = 3 FOR UPDATE NOWAIT"))

    with psycopg.connect(_dsn_of(engine)) as locker:
        locker.execute(f"SELECT * FROM {table} WHERE id = 3 FOR UPDATE")
        with pytest.raises(DBAPIError) as info:
            await go()
        locker.rollback()
    assert runs == 3
    assert any("gave up after 3 attempt(s)" in note for note in info.value.__notes__)


def _dsn_of(engine: AsyncEngine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_attempts_inside_a_unit_join_it(engine: AsyncEngine, table: str) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())

    async def outer(session: AsyncSession) -> bool:
        blocks = 0
        async for attempt in db.attempts():
            async with attempt as inner:
                blocks += 1
                same = inner is session
        return same and blocks == 1

    assert await db.run(outer) is True


async def test_commit_status_of_known_transactions(engine: AsyncEngine, table: str) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())

    async def write(session: AsyncSession) -> int:
        await session.execute(text(f"UPDATE {table} SET balance = balance WHERE id = 1"))
        xid = (await session.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one()
        return int(xid)

    committed = await db.run(write)
    assert await db.commit_status(committed) == "committed"

    async def rolled_back(session: AsyncSession) -> int:
        xid = int((await session.execute(text("SELECT pg_current_xact_id()::text"))).scalar_one())
        raise LookupError(xid)

    with pytest.raises(LookupError) as info:
        await db.run(rolled_back)
    assert await db.commit_status(info.value.args[0]) == "aborted"
    assert await db.commit_status(10**15) == "unknown"  # far in the future: an error
    with pytest.raises(ValueError, match="non-negative int"):
        await db.commit_status(-1)


@pytest.mark.parametrize("deadline", [1.0, 4.0])
async def test_lost_commit_unresolvable_within_deadline_is_unknown_not_failed(
    deadline: float, table: str, pg_dsn: str
) -> None:
    """The server committed, then the network went silent: the unit must not be reported
    as failed (DeadlineExceeded) but as in doubt (CommitOutcomeUnknown with its xid)."""
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        eng = create_async_engine(proxied, command_timeout=30, connect_timeout=30)
        try:
            db = Database(eng, retry=FAST, breaker=None, deadline=deadline, resolve_timeout=1.0)

            async def insert(session: AsyncSession) -> None:
                await session.execute(text(f"INSERT INTO {table}_ops VALUES ('u1', 1)"))
                relay.cut_commit = "after"
                relay.black_hole_after_cut = True

            started = time.monotonic()
            with anyio.fail_after(20), pytest.raises(CommitOutcomeUnknown) as info:
                await db.run(insert)
            elapsed = time.monotonic() - started
            assert elapsed < deadline + 1.0 + 0.5, elapsed  # + the resolution allowance
            assert info.value.xid is not None
        finally:
            relay.black_hole.clear()
            await eng.dispose()
    applied = _sync_scalar(pg_dsn, f"SELECT count(*) FROM {table}_ops WHERE op = 'u1'")
    assert applied == 1
    checker = create_async_engine(pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        assert await Database(checker).commit_status(info.value.xid) == "committed"
    finally:
        await checker.dispose()


@pytest.mark.parametrize(
    ("options", "error", "needle"),
    [
        (
            {"deadline": -1},
            ValueError,
            "Database(deadline=-1) must be a finite number of seconds > 0",
        ),
        ({"deadline": float("nan")}, ValueError, "Database(deadline=nan) must be a finite number"),
        ({"resolve_timeout": 0}, ValueError, "Database(resolve_timeout=0) must be a finite number"),
        ({"cleanup_timeout": True}, ValueError, "Database(cleanup_timeout=True) must be a finite"),
        ({"allowance": -0.1}, ValueError, "Database(allowance=-0.1) must be a finite number"),
        ({"retry": 3}, TypeError, "Database(retry=3) must be a RetryPolicy"),
        ({"breaker": "db"}, TypeError, "Database(breaker='db') must be a CircuitBreaker"),
        ({"budget": 10}, TypeError, "Database(budget=10) must be a RetryBudget"),
        ({"classifier": print}, TypeError, "must be a Classifier"),
        ({"listeners": [1]}, TypeError, "must be callables taking a UnitEvent"),
        ({"idempotent": "yes"}, TypeError, "Database(idempotent='yes') must be True or False"),
        ({"wait_for_breaker": 1}, TypeError, "Database(wait_for_breaker=1) must be True or"),
        ({"clock": 5}, TypeError, "Database(clock=5) must be"),
        ({"retries": 3}, TypeError, "did you mean 'retry'?"),
        ({"deadlin": 3}, TypeError, "did you mean 'deadline'?"),
        ({"session_options": {"autoflsh": False}}, TypeError, "did you mean 'autoflush'?"),
        ({"session_options": {"bind": None}}, ValueError, "free of bind/binds"),
        ({"session_options": ["autoflush"]}, TypeError, "must be a dict of AsyncSession"),
    ],
)
async def test_database_rejects_bad_options_with_the_fix(
    options: dict[str, Any], error: type[Exception], needle: str
) -> None:
    engine = create_async_engine("postgresql+asyncpg://u@127.0.0.1/db")
    try:
        with pytest.raises(error) as info:
            Database(engine, **options)
        assert needle in str(info.value)
        assert isinstance(info.value, ConfigurationError)
        assert "; fix: " in str(info.value)
    finally:
        await engine.dispose()


def test_database_needs_an_async_engine() -> None:
    with pytest.raises(TypeError, match="needs a SQLAlchemy AsyncEngine"):
        Database("postgresql+asyncpg://u@h/db")  # type: ignore[arg-type]


def test_transactional_rejects_bad_use_at_decoration_time() -> None:
    with pytest.raises(ValueError, match=r"deadline=0\) must be a finite number"):
        transactional(deadline=0)
    with pytest.raises(TypeError, match="needs an async function"):

        @transactional  # type: ignore[arg-type]
        def sync_method(x: int, *, session: AsyncSession = INJECTED) -> int:
            return x

    with pytest.raises(TypeError, match=r"database=42\) must be a Database"):
        transactional(database=42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="'session' parameter"):

        @transactional
        async def no_session(x: int) -> int:
            return x

    with pytest.raises(TypeError, match="'session' parameter"):

        @transactional
        async def positional_only(session: AsyncSession, /) -> None:
            return None


async def test_listeners_see_retries_and_an_exhausted_budget(
    engine: AsyncEngine, table: str
) -> None:
    events: list[UnitEvent] = []
    db = Database(
        engine,
        retry=RetryPolicy(attempts=5, initial=0.001, max_backoff=0.002),
        breaker=None,
        budget=RetryBudget(max_tokens=1, token_ratio=0, per_second=0),
        listeners=[events.append],
        name="budgeted",
    )

    async def locked(session: AsyncSession) -> None:
        await session.execute(text(f"SELECT * FROM {table} WHERE id = 4 FOR UPDATE NOWAIT"))

    with psycopg.connect(_dsn_of(engine)) as locker:
        locker.execute(f"SELECT * FROM {table} WHERE id = 4 FOR UPDATE")
        with pytest.raises(DBAPIError) as info:
            await db.run(locked)
        locker.rollback()
    names = [e.event for e in events]
    assert names.count("retry.scheduled") == 1
    scheduled = next(e for e in events if e.event == "retry.scheduled")
    assert scheduled.category == "lock_timeout"
    assert scheduled.sleep is not None
    gave_up = [e for e in events if e.event == "retry.gave_up"]
    assert [e.outcome for e in gave_up] == ["budget"]
    assert gave_up[0].attempt == 2
    assert any("stopped by budget" in n for n in info.value.__notes__)


async def test_write_in_a_read_only_unit_is_a_program_error(
    engine: AsyncEngine, table: str
) -> None:
    db = Database(engine, retry=FAST, breaker=_breaker())
    calls = 0

    async def write(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(text(f"UPDATE {table} SET balance = 0 WHERE id = 5"))

    with pytest.raises(DBAPIError) as info:
        await db.with_options(read_only=True).run(write)
    assert "read-only transaction" in str(info.value)
    assert calls == 1  # READ ONLY was ours: not a failover, never retried
