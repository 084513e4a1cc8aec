"""The classifier on REAL faults, through raw asyncpg, SQLAlchemy + asyncpg and SQLAlchemy +
psycopg 3. Every exception here is raised by the driver against the local PostgreSQL (or a
socket the test controls); nothing is built by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from resilient_db import Category, Classification, ErrorKind, Phase, classify
from resilient_db.testing import free_port

DRIVERS = ("asyncpg", "sa_asyncpg", "sa_psycopg")
WAIT = 20.0  # bound on every wait in this module


# --------------------------------------------------------------------------- drivers


class Conn:
    """One connection, the same small API for the three drivers."""

    pid: int

    async def execute(self, sql: str, timeout: float | None = None) -> None:
        raise NotImplementedError

    async def bind_int(self, value: object) -> None:
        """``SELECT CAST($1 AS integer)`` with ``value`` bound as a parameter."""
        raise NotImplementedError

    async def begin(self) -> None:
        raise NotImplementedError

    async def commit(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AsyncpgConn(Conn):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.pid = conn.get_server_pid()
        self.tr: Any = None

    async def execute(self, sql: str, timeout: float | None = None) -> None:
        await self.conn.execute(sql, timeout=timeout)

    async def bind_int(self, value: object) -> None:
        await self.conn.fetchval("SELECT CAST($1 AS integer)", value)

    async def begin(self) -> None:
        self.tr = self.conn.transaction()
        await self.tr.start()

    async def commit(self) -> None:
        await self.tr.commit()

    async def close(self) -> None:
        self.conn.terminate()


class SAConn(Conn):
    def __init__(self, engine: AsyncEngine, conn: AsyncConnection, pid: int) -> None:
        self.engine = engine
        self.conn = conn
        self.pid = pid

    async def execute(self, sql: str, timeout: float | None = None) -> None:
        if timeout is None or self.engine.dialect.driver == "asyncpg":
            # asyncpg: the client-side timeout is the engine's command_timeout.
            await self.conn.execute(text(sql))
        else:
            async with asyncio.timeout(timeout):
                await self.conn.execute(text(sql))

    async def bind_int(self, value: object) -> None:
        await self.conn.execute(text("SELECT CAST(:v AS integer)"), {"v": value})

    async def begin(self) -> None:
        pass  # SQLAlchemy 2.x connections begin on first use

    async def commit(self) -> None:
        await self.conn.commit()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close()
        await self.engine.dispose()


def sa_url(driver: str, dsn: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


def make_engine(
    driver: str, dsn: str, *, command_timeout: float | None = None, **kw: Any
) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if driver == "asyncpg":
        connect_args["ssl"] = False
        if command_timeout is not None:
            connect_args["command_timeout"] = command_timeout
    else:
        connect_args["sslmode"] = "disable"
        connect_args["gssencmode"] = "disable"
        connect_args["connect_timeout"] = 10
    return create_async_engine(sa_url(driver, dsn), connect_args=connect_args, **kw)


async def connect(driver: str, dsn: str, *, command_timeout: float | None = None) -> Conn:
    if driver == "asyncpg":
        raw = await asyncpg.connect(dsn, ssl=False, timeout=10, command_timeout=command_timeout)
        return AsyncpgConn(raw)
    engine = make_engine(driver.removeprefix("sa_"), dsn, command_timeout=command_timeout)
    try:
        conn = await engine.connect()
    except BaseException:
        await engine.dispose()
        raise
    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    await conn.commit()
    return SAConn(engine, conn, pid)


@contextlib.asynccontextmanager
async def connected(driver: str, dsn: str, **kw: Any) -> AsyncIterator[Conn]:
    conn = await connect(driver, dsn, **kw)
    try:
        yield conn
    finally:
        await conn.close()


_last_exc: list[BaseException] = []


async def raised(aw: Awaitable[object]) -> BaseException:
    """The exception ``aw`` raises (it must raise, within the module's wait bound)."""
    bound = asyncio.timeout(WAIT)
    try:
        async with bound:
            await aw
    except BaseException as exc:
        if bound.expired():
            raise AssertionError("the operation hung instead of failing") from exc
        _last_exc[:] = [exc]
        return exc
    raise AssertionError("expected the operation to fail, it succeeded")


async def connect_error(driver: str, dsn: str) -> BaseException:
    """The exception raised when ``driver`` connects to ``dsn``."""

    async def attempt() -> None:
        conn = await connect(driver, dsn)
        await conn.close()

    return await raised(attempt())


def check(
    c: Classification,
    kind: ErrorKind,
    category: str,
    *,
    breaker: bool | None = None,
    invalidate: bool | None = None,
    sqlstate: str | bool | None = False,
) -> None:
    assert (c.kind, c.category) == (kind, category), (c, _last_exc)
    if breaker is not None:
        assert c.counts_toward_breaker is breaker, c
    if invalidate is not None:
        assert c.invalidate_pool is invalidate, c
    if sqlstate is not False:
        assert c.sqlstate == sqlstate, c
    assert c.reason


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Connection]]]:
    """A factory of superuser asyncpg connections to the session database (all closed)."""
    conns: list[asyncpg.Connection] = []

    async def make() -> asyncpg.Connection:
        conn = await asyncpg.connect(pg_dsn, ssl=False, timeout=10)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.terminate()


