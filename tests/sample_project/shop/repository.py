"""The shop's repository: placing an order and confirming it by e-mail.

``place_order`` is correct: the order and its confirmation (an outbox row, sent later by a
relay) commit together in one unit of work, so a retried attempt leaves nothing behind.
The two other methods are the classic mistakes the chaos engine must catch:

* ``place_order_mailing_per_attempt`` sends the e-mail from inside the unit body: every
  retried attempt sends one more e-mail (a side effect per attempt);
* ``place_order_swallowing_errors`` treats any database error (a lost COMMIT, a refused
  connection) as success and tells the caller the order was placed.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import Database

#: E-mails "sent" directly (by the unsafe method), per order id.
MAILBOX: Counter[str] = Counter()


class OrderRepository:
    """Orders in ``<prefix>_orders``, confirmations in ``<prefix>_outbox``."""

    def __init__(self, db: Database, prefix: str) -> None:
        self.db = db
        self.orders = f"{prefix}_orders"
        self.outbox = f"{prefix}_outbox"

    async def _insert(self, session: AsyncSession, order_id: str, amount: int) -> None:
        await session.execute(
            text(f"INSERT INTO {self.orders} (id, amount) VALUES (:id, :amount)"),
            {"id": order_id, "amount": amount},
        )

    async def place_order(self, order_id: str, amount: int) -> str:
        """Correct: order and confirmation in one transaction."""

        async def body(session: AsyncSession) -> None:
            await self._insert(session, order_id, amount)
            await session.execute(
                text(f"INSERT INTO {self.outbox} (order_id) VALUES (:id)"), {"id": order_id}
            )

        await self.db.run(body)
        return order_id

    async def place_order_mailing_per_attempt(self, order_id: str, amount: int) -> str:
        """Unsafe: the e-mail goes out inside the unit body, once per attempt."""

        async def body(session: AsyncSession) -> None:
            MAILBOX[order_id] += 1  # "send the confirmation e-mail"
            await self._insert(session, order_id, amount)
            await session.execute(text("SELECT pg_sleep(0.02)"))  # some more work

        await self.db.run(body)
        return order_id

    async def place_order_swallowing_errors(self, order_id: str, amount: int) -> str:
        """Unsafe: any database error is reported as success."""
        with contextlib.suppress(Exception):  # "the commit probably went through"
            await self.place_order(order_id, amount)
        return order_id
