"""Prometheus: the example app's real ``/metrics`` endpoint, scraped over HTTP after real
calls, shows the OpenTelemetry → Prometheus names with their values."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import CircuitBreaker, RetryPolicy, UnitEvent

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus_client is not installed (the [prometheus] extra)"
)
pytest.importorskip("fastapi", reason="fastapi is not installed (the [fastapi] extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")

from fastapi import Request  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from examples.fastapi_app import create_app  # noqa: E402
from resilient_db.integrations._telemetry import METRICS  # noqa: E402
from resilient_db.integrations.fastapi import get_database  # noqa: E402
from resilient_db.integrations.prometheus import prometheus_name  # noqa: E402
from tests._shop import shop_url  # noqa: E402, F401  (the fixture)
from tests._uvicorn import serve  # noqa: E402

FAST = RetryPolicy(attempts=3, initial=0.01, max_backoff=0.02)


def _samples(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def test_prometheus_names_follow_the_otel_rules() -> None:
    names = {prometheus_name(spec) for spec in METRICS.values()}
    assert "resilient_db_unit_duration_seconds" in names
    assert "resilient_db_retry_delay_seconds" in names
    assert "resilient_db_unit_retries" in names  # + _total, added by the counter
    assert "db_client_connection_count" in names


async def test_metrics_endpoint_shows_real_calls(shop_url: str) -> None:  # noqa: F811
    registry = prometheus_client.CollectorRegistry()
    events: list[UnitEvent] = []
    breaker = CircuitBreaker("shop-db")
    app = create_app(
        shop_url, registry=registry, retry=FAST, breaker=breaker, listeners=[events.append]
    )

    @app.post("/flaky")
    async def flaky(request: Request) -> dict[str, int]:
        calls = 0

        async def body(session: AsyncSession) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:  # a real serialization failure on the first attempt
                await session.execute(
                    text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$")
                )
            return calls

        db = get_database(request).with_options(name="shop.flaky")
        return {"calls": await db.run(body)}

    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/accounts/1")).status_code == 200
        assert (await client.post("/flaky")).json() == {"calls": 2}
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    samples = _samples(scrape.text)

    retries = samples["resilient_db_unit_retries_total"]
    assert retries == [
        ({"resilient_db_unit": "shop.flaky", "resilient_db_error_category": "serialization"}, 1.0)
    ]
    delay = {
        labels["resilient_db_unit"]: value
        for labels, value in samples["resilient_db_retry_delay_seconds_count"]
    }
    assert delay == {"shop.flaky": 1.0}
    durations = {
        labels["resilient_db_unit"]: value
        for labels, value in samples["resilient_db_unit_duration_seconds_count"]
    }
    assert durations["shop.flaky"] == 1.0
    assert any(
        labels["resilient_db_unit"] == "shop.flaky" and value > 0
        for labels, value in samples["resilient_db_unit_duration_seconds_sum"]
    )
    state = {
        labels["resilient_db_breaker_state"]: value
        for labels, value in samples["resilient_db_breaker_state"]
        if labels["resilient_db_breaker_name"] == "shop-db"
    }
    assert state["closed"] == 1.0
    assert state["open"] == 0.0
    assert samples["resilient_db_breaker_rejections_total"] == [
        ({"resilient_db_breaker_name": "shop-db"}, 0.0)
    ]
    pool = {
        labels["db_client_connection_state"]: value
        for labels, value in samples["db_client_connection_count"]
    }
    assert pool["idle"] >= 1.0
    (tokens,) = samples["resilient_db_retry_budget_tokens"]
    assert tokens[1] > 0
    assert "resilient_db_retry_budget_exhausted_total" in samples
    for name, rows in samples.items():
        for labels, _ in rows:
            assert not {"xid", "pid", "sql"} & set(labels), (name, labels)


def test_close_stops_reading_the_instance(pg_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine as sa_engine

    from resilient_db.integrations.prometheus import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    engine: Any = sa_engine(pg_url)
    metrics = PrometheusMetrics(engine, registry=registry)
    assert (
        registry.get_sample_value(
            "db_client_connection_count",
            {
                "db_client_connection_pool_name": metrics._watched.pool_name,
                "db_client_connection_state": "idle",
            },
        )
        == 0.0
    )
    metrics.close()
    second = PrometheusMetrics(engine, registry=registry)  # shares the registry's metrics
    second.close()
    assert (
        registry.get_sample_value(
            "db_client_connection_count",
            {
                "db_client_connection_pool_name": metrics._watched.pool_name,
                "db_client_connection_state": "idle",
            },
        )
        is None
    )


async def test_close_stops_listening_to_the_shared_breaker(pg_url: str) -> None:
    """Breakers are shared per endpoint and outlive a Database: a closed instance no longer
    counts their transitions."""
    from resilient_db import Database, create_async_engine
    from resilient_db.integrations.prometheus import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    engine = create_async_engine(pg_url)
    try:
        metrics = PrometheusMetrics(engine, registry=registry)
        db = Database(engine, listeners=[metrics])
        metrics.watch(db)
        breaker = db.breaker
        assert breaker is not None

        def transitions() -> float:
            total = 0.0
            for family in registry.collect():
                if family.name == "resilient_db_breaker_transitions":
                    total += sum(s.value for s in family.samples if s.name.endswith("_total"))
            return total

        breaker.force_open()
        breaker.reset()
        counted = transitions()
        assert counted >= 2
        metrics.close()
        breaker.force_open()
        breaker.reset()
        assert transitions() == counted
    finally:
        await engine.dispose()
