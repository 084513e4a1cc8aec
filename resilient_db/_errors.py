"""The exception hierarchy: every exception resilient_db raises derives from one root.

Database exceptions are never wrapped: when retries are exhausted the original driver or
SQLAlchemy exception is re-raised (with a note added via ``add_note``). The classes here are
only for conditions that resilient_db itself decides: an open circuit, an unknowable commit
outcome, a misconfiguration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = [
    "AlreadyApplied",
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConfigurationTypeError",
    "MissingDriverError",
    "ResilientDBError",
]


class ResilientDBError(Exception):
    """Root of every exception raised by resilient_db itself."""


class ConfigurationError(ResilientDBError, ValueError):
    """An option or URL is invalid; the message names the option, its range and the fix.

    Raised by the validators in ``resilient_db._validate``; the message reads
    ``Owner(name=value) must be <constraint>; fix: <remedy>``.
    """


class ConfigurationTypeError(ConfigurationError, TypeError):
    """An option has the wrong type, or is not an option at all (a misspelt keyword).

    Also a :class:`TypeError`, which is what Python raises for a wrong or unknown argument,
    so ``except TypeError`` keeps working.
    """


class MissingDriverError(ResilientDBError, ImportError):
    """The database driver a URL names is not installed; the message gives the pip command."""


class CircuitOpenError(ResilientDBError):
    """A call was refused without I/O because the circuit breaker ``name`` is open.

    ``retry_after`` is the number of seconds until the breaker will admit a probe (0.0 when
    it is half-open and all probe permits are taken). The exception is cheap: it carries no
    traceback state beyond its own raise and is never shared between calls.
    """

    __slots__ = ("name", "retry_after", "state")

    def __init__(self, name: str, retry_after: float, *, state: str = "open") -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(name, retry_after)

    def __str__(self) -> str:
        return (
            f"circuit breaker {self.name!r} is {self.state}: the database was failing, so "
            f"calls fail fast for {self.retry_after:.3f}s more; retry later or check the "
            "database's health (breaker.statistics() shows why it opened)"
        )

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.name, self.retry_after))


class CommitOutcomeUnknown(ResilientDBError):
    """The connection was lost during COMMIT and the outcome could not be determined.

    The transaction may or may not have been applied. ``xid`` is the transaction id that was
    assigned on the server (``None`` when it could not be captured) and ``timeline`` the WAL
    timeline it was assigned on: settle it later with
    ``await db.commit_status(exc.xid, timeline=exc.timeline)`` (an xid number means nothing
    on another timeline, i.e. after a failover) — or, for a unit with an operation ``key``,
    ``await db.commit_status(key=exc.key)`` — or make the unit idempotent.
    """

    def __init__(
        self,
        message: str,
        *,
        xid: int | None,
        attempts: int = 1,
        timeline: str | None = None,
        key: str | None = None,
    ) -> None:
        self.xid = xid
        self.attempts = attempts
        self.timeline = timeline
        #: The unit's operation key, when it had one (look it up once a primary answers).
        self.key = key
        super().__init__(message)


class AlreadyApplied(ResilientDBError):
    """The unit's operation ``key`` is in the ledger: an earlier call applied the operation,
    so this call did not apply it again (its transaction was rolled back).

    Raised instead of returning the earlier result when none was stored (storing disabled,
    or the result was not JSON-serialisable). ``recorded_at`` is when the earlier call
    committed; ``result`` is set only when ``has_result``.
    """

    def __init__(
        self,
        key: str,
        *,
        recorded_at: datetime | None = None,
        has_result: bool = False,
        result: Any = None,
    ) -> None:
        self.key = key
        self.recorded_at = recorded_at
        self.has_result = has_result
        self.result = result
        super().__init__(key)

    def __str__(self) -> str:
        when = f" at {self.recorded_at.isoformat()}" if self.recorded_at is not None else ""
        text = (
            f"operation key {self.key!r} was already applied{when}; this call did not apply "
            "it again"
        )
        if self.has_result:
            return f"{text} (the earlier result is in .result)"
        return (
            f"{text}. No result of the earlier call is stored (enable store_results and "
            "return JSON-serialisable values to get it back instead of this error)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_already_applied, (self.key, self.recorded_at, self.has_result, self.result))


def _already_applied(
    key: str, recorded_at: datetime | None, has_result: bool, result: Any
) -> AlreadyApplied:
    return AlreadyApplied(key, recorded_at=recorded_at, has_result=has_result, result=result)
