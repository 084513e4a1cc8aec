"""OpenTelemetry for units of work: one span per unit, metrics on the ``resilient_db`` meter.

Needs only ``opentelemetry-api`` (``pip install 'resilient-db[otel]'``); the application
configures the SDK and its exporters as usual::

    telemetry = OpenTelemetry(engine)             # global tracer and meter providers
    db = Database(engine, listeners=[telemetry])  # unit events: spans, retries, commits
    telemetry.watch(db)                           # breaker transitions, breaker/budget gauges

or ``database_lifespan(url, instrument=[OpenTelemetry])`` in a web app.

**Spans.** One span per unit of work covering all its attempts and backoff sleeps, kind
INTERNAL, named after the unit (``Database(name=...)``, ``@transactional``'s qualified name,
``with_options(name=...)``), with ``db.system.name``, ``db.namespace``, ``server.address``,
``server.port``, ``error.type``, ``db.response.status_code`` (the last SQLSTATE) and
``resilient_db.*`` attributes: ``attempts``, ``error.kind``, ``error.category``,
``breaker.name``, ``breaker.state``, ``commit.outcome``; one ``resilient_db.attempt_failed``
event per failed attempt. Spans start and end on the ``unit.started`` and ``unit.finished``
events of each outermost unit.

**Metrics.** See :data:`resilient_db.integrations._telemetry.METRICS`: unit duration,
retries, retry delay, breaker state/transitions/rejections/probes, retry-budget tokens and
refusals, commit resolutions, pool connections by state, pool timeouts, units waiting for a
connection (``db.client.connection.pending_requests``), their wait
(``db.client.connection.wait_time``) and the pool's limits (``db.client.connection.max``,
``db.client.connection.idle.max``). Attributes never hold SQL, parameters, an xid or a pid.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._validate import check_type
from resilient_db.engine import endpoint_key
from resilient_db.integrations._telemetry import (
    METRICS,
    POOL_NAME,
    WAIT_TIME,
    MetricSpec,
    Watched,
    measurements,
    observations,
    pool_name,
    transition,
)
from resilient_db.policies import BreakerEvent, CircuitBreaker
from resilient_db.units import Database, UnitEvent, WaitListener, shared_gate

__all__ = ["SCOPE", "OpenTelemetry"]

#: Instrumentation scope (tracer and meter name).
SCOPE: Final = "resilient_db"


@dataclass(slots=True)
class _Open:
    """The span of the unit running in this context, and what its events told so far."""

    span: trace.Span
    token: object
    failures: int = 0
    last: UnitEvent | None = None
    commit: str | None = None


class OpenTelemetry:
    """Spans and metrics for the units of work of one ``Database`` on ``engine``.

    ``tracer_provider`` / ``meter_provider`` default to the global ones. Call
    :meth:`watch` with the ``Database`` for its breaker and retry budget.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        check_type(
            "OpenTelemetry",
            "engine",
            engine,
            AsyncEngine,
            fix="pass the Database's engine: OpenTelemetry(db.engine)",
        )
        endpoint = endpoint_key(engine)  # multi-host URLs too
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._watched = Watched(
            pool_name=pool_name(engine), engine=engine, gate=shared_gate(engine)
        )
        self._listening: CircuitBreaker | None = None
        self._base: dict[str, Any] = {
            "db.system.name": "postgresql",
            "db.namespace": endpoint.database,
            "server.address": endpoint.host,
            "server.port": endpoint.port,
        }
        self._open: contextvars.ContextVar[_Open | None] = contextvars.ContextVar(
            f"resilient_db_otel_{id(self)}", default=None
        )
        self._instruments: dict[str, Any] = {}
        for spec in METRICS.values():
            self._instruments[spec.name] = self._create(meter, spec)
        # the queue's waits, straight into the histogram (the listener holds no reference to
        # this instance); removed by close()
        self._on_wait: WaitListener = functools.partial(
            self._instruments[WAIT_TIME].record, attributes={POOL_NAME: self._watched.pool_name}
        )
        if self._watched.gate is not None:
            self._watched.gate.add_wait_listener(self._on_wait)

    def _create(self, meter: metrics.Meter, spec: MetricSpec) -> Any:
        if spec.kind == "counter":
            return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
        if spec.kind == "histogram":
            return meter.create_histogram(spec.name, unit=spec.unit, description=spec.description)
        callback = self._callback(spec.name)
        if spec.kind == "gauge":
            return meter.create_observable_gauge(
                spec.name, callbacks=[callback], unit=spec.unit, description=spec.description
            )
        return meter.create_observable_counter(
            spec.name, callbacks=[callback], unit=spec.unit, description=spec.description
        )

    def _callback(
        self, name: str
    ) -> Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]:
        def observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            return [
                metrics.Observation(value, attrs)
                for _, value, attrs in observations(self._watched, name)
            ]

        return observe

    def watch(self, database: Database) -> None:
        """Observe ``database``'s breaker (transitions, state, rejections, probes) and retry
        budget (tokens, refusals)."""
        self._watched.breaker = database.breaker
        self._watched.budget = database.budget
        breaker = database.breaker
        if breaker is not None and breaker is not self._listening:
            breaker.add_listener(self.on_breaker)  # once per breaker: no double counting
            self._listening = breaker

    def close(self) -> None:
        """Stop listening to the breaker it watched and to the pool's queue (both outlive a
        ``Database``)."""
        if self._watched.gate is not None:
            self._watched.gate.remove_wait_listener(self._on_wait)
        if self._listening is not None:
            self._listening.remove_listener(self.on_breaker)
            self._listening = None

    def on_breaker(self, event: BreakerEvent) -> None:
        """Breaker listener: counts the transition."""
        spec, value, attrs = transition(event)
        self._instruments[spec.name].add(value, attrs)

    # -- unit events -------------------------------------------------------------------

    def __call__(self, event: UnitEvent) -> None:
        for spec, value, attrs in measurements(event, self._watched.pool_name):
            instrument = self._instruments[spec.name]
            if spec.kind == "counter":
                instrument.add(value, attrs)
            else:
                instrument.record(value, attrs)
        name = event.event
        if name == "unit.started":
            self._start(event)
            return
        current = self._open.get()
        if current is None:
            return
        if name == "unit.finished":
            self._finish(current, event)
        elif name == "unit.attempt_failed":
            current.failures += 1
            current.last = event
            current.span.add_event(
                "resilient_db.attempt_failed",
                _clean(
                    {
                        "resilient_db.attempt": event.attempt,
                        "resilient_db.error.kind": event.kind,
                        "resilient_db.error.category": event.category,
                        "db.response.status_code": event.sqlstate,
                        "error.type": event.error_type,
                    }
                ),
            )
        elif name == "commit.resolved" or name == "commit.unknown":
            current.commit = event.outcome if name == "commit.resolved" else "unknown"

    def _start(self, event: UnitEvent) -> None:
        start = time.time_ns() - int(event.elapsed * 1e9)
        span = self._tracer.start_span(
            event.name or "resilient_db.unit",
            kind=SpanKind.INTERNAL,
            attributes={**self._base, "resilient_db.unit": event.name or "unnamed"},
            start_time=start,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._open.set(_Open(span=span, token=token))

    def _finish(self, current: _Open, event: UnitEvent) -> None:
        self._open.set(None)
        span = current.span
        last = current.last
        attrs: dict[str, Any] = {
            "resilient_db.attempts": event.attempt,
            "resilient_db.commit.outcome": current.commit,
            "error.type": event.error_type,
            "db.response.status_code": event.sqlstate or (last.sqlstate if last else None),
            "resilient_db.error.kind": event.kind or (last.kind if last else None),
            "resilient_db.error.category": event.category or (last.category if last else None),
        }
        breaker = self._watched.breaker
        if breaker is not None:
            attrs["resilient_db.breaker.name"] = breaker.name
            attrs["resilient_db.breaker.state"] = breaker.state.value
        span.set_attributes(_clean(attrs))
        if event.error_type:
            span.set_status(Status(StatusCode.ERROR, event.error_type))
        try:
            otel_context.detach(current.token)  # type: ignore[arg-type]
        finally:
            span.end()


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    # str() turns StrEnum members (the classifier's categories) into plain strings
    return {k: str(v) if isinstance(v, str) else v for k, v in attrs.items() if v is not None}
