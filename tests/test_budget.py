"""RetryBudget: paid and free retries (fake clock)."""

from __future__ import annotations

import pytest

from resilient_db import ConfigurationError, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paid_retries_are_bounded_then_refill() -> None:
    clock = Clock()
    budget = RetryBudget(max_tokens=5, token_ratio=0.5, per_second=2, clock=clock)
    assert [budget.withdraw("connect_failed") for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.5  # one token per 0.5 s
    assert budget.withdraw("timeout")
    assert not budget.withdraw("timeout")
    budget.deposit()
    budget.deposit()  # two successes: one token
    assert budget.withdraw()
    stats = budget.statistics()
    assert (stats.withdrawn, stats.refused, stats.deposited, stats.free) == (7, 2, 2, 0)


def test_lost_connections_retry_for_free_even_when_the_bucket_is_empty() -> None:
    clock = Clock()
    budget = RetryBudget(max_tokens=1, per_second=0, token_ratio=0, clock=clock)
    assert budget.withdraw("connect_failed")
    assert not budget.withdraw("connect_failed")  # empty: an outage stays bounded
    assert all(budget.withdraw("connection_lost") for _ in range(1000))
    assert not budget.withdraw("server_unavailable")
    assert not budget.withdraw(None)
    stats = budget.statistics()
    assert stats.free == 1000
    assert stats.tokens == 0.0


def test_free_categories_are_configurable() -> None:
    budget = RetryBudget(max_tokens=1, per_second=0, free_categories=frozenset())
    assert budget.withdraw("connection_lost")
    assert not budget.withdraw("connection_lost")  # Finagle's rule: every retry pays
    custom = RetryBudget(max_tokens=1, per_second=0, free_categories={"serialization"})
    assert custom.free_categories == frozenset({"serialization"})
    assert all(custom.withdraw("serialization") for _ in range(10))


@pytest.mark.parametrize("bad", ["connection_lost", 42, [1, 2]])
def test_bad_free_categories(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="free_categories"):
        RetryBudget(free_categories=bad)  # type: ignore[arg-type]
