"""Trip confirmation: a breaker with a health check asks the server before it opens."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from resilient_db import BreakerEvent, CircuitBreaker, CircuitOpenError, ConfigurationError


def make(health_check: Any, **kw: Any) -> tuple[CircuitBreaker, list[BreakerEvent]]:
    events: list[BreakerEvent] = []
    options: dict[str, Any] = {
        "consecutive_failures": 3,
        "open_jitter": 0.0,
        "probe_interval": 0.05,
        "health_check": health_check,
        "listeners": [events.append],
    }
    options.update(kw)
    return CircuitBreaker("db", **options), events


async def healthy() -> None:
    await anyio.lowlevel.checkpoint()


async def refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def black_hole() -> None:
    await anyio.sleep_forever()


async def fail(b: CircuitBreaker, n: int, *, accepted: bool = False) -> None:
    for _ in range(n):
        (await b.acquire_async()).failure(accepted=accepted)


async def test_churn_on_a_healthy_server_is_refuted() -> None:
    b, events = make(healthy)
    with anyio.fail_after(5):
        await fail(b, 3)
        assert b.state == "confirming"
        (await b.acquire_async()).success()  # calls are still admitted while confirming
        await b.wait_probe()
    assert b.state == "closed"
    assert [e.reason for e in events] == ["consecutive_failures", "trip_refuted"]
    stats = b.statistics()
    assert stats.refuted_total == 1
    assert stats.calls == 0  # a fresh window after the refutation
    assert stats.trips == 0


async def test_refused_server_opens_within_milliseconds() -> None:
    b, events = make(refused)
    with anyio.fail_after(5):
        started = time.monotonic()
        await fail(b, 3)
        await b.wait_probe()
        elapsed = time.monotonic() - started
    assert b.state == "open"
    assert events[-1].reason == "confirmed:consecutive_failures"
    assert elapsed < 0.1, elapsed
    with pytest.raises(CircuitOpenError):
        b.acquire()


async def test_black_holed_server_opens_after_confirm_timeout() -> None:
    b, _ = make(black_hole, confirm_timeout=0.2)
    with anyio.fail_after(5):
        started = time.monotonic()
        await fail(b, 3)
        await b.wait_probe()
        elapsed = time.monotonic() - started
    assert b.state == "open"
    assert 0.15 < elapsed < 1.0, elapsed


async def test_refutations_are_paced_by_the_probe_interval() -> None:
    checks = 0

    async def counting() -> None:
        nonlocal checks
        checks += 1

    b, _ = make(counting, probe_interval=0.2)
    with anyio.fail_after(5):
        started = time.monotonic()
        for _ in range(3):
            await fail(b, 3)
            await b.wait_probe()
            assert b.state == "closed"
        elapsed = time.monotonic() - started
    assert checks == 3
    assert elapsed >= 0.35, elapsed  # the 2nd and 3rd confirmations waited for a slot


def test_without_a_running_loop_a_trip_opens_directly() -> None:
    b, events = make(healthy)
    for _ in range(3):
        b.acquire().failure()
    assert b.state == "open"
    assert events[-1].reason == "consecutive_failures"


async def test_lost_connections_never_open_an_unconfirmed_breaker() -> None:
    b = CircuitBreaker("db", consecutive_failures=3, minimum_calls=3)
    await fail(b, 50, accepted=True)
    assert b.state == "closed"
    assert b.statistics().lost_total == 50
    await fail(b, 3)  # refusals do
    assert b.state == "open"


async def test_lost_connections_count_when_the_server_can_confirm() -> None:
    b, _events = make(refused)
    with anyio.fail_after(5):
        await fail(b, 3, accepted=True)
        await b.wait_probe()
    assert b.state == "open"  # the server really is down


async def test_half_open_trial_losing_its_connection_releases_the_permit() -> None:
    now = [0.0]
    b = CircuitBreaker("db", consecutive_failures=1, open_for=1.0, clock=lambda: now[0])
    b.acquire().failure()
    now[0] += 2.0
    trial = b.acquire()
    assert b.state == "half_open"
    trial.failure(accepted=True)
    assert b.state == "half_open"
    b.acquire().success()
    assert b.state == "closed"


def test_confirm_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="needs a health_check"):
        CircuitBreaker("db", confirm_trips=True)
    with pytest.raises(ConfigurationError, match="confirm_timeout"):
        CircuitBreaker("db", confirm_timeout=0)
    with pytest.raises(ConfigurationError, match="confirm_trips"):
        CircuitBreaker("db", confirm_trips="yes")  # type: ignore[arg-type]
    assert CircuitBreaker("db", health_check=healthy).config.confirms
    assert not CircuitBreaker("db", health_check=healthy, confirm_trips=False).config.confirms


async def test_slow_call_trips_are_not_confirmed() -> None:
    b, events = make(healthy, slow_call_duration=0.1, slow_call_rate=0.5, minimum_calls=2)
    for _ in range(2):
        (await b.acquire_async()).success(duration=1.0)
    assert b.state == "open"
    assert events[-1].reason == "slow_call_rate"
