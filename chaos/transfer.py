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


class _Ledger:
    """The two tables of one scenario and the unit of work on them."""

    def __init__(self, prefix: str) -> None:
        self.accounts, self.ops = f"{prefix}_accounts", f"{prefix}_ops"

    async def setup(self, conn: AsyncConnection) -> None:
        await self.teardown(conn)
        await conn.execute(
            text(f"CREATE TABLE {self.accounts} (id int PRIMARY KEY, balance bigint NOT NULL)")
        )
        await conn.execute(
            text(
                f"CREATE TABLE {self.ops} (op text NOT NULL, src int NOT NULL, "
                "dst int NOT NULL, amount int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
            )
        )
        # not unique on purpose: a duplicate application must stay visible
        await conn.execute(text(f"CREATE INDEX {self.ops}_op ON {self.ops} (op)"))
        await conn.execute(
            text(
                f"INSERT INTO {self.accounts} SELECT g, {INITIAL_BALANCE} "
                f"FROM generate_series(1, {ACCOUNTS}) g"
            )
        )

    async def teardown(self, conn: AsyncConnection) -> None:
        await conn.execute(text(f"DROP TABLE IF EXISTS {self.accounts}, {self.ops}"))

    async def body(self, session: AsyncSession, op: str, src: int, dst: int, amount: int) -> None:
        await session.execute(
            text(f"INSERT INTO {self.ops} (op, src, dst, amount) VALUES (:op, :s, :d, :a)"),
            {"op": op, "s": src, "d": dst, "a": amount},
        )
        for account, delta in sorted(((src, -amount), (dst, amount))):  # lower id first
            await session.execute(
                text(f"UPDATE {self.accounts} SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )

    async def transfer(self, db: Database, op: str) -> str:
        rng = random.Random(op)
        src = rng.randint(1, ACCOUNTS)
        dst = rng.randint(1, ACCOUNTS - 1)
        await db.run(self.body, op, src, dst + 1 if dst >= src else dst, rng.randint(1, 100))
        return op

    async def applied(self, conn: AsyncConnection) -> Mapping[str, int]:
        rows = await conn.execute(text(f"SELECT op, count(*) FROM {self.ops} GROUP BY op"))
        return {str(op): int(n) for op, n in rows}

    async def money_conserved(self, conn: AsyncConnection, ev: Evidence) -> Check:
        result = await conn.execute(text(f"SELECT id, balance FROM {self.accounts}"))
        balances: dict[int, int] = {int(a): int(b) for a, b in result}
        expected = dict.fromkeys(balances, INITIAL_BALANCE)
        rows = (await conn.execute(text(f"SELECT src, dst, amount FROM {self.ops}"))).all()
        for src, dst, amount in rows:
            expected[src] -= amount
            expected[dst] += amount
        total, want = sum(balances.values()), ACCOUNTS * INITIAL_BALANCE
        drift = [
            f"account {a}: {balances[a]} != {w}"
            for a, w in sorted(expected.items())
            if balances[a] != w
        ]
        ok = total == want and not drift
        detail = (
            f"total {total}; every balance matches the {len(rows)} ledger rows"
            if ok
            else f"total {total} (expected {want}); {len(drift)} balance(s) disagree with the rows"
        )
        return Check(name="money_conserved", passed=ok, detail=detail, offenders=tuple(drift[:5]))


def workload(ctx: WorkloadContext) -> Workload:
    """The transfer workload for one scenario (tables ``<prefix>_accounts`` and ``_ops``)."""
    ledger = _Ledger(ctx.prefix)
    return Workload(
        name="transfer",
        operations=[Operation(name="transfer", call=ledger.transfer)],
        database=lambda url: _database(ctx, url),
        setup=ledger.setup,
        teardown=ledger.teardown,
        applied=ledger.applied,
        invariants=[Invariant(name="money_conserved", check=ledger.money_conserved)],
    )
