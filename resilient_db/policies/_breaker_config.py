"""The options of a :class:`~resilient_db.CircuitBreaker`, validated in one place.

Bad input raises :class:`~resilient_db.ConfigurationError` naming the option, the value, the
allowed range and an example fix, never a deep traceback.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from resilient_db._errors import CircuitOpenError
from resilient_db._validate import check_callables, check_text, config_error
from resilient_db.policies._breaker_store import BreakerStore
from resilient_db.policies._clock import Clock, RandomSource, default_clock, default_random

__all__ = [
    "BreakerConfig",
    "check_callable",
    "check_listeners",
    "check_name",
    "check_store",
    "default_is_failure",
]

T = TypeVar("T")


def default_is_failure(exc: BaseException) -> bool | None:
    """Default outcome rule for ``async with`` / ``@breaker``.

    Returns True (failure), False (success) or None (ignored): non-``Exception`` errors
    (cancellation, ``KeyboardInterrupt``) and another breaker's ``CircuitOpenError`` are
    ignored; every other ``Exception`` is a failure.
    """
    if not isinstance(exc, Exception) or isinstance(exc, CircuitOpenError):
        return None
    return True


def _num(
    option: str, value: object, *, low: float, high: float = math.inf, strict: bool = True, fix: str
) -> float:
    if (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and value <= high
    ):
        return float(value)
    lo = f"> {low}" if strict else f">= {low}"
    rng = lo if high == math.inf else f"{lo} and <= {high}"
    raise config_error("CircuitBreaker", option, value, f"a finite number {rng}", _fix(fix))


def _opt_num(option: str, value: object, *, fix: str) -> float | None:
    return None if value is None else _num(option, value, low=0.0, fix=fix)


def _int(option: str, value: object, *, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise config_error("CircuitBreaker", option, value, "an int >= 1", _fix(fix))
    return value


def _fix(text: str) -> str:
    """The remedy part of a message ("use e.g. x=1" → "e.g. x=1")."""
    return text.removeprefix("use ")


def check_callable(option: str, value: object, fix: str) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is callable."""
    if not callable(value):
        raise config_error("CircuitBreaker", option, value, "callable", _fix(fix))


def check_name(name: object) -> str:
    """The breaker's name: a non-empty string."""
    return check_text(
        "CircuitBreaker", "name", name, fix="name it after the endpoint, e.g. 'db-primary'"
    )


def check_listeners(listeners: Iterable[T]) -> tuple[T, ...]:
    """The breaker's listeners: an iterable of callables taking a ``BreakerEvent``."""
    return check_callables(
        "CircuitBreaker",
        "listeners",
        listeners,
        fix="pass a list of callables taking a BreakerEvent, e.g. listeners=[on_event]",
    )


#: What a store must provide (the :class:`BreakerStore` protocol).
_STORE_METHODS: Final = ("bind", "publish", "acquire_probe_lease")


def check_store(store: object) -> BreakerStore | None:
    """The breaker's store: None or an object with the :class:`BreakerStore` methods."""
    if store is None or all(callable(getattr(store, m, None)) for m in _STORE_METHODS):
        return store  # type: ignore[return-value]  # it has the protocol's methods
    raise config_error(
        "CircuitBreaker",
        "store",
        store,
        "a BreakerStore (bind, publish and acquire_probe_lease methods) or None",
        "pass LocalBreakerStore() or RedisBreakerStore(url, service=...), or leave it out",
        wrong_type=True,
    )


