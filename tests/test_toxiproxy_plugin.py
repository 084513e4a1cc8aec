"""The pytest plugin's fixtures and fault helpers, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import time

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from resilient_db.pytest_plugin import ToxiproxyPostgres
from resilient_db.toxiproxy import ToxiproxyClient


async def _connect(db: ToxiproxyPostgres) -> asyncpg.Connection:
    return await asyncpg.connect(db.dsn, timeout=5, ssl=False)


def test_plugin_import_is_cheap() -> None:
    code = (
        "import sys, resilient_db.pytest_plugin as p; "
        "assert 'resilient_db.toxiproxy._server' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_toxiproxy_fixture(toxiproxy: ToxiproxyClient) -> None:
    assert toxiproxy.version()


async def test_proxied_url_and_helpers(
    toxiproxy_postgres: object, pg_url: str, pg_dsn: str
) -> None:
    assert callable(toxiproxy_postgres)
    db: ToxiproxyPostgres = toxiproxy_postgres(pg_url)
    assert db.url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert db.dsn.startswith("postgresql://")
    assert db.port != int(pg_dsn.rsplit("/", 1)[0].rpartition(":")[2])

    engine = create_async_engine(db.url, connect_args={"ssl": False})
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()

    conn = await _connect(db)
    try:
        stmt = await conn.prepare("SELECT 1")
        await stmt.fetchval()
        with db.latency(150):
            start = time.perf_counter()
            await stmt.fetchval(timeout=5)
            assert time.perf_counter() - start >= 0.15
        start = time.perf_counter()
        await stmt.fetchval(timeout=5)
        assert time.perf_counter() - start < 0.1  # removed on exit
        with db.slicer(7, size_variation=3, delay_us=100):
            assert await conn.fetchval("SELECT repeat('x', 300)", timeout=5) == "x" * 300
        with db.bandwidth(1000):
            assert await conn.fetchval("SELECT 2", timeout=5) == 2
    finally:
        await conn.close(timeout=5)


async def test_down_black_hole_reset_limit_slow_close(
    toxiproxy_postgres: object, pg_url: str
) -> None:
    assert callable(toxiproxy_postgres)
    db: ToxiproxyPostgres = toxiproxy_postgres(pg_url)

    with db.down(), socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", db.port)) == errno.ECONNREFUSED
    conn = await _connect(db)  # re-enabled on the same port
    try:
        with db.black_hole(), pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.3)
    finally:
        conn.terminate()

    conn = await _connect(db)
    try:
        with (
            db.reset_peer(stream="upstream"),
            pytest.raises((ConnectionResetError, asyncpg.exceptions.ConnectionDoesNotExistError)),
        ):
            async with asyncio.timeout(5):
                await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()

    with (
        db.limit_data(10, stream="upstream"),
        pytest.raises((ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError, OSError)),
    ):
        async with asyncio.timeout(5):
            await asyncpg.connect(db.dsn, timeout=5, ssl=False)

    conn = await _connect(db)
    with db.slow_close(100):
        start = time.perf_counter()
        await conn.close(timeout=5)
        assert time.perf_counter() - start < 1.0
    assert db.info().toxics == ()


def test_helpers_clean_up_on_failure(toxiproxy_postgres: object, pg_url: str) -> None:
    assert callable(toxiproxy_postgres)
    db: ToxiproxyPostgres = toxiproxy_postgres(pg_url)

    def failing() -> None:
        with db.latency(10), db.timeout(0, stream="upstream"):
            assert len(db.info().toxics) == 2
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert db.info().toxics == ()
    with pytest.raises(RuntimeError), db.down():
        raise RuntimeError("boom")
    assert db.info().enabled


def test_reuse_named_proxy_is_not_deleted(
    toxiproxy: ToxiproxyClient, toxiproxy_postgres: object, pg_url: str
) -> None:
    assert callable(toxiproxy_postgres)
    toxiproxy.create_proxy(name="postgres_shared", upstream="127.0.0.1:5432")
    try:
        db: ToxiproxyPostgres = toxiproxy_postgres(pg_url, name="postgres_shared")
        assert not db.owned
        db.cleanup()
        assert toxiproxy.get_proxy("postgres_shared").enabled
    finally:
        toxiproxy.delete_proxy("postgres_shared")


def test_exported_from_the_toxiproxy_package(toxiproxy: ToxiproxyClient, pg_url: str) -> None:
    from resilient_db.toxiproxy import ToxiproxyPostgres as Exported

    assert Exported is ToxiproxyPostgres
    db = Exported.create(toxiproxy, pg_url)
    try:
        assert db.url != pg_url
        assert f":{db.port}/" in db.url
    finally:
        db.cleanup()


_STRICT_TEST = """
def test_strict(toxiproxy):
    from resilient_db.toxiproxy import ToxiproxyAPIError
    import pytest
    toxiproxy.create_proxy(name="s", upstream="127.0.0.1:9")
    with pytest.raises(ToxiproxyAPIError) as info:
        toxiproxy.add_toxic("s", type="bandwidth", attributes={"rate": 0})
    assert info.value.status == 400
"""


@pytest.mark.parametrize(("flag", "outcome"), [("--toxiproxy-strict", 0), (None, 1)])
def test_strict_option(tmp_path: object, flag: str | None, outcome: int) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "test_strict.py").write_text(_STRICT_TEST)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    if flag:
        args.append(flag)
    env = {k: v for k, v in os.environ.items() if k != "TOXIPROXY_URL"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == outcome, done.stdout + done.stderr
