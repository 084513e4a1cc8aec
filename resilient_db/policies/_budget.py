"""RetryBudget: per-engine retry-storm control (a token bucket).

Formula (a gRPC-style token bucket with Finagle's per-second floor):

* the bucket holds at most ``max_tokens`` tokens and starts full;
* every success deposits ``token_ratio`` tokens (``deposit()``);
* the bucket also refills continuously at ``per_second`` tokens per second;
* scheduling a retry withdraws one whole token (``withdraw()``); with less than one token
  left the retry is refused and the caller re-raises its last error. A refused withdrawal
  takes nothing, so the bucket never drains below zero.

Hence over any interval of ``T`` seconds with ``S`` successes the number of *paid*
retries is at most ``max_tokens + token_ratio * S + per_second * T``: a burst of
``max_tokens`` retries, then at most 10 % extra load (default ratio) plus a small floor, so
a total outage does not multiply the load on the database. First attempts never touch the
budget. A retry withdraws its token when it is *scheduled*, so retries that are sleeping
already count.

**Which retries pay** (``withdraw(category)``): a budget bounds *amplification*, i.e. extra
load on a server that is struggling, not *recovery* from churn on a healthy one. A retry
whose failure was the loss of an already-accepted connection (category ``connection_lost``:
a killed backend, an idle timeout, a pool-wide invalidation, a pooler restart) is free: the
failure was the old connection's, and the retry costs one new connection. If the server is
really down that new connection fails with ``connect_failed`` (or ``timeout``,
``server_unavailable``...), and *that* retry pays, so an outage stays bounded; per unit the
retry policy's ``attempts`` bounds a run of free retries. Every other category pays:
``connect_failed``, ``timeout``, ``server_unavailable``, ``overload``, ``failover``,
``serialization``, ``deadlock``, ``lock_timeout``... (contention and overload are exactly
what retries amplify). ``free_categories`` changes the set; ``frozenset()`` makes every
retry pay (Finagle's rule). A withdrawal without a category always pays.

Compared with the usual budgets (all per client/process, as this one): Finagle's
``RetryBudget`` (deposit ratio 0.2 per request, 10 retries/s floor, every retry pays),
gRPC's retry throttling (``maxTokens``/``tokenRatio``: failures take a token, successes
give ``tokenRatio``; retries stop below half the bucket) and Envoy's ``retry_budget``
(a percentage of active requests, minimum concurrency). This one is Finagle's shape with
gRPC's ratio, plus the rule above: churn on a healthy server is not what they meant to
throttle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from resilient_db._validate import check_callable, config_error
from resilient_db.policies._clock import Clock, default_clock

__all__ = ["DEFAULT_FREE_CATEGORIES", "BudgetStatistics", "RetryBudget"]

#: Retries of these failure categories take no token (see the module documentation).
DEFAULT_FREE_CATEGORIES: frozenset[str] = frozenset({"connection_lost"})


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
    #: Retries allowed without a token (``free_categories``).
    free: int = 0


def _check_number(option: str, value: object, *, low: float, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise config_error(
            "RetryBudget",
            option,
            value,
            f"a number >= {low}",
            fix.removeprefix("use "),
            wrong_type=True,
        )
    if not math.isfinite(value) or value < low:
        raise config_error(
            "RetryBudget", option, value, f"a finite number >= {low}", fix.removeprefix("use ")
        )
    return float(value)


def _check_categories(value: object) -> frozenset[str]:
    items: tuple[object, ...] = ()
    ok = not isinstance(value, str) and isinstance(value, Iterable)
    if ok:
        items = tuple(value)  # type: ignore[arg-type]
        ok = all(isinstance(c, str) for c in items)
    if not ok:
        raise config_error(
            "RetryBudget",
            "free_categories",
            value,
            "an iterable of category names (str)",
            "pass e.g. free_categories={'connection_lost'}, or frozenset() to make every retry pay",
            wrong_type=True,
        )
    return frozenset(str(c) for c in items)


class RetryBudget:
    """Limits retries across all calls sharing it (create one per engine).

    ``max_tokens`` (default 50, >= 1) is the burst of retries allowed after a quiet period;
    ``token_ratio`` (default 0.1, >= 0) tokens are earned per success; ``per_second``
    (default 10, >= 0) tokens are earned per second regardless of traffic;
    ``free_categories`` (default ``{"connection_lost"}``) are the failure categories whose
    retries cost nothing (see the module documentation). Intended for use from one event
    loop (all operations are synchronous, so no lock is needed there).
    """

    __slots__ = (
        "_clock",
        "_deposited",
        "_free",
        "_last",
        "_refused",
        "_tokens",
        "_withdrawn",
        "free_categories",
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
        free_categories: Iterable[str] = DEFAULT_FREE_CATEGORIES,
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
        self.free_categories = _check_categories(free_categories)
        check_callable(
            "RetryBudget", "clock", clock, fix="pass time.monotonic or a fake clock (seconds)"
        )
        self._clock = clock
        self._tokens = self.max_tokens
        self._last = clock()
        self._withdrawn = 0
        self._refused = 0
        self._deposited = 0
        self._free = 0

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

    def withdraw(self, category: str | None = None) -> bool:
        """Ask for one retry: True (and one token is taken) or False (retry refused).

        ``category`` is the failure's category (``Classification.category``): a retry of a
        category in ``free_categories`` is always allowed and takes no token.
        """
        if category is not None and category in self.free_categories:
            self._free += 1
            return True
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
            free=self._free,
        )

    def __repr__(self) -> str:
        return (
            f"RetryBudget(max_tokens={self.max_tokens}, token_ratio={self.token_ratio}, "
            f"per_second={self.per_second}, tokens={self._tokens:.2f})"
        )
