"""A keyed unit's COMMIT in doubt at its deadline (issue #9), provoked for real.

The fault proxy freezes the connection exactly at COMMIT (a ``timeout`` toxic added from
SQLAlchemy's ``commit`` event, just before the driver sends it): the call raises
``CommitOutcomeUnknown(key=...)`` at its deadline (within the allowance), and once the proxy
heals the background resolution asks the ledger and reports ``commit.resolved`` with what
the ledger table really holds; ``ledger.lookup`` waits for that resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    CommitOutcomeUnknown,
    Database,
    Ledger,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
)
from resilient_db.pytest_plugin import ToxiproxyPostgres
from resilient_db.units import DEFAULT_ALLOWANCE
from tests._relay import relay_to
from tests._waiting import poll

pytestmark = pytest.mark.slow  # each waits out a deadline and a heal (2-4 s)

FAST = RetryPolicy(attempts=5, initial=0.001, max_backoff=0.01, deadline=None)
#: Scheduling noise on a shared 2-core machine, on top of the promised allowance.
SLACK = 0.25
DEADLINE = 1.0


@pytest.fixture
def ledger(pg_dsn: str) -> Iterator[Ledger]:
    led = Ledger(table=f"rdb_kd_keys_{secrets.token_hex(4)}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in led.ddl():
            conn.execute(statement)
    yield led
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {led.name}")


@pytest.fixture
def ops(pg_dsn: str) -> Iterator[str]:
    name = f"rdb_kd_ops_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (op text PRIMARY KEY)")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def _count(dsn: str, sql: str, *params: object) -> int:
    """Straight to the server (never through the proxy): what is really there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(str(row[0]))


def _in_ledger(dsn: str, ledger: Ledger, key: str) -> bool:
    return _count(dsn, f"SELECT count(*) FROM {ledger.name} WHERE key = %s", key) == 1


def _resolved(events: list[UnitEvent]) -> list[UnitEvent]:
    return [e for e in events if e.event == "commit.resolved"]


def _freeze_at_commit(
    engine: AsyncEngine, proxy: ToxiproxyPostgres, stream: str, faults: contextlib.ExitStack
) -> None:
    """At the next COMMIT, before the driver sends it, freeze ``stream`` for every connection
    through the proxy (no FIN, no RST) until ``faults`` is closed."""

    armed = [True]

    def freeze(conn: Any) -> None:
        if armed.pop() if armed else False:
            faults.enter_context(proxy.timeout(0, stream=stream))

    event.listen(engine.sync_engine, "commit", freeze)
    faults.callback(event.remove, engine.sync_engine, "commit", freeze)


def _insert(ops: str) -> Callable[[AsyncSession, str], Any]:
    async def insert(session: AsyncSession, op: str) -> dict[str, str]:
        await session.execute(text(f"INSERT INTO {ops} VALUES (:op)"), {"op": op})
        return {"op": op}

    return insert


def _keyed_db(
    engine: AsyncEngine, ledger: Ledger, events: list[UnitEvent], *, resolve_timeout: float = 10.0
) -> Database:
    """The Database of these tests: no breaker, fast retries, a 1 s deadline, events kept."""
    return Database(
        engine,
        retry=FAST,
        breaker=None,
        deadline=DEADLINE,
        resolve_timeout=resolve_timeout,
        listeners=[events.append],
        ledger=ledger,
    )


async def _in_doubt_at_the_deadline(db: Database, ops: str, key: str) -> CommitOutcomeUnknown:
    started = time.monotonic()
    with pytest.raises(CommitOutcomeUnknown) as info:
        await db.run(_insert(ops), key, key=key)  # type: ignore[call-arg]
    elapsed = time.monotonic() - started
    assert elapsed <= DEADLINE + DEFAULT_ALLOWANCE + SLACK, elapsed
    assert info.value.key == key
    assert "ledger.lookup" in str(info.value)
    return info.value


@pytest.fixture
async def proxied(
    pg_url: str, toxiproxy_postgres: Callable[..., ToxiproxyPostgres]
) -> AsyncIterator[tuple[ToxiproxyPostgres, AsyncEngine]]:
    proxy = toxiproxy_postgres(pg_url)
    engine = create_async_engine(proxy.url, command_timeout=30, connect_timeout=30)
    try:
        yield proxy, engine
    finally:
        await engine.dispose()


async def test_frozen_commit_that_committed_is_settled_in_the_background(
    proxied: tuple[ToxiproxyPostgres, AsyncEngine], ledger: Ledger, ops: str, pg_dsn: str
) -> None:
    """COMMIT reaches the server, its answer (and every new connection's) is frozen: in
    doubt at the deadline; after the heal the ledger says committed, as the table does."""
    proxy, engine = proxied
    events: list[UnitEvent] = []
    db = _keyed_db(engine, ledger, events)
    key = f"committed-{secrets.token_hex(4)}"
    try:
        with contextlib.ExitStack() as faults:
            _freeze_at_commit(engine, proxy, "downstream", faults)
            await _in_doubt_at_the_deadline(db, ops, key)
            assert _in_ledger(pg_dsn, ledger, key)  # the server did commit it
            assert not _resolved(events)  # not settled yet: nothing reaches the server
        assert await poll(lambda: bool(_resolved(events)), 15)  # healed: settled
        assert [e.outcome for e in _resolved(events)] == ["committed"]
        state = await ledger.lookup(engine, key, timeout=5)
        assert state.committed
        assert state.result == {"op": key}
    finally:
        await db.aclose()
    assert _in_ledger(pg_dsn, ledger, key)
    assert _count(pg_dsn, f"SELECT count(*) FROM {ops} WHERE op = %s", key) == 1


