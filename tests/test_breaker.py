"""CircuitBreaker behaviour (pure logic: injected clock; real anyio tasks for concurrency)."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilient_db import (
    BreakerEvent,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    ResilientDBError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class AppError(Exception):
    pass


def app_errors_ignored(exc: BaseException) -> bool | None:
    if isinstance(exc, AppError) or not isinstance(exc, Exception):
        return None
    return True


def make(clock: Clock, **kw: Any) -> tuple[CircuitBreaker, list[BreakerEvent]]:
    events: list[BreakerEvent] = []
    options: dict[str, Any] = {
        "window": 10.0,
        "minimum_calls": 4,
        "failure_rate": 0.5,
        "open_for": 5.0,
        "open_jitter": 0.0,
        "clock": clock,
        "listeners": [events.append],
    }
    options.update(kw)
    if "health_check" in kw:
        options.setdefault("confirm_trips", False)  # these tests drive OPEN directly
    return CircuitBreaker("db", **options), events


def st(b: CircuitBreaker) -> str:
    """The state as a plain str (so mypy does not narrow ``b.state`` between asserts)."""
    return b.state.value


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.acquire().failure()


def succeed(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.acquire().success()


def test_trips_on_failure_rate_after_minimum_calls(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b, events = make(clock)
    succeed(b, 2)
    fail(b, 1)
    assert st(b) == "closed"  # 3 calls < minimum_calls
    with caplog.at_level(logging.INFO, logger="resilient_db"):
        fail(b, 1)  # 4 calls, 50 % failures
    assert st(b) == "open"
    assert b.state is BreakerState("open")
    assert [(e.previous, e.state, e.reason) for e in events] == [
        (BreakerState.CLOSED, BreakerState.OPEN, "failure_rate")
    ]
    assert events[0].open_for == 5.0
    assert events[0].failure_rate == 0.5
    record = next(r for r in caplog.records if getattr(r, "event", None) == "breaker.opened")
    assert record.__dict__["breaker"] == "db"
    clock.now += 1.5
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    err = info.value
    assert isinstance(err, ResilientDBError)
    assert err.name == "db"
    assert err.retry_after == pytest.approx(3.5)
    assert err.state == "open"
    assert b.statistics().rejected_total == 1


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = Clock()
    b, _ = make(clock, buckets=10)
    fail(b, 3)
    clock.now += 10.0  # the whole window later
    succeed(b, 3)
    assert b.statistics().calls == 3
    fail(b, 1)  # 1 failure in 4 calls: 25 %
    assert st(b) == "closed"
    stats = b.statistics()
    assert (stats.calls, stats.failures, stats.failure_rate) == (4, 1, 0.25)
    clock.now += 5.0  # half the window: the bucket of the first 4 calls still counts
    assert b.statistics().calls == 4
    clock.now += 5.0
    assert b.statistics().calls == 0


def test_half_open_closes_after_successes_and_open_duration_grows_then_resets() -> None:
    clock = Clock()
    b, events = make(clock, half_open_permits=2, open_for=1.0, open_for_max=3.0)
    fail(b, 4)
    clock.now += 1.0
    p1 = b.acquire()
    assert st(b) == "half_open"
    p1.failure()  # a probe failed: reopen for 2 s
    assert st(b) == "open"
    assert events[-1].reason == "probe_failed"
    assert events[-1].open_for == 2.0
    clock.now += 1.9
    with pytest.raises(CircuitOpenError):
        b.acquire()
    clock.now += 0.1
    p1, p2 = b.acquire(), b.acquire()
    p1.failure()
    assert events[-1].open_for == 3.0  # capped at open_for_max
    p2.success()  # stale: from the previous half-open period
    assert st(b) == "open"
    clock.now += 3.0
    p1, p2 = b.acquire(), b.acquire()
    p1.success()
    p1.success()  # idempotent
    assert st(b) == "half_open"
    p2.success()
    assert st(b) == "closed"
    assert events[-1].reason == "probes_succeeded"
    assert b.statistics().trips == 0
    fail(b, 4)
    assert events[-1].open_for == 1.0  # reset when closed


def test_slow_calls_trip() -> None:
    clock = Clock()
    b, events = make(clock, slow_call_duration=1.0, slow_call_rate=0.75, failure_rate=1.0)
    for duration in (2.0, 0.1, 1.0):
        b.acquire().success(duration)
    assert st(b) == "closed"
    b.acquire().success(5.0)
    assert st(b) == "open"
    assert events[-1].reason == "slow_call_rate"


def test_ignored_errors_neither_trip_nor_heal() -> None:
    clock = Clock()
    b, _ = make(clock)
    for _ in range(100):
        b.acquire().ignore()
    assert st(b) == "closed"
    assert b.statistics().calls == 0
    fail(b, 4)
    clock.now += 5.0
    permit = b.acquire()
    assert st(b) == "half_open"
    permit.ignore()
    permit.failure()  # ignored is final: later outcomes of the same permit are no-ops
    assert st(b) == "half_open"  # not healed, not reopened
    assert b.statistics().half_open_in_flight == 0
    b.acquire().success()  # the permit was released: a new probe is admitted
    assert st(b) == "closed"
    assert b.statistics().ignored_total == 101


async def test_context_manager_ignores_app_errors_and_cancellation() -> None:
    clock = Clock()
    b, _ = make(clock, is_failure=app_errors_ignored)
    for _ in range(10):
        with pytest.raises(AppError):
            async with b:
                raise AppError
    with anyio.move_on_after(0):
        async with b:
            await anyio.sleep(1)
    assert st(b) == "closed"
    stats = b.statistics()
    assert (stats.calls, stats.ignored_total) == (0, 11)
    for _ in range(4):
        with pytest.raises(ValueError, match="db down"):
            async with b:
                raise ValueError("db down")
    assert st(b) == "open"
    with pytest.raises(CircuitOpenError):
        async with b:
            pytest.fail("must not run")


async def test_decorator_and_success_verdict() -> None:
    clock = Clock()

    def verdict(exc: BaseException) -> bool | None:
        return not isinstance(exc, KeyError)

    b, _ = make(clock, is_failure=verdict)

    @b
    async def work(x: int) -> int:
        if x < 0:
            raise KeyError(x)
        if x == 0:
            raise OSError("refused")
        return x * 2

    assert await work(21) == 42
    for _ in range(3):
        with pytest.raises(KeyError):
            await work(-1)
    assert b.statistics().failures == 0  # False: counted as successes
    assert work.__name__ == "work"
    for _ in range(4):
        with pytest.raises(OSError, match="refused"):
            await work(0)
    assert st(b) == "open"
    with pytest.raises(CircuitOpenError):
        await work(1)


async def test_thousand_concurrent_calls_against_half_open_admit_exactly_permits() -> None:
    clock = Clock()
    b, _ = make(clock, half_open_permits=3)
    fail(b, 4)
    clock.now += 5.0
    admitted = 0
    rejected = 0
    release = anyio.Event()
    all_arrived = anyio.Event()
    arrived = 0
    states: set[str] = set()

    async def call() -> None:
        nonlocal admitted, rejected, arrived
        try:
            async with b:
                admitted += 1
                arrived += 1
                if arrived == 1000:
                    all_arrived.set()
                await release.wait()
        except CircuitOpenError as exc:
            states.add(exc.state)
            rejected += 1
            arrived += 1
            if arrived == 1000:
                all_arrived.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(call)
            await all_arrived.wait()
            assert (admitted, rejected) == (3, 997)
            assert states == {"half_open"}
            assert b.statistics().half_open_in_flight == 3
            release.set()
    assert st(b) == "closed"


async def test_cancelling_a_probe_call_releases_its_permit() -> None:
    clock = Clock()
    b, _ = make(clock, half_open_permits=1)
    fail(b, 4)
    clock.now += 5.0
    entered = anyio.Event()

    async def probe_call() -> None:
        async with b:
            entered.set()
            await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe_call)
            await entered.wait()
            with pytest.raises(CircuitOpenError):
                b.acquire()  # the only permit is taken
            tg.cancel_scope.cancel()
    assert st(b) == "half_open"
    assert b.statistics().half_open_in_flight == 0
    b.acquire().success()
    assert st(b) == "closed"


def test_max_half_open_wait_reopens_a_wedged_half_open() -> None:
    clock = Clock()
    b, events = make(clock, max_half_open_wait=2.0)
    fail(b, 4)
    clock.now += 5.0
    lost = b.acquire()  # never reports
    clock.now += 1.0
    with pytest.raises(CircuitOpenError):
        b.acquire()
    clock.now += 1.0
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.state == "open"
    assert events[-1].reason == "half_open_timeout"
    lost.success()  # stale, no effect
    assert st(b) == "open"


async def test_health_probe_runs_once_per_interval_and_heals_fast() -> None:
    clock = Clock()
    healthy = False
    probes = 0
    gate = anyio.Event()

    async def health_check() -> None:
        nonlocal probes
        probes += 1
        await gate.wait()
        if not healthy:
            raise OSError("connection refused")

    b, events = make(
        clock, open_for=60.0, open_for_max=600.0, health_check=health_check, probe_interval=0.5
    )
    fail(b, 4)
    rejected = 0

    async def caller() -> None:
        nonlocal rejected
        try:
            await b.acquire_async()
        except CircuitOpenError:
            rejected += 1

    with anyio.fail_after(10):
        # Within the first probe interval nobody probes.
        await caller()
        assert probes == 0
        clock.now += 0.5
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(caller)
            while rejected < 199 or probes < 1:  # the probe runs in its own task
                await anyio.lowlevel.checkpoint()
            assert probes == 1  # one probe, whatever the concurrency
            gate.set()
        assert rejected == 201
        assert st(b) == "open"
        assert b.statistics().probe_failures == 1
        # Next interval: the database is back; the first caller probes and gets the permit.
        healthy = True
        clock.now += 0.4
        await caller()
        assert probes == 1
        clock.now += 0.1
        permit = await b.acquire_async()
        assert probes == 2
        assert st(b) == "half_open"
        assert events[-1].reason == "probe_succeeded"
        with pytest.raises(CircuitOpenError):
            await b.acquire_async()  # the single permit is the prober's
        permit.success()
        assert st(b) == "closed"


async def test_probe_timeout_and_cancellation_reset_probing() -> None:
    clock = Clock()

    async def hangs() -> None:
        await anyio.sleep_forever()

    b, _ = make(clock, health_check=hangs, probe_interval=0.5, probe_timeout=0.05)
    fail(b, 4)
    clock.now += 0.5
    with anyio.fail_after(5):
        with pytest.raises(CircuitOpenError):
            await b.acquire_async()  # the probe timed out
        assert b.statistics().probe_failures == 1
        clock.now += 0.5
        with anyio.move_on_after(0.01):  # the caller itself is cancelled...
            await b.acquire_async()
        assert b.statistics().probes == 2
        await b.wait_probe()  # ...but not its probe, which ends on its own timeout
        assert b.statistics().probe_failures == 2
        clock.now += 0.5
        with pytest.raises(CircuitOpenError):
            await b.acquire_async()  # a new probe ran (not wedged by the cancelled caller)
    assert b.statistics().probes == 3


async def test_slow_probe_with_short_deadline_callers_still_heals() -> None:
    """#9 case 4: a 200 ms health check, callers with 100 ms deadlines: the breaker closes."""
    clock = Clock()

    async def slow_but_healthy() -> None:
        await anyio.sleep(0.2)

    b, _ = make(clock, health_check=slow_but_healthy, probe_interval=0.5, probe_timeout=2.0)
    fail(b, 4)
    clock.now += 0.5
    with anyio.fail_after(5):
        with anyio.move_on_after(0.1):  # the prober's caller gives up after 100 ms
            await b.acquire_async()
        for _ in range(3):  # others fail fast meanwhile
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()
        await b.wait_probe()
        assert st(b) == "half_open"  # the probe finished although its caller left
        assert b.statistics().probes == 1
        permit = await b.acquire_async()
        permit.success()
    assert st(b) == "closed"


