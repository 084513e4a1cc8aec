"""RetryBudget: per-engine retry-storm control (a token bucket).

Formula (a gRPC-style token bucket with Finagle's per-second floor):

* the bucket holds at most ``max_tokens`` tokens and starts full;
* every success deposits ``token_ratio`` tokens (``deposit()``);
* the bucket also refills continuously at ``per_second`` tokens per second;
* scheduling a retry withdraws one whole token (``withdraw()``); with less than one token
  left the retry is refused and the caller re-raises its last error. A refused withdrawal
  takes nothing, so the bucket never drains below zero.

Hence over any interval of ``T`` seconds with ``S`` successes the number of retries is at
most ``max_tokens + token_ratio * S + per_second * T``: a burst of ``max_tokens`` retries,
then at most 10 % extra load (default ratio) plus a small floor, so a total outage does
not multiply the load on the database. First attempts never touch the budget. A retry
withdraws its token when it is *scheduled*, so retries that are sleeping already count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from resilient_db._errors import ConfigurationError
from resilient_db.policies._clock import Clock, default_clock

__all__ = ["BudgetStatistics", "RetryBudget"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetStatistics:
    """A snapshot of a :class:`RetryBudget`."""

    #: Tokens available now (one retry costs one token).
    tokens: float
    #: Capacity of the bucket.
    max_tokens: float
    #: Retries allowed so far.
    withdrawn: int
    #: Retries refused so far.
    refused: int
    #: Successes deposited so far.
    deposited: int


def _check_number(option: str, value: object, *, low: float, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"RetryBudget({option}=...) must be a number >= {low}, got {value!r}; {fix}"
        )
    if not math.isfinite(value) or value < low:
        raise ConfigurationError(
            f"RetryBudget({option}={value!r}) must be a finite number >= {low}; {fix}"
        )
    return float(value)


class RetryBudget:
    """Limits retries across all calls sharing it (create one per engine).

    ``max_tokens`` (default 50, >= 1) is the burst of retries allowed after a quiet period;
    ``token_ratio`` (default 0.1, >= 0) tokens are earned per success; ``per_second``
    (default 10, >= 0) tokens are earned per second regardless of traffic. Intended for use
    from one event loop (all operations are synchronous, so no lock is needed there).
    """

    __slots__ = (
        "_clock",
        "_deposited",
        "_last",
        "_refused",
        "_tokens",
        "_withdrawn",
        "max_tokens",
        "per_second",
        "token_ratio",
    )

    def __init__(
        self,
        *,
        max_tokens: float = 50.0,
        token_ratio: float = 0.1,
        per_second: float = 10.0,
        clock: Clock = default_clock,
    ) -> None:
        self.max_tokens = _check_number(
            "max_tokens", max_tokens, low=1.0, fix="use e.g. max_tokens=50 (one token per retry)"
        )
        self.token_ratio = _check_number(
            "token_ratio", token_ratio, low=0.0, fix="use e.g. token_ratio=0.1 (10 % extra load)"
        )
        self.per_second = _check_number(
            "per_second", per_second, low=0.0, fix="use e.g. per_second=10, or 0 to disable"
        )
        if not callable(clock):
            raise ConfigurationError(
                f"RetryBudget(clock=...) must be a callable returning seconds, got {clock!r}; "
                "pass time.monotonic or a fake clock"
            )
        self._clock = clock
        self._tokens = self.max_tokens
        self._last = clock()
        self._withdrawn = 0
        self._refused = 0
        self._deposited = 0

    def _refill(self) -> float:
        tokens = self._tokens
        if self.per_second:
            now = self._clock()
            elapsed = now - self._last
            self._last = now
            if elapsed > 0.0:
                tokens = min(self.max_tokens, tokens + elapsed * self.per_second)
                self._tokens = tokens
        return tokens

    def withdraw(self) -> bool:
        """Ask for one retry: True (and one token is taken) or False (retry refused)."""
        if self._refill() >= 1.0:
            self._tokens -= 1.0
            self._withdrawn += 1
            return True
        self._refused += 1
        return False

    def deposit(self) -> None:
        """Record a success: earns ``token_ratio`` tokens (up to ``max_tokens``)."""
        self._deposited += 1
        tokens = self._tokens + self.token_ratio
        self._tokens = tokens if tokens < self.max_tokens else self.max_tokens

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        return self._refill()

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot of the budget."""
        return BudgetStatistics(
            tokens=self._refill(),
            max_tokens=self.max_tokens,
            withdrawn=self._withdrawn,
            refused=self._refused,
            deposited=self._deposited,
        )

    def __repr__(self) -> str:
        return (
            f"RetryBudget(max_tokens={self.max_tokens}, token_ratio={self.token_ratio}, "
            f"per_second={self.per_second}, tokens={self._tokens:.2f})"
        )
