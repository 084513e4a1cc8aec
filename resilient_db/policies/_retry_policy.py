"""RetryPolicy: how a failed unit of work backs off, and the values a retrying call reports.

Configuration only (validation, the backoff formula, the decision/event/statistics
records); the tenacity-driven runner that applies a policy lives in ``_retry``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Final, Literal, Protocol

from resilient_db._errors import ConfigurationError
from resilient_db._validate import config_error
from resilient_db.policies._clock import (
    Clock,
    RandomSource,
    Sleep,
    default_clock,
    default_random,
    default_sleep,
)

__all__ = [
    "DEFAULT_PER_CATEGORY",
    "CategoryBackoff",
    "Jitter",
    "RetryDecision",
    "RetryEvent",
    "RetryHooks",
    "RetryPolicy",
    "RetryStatistics",
    "StopReason",
    "is_testing",
    "set_testing",
]

Jitter = Literal["full", "decorrelated", "none"]
#: Why a call ended: it succeeded, the error was not retryable, or retrying stopped because
#: the attempts were used up, the next sleep would cross the deadline, the budget refused,
#: or the call was cancelled (any non-``Exception``).
StopReason = Literal["success", "not_retryable", "attempts", "deadline", "budget", "cancelled"]

_JITTERS: Final = ("full", "decorrelated", "none")


def _bad(owner: str, option: str, value: object, allowed: str, fix: str) -> ConfigurationError:
    """The house format (``resilient_db._validate``): "Owner(option=value) must be …; fix: …"."""
    return config_error(owner, option, value, allowed.removeprefix("must be "), fix)


def _finite(
    owner: str, option: str, value: object, *, low: float, strict: bool = False, fix: str
) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
    )
    if not ok:
        rel = ">" if strict else ">="
        raise _bad(owner, option, value, f"must be a finite number {rel} {low}", fix)


@dataclass(frozen=True, kw_only=True, slots=True)
class CategoryBackoff:
    """Backoff override for one error category (e.g. ``"serialization"``).

    ``initial`` is the first backoff ceiling, ``max_backoff`` the largest; ``multiplier``
    ``None`` means "use the policy's". Jitter is always the policy's.
    """

    initial: float
    max_backoff: float
    multiplier: float | None = None

    def __post_init__(self) -> None:
        _finite("CategoryBackoff", "initial", self.initial, low=0.0, fix="use e.g. 0.005")
        _finite("CategoryBackoff", "max_backoff", self.max_backoff, low=0.0, fix="use e.g. 1.0")
        if self.max_backoff < self.initial:
            raise _bad(
                "CategoryBackoff",
                "max_backoff",
                self.max_backoff,
                f"must be >= initial ({self.initial})",
                "raise max_backoff or lower initial",
            )
        if self.multiplier is not None:
            _finite("CategoryBackoff", "multiplier", self.multiplier, low=1.0, fix="use e.g. 2.0")


#: Default per-category backoffs: conflicts wait milliseconds, lock timeouts a little
#: longer, lost connections and an unreachable or starting server much longer.
DEFAULT_PER_CATEGORY: Final[Mapping[str, CategoryBackoff]] = MappingProxyType(
    {
        "serialization": CategoryBackoff(initial=0.002, max_backoff=0.05),
        "deadlock": CategoryBackoff(initial=0.005, max_backoff=0.1),
        "lock_timeout": CategoryBackoff(initial=0.05, max_backoff=1.0),
        "stale_cache": CategoryBackoff(initial=0.0, max_backoff=0.0),
        "connection_lost": CategoryBackoff(initial=0.1, max_backoff=5.0),
        "connect_failed": CategoryBackoff(initial=0.25, max_backoff=5.0),
        "server_unavailable": CategoryBackoff(initial=0.5, max_backoff=10.0),
        "overload": CategoryBackoff(initial=0.25, max_backoff=10.0),
        "failover": CategoryBackoff(initial=0.5, max_backoff=10.0),
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How a failed unit of work is retried.

    * ``attempts`` (>= 1): total attempts including the first.
    * ``deadline`` (seconds > 0, or ``None``): covers every attempt and sleep; a sleep that
      would end after it is never started.
    * ``initial``, ``multiplier``, ``max_backoff``: attempt ``n`` (1-based, the one that
      just failed) backs off up to ``min(max_backoff, initial * multiplier ** (n - 1))``.
    * ``jitter``: ``"full"`` (uniform in ``[0, ceiling]``, the default),
      ``"decorrelated"`` (uniform in ``[initial, 3 * previous]``, capped) or ``"none"``.
    * ``per_category``: :class:`CategoryBackoff` overrides by error category (see
      :data:`DEFAULT_PER_CATEGORY`); an unknown category uses the policy's own values.
    * ``max_retry_after``: a server or breaker ``retry_after`` hint is honoured (the wait
      is at least the hint) but clamped to this many seconds.
    * ``clock``, ``sleep``, ``random``: injectable for tests.
    """

    attempts: int = 5
    deadline: float | None = 30.0
    initial: float = 0.05
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    per_category: Mapping[str, CategoryBackoff] = field(
        default_factory=lambda: DEFAULT_PER_CATEGORY, hash=False
    )
    max_retry_after: float = 30.0
    clock: Clock = default_clock
    sleep: Sleep = default_sleep
    random: RandomSource = default_random

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_parts()

    def _check_numbers(self) -> None:
        o = "RetryPolicy"
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise _bad(o, "attempts", self.attempts, "must be an int >= 1", "use e.g. 5")
        if self.attempts < 1:
            raise _bad(o, "attempts", self.attempts, "must be >= 1 (1 = no retries)", "use e.g. 5")
        if self.deadline is not None:
            _finite(
                o,
                "deadline",
                self.deadline,
                low=0.0,
                strict=True,
                fix="use seconds such as 30.0, or None for no deadline",
            )
        _finite(o, "initial", self.initial, low=0.0, fix="use e.g. 0.05 (seconds)")
        _finite(o, "max_backoff", self.max_backoff, low=0.0, fix="use e.g. 5.0 (seconds)")
        if self.max_backoff < self.initial:
            raise _bad(
                o,
                "max_backoff",
                self.max_backoff,
                f"must be >= initial ({self.initial})",
                "raise max_backoff or lower initial",
            )
        _finite(o, "multiplier", self.multiplier, low=1.0, fix="use e.g. 2.0")
        _finite(o, "max_retry_after", self.max_retry_after, low=0.0, fix="use e.g. 30.0")

    def _check_parts(self) -> None:
        o = "RetryPolicy"
        if self.jitter not in _JITTERS:
            raise _bad(
                o,
                "jitter",
                self.jitter,
                "must be 'full', 'decorrelated' or 'none'",
                "use jitter='full' (recommended)",
            )
        if not isinstance(self.per_category, Mapping):
            raise _bad(
                o,
                "per_category",
                self.per_category,
                "must be a mapping of category name to CategoryBackoff",
                "pass e.g. {'serialization': CategoryBackoff(initial=0.002, max_backoff=0.05)}",
            )
        for key, value in self.per_category.items():
            if not isinstance(key, str) or not isinstance(value, CategoryBackoff):
                raise _bad(
                    o,
                    "per_category",
                    {key: value},
                    "must be category names (str) mapped to CategoryBackoff objects",
                    "wrap the numbers: CategoryBackoff(initial=..., max_backoff=...)",
                )
        if self.per_category is not DEFAULT_PER_CATEGORY:
            object.__setattr__(self, "per_category", MappingProxyType(dict(self.per_category)))
        for option in ("clock", "sleep", "random"):
            if not callable(getattr(self, option)):
                raise _bad(
                    o,
                    option,
                    getattr(self, option),
                    "must be callable",
                    "pass a function (see the resilient_db.policies._clock protocols) "
                    "or leave the default",
                )

    def backoff(
        self,
        attempt: int,
        *,
        category: str | None = None,
        previous: float | None = None,
        retry_after: float | None = None,
    ) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed.

        ``previous`` is the previous wait (used by decorrelated jitter); ``retry_after`` a
        hint from the server or a breaker: the result is at least
        ``min(retry_after, max_retry_after)``. Always finite and >= 0, for any attempt.
        """
        if attempt < 1:
            raise config_error(
                "RetryPolicy.backoff",
                "attempt",
                attempt,
                ">= 1 (attempts are numbered from 1: the attempt that just failed)",
                "pass attempt >= 1",
            )
        initial, cap, mult = self.initial, self.max_backoff, self.multiplier
        if category is not None:
            override = self.per_category.get(category)
            if override is not None:
                initial, cap = override.initial, override.max_backoff
                if override.multiplier is not None:
                    mult = override.multiplier
        jitter = self.jitter
        if jitter == "decorrelated":
            prev = initial if previous is None or not previous > initial else min(previous, cap)
            high = max(initial, prev * 3.0)
            wait = min(cap, initial + self.random() * (high - initial))
        else:
            # The exponential ceiling, computed in log space so attempt 10,000 cannot overflow.
            if initial <= 0.0 or initial >= cap or mult == 1.0:
                ceiling = min(initial, cap)
            else:
                log_ceiling = math.log(initial) + (attempt - 1) * math.log(mult)
                ceiling = cap if log_ceiling >= math.log(cap) else min(cap, math.exp(log_ceiling))
            wait = ceiling * self.random() if jitter == "full" else ceiling
        if retry_after is not None and retry_after > 0.0:  # NaN and negatives are ignored
            hint = min(retry_after, self.max_retry_after)
            if hint > wait:
                wait = hint
        return wait


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryDecision:
    """``decide(exc)``'s answer for a retryable error: its category, a wait hint, and the
    classifier's cap on retries of this category within one call (``None``: no cap; e.g.
    a server ``statement_timeout`` is retried at most once)."""

    category: str | None = None
    retry_after: float | None = None
    max_retries: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryEvent:
    """Passed to :meth:`RetryHooks.on_retry` before each backoff sleep."""

    name: str | None
    #: The attempt that just failed (1-based); the next attempt is ``attempt + 1``.
    attempt: int
    category: str | None
    exception: BaseException
    #: Seconds about to be slept.
    sleep: float
    #: Seconds since the call started.
    elapsed: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryStatistics:
    """Per-call statistics, passed to :meth:`RetryHooks.on_finish` (never shared)."""

    name: str | None
    attempts: int
    total_sleep: float
    elapsed: float
    stop_reason: StopReason
    #: Category of the last retryable failure, if any.
    last_category: str | None = None


class RetryHooks(Protocol):
    """Observer of one ``retry_call``. Subclass it to inherit no-op defaults."""

    def on_retry(self, event: RetryEvent) -> None:
        """Called before each backoff sleep."""
        return

    def on_finish(self, statistics: RetryStatistics) -> None:
        """Called once when the call ends (success, give-up, or cancellation)."""
        return


# --- testing switch -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Testing:
    attempts: int
    cap: bool


_testing: _Testing | None = None


class _RestoreTesting:
    """Returned by :func:`set_testing`; as a context manager it restores the old mode."""

    __slots__ = ("_old",)

    def __init__(self, old: _Testing | None) -> None:
        self._old = old

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _testing
        _testing = self._old


def set_testing(testing: bool, *, attempts: int = 1, cap: bool = False) -> _RestoreTesting:
    """Turn testing mode on or off (like ``stamina.set_testing``).

    In testing mode retries do not sleep (they only yield to the event loop) and every
    policy makes exactly ``attempts`` attempts, or at most ``attempts`` when ``cap`` is
    true. Usable as a context manager: ``with set_testing(True): ...`` restores the
    previous mode on exit.
    """
    global _testing
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise config_error(
            "set_testing", "attempts", attempts, "an int >= 1", "use attempts=1 to disable retries"
        )
    old = _testing
    _testing = _Testing(attempts, cap) if testing else None
    return _RestoreTesting(old)


def is_testing() -> bool:
    """Whether :func:`set_testing` mode is active."""
    return _testing is not None
