"""The engine factory against the real PostgreSQL: defaults, validation, timeouts."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import resilient_db
from resilient_db import ConfigurationError, create_async_engine, engine_settings
from resilient_db.engine._factory import default_pool_size
from tests._relay import relay_to


@pytest.mark.parametrize("fixture", ["pg_url", "psycopg_url"])
async def test_factory_connects_through_both_drivers(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(fixture)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            name = (await conn.execute(text("SELECT current_setting('application_name')"))).one()
        assert name[0] == "resilient_db"
        pool: Any = engine.sync_engine.pool
        assert pool._pre_ping is True
        assert pool._recycle == 1800
        assert pool.size() == default_pool_size()
        assert pool._timeout == 10
    finally:
        await engine.dispose()


def test_timeouts_always_set_and_mapped_per_driver(pg_url: str, psycopg_url: str) -> None:
    a = engine_settings(create_async_engine(pg_url, connect_timeout=3, command_timeout=7))
    assert a is not None
    assert a.connect_args["timeout"] == 3
    assert a.connect_args["command_timeout"] == 7
    p = engine_settings(create_async_engine(psycopg_url, connect_timeout=3, command_timeout=7))
    assert p is not None
    assert p.connect_args["connect_timeout"] == 3
    assert p.connect_args["tcp_user_timeout"] == 7000
    assert p.connect_args["keepalives"] == 1


def test_user_connect_args_win(pg_url: str) -> None:
    s = engine_settings(
        create_async_engine(
            pg_url,
            connect_args={"command_timeout": 2, "server_settings": {"search_path": "x"}},
        )
    )
    assert s is not None
    assert s.connect_args["command_timeout"] == 2
    assert s.connect_args["server_settings"] == {
        "application_name": "resilient_db",
        "search_path": "x",
    }


def test_pgbouncer_switch_turns_caches_off(pg_url: str, psycopg_url: str) -> None:
    s = engine_settings(create_async_engine(pg_url, pgbouncer=True))
    assert s is not None
    assert s.connect_args["statement_cache_size"] == 0
    assert s.connect_args["prepared_statement_cache_size"] == 0
    name_func = s.connect_args["prepared_statement_name_func"]
    assert name_func() != name_func()
    p = engine_settings(create_async_engine(psycopg_url, pgbouncer=True))
    assert p is not None
    assert p.connect_args["prepare_threshold"] is None


async def test_pgbouncer_mode_runs_queries(pg_url: str) -> None:
    engine = create_async_engine(pg_url, pgbouncer=True)
    try:
        async with engine.connect() as conn:
            for i in range(3):
                assert (
                    await conn.execute(text("SELECT CAST(:x AS integer)"), {"x": i})
                ).scalar() == i
    finally:
        await engine.dispose()


def test_future_flag_is_accepted() -> None:
    engine = create_async_engine("postgresql+asyncpg://u@localhost/db", future=True)
    assert isinstance(engine, AsyncEngine)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://u:pw@h/db", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://u:pw@h/db", "'psycopg2'"),
        ("postgresql+pg8000://u:pw@h/db", "'pg8000'"),
        ("mysql+aiomysql://u:pw@h/db", "PostgreSQL only"),
        ("sqlite+aiosqlite:///x.db", "PostgreSQL only"),
        ("not a url", "could not parse"),
    ],
)
def test_refuses_sync_and_foreign_urls(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_async_engine(url)
    assert needle in str(info.value)
    assert "pw" not in str(info.value)
    assert "postgresql+asyncpg://" in str(info.value)


def test_postgres_alias_is_normalised() -> None:
    engine = create_async_engine("postgres+asyncpg://u@h/db")
    assert engine.url.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"pool_size": 0}, "pool_size must be an integer >= 1"),
        ({"pool_size": 2.5}, "pool_size must be an integer >= 1"),
        ({"max_overflow": -1}, "max_overflow must be an integer >= 0"),
        ({"pool_timeout": 0}, "pool_timeout must be a finite number of seconds > 0"),
        ({"pool_timeout": -3}, "pool_timeout must be a finite number of seconds > 0"),
        ({"connect_timeout": -1}, "connect_timeout must be a finite number of seconds > 0"),
        ({"command_timeout": 0}, "command_timeout must be a finite number of seconds > 0"),
        ({"command_timeout": float("inf")}, "command_timeout must be a finite"),
        ({"command_timeout": "30"}, "command_timeout must be a number of seconds"),
        ({"statement_timeout": -5}, "statement_timeout must be a finite number"),
        ({"pool_recycle": 0}, "pool_recycle must be a finite number of seconds > 0"),
        ({"pool_pre_ping": "yes"}, "pool_pre_ping must be True or False"),
        ({"application_name": ""}, "application_name must be a non-empty string"),
        ({"pgbouncer": 1}, "pgbouncer must be True or False"),
        ({"connect_args": [1]}, "connect_args must be a mapping"),
    ],
)
def test_invalid_options_name_the_option_and_range(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_async_engine("postgresql+asyncpg://u@h/db", **options)
    # The one message format: "create_async_engine(name=value) must be ...; fix: ...".
    name, constraint = needle.split(" must be ")
    message = str(info.value)
    assert f"create_async_engine({name}=" in message, message
    assert f") must be {constraint}" in message, message
    assert "; fix: " in message, message
    assert isinstance(info.value, ValueError)


def test_unknown_option_is_a_type_error_with_suggestion() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'pool_sise'; did you mean 'pool_size'"):
        create_async_engine("postgresql+asyncpg://u@h/db", pool_sise=3)


def test_short_pool_recycle_warns() -> None:
    with pytest.warns(UserWarning, match="pool_recycle=60s is under 300s"):
        create_async_engine("postgresql+asyncpg://u@h/db", pool_recycle=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_async_engine("postgresql+asyncpg://u@h/db", pool_recycle=300)


def test_default_pool_size_formula() -> None:
    assert default_pool_size(1) == 3
    assert default_pool_size(2) == 6
    assert default_pool_size(64) == 20


async def test_query_on_silent_peer_fails_within_command_timeout(pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        engine = create_async_engine(proxied, command_timeout=1, connect_timeout=1)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                relay.black_hole.set()
                started = time.monotonic()
                with anyio.fail_after(10), pytest.raises(TimeoutError):
                    await conn.execute(text("SELECT 2"))
                assert time.monotonic() - started < 1 + 1.5
                await conn.invalidate()
        finally:
            await engine.dispose()


async def test_pre_ping_on_silent_pooled_connection_does_not_hang(pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        engine = create_async_engine(proxied, command_timeout=1, connect_timeout=1, pool_size=1)
        try:
            async with engine.connect() as conn:  # one connection now idle in the pool
                await conn.execute(text("SELECT 1"))
            relay.black_hole.set()
            started = time.monotonic()
            # pre-ping times out, the pool reconnects, the connect times out: bounded
            with anyio.fail_after(15), pytest.raises((TimeoutError, OSError)):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert time.monotonic() - started < 1 + 1 + 3
        finally:
            await engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_connect_to_silent_peer_fails_within_connect_timeout(
    driver: str, pg_dsn: str
) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        relay.black_hole.set()
        proxied = url.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=relay.port)
        engine = create_async_engine(proxied, connect_timeout=1, command_timeout=1)
        limit = 1 if driver == "asyncpg" else 2  # libpq's connect_timeout floor is 2 s
        started = time.monotonic()
        try:
            with anyio.fail_after(15), pytest.raises(Exception) as info:
                async with engine.connect():
                    pass
            elapsed = time.monotonic() - started
            assert elapsed < limit + 2, elapsed
            assert "timeout" in f"{type(info.value).__name__} {info.value}".lower()
        finally:
            await engine.dispose()


def test_no_password_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError) as info:
        create_async_engine("postgresql://app:s3cr3t-pw@db/x")
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in caplog.text
    assert resilient_db.safe_url("postgresql+asyncpg://app:s3cr3t-pw@db/x") == (
        "postgresql+asyncpg://app:***@db/x"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u@/db?host=h1:5432,h2:5433",
        "postgresql+asyncpg://u@/db?host=h1:5432&host=h2:5433",
        "postgresql+psycopg://u@/db?host=h1,h2&port=5432,5433",
        "postgresql+psycopg://u@:5432/db?host=h1&host=h2:5433",
    ],
)
def test_multi_host_urls_take_one_form_with_read_write(url: str) -> None:
    engine = create_async_engine(url)
    assert engine.url.query["host"] in (("h1:5432", "h2:5433"),)
    assert engine.url.query["target_session_attrs"] == "read-write"
    _, params = engine.dialect.create_connect_args(engine.url)
    if engine.dialect.driver == "asyncpg":
        assert params["host"] == ["h1", "h2"]
        assert params["port"] == [5432, 5433]
    else:
        assert params["host"] == "h1,h2"
        assert params["port"] == "5432,5433"
    assert params["target_session_attrs"] == "read-write"


def test_multi_host_url_keeps_the_role_it_asks_for() -> None:
    engine = create_async_engine("postgresql+asyncpg://u@/db?host=a:1,b:2&target_session_attrs=any")
    assert engine.url.query["target_session_attrs"] == "any"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql+asyncpg://u:pw@h0/db?host=h1,h2", "put every host in ?host="),
        ("postgresql+asyncpg://u:pw@/db?host=h1:x,h2", "an integer 1..65535"),
        ("postgresql+asyncpg://u:pw@/db?host=h1:99999,h2", "an integer 1..65535"),
        ("postgresql+asyncpg://u:pw@/db?host=h1,h2&port=1", "give each host its port"),
        ("postgresql+asyncpg://u:pw@/db?host=h1,/tmp", "not 'name:port'"),
        ("postgresql+asyncpg://u:pw@/db?host=h1,h2&target_session_attrs=rw", "read-write"),
        ("postgresql+psycopg://u:pw@h/db?target_session_attrs=master", "read-write"),
    ],
)
def test_bad_multi_host_urls_name_the_fix(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_async_engine(url)
    assert needle in str(info.value)
    assert "pw" not in str(info.value)


def test_short_pool_recycle_warning_has_its_own_category() -> None:
    from resilient_db.engine._factory import ShortPoolRecycleWarning

    with pytest.warns(ShortPoolRecycleWarning):
        create_async_engine("postgresql+asyncpg://u@h/db", pool_recycle=10)
