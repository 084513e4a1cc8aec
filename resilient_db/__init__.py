"""resilient_db: resilience middleware for SQLAlchemy 2.x async engines on PostgreSQL.

One public surface: import everything from ``resilient_db``; the underscored modules are
private and may change without notice.
"""

from __future__ import annotations

from resilient_db._blocks import AttemptBlock, Attempts, Transaction

# [engine]
# [classifier]
# [policies]
from resilient_db._breaker import (
    BreakerEvent,
    BreakerListener,
    BreakerPermit,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
)
from resilient_db._budget import BudgetStatistics, RetryBudget
from resilient_db._classify import (
    Classification,
    Classifier,
    ErrorFacts,
    ErrorKind,
    Phase,
    Rule,
    classify,
)

# [database]
from resilient_db._commit import CommitOutcome
from resilient_db._database import Database, engine_health_check
from resilient_db._decorator import INJECTED, transactional
from resilient_db._doctor import DoctorReport, Finding, Severity, doctor
from resilient_db._engine import EngineSettings, create_async_engine, engine_settings
from resilient_db._errors import (
    CircuitOpenError,
    CommitOutcomeUnknown,
    ConfigurationError,
    MissingDriverError,
    ResilientDBError,
)
from resilient_db._retry import (
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
from resilient_db._unit import DeadlineExceeded, UnitEvent, UnitListener, UnitOptions
from resilient_db._urls import safe_url

__version__ = "0.1.0"

__all__ = [
    "INJECTED",
    "AttemptBlock",
    "Attempts",
    "BreakerEvent",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "BudgetStatistics",
    "CategoryBackoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "CommitOutcome",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "Database",
    "DeadlineExceeded",
    "DoctorReport",
    "EngineSettings",
    "ErrorFacts",
    "ErrorKind",
    "Finding",
    "MissingDriverError",
    "Phase",
    "ResilientDBError",
    "RetryBudget",
    "RetryDecision",
    "RetryEvent",
    "RetryHooks",
    "RetryLoop",
    "RetryPolicy",
    "RetryStatistics",
    "Rule",
    "Severity",
    "Transaction",
    "UnitEvent",
    "UnitListener",
    "UnitOptions",
    "__version__",
    "classify",
    "create_async_engine",
    "doctor",
    "engine_health_check",
    "engine_settings",
    "retry_call",
    "safe_url",
    "set_testing",
    "transactional",
]
