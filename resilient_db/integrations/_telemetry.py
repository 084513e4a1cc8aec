"""What the telemetry integrations measure, independent of OpenTelemetry or Prometheus.

One table of metrics (:data:`METRICS`, OpenTelemetry names and units), the translation of
:class:`~resilient_db.UnitEvent` and :class:`~resilient_db.BreakerEvent` into measurements
(:func:`measurements`, :func:`transition`), and the readings taken at collection time from
the breaker, the retry budget, the pool and the units' fair queue in front of it
(:func:`observations`). The OpenTelemetry and the Prometheus modules are two back ends of this
one table.

The pool metrics follow the OpenTelemetry database-client conventions. SQLAlchemy's pool
tells neither how many callers wait nor how long they waited, but the units' queue
(:class:`~resilient_db.units.Gate`) does: ``db.client.connection.pending_requests`` is the
number of units waiting in it now, and ``db.client.connection.wait_time`` records, per unit
that had to queue, the seconds until it got its place (a unit that got a place at once is not
recorded, so the happy path stays free; a wait that timed out is counted by
``db.client.connection.timeouts`` instead). Code that uses the engine outside units is not
seen by either.

Metric attributes are low-cardinality facts only — unit name, outcome, error type and
category, breaker name and state — never SQL text, parameters, an xid or a backend pid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from resilient_db.engine import endpoint_key
from resilient_db.policies import BreakerEvent, BreakerState, CircuitBreaker, RetryBudget
from resilient_db.units import Database, Gate, UnitEvent

__all__ = [
    "METRICS",
    "WAIT_TIME",
    "Instrumentation",
    "MetricSpec",
    "Watched",
    "measurements",
    "observations",
    "transition",
]

Kind = Literal["counter", "histogram", "gauge", "observable_counter"]

UNIT: Final = "resilient_db.unit"
OUTCOME: Final = "resilient_db.outcome"
CATEGORY: Final = "resilient_db.error.category"
BREAKER: Final = "resilient_db.breaker.name"
STATE: Final = "resilient_db.breaker.state"
ERROR_TYPE: Final = "error.type"
POOL_NAME: Final = "db.client.connection.pool.name"
CONN_STATE: Final = "db.client.connection.state"
WAIT_TIME: Final = "db.client.connection.wait_time"

#: Histogram bucket boundaries (seconds): 1 ms .. 30 s.
SECONDS_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricSpec:
    """One metric: OpenTelemetry ``name``, ``kind``, UCUM ``unit``, its attribute keys."""

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...]


def _spec(name: str, kind: Kind, unit: str, description: str, *attributes: str) -> MetricSpec:
    return MetricSpec(
        name=name, kind=kind, unit=unit, description=description, attributes=attributes
    )


METRICS: Final[dict[str, MetricSpec]] = {
    s.name: s
    for s in (
        _spec(
            "resilient_db.unit.duration", "histogram", "s",
            "Duration of units of work, all attempts and backoff sleeps included",
            UNIT, OUTCOME, ERROR_TYPE,
        ),
        _spec(
            "resilient_db.unit.retries", "counter", "{retry}",
            "Retries of units of work (attempts after the first)", UNIT, CATEGORY,
        ),
        _spec(
            "resilient_db.retry.delay", "histogram", "s",
            "Backoff slept before a retry", UNIT, CATEGORY,
        ),
        _spec(
            "resilient_db.commit.resolutions", "counter", "{resolution}",
            "COMMITs whose connection was lost, by what the server said", UNIT, OUTCOME,
        ),
        _spec(
            "resilient_db.breaker.transitions", "counter", "{transition}",
            "Circuit breaker state changes", BREAKER, "resilient_db.breaker.from_state", STATE,
            "resilient_db.breaker.reason",
        ),
        _spec(
            "resilient_db.breaker.state", "gauge", "{state}",
            "1 for the breaker's current state, 0 for the others", BREAKER, STATE,
        ),
        _spec(
            "resilient_db.breaker.rejections", "observable_counter", "{call}",
            "Calls refused by an open breaker without I/O", BREAKER,
        ),
        _spec(
            "resilient_db.breaker.probes", "observable_counter", "{probe}",
            "Health-check probes run by an open breaker, by outcome", BREAKER, OUTCOME,
        ),
        _spec(
            "resilient_db.retry_budget.tokens", "gauge", "{token}",
            "Retry tokens available in the budget", POOL_NAME,
        ),
        _spec(
            "resilient_db.retry_budget.exhausted", "observable_counter", "{retry}",
            "Retries refused because the retry budget was empty", POOL_NAME,
        ),
        _spec(
            "db.client.connection.count", "gauge", "{connection}",
            "Connections in the pool, by state (idle, used)", POOL_NAME, CONN_STATE,
        ),
        _spec(
            "db.client.connection.timeouts", "counter", "{timeout}",
            "Attempts that timed out waiting for a pooled connection", POOL_NAME,
        ),
        _spec(
            "db.client.connection.pending_requests", "gauge", "{request}",
            "Units of work waiting for a connection of the pool", POOL_NAME,
        ),
        _spec(
            WAIT_TIME, "histogram", "s",
            "Time a unit of work that had to queue waited for a connection of the pool",
            POOL_NAME,
        ),
        _spec(
            "db.client.connection.max", "gauge", "{connection}",
            "Connections the pool opens at most (pool_size + max_overflow)", POOL_NAME,
        ),
        _spec(
            "db.client.connection.idle.max", "gauge", "{connection}",
            "Idle connections the pool keeps at most (pool_size)", POOL_NAME,
        ),
    )
}  # fmt: skip


Measurement = tuple[MetricSpec, float, dict[str, str]]


def _unit(event: UnitEvent) -> str:
    return event.name or "unnamed"


def measurements(event: UnitEvent, pool_name: str) -> Iterator[Measurement]:
    """The measurements one unit event makes."""
    name = event.event
    if name == "unit.finished":
        outcome = event.outcome or ("error" if event.error_type else "ok")
        attrs = {UNIT: _unit(event), OUTCOME: outcome}
        if event.error_type:
            attrs[ERROR_TYPE] = event.error_type
        yield METRICS["resilient_db.unit.duration"], event.elapsed, attrs
    elif name == "retry.scheduled":
        attrs = {UNIT: _unit(event), CATEGORY: str(event.category or "unknown")}
        yield METRICS["resilient_db.unit.retries"], 1, attrs
        if event.sleep is not None:
            yield METRICS["resilient_db.retry.delay"], event.sleep, attrs
    elif name == "commit.resolved":
        attrs = {UNIT: _unit(event), OUTCOME: str(event.outcome or "unknown")}
        yield METRICS["resilient_db.commit.resolutions"], 1, attrs
    elif name == "unit.attempt_failed" and event.category == "pool_exhausted":
        yield METRICS["db.client.connection.timeouts"], 1, {POOL_NAME: pool_name}


def transition(event: BreakerEvent) -> Measurement:
    """The measurement of one breaker transition."""
    return (
        METRICS["resilient_db.breaker.transitions"],
        1,
        {
            BREAKER: event.name,
            "resilient_db.breaker.from_state": event.previous.value,
            STATE: event.state.value,
            "resilient_db.breaker.reason": event.reason.split(":", 1)[0],
        },
    )


@dataclass(slots=True)
class Watched:
    """What the observable metrics read at collection time."""

    pool_name: str
    engine: AsyncEngine | None = None
    breaker: CircuitBreaker | None = None
    budget: RetryBudget | None = None
    gate: Gate | None = None  # the units' queue in front of the pool (None: no queue pool)


def _pool(watched: Watched, name: str) -> Iterator[Measurement]:
    engine = watched.engine
    pool: Any = engine.pool if engine is not None else None
    attrs = {POOL_NAME: watched.pool_name}
    if name == "db.client.connection.count":
        checkedin = getattr(pool, "checkedin", None)
        checkedout = getattr(pool, "checkedout", None)
        if callable(checkedin) and callable(checkedout):  # QueuePool & co (not NullPool)
            spec = METRICS[name]
            yield spec, float(checkedin()), {**attrs, CONN_STATE: "idle"}
            yield spec, float(checkedout()), {**attrs, CONN_STATE: "used"}
    elif name == "db.client.connection.idle.max":
        if isinstance(pool, QueuePool):  # overflow connections are closed when returned
            yield METRICS[name], float(pool.size()), attrs
    elif watched.gate is not None:
        stats = watched.gate.statistics()
        if name == "db.client.connection.pending_requests":
            yield METRICS[name], float(stats.waiting), attrs
        elif name == "db.client.connection.max":
            yield METRICS[name], float(stats.capacity), attrs


def observations(watched: Watched, name: str) -> Iterator[Measurement]:
    """The current readings of the observable metric ``name``."""
    if name.startswith("db.client.connection."):
        yield from _pool(watched, name)
        return
    breaker, budget = watched.breaker, watched.budget
    if breaker is not None and name.startswith("resilient_db.breaker."):
        stats = breaker.statistics()
        attrs = {BREAKER: stats.name}
        if name == "resilient_db.breaker.state":
            for state in BreakerState:
                value = 1.0 if stats.state is state else 0.0
                yield METRICS[name], value, {**attrs, STATE: state.value}
        elif name == "resilient_db.breaker.rejections":
            yield METRICS[name], float(stats.rejected_total), attrs
        elif name == "resilient_db.breaker.probes":
            failed = stats.probe_failures
            yield METRICS[name], float(stats.probes - failed), {**attrs, OUTCOME: "success"}
            yield METRICS[name], float(failed), {**attrs, OUTCOME: "failure"}
    if budget is not None and name.startswith("resilient_db.retry_budget."):
        b = budget.statistics()
        value = b.tokens if name.endswith("tokens") else float(b.refused)
        yield METRICS[name], value, {POOL_NAME: watched.pool_name}


def pool_name(engine: AsyncEngine) -> str:
    """``host:port/database`` of ``engine`` (its breaker's endpoint; never the user or the
    password)."""
    return str(endpoint_key(engine))


class Instrumentation(Protocol):
    """A telemetry integration: a unit listener that also watches its ``Database``."""

    def __call__(self, event: UnitEvent, /) -> None: ...

    def watch(self, database: Database) -> None: ...
