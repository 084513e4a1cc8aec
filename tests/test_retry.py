"""RetryPolicy, retry_call and the testing switch (pure logic: fake clock and sleep)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tenacity import AsyncRetrying

import resilient_db.policies._retry as retry_mod
from resilient_db import (
    CategoryBackoff,
    ConfigurationError,
    RetryBudget,
    RetryDecision,
    RetryEvent,
    RetryHooks,
    RetryPolicy,
    RetryStatistics,
    set_testing,
)
from resilient_db.policies._retry import is_testing, retry_call


class FakeTime:
    """A fake monotonic clock whose sleep advances it (and yields to the loop)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[tuple[float, float]] = []  # (started at, seconds)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.now, seconds))
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class Recorder(RetryHooks):
    def __init__(self) -> None:
        self.events: list[RetryEvent] = []
        self.stats: list[RetryStatistics] = []

    def on_retry(self, event: RetryEvent) -> None:
        self.events.append(event)

    def on_finish(self, statistics: RetryStatistics) -> None:
        self.stats.append(statistics)


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


def decide(exc: BaseException) -> RetryDecision | None:
    if isinstance(exc, Transient):
        return RetryDecision(category=str(exc.args[0]) if exc.args else None)
    return None


def failing(times: int, result: str = "ok", exc: Callable[[], Exception] = Transient) -> Any:
    calls = {"n": 0}

    async def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc()
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def policy(ft: FakeTime, **kw: Any) -> RetryPolicy:
    return RetryPolicy(clock=ft.clock, sleep=ft.sleep, **kw)


