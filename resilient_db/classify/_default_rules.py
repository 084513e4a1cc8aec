"""The default classification table, as data (rendered by ``_docs`` for the docs page).

Regenerate the docs page after changing a rule::

    python -m resilient_db.classify._docs > docs/classifier-rules.md

Order matters: the first matching rule decides. SQLSTATE rules come first (a server answer
is the most precise fact), then driver and OS exception types, then messages (psycopg's
connect errors carry no SQLSTATE), then SQLAlchemy's own exceptions and generic DB-API
classes. Driver types are named by dotted path so that psycopg stays optional.
"""

from __future__ import annotations

import errno
import socket
import ssl

from resilient_db._errors import CircuitOpenError, CommitOutcomeUnknown, ConfigurationError
from resilient_db.classify._categories import Category, ErrorKind
from resilient_db.classify._facts import ErrorFacts
from resilient_db.classify._rule import Rule

__all__ = ["DEFAULT_RULES"]

R = ErrorKind.RETRYABLE
F = ErrorKind.FATAL
U = ErrorKind.COMMIT_UNKNOWN

# -- predicates --------------------------------------------------------------------------


def _not_an_exception(facts: ErrorFacts) -> bool:
    return not isinstance(facts.exc, Exception)


def _no_sqlstate(facts: ErrorFacts) -> bool:
    return facts.sqlstate is None


def _not_known_primary(facts: ErrorFacts) -> bool:
    return facts.in_recovery is not False


def _not_own_timeout(facts: ErrorFacts) -> bool:
    return facts.own_timeout is False


def _not_own_cancel(facts: ErrorFacts) -> bool:
    # Our own deadline cancels through the driver, which the server also reports as a
    # "user request": only a cancel we know is ours stays a (retryable) timeout.
    return facts.own_timeout is not True


def _dns_try_again(facts: ErrorFacts) -> bool:
    exc = facts.find(socket.gaierror)
    return isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN


_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
    }
)


def _network_errno(facts: ErrorFacts) -> bool:
    return any(isinstance(e, OSError) and e.errno in _NETWORK_ERRNOS for e in facts.chain)


def _sa_invalidated(facts: ErrorFacts) -> bool:
    return any(getattr(exc, "connection_invalidated", False) is True for exc in facts.chain)


def _circuit_retry_after(facts: ErrorFacts) -> float | None:
    exc = facts.find(CircuitOpenError)
    return exc.retry_after if isinstance(exc, CircuitOpenError) else None


# -- reasons shared by several rules -----------------------------------------------------

_LOST = (
    "the connection to the server was lost; retry the whole unit of work on a fresh "
    "connection (at COMMIT the outcome is unknown: resolve it before retrying)"
)
_CONNECT = (
    "could not connect to the server; retry with backoff and check that the server is up "
    "and reachable at the configured host and port"
)
_PROGRAMMING = "the SQL or its use is wrong; fix the statement, retrying cannot help"
_MISUSE = (
    "the session or connection was used incorrectly (after an error without rollback, or "
    "from two tasks at once); fix the calling code, retrying cannot help"
)

_ASYNCPG = "asyncpg.exceptions."
_PSYCOPG_OPERATIONAL = "psycopg.OperationalError"
_SA = "sqlalchemy.exc."