def test_sync_acquire_never_probes() -> None:
    clock = Clock()
    calls = 0

    async def health_check() -> None:
        nonlocal calls
        calls += 1

    b, _ = make(clock, health_check=health_check)
    fail(b, 4)
    clock.now += 1.0
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert calls == 0
    assert info.value.retry_after == 0.0  # a probe is due: try again through acquire_async


def test_forced_open_disabled_metrics_only_and_reset() -> None:
    clock = Clock()
    b, events = make(clock)
    b.force_open()
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.state == "forced_open"
    assert info.value.retry_after == math.inf
    b.disable()
    fail(b, 50)
    assert st(b) == "disabled"
    assert b.statistics().calls == 0
    b.metrics_only()
    fail(b, 50)
    assert st(b) == "metrics_only"
    assert b.statistics().calls == 50
    would = [e for e in events if e.reason.startswith("would_open")]
    assert len(would) == 1  # once per crossing
    b.reset()
    assert st(b) == "closed"
    assert b.statistics().calls == 0
    assert [e.state for e in events if e.reason == "manual"] == [
        BreakerState.FORCED_OPEN,
        BreakerState.DISABLED,
        BreakerState.METRICS_ONLY,
        BreakerState.CLOSED,
    ]


def test_rejections_are_fresh_and_do_not_accumulate() -> None:
    clock = Clock()
    b, _ = make(clock)
    fail(b, 4)
    seen: list[CircuitOpenError] = []
    for _ in range(3):
        try:
            b.acquire()
        except CircuitOpenError as exc:
            seen.append(exc)
    assert len({id(e) for e in seen}) == 3
    depths = []
    for rejection in seen:
        tb, depth = rejection.__traceback__, 0
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        depths.append(depth)
    assert depths[0] == depths[-1] <= 3
    assert all(e.__context__ is None and not getattr(e, "__notes__", None) for e in seen)


