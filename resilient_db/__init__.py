"""resilient_db: resilience middleware for SQLAlchemy 2.x async engines on PostgreSQL.

One public surface: import everything from ``resilient_db``; the underscored modules are
private and may change without notice.
"""

from __future__ import annotations

from resilient_db._errors import (
    AlreadyApplied,
    CircuitOpenError,
    CommitOutcomeUnknown,
    ConfigurationError,
    ConfigurationTypeError,
    MissingDriverError,
    ResilientDBError,
)
from resilient_db._logging import install as _install_log_messages
from resilient_db.classify import (
    Category,
    Classification,
    Classifier,
    ErrorFacts,
    ErrorKind,
    Phase,
    Rule,
    classify,
)
from resilient_db.engine import (
    DoctorReport,
    EndpointKey,
    EngineSettings,
    Finding,
    Severity,
    create_async_engine,
    doctor,
    endpoint_key,
    engine_health_check,
    engine_settings,
    safe_url,
)

# [engine]
# [classifier]
# [policies]
from resilient_db.fleet import FleetEvent, FleetStatistics, RedisBreakerStore
from resilient_db.policies import (
    BreakerEvent,
    BreakerListener,
    BreakerPermit,
    BreakerState,
    BreakerStatistics,
    BreakerStore,
    BudgetStatistics,
    CategoryBackoff,
    CircuitBreaker,
    FleetDecision,
    LocalBreakerStore,
    RetryBudget,
    RetryDecision,
    RetryEvent,
    RetryHooks,
    RetryLoop,
    RetryPolicy,
    RetryStatistics,
    retry_call,
    set_testing,
)

# [database]
from resilient_db.units import (
    INJECTED,
    AttemptBlock,
    Attempts,
    CommitOutcome,
    Database,
    DeadlineExceeded,
    KeyRecord,
    KeyState,
    Ledger,
    Transaction,
    UnitEvent,
    UnitListener,
    UnitOptions,
    create_ledger,
    transactional,
)

__version__ = "0.1.0"

_install_log_messages()  # readable messages on the "resilient_db" logger (see _logging)

__all__ = [
    "INJECTED",
    "AlreadyApplied",
    "AttemptBlock",
    "Attempts",
    "BreakerEvent",
    "BreakerListener",
    "BreakerPermit",
    "BreakerState",
    "BreakerStatistics",
    "BreakerStore",
    "BudgetStatistics",
    "Category",
    "CategoryBackoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "CommitOutcome",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConfigurationTypeError",
    "Database",
    "DeadlineExceeded",
    "DoctorReport",
    "EndpointKey",
    "EngineSettings",
    "ErrorFacts",
    "ErrorKind",
    "Finding",
    "FleetDecision",
    "FleetEvent",
    "FleetStatistics",
    "KeyRecord",
    "KeyState",
    "Ledger",
    "LocalBreakerStore",
    "MissingDriverError",
    "Phase",
    "RedisBreakerStore",
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
    "create_ledger",
    "doctor",
    "endpoint_key",
    "engine_health_check",
    "engine_settings",
    "retry_call",
    "safe_url",
    "set_testing",
    "transactional",
]
