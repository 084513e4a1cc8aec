"""RedisBreakerStore against the real Redis at 127.0.0.1:6379 (own key prefix, removed)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from resilient_db import BreakerEvent, CircuitBreaker, CircuitOpenError
from resilient_db.toxiproxy import AsyncToxiproxyClient, ToxiproxyServer

redis = pytest.importorskip("redis.asyncio", reason="redis-py is not installed (extra [redis])")

from resilient_db.fleet import FleetEvent, RedisBreakerStore  # noqa: E402

REDIS = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"rdb_test_{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - state of other tasks, with a deadline
            await anyio.sleep(0.01)  # bounded poll


def breaker(store: RedisBreakerStore, events: list[BreakerEvent], **kw: Any) -> CircuitBreaker:
    options: dict[str, Any] = {
        "consecutive_failures": 2,
        "open_for": 30.0,
        "open_jitter": 0.0,
        "listeners": [events.append],
        "store": store,
    }
    options.update(kw)
    return CircuitBreaker("db-primary", **options)


async def test_a_trip_is_shared_and_a_late_joiner_converges(prefix: str) -> None:
    s1 = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
    s2 = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
    e1: list[BreakerEvent] = []
    e2: list[BreakerEvent] = []
    async with s1, s2:
        b1, b2 = breaker(s1, e1), breaker(s2, e2)
        for _ in range(2):
            b1.acquire().failure()
        assert b1.state == "open"
        started = time.monotonic()
        await wait_for(lambda: b2.state == "open")
        assert time.monotonic() - started < 0.5
        assert e2[-1].reason == "fleet_open"
        assert e2[-1].open_for is not None
        assert 25.0 < e2[-1].open_for <= 30.0  # "open until T" on the server's clock
        with pytest.raises(CircuitOpenError):
            b2.acquire()
        # A process started later converges within one refresh interval.
        e3: list[BreakerEvent] = []
        s3 = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
        async with s3:
            b3 = breaker(s3, e3)
            await wait_for(lambda: b3.state == "open", timeout=1.0)
        # Another service shares nothing.
        other = RedisBreakerStore(REDIS, service="other", prefix=prefix)
        async with other:
            b4 = breaker(other, [])
            await other.refresh()
            assert b4.state == "closed"


async def test_closing_is_shared_as_half_open(prefix: str) -> None:
    now = [0.0]
    s1 = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
    s2 = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
    async with s1, s2:
        b1 = breaker(s1, [], open_for=1.0, clock=lambda: now[0])
        b2 = breaker(s2, [])
        for _ in range(2):
            b1.acquire().failure()
        await wait_for(lambda: b2.state == "open")
        now[0] += 2.0
        b1.acquire().success()  # the trial call: closed, and shared
        assert b1.state == "closed"
        await wait_for(lambda: b2.state == "half_open")
        b2.acquire().success()
        assert b2.state == "closed"


async def test_one_probe_lease_per_interval_for_the_fleet(prefix: str) -> None:
    s1 = RedisBreakerStore(REDIS, service="svc", prefix=prefix)
    s2 = RedisBreakerStore(REDIS, service="svc", prefix=prefix)
    async with s1, s2:
        assert await s1.acquire_probe_lease("db", 0.3)
        assert not await s2.acquire_probe_lease("db", 0.3)
        assert not await s1.acquire_probe_lease("db", 0.3)
        # The holder "dies": the lease expires on its own.
        with anyio.fail_after(2):
            while not await s2.acquire_probe_lease("db", 0.3):  # noqa: ASYNC110
                await anyio.sleep(0.02)  # bounded poll
        assert s2.statistics().leases_won == 1


async def test_the_fleet_probes_once_per_interval(prefix: str) -> None:
    probes = 0

    async def refused() -> None:
        nonlocal probes
        probes += 1
        raise ConnectionRefusedError("down")

    stores = [
        RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
        for _ in range(4)
    ]
    breakers = [
        breaker(s, [], health_check=refused, confirm_trips=False, probe_interval=0.2)
        for s in stores
    ]
    try:
        for b in breakers:
            for _ in range(2):
                b.acquire().failure()
        started = time.monotonic()
        with anyio.fail_after(10):
            while time.monotonic() - started < 1.0:
                for b in breakers:
                    with contextlib.suppress(CircuitOpenError):
                        await b.acquire_async()
                await anyio.sleep(0.01)  # bounded poll: callers arriving
        elapsed = time.monotonic() - started
        # One probe per 0.2 s for the four of them (not four per interval).
        assert probes <= elapsed / 0.2 + 2, probes
        assert probes >= 2
    finally:
        for b in breakers:
            await b.wait_probe()
        for s in stores:
            await s.aclose()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[AsyncToxiproxyClient, str]]:
    async with ToxiproxyServer(port=0) as server:
        client = AsyncToxiproxyClient(server.url)
        info = await client.create_proxy(name="redis", upstream="127.0.0.1:6379")
        yield client, f"redis://127.0.0.1:{info.listen_port}/0"


@pytest.mark.parametrize("fault", ["down", "black_hole"])
async def test_store_failure_falls_back_to_local_decisions_and_rejoins(
    prefix: str, redis_proxy: tuple[AsyncToxiproxyClient, str], fault: str
) -> None:
    client, url = redis_proxy
    fleet: list[FleetEvent] = []
    store = RedisBreakerStore(
        url,
        service="svc",
        prefix=prefix,
        refresh_interval=0.05,
        call_timeout=0.1,
        listeners=[fleet.append],
    )
    watcher = RedisBreakerStore(REDIS, service="svc", prefix=prefix, refresh_interval=0.05)
    events: list[BreakerEvent] = []
    async with store, watcher:
        b = breaker(store, events)
        seen = breaker(watcher, [])
        if fault == "down":
            await client.disable("redis")
        else:
            await client.add_toxic(
                "redis", type="timeout", stream="upstream", attributes={"timeout": 0}
            )
            await client.add_toxic("redis", type="timeout", name="down", attributes={"timeout": 0})
        try:
            # No call waits on the store longer than its budget.
            started = time.monotonic()
            assert await store.acquire_probe_lease("db-primary", 0.5)  # local fallback
            assert time.monotonic() - started < 0.3
            await wait_for(lambda: store.degraded)
            assert fleet[0].name == "fleet.degraded"
            # Protection continues locally: the breaker trips and rejects on its own.
            started = time.monotonic()
            for _ in range(2):
                b.acquire().failure()
            assert b.state == "open"
            with pytest.raises(CircuitOpenError):
                b.acquire()
            assert time.monotonic() - started < 0.05
            assert store.statistics().pending_writes == 1
        finally:
            if fault == "down":
                await client.enable("redis")
            else:
                for toxic in await client.toxics("redis"):
                    await client.remove_toxic("redis", toxic.name)
        # Redis is back: the pending decision is written and the fleet sees it.
        await wait_for(lambda: not store.degraded)
        assert fleet[-1].name == "fleet.recovered"
        await wait_for(lambda: seen.state == "open")
        assert store.statistics().pending_writes == 0


async def test_bad_options() -> None:
    from resilient_db import ConfigurationError

    with pytest.raises(ConfigurationError, match="service"):
        RedisBreakerStore(REDIS, service="")
    with pytest.raises(ConfigurationError, match="call_timeout"):
        RedisBreakerStore(REDIS, service="s", call_timeout=0)


async def test_confirmation_does_not_wait_for_the_fleet_lease(prefix: str) -> None:
    async def refused() -> None:
        raise ConnectionRefusedError("down")

    s1 = RedisBreakerStore(REDIS, service="svc", prefix=prefix)
    s2 = RedisBreakerStore(REDIS, service="svc", prefix=prefix)
    async with s1, s2:
        assert await s1.acquire_probe_lease("db-primary", 5.0)  # another instance holds it
        b = breaker(s2, [], health_check=refused, probe_interval=0.05)
        for _ in range(2):
            (await b.acquire_async()).failure()
        with anyio.fail_after(5):
            await b.wait_probe()
        assert b.state == "open"
