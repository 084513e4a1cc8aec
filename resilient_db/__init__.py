"""resilient_db: resilience middleware for SQLAlchemy 2.x async engines on PostgreSQL.

One public surface: import everything from ``resilient_db``; the underscored modules are
private and may change without notice.
"""

from __future__ import annotations

from resilient_db._errors import (
    CircuitOpenError,
    CommitOutcomeUnknown,
    ConfigurationError,
    ResilientDBError,
)

# [engine]
# [classifier]
# [policies]
# [database]

__version__ = "0.1.0"

__all__ = [
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ResilientDBError",
    "__version__",
]