def test_listener_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("listener bug")

    clock = Clock()
    b, events = make(clock)
    b.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="resilient_db"):
        fail(b, 4)
    assert st(b) == "open"
    assert len(events) == 1
    assert any(getattr(r, "event", None) == "breaker.listener_failed" for r in caplog.records)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"window": 0}, "window=0"),
        ({"buckets": 0}, "buckets=0"),
        ({"minimum_calls": 1.5}, "minimum_calls=1.5"),
        ({"failure_rate": 1.5}, "failure_rate=1.5"),
        ({"failure_rate": 0}, "failure_rate=0"),
        ({"slow_call_duration": -1}, "slow_call_duration=-1"),
        ({"slow_call_rate": math.nan}, "slow_call_rate=nan"),
        ({"half_open_permits": 0}, "half_open_permits=0"),
        ({"open_for": 10, "open_for_max": 5}, "open_for_max=5"),
        ({"open_growth": 0.5}, "open_growth=0.5"),
        ({"open_jitter": 1.0}, "open_jitter=1.0"),
        ({"probe_interval": 0}, "probe_interval=0"),
        ({"health_check": 42}, "health_check=42"),
        ({"listeners": [1]}, "listeners=1"),
    ],
)
def test_validation(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match="CircuitBreaker") as info:
        CircuitBreaker("db", **kwargs)
    assert needle in str(info.value)
    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker("")


