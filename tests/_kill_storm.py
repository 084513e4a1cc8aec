"""The kill storm of #9: units of work while every backend of the database is terminated.

16 workers run money transfers through ``db.run`` while an admin connection runs
``pg_terminate_backend`` on every backend of that database every 100-200 ms. The server
stays healthy (every new connection succeeds), so the breaker must never open and almost
every unit must succeed. Used by ``tests/test_kill_storm.py`` (a few runs) and
``benchmarks/bench_kill_storm.py`` (20 runs, figures).
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field

import anyio
import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import (
    BreakerEvent,
    CircuitBreaker,
    Database,
    RetryBudget,
    create_async_engine,
    endpoint_key,
    engine_health_check,
)

ACCOUNTS = 50


@dataclass
class StormResult:
    driver: str
    units: int
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    killed_backends: int = 0
    opened: int = 0
    refuted: int = 0
    lost: int = 0
    budget_refused: int = 0
    budget_free: int = 0
    seconds: float = 0.0
    total_balance_ok: bool = True
    samples: dict[str, str] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.units if self.units else 0.0

    def line(self) -> str:
        failed = ",".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "-"
        return (
            f"{self.driver:8} {self.succeeded:4}/{self.units} ok ({self.success_rate:6.1%}) "
            f"opened={self.opened} refuted={self.refuted} lost={self.lost} "
            f"kills={self.kills} backends_killed={self.killed_backends} "
            f"budget refused={self.budget_refused} free={self.budget_free} "
            f"{self.seconds:.1f}s failed: {failed}"
        )


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _setup(admin_dsn: str, table: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute(f"INSERT INTO {table} SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g")


def _total(admin_dsn: str, table: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT sum(balance) FROM {table}").fetchone()
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    assert row is not None
    return int(str(row[0]))


async def _killer(
    admin_dsn: str, database: str, app: str, stop: anyio.Event, r: StormResult
) -> None:
    conn = await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True)
    rng = random.Random()
    try:
        while not stop.is_set():
            with anyio.move_on_after(rng.uniform(0.1, 0.2)):
                await stop.wait()
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
                (database, app),
            )
            row = await cur.fetchone()
            r.kills += 1
            r.killed_backends += int(str(row[0])) if row else 0
    finally:
        await conn.close()


async def run_storm(
    url: str,
    *,
    units: int = 640,
    workers: int = 16,
    consecutive_failures: int | None = 10,
    min_kills: int = 0,
    max_seconds: float = 120.0,
) -> StormResult:
    """One kill storm on the database of ``url`` (an asyncpg or psycopg SQLAlchemy URL).

    ``consecutive_failures`` is the breaker's trip threshold (lower it to make the breaker
    trip, and its health check refute, more often). At least ``units`` units run, and more
    until the killer has struck ``min_kills`` times (a fast machine finishes 320 units
    between two strikes), within ``max_seconds``.
    """
    parsed = make_url(url)
    driver = parsed.get_driver_name()
    table = f"storm_{secrets.token_hex(4)}"
    app = f"rdb_storm_{secrets.token_hex(3)}"
    admin_dsn = _libpq(url)
    await anyio.to_thread.run_sync(_setup, admin_dsn, table)
    engine = create_async_engine(url, application_name=app)
    result = StormResult(driver=driver, units=0)

    def on_event(event: BreakerEvent) -> None:
        if event.state == "open":
            result.opened += 1

    # The Database's breaker as it should be built by default: keyed per endpoint, with a
    # probe of the server on a fresh connection (confirming trips).
    breaker = CircuitBreaker(
        str(endpoint_key(engine)),
        health_check=engine_health_check(engine),
        consecutive_failures=consecutive_failures,
        listeners=[on_event],
    )
    budget = RetryBudget()
    db = Database(engine, breaker=breaker, budget=budget)
    rng = random.Random(7)

    async def transfer(session: AsyncSession, src: int, dst: int) -> None:
        await session.execute(
            text(f"UPDATE {table} SET balance = balance - 1 WHERE id = :i"), {"i": src}
        )
        await session.execute(
            text(f"UPDATE {table} SET balance = balance + 1 WHERE id = :i"), {"i": dst}
        )

    give_up_at = time.monotonic() + max_seconds

    def more() -> bool:
        if time.monotonic() > give_up_at:
            return False
        return result.units < units or result.kills < min_kills

    async def worker() -> None:
        while more():
            result.units += 1
            src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
            try:
                await db.run(transfer, src, dst)
                result.succeeded += 1
            except Exception as exc:
                name = type(exc).__name__
                result.failed[name] = result.failed.get(name, 0) + 1
                notes = " / ".join(getattr(exc, "__notes__", []))
                result.samples.setdefault(name, f"{exc!r}"[:300] + " | " + notes[:300])

    stop = anyio.Event()
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_killer, admin_dsn, parsed.database or "", app, stop, result)
            async with anyio.create_task_group() as workers_tg:
                for _ in range(workers):
                    workers_tg.start_soon(worker)
            stop.set()
    finally:
        result.seconds = time.monotonic() - started
        await breaker.wait_probe()
        await engine.dispose()
    stats = breaker.statistics()
    result.refuted = stats.refuted_total
    result.lost = stats.lost_total
    bstats = budget.statistics()
    result.budget_refused = bstats.refused
    result.budget_free = bstats.free
    total = await anyio.to_thread.run_sync(_total, admin_dsn, table)
    result.total_balance_ok = (
        total == ACCOUNTS * 1000 or result.failed.get("CommitOutcomeUnknown", 0) > 0
    )
    return result
