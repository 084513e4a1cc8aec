"""Operation keys vs xid capture, side by side in one process (``python benchmarks/bench_keys.py``).

A writing unit is ``BEGIN; INSERT ...; [extra]; COMMIT`` on one pooled connection. The
``extra`` statement is what commit-outcome resolution costs:

* ``bare``: none (no resolution possible after a lost COMMIT);
* ``xid``: the xid capture (``SELECT pg_current_xact_id_if_assigned(), pid, timeline``);
* ``key``: the ledger insert (``INSERT ... ON CONFLICT ... RETURNING``, key + JSON result);
* ``key-nores``: the same with ``store_results=False``.

It prints statements per unit (counted with a ``before_cursor_execute`` listener) and the
median time per unit over interleaved rounds, sequential and with 8 concurrent writers,
with the ratio to ``xid``. When ``Database.run`` takes ``key=``, the same comparison runs
through ``db.run`` too. Needs the local PostgreSQL (``RESILIENT_DB_BENCH_URL``, default
``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``); it creates and drops its own tables.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from resilient_db import Database, Ledger, create_async_engine, create_ledger
from resilient_db.units._commit import capture_identity

URL = os.environ.get(
    "RESILIENT_DB_BENCH_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TABLE = f"bench_keys_{secrets.token_hex(3)}"
_ids = itertools.count()

Extra = Callable[[AsyncConnection, str], Awaitable[Any]]


def _variants(ledger: Ledger, bare_ledger: Ledger) -> dict[str, Extra]:
    async def none(conn: AsyncConnection, key: str) -> None:
        return None

    async def xid(conn: AsyncConnection, key: str) -> None:
        await capture_identity(conn, with_timeline=True)  # type: ignore[arg-type]

    async def key(conn: AsyncConnection, key: str) -> None:
        await ledger.record(conn, key, {"id": key, "status": "ok"})

    async def key_nores(conn: AsyncConnection, key: str) -> None:
        await bare_ledger.record(conn, key, None)

    return {"bare": none, "xid": xid, "key": key, "key-nores": key_nores}


async def unit(engine: AsyncEngine, extra: Extra) -> None:
    op = f"op-{next(_ids)}"
    async with engine.connect() as conn:
        await conn.execute(text(f"INSERT INTO {TABLE} VALUES (:op)"), {"op": op})
        await extra(conn, op)
        await conn.commit()


async def per_unit(engine: AsyncEngine, extra: Extra, n: int, concurrency: int) -> float:
    """Seconds per unit: ``n`` units by ``concurrency`` writers (wall time / n)."""

    async def writer(count: int) -> None:
        for _ in range(count):
            await unit(engine, extra)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(n // concurrency) for _ in range(concurrency)))
    return (time.perf_counter() - t0) / (n // concurrency * concurrency)


def count_statements(engine: AsyncEngine) -> list[int]:
    counter = [0]

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        counter[0] += 1

    return counter


async def statements(engine: AsyncEngine, extra: Extra, counter: list[int]) -> int:
    before = counter[0]
    await unit(engine, extra)
    return counter[0] - before + 2  # + BEGIN and COMMIT (sent by the driver, not listed)


async def compare(
    engine: AsyncEngine, variants: dict[str, Extra], rounds: int, n: int, concurrency: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):  # interleaved rounds: drift hits every variant alike
        for name, extra in variants.items():
            samples[name].append(await per_unit(engine, extra, n, concurrency))
    return {name: statistics.median(values) for name, values in samples.items()}


async def through_database(
    engine: AsyncEngine, ledger: Ledger, rounds: int, n: int, counter: list[int]
) -> dict[str, float] | None:
    if "key" not in inspect.signature(Database.run).parameters:
        return None
    make: Any = Database
    db = make(engine, ledger=ledger)

    async def body(session: Any, op: str) -> dict[str, str]:
        await session.execute(text(f"INSERT INTO {TABLE} VALUES (:op)"), {"op": op})
        return {"id": op}

    async def xid_unit() -> None:
        await db.run(body, f"op-{next(_ids)}")

    async def key_unit() -> None:
        op = f"op-{next(_ids)}"
        run: Any = db.run
        await run(body, op, key=op)

    for name, fn in (("db.run xid", xid_unit), ("db.run key", key_unit)):
        before = counter[0]
        await fn()
        print(f"  {name:<12} {counter[0] - before + 2} statements (BEGIN and COMMIT included)")
    samples: dict[str, list[float]] = {"db.run xid": [], "db.run key": []}
    for _ in range(rounds):
        for name, fn in (("db.run xid", xid_unit), ("db.run key", key_unit)):
            t0 = time.perf_counter()
            for _ in range(n):
                await fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(values) for name, values in samples.items()}


def show(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    base = medians[baseline]
    for name, value in medians.items():
        print(f"  {name:<12} {value * 1e6:8.0f} us/unit   x{value / base:5.2f} vs {baseline}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--units", type=int, default=120, help="units per round and variant")
    args = parser.parse_args()
    engine = create_async_engine(URL, pool_size=8, max_overflow=0)
    ledger = Ledger(table=f"{TABLE}_ledger")
    bare_ledger = Ledger(table=f"{TABLE}_ledger_nores", store_results=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {TABLE} (op text)"))
        await create_ledger(engine, ledger)
        await create_ledger(engine, bare_ledger)
        variants = _variants(ledger, bare_ledger)
        counter = count_statements(engine)
        print(
            f"{URL.split('@')[-1]}: statements per writing unit (BEGIN + INSERT + extra + COMMIT)"
        )
        for name, extra in variants.items():
            print(f"  {name:<12} {await statements(engine, extra, counter)}")
        seq = await compare(engine, variants, args.rounds, args.units, 1)
        show("time per unit, 1 writer (median of rounds)", seq, "xid")
        par = await compare(engine, variants, args.rounds, args.units, 8)
        show("time per unit, 8 concurrent writers (wall / units)", par, "xid")
        print("\nthrough db.run: statements per writing unit")
        full = await through_database(engine, ledger, args.rounds, args.units // 2, counter)
        if full is None:
            print("\ndb.run(..., key=...) is not wired on this branch: the db.run rows are skipped")
        else:
            show("through db.run, 1 writer", full, "db.run xid")
    finally:
        async with engine.begin() as conn:
            for name in (TABLE, ledger.name, bare_ledger.name):
                await conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