def test_consecutive_failures_trip_whatever_the_window_holds() -> None:
    now = [0.0]
    breaker = CircuitBreaker("db", minimum_calls=5, consecutive_failures=3, clock=lambda: now[0])
    for _ in range(100):
        breaker.acquire().success()
    for _ in range(2):
        breaker.acquire().failure()
    assert breaker.state == "closed"  # 2 of 102 is far below the rate threshold
    breaker.acquire().success()  # a success breaks the streak
    for _ in range(2):
        breaker.acquire().failure()
    assert breaker.state == "closed"
    breaker.acquire().failure()
    assert breaker.state == "open"
    assert breaker.statistics().last_reason == "consecutive_failures"


def test_consecutive_failures_can_be_turned_off() -> None:
    breaker = CircuitBreaker("db", minimum_calls=500, consecutive_failures=None)
    for _ in range(50):
        breaker.acquire().failure()
    assert breaker.state == "closed"


async def test_with_a_health_check_only_a_passing_probe_leaves_open() -> None:
    now = [0.0]
    healthy = [False]
    checks = 0

    async def health_check() -> None:
        nonlocal checks
        checks += 1
        if not healthy[0]:
            raise ConnectionRefusedError("down")

    breaker = CircuitBreaker(
        "db",
        consecutive_failures=2,
        open_for=1.0,
        probe_interval=0.5,
        health_check=health_check,
        confirm_trips=False,
        clock=lambda: now[0],
    )
    for _ in range(2):
        (await breaker.acquire_async()).failure()
    assert breaker.state == "open"
    for step in range(40):  # 20 s of callers arriving every 0.5 s, far past open_for
        now[0] += 0.5
        with pytest.raises(CircuitOpenError):
            await breaker.acquire_async()
        assert breaker.state == "open", step
    assert checks == 40  # one probe per interval, and no unpaced half-open call
    healthy[0] = True
    now[0] += 0.5
    permit = await breaker.acquire_async()
    assert breaker.state == "half_open"
    permit.success()
    assert breaker.state == "closed"


