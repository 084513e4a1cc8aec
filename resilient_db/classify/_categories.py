"""The vocabulary of a verdict: kinds, phases, categories, and the verdict itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Category", "Classification", "ErrorKind", "Phase"]


class ErrorKind(StrEnum):
    """What a caller may do after an error."""

    RETRYABLE = "retryable"
    """Re-running the whole unit of work may succeed."""
    FATAL = "fatal"
    """Re-running cannot help (or must not happen): raise the original exception."""
    COMMIT_UNKNOWN = "commit_unknown"
    """The error hit COMMIT and the transaction may or may not have been applied."""


class Phase(StrEnum):
    """Where in a unit of work the error was raised (plain strings are accepted too)."""

    CONNECT = "connect"
    CHECKOUT = "checkout"
    STATEMENT = "statement"
    COMMIT = "commit"


class Category(StrEnum):
    """Why an error happened, in one word; the key of per-category retry waits.

    A ``StrEnum``: ``Category.TIMEOUT == "timeout"``, so code and configuration written
    with bare strings keep working. User rules may use their own category strings.
    """

    # -- the call itself
    CANCELLED = "cancelled"
    CIRCUIT_OPEN = "circuit_open"
    COMMIT_UNKNOWN = "commit_unknown"
    POOL_EXHAUSTED = "pool_exhausted"
    # -- the connection and the server
    CONNECT_FAILED = "connect_failed"
    CONNECTION_LOST = "connection_lost"
    SERVER_UNAVAILABLE = "server_unavailable"
    FAILOVER = "failover"
    OVERLOAD = "overload"
    TIMEOUT = "timeout"
    STATEMENT_TIMEOUT = "statement_timeout"
    """The server's ``statement_timeout`` cancelled the statement: retry at most once."""
    ADMIN_CANCEL = "admin_cancel"
    """``pg_cancel_backend`` (an administrator or another session): never retried."""
    # -- concurrency
    SERIALIZATION = "serialization"
    DEADLOCK = "deadlock"
    LOCK_TIMEOUT = "lock_timeout"
    STALE_CACHE = "stale_cache"
    # -- the application
    CONFIG = "config"
    PROGRAMMING = "programming"
    MISUSE = "misuse"
    INTEGRITY = "integrity"
    DATA = "data"
    UNKNOWN = "unknown"
    """No rule recognised the error."""


def as_category(name: str) -> Category | str:
    """The :class:`Category` member named ``name``, or ``name`` itself (a user category)."""
    try:
        return Category(name)
    except ValueError:
        return name


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The verdict on one exception.

    ``sqlstate`` is only ever a code the server sent (asyncpg's client-side 08003 on
    ``ConnectionDoesNotExistError`` is not one). ``reason`` is one sentence a person can act
    on. ``retry_after`` is an optional hint in seconds (0.0 = retry at once).
    ``category`` is a :class:`Category` member for the default rules (a user rule's own
    category string otherwise). ``max_retries`` caps how often a unit of work retries an
    error of this verdict within one call (``None``: only the retry policy's limits apply).
    """

    kind: ErrorKind
    category: Category | str
    sqlstate: str | None
    reason: str
    counts_toward_breaker: bool
    invalidate_pool: bool
    retry_after: float | None = None
    rule: str | None = None
    """Name of the rule that decided (``None`` for the built-in fallback)."""
    max_retries: int | None = None

    @property
    def retryable(self) -> bool:
        """True when ``kind`` is :attr:`ErrorKind.RETRYABLE`."""
        return self.kind is ErrorKind.RETRYABLE
