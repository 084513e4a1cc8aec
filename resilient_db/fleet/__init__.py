"""The fleet stage: breaker decisions shared between processes (Redis).

Install the extra: ``pip install 'resilient-db[redis]'``. Pass a store to each breaker::

    store = RedisBreakerStore("redis://127.0.0.1:6379/0", service="billing-api")
    breaker = CircuitBreaker(str(endpoint_key(engine)), store=store,
                             health_check=engine_health_check(engine))
"""

from resilient_db.fleet._redis import (
    FleetEvent,
    FleetListener,
    FleetStatistics,
    RedisBreakerStore,
)

__all__ = ["FleetEvent", "FleetListener", "FleetStatistics", "RedisBreakerStore"]