def _check_pairs(cfg: BreakerConfig) -> None:
    """The checks of one option against another."""
    if cfg.open_for_max < cfg.open_for:
        raise config_error(
            "CircuitBreaker",
            "open_for_max",
            cfg.open_for_max,
            f">= open_for ({cfg.open_for!r})",
            "raise open_for_max or lower open_for",
        )
    if cfg.confirm_trips is not None and not isinstance(cfg.confirm_trips, bool):
        raise config_error(
            "CircuitBreaker",
            "confirm_trips",
            cfg.confirm_trips,
            "True, False or None (None: confirm when a health_check is given)",
            "pass confirm_trips=True, False or None",
            wrong_type=True,
        )
    if cfg.confirm_trips and cfg.health_check is None:
        raise config_error(
            "CircuitBreaker",
            "confirm_trips",
            True,
            "False or None without a health_check (confirming a trip needs a health_check)",
            "pass health_check=engine_health_check(engine), or confirm_trips=None",
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    """Validated breaker options (see :class:`~resilient_db.CircuitBreaker`)."""

    window: float = 10.0
    buckets: int = 10
    minimum_calls: int = 20
    failure_rate: float = 0.5
    consecutive_failures: int | None = 10
    slow_call_duration: float | None = None
    slow_call_rate: float = 1.0
    half_open_permits: int = 1
    open_for: float = 5.0
    open_for_max: float = 60.0
    open_growth: float = 2.0
    open_jitter: float = 0.2
    max_half_open_wait: float | None = 30.0
    health_check: Callable[[], Awaitable[object]] | None = None
    probe_interval: float = 0.5
    probe_timeout: float = 2.0
    confirm_trips: bool | None = None
    confirm_timeout: float = 0.5
    is_failure: Callable[[BaseException], bool | None] = default_is_failure
    clock: Clock = default_clock
    random: RandomSource = default_random

    def __post_init__(self) -> None:
        _num("window", self.window, low=0.0, fix="use seconds, e.g. window=10.0")
        _int("buckets", self.buckets, fix="use e.g. buckets=10")
        _int("minimum_calls", self.minimum_calls, fix="use e.g. minimum_calls=20")
        if self.consecutive_failures is not None:
            _int(
                "consecutive_failures",
                self.consecutive_failures,
                fix="use e.g. consecutive_failures=10, or None to trip on the rate only",
            )
        _num("failure_rate", self.failure_rate, low=0.0, high=1.0, fix="use a fraction, e.g. 0.5")
        _opt_num(
            "slow_call_duration",
            self.slow_call_duration,
            fix="use seconds, e.g. 2.0, or None to disable slow-call accounting",
        )
        _num(
            "slow_call_rate", self.slow_call_rate, low=0.0, high=1.0, fix="use a fraction, e.g. 0.8"
        )
        _int("half_open_permits", self.half_open_permits, fix="use e.g. half_open_permits=1")
        _num("open_for", self.open_for, low=0.0, fix="use seconds, e.g. 5.0")
        _num("open_for_max", self.open_for_max, low=0.0, fix="use seconds, e.g. 60.0")
        _num("open_growth", self.open_growth, low=1.0, strict=False, fix="use e.g. 2.0 (1 = fixed)")
        _num("open_jitter", self.open_jitter, low=0.0, high=0.99, strict=False, fix="use e.g. 0.2")
        _opt_num(
            "max_half_open_wait",
            self.max_half_open_wait,
            fix="use seconds, e.g. 30.0, or None for no limit",
        )
        if self.health_check is not None:
            check_callable(
                "health_check", self.health_check, "pass an async function, e.g. SELECT 1"
            )
        _num("probe_interval", self.probe_interval, low=0.0, fix="use seconds, e.g. 0.5")
        _num("probe_timeout", self.probe_timeout, low=0.0, fix="use seconds, e.g. 2.0")
        _num("confirm_timeout", self.confirm_timeout, low=0.0, fix="use seconds, e.g. 0.5")
        _check_pairs(self)
        check_callable("is_failure", self.is_failure, "return True/False/None for an exception")
        check_callable("clock", self.clock, "pass time.monotonic or a fake clock")
        check_callable("random", self.random, "pass random.random or a fake")

    @property
    def confirms(self) -> bool:
        """Whether trips are confirmed against the server before the breaker opens."""
        if self.confirm_trips is None:
            return self.health_check is not None
        return self.confirm_trips
