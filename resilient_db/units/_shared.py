"""The parts every ``Database`` on the same engine or endpoint shares.

One breaker per endpoint (host, port, database, role); one retry budget, one registry of
background commit resolutions and one fair queue (``_gate``) per engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db.engine import EndpointKey, endpoint_key, engine_health_check, pool_limits
from resilient_db.policies import CircuitBreaker, Clock, RetryBudget, default_clock
from resilient_db.units._commit import CommitResolutions
from resilient_db.units._gate import Gate

__all__ = ["shared_breaker", "shared_budget", "shared_gate", "shared_resolutions"]

V = TypeVar("V")

_breakers: dict[EndpointKey, CircuitBreaker] = {}
_budgets: weakref.WeakKeyDictionary[Any, RetryBudget] = weakref.WeakKeyDictionary()
_resolutions: weakref.WeakKeyDictionary[Any, CommitResolutions] = weakref.WeakKeyDictionary()
_gates: weakref.WeakKeyDictionary[Any, Gate | None] = weakref.WeakKeyDictionary()


def shared_breaker(engine: AsyncEngine, clock: Clock) -> CircuitBreaker:
    """The endpoint's breaker; its probe opens a fresh connection (the server, not the pool)."""
    endpoint = endpoint_key(engine)
    breaker = _breakers.get(endpoint)
    if breaker is None:
        kwargs: dict[str, Any] = {"health_check": engine_health_check(engine)}
        if clock is not default_clock:
            kwargs["clock"] = clock
        breaker = _breakers[endpoint] = CircuitBreaker(str(endpoint), **kwargs)
    return breaker


def shared_budget(engine: AsyncEngine, clock: Clock) -> RetryBudget:
    """The engine's retry budget."""
    return _per_engine(_budgets, engine, lambda: RetryBudget(clock=clock))


def shared_resolutions(engine: AsyncEngine) -> CommitResolutions:
    """The engine's background commit resolutions."""
    return _per_engine(_resolutions, engine, lambda: CommitResolutions(engine))


def shared_gate(engine: AsyncEngine) -> Gate | None:
    """The engine's fair queue; None for a pool without a queue (NullPool, no limit)."""
    return _per_engine(_gates, engine, lambda: _gate_for(engine))


def _gate_for(engine: AsyncEngine) -> Gate | None:
    limits = pool_limits(engine)
    return Gate(limits.capacity, limits.timeout) if limits is not None else None


def _per_engine(
    registry: weakref.WeakKeyDictionary[Any, V], engine: AsyncEngine, make: Callable[[], V]
) -> V:
    """``registry``'s value for ``engine`` (its sync engine), made on first use."""
    key = engine.sync_engine
    if key not in registry:
        registry[key] = make()
    return registry[key]
