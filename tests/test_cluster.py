"""Private PostgreSQL clusters (resilient_db.testing): real initdb / pg_ctl / pg_basebackup."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from resilient_db import ResilientDBError
from resilient_db.testing import ClusterPair, PgCluster, PgClusterError, find_pg_bindir
from resilient_db.testing._procs import alive as _alive
from resilient_db.testing._procs import children, kill_tree, read_pid, reaped, wait_gone
from resilient_db.testing._reaper import start_watchdog, watchdog_command

pytestmark = pytest.mark.cluster

TABLE = "rdb_test_cluster_rows"


def _port_free(port: int) -> bool:
    """True if a new server could listen on ``port`` (as PostgreSQL does, with SO_REUSEADDR:
    connections of the old server left in TIME_WAIT do not hold the port, a listener does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for_query(cluster: PgCluster, query: str, timeout: float = 10.0) -> None:
    """Poll pg_stat_activity until ``query`` is active (bounded)."""
    deadline = time.monotonic() + timeout
    sql = "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query = %s"
    while not cluster.execute(sql, (query,)):
        assert time.monotonic() < deadline, f"{query!r} not active after {timeout} s"
        time.sleep(0.01)  # poll with a deadline


@asynccontextmanager
async def _asyncpg(cluster: PgCluster) -> AsyncIterator[Any]:
    async with asyncio.timeout(10):
        conn = await asyncpg.connect(cluster.dsn)
    try:
        yield conn
    finally:
        conn.terminate()


def test_create_start_query(resilient_db_cluster: PgCluster) -> None:
    c = resilient_db_cluster
    assert c.is_running()
    assert c.role == "primary"
    assert c.dsn == f"postgresql://postgres@127.0.0.1:{c.port}/postgres"
    assert c.url() == f"postgresql+asyncpg://postgres@127.0.0.1:{c.port}/postgres"
    assert c.url("psycopg", "db1") == f"postgresql+psycopg://postgres@127.0.0.1:{c.port}/db1"
    assert c.port != 5432
    rows = c.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),"
        " current_setting('listen_addresses'), current_setting('unix_socket_directories'),"
        " current_user"
    )
    version, wal_level, listen, sockdir, user = rows[0]
    assert version >= 110000
    assert (wal_level, listen, user) == ("replica", "127.0.0.1", "postgres")
    assert Path(sockdir) == c.socket_dir
    assert c.datadir.parent == c.socket_dir.parent  # everything in one temporary directory
    assert "ready to accept connections" in c.server_log()


async def test_asyncpg_connects_to_cluster(resilient_db_cluster: PgCluster) -> None:
    async with _asyncpg(resilient_db_cluster) as conn:
        assert await conn.fetchval("SELECT 41 + 1") == 42


def test_standby_streams_a_row(resilient_db_shared_pair: ClusterPair) -> None:
    primary, standby = resilient_db_shared_pair.primary, resilient_db_shared_pair.standby
    primary.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, note text)")
    primary.execute(f"INSERT INTO {TABLE} VALUES (1, 'streamed') ON CONFLICT (id) DO NOTHING")
    primary.wait_for_replay(standby, timeout=20)
    assert standby.execute(f"SELECT note FROM {TABLE} WHERE id = 1") == [("streamed",)]
    assert standby.execute("SELECT pg_is_in_recovery()") == [(True,)]
    assert standby.role == "standby"
    replicas = primary.execute("SELECT application_name, state FROM pg_stat_replication")
    assert (f"standby_{standby.port}", "streaming") in replicas


def test_write_on_standby_fails_with_25006(resilient_db_shared_pair: ClusterPair) -> None:
    standby = resilient_db_shared_pair.standby
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
        standby.execute("CREATE TABLE rdb_test_cluster_never (x int)")
    assert info.value.sqlstate == "25006"


async def test_write_on_standby_fails_with_25006_asyncpg(
    resilient_db_shared_pair: ClusterPair,
) -> None:
    async with _asyncpg(resilient_db_shared_pair.standby) as conn:
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError) as info:
            await conn.execute("CREATE TABLE rdb_test_cluster_never (x int)")
    assert info.value.sqlstate == "25006"


