"""resilient_db: resilience middleware for SQLAlchemy 2.x async engines on PostgreSQL.

One public surface: import everything from ``resilient_db``; the underscored modules are
private and may change without notice.
"""

from __future__ import annotations

from resilient_db._classify import (
    Classification,
    Classifier,
    ErrorFacts,
    ErrorKind,
    Phase,
    Rule,
    classify,
)
from resilient_db._doctor import DoctorReport, Finding, Severity, doctor
from resilient_db._engine import EngineSettings, create_async_engine, engine_settings
from resilient_db._errors import (
    CircuitOpenError,
    CommitOutcomeUnknown,
    ConfigurationError,
    MissingDriverError,
    ResilientDBError,
)
from resilient_db._urls import safe_url

# [engine]
# [classifier]
# [policies]
# [database]

__version__ = "0.1.0"

__all__ = [
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DoctorReport",
    "EngineSettings",
    "ErrorFacts",
    "ErrorKind",
    "Finding",
    "MissingDriverError",
    "Phase",
    "ResilientDBError",
    "Rule",
    "Severity",
    "__version__",
    "classify",
    "create_async_engine",
    "doctor",
    "engine_settings",
    "safe_url",
]
