"""Benchmark: cost of ``resilient_db.classify()`` on real exceptions.

Provokes a real connection loss (``pg_terminate_backend`` mid-query) and a real unique
violation through SQLAlchemy + asyncpg and through SQLAlchemy + psycopg, then times
``classify()`` on each captured exception and prints the median per call.

Run: ``.venv/bin/python benchmarks/bench_classify.py`` (PostgreSQL at
``RESILIENT_DB_BENCH_DSN``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Target (issue 3): median <= 5 us for the wrapped asyncpg connection loss and unique violation.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from resilient_db import Phase, classify

DSN = os.environ.get("RESILIENT_DB_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_US = 5.0


async def _connection_loss(engine: AsyncEngine, admin: AsyncEngine) -> BaseException:
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        query = asyncio.ensure_future(conn.execute(text("SELECT pg_sleep(30)")))
        async with asyncio.timeout(10):
            async with admin.connect() as adm:
                while True:  # wait until the query is really running, then kill it
                    state = (
                        await adm.execute(
                            text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                        )
                    ).scalar_one_or_none()
                    if state == "active":
                        break
                    await asyncio.sleep(0.01)
                await adm.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            try:
                await query
            except Exception as exc:
                return exc
    raise AssertionError("terminated query did not fail")


async def _unique_violation(engine: AsyncEngine) -> BaseException:
    async with engine.connect() as conn:
        await conn.execute(text("CREATE TEMP TABLE bench_classify_u (id int PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO bench_classify_u VALUES (1)"))
        try:
            await conn.execute(text("INSERT INTO bench_classify_u VALUES (1)"))
        except Exception as exc:
            return exc
    raise AssertionError("duplicate insert did not fail")


def _median_us(exc: BaseException, phase: Phase, *, rounds: int = 31, number: int = 2000) -> float:
    classify(exc, phase=phase)  # warm the per-type caches
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            classify(exc, phase=phase)
        samples.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(samples)


async def main() -> int:
    admin = create_async_engine(
        DSN.replace("postgresql://", "postgresql+asyncpg://", 1), isolation_level="AUTOCOMMIT"
    )
    results: list[tuple[str, float, str]] = []
    failed = False
    try:
        for driver in ("asyncpg", "psycopg"):
            engine = create_async_engine(DSN.replace("postgresql://", f"postgresql+{driver}://", 1))
            try:
                cases = {
                    "connection loss": (await _connection_loss(engine, admin), Phase.STATEMENT),
                    "unique violation": (await _unique_violation(engine), Phase.STATEMENT),
                }
            finally:
                await engine.dispose()
            for name, (exc, phase) in cases.items():
                verdict = classify(exc, phase=phase)
                median = _median_us(exc, phase)
                results.append((f"SQLAlchemy+{driver} {name}", median, verdict.category))
                if driver == "asyncpg" and median > TARGET_US:
                    failed = True
    finally:
        await admin.dispose()
    for label, median, category in results:
        print(f"classify() {label:<40} median {median:6.2f} us  ({category})")
    outcome = "FAIL" if failed else "ok"
    print(f"target: <= {TARGET_US:.1f} us for the SQLAlchemy+asyncpg cases: {outcome}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