DEFAULT_RULES: tuple[Rule, ...] = (
    # -- cancellation and our own errors ---------------------------------------------------
    Rule(
        name="cancelled",
        predicate=_not_an_exception,
        when="not an Exception (CancelledError, KeyboardInterrupt, SystemExit...)",
        kind=F,
        at_commit=U,
        category=Category.CANCELLED,
        reason=(
            "the task was cancelled or the process is stopping; propagate at once, never "
            "retry (at COMMIT the outcome is unknown: record it for resolution)"
        ),
    ),
    Rule(
        name="pool_checkout_timeout",
        types=(f"{_SA}TimeoutError",),
        kind=R,
        category=Category.POOL_EXHAUSTED,
        reason=(
            "no pooled connection became free within pool_timeout (local saturation, not a "
            "database fault); retry later, lower concurrency or enlarge the pool"
        ),
    ),
    Rule(
        name="circuit_open",
        types=(CircuitOpenError,),
        kind=R,
        category=Category.CIRCUIT_OPEN,
        reason="the circuit breaker refused the call; retry after retry_after seconds",
        retry_after=_circuit_retry_after,
    ),
    Rule(
        name="commit_outcome_unknown",
        types=(CommitOutcomeUnknown,),
        kind=F,
        category=Category.COMMIT_UNKNOWN,
        reason=(
            "the outcome of a COMMIT could not be determined; check pg_xact_status(xid) "
            "later or make the unit idempotent"
        ),
    ),
    Rule(
        name="configuration_error",
        types=(ConfigurationError,),
        kind=F,
        category=Category.CONFIG,
        reason="resilient_db is misconfigured; the message names the option to fix",
    ),
    # -- server SQLSTATEs ------------------------------------------------------------------
    Rule(
        name="serialization_failure",
        sqlstates=("40001",),
        kind=R,
        category=Category.SERIALIZATION,
        reason=(
            "the transaction conflicted with a concurrent one and was rolled back; retry the "
            "whole unit of work (also when COMMIT itself raised it)"
        ),
    ),
    Rule(
        name="deadlock",
        sqlstates=("40P01",),
        kind=R,
        category=Category.DEADLOCK,
        reason=(
            "the transaction was chosen as a deadlock victim and rolled back; retry the unit "
            "(and take locks in a consistent order to make it rarer)"
        ),
    ),
    Rule(
        name="lock_not_available",
        sqlstates=("55P03",),
        kind=R,
        category=Category.LOCK_TIMEOUT,
        reason="a lock could not be acquired in time (lock_timeout/NOWAIT); retry with backoff",
    ),
    Rule(
        name="idle_session_timeout",
        sqlstates=("25P03", "57P05"),
        kind=R,
        category=Category.CONNECTION_LOST,
        reason=(
            "the server closed a session left idle too long (idle_in_transaction_session_"
            "timeout / idle_session_timeout), rolling back; retry, and do not hold "
            "transactions open while waiting on other work"
        ),
    ),
    Rule(
        name="stale_statement_cache",
        types=(
            f"{_ASYNCPG}InvalidCachedStatementError",
            f"{_ASYNCPG}_base.OutdatedSchemaCacheError",
        ),
        kind=R,
        category=Category.STALE_CACHE,
        reason=(
            "a cached statement plan or type cache is stale after a schema change; retry once "
            "at once (the driver has dropped the stale entry)"
        ),
        retry_after=0.0,
    ),
    Rule(
        name="cached_plan_changed",
        sqlstates=("0A000",),
        message=r"cached plan must not change result type",
        kind=R,
        category=Category.STALE_CACHE,
        reason=(
            "a prepared statement's plan is stale after a schema change; retry once at once "
            "(the transaction must be restarted)"
        ),
        retry_after=0.0,
    ),
    Rule(
        name="read_only_on_standby",
        sqlstates=("25006",),
        predicate=_not_known_primary,
        when="in_recovery is True or unknown",
        kind=R,
        category=Category.FAILOVER,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "a write reached a read-only server: after a failover the pool still points at "
            "the old primary, now a standby; drop the pool and retry on the new primary "
            "(pass in_recovery=False if the app itself declared the transaction READ ONLY)"
        ),
    ),
    Rule(
        name="read_only_transaction",
        sqlstates=("25006",),
        kind=F,
        category=Category.PROGRAMMING,
        reason=(
            "the transaction was declared READ ONLY but tried to write; start it read-write, "
            "retrying cannot help"
        ),
    ),
    Rule(
        name="in_failed_transaction",
        sqlstates=("25P02",),
        kind=F,
        category=Category.MISUSE,
        reason=(
            "a statement ran in a transaction that had already failed; roll back after an "
            "error and retry the whole unit, never single statements"
        ),
    ),
    Rule(
        name="server_terminated_connection",
        sqlstates=("57P01", "57P02"),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the server terminated the connection (admin command, shutdown or crash); retry "
            "on a fresh connection (at COMMIT the outcome is unknown)"
        ),
    ),
    Rule(
        name="server_starting_or_stopping",
        sqlstates=("57P03",),
        kind=R,
        category=Category.SERVER_UNAVAILABLE,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the server is starting up, shutting down or in recovery; retry with backoff "
            "until it accepts connections"
        ),
    ),
    Rule(
        name="statement_timeout",
        sqlstates=("57014",),
        message=r"due to statement timeout",
        kind=R,
        at_commit=U,
        category=Category.STATEMENT_TIMEOUT,
        max_retries=1,
        reason=(
            "the server's statement_timeout cancelled the statement; retry at most once "
            "(a slow plan or a lock wait may pass on a second try, a third would repeat "
            "it): make the statement faster or raise statement_timeout"
        ),
    ),
    Rule(
        name="admin_cancel",
        sqlstates=("57014",),
        message=r"due to user request",
        predicate=_not_own_cancel,
        when="own_timeout is not True",
        kind=F,
        at_commit=U,
        category=Category.ADMIN_CANCEL,
        reason=(
            "an administrator or another session cancelled the statement "
            "(pg_cancel_backend); not retried: the cancel was deliberate, retrying would "
            "undo it (at COMMIT the outcome is unknown)"
        ),
    ),
    Rule(
        name="query_canceled_by_others",
        sqlstates=("57014",),
        predicate=_not_own_timeout,
        when="own_timeout is False",
        kind=F,
        at_commit=U,
        category=Category.TIMEOUT,
        reason=(
            "the statement was cancelled by a limit or a session that is not ours; "
            "retrying repeats it: raise the limit or make the statement faster"
        ),
    ),
    Rule(
        name="query_canceled",
        sqlstates=("57014",),
        kind=R,
        at_commit=U,
        category=Category.TIMEOUT,
        counts_toward_breaker=True,
        reason=(
            "the statement was cancelled by a timeout; retry if the deadline allows (at "
            "COMMIT the outcome is unknown)"
        ),
    ),
    Rule(
        name="database_dropped",
        sqlstates=("57P04",),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the database was dropped; point the application at an existing database",
    ),
    Rule(
        name="connection_exception",
        sqlstates=("08",),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    Rule(
        name="insufficient_resources",
        sqlstates=("53",),
        kind=R,
        category=Category.OVERLOAD,
        counts_toward_breaker=True,
        reason=(
            "the server is out of a resource (too many connections, memory, disk); retry "
            "with backoff and reduce pool sizes or load"
        ),
    ),
    Rule(
        name="authentication",
        sqlstates=("28",),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason=(
            "the server rejected the credentials (wrong password, unknown role or "
            "pg_hba.conf); fix the user name or password in the URL"
        ),
    ),
    Rule(
        name="unknown_database",
        sqlstates=("3D000",),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the database named in the URL does not exist; fix the URL or create it",
    ),
    Rule(
        name="integrity_violation",
        sqlstates=("23",),
        kind=F,
        category=Category.INTEGRITY,
        reason=(
            "a constraint (unique, foreign key, not null, check, exclusion) rejected the "
            "data; fix the data or handle the conflict, retrying cannot help"
        ),
    ),
    Rule(
        name="data_exception",
        sqlstates=("22",),
        kind=F,
        category=Category.DATA,
        reason=(
            "a value is invalid for its type or operation (bad input, division by zero, "
            "overflow); fix the data, retrying cannot help"
        ),
    ),
    Rule(
        name="syntax_or_access",
        sqlstates=("42", "0A", "54", "2B", "3F"),
        kind=F,
        category=Category.PROGRAMMING,
        reason=_PROGRAMMING,
    ),
    # -- asyncpg client-side errors (no server SQLSTATE) -----------------------------------
    Rule(
        name="asyncpg_connection_lost",
        types=(f"{_ASYNCPG}ConnectionDoesNotExistError", f"{_ASYNCPG}ConnectionFailureError"),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    Rule(
        name="asyncpg_connection_closed",
        types=(f"{_ASYNCPG}_base.InterfaceError",),
        message=r"connection (?:is|was) closed|connection is closing",
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the connection was already closed (the server ended it while idle, e.g. "
            "idle_in_transaction_session_timeout or a terminated backend); retry on a fresh "
            "connection (at COMMIT the outcome is unknown)"
        ),
    ),
    Rule(
        name="asyncpg_concurrent_use",
        types=(f"{_ASYNCPG}_base.InterfaceError",),
        message=r"another operation is in progress|released back to the pool",
        kind=F,
        category=Category.MISUSE,
        reason=_MISUSE,
    ),
    Rule(
        name="asyncpg_bad_argument",
        types=(f"{_ASYNCPG}DataError", f"{_ASYNCPG}_base.DataError"),
        kind=F,
        category=Category.DATA,
        reason=(
            "a query argument has the wrong Python type for its parameter; convert it "
            "before binding, retrying cannot help"
        ),
    ),
    Rule(
        name="asyncpg_client_configuration",
        types=(f"{_ASYNCPG}_base.ClientConfigurationError",),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the connection options are invalid; fix the URL or connect arguments",
    ),
    Rule(
        name="asyncpg_wrong_server_role",
        types=(f"{_ASYNCPG}_base.TargetServerAttributeNotMatched",),
        kind=R,
        category=Category.FAILOVER,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the server reached does not have the requested role (target_session_attrs); "
            "retry after the failover completes"
        ),
    ),
    Rule(
        name="asyncpg_protocol_state",
        types=(f"{_ASYNCPG}_base.InternalClientError",),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the driver's connection state is broken (seen when the server closed the "
            "connection while idle); discard the connection and retry on a fresh one"
        ),
    ),
    # -- psycopg errors without SQLSTATE (connect errors carry only a message) ------------
    Rule(
        name="psycopg_authentication",
        types=(_PSYCOPG_OPERATIONAL,),
        message=(
            r"password authentication failed|authentication failed for user|"
            r"role \S+ does not exist|no pg_hba\.conf entry|pg_hba\.conf rejects|"
            r"password is required|"
            r"permission denied for database"
        ),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason=(
            "the server rejected the credentials (wrong password, unknown role or "
            "pg_hba.conf); fix the user name or password in the URL"
        ),
    ),
    Rule(
        name="psycopg_unknown_database",
        types=(_PSYCOPG_OPERATIONAL,),
        message=r"database \S+ does not exist",
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the database named in the URL does not exist; fix the URL or create it",
    ),
    Rule(
        name="psycopg_too_many_connections",
        types=(_PSYCOPG_OPERATIONAL,),
        message=r"too many connections|too many clients|connection slots are reserved",
        kind=R,
        category=Category.OVERLOAD,
        counts_toward_breaker=True,
        reason=(
            "the server or role has no connection slot free; retry with backoff and reduce "
            "pool sizes or raise the limit"
        ),
    ),
    Rule(
        name="psycopg_server_unavailable",
        types=(_PSYCOPG_OPERATIONAL,),
        message=(
            r"the database system is (?:starting up|shutting down|in recovery mode|"
            r"not (?:yet )?accepting connections)"
        ),
        kind=R,
        category=Category.SERVER_UNAVAILABLE,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=(
            "the server is starting up, shutting down or in recovery; retry with backoff "
            "until it accepts connections"
        ),
    ),
    Rule(
        name="psycopg_dns_try_again",
        types=(_PSYCOPG_OPERATIONAL,),
        message=r"temporary failure in name resolution|\[Errno -3\]",
        kind=R,
        category=Category.CONNECT_FAILED,
        counts_toward_breaker=True,
        reason="the host name could not be resolved right now (DNS); retry with backoff",
    ),
    Rule(
        name="psycopg_unknown_host",
        types=(_PSYCOPG_OPERATIONAL,),
        message=(
            r"failed to resolve host|could not translate host name|"
            r"name or service not known|nodename nor servname"
        ),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the host name in the URL does not exist; fix the host name",
    ),
    Rule(
        name="psycopg_connect_failed",
        types=(_PSYCOPG_OPERATIONAL,),
        message=(
            r"connection refused|connection failed|could not connect|timeout expired|"
            r"no route to host|network is unreachable"
        ),
        kind=R,
        category=Category.CONNECT_FAILED,
        counts_toward_breaker=True,
        reason=_CONNECT,
    ),
    Rule(
        name="psycopg_connection_lost",
        types=(_PSYCOPG_OPERATIONAL,),
        predicate=_no_sqlstate,
        when="no server SQLSTATE",
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    # -- OS and network errors (raw at connect time under SQLAlchemy 2.0) -----------------
    Rule(
        name="dns_try_again",
        types=(socket.gaierror,),
        predicate=_dns_try_again,
        when="errno EAI_AGAIN",
        kind=R,
        category=Category.CONNECT_FAILED,
        counts_toward_breaker=True,
        reason="the host name could not be resolved right now (DNS); retry with backoff",
    ),
    Rule(
        name="unknown_host",
        types=(socket.gaierror,),
        kind=F,
        category=Category.CONFIG,
        counts_toward_breaker=True,
        reason="the host name in the URL does not exist; fix the host name",
    ),
    Rule(
        name="connection_refused",
        types=(ConnectionRefusedError,),
        kind=R,
        category=Category.CONNECT_FAILED,
        counts_toward_breaker=True,
        reason=_CONNECT,
    ),
    Rule(
        name="connect_call_failed",
        types=(OSError,),
        message=r"^Multiple exceptions: |Connect call failed",
        kind=R,
        category=Category.CONNECT_FAILED,
        counts_toward_breaker=True,
        reason=_CONNECT,
    ),
    Rule(
        name="client_timeout",
        types=(TimeoutError,),
        kind=R,
        at_commit=U,
        category=Category.TIMEOUT,
        counts_toward_breaker=True,
        reason=(
            "a client-side timeout expired (connect, command or deadline); retry if time "
            "remains (at COMMIT the outcome is unknown)"
        ),
    ),
    Rule(
        name="network_error",
        types=(ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    Rule(
        name="network_errno",
        types=(OSError,),
        predicate=_network_errno,
        when="errno is a network error (ENETUNREACH, EHOSTUNREACH, ECONNRESET...)",
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    # -- SQLAlchemy ------------------------------------------------------------------------
    Rule(
        name="sqlalchemy_disconnect",
        types=(f"{_SA}DisconnectionError",),
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    Rule(
        name="sqlalchemy_invalidated",
        types=(f"{_SA}DBAPIError",),
        predicate=_sa_invalidated,
        when="connection_invalidated is True (the dialect saw a disconnect)",
        kind=R,
        at_commit=U,
        category=Category.CONNECTION_LOST,
        counts_toward_breaker=True,
        invalidate_pool=True,
        reason=_LOST,
    ),
    Rule(
        name="sqlalchemy_misuse",
        types=(f"{_SA}PendingRollbackError", f"{_SA}InvalidRequestError"),
        kind=F,
        category=Category.MISUSE,
        reason=_MISUSE,
    ),
    Rule(
        name="sqlalchemy_programming",
        types=(f"{_SA}ArgumentError", f"{_SA}CompileError", f"{_SA}NoReferenceError"),
        kind=F,
        category=Category.PROGRAMMING,
        reason=_PROGRAMMING,
    ),
    # -- DB-API classes without SQLSTATE (client-side driver errors) -----------------------
    Rule(
        name="dbapi_integrity",
        types=(f"{_SA}IntegrityError", "psycopg.IntegrityError"),
        kind=F,
        category=Category.INTEGRITY,
        reason="a constraint rejected the data; fix the data, retrying cannot help",
    ),
    Rule(
        name="dbapi_data",
        types=(f"{_SA}DataError", "psycopg.DataError"),
        kind=F,
        category=Category.DATA,
        reason="a value is invalid for its type; fix the data, retrying cannot help",
    ),
    Rule(
        name="dbapi_programming",
        types=(
            f"{_SA}ProgrammingError",
            f"{_SA}NotSupportedError",
            "psycopg.ProgrammingError",
            "psycopg.NotSupportedError",
        ),
        kind=F,
        category=Category.PROGRAMMING,
        reason=_PROGRAMMING,
    ),
    Rule(
        name="dbapi_interface",
        types=("psycopg.InterfaceError",),
        kind=F,
        category=Category.MISUSE,
        reason=_MISUSE,
    ),
)
"""The default rules, in the order they are tried (rendered in docs/classifier-rules.md)."""
