"""The tenacity strategies that apply a :class:`RetryPolicy` (public ``stop_base`` /
``wait_base`` subclasses; composed by :class:`~resilient_db.policies._retry.RetryLoop`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from resilient_db.policies._budget import RetryBudget
from resilient_db.policies._retry_policy import RetryDecision, RetryPolicy, StopReason

__all__ = [
    "Failed",
    "Labelled",
    "PolicyWait",
    "Run",
    "StopAtCategoryCap",
    "StopBeforeDeadline",
    "StopWithoutBudget",
    "checkpoint",
    "failed_attempt",
    "give_up",
]


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed attempt as tenacity sees it: a result, never an exception thrown through."""

    error: Exception
    decision: RetryDecision


class Run:
    """Mutable per-call state of one retrying call (never shared between calls)."""

    __slots__ = ("failures", "previous", "reason", "total_sleep")

    def __init__(self) -> None:
        self.failures: dict[str | None, int] = {}
        self.previous: float | None = None
        self.reason: StopReason = "attempts"
        self.total_sleep = 0.0


def failed_attempt(rs: RetryCallState) -> Failed:
    outcome = rs.outcome
    assert outcome is not None
    failed = outcome.result()
    assert isinstance(failed, Failed)
    return failed


class Labelled(stop_base):
    """A stop strategy that records why it stopped."""

    def __init__(self, inner: stop_base, reason: StopReason, run: Run) -> None:
        self.inner, self.reason, self.run = inner, reason, run

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.inner(retry_state):
            self.run.reason = self.reason
            return True
        return False


class StopAtCategoryCap(stop_base):
    """Stop when a category's failures in this call exceed its ``max_retries`` cap."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self, retry_state: RetryCallState) -> bool:
        decision = failed_attempt(retry_state).decision
        failures = self.run.failures
        seen = failures[decision.category] = failures.get(decision.category, 0) + 1
        return decision.max_retries is not None and seen > decision.max_retries


class StopBeforeDeadline(stop_base):
    """Stop when the upcoming sleep would end after ``limit`` (on ``clock``)."""

    def __init__(self, clock: Callable[[], float], limit: float) -> None:
        self.clock, self.limit = clock, limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep > self.limit


class StopWithoutBudget(stop_base):
    """Stop when the shared budget refuses a token (asked last: it spends one). The
    failure's category goes along: the budget lets some categories retry for free."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.budget.withdraw(failed_attempt(retry_state).decision.category)


class PolicyWait(wait_base):
    """The policy's backoff for the failed attempt's category and ``retry_after`` hint."""

    def __init__(self, policy: RetryPolicy, run: Run, testing: bool) -> None:
        self.policy, self.run, self.testing = policy, run, testing

    def __call__(self, retry_state: RetryCallState) -> float:
        if self.testing:
            return 0.0
        decision = failed_attempt(retry_state).decision
        return self.policy.backoff(
            retry_state.attempt_number,
            category=decision.category,
            previous=self.run.previous,
            retry_after=decision.retry_after,
        )


def give_up(rs: RetryCallState) -> None:
    return None  # ends the iteration (StopAsyncIteration); the loop re-raises the original


async def checkpoint(seconds: float) -> None:
    await asyncio.sleep(0)
