"""How many connections an engine's pool hands out at once, and how long a checkout waits.

The units' fair queue (``units._gate``) admits at most that many units to the pool at a
time, first come first served, and waits no longer than the pool itself would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from resilient_db.engine._factory import engine_settings

__all__ = ["PoolLimits", "pool_limits", "queue_pool_numbers"]


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """A queue pool's limits: ``capacity`` connections at once, ``timeout`` s per checkout."""

    capacity: int
    timeout: float


def pool_limits(engine: AsyncEngine) -> PoolLimits | None:
    """The limits of ``engine``'s queue pool; ``None`` for pools without a queue
    (``NullPool``, ``StaticPool``) or an unbounded overflow (``max_overflow=-1``)."""
    settings = engine_settings(engine)
    pool: Any = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):  # AsyncAdaptedQueuePool included
        return None
    if settings is not None:
        size, overflow, timeout = settings.pool_size, settings.max_overflow, settings.pool_timeout
    else:
        size, overflow, timeout = queue_pool_numbers(pool)
    if overflow < 0 or size <= 0:
        return None
    return PoolLimits(capacity=size + overflow, timeout=timeout)


def queue_pool_numbers(pool: QueuePool) -> tuple[int, int, float]:
    """A queue pool's ``pool_size``, ``max_overflow`` and ``pool_timeout`` as configured."""
    # no public API: the pool exposes size() and overflow() but not its limits
    overflow = getattr(pool, "_max_overflow", 0)
    return int(pool.size()), int(overflow), float(getattr(pool, "_timeout", 30.0))
