"""Commit-outcome resolution (DESIGN §7).

Before COMMIT of a transaction that wrote, read the transaction id and the backend pid (one
round trip). If the connection dies during COMMIT, ask a fresh connection
``pg_xact_status(xid)``: ``committed`` → the unit succeeded; ``aborted`` → safe to retry;
``in progress`` → the old backend is still alive behind a dead socket: terminate it by pid
and ask again; ``NULL``/error → unknown (e.g. the xid was lost in a failover).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

__all__ = [
    "CommitOutcome",
    "TxnIdentity",
    "capture_identity",
    "resolve_commit",
    "transaction_status",
]

logger = logging.getLogger("resilient_db")

# The WAL timeline (the first 8 hex digits of the current WAL file name) tells a resolution
# whether it talks to the same history: a standby promoted after a failover starts a new
# timeline and may hand out the *same* xid numbers again to other transactions.
_TIMELINE = "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
_CAPTURE = text(f"SELECT pg_current_xact_id_if_assigned()::text, pg_backend_pid(), {_TIMELINE}")
_CAPTURE_NO_TIMELINE = text("SELECT pg_current_xact_id_if_assigned()::text, pg_backend_pid(), NULL")
_STATUS = text(
    "SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8)), "
    f"CASE WHEN pg_is_in_recovery() THEN NULL ELSE {_TIMELINE} END"
)
_STATUS_NO_TIMELINE = text(
    "SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8)), "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE '' END"
)
# Only the backend that still holds *this* transaction (never a reused pid, never a process
# on another server after a failover).
_TERMINATE = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE pid = :pid AND backend_xid = CAST(CAST(:xid32 AS text) AS xid)"
)


class CommitOutcome(StrEnum):
    """What the server did with a transaction whose COMMIT reply was lost."""

    COMMITTED = "committed"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TxnIdentity:
    """The server-side identity of a writing transaction, captured before COMMIT."""

    xid: int
    backend_pid: int
    #: WAL timeline of the server when the xid was captured (``None``: unknown).
    timeline: str | None = None


async def capture_identity(
    session: AsyncSession, *, with_timeline: bool = True
) -> TxnIdentity | None:
    """One round trip: the transaction's xid (``None`` when it wrote nothing), backend pid
    and WAL timeline (only ``with_timeline``: a server without WAL functions would fail the
    statement, and with it the caller's transaction)."""
    row = (await session.execute(_CAPTURE if with_timeline else _CAPTURE_NO_TIMELINE)).one()
    if row[0] is None:
        return None
    return TxnIdentity(xid=int(row[0]), backend_pid=int(row[1]), timeline=row[2])


async def _status(engine: AsyncEngine, ident: TxnIdentity) -> str | None:
    """``pg_xact_status`` of ``ident``; ``"other timeline"`` when the server's history is not
    the one the xid was assigned in, ``"in recovery"`` on a standby (not authoritative)."""
    async with engine.connect() as conn:
        query = _STATUS if ident.timeline is not None else _STATUS_NO_TIMELINE
        row: Any = (await conn.execute(query, {"xid": str(ident.xid)})).one()
        await conn.rollback()
    value, timeline = row
    if timeline is None:
        return "in recovery"
    if ident.timeline is not None and timeline != ident.timeline:
        return "other timeline"
    return None if value is None else str(value)


async def _terminate(engine: AsyncEngine, ident: TxnIdentity) -> None:
    async with engine.connect() as conn:
        await conn.execute(_TERMINATE, {"pid": ident.backend_pid, "xid32": ident.xid & 0xFFFFFFFF})
        await conn.rollback()


def _transient(exc: BaseException) -> bool:
    from resilient_db.classify import default_classifier

    return default_classifier().classify(exc).retryable


async def resolve_commit(
    engine: AsyncEngine, ident: TxnIdentity, *, timeout: float, poll: float = 0.05
) -> CommitOutcome:
    """Ask the server what became of ``ident``; at most ``timeout`` seconds.

    Runs on fresh pool connections (the one that failed was invalidated). Never raises for
    database errors: they make the outcome ``UNKNOWN``.
    """
    outcome = CommitOutcome.UNKNOWN
    terminated = False
    wait = poll
    with anyio.move_on_after(max(timeout, 0.0)):
        while True:
            try:
                status = await _status(engine, ident)
            except Exception as exc:
                if _transient(exc):  # the server is not reachable yet: keep asking
                    logger.info(
                        "commit.resolve_retry",
                        extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
                    )
                    await anyio.sleep(wait)  # poll with a deadline (the enclosing scope)
                    wait = min(wait * 2, 0.5)
                    continue
                logger.warning(
                    "commit.resolve_failed",
                    extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
                )
                break  # the server answered but cannot tell (e.g. xid from another timeline)
            if status == "committed":
                outcome = CommitOutcome.COMMITTED
                break
            if status == "aborted":
                outcome = CommitOutcome.ABORTED
                break
            if status == "in recovery":
                await anyio.sleep(wait)  # a standby: wait (bounded) for a primary to answer
                wait = min(wait * 2, 0.5)
                continue
            if status == "other timeline":
                logger.warning("commit.timeline_changed", extra={"xid": ident.xid})
                break  # a failover: this xid number may name another transaction here
            if status != "in progress":
                break  # NULL: too old or unknown here
            # The old backend still holds the transaction open behind a dead socket.
            if not terminated:
                try:
                    await _terminate(engine, ident)
                except Exception as exc:
                    logger.info(
                        "commit.terminate_failed",
                        extra={"xid": ident.xid, "error_type": type(exc).__qualname__},
                    )
                else:
                    terminated = True
            await anyio.sleep(poll)  # poll with a deadline (the enclosing scope)
    return outcome


async def transaction_status(
    engine: AsyncEngine, xid: int, *, timeout: float, timeline: str | None = None
) -> CommitOutcome:
    """``pg_xact_status(xid)`` as a :class:`CommitOutcome` (``UNKNOWN`` on any doubt, and
    when ``timeline`` is given and the server is on another one)."""
    status: str | None = None
    with anyio.move_on_after(timeout):
        try:
            status = await _status(engine, TxnIdentity(xid=xid, backend_pid=0, timeline=timeline))
        except Exception as exc:
            logger.info(
                "commit.status_failed", extra={"xid": xid, "error_type": type(exc).__qualname__}
            )
    if status == "committed":
        return CommitOutcome.COMMITTED
    if status == "aborted":
        return CommitOutcome.ABORTED
    return CommitOutcome.UNKNOWN
