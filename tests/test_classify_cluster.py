"""The classifier on faults that need a private cluster: a write on a hot standby (25006 with
``in_recovery=True``: failover) and a fast server shutdown in the middle of a query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from resilient_db import ErrorKind, classify
from resilient_db.testing import ClusterPair, PgCluster
from tests.test_classify_faults import DRIVERS, check, connect, raised, wait_active

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def pair() -> Iterator[ClusterPair]:
    primary = PgCluster.create()
    try:
        primary.start()
        primary.execute("CREATE TABLE clf_standby (x int)")
        standby = primary.create_standby()
        standby.start()
        primary.wait_for_replay(standby)
        yield ClusterPair(primary=primary, standby=standby)
    finally:
        primary.destroy()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_write_on_hot_standby_is_failover(driver: str, pair: ClusterPair) -> None:
    conn = await connect(driver, pair.standby.dsn)
    try:
        exc = await raised(conn.execute("INSERT INTO clf_standby VALUES (1)"))
    finally:
        await conn.close()
    probe = await asyncpg.connect(pair.standby.dsn, ssl=False, timeout=10)
    try:
        in_recovery = await probe.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await probe.close()
    assert in_recovery is True
    c = classify(exc, phase="statement", in_recovery=in_recovery)
    check(c, ErrorKind.RETRYABLE, "failover", breaker=True, invalidate=True, sqlstate="25006")
    # The same 25006 from a primary (the app said READ ONLY) is a program error.
    primary = classify(exc, phase="statement", in_recovery=False)
    check(primary, ErrorKind.FATAL, "programming", breaker=False, invalidate=False)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_fast_shutdown_mid_query(driver: str, pair: ClusterPair) -> None:
    primary = pair.primary
    conn = await connect(driver, primary.dsn)
    try:
        mon = await asyncpg.connect(primary.dsn, ssl=False, timeout=10)
        try:
            query = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60)"))
            await wait_active(mon, conn.pid)
        finally:
            await mon.close()
        await asyncio.to_thread(primary.stop, "fast")
        try:
            exc = await raised(query)
        finally:
            await asyncio.to_thread(primary.start)
    finally:
        await conn.close()
    c = classify(exc, phase="statement")
    check(c, ErrorKind.RETRYABLE, "connection_lost", breaker=True, invalidate=True)
    assert c.sqlstate == "57P01"  # fast shutdown terminates sessions like an admin command
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN


@pytest.fixture(scope="module")
def password_user(pair: ClusterPair) -> str:
    """A role that must log in with a password (scram) on the private primary."""
    primary = pair.primary
    primary.execute("CREATE ROLE clf_pw_user LOGIN PASSWORD 'right-password'")
    hba = primary.datadir / "pg_hba.conf"
    rules = hba.read_text(encoding="utf-8")
    with open(hba, "w", encoding="utf-8") as fh:  # rewrite in place: owner unchanged
        fh.write("host all clf_pw_user 127.0.0.1/32 scram-sha-256\n" + rules)
    primary.execute("SELECT pg_reload_conf()")
    return "clf_pw_user"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_wrong_password(driver: str, pair: ClusterPair, password_user: str) -> None:
    dsn = pair.primary.dsn.replace("postgres@", f"{password_user}:wrong-password@", 1)

    async def attempt() -> BaseException | None:
        try:
            conn = await connect(driver, dsn)
        except Exception as exc:
            return exc
        await conn.close()  # the reload has not reached the postmaster yet
        return None

    # pg_reload_conf() is asynchronous: poll (bounded) until the scram rule is in force.
    async with asyncio.timeout(10):
        while True:
            exc = await attempt()
            if exc is not None:
                break
            await asyncio.sleep(0.05)  # poll (bounded by the timeout above)
    c = classify(exc, phase="connect")
    check(c, ErrorKind.FATAL, "config", breaker=True, invalidate=False)
    if driver != "sa_psycopg":
        assert c.sqlstate == "28P01"


@pytest.fixture(scope="module")
def rejected_user(pair: ClusterPair) -> str:
    """A role that a ``reject`` line of pg_hba.conf turns away on the private primary."""
    primary = pair.primary
    primary.execute("CREATE ROLE clf_rejected LOGIN")
    hba = primary.datadir / "pg_hba.conf"
    rules = hba.read_text(encoding="utf-8")
    with open(hba, "w", encoding="utf-8") as fh:  # rewrite in place: owner unchanged
        fh.write("host all clf_rejected 127.0.0.1/32 reject\n" + rules)
    primary.execute("SELECT pg_reload_conf()")
    return "clf_rejected"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_pg_hba_rejection_is_fatal_config(
    driver: str, pair: ClusterPair, rejected_user: str
) -> None:
    dsn = pair.primary.dsn.replace("postgres@", f"{rejected_user}@", 1)

    async def attempt() -> BaseException | None:
        try:
            conn = await connect(driver, dsn)
        except Exception as exc:
            return exc
        await conn.close()  # the reload has not reached the postmaster yet
        return None

    # pg_reload_conf() is asynchronous: poll (bounded) until the reject rule is in force.
    async with asyncio.timeout(10):
        while True:
            exc = await attempt()
            if exc is not None:
                break
            await asyncio.sleep(0.05)  # poll (bounded by the timeout above)
    assert "pg_hba.conf rejects connection" in str(exc)
    c = classify(exc, phase="connect")
    check(c, ErrorKind.FATAL, "config", breaker=True, invalidate=False)
    if driver == "sa_psycopg":  # psycopg's connect errors carry no SQLSTATE: the message
        assert (c.sqlstate, c.rule) == (None, "psycopg_authentication")
    else:
        assert (c.sqlstate, c.rule) == ("28000", "authentication")


@pytest.mark.parametrize("fault", ["crash", "immediate"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_crash_or_immediate_shutdown_mid_query(
    driver: str, fault: str, pair: ClusterPair
) -> None:
    """A crash (SIGKILL) or an immediate shutdown: the client sees no SQLSTATE at all."""
    primary = pair.primary
    conn = await connect(driver, primary.dsn)
    try:
        mon = await asyncpg.connect(primary.dsn, ssl=False, timeout=10)
        try:
            query = asyncio.ensure_future(conn.execute("SELECT pg_sleep(60)"))
            await wait_active(mon, conn.pid)
        finally:
            await mon.close()
        if fault == "crash":
            await asyncio.to_thread(primary.crash)
        else:
            await asyncio.to_thread(primary.stop, "immediate")
        try:
            exc = await raised(query)
        finally:
            await asyncio.to_thread(primary.start)
            await asyncio.to_thread(primary.wait_for_replay, pair.standby)
    finally:
        await conn.close()
    c = classify(exc, phase="statement")
    assert c.kind is ErrorKind.RETRYABLE, c
    assert c.category == "connection_lost", c
    assert c.counts_toward_breaker
    assert c.sqlstate in (None, "57P01", "57P02"), c  # immediate may still say 57P01/57P02
    assert classify(exc, phase="commit").kind is ErrorKind.COMMIT_UNKNOWN
