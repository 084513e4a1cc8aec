"""The ledger protocol under a real failover, driven directly (independent of the units layer).

16 writers, each unit ``INSERT; ledger.record; COMMIT`` on a multi-host engine over a private
primary + synchronous standby; the primary is stopped (immediate) while most writers wait on
their COMMIT (a slow deferred trigger), then the standby is promoted. Every lost COMMIT is
settled by ``ledger.resolve`` on whichever primary answers: committed → done, absent → run
again. Acceptance: 0 unknown, 0 lost, 0 applied twice. This is the exact protocol the unit
of work follows (``resilient_db.units._keys`` module docstring).
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from resilient_db import Ledger, create_async_engine, create_ledger
from resilient_db.classify import Phase, default_classifier
from resilient_db.testing import ClusterPair
from resilient_db.units._keys import KeyRecord

# Cluster setup (initdb + base backup) is slow on a loaded machine: more than the default.
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

TABLE = "ops"


@pytest.fixture
def pair(resilient_db_cluster_pair: ClusterPair) -> ClusterPair:
    primary = resilient_db_cluster_pair.primary
    primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
    primary.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    query = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
    while primary.execute(query)[0][0] < 1:
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.05)  # bounded poll
    primary.execute(f"CREATE TABLE {TABLE} (op text NOT NULL)")  # no PK: doubles show
    primary.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$"
    )
    primary.execute(
        f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {TABLE} "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    return resilient_db_cluster_pair


class Unknown(Exception):
    pass


async def keyed_unit(engine: AsyncEngine, ledger: Ledger, op: str, stats: Counter[str]) -> None:
    """One keyed unit of work, retried until it is applied exactly once (bounded)."""
    with anyio.fail_after(60):
        while True:
            rec: KeyRecord | None = None
            phase = Phase.CHECKOUT
            conn: AsyncConnection | None = None
            try:
                conn = await engine.connect()
                phase = Phase.STATEMENT
                await conn.execute(text(f"INSERT INTO {TABLE} VALUES (:op)"), {"op": op})
                rec = await ledger.record(conn, op, op)
                if not rec.inserted:
                    await conn.rollback()
                    assert rec.previous is not None
                    assert rec.previous.replay() == op
                    stats["replayed"] += 1
                    return
                phase = Phase.COMMIT
                await conn.commit()
                return
            except Exception as exc:
                if conn is not None:
                    await conn.invalidate()
                if phase is Phase.COMMIT and rec is not None:
                    state = await ledger.resolve(engine, rec, timeout=20)
                    if state is None:
                        raise Unknown(op) from exc
                    stats["resolved_committed" if state.committed else "resolved_absent"] += 1
                    if state.committed:
                        return
                elif not default_classifier().classify(exc, phase=phase).retryable:
                    raise
                await anyio.sleep(0.05)  # bounded by fail_after
            finally:
                if conn is not None:
                    await conn.close()


async def test_sixteen_keyed_writers_survive_a_kill_mid_commit_and_promotion(
    pair: ClusterPair,
) -> None:
    hosts = f"127.0.0.1:{pair.primary.port},127.0.0.1:{pair.standby.port}"
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@/postgres?host={hosts}",
        connect_timeout=1,
        command_timeout=5,
        pool_size=16,
    )
    ledger = await create_ledger(engine)
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    stats: Counter[str] = Counter()
    stop = anyio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            op = f"w{w}-{i}"
            i += 1
            try:
                await keyed_unit(engine, ledger, op, stats)
            except Exception as exc:
                errors.append(exc)
            else:
                acknowledged.append(op)

    async def progress(count: int) -> None:
        with anyio.fail_after(30):
            while len(acknowledged) < count:  # noqa: ASYNC110 - progress with a deadline
                await anyio.sleep(0.01)

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for w in range(16):
                    tg.start_soon(writer, w)
                await progress(64)
                await anyio.to_thread.run_sync(pair.primary.stop, "immediate")
                await anyio.to_thread.run_sync(pair.standby.promote)
                await progress(len(acknowledged) + 64)
                stop.set()
    finally:
        await engine.dispose()
    print(f"{len(acknowledged)} acknowledged, {dict(stats)}")
    assert errors == []  # no unknown, no other error
    assert stats["resolved_committed"] + stats["resolved_absent"] >= 1  # COMMITs were cut
    rows = Counter(str(r[0]) for r in pair.standby.execute(f"SELECT op FROM {TABLE}"))
    keys = {str(r[0]) for r in pair.standby.execute(f"SELECT key FROM {ledger.name}")}
    assert set(acknowledged) <= set(rows)  # 0 lost
    assert max(rows.values()) == 1  # 0 applied twice
    assert set(rows) == keys == set(acknowledged)  # every applied op has its key, and only it