def test_promote_makes_standby_writable(resilient_db_cluster_pair: ClusterPair) -> None:
    primary, standby = resilient_db_cluster_pair.primary, resilient_db_cluster_pair.standby
    primary.execute("CREATE TABLE promoted (x int)")
    primary.wait_for_replay(standby)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        standby.execute("INSERT INTO promoted VALUES (1)")
    primary.stop("immediate")  # the usual failover: the old primary is gone
    standby.promote()
    assert standby.role == "primary"
    assert standby.execute("SELECT pg_is_in_recovery()") == [(False,)]
    standby.execute("INSERT INTO promoted VALUES (2)")
    assert standby.execute("SELECT x FROM promoted") == [(2,)]


@pytest.mark.parametrize("fault", ["immediate", "crash"])
async def test_server_death_breaks_live_asyncpg_connection(
    resilient_db_cluster: PgCluster, fault: str
) -> None:
    c = resilient_db_cluster
    async with _asyncpg(c) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        if fault == "immediate":
            c.stop("immediate")
        else:
            c.crash()
        assert not c.is_running()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            async with asyncio.timeout(10):
                await conn.fetchval("SELECT 1")
    c.start()  # crash recovery, then back in service
    assert c.execute("SELECT 1") == [(1,)]


async def test_fast_stop_terminates_sessions_with_57p01(resilient_db_cluster: PgCluster) -> None:
    c = resilient_db_cluster
    async with _asyncpg(c) as conn:
        async with asyncio.timeout(10):
            task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
            await asyncio.to_thread(_wait_for_query, c, "SELECT pg_sleep(30)")
            await asyncio.to_thread(c.stop, "fast")
            # Measured: asyncpg reports the 57P01 text, but as a closed connection when the
            # server hangs up right after the ErrorResponse.
            with pytest.raises(
                (
                    asyncpg.exceptions.AdminShutdownError,
                    asyncpg.exceptions.ConnectionDoesNotExistError,
                ),
                match="administrator command",
            ):
                await task
    assert not c.is_running()


async def test_crash_backend_restarts_server_and_kills_sessions(
    resilient_db_cluster: PgCluster,
) -> None:
    c = resilient_db_cluster
    async with _asyncpg(c) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        killed = c.crash_backend()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            async with asyncio.timeout(10):
                await conn.fetchval("SELECT 1")
    assert not _alive(killed)
    assert c.is_running()
    log = c.server_log(200)
    assert f"server process (PID {killed}) was terminated by signal 9" in log
    assert "all server processes terminated; reinitializing" in log  # a real crash restart
    assert c.execute("SELECT 1") == [(1,)]


def test_restart_keeps_data(resilient_db_cluster: PgCluster) -> None:
    c = resilient_db_cluster
    c.execute("CREATE TABLE kept (x int)")
    c.execute("INSERT INTO kept VALUES (7)")
    c.crash()
    c.start()
    c.restart("fast")
    assert c.execute("SELECT x FROM kept") == [(7,)]


def test_destroy_removes_directory_and_frees_port() -> None:
    c = PgCluster.create()
    c.start()
    root, port, pid = c.datadir.parent, c.port, c.pid
    assert pid is not None
    assert root.is_dir()
    assert not _port_free(port)
    c.destroy()
    assert not root.exists()
    assert not _alive(pid)
    assert _port_free(port)
    assert not c.is_running()
    c.destroy()  # idempotent
    with pytest.raises(PgClusterError, match="destroyed"):
        c.start()


def test_destroy_of_primary_destroys_its_standbys() -> None:
    with PgCluster.create() as primary:
        standby = primary.create_standby()
        standby.start()
        standby_root = standby.datadir.parent
    assert not standby.is_running()
    assert not standby_root.exists()


def test_forgotten_cluster_is_killed_and_removed_by_finalizer() -> None:
    c = PgCluster.create()
    c.start()
    root, pid = c.datadir.parent, c.pid
    assert pid is not None
    del c
    gc.collect()
    assert not _alive(pid)
    assert not root.exists()


def test_taken_port_is_replaced_when_chosen_automatically() -> None:
    c = PgCluster.create()
    try:
        taken = c.port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", taken))
            squatter.listen()
            c.start()
            assert c.port != taken
            assert c.execute("SELECT current_setting('port')::int") == [(c.port,)]
    finally:
        c.destroy()


def test_start_failure_raises_with_server_log() -> None:
    c = PgCluster.create(settings={"shared_buffers": "'lots'"})
    try:
        with pytest.raises(PgClusterError) as info:
            c.start(timeout=15)
        assert isinstance(info.value, ResilientDBError)
        assert "shared_buffers" in str(info.value)
        assert "server log" in str(info.value)
        assert not c.is_running()
    finally:
        c.destroy()


