"""Pool wait metrics from the units' fair queue: ``db.client.connection.pending_requests``,
``db.client.connection.wait_time``, ``.max`` and ``.idle.max``, for OpenTelemetry (the SDK's
in-memory reader) and Prometheus, on a real pool saturated by real units.

SQLAlchemy's pool has no hook for its waiters; the gate in front of it knows them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from resilient_db import Database, RetryPolicy, create_async_engine
from resilient_db.units import Gate, GateStatistics, shared_gate
from tests._waiting import poll

HOLDERS = 7  # units queued behind the one holding the pool's only connection
NAP = 0.05  # seconds each unit holds its connection (pg_sleep)


class Backend(Protocol):
    """One telemetry integration, read the way its users read it."""

    def pending(self) -> float | None: ...

    def waits(self) -> tuple[float, float]: ...  # (count, sum of seconds)

    def limits(self) -> tuple[float | None, float | None]: ...  # (max, idle.max)

    def listener(self) -> Any: ...

    def unhook(self) -> None: ...  # the integration's close()

    def shutdown(self) -> None: ...


class OtelBackend:
    def __init__(self, engine: AsyncEngine) -> None:
        pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from resilient_db.integrations.otel import OpenTelemetry

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = OpenTelemetry(engine, meter_provider=self.provider)

    def _points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        found: list[Any] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            assert dict(point.attributes or {}) == {
                                "db.client.connection.pool.name": self.telemetry._watched.pool_name
                            }
                            found.append(point)
        return found

    def _value(self, name: str) -> float | None:
        points = self._points(name)
        assert len(points) <= 1, points
        return float(points[0].value) if points else None

    def pending(self) -> float | None:
        return self._value("db.client.connection.pending_requests")

    def waits(self) -> tuple[float, float]:
        points = self._points("db.client.connection.wait_time")
        return (float(points[0].count), float(points[0].sum)) if points else (0.0, 0.0)

    def limits(self) -> tuple[float | None, float | None]:
        most = self._value("db.client.connection.max")
        return most, self._value("db.client.connection.idle.max")

    def listener(self) -> Any:
        return self.telemetry

    def unhook(self) -> None:
        self.telemetry.close()

    def shutdown(self) -> None:
        self.provider.shutdown()


class PrometheusBackend:
    def __init__(self, engine: AsyncEngine) -> None:
        prometheus_client = pytest.importorskip(
            "prometheus_client", reason="prometheus_client is not installed"
        )
        from resilient_db.integrations.prometheus import PrometheusMetrics

        self.registry = prometheus_client.CollectorRegistry()
        self.metrics = PrometheusMetrics(engine, registry=self.registry)
        self.labels = {"db_client_connection_pool_name": self.metrics._watched.pool_name}

    def _value(self, name: str) -> float | None:
        value = self.registry.get_sample_value(name, self.labels)
        return None if value is None else float(value)

    def pending(self) -> float | None:
        return self._value("db_client_connection_pending_requests")

    def waits(self) -> tuple[float, float]:
        count = self._value("db_client_connection_wait_time_seconds_count")
        total = self._value("db_client_connection_wait_time_seconds_sum")
        return count or 0.0, total or 0.0

    def limits(self) -> tuple[float | None, float | None]:
        most = self._value("db_client_connection_max")
        return most, self._value("db_client_connection_idle_max")

    def listener(self) -> Any:
        return self.metrics

    def unhook(self) -> None:
        self.metrics.close()

    def shutdown(self) -> None:
        pass


BACKENDS: dict[str, Callable[[AsyncEngine], Backend]] = {
    "otel": OtelBackend,
    "prometheus": PrometheusBackend,
}


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=20)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    if not await poll(condition, timeout, every=0.005):
        raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.parametrize("kind", sorted(BACKENDS))
async def test_saturated_pool_reports_waiting_units_and_their_wait(
    kind: str, engine: AsyncEngine
) -> None:
    backend = BACKENDS[kind](engine)
    try:
        db = Database(
            engine,
            retry=RetryPolicy(attempts=1, deadline=None),
            breaker=None,
            name="pool.saturated",
            listeners=[backend.listener()],
        )
        assert backend.limits() == (1.0, 1.0)
        assert backend.pending() == 0.0

        await db.run(lambda s: s.execute(text("SELECT 1")))  # a place at once: no wait
        assert backend.waits() == (0.0, 0.0)

        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold(session: AsyncSession) -> None:
            await session.execute(text(f"SELECT pg_sleep({NAP})"))
            holding.set()
            await asyncio.wait_for(release.wait(), 10)

        async def nap(session: AsyncSession) -> None:
            await session.execute(text(f"SELECT pg_sleep({NAP})"))

        holder = asyncio.create_task(db.run(hold))
        await asyncio.wait_for(holding.wait(), 10)
        queued = [asyncio.create_task(db.run(nap)) for _ in range(HOLDERS)]
        await _until(lambda: backend.pending() == HOLDERS, f"{HOLDERS} units pending")
        assert backend.waits() == (0.0, 0.0)  # a wait is recorded when it ends
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, *queued), 20)

        assert backend.pending() == 0.0
        count, total = backend.waits()
        assert count == HOLDERS
        # waiter k got its place after the holder and k - 1 others each slept NAP seconds
        assert total >= NAP * HOLDERS * (HOLDERS - 1) / 2
    finally:
        backend.unhook()
        backend.shutdown()
    gate = shared_gate(engine)
    assert gate is not None
    assert not gate.listeners  # close() unhooked the histogram


@pytest.mark.parametrize("kind", sorted(BACKENDS))
async def test_a_closed_instance_no_longer_records_waits(kind: str, engine: AsyncEngine) -> None:
    backend = BACKENDS[kind](engine)
    gate = shared_gate(engine)
    assert gate is not None
    hooked = len(gate.listeners)
    backend.unhook()
    assert (hooked, len(gate.listeners)) == (1, 0)
    assert gate.try_enter()
    waiter = asyncio.create_task(gate.enter())
    await _until(lambda: len(gate.waiters) == 1, "one waiter")
    gate.exit()
    await asyncio.wait_for(waiter, 5)
    gate.exit()
    assert gate.statistics().waited_total == 1  # the gate saw the wait ...
    assert backend.waits() == (0.0, 0.0)  # ... the closed instance did not record it
    backend.shutdown()


async def test_gate_statistics_count_only_waits_that_got_a_place() -> None:
    gate = Gate(1, timeout=0.05)
    heard: list[float] = []
    gate.add_wait_listener(heard.append)
    assert gate.try_enter()
    assert gate.statistics() == GateStatistics(
        capacity=1, free=0, waiting=0, waited_total=0, wait_seconds_total=0.0
    )
    with pytest.raises(Exception, match="no connection of the pool became free"):
        await gate.enter()  # timed out: not a wait that obtained a place
    waiter = asyncio.create_task(gate.enter())
    await _until(lambda: gate.statistics().waiting == 1, "one waiter")
    gate.exit()
    await asyncio.wait_for(waiter, 5)
    stats = gate.statistics()
    assert (stats.free, stats.waiting, stats.waited_total) == (0, 0, 1)
    assert heard == [stats.wait_seconds_total]
    assert heard[0] > 0
    gate.remove_wait_listener(heard.append)
    gate.remove_wait_listener(heard.append)  # a no-op once gone
    assert not gate.listeners


async def test_a_failing_wait_listener_is_logged_and_the_place_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Gate(1, timeout=5.0)

    def broken(seconds: float) -> None:
        raise RuntimeError("exporter down")

    gate.add_wait_listener(broken)
    assert gate.try_enter()
    caplog.set_level(logging.ERROR, logger="resilient_db")
    waiter = asyncio.create_task(gate.enter())
    await _until(lambda: len(gate.waiters) == 1, "one waiter")
    gate.exit()
    await asyncio.wait_for(waiter, 5)  # the unit got its place all the same
    assert gate.free == 0
    assert [r for r in caplog.records if r.getMessage().startswith("unit.listener_failed")]
    gate.exit()
    assert gate.statistics().free == 1
