"""The release suite's workload: money transfers between accounts, one op id each.

Every transfer is one unit of work through :meth:`resilient_db.Database.run`: insert the
operation into the ledger table, debit the source, credit the destination. The ledger has
**no unique constraint** on the op id on purpose: an operation applied twice shows up as two
rows (and money moved twice) instead of hiding behind a constraint violation.

Built on the public engine like any user's workload: ``resilient-db chaos --workload
chaos.transfer:workload`` runs exactly what ``./scripts/chaos`` runs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resilient_db import CircuitBreaker, Database, RetryPolicy, create_async_engine
from resilient_db.chaos import Check, Evidence, Invariant, Operation, Workload, WorkloadContext

__all__ = ["ACCOUNTS", "INITIAL_BALANCE", "workload"]

#: Accounts per scenario, and the balance each starts with.
ACCOUNTS = 20
INITIAL_BALANCE = 1_000_000


def _database(ctx: WorkloadContext, url: str) -> Database:
    engine = create_async_engine(
        url,
        pool_size=ctx.concurrency,
        max_overflow=2,
        application_name=ctx.application_name,
        pgbouncer=ctx.pgbouncer,
    )
    holder: list[Database] = []

    async def health_check() -> None:
        await holder[0].health_check()

    breaker = CircuitBreaker(
        f"chaos-{ctx.scenario}",
        window=2.0,
        minimum_calls=10,
        failure_rate=0.5,
        open_for=1.0,
        health_check=health_check,
        probe_interval=0.25,
    )
    db = Database(
        engine,
        retry=RetryPolicy(deadline=None),
        breaker=breaker,
        deadline=ctx.deadline,
        name="transfer",
    )
    holder.append(db)
    return db


def workload(ctx: WorkloadContext) -> Workload:
    """The transfer workload for one scenario (tables ``<prefix>_accounts`` and ``_ops``)."""
    accounts, ops = f"{ctx.prefix}_accounts", f"{ctx.prefix}_ops"

    async def setup(conn: AsyncConnection) -> None:
        await conn.execute(text(f"DROP TABLE IF EXISTS {accounts}, {ops}"))
        await conn.execute(
            text(f"CREATE TABLE {accounts} (id int PRIMARY KEY, balance bigint NOT NULL)")
        )
        await conn.execute(
            text(
                f"CREATE TABLE {ops} (op text NOT NULL, src int NOT NULL, dst int NOT NULL, "
                "amount int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            )
        )
        await conn.execute(text(f"CREATE INDEX {ops}_op ON {ops} (op)"))  # not unique on purpose
        await conn.execute(
            text(
                f"INSERT INTO {accounts} SELECT g, {INITIAL_BALANCE} "
                f"FROM generate_series(1, {ACCOUNTS}) g"
            )
        )

    async def teardown(conn: AsyncConnection) -> None:
        await conn.execute(text(f"DROP TABLE IF EXISTS {accounts}, {ops}"))

    async def body(session: AsyncSession, op: str, src: int, dst: int, amount: int) -> None:
        await session.execute(
            text(f"INSERT INTO {ops} (op, src, dst, amount) VALUES (:op, :src, :dst, :amount)"),
            {"op": op, "src": src, "dst": dst, "amount": amount},
        )
        for account, delta in sorted(((src, -amount), (dst, amount))):  # lower id first
            await session.execute(
                text(f"UPDATE {accounts} SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )

    async def transfer(db: Database, op: str) -> str:
        rng = random.Random(op)
        src = rng.randint(1, ACCOUNTS)
        dst = rng.randint(1, ACCOUNTS - 1)
        await db.run(body, op, src, dst + 1 if dst >= src else dst, rng.randint(1, 100))
        return op

    async def applied(conn: AsyncConnection) -> Mapping[str, int]:
        rows = await conn.execute(text(f"SELECT op, count(*) FROM {ops} GROUP BY op"))
        return {str(op): int(n) for op, n in rows}

    async def money_conserved(conn: AsyncConnection, ev: Evidence) -> Check:
        result = await conn.execute(text(f"SELECT id, balance FROM {accounts}"))
        balances: dict[int, int] = {int(a): int(b) for a, b in result}
        expected = dict.fromkeys(balances, INITIAL_BALANCE)
        rows = (await conn.execute(text(f"SELECT src, dst, amount FROM {ops}"))).all()
        for src, dst, amount in rows:
            expected[src] -= amount
            expected[dst] += amount
        total = sum(balances.values())
        drift = [
            f"account {a}: {balances[a]} != {w}"
            for a, w in sorted(expected.items())
            if balances[a] != w
        ]
        ok = total == ACCOUNTS * INITIAL_BALANCE and not drift
        detail = (
            f"total {total}; every balance matches the {len(rows)} ledger rows"
            if ok
            else (
                f"total {total} (expected {ACCOUNTS * INITIAL_BALANCE}); {len(drift)} balance(s) "
                "disagree with the ledger rows"
            )
        )
        return Check(name="money_conserved", passed=ok, detail=detail, offenders=tuple(drift[:5]))

    return Workload(
        name="transfer",
        operations=[Operation(name="transfer", call=transfer)],
        database=lambda url: _database(ctx, url),
        setup=setup,
        teardown=teardown,
        applied=applied,
        invariants=[Invariant(name="money_conserved", check=money_conserved)],
    )
