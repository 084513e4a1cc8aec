"""Commit resolution across a crash restart of the same server.

After a crash, an xid whose WAL never reached the disk may be handed out again: a later
transaction can commit under *our* number, and ``pg_xact_status`` then says "committed"
for a COMMIT that never happened. The capture records the server's start time beside the
timeline, so a resolution after a restart never answers "committed" on the number alone.
"""

from __future__ import annotations

import anyio
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import create_async_engine
from resilient_db.testing import PgCluster
from resilient_db.units._commit import CommitOutcome, capture_identity, resolve_commit

pytestmark = pytest.mark.cluster


def _prepare(cluster: PgCluster) -> None:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (v int)")
        # Keep the lost transaction's WAL in memory until the crash (the WAL writer would
        # otherwise flush it within 200 ms, and a flushed xid is never handed out again).
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        conn.execute("SELECT pg_reload_conf()")


def _reuse_up_to(cluster: PgCluster, xid: int) -> bool:
    """Commit transactions on the restarted server until the xid counter passes ``xid``;
    True if one of them was given ``xid`` itself."""
    reused = False
    with psycopg.connect(cluster.dsn, autocommit=False) as conn:
        for _ in range(10_000):  # bounded: the counter restarts just below the lost xid
            with conn.transaction():
                got = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
                conn.execute("INSERT INTO t VALUES (0)")
            assert got is not None
            reused = reused or int(got[0]) == xid
            if int(got[0]) >= xid:
                break
    return reused


async def test_a_lost_commit_is_never_settled_by_a_reused_xid(
    resilient_db_cluster: PgCluster,
) -> None:
    cluster = resilient_db_cluster
    await anyio.to_thread.run_sync(_prepare, cluster)
    engine = create_async_engine(cluster.url(), pool_size=1)
    try:
        session = AsyncSession(engine)
        await session.begin()
        await session.execute(text("INSERT INTO t VALUES (1)"))
        ident = await capture_identity(session)
        assert ident is not None
        assert ident.timeline is not None
        await anyio.to_thread.run_sync(cluster.crash)  # before COMMIT: the insert is lost
        await session.invalidate()
        await anyio.to_thread.run_sync(cluster.start)
        reused = await anyio.to_thread.run_sync(_reuse_up_to, cluster, ident.xid)
        with anyio.fail_after(30):
            outcome = await resolve_commit(engine, ident, timeout=10)
        # Our transaction never committed: "aborted" when the number was not reused,
        # "unknown" when another transaction committed under it; never "committed".
        assert outcome is (CommitOutcome.UNKNOWN if reused else CommitOutcome.ABORTED), reused
    finally:
        await engine.dispose()


async def test_a_commit_that_reached_the_disk_is_not_claimed_after_a_restart(
    resilient_db_cluster: PgCluster,
) -> None:
    """A committed xid after a restart is ambiguous by number alone: reported unknown (an
    operation key settles it), never guessed."""
    cluster = resilient_db_cluster
    await anyio.to_thread.run_sync(_prepare, cluster)
    engine = create_async_engine(cluster.url(), pool_size=1)
    try:
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text("INSERT INTO t VALUES (2)"))
            ident = await capture_identity(session)
        assert ident is not None
        assert await resolve_commit(engine, ident, timeout=10) is CommitOutcome.COMMITTED
        await engine.dispose()
        await anyio.to_thread.run_sync(cluster.restart, "immediate")
        with anyio.fail_after(30):
            outcome = await resolve_commit(engine, ident, timeout=10)
        assert outcome is CommitOutcome.UNKNOWN
    finally:
        await engine.dispose()
