"""Benchmark: what the telemetry integrations add to one unit of work.

Two measurements, side by side in one process:

1. the listener work per unit (``unit.started`` + ``unit.finished``, no database): the
   OpenTelemetry integration with the SDK configured (batch span processor, in-memory
   metric reader), with the API only (no SDK: no-op providers), Prometheus, and a bare
   ``list.append`` listener as the floor;
2. a real ``db.run`` SELECT-1 unit without listeners, with OpenTelemetry (SDK) and with
   Prometheus (medians of interleaved rounds).

Run: ``.venv/bin/python benchmarks/bench_telemetry.py`` (PostgreSQL at
``RESILIENT_DB_BENCH_URL``, default ``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable

import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import Database, UnitEvent, create_async_engine
from resilient_db.integrations.otel import OpenTelemetry
from resilient_db.integrations.prometheus import PrometheusMetrics

URL = os.environ.get(
    "RESILIENT_DB_BENCH_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
START = UnitEvent(event="unit.started", name="bench", attempt=0, elapsed=0.0)
END = UnitEvent(event="unit.finished", name="bench", attempt=1, elapsed=0.001, outcome="ok")
SELECT_1 = text("SELECT 1")


def _listeners(engine: AsyncEngine) -> dict[str, Callable[[UnitEvent], None]]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    events: list[UnitEvent] = []
    return {
        "list.append (floor)": events.append,
        "otel, API only": OpenTelemetry(engine),
        "prometheus": PrometheusMetrics(engine, registry=prometheus_client.CollectorRegistry()),
        "otel, SDK": OpenTelemetry(
            engine, tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
    }


def listener_cost(listeners: dict[str, Callable[[UnitEvent], None]], n: int = 20_000) -> None:
    print("listener work per unit (unit.started + unit.finished), best of 5:")
    for name, listener in listeners.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                listener(START)
                listener(END)
            best = min(best, (time.perf_counter() - started) / n * 1e6)
        print(f"  {name:22s} {best:8.2f} us")


async def unit_cost(engine: AsyncEngine, rounds: int = 5, n: int = 500) -> None:
    async def body(session: AsyncSession) -> object:
        return (await session.execute(SELECT_1)).scalar_one()

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    otel = OpenTelemetry(engine, tracer_provider=tracer_provider, meter_provider=meter_provider)
    prom = PrometheusMetrics(engine, registry=prometheus_client.CollectorRegistry())
    dbs = {
        "no listener": Database(engine, name="bench"),
        "otel, SDK": Database(engine, name="bench", listeners=[otel]),
        "prometheus": Database(engine, name="bench", listeners=[prom]),
    }
    for db in dbs.values():
        for _ in range(100):
            await db.run(body)
    timings: dict[str, list[float]] = {name: [] for name in dbs}
    for _ in range(rounds):
        for name, db in dbs.items():
            started = time.perf_counter()
            for _ in range(n):
                await db.run(body)
            timings[name].append((time.perf_counter() - started) / n * 1e6)
    base = statistics.median(timings["no listener"])
    print(f"db.run SELECT 1, median of {rounds} interleaved rounds of {n}:")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:22s} {median:8.1f} us   x{median / base:6.3f}")
    tracer_provider.shutdown()


async def main() -> None:
    engine = create_async_engine(URL, pool_size=2)
    try:
        listener_cost(_listeners(engine))
        await unit_cost(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
