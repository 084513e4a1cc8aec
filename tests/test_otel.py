"""OpenTelemetry: spans and metrics from real units of work (the SDK's in-memory exporters).

Three real units: one that retried once (a server-raised 40001 on its first attempt), one
refused by a breaker that real connection failures opened, and one whose COMMIT was cut
after the server committed (resolved as committed).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import (
    CircuitBreaker,
    CircuitOpenError,
    Database,
    RetryPolicy,
    UnitEvent,
    create_async_engine,
)
from tests._relay import relay_to
from tests._shop import shop_url  # noqa: F401  (the fixture)

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed (test extra)")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from resilient_db.integrations.otel import OpenTelemetry

T = TypeVar("T")
FAST = RetryPolicy(attempts=3, initial=0.01, max_backoff=0.02, deadline=None)


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def telemetry(self, engine: Any) -> OpenTelemetry:
        return OpenTelemetry(
            engine, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.reader.get_metrics_data()
        found = []
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "resilient_db"
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def table(admin_conn: psycopg.Connection[tuple[object, ...]], pg_dsn: str) -> Iterator[str]:
    name = f"rdb_otel_{secrets.token_hex(3)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (op text PRIMARY KEY)")
    try:
        yield name
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[Any]:
    eng = create_async_engine(pg_url, pool_size=2)
    try:
        yield eng
    finally:
        await eng.dispose()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_unit_that_retried_once(otel: Otel, engine: Any, pg_url: str) -> None:
    telemetry = otel.telemetry(engine)
    events: list[UnitEvent] = []
    db = Database(engine, retry=FAST, name="orders.place", listeners=[telemetry, events.append])
    telemetry.watch(db)
    calls = 0

    async def body(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # a real serialization failure, raised by the server
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'x'; END $$")
            )
        return int((await session.execute(text("SELECT 7"))).scalar_one())

    assert await db.run(body) == 7
    assert calls == 2
    span = _by_name(otel.spans.get_finished_spans(), "orders.place")
    attrs = dict(span.attributes or {})
    url = make_url(pg_url)
    assert span.kind is SpanKind.INTERNAL
    assert attrs["db.system.name"] == "postgresql"
    assert attrs["db.namespace"] == url.database
    assert attrs["server.address"] == url.host
    assert attrs["server.port"] == url.port
    assert attrs["resilient_db.attempts"] == 2
    assert attrs["db.response.status_code"] == "40001"
    assert attrs["resilient_db.error.category"] == "serialization"
    assert attrs["resilient_db.breaker.state"] == "closed"
    assert "error.type" not in attrs  # the unit succeeded
    assert span.status.status_code is not StatusCode.ERROR
    failures = [e for e in span.events if e.name == "resilient_db.attempt_failed"]
    assert len(failures) == 1
    assert dict(failures[0].attributes or {})["db.response.status_code"] == "40001"
    assert dict(failures[0].attributes or {})["resilient_db.attempt"] == 1

    retries = otel.points("resilient_db.unit.retries")
    assert [(a, p.value) for a, p in retries] == [
        (
            {"resilient_db.unit": "orders.place", "resilient_db.error.category": "serialization"},
            1,
        )
    ]
    (_delay_attrs, delay), *_ = otel.points("resilient_db.retry.delay")
    assert delay.count == 1
    assert delay.sum >= 0
    (duration_attrs, duration), *_ = otel.points("resilient_db.unit.duration")
    assert duration_attrs == {"resilient_db.unit": "orders.place", "resilient_db.outcome": "ok"}
    assert duration.count == 1
    state = {
        a["resilient_db.breaker.state"]: p.value
        for a, p in otel.points("resilient_db.breaker.state")
    }
    assert state["closed"] == 1
    assert state["open"] == 0
    pool = {
        a["db.client.connection.state"]: p.value
        for a, p in otel.points("db.client.connection.count")
    }
    assert pool["used"] == 0
    assert pool["idle"] >= 1
    (_tokens_attrs, tokens), *_ = otel.points("resilient_db.retry_budget.tokens")
    assert tokens.value > 0
    _assert_no_sensitive_attributes(otel)


async def test_unit_refused_by_an_open_breaker(otel: Otel, pg_url: str) -> None:
    # A port nobody listens on: real connection refusals open the breaker.
    dead = create_async_engine(make_url(pg_url).set(port=1), connect_timeout=2)
    try:
        telemetry = otel.telemetry(dead)
        events: list[UnitEvent] = []
        breaker = CircuitBreaker("dead-db", consecutive_failures=2, open_for=30)
        db = Database(
            dead,
            retry=RetryPolicy(attempts=2, initial=0.001, max_backoff=0.002, deadline=None),
            breaker=breaker,
            name="reports.read",
            listeners=[telemetry, events.append],
        )
        telemetry.watch(db)

        async def body(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))

        with pytest.raises(OSError):
            await db.run(body)
        assert breaker.state.value == "open"
        with pytest.raises(CircuitOpenError):
            await db.run(body)
    finally:
        await dead.dispose()
    first, refused = [s for s in otel.spans.get_finished_spans() if s.name == "reports.read"]
    attrs = dict(refused.attributes or {})
    assert attrs["error.type"] == "CircuitOpenError"
    assert attrs["resilient_db.breaker.name"] == "dead-db"
    assert attrs["resilient_db.breaker.state"] == "open"
    assert refused.status.status_code is StatusCode.ERROR
    assert dict(first.attributes or {})["resilient_db.error.category"] == "connect_failed"
    transitions = otel.points("resilient_db.breaker.transitions")
    assert [
        (a["resilient_db.breaker.from_state"], a["resilient_db.breaker.state"], p.value)
        for a, p in transitions
    ] == [("closed", "open", 1)]
    rejections = otel.points("resilient_db.breaker.rejections")
    assert [(a, p.value) for a, p in rejections] == [({"resilient_db.breaker.name": "dead-db"}, 1)]
    state = {
        a["resilient_db.breaker.state"]: p.value
        for a, p in otel.points("resilient_db.breaker.state")
    }
    assert state["open"] == 1
    errors = {a.get("error.type") for a, _ in otel.points("resilient_db.unit.duration")}
    assert "CircuitOpenError" in errors


async def test_unit_whose_commit_was_resolved(otel: Otel, table: str, pg_dsn: str) -> None:
    url = make_url(pg_dsn)
    async with relay_to(url.host or "127.0.0.1", url.port or 5432) as relay:
        proxied = url.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=relay.port)
        eng = create_async_engine(proxied, command_timeout=5)
        try:
            telemetry = otel.telemetry(eng)
            events: list[UnitEvent] = []
            db = Database(eng, retry=FAST, name="ops.record", listeners=[telemetry, events.append])
            telemetry.watch(db)

            async def insert(session: AsyncSession) -> str:
                await session.execute(text(f"INSERT INTO {table} VALUES ('c1')"))
                relay.cut_commit = "after"  # the server commits; the client never hears it
                return "done"

            assert await db.run(insert) == "done"
        finally:
            await eng.dispose()
    assert relay.cuts == 1
    span = _by_name(otel.spans.get_finished_spans(), "ops.record")
    attrs = dict(span.attributes or {})
    assert attrs["resilient_db.commit.outcome"] == "committed"
    assert attrs["resilient_db.attempts"] == 1
    assert [e.name for e in span.events] == ["resilient_db.attempt_failed"]
    resolutions = otel.points("resilient_db.commit.resolutions")
    assert [(a, p.value) for a, p in resolutions] == [
        ({"resilient_db.unit": "ops.record", "resilient_db.outcome": "committed"}, 1)
    ]
    _assert_no_sensitive_attributes(otel)


def _assert_no_sensitive_attributes(otel: Otel) -> None:
    data = otel.reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    keys = set(point.attributes or {})
                    assert not keys & {"xid", "db.query.text", "pid", "resilient_db.xid"}, keys
                    for value in (point.attributes or {}).values():
                        assert "INSERT" not in str(value)
                        assert "SELECT" not in str(value)


async def test_pool_timeouts_and_connections_by_state(otel: Otel, pg_url: str) -> None:
    eng = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        telemetry = otel.telemetry(eng)
        events: list[UnitEvent] = []
        db = Database(
            eng,
            retry=RetryPolicy(attempts=1, deadline=None),
            breaker=None,
            name="pool.starved",
            listeners=[telemetry, events.append],
        )
        async with eng.connect() as held:  # the pool's only connection, held
            await held.execute(text("SELECT 1"))
            used = {
                a["db.client.connection.state"]: p.value
                for a, p in otel.points("db.client.connection.count")
            }
            assert used == {"idle": 0, "used": 1}
            with pytest.raises(Exception, match="QueuePool limit"):
                await db.run(lambda s: s.execute(text("SELECT 1")))
    finally:
        await eng.dispose()
    assert [e.category for e in events if e.event == "unit.attempt_failed"] == ["pool_exhausted"]
    timeouts = otel.points("db.client.connection.timeouts")
    assert [p.value for _, p in timeouts] == [1]


async def test_request_unit_span_is_named_after_the_route(
    otel: Otel,
    shop_url: str,  # noqa: F811
) -> None:
    pytest.importorskip("fastapi", reason="fastapi is not installed (the [fastapi] extra)")
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")
    import functools

    from examples.fastapi_app import create_app
    from tests._uvicorn import serve

    telemetry = functools.partial(
        OpenTelemetry, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    app = create_app(shop_url, instrument_with=[telemetry])
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        moved = await client.post("/transfers", json={"src": 1, "dst": 2, "amount": 5})
        assert moved.status_code == 200, moved.text
    span = _by_name(otel.spans.get_finished_spans(), "POST /transfers")
    attrs = dict(span.attributes or {})
    assert attrs["resilient_db.attempts"] == 1
    assert span.status.status_code is not StatusCode.ERROR
    durations = {a["resilient_db.unit"] for a, _ in otel.points("resilient_db.unit.duration")}
    assert "POST /transfers" in durations
