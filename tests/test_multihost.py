"""Multi-host failover in the library: a private primary + standby, one multi-host URL.

The test never touches the URL, a proxy or the engine after the primary stops: new
connections try the hosts in order and keep the one that accepts writes
(``target_session_attrs=read-write``), the pool's pre-ping drops the dead ones.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from typing import Any, Literal

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import (
    CommitOutcomeUnknown,
    Database,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
    create_ledger,
    doctor,
)
from resilient_db.testing import ClusterPair

# Cluster setup (initdb + base backup) is slow on a loaded machine: more than the default.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TABLE = "ops"


def _multi_host_url(pair: ClusterPair, driver: Literal["asyncpg", "psycopg"]) -> str:
    hosts = f"127.0.0.1:{pair.primary.port},127.0.0.1:{pair.standby.port}"
    return f"postgresql+{driver}://postgres@/postgres?host={hosts}"


@pytest.fixture
def pair(resilient_db_cluster_pair: ClusterPair) -> ClusterPair:
    """The pair with synchronous replication (an acknowledged COMMIT is on the standby, so a
    failover loses nothing acknowledged) and the test table."""
    primary = resilient_db_cluster_pair.primary
    primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
    primary.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while (
        primary.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")[0][0]
        < 1
    ):
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.05)  # bounded poll
    # No primary key on purpose: an operation applied twice shows up as two rows.
    primary.execute(f"CREATE TABLE {TABLE} (op text NOT NULL)")
    return resilient_db_cluster_pair


def _slow_commits(pair: ClusterPair) -> None:
    """Every COMMIT that wrote the table runs a 200 ms deferred trigger first: most writers
    are then waiting on their COMMIT when the primary is killed."""
    pair.primary.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$"
    )
    pair.primary.execute(
        f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {TABLE} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )


def _engine(url: str, pool_size: int = 4) -> AsyncEngine:
    return create_async_engine(url, connect_timeout=1, command_timeout=3, pool_size=pool_size)


def _database(engine: AsyncEngine, events: list[UnitEvent] | None = None) -> Database:
    return Database(
        engine,
        retry=RetryPolicy(attempts=100, initial=0.02, max_backoff=0.2),
        deadline=30.0,
        listeners=[events.append] if events is not None else (),
    )


async def _insert(session: AsyncSession, op: str) -> str:
    await session.execute(text(f"INSERT INTO {TABLE} VALUES (:op)"), {"op": op})
    return op


class Writers:
    """``n`` writers, each inserting its own numbered operations until told to stop."""

    def __init__(self, db: Database, n: int, *, keyed: bool) -> None:
        self.db, self.n, self.keyed = db, n, keyed
        self.acknowledged: list[tuple[str, float]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.stop = anyio.Event()

    async def _one(self, op: str) -> None:
        if not self.keyed:
            await self.db.run(_insert, op)
        elif _takes_key(Database.run):
            run: Any = self.db.run
            await run(_insert, op, key=op)
        else:
            view: Any = self.db.with_options
            await view(key=op).run(_insert, op)

    async def writer(self, w: int) -> None:
        i = 0
        while not self.stop.is_set():
            op = f"w{w}-{i}"
            i += 1
            try:
                await self._one(op)
            except Exception as exc:
                self.errors.append((op, exc))
            else:
                self.acknowledged.append((op, time.monotonic()))

    async def wait_for(self, count: int, timeout: float) -> None:
        with anyio.fail_after(timeout):
            while len(self.acknowledged) < count:  # noqa: ASYNC110 - progress with a deadline
                await anyio.sleep(0.005)


async def _failover(pair: ClusterPair, writers: Writers, *, before: int) -> float:
    """Run the writers, stop the primary (immediate), promote; seconds to the first write
    acknowledged after the promotion."""
    async with anyio.create_task_group() as tg:
        for w in range(writers.n):
            tg.start_soon(writers.writer, w)
        await writers.wait_for(before, 20)
        await anyio.to_thread.run_sync(pair.primary.stop, "immediate")
        await anyio.to_thread.run_sync(pair.standby.promote)
        promoted = time.monotonic()
        done = len(writers.acknowledged)
        await writers.wait_for(done + 1, 15)
        resumed = next(t for _, t in writers.acknowledged[done:]) - promoted
        await writers.wait_for(done + 20, 15)
        writers.stop.set()
    return resumed


@pytest.mark.parametrize(
    "driver", ["asyncpg", pytest.param("psycopg", marks=[pytest.mark.psycopg, pytest.mark.slow])]
)
async def test_writes_resume_on_the_promoted_standby_without_touching_anything(
    pair: ClusterPair, driver: Literal["asyncpg", "psycopg"]
) -> None:
    url = _multi_host_url(pair, driver)
    engine = _engine(url)
    writers = Writers(_database(engine), 3, keyed=False)
    try:
        report = await doctor(engine, timeout=10)
        assert report.primary == f"127.0.0.1:{pair.primary.port}"
        assert report.hosts[f"127.0.0.1:{pair.standby.port}"] == "standby"
        with anyio.fail_after(90):
            resumed = await _failover(pair, writers, before=20)
        after = await doctor(engine, timeout=10)
    finally:
        await engine.dispose()
    print(f"{driver}: writes resumed {resumed:.3f}s after the promotion")
    assert resumed < 3.0, f"writes resumed {resumed:.2f}s after the promotion"
    assert after.primary == f"127.0.0.1:{pair.standby.port}"
    assert after.hosts[f"127.0.0.1:{pair.primary.port}"].startswith("unreachable")
    unexpected = [e for _, e in writers.errors if not isinstance(e, CommitOutcomeUnknown)]
    assert unexpected == []
    rows = Counter(str(r[0]) for r in pair.standby.execute(f"SELECT op FROM {TABLE}"))
    assert {op for op, _ in writers.acknowledged} <= set(rows)  # nothing acknowledged lost
    assert max(rows.values()) == 1  # nothing applied twice


def _takes_key(fn: Any) -> bool:
    return "key" in inspect.signature(fn).parameters


def _run_takes_key() -> bool:
    return _takes_key(Database.run) or _takes_key(Database.with_options)


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [True, False], ids=["keys", "no-keys"])
async def test_sixteen_writers_primary_killed_mid_commit_and_promoted(
    pair: ClusterPair, keyed: bool
) -> None:
    """With keys: 0 CommitOutcomeUnknown, 0 lost, 0 applied twice. Without: unknowns are
    reported honestly (and nothing acknowledged is lost or doubled either)."""
    if keyed and not _run_takes_key():
        pytest.skip("db.run(..., key=) / db.with_options(key=) is not wired on this branch yet")
    url = _multi_host_url(pair, "asyncpg")
    engine = _engine(url, pool_size=16)
    if keyed:
        await create_ledger(engine)
    _slow_commits(pair)
    events: list[UnitEvent] = []
    writers = Writers(_database(engine, events), 16, keyed=keyed)
    try:
        with anyio.fail_after(120):
            await _failover(pair, writers, before=100)
    finally:
        await engine.dispose()
    unknown = [op for op, e in writers.errors if isinstance(e, CommitOutcomeUnknown)]
    unexpected = [e for _, e in writers.errors if not isinstance(e, CommitOutcomeUnknown)]
    assert unexpected == []
    rows = Counter(str(r[0]) for r in pair.standby.execute(f"SELECT op FROM {TABLE}"))
    acknowledged = {op for op, _ in writers.acknowledged}
    assert acknowledged <= set(rows), sorted(acknowledged - set(rows))
    assert max(rows.values()) == 1, [op for op, n in rows.items() if n > 1]
    extra = set(rows) - acknowledged - set(unknown)
    assert extra == set()  # every row is an acknowledged (or honestly unknown) operation
    phases = Counter(
        (e.event, e.outcome or e.category) for e in events if e.event.startswith("commit.")
    )
    print(f"keyed={keyed}: {len(acknowledged)} acknowledged, {len(unknown)} unknown, {phases}")
    if keyed:
        assert unknown == []
    for op, e in writers.errors:
        assert isinstance(e, CommitOutcomeUnknown)
        assert e.xid is not None or e.key == op


async def test_doctor_names_the_primary_of_a_shared_pair(
    resilient_db_shared_pair: ClusterPair,
) -> None:
    shared = resilient_db_shared_pair
    url = _multi_host_url(shared, "psycopg")
    report = await doctor(url, timeout=10, pool_size=2)
    assert report.primary == f"127.0.0.1:{shared.primary.port}"
    assert report.hosts[f"127.0.0.1:{shared.standby.port}"] == "standby"
    assert any(f.code == "hosts" for f in report.findings)
    # Reversed order: the standby is tried first and skipped (target_session_attrs).
    hosts = f"127.0.0.1:{shared.standby.port},127.0.0.1:{shared.primary.port}"
    engine = create_async_engine(f"postgresql+asyncpg://postgres@/postgres?host={hosts}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar_one() is False
    finally:
        await engine.dispose()