async def test_frozen_commit_that_never_arrived_is_settled_as_aborted(
    proxied: tuple[ToxiproxyPostgres, AsyncEngine],
    ledger: Ledger,
    ops: str,
    pg_dsn: str,
    pg_url: str,
) -> None:
    """COMMIT frozen on its way in (the server still holds the key, uncommitted): in doubt
    at the deadline; ``ledger.lookup`` waits for the background resolution, which ends the
    old backend once the proxy heals and finds the key absent — as the table says."""
    proxy, engine = proxied
    events: list[UnitEvent] = []
    db = _keyed_db(engine, ledger, events)
    key = f"aborted-{secrets.token_hex(4)}"
    try:
        with contextlib.ExitStack() as faults:
            _freeze_at_commit(engine, proxy, "upstream", faults)
            await _in_doubt_at_the_deadline(db, ops, key)
            assert not _resolved(events)
            healed: list[float] = []

            def heal() -> None:
                faults.close()
                healed.append(time.monotonic())

            asyncio.get_running_loop().call_later(0.3, heal)
            state = await ledger.lookup(engine, key, timeout=15)  # waits for the resolution
            assert healed, "lookup answered before the proxy healed"
        assert not state.committed
        assert [e.outcome for e in _resolved(events)] == ["aborted"]  # heard before lookup
    finally:
        await db.aclose()
    assert not _in_ledger(pg_dsn, ledger, key)
    assert _count(pg_dsn, f"SELECT count(*) FROM {ops} WHERE op = %s", key) == 0
    # ...and the retry with the same key applies it (once).
    async with Database(
        create_async_engine(pg_url), retry=FAST, breaker=None, ledger=ledger
    ) as again:
        assert await again.run(_insert(ops), key, key=key) == {"op": key}  # type: ignore[call-arg]
    assert _in_ledger(pg_dsn, ledger, key)


async def test_the_background_resolution_is_bounded_and_lookup_settles_it_later(
    proxied: tuple[ToxiproxyPostgres, AsyncEngine], ledger: Ledger, ops: str, pg_dsn: str
) -> None:
    """Still frozen when ``resolve_timeout`` ends: ``commit.resolved`` says unknown, in
    time; a later ``ledger.lookup`` (after the heal) still gives the final answer."""
    proxy, engine = proxied
    events: list[UnitEvent] = []
    db = _keyed_db(engine, ledger, events, resolve_timeout=0.5)
    key = f"unknown-{secrets.token_hex(4)}"
    try:
        with contextlib.ExitStack() as faults:
            _freeze_at_commit(engine, proxy, "upstream", faults)
            await _in_doubt_at_the_deadline(db, ops, key)
            raised = time.monotonic()
            assert await poll(lambda: bool(_resolved(events)), 5)
            assert time.monotonic() - raised <= 0.5 + 0.5, "not bounded by resolve_timeout"
            assert [e.outcome for e in _resolved(events)] == ["unknown"]
        state = await ledger.lookup(engine, key, timeout=10)  # healed
        assert not state.committed
    finally:
        await db.aclose()
    assert not _in_ledger(pg_dsn, ledger, key)
    assert _count(pg_dsn, f"SELECT count(*) FROM {ops} WHERE op = %s", key) == 0


async def test_a_lost_commit_unsettled_at_the_deadline_goes_on_in_the_background(
    ledger: Ledger, ops: str, pg_dsn: str
) -> None:
    """The other road into doubt: COMMIT committed, its answer cut (connection lost), and
    every new connection black-holed, so the ledger cannot be asked within the deadline:
    CommitOutcomeUnknown at the deadline, then committed once the network heals."""
    events: list[UnitEvent] = []
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        engine = create_async_engine(
            url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port),
            command_timeout=30, connect_timeout=30,
        )  # fmt: skip
        db = _keyed_db(engine, ledger, events)
        key = f"cut-{secrets.token_hex(4)}"
        try:
            relay.cut_commit = "after"
            relay.black_hole_after_cut = True
            await _in_doubt_at_the_deadline(db, ops, key)
            assert relay.cuts == 1
            assert not _resolved(events)
            relay.black_hole.clear()  # the network heals
            assert await poll(lambda: bool(_resolved(events)), 15)
            assert [e.outcome for e in _resolved(events)] == ["committed"]
        finally:
            relay.black_hole.clear()
            await db.aclose()
    assert _in_ledger(pg_dsn, ledger, key)
    assert _count(pg_dsn, f"SELECT count(*) FROM {ops} WHERE op = %s", key) == 1
