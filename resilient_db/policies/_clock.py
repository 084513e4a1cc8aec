"""Injectable time, sleep and randomness for the policy engines.

Every policy (:class:`~resilient_db.RetryPolicy`, :class:`~resilient_db.RetryBudget`,
:class:`~resilient_db.CircuitBreaker`) reads time, sleeps and draws random numbers only
through the three small protocols below, so tests can substitute a fake clock and a fake
sleep that advances it, and get deterministic, instant runs.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Awaitable
from typing import Protocol

import anyio

__all__ = [
    "Clock",
    "RandomSource",
    "Sleep",
    "default_clock",
    "default_random",
    "default_sleep",
]


class Clock(Protocol):
    """A monotonic clock: returns seconds as a float; only differences are meaningful."""

    def __call__(self) -> float: ...


class Sleep(Protocol):
    """An awaitable sleep: suspends the caller for ``seconds`` (a cancellation point)."""

    def __call__(self, seconds: float, /) -> Awaitable[None]: ...


class RandomSource(Protocol):
    """A source of uniform random floats in ``[0.0, 1.0)``."""

    def __call__(self) -> float: ...


#: The default clock: :func:`time.monotonic`.
default_clock: Clock = time.monotonic
#: The default sleep: :func:`anyio.sleep` (works under asyncio and trio).
default_sleep: Sleep = anyio.sleep
#: The default random source: :func:`random.random`.
default_random: RandomSource = _random.random
