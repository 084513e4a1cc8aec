"""The circuit breaker under trio: its health probe runs as a trio *system task*.

Pure logic (a fake clock, a fake health check) driven by ``trio.run`` itself, so trio's own
run loop, cancel scopes and system nursery are the real ones. Every wait is bounded by a
``trio.fail_after``; the probe is held on a ``trio.Event`` rather than timed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from resilient_db import BreakerEvent, CircuitBreaker, CircuitOpenError

trio = pytest.importorskip("trio", reason="trio is not installed (the test extra has it)")

BOUND = 10.0  # every test's wall-clock bound (seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class HealthCheck:
    """A fake health check: records the task it ran in, waits for ``gate`` when held."""

    def __init__(self, *, healthy: bool = True, held: bool = False) -> None:
        self.healthy = healthy
        self.gate = trio.Event()
        if not held:
            self.gate.set()
        self.entered = trio.Event()
        self.tasks: list[Any] = []
        self.cancelled = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.tasks.append(trio.lowlevel.current_task())
        self.entered.set()
        try:
            await self.gate.wait()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        if not self.healthy:
            raise OSError("connection refused")


def make(
    clock: Clock, health_check: Callable[[], Awaitable[object]], **kw: Any
) -> tuple[CircuitBreaker, list[BreakerEvent]]:
    events: list[BreakerEvent] = []
    options: dict[str, Any] = {
        "minimum_calls": 4,
        "failure_rate": 0.5,
        "open_for": 60.0,
        "open_jitter": 0.0,
        "probe_interval": 0.5,
        "probe_timeout": 5.0,
        "confirm_trips": False,
        "clock": clock,
        "listeners": [events.append],
    }
    options.update(kw)
    return CircuitBreaker("trio-db", health_check=health_check, **options), events


def trip(b: CircuitBreaker) -> None:
    for _ in range(4):
        b.acquire().failure()


def st(b: CircuitBreaker) -> str:
    return b.state.value


def test_trips_open_and_rejects_callers_under_trio() -> None:
    clock = Clock()
    check = HealthCheck()
    b, events = make(clock, check)

    async def main() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            assert st(b) == "open"
            with pytest.raises(CircuitOpenError) as info:
                await b.acquire_async()  # no probe is due within the first interval
            assert info.value.retry_after == pytest.approx(0.5)
            assert check.tasks == []  # nobody probed

    trio.run(main)
    assert [e.reason for e in events] == ["failure_rate"]


@pytest.mark.parametrize("scope", ["move_on_after", "fail_after"])
def test_a_cancelled_caller_does_not_cancel_the_probe_nor_burn_its_slot(scope: str) -> None:
    clock = Clock()
    check = HealthCheck(held=True)  # the server answers only once the gate opens
    b, events = make(clock, check)
    callers: list[Any] = []

    async def caller() -> None:
        callers.append(trio.lowlevel.current_task())
        if scope == "move_on_after":
            with trio.move_on_after(0.05) as cs:  # the caller's own short deadline
                await b.acquire_async()
            assert cs.cancelled_caught
        else:
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.05):
                await b.acquire_async()

    async def main() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            clock.now += 0.5  # a probe is due
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller)  # a task of the caller's own, cancelled first
            # The caller gave up; its probe goes on, in a task of its own.
            await check.entered.wait()
            assert b.statistics().probes == 1
            assert (check.cancelled, check.finished) == (0, 0)
            (probe_task,) = check.tasks
            assert probe_task is not callers[0]
            # trio's system nursery: owned by the root task, not the main task's nursery
            main_task = trio.lowlevel.current_task()
            assert probe_task.parent_nursery.parent_task is trio.lowlevel.current_root_task()
            assert probe_task.parent_nursery is not main_task.parent_nursery
            assert probe_task.name == "resilient_db.breaker_probe"
            # While it runs, nobody else probes (one probe whatever the concurrency).
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()
            check.gate.set()
            await b.wait_probe()
            # Its answer counts: no second probe, no new interval to wait for.
            assert (check.finished, check.cancelled) == (1, 0)
            assert st(b) == "half_open"
            assert events[-1].reason == "probe_succeeded"
            permit = await b.acquire_async()
            assert b.statistics().probes == 1
            permit.success()
            assert st(b) == "closed"

    trio.run(main)


def test_a_failed_probe_keeps_it_open_and_the_next_interval_closes_it() -> None:
    clock = Clock()
    check = HealthCheck(healthy=False)
    b, events = make(clock, check)

    async def main() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            clock.now += 0.5
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()  # probed: the server is still down
            assert b.statistics().probe_failures == 1
            assert st(b) == "open"
            clock.now += 0.4
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()  # within the interval: no probe
            assert b.statistics().probes == 1
            check.healthy = True
            clock.now += 0.1
            permit = await b.acquire_async()  # the next interval's probe passes
            assert b.statistics().probes == 2
            permit.success()
            assert st(b) == "closed"

    trio.run(main)
    assert [e.reason for e in events] == ["failure_rate", "probe_succeeded", "probes_succeeded"]


def test_the_probe_is_bounded_by_its_own_timeout_under_trio() -> None:
    clock = Clock()
    check = HealthCheck(held=True)  # never answers
    b, _ = make(clock, check, probe_timeout=0.05)

    async def main() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            clock.now += 0.5
            with pytest.raises(CircuitOpenError):
                await b.acquire_async()  # the probe timed out (anyio.fail_after in it)
            assert check.cancelled == 1
            stats = b.statistics()
            assert (stats.probes, stats.probe_failures) == (1, 1)
            check.gate.set()  # the server answers again
            clock.now += 0.5
            permit = await b.acquire_async()  # not wedged: a new probe ran and passed
            permit.success()
            assert st(b) == "closed"

    trio.run(main)


@pytest.mark.parametrize("healthy", [True, False])
def test_a_trip_is_confirmed_by_a_probe_spawned_from_synchronous_code(healthy: bool) -> None:
    """``permit.failure()`` is synchronous: the confirming probe is spawned from it."""
    clock = Clock()
    check = HealthCheck(healthy=healthy)
    b, events = make(clock, check, confirm_trips=True, confirm_timeout=1.0)

    async def main() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            assert st(b) == "confirming"  # a probe could be spawned: trio is running
            assert b.acquire() is not None  # confirming still admits
            await b.wait_probe()
            assert len(check.tasks) == 1

    trio.run(main)
    if healthy:
        assert st(b) == "closed"
        assert [e.reason for e in events] == ["failure_rate", "trip_refuted"]
    else:
        assert st(b) == "open"
        assert [e.reason for e in events] == ["failure_rate", "confirmed:failure_rate"]


def test_a_probe_cut_short_by_the_end_of_trio_run_does_not_wedge_the_breaker() -> None:
    """trio cancels system tasks when the main task returns: the probe slot is freed, so
    the next run (trio or asyncio) probes again."""
    clock = Clock()
    check = HealthCheck(held=True)
    b, _ = make(clock, check)

    async def first() -> None:
        with trio.fail_after(BOUND):
            trip(b)
            clock.now += 0.5
            with trio.move_on_after(0.05):
                await b.acquire_async()
            await check.entered.wait()
        # main returns with the probe still waiting on its gate

    trio.run(first)
    assert check.cancelled == 1
    assert b.statistics().probes == 1
    check.gate = trio.Event()
    check.gate.set()

    async def second() -> None:
        with trio.fail_after(BOUND):
            clock.now += 0.5
            permit = await b.acquire_async()
            permit.success()

    trio.run(second)
    assert st(b) == "closed"
    assert b.statistics().probes == 2


def test_a_trip_during_trio_shutdown_opens_without_a_probe() -> None:
    """After the main task and the system tasks are done, trio finalizes the async generators
    left suspended; one that reports failures there trips the breaker. No system task can be
    spawned any more ("Nursery is closed to new arrivals"): the trip opens unconfirmed rather
    than raising out of ``permit.failure()``."""
    clock = Clock()
    check = HealthCheck()
    b, events = make(clock, check, confirm_trips=True)
    errors: list[BaseException] = []
    kept: list[Any] = []

    async def stream() -> Any:
        try:
            yield 1
        finally:
            try:
                trip(b)  # e.g. a streaming response's permits, reported at its close
            except BaseException as exc:
                errors.append(exc)
                raise

    async def main() -> None:
        with trio.fail_after(BOUND):
            agen = stream()
            kept.append(agen)  # alive at the end of the run: trio finalizes it
            assert await agen.__anext__() == 1

    trio.run(main)
    assert errors == []
    assert st(b) == "open"
    assert check.tasks == []
    assert [e.reason for e in events] == ["failure_rate"]
