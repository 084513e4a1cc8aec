"""The chaos workload: money transfers between accounts, one unique operation id each.

Every transfer is one unit of work run through :meth:`resilient_db.Database.run`: insert the
operation into the ledger table, debit the source, credit the destination. The ledger table
has **no unique constraint** on the operation id on purpose: an operation applied twice shows
up as two rows (and money moved twice) instead of being hidden by a constraint violation.

Each operation ends in exactly one :class:`OpRecord` whose ``outcome`` is what the library
told the caller: ``acknowledged`` (returned normally), ``failed`` (raised; the error type is
kept), ``unknown`` (:class:`resilient_db.CommitOutcomeUnknown`, with its xid) or ``hung``
(still running when the suite gave up waiting: a bug by itself).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from resilient_db import CommitOutcomeUnknown, Database

__all__ = [
    "INITIAL_BALANCE",
    "Admin",
    "Ledger",
    "OpRecord",
    "Outcome",
    "Workload",
    "error_name",
]

Outcome = Literal["acknowledged", "failed", "unknown", "hung"]

#: Balance of every account when a scenario starts.
INITIAL_BALANCE = 1_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class OpRecord:
    """What happened to one transfer, as seen by the caller.

    Times are seconds since the scenario's origin (monotonic clock).
    """

    op: str
    worker: int
    src: int
    dst: int
    amount: int
    started: float
    ended: float
    outcome: Outcome
    error_type: str | None = None
    xid: int | None = None
    #: WAL timeline the xid was assigned on (an xid means nothing on another timeline).
    timeline: str | None = None

    @property
    def duration(self) -> float:
        """Seconds the call took (start to return or raise)."""
        return self.ended - self.started


def error_name(exc: BaseException) -> str:
    """A short, stable name for an error: ``DBAPIError(ConnectionDoesNotExistError)``."""
    name = type(exc).__qualname__
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
        inner: BaseException | None = orig.__cause__ or orig.__context__
        detail = type(orig).__qualname__
        if (
            inner is not None
            and type(orig).__qualname__.endswith("Error")
            and detail
            in (
                "Error",
                "InterfaceError",
                "DBAPIError",
            )
        ):
            detail = type(inner).__qualname__
        return f"{name}({detail})"
    return name


class Admin:
    """Blocking psycopg access to the database *behind* the proxy (setup and checks).

    Every method has an async twin prefixed with ``a`` that runs it in a worker thread.
    """

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.timeout = timeout

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(1, round(self.timeout)),
            application_name="rdb_chaos_admin",
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; its rows (``[]`` when it returns none)."""
        with self._connect() as conn:
            conn.execute(f"SET statement_timeout = {round(self.timeout * 1000)}")
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (``None`` when there is no row)."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    async def aquery(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """:meth:`query` in a worker thread."""
        return await anyio.to_thread.run_sync(self.query, sql, params)

    async def ascalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """:meth:`scalar` in a worker thread."""
        return await anyio.to_thread.run_sync(self.scalar, sql, params)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ledger:
    """The two tables of one scenario: ``<prefix>_accounts`` and ``<prefix>_ops``."""

    prefix: str
    accounts: int

    @property
    def accounts_table(self) -> str:
        """Name of the accounts table."""
        return f"{self.prefix}_accounts"

    @property
    def ops_table(self) -> str:
        """Name of the operations table."""
        return f"{self.prefix}_ops"

    @property
    def total(self) -> int:
        """Money in the system: it must never change."""
        return self.accounts * INITIAL_BALANCE

    def create(self, admin: Admin) -> None:
        """Create (or recreate) the tables and fund every account."""
        self.drop(admin)
        admin.query(
            f"CREATE TABLE {self.accounts_table} (id int PRIMARY KEY, balance bigint NOT NULL)"
        )
        admin.query(
            f"CREATE TABLE {self.ops_table} (op text NOT NULL, src int NOT NULL, "
            "dst int NOT NULL, amount int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        )
        # Not unique on purpose: a duplicate application must stay visible.
        admin.query(f"CREATE INDEX {self.ops_table}_op ON {self.ops_table} (op)")
        admin.query(
            f"INSERT INTO {self.accounts_table} "
            f"SELECT g, {INITIAL_BALANCE} FROM generate_series(1, %s) g",
            (self.accounts,),
        )

    def drop(self, admin: Admin) -> None:
        """Drop the scenario's tables (only those)."""
        admin.query(f"DROP TABLE IF EXISTS {self.accounts_table}, {self.ops_table}")

    async def transfer(
        self, session: AsyncSession, op: str, src: int, dst: int, amount: int
    ) -> None:
        """One unit of work: record the operation, debit ``src``, credit ``dst``."""
        await session.execute(
            text(
                f"INSERT INTO {self.ops_table} (op, src, dst, amount) "
                "VALUES (:op, :src, :dst, :amount)"
            ),
            {"op": op, "src": src, "dst": dst, "amount": amount},
        )
        # Lower id first: concurrent transfers never deadlock on each other.
        for account, delta in sorted(((src, -amount), (dst, amount))):
            await session.execute(
                text(f"UPDATE {self.accounts_table} SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )


class Workload:
    """``concurrency`` workers sending transfers at about ``rate`` per second each.

    :meth:`run` returns when ``stop`` is set and every in-flight transfer has ended. Records
    are appended to :attr:`records` as operations end; :attr:`in_flight` holds those still
    running (marked ``hung`` by :meth:`abandon`).
    """

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        *,
        concurrency: int,
        rate: float,
        seed: int,
        origin: float,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.concurrency = concurrency
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.seed = seed
        self.origin = origin
        self.records: list[OpRecord] = []
        self.in_flight: dict[str, tuple[int, int, int, int, float]] = {}

    def now(self) -> float:
        """Seconds since the origin."""
        return time.monotonic() - self.origin

    async def run(self, stop: anyio.Event) -> None:
        """Run every worker until ``stop`` is set."""
        async with anyio.create_task_group() as tg:
            for n in range(self.concurrency):
                tg.start_soon(self._worker, n, stop)

    def abandon(self) -> None:
        """Record every operation still in flight as ``hung``."""
        now = self.now()
        for op, (worker, src, dst, amount, started) in self.in_flight.items():
            self.records.append(
                OpRecord(
                    op=op,
                    worker=worker,
                    src=src,
                    dst=dst,
                    amount=amount,
                    started=started,
                    ended=now,
                    outcome="hung",
                    error_type="Hung",
                )
            )
        self.in_flight.clear()

    async def _worker(self, n: int, stop: anyio.Event) -> None:
        rng = random.Random(self.seed * 100_003 + n)
        accounts = self.ledger.accounts
        seq = 0
        next_at = self.now()
        while not stop.is_set():
            seq += 1
            op = f"{self.ledger.prefix}-{n}-{seq}"
            src = rng.randint(1, accounts)
            dst = rng.randint(1, accounts - 1)
            dst = dst + 1 if dst >= src else dst
            amount = rng.randint(1, 100)
            started = self.now()
            self.in_flight[op] = (n, src, dst, amount, started)
            outcome: Outcome = "acknowledged"
            error: str | None = None
            xid: int | None = None
            timeline: str | None = None
            try:
                await self.db.run(self.ledger.transfer, op, src, dst, amount)
            except CommitOutcomeUnknown as exc:
                outcome, error, xid = "unknown", error_name(exc), exc.xid
                timeline = exc.timeline
            except Exception as exc:
                outcome, error = "failed", error_name(exc)
            if self.in_flight.pop(op, None) is None:
                return  # abandoned meanwhile: already recorded as hung
            self.records.append(
                OpRecord(
                    op=op,
                    worker=n,
                    src=src,
                    dst=dst,
                    amount=amount,
                    started=started,
                    ended=self.now(),
                    outcome=outcome,
                    error_type=error,
                    xid=xid,
                    timeline=timeline,
                )
            )
            if self.interval:
                next_at = max(next_at + self.interval, self.now())
                delay = next_at - self.now()
                if delay > 0:
                    with anyio.move_on_after(delay):
                        await stop.wait()
