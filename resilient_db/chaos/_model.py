"""The chaos engine's data model: workloads, operations, invariants, records and checks.

A :class:`Workload` is what a user points the engine at: how their application builds its
:class:`~resilient_db.Database` (their production factory), the operations to call (their
repository methods or service calls), how to create and drop their tables, how to count what
each operation left in the database, and their own :class:`Invariant` checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from resilient_db.units import Database

__all__ = [
    "Check",
    "Evidence",
    "Invariant",
    "LeakState",
    "OpRecord",
    "Operation",
    "Outcome",
    "Workload",
    "WorkloadContext",
    "WorkloadFactory",
]

#: What the caller was told: returned, raised, ``CommitOutcomeUnknown``, or never returned.
Outcome = Literal["acknowledged", "failed", "unknown", "hung"]


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadContext:
    """Given to a workload factory, once per scenario.

    ``prefix`` contains the run id: name every table you create after it (``{prefix}_orders``)
    so the run only touches its own tables. ``url`` is the database URL the application must
    use (through the fault proxy or pooler; password kept); ``application_name`` is what the
    engine should send so leaked server sessions can be counted.
    """

    run_id: str
    scenario: str
    prefix: str
    url: str
    application_name: str
    deadline: float
    driver: str
    #: Concurrent calls per process (size the pool for it).
    concurrency: int = 8
    #: The URL points at a PgBouncer in transaction-pooling mode (pass ``pgbouncer=True``).
    pgbouncer: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation:
    """One thing the application does: ``call(db, op_id)``.

    ``op_id`` is a fresh unique id the engine picked (use it as your idempotency key / request
    id). Return it (or the id you stored) to let the built-in invariants follow the operation;
    ``weight`` is the relative share of calls.
    """

    name: str
    call: Callable[[Database, str], Awaitable[object]]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not callable(self.call):
            raise TypeError(f"operation {self.name!r}: call must be an async callable")
        if not self.weight > 0:
            raise ValueError(f"operation {self.name!r}: weight must be > 0, got {self.weight!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """The verdict of one invariant or expectation."""

    name: str
    passed: bool
    detail: str
    offenders: tuple[str, ...] = ()
    #: ``builtin`` (the engine's), ``workload`` (the user's) or ``scenario`` (expectations).
    source: str = "builtin"


@dataclass(frozen=True, kw_only=True, slots=True)
class OpRecord:
    """What happened to one call, as seen by the caller (seconds since the scenario origin)."""

    op: str
    operation: str
    worker: int
    started: float
    ended: float
    outcome: Outcome
    error_type: str | None = None
    xid: int | None = None
    #: WAL timeline the xid was assigned on (an xid means nothing on another timeline).
    timeline: str | None = None
    #: The id the operation returned (``None``: it returned no string).
    returned: str | None = None
    #: Fleet worker process (0 outside the fleet scenario).
    process: int = 0

    @property
    def duration(self) -> float:
        """Seconds the call took (start to return or raise)."""
        return self.ended - self.started


@dataclass(frozen=True, kw_only=True, slots=True)
class LeakState:
    """Connections after a scenario: pool checked out, server sessions vs. the baseline."""

    pool_checked_out: int
    server_sessions: int
    baseline: int = 0
    waited: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Evidence:
    """Everything the invariants look at once the workload stopped."""

    records: Sequence[OpRecord]
    #: Rows per operation id in the database (``None``: the workload cannot tell).
    applied: Mapping[str, int] | None
    leaks: LeakState
    deadline: float
    allowance: float
    fault_start: float
    fault_end: float
    #: ``pg_xact_status`` per unknown op id (``None``: the server could not say).
    xact_status: Mapping[str, str | None] = field(default_factory=dict)
    #: Breaker state once the run settled (``None``: the Database has no breaker).
    breaker_state: str | None = None
    breaker_opens: int = 0

    def by_outcome(self, outcome: Outcome) -> list[OpRecord]:
        """The records with ``outcome``."""
        return [r for r in self.records if r.outcome == outcome]

    @property
    def counts(self) -> Counter[str]:
        """Rows per op id (empty when unknown)."""
        return Counter(dict(self.applied or {}))


class _Check(Protocol):
    def __call__(self, conn: AsyncConnection, evidence: Evidence, /) -> Awaitable[object]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Invariant:
    """A user's check over the database after the run.

    ``check(conn, evidence)`` gets a direct connection (not through the fault) and returns
    ``True``/``False``, ``(passed, detail)`` or a :class:`Check`.
    """

    name: str
    check: _Check


Hook = Callable[[AsyncConnection], Awaitable[None]]
Applied = Callable[[AsyncConnection], Awaitable[Mapping[str, int]]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """A user's application under chaos.

    * ``operations``: what to call (at least one);
    * ``database(url)``: builds the application's :class:`Database` exactly as production
      does (default: ``Database(create_async_engine(url, application_name=...))``);
    * ``setup`` / ``teardown``: create and drop the workload's tables (direct connection, in
      one transaction);
    * ``applied(conn)``: rows per operation id in the database — enables the built-in
      invariants (acknowledged exactly once, failed absent, no strays, unknown settled);
    * ``invariants``: the user's own checks.
    """

    name: str
    operations: Sequence[Operation]
    database: Callable[[str], Database] | None = None
    setup: Hook | None = None
    teardown: Hook | None = None
    applied: Applied | None = None
    invariants: Sequence[Invariant] = ()

    def __post_init__(self) -> None:
        if not self.operations:
            raise ValueError(f"workload {self.name!r} has no operations")
        names = [o.name for o in self.operations]
        if len(set(names)) != len(names):
            raise ValueError(f"workload {self.name!r}: operation names repeat: {names}")


#: ``module:factory`` target: called once per scenario with its :class:`WorkloadContext`.
WorkloadFactory = Callable[[WorkloadContext], Workload]
