"""Units of work under network faults (the fault proxy) and a real failover."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import (
    BreakerEvent,
    CircuitBreaker,
    CircuitOpenError,
    CommitOutcomeUnknown,
    Database,
    DeadlineExceeded,
    RetryPolicy,
    create_async_engine,
    engine_health_check,
)
from resilient_db.pytest_plugin import ToxiproxyPostgres
from resilient_db.testing import ClusterPair
from resilient_db.units._commit import capture_identity, resolve_commit

Factory = Callable[..., ToxiproxyPostgres]


@pytest.fixture
def app_name() -> str:
    return f"rdb_faults_{secrets.token_hex(3)}"


def _server_connections(dsn: str, app_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


async def _wait_for_connections(dsn: str, app_name: str, at_most: int, timeout: float) -> int:
    with anyio.move_on_after(timeout):
        while (n := await anyio.to_thread.run_sync(_server_connections, dsn, app_name)) > at_most:  # noqa: ASYNC110 - poll server state with a deadline
            await anyio.sleep(0.05)
        return n
    return await anyio.to_thread.run_sync(_server_connections, dsn, app_name)


async def _select(session: AsyncSession, value: int = 1) -> int:
    return int((await session.execute(text("SELECT CAST(:v AS int)"), {"v": value})).scalar_one())


async def test_black_hole_fails_within_deadline_and_leaks_nothing(
    pg_url: str, pg_dsn: str, app_name: str, toxiproxy_postgres: Factory
) -> None:
    proxy = toxiproxy_postgres(pg_url)
    engine = create_async_engine(
        proxy.url, application_name=app_name, command_timeout=30, connect_timeout=30
    )
    db = Database(
        engine,
        retry=RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05),
        breaker=None,
        deadline=1.5,
    )
    try:
        assert await db.run(_select, 1) == 1  # one warm pooled connection
        baseline = _server_connections(pg_dsn, app_name)
        assert baseline == 1
        with proxy.black_hole():
            started = time.monotonic()
            with anyio.fail_after(15), pytest.raises(DeadlineExceeded):
                await db.run(_select, 2)
            elapsed = time.monotonic() - started
            assert elapsed < 1.5 + 2.0, elapsed  # deadline + cancellation allowance
            assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The proxy closes the black-holed connections: the server's side goes away too.
        assert await _wait_for_connections(pg_dsn, app_name, baseline, timeout=10) <= baseline
        with anyio.fail_after(15):
            assert await db.run(_select, 3) == 3
    finally:
        await engine.dispose()
    assert await _wait_for_connections(pg_dsn, app_name, 0, timeout=10) == 0


async def test_proxy_down_opens_the_breaker_then_probes_back(
    pg_url: str, app_name: str, toxiproxy_postgres: Factory
) -> None:
    proxy = toxiproxy_postgres(pg_url)
    engine = create_async_engine(proxy.url, application_name=app_name, connect_timeout=2)
    attempts = 0

    def count_connect(*args: Any) -> None:
        nonlocal attempts
        attempts += 1

    from sqlalchemy import event

    event.listen(engine.sync_engine, "do_connect", count_connect)
    transitions: list[str] = []

    def on_transition(e: BreakerEvent) -> None:
        transitions.append(e.state.value)

    breaker = CircuitBreaker(
        "proxied",
        minimum_calls=4,
        failure_rate=0.5,
        open_for=5.0,
        probe_interval=0.2,
        health_check=engine_health_check(engine),
        listeners=[on_transition],
    )
    db = Database(
        engine,
        retry=RetryPolicy(attempts=2, initial=0.01, max_backoff=0.02),
        breaker=breaker,
        budget=None,
        deadline=5.0,
    )
    try:
        assert await db.run(_select) == 1
        with proxy.down():
            for _ in range(6):
                with anyio.fail_after(10), pytest.raises(Exception):  # noqa: B017
                    await db.run(_select)
            assert breaker.state == "open"
            # Open: fail fast, no I/O, whatever the number of callers.
            before = attempts
            started = time.monotonic()
            rejections: list[CircuitOpenError] = []
            for _ in range(200):
                try:
                    await db.run(_select)
                except CircuitOpenError as exc:
                    rejections.append(exc)
            rejected = len(rejections)
            assert {e.name for e in rejections} == {"proxied"}
            assert all(e.retry_after >= 0 for e in rejections)
            assert time.monotonic() - started < 1.0
            # At most a probe or two went out (rate-bounded by probe_interval).
            assert rejected >= 198
            assert attempts - before <= 2
        # Back up: the next probe due closes the loop well before open_for (5 s) elapses.
        recovered_at = None
        started = time.monotonic()
        with anyio.fail_after(5):
            while recovered_at is None:
                try:
                    await db.run(_select)
                except CircuitOpenError:
                    await anyio.sleep(0.02)
                else:
                    recovered_at = time.monotonic() - started
        assert recovered_at < 1.0
        assert "open" in transitions
        assert transitions[-1] in ("closed", "half_open")
        for _ in range(3):
            assert await db.run(_select) == 1
        assert breaker.state == "closed"
    finally:
        await engine.dispose()


@pytest.fixture
def pair_table(resilient_db_cluster_pair: ClusterPair) -> ClusterPair:
    pair = resilient_db_cluster_pair
    pair.primary.execute("CREATE TABLE ledger (op text PRIMARY KEY, amount int NOT NULL)")
    pair.primary.wait_for_replay(pair.standby)
    return pair


@pytest.mark.cluster
async def test_failover_writes_resume(pair_table: ClusterPair, toxiproxy_postgres: Factory) -> None:
    primary, standby = pair_table.primary, pair_table.standby
    proxy = toxiproxy_postgres(primary.url())
    engine = create_async_engine(proxy.url, connect_timeout=1, command_timeout=3, pool_size=3)
    db = Database(
        engine,
        retry=RetryPolicy(attempts=50, initial=0.05, max_backoff=0.3),
        breaker=None,
        deadline=20.0,
    )
    acknowledged: list[str] = []
    errors: list[BaseException] = []

    async def write(session: AsyncSession, op: str) -> None:
        await session.execute(text("INSERT INTO ledger VALUES (:op, 1)"), {"op": op})

    async def writer(n: int, stop: anyio.Event) -> None:
        i = 0
        while not stop.is_set():
            op = f"w{n}-{i}"
            i += 1
            try:
                await db.run(write, op)
            except Exception as exc:
                errors.append(exc)
            else:
                acknowledged.append(op)

    try:
        stop = anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(writer, n, stop)
                with anyio.fail_after(10):
                    while len(acknowledged) < 20:  # noqa: ASYNC110 - progress with a deadline
                        await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(primary.stop, "fast")
                # Point the proxy at the standby before it is promoted: writes now reach a
                # server in recovery (25006), which must recycle the pool and retry.
                proxy.set_upstream(f"127.0.0.1:{standby.port}")
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(standby.promote)
                during = len(acknowledged)
                with anyio.fail_after(15):
                    while len(acknowledged) < during + 20:  # noqa: ASYNC110 - progress with a deadline
                        await anyio.sleep(0.01)
                stop.set()
    finally:
        await engine.dispose()
    # No error surfaces but the honest one: a COMMIT cut by the primary's stop, whose xid the
    # promoted standby (another timeline) cannot vouch for. At most one per writer.
    unexpected = [e for e in errors if not isinstance(e, CommitOutcomeUnknown)]
    assert unexpected == []
    assert len(errors) <= 3
    for e in errors:
        assert isinstance(e, CommitOutcomeUnknown)
        assert e.xid is not None
        assert e.timeline is not None
    rows = {str(r[0]) for r in standby.execute("SELECT op FROM ledger")}
    assert set(acknowledged) <= rows  # nothing acknowledged was lost in the failover
    assert len(rows) == len(set(rows))


@pytest.mark.cluster
async def test_an_xid_from_before_a_failover_is_not_trusted_after_it(
    pair_table: ClusterPair,
) -> None:
    """After promotion the new primary may give the same xid number to other transactions:
    resolution and commit_status() must answer "unknown" for an xid of the old timeline."""
    primary, standby = pair_table.primary, pair_table.standby
    old = create_async_engine(primary.url(), pool_size=1)
    try:
        async with AsyncSession(old) as session, session.begin():
            await session.execute(text("INSERT INTO ledger VALUES ('before', 1)"))
            ident = await capture_identity(session)
        assert ident is not None
        assert ident.timeline is not None
        assert await Database(old).commit_status(ident.xid, timeline=ident.timeline) == (
            "committed"
        )
    finally:
        await old.dispose()
    await anyio.to_thread.run_sync(primary.wait_for_replay, standby)
    await anyio.to_thread.run_sync(primary.stop, "fast")
    await anyio.to_thread.run_sync(standby.promote)
    new = create_async_engine(standby.url(), pool_size=1)
    try:
        db = Database(new)
        assert await db.commit_status(ident.xid, timeline=ident.timeline) == "unknown"
        assert await db.commit_status(ident.xid) == "committed"  # replicated: same number
        assert await resolve_commit(new, ident, timeout=2) == "unknown"
    finally:
        await new.dispose()