def test_explicit_port_and_settings() -> None:
    port = 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with PgCluster.create(port=port, settings={"application_name": "'rdb_settings'"}) as c:
        assert c.port == port
        assert c.execute("SELECT current_setting('application_name')") == [("rdb_settings",)]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(PgClusterError, match=r"port=80\).*1024\.\.65535"):
        PgCluster.create(port=80)
    with PgCluster.create() as c:
        with pytest.raises(PgClusterError, match="mode='sudden'"):
            c.stop("sudden")  # type: ignore[arg-type]
        with pytest.raises(PgClusterError, match="driver='mysql'"):
            c.url("mysql")  # type: ignore[arg-type]
        c.crash()
        with pytest.raises(PgClusterError, match="needs a running server"):
            c.crash()
        with pytest.raises(PgClusterError, match="not running"):
            c.create_standby()


def test_find_pg_bindir() -> None:
    bindir = find_pg_bindir()
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        assert os.access(os.path.join(bindir, tool), os.X_OK)
    with pytest.raises(PgClusterError, match="version 3"):
        find_pg_bindir(version=3)


_OWNER = """
import sys
from resilient_db.testing import PgCluster
from resilient_db.testing._templates import _templates
c = PgCluster.create()
c.start()
print(c.pid, c.datadir.parent, next(iter(_templates.values())).parent, flush=True)
sys.stdin.read()
"""


def test_clusters_of_a_killed_test_process_are_cleaned_up() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # bounded by the test timeout; the child prints or dies
        pid_text, root_text, template_text = line.split()
        pid, root, template = int(pid_text), Path(root_text), Path(template_text)
        assert _alive(pid)
        assert root.is_dir()
        assert template.is_dir()
        owner.kill()  # SIGKILL: no finalizer, no atexit in the owner
        owner.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(pid) or root.exists() or template.exists():
            assert time.monotonic() < deadline, "watchdog did not clean up within 15 s"
            time.sleep(0.02)  # poll with a deadline
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- process tools


def _tree() -> subprocess.Popen[bytes]:
    """A parent shell with two sleeping children, like a postmaster and its backends."""
    return subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)


def test_process_tree_helpers_find_and_kill_every_child() -> None:
    parent = _tree()
    try:
        deadline = time.monotonic() + 10
        while len(children(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.01)  # bounded poll
        kids = children(parent.pid)
        assert all(_alive(k) for k in kids)
        victims = kill_tree(parent.pid)
        assert set(victims) == {parent.pid, *kids}
        parent.wait(timeout=10)  # reap our child: a zombie is not alive, but not reaped
        assert wait_gone(victims, 10.0)
        assert reaped(parent.pid)
        assert kill_tree(parent.pid) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def test_watchdog_module_kills_the_server_and_removes_the_directory(tmp_path: Path) -> None:
    # A stand-in postmaster: the watchdog reads its pid from postmaster.pid, as for a server.
    root = tmp_path / "scratch"
    datadir = root / "data"
    datadir.mkdir(parents=True)
    server = _tree()
    (datadir / "postmaster.pid").write_text(f"{server.pid}\n{datadir}\n", encoding="ascii")
    assert read_pid(datadir) == server.pid
    watchdog = start_watchdog(datadir, root)
    try:
        assert watchdog.stdin is not None
        watchdog.stdin.close()  # as when the test process dies: EOF on the pipe
        assert watchdog.wait(timeout=30) == 0
        server.wait(timeout=10)
        assert not root.exists()
    finally:
        for proc in (server, watchdog):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_watchdog_starts_without_importing_the_package(tmp_path: Path) -> None:
    # One watchdog per cluster: it must not pay for importing resilient_db (SQLAlchemy & co).
    root = tmp_path / "scratch"
    root.mkdir()
    command = watchdog_command(root / "data", root)
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        stdin=subprocess.DEVNULL,  # EOF at once: nothing to kill, the directory is removed
        capture_output=True,
        timeout=60,
        check=True,
    )
    imported = {
        line.rpartition("|")[2].strip()
        for line in done.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "psutil" in imported
    assert not {m for m in imported if m.split(".")[0] in ("resilient_db", "sqlalchemy")}
    assert not root.exists()
