"""The policies stage: its internal surface for the stages above it."""

from resilient_db.policies._breaker import (
    BreakerEvent,
    BreakerListener,
    BreakerPermit,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
)
from resilient_db.policies._breaker_store import (
    BreakerStore,
    DecisionSink,
    FleetDecision,
    LocalBreakerStore,
)
from resilient_db.policies._budget import DEFAULT_FREE_CATEGORIES, BudgetStatistics, RetryBudget
from resilient_db.policies._clock import Clock, Sleep, default_clock
from resilient_db.policies._retry import (
    CategoryBackoff,
    RetryDecision,
    RetryEvent,
    RetryHooks,
    RetryLoop,
    RetryPolicy,
    RetryStatistics,
    retry_call,
    set_testing,
)

__all__ = [
    "DEFAULT_FREE_CATEGORIES",
    "BreakerEvent",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "BreakerStore",
    "BudgetStatistics",
    "CategoryBackoff",
    "CircuitBreaker",
    "Clock",
    "DecisionSink",
    "FleetDecision",
    "LocalBreakerStore",
    "RetryBudget",
    "RetryDecision",
    "RetryEvent",
    "RetryHooks",
    "RetryLoop",
    "RetryPolicy",
    "RetryStatistics",
    "Sleep",
    "default_clock",
    "retry_call",
    "set_testing",
]