@pytest.fixture(scope="module")
def tables(pg_dsn: str) -> Iterator[None]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            """
            DROP TABLE IF EXISTS clf_child, clf_parent, clf_row, clf_commit;
            CREATE TABLE clf_parent (id int PRIMARY KEY, name text NOT NULL,
                                     qty int CHECK (qty >= 0));
            CREATE TABLE clf_child (id int PRIMARY KEY, parent int REFERENCES clf_parent);
            CREATE TABLE clf_row (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
            CREATE TABLE clf_commit (marker text PRIMARY KEY);
            INSERT INTO clf_parent VALUES (1, 'one', 1);
            INSERT INTO clf_row (id) SELECT generate_series(1, 40);
            """
        )
    yield
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS clf_child, clf_parent, clf_row, clf_commit")


_row_ids = iter(range(1, 41))


def row_pair() -> tuple[int, int]:
    """Two rows of ``clf_row`` no other test in this run uses."""
    return next(_row_ids), next(_row_ids)


async def wait_for(mon: asyncpg.Connection, sql: str, *args: object, timeout: float = WAIT) -> None:
    """Poll ``sql`` (a boolean query) until it is true, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            if await mon.fetchval(sql, *args):
                return
            await asyncio.sleep(0.01)  # poll with a deadline


async def wait_active(mon: asyncpg.Connection, pid: int, what: str = "active") -> None:
    if what == "active":
        sql = (
            "SELECT state = 'active' AND query LIKE '%pg_sleep%' "
            "FROM pg_stat_activity WHERE pid = $1"
        )
    elif what == "lock":
        sql = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    else:  # gone
        sql = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)"
    await wait_for(mon, sql, pid)


def with_host(dsn: str, host: str, port: int | None = None) -> str:
    rest = dsn.split("@", 1)[1]
    hostport, db = rest.split("/", 1)
    old_port = hostport.rsplit(":", 1)[1]
    return f"postgresql://postgres@{host}:{port or old_port}/{db}"


# --------------------------------------------------------------------------- connection loss


async def test_backend_terminated_mid_query(driver: str, pg_dsn: str, admin: Any) -> None:
    mon = await admin()
    async with connected(driver, pg_dsn) as conn:
        query = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60)"))
        await wait_active(mon, conn.pid)
        await mon.execute("SELECT pg_terminate_backend($1)", conn.pid)
        exc = await raised(query)
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "connection_lost", breaker=True, invalidate=True)
    # asyncpg >= 0.32 keeps the server's 57P01 as the cause of its client-side 08003.
    assert c.sqlstate == "57P01"
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


async def test_backend_terminated_while_idle_in_pool(driver: str, pg_dsn: str, admin: Any) -> None:
    mon = await admin()
    if driver == "asyncpg":
        # asyncpg's own pool silently replaces closed connections: use an idle connection.
        async with connected(driver, pg_dsn) as conn:
            await mon.execute("SELECT pg_terminate_backend($1)", conn.pid)
            await wait_active(mon, conn.pid, "gone")
            exc = await raised(conn.execute("SELECT 1"))
    else:
        engine = make_engine(driver.removeprefix("sa_"), pg_dsn, pool_size=1, pool_pre_ping=False)
        try:
            async with engine.connect() as sa:
                pid = (await sa.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await mon.execute("SELECT pg_terminate_backend($1)", pid)
            await wait_active(mon, pid, "gone")

            async def use() -> None:
                async with engine.connect() as sa:
                    await sa.execute(text("SELECT 1"))

            exc = await raised(use())
        finally:
            await engine.dispose()
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "connection_lost", breaker=True, invalidate=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_connection_refused(driver: str, pg_dsn: str, host: str) -> None:
    exc = await connect_error(driver, with_host(pg_dsn, host, free_port()))
    for phase in ("connect", None):
        c = classify(exc, phase=phase)
        check(c, ErrorKind.RETRYABLE, "connect_failed", breaker=True, invalidate=False)
        assert c.sqlstate is None


async def test_unknown_host(driver: str, pg_dsn: str) -> None:
    try:
        socket.getaddrinfo("no-such-host.invalid", 5432)
    except socket.gaierror as err:
        dns_errno = err.errno
    exc = await connect_error(driver, with_host(pg_dsn, "no-such-host.invalid"))
    c = classify(exc, phase="connect")
    if dns_errno == socket.EAI_AGAIN:  # no resolver reachable: a temporary DNS failure
        check(c, ErrorKind.RETRYABLE, "connect_failed", breaker=True)
    else:
        check(c, ErrorKind.FATAL, "config", breaker=True, invalidate=False)


async def test_unknown_role(driver: str, pg_dsn: str) -> None:
    # The local server trusts every role, so a wrong password cannot fail here; an unknown
    # role is the same class (28) of error. A real wrong password runs on a private cluster.
    dsn = pg_dsn.replace("postgres@", "clf_no_such_role@", 1)
    exc = await connect_error(driver, dsn)
    c = classify(exc, phase="connect")
    check(c, ErrorKind.FATAL, "config", breaker=True, invalidate=False)
    if driver != "sa_psycopg":  # psycopg connect errors carry no SQLSTATE
        assert c.sqlstate == "28000"


async def test_unknown_database(driver: str, pg_dsn: str) -> None:
    dsn = pg_dsn.rsplit("/", 1)[0] + "/clf_no_such_database"
    c = classify(await connect_error(driver, dsn), phase="connect")
    check(c, ErrorKind.FATAL, "config", breaker=True)
    assert c.sqlstate == (None if driver == "sa_psycopg" else "3D000")


@pytest.fixture(scope="module")
def limited_role(pg_dsn: str) -> Iterator[str]:
    name = f"clf_limited_{secrets.token_hex(3)}"
    base = pg_dsn.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 1")
    yield name
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(f"DROP ROLE IF EXISTS {name}")


async def test_too_many_connections(driver: str, pg_dsn: str, limited_role: str) -> None:
    dsn = pg_dsn.replace("postgres@", f"{limited_role}@", 1)
    holder = await asyncpg.connect(dsn, ssl=False, timeout=10)
    try:
        exc = await connect_error(driver, dsn)
    finally:
        await holder.close()
    c = classify(exc, phase="connect")
    check(c, ErrorKind.RETRYABLE, "overload", breaker=True, invalidate=False)
    assert c.sqlstate == (None if driver == "sa_psycopg" else "53300")


# --------------------------------------------------------------------------- concurrency


async def test_serialization_failure(driver: str, pg_dsn: str, admin: Any, tables: None) -> None:
    rid, _ = row_pair()
    other = await admin()
    async with connected(driver, pg_dsn) as conn:
        await conn.begin()
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.execute(f"SELECT v FROM clf_row WHERE id = {rid}")
        await other.execute("UPDATE clf_row SET v = v + 1 WHERE id = $1", rid)
        exc = await raised(conn.execute(f"UPDATE clf_row SET v = v + 1 WHERE id = {rid}"))
    c = classify(exc, phase="statement")
    check(
        c, ErrorKind.RETRYABLE, "serialization", breaker=False, invalidate=False, sqlstate="40001"
    )


async def test_serialization_failure_raised_by_commit_is_retryable(
    driver: str, pg_dsn: str, admin: Any, tables: None
) -> None:
    a, b = row_pair()
    other = await admin()
    async with connected(driver, pg_dsn) as conn:
        # Write skew under SERIALIZABLE: each reads the row the other writes.
        await conn.begin()
        await conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        await conn.execute(f"SELECT v FROM clf_row WHERE id = {a}")
        await conn.execute(f"UPDATE clf_row SET v = v + 1 WHERE id = {b}")
        async with other.transaction(isolation="serializable"):
            await other.execute("SELECT v FROM clf_row WHERE id = $1", b)
            await other.execute("UPDATE clf_row SET v = v + 1 WHERE id = $1", a)
        exc = await raised(conn.commit())
    c = classify(exc, phase=Phase.COMMIT)
    check(c, ErrorKind.RETRYABLE, "serialization", breaker=False, sqlstate="40001")


async def test_deadlock(driver: str, pg_dsn: str, admin: Any, tables: None) -> None:
    a, b = row_pair()
    other = await admin()
    mon = await admin()
    await other.execute("SET deadlock_timeout = '30s'")  # make the driver the victim
    async with connected(driver, pg_dsn) as conn:
        await conn.execute("SET deadlock_timeout = '50ms'")
        if driver != "asyncpg":
            await conn.commit()
        tr = other.transaction()
        await tr.start()
        try:
            await other.execute("UPDATE clf_row SET v = v + 1 WHERE id = $1", a)
            await conn.begin()
            await conn.execute(f"UPDATE clf_row SET v = v + 1 WHERE id = {b}")
            blocked = asyncio.ensure_future(
                other.execute("UPDATE clf_row SET v = v + 1 WHERE id = $1", b)
            )
            await wait_active(mon, other.get_server_pid(), "lock")
            exc = await raised(conn.execute(f"UPDATE clf_row SET v = v + 1 WHERE id = {a}"))
            async with asyncio.timeout(WAIT):
                await blocked
        finally:
            await tr.rollback()
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "deadlock", breaker=False, sqlstate="40P01")


async def test_lock_timeout(driver: str, pg_dsn: str, admin: Any, tables: None) -> None:
    rid, _ = row_pair()
    other = await admin()
    async with connected(driver, pg_dsn) as conn, other.transaction():
        await other.execute("SELECT 1 FROM clf_row WHERE id = $1 FOR UPDATE", rid)
        await conn.begin()
        await conn.execute("SET LOCAL lock_timeout = '100ms'")
        exc = await raised(conn.execute(f"UPDATE clf_row SET v = 1 WHERE id = {rid}"))
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "lock_timeout", breaker=False, sqlstate="55P03")


# --------------------------------------------------------------------------- timeouts


async def test_statement_timeout_is_retryable_at_most_once(driver: str, pg_dsn: str) -> None:
    async with connected(driver, pg_dsn) as conn:
        await conn.begin()
        await conn.execute("SET LOCAL statement_timeout = '100ms'")
        exc = await raised(conn.execute("SELECT pg_sleep(10)"))
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "statement_timeout", breaker=False, sqlstate="57014")
    assert c.category is Category.STATEMENT_TIMEOUT
    assert (c.rule, c.max_retries) == ("statement_timeout", 1)
    # The server's limit fired, whoever else was waiting: the same verdict either way.
    assert classify(exc, phase="statement", own_timeout=True) == c
    assert classify(exc, phase="statement", own_timeout=False) == c
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


async def test_admin_cancel_is_fatal(driver: str, pg_dsn: str, admin: Any) -> None:
    mon = await admin()
    async with connected(driver, pg_dsn) as conn:
        query = asyncio.ensure_future(conn.execute("SELECT pg_sleep(10)"))
        await wait_active(mon, conn.pid)
        assert await mon.fetchval("SELECT pg_cancel_backend($1)", conn.pid) is True
        exc = await raised(query)
    c = classify(exc, phase="statement")
    check(c, ErrorKind.FATAL, "admin_cancel", breaker=False, invalidate=False, sqlstate="57014")
    assert (c.rule, c.max_retries) == ("admin_cancel", None)
    assert classify(exc, phase="statement", own_timeout=False) == c
    # A cancel our own deadline sent reads the same on the wire: then it is our timeout.
    ours = classify(exc, phase="statement", own_timeout=True)
    check(ours, ErrorKind.RETRYABLE, "timeout", breaker=True, sqlstate="57014")
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


async def test_client_command_timeout(driver: str, pg_dsn: str) -> None:
    async with connected(driver, pg_dsn, command_timeout=0.2) as conn:
        exc = await raised(conn.execute("SELECT pg_sleep(10)", timeout=0.2))
    assert isinstance(exc, TimeoutError)
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "timeout", breaker=True, sqlstate=None)
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


async def test_pool_checkout_timeout(driver: str, pg_dsn: str) -> None:
    if driver == "asyncpg":
        pool = await asyncpg.create_pool(pg_dsn, ssl=False, min_size=1, max_size=1)
        try:
            async with pool.acquire():
                exc = await raised(pool.acquire(timeout=0.2))
        finally:
            await pool.close()
        # asyncpg's pool raises a bare TimeoutError: indistinguishable from a connect
        # timeout, so it stays a (breaker-counted) timeout.
        check(classify(exc, phase="checkout"), ErrorKind.RETRYABLE, "timeout")
        return
    engine = make_engine(
        driver.removeprefix("sa_"), pg_dsn, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        async with engine.connect():
            exc = await raised(engine.connect())
    finally:
        await engine.dispose()
    assert isinstance(exc, sqlalchemy.exc.TimeoutError)
    c = classify(exc, phase="checkout")
    check(c, ErrorKind.RETRYABLE, "pool_exhausted", breaker=False, invalidate=False)


async def test_idle_in_transaction_session_timeout(driver: str, pg_dsn: str, admin: Any) -> None:
    mon = await admin()
    async with connected(driver, pg_dsn) as conn:
        await conn.execute("SET idle_in_transaction_session_timeout = '200ms'")
        if driver != "asyncpg":
            await conn.commit()
        await conn.begin()
        await conn.execute("SELECT 1")
        await wait_active(mon, conn.pid, "gone")
        exc = await raised(conn.execute("SELECT 1"))
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "connection_lost")
    # asyncpg loses the server's 25P03 ("connection is closed"); psycopg keeps it.
    assert c.sqlstate in (None, "25P03")


# --------------------------------------------------------------------------- program errors


@pytest.mark.parametrize(
    ("sql", "category", "sqlstate"),
    [
        pytest.param(
            "INSERT INTO clf_parent VALUES (1, 'dup', 1)", "integrity", "23505", id="unique"
        ),
        pytest.param("INSERT INTO clf_child VALUES (1, 999)", "integrity", "23503", id="fk"),
        pytest.param(
            "INSERT INTO clf_parent VALUES (2, NULL, 1)", "integrity", "23502", id="notnull"
        ),
        pytest.param(
            "INSERT INTO clf_parent VALUES (3, 'x', -1)", "integrity", "23514", id="check"
        ),
        pytest.param("SELEC 1", "programming", "42601", id="syntax"),
        pytest.param(
            "SELECT * FROM clf_no_such_table", "programming", "42P01", id="undefined-table"
        ),
        pytest.param("SELECT 1/0", "data", "22012", id="division-by-zero"),
        pytest.param("SELECT 'abc'::int", "data", "22P02", id="invalid-text"),
    ],
)
async def test_sql_errors_are_fatal(
    driver: str, pg_dsn: str, tables: None, sql: str, category: str, sqlstate: str
) -> None:
    async with connected(driver, pg_dsn) as conn:
        exc = await raised(conn.execute(sql))
    for phase in ("statement", "commit"):  # a deferred constraint can fail at COMMIT too
        c = classify(exc, phase=phase)
        check(c, ErrorKind.FATAL, category, breaker=False, invalidate=False, sqlstate=sqlstate)


async def test_bad_bind_type(driver: str, pg_dsn: str) -> None:
    async with connected(driver, pg_dsn) as conn:
        exc = await raised(conn.bind_int("not a number"))
    c = classify(exc, phase="statement")
    check(c, ErrorKind.FATAL, "data", breaker=False)


async def test_read_only_transaction_on_primary(driver: str, pg_dsn: str, tables: None) -> None:
    async with connected(driver, pg_dsn) as conn:
        await conn.begin()
        await conn.execute("SET TRANSACTION READ ONLY")
        exc = await raised(conn.execute("INSERT INTO clf_commit VALUES ('ro')"))
        probe = await connect(driver, pg_dsn)
        try:
            in_recovery = False  # the local server is a primary
            await probe.execute("SELECT pg_is_in_recovery()")
        finally:
            await probe.close()
    c = classify(exc, phase="statement", in_recovery=in_recovery)
    check(c, ErrorKind.FATAL, "programming", breaker=False, invalidate=False, sqlstate="25006")
    # Without the role probe the classifier assumes a stale pool after a failover.
    check(classify(exc), ErrorKind.RETRYABLE, "failover", invalidate=True, sqlstate="25006")


async def test_cached_plan_invalidated_by_alter_table(driver: str, pg_dsn: str, admin: Any) -> None:
    table = f"clf_plan_{driver}"
    other = await admin()
    await other.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int)")
    try:
        async with connected(driver, pg_dsn) as conn:
            query = f"SELECT * FROM {table}"
            if driver == "asyncpg":
                assert isinstance(conn, AsyncpgConn)
                await conn.conn.fetch(query)  # prepared and cached
                await other.execute(f"ALTER TABLE {table} ADD COLUMN b int")
                # Outside a transaction asyncpg retries by itself; inside it must raise.
                await conn.begin()
                exc = await raised(conn.conn.fetch(query))
            else:
                for _ in range(6):  # psycopg prepares after 5 executions
                    await conn.execute(query)
                await conn.commit()
                await other.execute(f"ALTER TABLE {table} ADD COLUMN b int")
                await conn.begin()
                exc = await raised(conn.execute(query))
    finally:
        await other.execute(f"DROP TABLE IF EXISTS {table}")
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "stale_cache", breaker=False, invalidate=False)
    assert c.retry_after == 0.0


# --------------------------------------------------------------------------- misuse


async def test_cancelled_task(driver: str, pg_dsn: str, admin: Any) -> None:
    mon = await admin()
    async with connected(driver, pg_dsn) as conn:
        task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60)"))
        await wait_active(mon, conn.pid)
        task.cancel()
        exc = await raised(task)
    assert isinstance(exc, asyncio.CancelledError)
    c = classify(exc, phase="statement")
    check(c, ErrorKind.FATAL, "cancelled", breaker=False, invalidate=False)
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


async def test_concurrent_use_of_one_session(driver: str, pg_dsn: str) -> None:
    if driver == "asyncpg":
        async with connected(driver, pg_dsn) as conn:
            first = asyncio.ensure_future(conn.execute("SELECT pg_sleep(0.5)"))
            await asyncio.sleep(0)  # let the first query start
            exc = await raised(conn.execute("SELECT 1"))
            async with asyncio.timeout(WAIT):
                await first
    else:
        engine = make_engine(driver.removeprefix("sa_"), pg_dsn)
        try:
            async with AsyncSession(engine) as session:
                results = await asyncio.wait_for(
                    asyncio.gather(
                        session.execute(text("SELECT pg_sleep(0.3)")),
                        session.execute(text("SELECT pg_sleep(0.3)")),
                        return_exceptions=True,
                    ),
                    WAIT,
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                assert errors, "concurrent use of one AsyncSession did not fail"
                exc = errors[0]
        finally:
            await engine.dispose()
    c = classify(exc, phase="statement")
    check(c, ErrorKind.FATAL, "misuse", breaker=False, invalidate=False)


async def test_statement_after_error_without_rollback_is_misuse(
    driver: str, pg_dsn: str, tables: None
) -> None:
    async with connected(driver, pg_dsn) as conn:
        await conn.begin()
        await raised(conn.execute("SELECT 1/0"))
        exc = await raised(conn.execute("SELECT 1"))
    # 25P02 from the server, or SQLAlchemy's PendingRollbackError before any I/O.
    check(classify(exc, phase="statement"), ErrorKind.FATAL, "misuse", breaker=False)