async def test_happy_path_builds_no_tenacity_object(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []

    class Counting(AsyncRetrying):
        def __init__(self, *a: Any, **kw: Any) -> None:
            built.append(self)
            super().__init__(*a, **kw)

    monkeypatch.setattr(retry_mod, "AsyncRetrying", Counting)
    ft = FakeTime()
    budget = RetryBudget(max_tokens=5, token_ratio=0.5, per_second=0, clock=ft.clock)
    budget.withdraw()
    assert await retry_call(failing(0), policy=policy(ft), decide=decide, budget=budget) == "ok"
    assert built == []
    assert budget.tokens == 4.5  # the success deposited token_ratio
    assert await retry_call(failing(1), policy=policy(ft), decide=decide) == "ok"
    assert len(built) == 1


async def test_retries_until_success_with_stats_and_events() -> None:
    ft = FakeTime()
    rec = Recorder()
    fn = failing(2)
    result = await retry_call(fn, policy=policy(ft), decide=decide, hooks=rec, name="unit")
    assert result == "ok"
    assert fn.calls["n"] == 3
    assert [e.attempt for e in rec.events] == [1, 2]
    assert all(e.name == "unit" and isinstance(e.exception, Transient) for e in rec.events)
    (stats,) = rec.stats
    assert stats.attempts == 3
    assert stats.stop_reason == "success"
    assert stats.total_sleep == pytest.approx(sum(s for _, s in ft.sleeps))
    assert stats.total_sleep == pytest.approx(sum(e.sleep for e in rec.events))


async def test_not_retryable_reraises_original_unchanged() -> None:
    ft = FakeTime()
    err = Fatal("unique violation")
    rec = Recorder()

    async def fn() -> None:
        raise err

    with pytest.raises(Fatal) as info:
        await retry_call(fn, policy=policy(ft), decide=decide, hooks=rec)
    assert info.value is err
    assert getattr(err, "__notes__", []) == []
    assert ft.sleeps == []
    assert rec.stats[0].stop_reason == "not_retryable"


async def test_later_non_retryable_error_is_reraised_with_note() -> None:
    ft = FakeTime()
    n = {"i": 0}

    async def fn() -> None:
        n["i"] += 1
        if n["i"] == 1:
            raise Transient("serialization")
        raise Fatal("boom")

    with pytest.raises(Fatal) as info:
        await retry_call(fn, policy=policy(ft), decide=decide)
    assert info.value.__context__ is None  # not chained onto the first failure
    assert "attempt 2 failed with a non-retryable error" in info.value.__notes__[0]


async def test_exhaustion_reraises_last_original_exception_with_note() -> None:
    ft = FakeTime()
    errors: list[Transient] = []

    async def fn() -> None:
        errors.append(Transient("connection_lost"))
        raise errors[-1]

    rec = Recorder()
    with pytest.raises(Transient) as info:
        await retry_call(fn, policy=policy(ft, attempts=4), decide=decide, hooks=rec)
    assert info.value is errors[-1]
    assert len(errors) == 4
    (note,) = info.value.__notes__
    assert "gave up after 4 attempt(s)" in note
    assert "stopped by attempts" in note
    assert "RetryPolicy(attempts=...)" in note
    assert rec.stats[0].stop_reason == "attempts"
    assert len(ft.sleeps) == 3


async def test_deadline_stops_before_a_sleep_that_would_cross_it() -> None:
    ft = FakeTime()
    p = policy(ft, attempts=1000, deadline=2.0, initial=0.5, max_backoff=0.5, jitter="none")
    fn = failing(10_000)
    rec = Recorder()
    start = ft.now
    with pytest.raises(Transient) as info:
        await retry_call(fn, policy=p, decide=decide, hooks=rec)
    # sleeps of 0.5 s fit 4 times in 2.0 s: 5 attempts, then the next sleep would cross.
    assert len(ft.sleeps) == 4
    assert ft.now - start == pytest.approx(2.0)
    assert rec.stats[0].stop_reason == "deadline"
    assert "stopped by deadline" in info.value.__notes__[0]


async def test_deadline_at_tightens_policy_deadline() -> None:
    ft = FakeTime()
    p = policy(ft, attempts=1000, deadline=100.0, initial=1.0, max_backoff=1.0, jitter="none")
    with pytest.raises(Transient):
        await retry_call(failing(10_000), policy=p, decide=decide, deadline_at=ft.now + 3.5)
    assert len(ft.sleeps) == 3


async def test_budget_refuses_retries_but_never_first_attempts() -> None:
    ft = FakeTime()
    budget = RetryBudget(max_tokens=2, token_ratio=0.0, per_second=0.0, clock=ft.clock)
    rec = Recorder()
    with pytest.raises(Transient) as info:
        await retry_call(failing(100), policy=policy(ft), decide=decide, budget=budget, hooks=rec)
    assert rec.stats[0].attempts == 3  # two retries allowed by the two tokens
    assert rec.stats[0].stop_reason == "budget"
    assert "RetryBudget" in info.value.__notes__[0]
    # The budget is empty now: a new call still makes its first attempt.
    fn = failing(1)
    with pytest.raises(Transient):
        await retry_call(fn, policy=policy(ft), decide=decide, budget=budget)
    assert fn.calls["n"] == 1
    assert await retry_call(failing(0), policy=policy(ft), decide=decide, budget=budget) == "ok"
    stats = budget.statistics()
    assert (stats.withdrawn, stats.refused, stats.deposited) == (2, 2, 1)


async def test_sleeping_retries_count_against_budget() -> None:
    budget = RetryBudget(max_tokens=3, token_ratio=0.0, per_second=0.0)
    asleep = anyio.Event()
    release = anyio.Event()
    n = {"i": 0}

    async def slow_sleep(seconds: float) -> None:
        n["i"] += 1
        if n["i"] == 3:
            asleep.set()
        await release.wait()

    p = RetryPolicy(sleep=slow_sleep, attempts=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(
                    _swallow, retry_call(failing(1), policy=p, decide=decide, budget=budget)
                )
            await asleep.wait()
            assert budget.tokens == 0.0  # three sleeping retries hold all three tokens
            release.set()


async def _swallow(aw: Any) -> None:
    await aw


async def test_cancellation_propagates_at_once_and_is_not_retried() -> None:
    calls = {"n": 0}

    async def fn() -> None:
        calls["n"] += 1
        raise asyncio.CancelledError

    rec = Recorder()
    with pytest.raises(asyncio.CancelledError):
        await retry_call(fn, policy=RetryPolicy(), decide=lambda e: RetryDecision(), hooks=rec)
    assert calls["n"] == 1
    assert rec.stats[0].stop_reason == "cancelled"


async def test_cancel_during_backoff_sleep() -> None:
    rec = Recorder()
    p = RetryPolicy(initial=60.0, max_backoff=60.0, jitter="none", deadline=None)
    with anyio.move_on_after(0.05) as scope:
        await retry_call(failing(5), policy=p, decide=decide, hooks=rec)
    assert scope.cancelled_caught
    assert rec.stats[0].stop_reason == "cancelled"
    assert rec.stats[0].attempts == 2  # the second attempt never ran


async def test_concurrent_calls_have_separate_statistics() -> None:
    ft = FakeTime()
    results: dict[int, RetryStatistics] = {}

    async def one(i: int) -> None:
        rec = Recorder()
        await retry_call(failing(i), policy=policy(ft, attempts=10), decide=decide, hooks=rec)
        results[i] = rec.stats[0]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
    assert {i: s.attempts for i, s in results.items()} == {i: i + 1 for i in range(6)}


async def test_per_category_and_retry_after_hint() -> None:
    ft = FakeTime()
    seen: list[RetryEvent] = []

    class H(RetryHooks):
        def on_retry(self, event: RetryEvent) -> None:
            seen.append(event)

    hint = {"v": 7.0}

    def decide_hint(exc: BaseException) -> RetryDecision:
        return RetryDecision(category="serialization", retry_after=hint["v"])

    p = policy(ft, max_retry_after=2.0)
    await retry_call(failing(1), policy=p, decide=decide_hint, hooks=H())
    assert seen[0].sleep == 2.0  # hint 7 s clamped to max_retry_after
    hint["v"] = 0.0
    seen.clear()
    await retry_call(failing(3), policy=p, decide=decide_hint, hooks=H())
    assert all(0.0 <= e.sleep <= 0.05 for e in seen)  # serialization waits milliseconds


def test_backoff_categories_defaults() -> None:
    p = RetryPolicy(jitter="none")
    assert p.backoff(1, category="serialization") == pytest.approx(0.002)
    assert p.backoff(1, category="connect_failed") == pytest.approx(0.25)
    assert p.backoff(1, category="unknown") == pytest.approx(0.05)
    assert p.backoff(3) == pytest.approx(0.2)
    assert p.backoff(10_000) == 5.0
    custom = RetryPolicy(
        jitter="none", per_category={"x": CategoryBackoff(initial=1, max_backoff=3)}
    )
    assert custom.backoff(5, category="x") == 3.0
    assert custom.backoff(1, category="serialization") == pytest.approx(0.05)  # replaced


async def test_testing_switch_removes_sleeps_and_caps_attempts() -> None:
    ft = FakeTime()
    assert not is_testing()
    with set_testing(True, attempts=3):
        assert is_testing()
        fn = failing(100)
        with pytest.raises(Transient):
            await retry_call(fn, policy=policy(ft, attempts=10), decide=decide)
        assert fn.calls["n"] == 3
        assert ft.sleeps == []
        with set_testing(True, attempts=3, cap=True):
            fn = failing(100)
            with pytest.raises(Transient):
                await retry_call(fn, policy=policy(ft, attempts=2), decide=decide)
            assert fn.calls["n"] == 2
        assert is_testing()
    assert not is_testing()
    restore = set_testing(True)
    try:
        fn = failing(100)
        with pytest.raises(Transient):
            await retry_call(fn, policy=policy(ft), decide=decide)
        assert fn.calls["n"] == 1
    finally:
        set_testing(False)
    del restore


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"attempts": 0}, "attempts=0"),
        ({"attempts": 2.5}, "attempts=2.5"),
        ({"attempts": True}, "attempts=True"),
        ({"deadline": 0}, "deadline=0"),
        ({"deadline": math.inf}, "deadline=inf"),
        ({"initial": -1}, "initial=-1"),
        ({"initial": 2.0, "max_backoff": 1.0}, "max_backoff=1.0"),
        ({"multiplier": 0.5}, "multiplier=0.5"),
        ({"jitter": "equal"}, "jitter='equal'"),
        ({"per_category": {"x": 1.0}}, "per_category"),
        ({"max_retry_after": math.nan}, "max_retry_after=nan"),
        ({"clock": 3}, "clock=3"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy") as info:
        RetryPolicy(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_other_validation() -> None:
    with pytest.raises(ConfigurationError, match="CategoryBackoff"):
        CategoryBackoff(initial=1.0, max_backoff=0.5)
    with pytest.raises(ConfigurationError, match="attempt"):
        RetryPolicy().backoff(0)
    with pytest.raises(ConfigurationError, match="set_testing"):
        set_testing(True, attempts=0)
    with pytest.raises(ConfigurationError, match="max_tokens"):
        RetryBudget(max_tokens=0.5)


def test_policy_is_frozen_and_per_category_is_read_only() -> None:
    p = RetryPolicy(per_category={"x": CategoryBackoff(initial=0.0, max_backoff=0.0)})
    with pytest.raises(AttributeError):
        p.attempts = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.per_category["y"] = CategoryBackoff(initial=0.0, max_backoff=0.0)  # type: ignore[index]


# --- hypothesis -----------------------------------------------------------------------

positive = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(
    attempt=st.integers(min_value=1, max_value=10**9),
    initial=positive,
    extra=positive,
    multiplier=st.floats(min_value=1.0, max_value=1e6),
    jitter=st.sampled_from(["full", "decorrelated", "none"]),
    r=unit,
    previous=st.none() | st.floats(min_value=0.0, allow_nan=False),
    hint=st.none() | st.floats(allow_nan=True),
    max_retry_after=positive,
)
def test_backoff_stays_in_bounds(
    attempt: int,
    initial: float,
    extra: float,
    multiplier: float,
    jitter: Any,
    r: float,
    previous: float | None,
    hint: float | None,
    max_retry_after: float,
) -> None:
    cap = initial + extra
    p = RetryPolicy(
        initial=initial, max_backoff=cap, multiplier=multiplier, jitter=jitter,
        random=lambda: r, max_retry_after=max_retry_after, per_category={},
    )  # fmt: skip
    wait = p.backoff(attempt, previous=previous, retry_after=hint)
    assert math.isfinite(wait)
    assert wait >= 0.0
    assert wait <= max(cap, max_retry_after)
    if hint is None or not hint > 0:
        assert wait <= cap
        if jitter == "none" and attempt <= 3000:
            expected = initial
            for _ in range(attempt - 1):
                if expected >= cap:
                    break
                expected = min(cap, expected * multiplier)
            assert wait == pytest.approx(expected, rel=1e-6)
    else:
        assert wait >= min(hint, max_retry_after)
    assert p.backoff(10_000) <= cap


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    deadline=st.floats(min_value=0.01, max_value=100.0),
    attempts=st.integers(min_value=1, max_value=50),
    initial=st.floats(min_value=0.0, max_value=10.0),
    jitter=st.sampled_from(["full", "decorrelated", "none"]),
    durations=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=50),
    hint=st.none() | st.floats(min_value=0.0, max_value=20.0),
    outer=st.none() | st.floats(min_value=0.0, max_value=100.0),
)
def test_total_sleeping_never_passes_the_deadline(
    deadline: float,
    attempts: int,
    initial: float,
    jitter: Any,
    durations: list[float],
    hint: float | None,
    outer: float | None,
) -> None:
    ft = FakeTime()
    start = ft.now
    limit = start + deadline if outer is None else min(start + deadline, start + outer)
    p = RetryPolicy(
        attempts=attempts, deadline=deadline, initial=initial, max_backoff=initial * 4,
        jitter=jitter, clock=ft.clock, sleep=ft.sleep,
    )  # fmt: skip
    n = {"i": 0}

    async def fn() -> None:
        ft.now += durations[n["i"] % len(durations)]  # the attempt takes time
        n["i"] += 1
        raise Transient

    async def main() -> None:
        with pytest.raises(Transient):
            await retry_call(
                fn, policy=p, decide=lambda e: RetryDecision(retry_after=hint),
                deadline_at=None if outer is None else start + outer,
            )  # fmt: skip

    anyio.run(main)
    assert n["i"] <= attempts
    for began, seconds in ft.sleeps:
        assert began + seconds <= limit + 1e-9
    assert sum(s for _, s in ft.sleeps) <= deadline + 1e-9
