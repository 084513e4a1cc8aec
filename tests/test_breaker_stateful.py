"""Stateful hypothesis test: CircuitBreaker against a small reference model (fake clock)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resilient_db import BreakerPermit, CircuitBreaker, CircuitOpenError

WINDOW, BUCKETS, MIN_CALLS, RATE = 4.0, 4, 6, 0.5
SLOW, SLOW_RATE = 1.0, 0.75
OPEN_FOR, OPEN_MAX, GROWTH, PERMITS, HO_WAIT = 1.0, 4.0, 2.0, 2, 3.0
STREAK = 3  # consecutive failures that trip whatever the window holds


@dataclass
class Held:
    permit: BreakerPermit
    half_open: bool
    period: int  # model's transition counter at acquire time


class Model:
    """The specification, written as plainly as possible (lists, no buckets arithmetic)."""

    def __init__(self) -> None:
        self.state = "closed"
        self.records: list[tuple[int, bool, bool]] = []  # (bucket epoch, failed, slow)
        self.period = 0
        self.base = OPEN_FOR
        self.open_until = 0.0
        self.ho_since = 0.0
        self.in_flight = 0
        self.successes = 0
        self.streak = 0

    def window(self, now: float) -> list[tuple[int, bool, bool]]:
        epoch = math.floor(now / (WINDOW / BUCKETS))
        return [r for r in self.records if r[0] > epoch - BUCKETS]

    def go(self, state: str, now: float) -> None:
        self.period += 1
        self.in_flight = self.successes = self.streak = 0
        if state == "open":
            duration = min(OPEN_MAX, self.base)
            self.base = min(OPEN_MAX, self.base * GROWTH)
            self.open_until = now + duration
        elif state == "half_open":
            self.ho_since = now
        elif state == "closed":
            self.base = OPEN_FOR
        if state in ("closed", "disabled", "metrics_only"):
            self.records = []
        self.state = state

    def acquire(self, now: float) -> bool | None:
        """True: half-open permit; False: shared permit; None: rejected."""
        if self.state in ("closed", "disabled", "metrics_only"):
            return False
        if self.state == "forced_open":
            return None
        if self.state == "open":
            if now < self.open_until:
                return None
            self.go("half_open", now)
        if now - self.ho_since >= HO_WAIT:
            self.go("open", now)
            return None
        if self.in_flight + self.successes < PERMITS:
            self.in_flight += 1
            return True
        return None

    def report(self, held: Held, outcome: str, duration: float, now: float) -> None:
        if held.period != self.period:
            return
        slow = duration >= SLOW
        if held.half_open:
            self.in_flight -= 1
            if outcome == "failure" or (outcome == "success" and slow):
                self.go("open", now)
            elif outcome == "success":
                self.successes += 1
                if self.successes >= PERMITS:
                    self.go("closed", now)
            return
        if outcome == "ignore" or self.state == "disabled":
            return
        epoch = math.floor(now / (WINDOW / BUCKETS))
        self.records.append((epoch, outcome == "failure", slow))
        self.streak = self.streak + 1 if outcome == "failure" else 0
        window = self.window(now)
        calls = len(window)
        fails = sum(1 for r in window if r[1])
        slows = sum(1 for r in window if r[2])
        if self.state == "closed" and (
            (calls >= MIN_CALLS and (fails >= RATE * calls or slows >= SLOW_RATE * calls))
            or self.streak >= STREAK
        ):
            self.go("open", now)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 50.0
        self.breaker = CircuitBreaker(
            "model",
            window=WINDOW,
            buckets=BUCKETS,
            minimum_calls=MIN_CALLS,
            failure_rate=RATE,
            consecutive_failures=STREAK,
            slow_call_duration=SLOW,
            slow_call_rate=SLOW_RATE,
            half_open_permits=PERMITS,
            open_for=OPEN_FOR,
            open_for_max=OPEN_MAX,
            open_growth=GROWTH,
            open_jitter=0.0,
            max_half_open_wait=HO_WAIT,
            clock=lambda: self.now,
        )
        self.model = Model()
        self.held: list[Held] = []

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.5, 3.0, 5.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def acquire(self) -> None:
        expected = self.model.acquire(self.now)
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError:
            assert expected is None
            return
        assert expected is not None
        self.held.append(Held(permit, expected, self.model.period))

    @precondition(lambda self: bool(self.held))
    @rule(
        index=st.integers(min_value=0),
        outcome=st.sampled_from(["success", "failure", "ignore"]),
        duration=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    )
    def report(self, index: int, outcome: str, duration: float) -> None:
        held = self.held.pop(index % len(self.held))
        self.model.report(held, outcome, duration, self.now)
        if outcome == "success":
            held.permit.success(duration)
        elif outcome == "failure":
            held.permit.failure(duration)
        else:
            held.permit.ignore()

    @rule(action=st.sampled_from(["reset", "force_open", "disable", "metrics_only"]))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        self.model.go(
            {"reset": "closed", "force_open": "forced_open", "disable": "disabled"}.get(
                action, action
            ),
            self.now,
        )

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state.value == self.model.state
        stats = self.breaker.statistics()
        if self.model.state in ("closed", "metrics_only"):
            window = self.model.window(self.now)
            assert stats.calls == len(window)
            assert stats.failures == sum(1 for r in window if r[1])
            assert stats.slow_calls == sum(1 for r in window if r[2])
        if self.model.state == "half_open":
            assert stats.half_open_in_flight == self.model.in_flight


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestBreakerAgainstModel = BreakerMachine.TestCase