def test_remove_listener_stops_its_events() -> None:
    breaker = CircuitBreaker("remove-listener")
    kept: list[BreakerEvent] = []
    removed: list[BreakerEvent] = []
    breaker.add_listener(kept.append)
    breaker.add_listener(removed.append)
    breaker.force_open()
    breaker.remove_listener(removed.append)
    breaker.remove_listener(removed.append)  # a second removal is a no-op
    breaker.reset()
    assert [e.state for e in kept] == [BreakerState.FORCED_OPEN, BreakerState.CLOSED]
    assert [e.state for e in removed] == [BreakerState.FORCED_OPEN]


async def test_a_frozen_probe_does_not_hold_back_the_next_one() -> None:
    """A frozen network: a check that neither answers nor fails keeps its slot one probe
    interval at most. Probes still start one interval apart (the connection-attempt rate
    is unchanged), so the first probe after the heal sees it — not the frozen one's timeout
    later — and the frozen check's own late answer is only counted."""
    import time

    frozen = anyio.Event()  # set: the network healed (new checks pass)
    starts: list[float] = []

    async def health_check() -> None:
        starts.append(time.monotonic())
        if not frozen.is_set():
            await anyio.sleep_forever()  # bounded by probe_timeout

    b, events = make(Clock(), health_check=health_check, probe_interval=0.1, probe_timeout=3.0)
    b._clock = time.monotonic  # real time: the slots are real-time sleeps
    fail(b, 4)
    b._next_probe_at = 0.0
    with anyio.fail_after(5):
        while len(starts) < 3:  # callers keep arriving while it is open
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()
            await anyio.sleep(0.01)
        assert st(b) == "open"
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert all(0.09 <= gap < 0.5 for gap in gaps), gaps  # one per interval, not per 3 s
        frozen.set()
        healed = time.monotonic()
        permit = None
        while permit is None:
            try:
                permit = await b.acquire_async()  # the caller whose probe passes gets in
            except CircuitOpenError:
                await anyio.sleep(0.01)
        assert time.monotonic() - healed < 0.1 + 0.15  # one interval + slack
        assert events[-1].reason == "probe_succeeded"
        assert st(b) == "half_open"
        permit.success()
        assert st(b) == "closed"
    with anyio.fail_after(5):
        await b.wait_probe()  # the frozen checks end on their own timeout
    assert b.statistics().probe_failures >= 3
