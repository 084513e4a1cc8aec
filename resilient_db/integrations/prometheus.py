"""Prometheus metrics for units of work, with ``prometheus_client``.

The same metrics as :mod:`resilient_db.integrations.otel`, named by the OpenTelemetry →
Prometheus rules: dots become underscores, the unit is a suffix (``_seconds``), counters end
in ``_total``; attribute keys become label names the same way::

    resilient_db_unit_duration_seconds{resilient_db_unit="orders.place",...}
    resilient_db_unit_retries_total, resilient_db_retry_delay_seconds,
    resilient_db_breaker_state, resilient_db_breaker_transitions_total,
    resilient_db_breaker_rejections_total, resilient_db_breaker_probes_total,
    resilient_db_retry_budget_tokens, resilient_db_retry_budget_exhausted_total,
    resilient_db_commit_resolutions_total, db_client_connection_count,
    db_client_connection_timeouts_total, db_client_connection_pending_requests,
    db_client_connection_wait_time_seconds, db_client_connection_max,
    db_client_connection_idle_max

Install with ``pip install 'resilient-db[prometheus]'``::

    metrics = PrometheusMetrics(engine)            # registers in prometheus_client.REGISTRY
    db = Database(engine, listeners=[metrics])
    metrics.watch(db)
    app.mount("/metrics", metrics_app())           # any ASGI app; or start_http_server()

or ``database_lifespan(url, instrument=[PrometheusMetrics])`` in a web app.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._validate import check_type
from resilient_db.integrations._telemetry import (
    METRICS,
    POOL_NAME,
    SECONDS_BUCKETS,
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

__all__ = ["PrometheusMetrics", "metrics_app", "prometheus_name"]

_UNITS: Final = {"s": "seconds", "By": "bytes"}


def prometheus_name(spec: MetricSpec) -> str:
    """The Prometheus name of ``spec`` (without the ``_total`` a counter adds)."""
    name = spec.name.replace(".", "_")
    suffix = _UNITS.get(spec.unit)
    return f"{name}_{suffix}" if suffix and not name.endswith(suffix) else name


def _label(key: str) -> str:
    return key.replace(".", "_")


def _labels(spec: MetricSpec, attrs: dict[str, str]) -> dict[str, str]:
    return {_label(k): str(attrs.get(k, "")) for k in spec.attributes}


class _Observed:
    """One collector per registry for the read-at-scrape metrics of every instance."""

    def __init__(self) -> None:
        self.watched: weakref.WeakSet[PrometheusMetrics] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        for spec in METRICS.values():
            if spec.kind not in ("gauge", "observable_counter"):
                continue
            name = prometheus_name(spec)
            labels = [_label(k) for k in spec.attributes]
            family: GaugeMetricFamily | CounterMetricFamily
            if spec.kind == "gauge":
                family = GaugeMetricFamily(name, spec.description, labels=labels)
            else:
                family = CounterMetricFamily(name, spec.description, labels=labels)
            for instance in list(self.watched):
                for _, value, attrs in observations(instance._watched, spec.name):
                    family.add_metric([_labels(spec, attrs)[label] for label in labels], value)
            yield family


class _Shared:
    """The instruments of one registry, shared by every instance that uses it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instruments: dict[str, Any] = {}
        for spec in METRICS.values():
            labels = [_label(k) for k in spec.attributes]
            name = prometheus_name(spec)
            if spec.kind == "counter":
                self.instruments[spec.name] = Counter(
                    name, spec.description, labels, registry=registry
                )
            elif spec.kind == "histogram":
                self.instruments[spec.name] = Histogram(
                    name, spec.description, labels, registry=registry, buckets=SECONDS_BUCKETS
                )
        self.observed = _Observed()
        registry.register(self.observed)


_shared: weakref.WeakKeyDictionary[CollectorRegistry, _Shared] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _for(registry: CollectorRegistry) -> _Shared:
    with _lock:
        shared = _shared.get(registry)
        if shared is None:
            shared = _shared[registry] = _Shared(registry)
        return shared


class PrometheusMetrics:
    """Metrics for the units of work of one ``Database`` on ``engine``, in ``registry``
    (default: ``prometheus_client.REGISTRY``). Several instances (one per database) share
    the registry's metrics; ``close()`` stops reporting this one's pool, breaker and budget.
    """

    def __init__(self, engine: AsyncEngine, *, registry: CollectorRegistry = REGISTRY) -> None:
        check_type(
            "PrometheusMetrics",
            "engine",
            engine,
            AsyncEngine,
            fix="pass the Database's engine: PrometheusMetrics(db.engine)",
        )
        self._watched = Watched(
            pool_name=pool_name(engine), engine=engine, gate=shared_gate(engine)
        )
        self._listening: CircuitBreaker | None = None
        self._shared = _for(registry)
        self._shared.observed.watched.add(self)
        # the queue's waits, straight into the histogram (the listener holds no reference to
        # this instance, which the scrape watches weakly); removed by close()
        wait_time = self._shared.instruments[WAIT_TIME]
        self._on_wait: WaitListener = wait_time.labels(
            **{_label(POOL_NAME): self._watched.pool_name}
        ).observe
        if self._watched.gate is not None:
            self._watched.gate.add_wait_listener(self._on_wait)

    def watch(self, database: Database) -> None:
        """Report ``database``'s breaker and retry budget too."""
        self._watched.breaker = database.breaker
        self._watched.budget = database.budget
        breaker = database.breaker
        if breaker is not None and breaker is not self._listening:
            breaker.add_listener(self.on_breaker)  # once per breaker: no double counting
            self._listening = breaker

    def on_breaker(self, event: BreakerEvent) -> None:
        """Breaker listener: counts the transition."""
        self._record(*transition(event))

    def __call__(self, event: UnitEvent) -> None:
        for spec, value, attrs in measurements(event, self._watched.pool_name):
            self._record(spec, value, attrs)

    def _record(self, spec: MetricSpec, value: float, attrs: dict[str, str]) -> None:
        child = self._shared.instruments[spec.name].labels(**_labels(spec, attrs))
        if spec.kind == "counter":
            child.inc(value)
        else:
            child.observe(value)

    def close(self) -> None:
        """Stop reading this instance's pool, breaker and budget at scrape time, and stop
        listening to the breaker it watched and to the pool's queue."""
        self._shared.observed.watched.discard(self)
        if self._watched.gate is not None:
            self._watched.gate.remove_wait_listener(self._on_wait)
        if self._listening is not None:
            self._listening.remove_listener(self.on_breaker)
            self._listening = None


def metrics_app(registry: CollectorRegistry = REGISTRY) -> Callable[..., Any]:
    """An ASGI app serving ``registry`` in the Prometheus text format (mount it at
    ``/metrics``)."""
    app: Callable[..., Any] = make_asgi_app(registry)
    return app
