"""engine_health_check probes the server on a fresh connection; endpoint_key names it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from resilient_db._errors import ConfigurationError
from resilient_db.engine._health import EndpointKey, endpoint_key, engine_health_check
from resilient_db.pytest_plugin import ToxiproxyPostgres

Factory = Callable[..., ToxiproxyPostgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, pg_url: str, psycopg_url: str) -> str:
    return pg_url if request.param == "asyncpg" else psycopg_url


async def test_probe_passes_on_a_healthy_server_without_the_pool(url: str) -> None:
    engine = sa_create_async_engine(url)
    try:
        check = engine_health_check(engine)
        for _ in range(3):
            await check()
        # The pool was never used: no connection was ever created in it.
        pool: Any = engine.pool
        assert pool.checkedin() == 0
        assert pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_probe_fails_fast_on_a_closed_port(url: str) -> None:
    port = _free_port()
    engine = sa_create_async_engine(make_url(url).set(port=port))
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)refused|connect"):
            await engine_health_check(engine, timeout=5.0)()
        assert time.monotonic() - started < 1.0
    finally:
        await engine.dispose()


async def test_probe_is_bounded_by_its_timeout_on_a_black_hole(
    url: str, toxiproxy_postgres: Factory
) -> None:
    proxy = toxiproxy_postgres(url)
    engine = sa_create_async_engine(proxy.url)
    try:
        await engine_health_check(engine)()  # through the proxy: healthy
        with proxy.black_hole():
            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises((TimeoutError, OSError)):
                await engine_health_check(engine, timeout=0.5)()
            elapsed = time.monotonic() - started
        assert elapsed < 2.0, elapsed
    finally:
        await engine.dispose()


async def test_multi_host_probe_passes_while_one_host_is_silent(
    url: str, toxiproxy_postgres: Factory
) -> None:
    """A silent first host (old primary black-holed) must not hide the live one: the hosts
    are probed side by side, so the probe passes as soon as any host answers."""
    from resilient_db import create_async_engine

    proxy = toxiproxy_postgres(url)
    silent, live = make_url(proxy.url), make_url(url)
    base = f"{live.drivername}://{live.username}@/{live.database}"
    engine = create_async_engine(
        f"{base}?host={silent.host}:{silent.port}&host={live.host}:{live.port}"
    )
    try:
        with proxy.black_hole():
            started = time.monotonic()
            with anyio.fail_after(10):
                await engine_health_check(engine, timeout=2.0)()
            assert time.monotonic() - started < 1.0
        # Every host silent or refusing: the probe still fails within its own timeout.
        dead_engine = create_async_engine(
            f"{base}?host={silent.host}:{silent.port}&host=127.0.0.1:{_free_port()}"
        )
        try:
            with proxy.black_hole():
                started = time.monotonic()
                with anyio.fail_after(10), pytest.raises((TimeoutError, OSError)):
                    await engine_health_check(dead_engine, timeout=0.5)()
                assert time.monotonic() - started < 2.0
        finally:
            await dead_engine.dispose()
    finally:
        await engine.dispose()


async def test_probe_ignores_a_frozen_pool(url: str, toxiproxy_postgres: Factory) -> None:
    """Frozen pooled sockets (half-open network) do not make a healthy server look dead."""
    proxy = toxiproxy_postgres(url)
    frozen = sa_create_async_engine(proxy.url, pool_size=2)
    direct: AsyncEngine = sa_create_async_engine(url)
    try:
        async with frozen.connect() as conn:
            await conn.execute(text("SELECT 1"))
        with proxy.black_hole():
            # The pooled connection is frozen; the probe of the *direct* engine and a probe
            # that never touches the frozen pool both pass at once.
            started = time.monotonic()
            await engine_health_check(direct, timeout=1.0)()
            assert time.monotonic() - started < 0.5
            pool: Any = frozen.pool
            assert pool.checkedin() == 1  # never taken out by the probe
    finally:
        await frozen.dispose()
        await direct.dispose()


def test_bad_timeout_is_a_configuration_error(pg_url: str) -> None:
    engine = sa_create_async_engine(pg_url)
    for bad in (0, -1, float("nan"), True, "2"):
        with pytest.raises(ConfigurationError, match="timeout"):
            engine_health_check(engine, timeout=bad)  # type: ignore[arg-type]


def test_endpoint_key() -> None:
    key = endpoint_key(make_url("postgresql+asyncpg://u:secret@db.example:6543/app"))
    assert key == EndpointKey("db.example", 6543, "app", None)
    assert str(key) == "db.example:6543/app"
    assert "secret" not in str(key)
    default = endpoint_key(make_url("postgresql+psycopg:///app"))
    assert (default.host, default.port) == ("localhost", 5432)
    rw = endpoint_key(make_url("postgresql+psycopg://h/app?target_session_attrs=read-write"))
    assert rw.role == "read-write"
    assert str(rw) == "h:5432/app?role=read-write"
    assert rw != endpoint_key(make_url("postgresql+psycopg://h/app"))


def test_endpoint_key_of_engine(pg_url: str) -> None:
    engine = sa_create_async_engine(pg_url)
    key = endpoint_key(engine)
    assert key.port == make_url(pg_url).port
    assert hash(key) == hash(endpoint_key(sa_create_async_engine(pg_url)))


async def test_breaker_confirms_trips_against_the_real_server(
    pg_url: str, toxiproxy_postgres: Factory
) -> None:
    """Healthy server: the trip is refuted. Closed port: opens at once. Black hole: opens
    after ``confirm_timeout``. Frozen pool, healed network: the probe passes at once."""
    from resilient_db import CircuitBreaker

    proxy = toxiproxy_postgres(pg_url)
    engine = sa_create_async_engine(proxy.url)
    breaker = CircuitBreaker(
        "db",
        consecutive_failures=2,
        health_check=engine_health_check(engine),
        confirm_timeout=0.3,
        probe_interval=0.05,
    )
    try:
        with anyio.fail_after(20):
            for _ in range(2):
                (await breaker.acquire_async()).failure()
            await breaker.wait_probe()
            assert breaker.state == "closed"
            assert breaker.statistics().refuted_total == 1
            with proxy.down():
                started = time.monotonic()
                for _ in range(2):
                    (await breaker.acquire_async()).failure()
                await breaker.wait_probe()
                assert breaker.state == "open"
                assert time.monotonic() - started < 0.5
            breaker.reset()
            with proxy.black_hole():
                started = time.monotonic()
                for _ in range(2):
                    (await breaker.acquire_async()).failure()
                await breaker.wait_probe()
                assert breaker.state == "open"
                assert 0.25 < time.monotonic() - started < 1.5
            # Healed: the next probe (due within probe_interval) passes on a new connection.
            healed = time.monotonic()
            while breaker.state == "open":
                try:
                    permit = await breaker.acquire_async()
                except Exception:
                    await anyio.sleep(0.01)  # bounded poll
                    continue
                permit.success()
            assert time.monotonic() - healed < 0.5
    finally:
        await breaker.wait_probe()
        await engine.dispose()
