"""The shop's chaos workloads: ``resilient-db chaos --workload shop.chaos:workload``.

Each factory gets the scenario's context (a table prefix with the run id, the URL to use)
and returns a Workload: the production Database factory, the repository method under test,
table setup/teardown, how to count orders per id, and the shop's own invariant (one
confirmation e-mail per placed order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from resilient_db import Database, create_async_engine
from resilient_db.chaos import Evidence, Invariant, Operation, Workload, WorkloadContext

from .repository import MAILBOX, OrderRepository


def production_database(url: str, ctx: WorkloadContext) -> Database:
    """How the shop builds its Database in production (plus the chaos application name)."""
    engine = create_async_engine(url, application_name=ctx.application_name, pool_size=10)
    return Database(engine, deadline=ctx.deadline)


def _workload(
    ctx: WorkloadContext, name: str, method: Callable[[OrderRepository], Any]
) -> Workload:
    orders, outbox = f"{ctx.prefix}_orders", f"{ctx.prefix}_outbox"

    async def setup(conn: AsyncConnection) -> None:
        await conn.execute(text(f"CREATE TABLE {orders} (id text NOT NULL, amount int)"))
        await conn.execute(text(f"CREATE TABLE {outbox} (order_id text NOT NULL)"))

    async def teardown(conn: AsyncConnection) -> None:
        await conn.execute(text(f"DROP TABLE IF EXISTS {orders}, {outbox}"))

    async def place(db: Database, op_id: str) -> object:
        return await method(OrderRepository(db, ctx.prefix))(op_id, 42)

    async def applied(conn: AsyncConnection) -> Mapping[str, int]:
        rows = await conn.execute(text(f"SELECT id, count(*) FROM {orders} GROUP BY id"))
        return {str(i): int(n) for i, n in rows}

    async def one_email_per_order(conn: AsyncConnection, ev: Evidence) -> tuple[bool, str]:
        rows = await conn.execute(text(f"SELECT order_id, count(*) FROM {outbox} GROUP BY 1"))
        sent = {str(i): int(n) for i, n in rows}
        for order, n in MAILBOX.items():
            if order.startswith(ctx.prefix):
                sent[order] = sent.get(order, 0) + n
        counts = ev.counts
        wrong = sorted(o for o in {*sent, *counts} if sent.get(o, 0) != counts.get(o, 0))
        return not wrong, f"{len(wrong)} order(s) with e-mails != orders, e.g. {wrong[:3]}"

    return Workload(
        name=f"shop.{name}",
        operations=[Operation(name="place_order", call=place)],
        database=lambda url: production_database(url, ctx),
        setup=setup,
        teardown=teardown,
        applied=applied,
        invariants=[Invariant(name="one_email_per_order", check=one_email_per_order)],
    )


def workload(ctx: WorkloadContext) -> Workload:
    """The correct repository method."""
    return _workload(ctx, "place_order", lambda repo: repo.place_order)


def mailing_per_attempt(ctx: WorkloadContext) -> Workload:
    """Unsafe: one e-mail per attempt."""
    return _workload(ctx, "mailing_per_attempt", lambda repo: repo.place_order_mailing_per_attempt)


def swallowing_errors(ctx: WorkloadContext) -> Workload:
    """Unsafe: errors reported as success."""
    return _workload(ctx, "swallowing_errors", lambda repo: repo.place_order_swallowing_errors)
