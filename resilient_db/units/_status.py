"""``Database``'s questions about the server: what became of a COMMIT, is it healthy."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from resilient_db._validate import config_error
from resilient_db.engine import engine_health_check
from resilient_db.units._commit import CommitOutcome, transaction_status
from resilient_db.units._context import UnitContext
from resilient_db.units._options import _seconds

__all__ = ["StatusMixin"]


class StatusMixin:
    """``commit_status`` and ``health_check`` of :class:`~resilient_db.Database`."""

    engine: AsyncEngine
    _ctx: UnitContext

    async def commit_status(
        self,
        xid: int | None = None,
        *,
        key: object = None,
        timeline: str | None = None,
        timeout: float = 5.0,
    ) -> CommitOutcome:
        """What became of transaction ``xid`` — or of the unit with operation ``key`` — from
        :class:`CommitOutcomeUnknown` or a ``commit.unknown`` event: ``committed``,
        ``aborted`` or ``unknown``.

        A resolution still running in the background (a COMMIT in doubt at a deadline) is
        waited for (at most ``timeout``); a settled one is answered from memory; otherwise
        ``pg_xact_status`` (for a key: the ledger, on a primary) is asked on a fresh
        connection. Pass the ``timeline`` the exception carries: after a failover the new
        primary may have given the same xid number to another transaction, and the answer
        is then ``unknown`` (a key means the same on every primary).
        """
        _seconds("Database.commit_status", "timeout", timeout, none_ok=False, fix="timeout=5.0")
        if key is not None and xid is None:
            return await self._key_status(key, timeout)
        if key is not None or isinstance(xid, bool) or not isinstance(xid, int) or xid < 0:
            raise config_error(
                "Database.commit_status",
                "xid",
                xid,
                "a non-negative int (a transaction id), or None with key=...",
                "pass CommitOutcomeUnknown.xid, or key=CommitOutcomeUnknown.key",
                wrong_type=key is None and (not isinstance(xid, int) or isinstance(xid, bool)),
            )
        known = self._ctx.resolutions.lookup(xid, timeline)
        if isinstance(known, CommitOutcome):
            return known
        if known is not None:
            done, _ = await asyncio.wait((known,), timeout=timeout)
            return known.result() if done else CommitOutcome.UNKNOWN
        return await transaction_status(self.engine, xid, timeout=timeout, timeline=timeline)

    async def _key_status(self, key: object, timeout: float) -> CommitOutcome:
        ledger = self._ctx.ledger
        try:
            state = await ledger.lookup(self.engine, ledger.normalize_key(key), timeout=timeout)
        except TimeoutError:
            return CommitOutcome.UNKNOWN
        return CommitOutcome.COMMITTED if state.committed else CommitOutcome.ABORTED

    async def health_check(self) -> None:
        """A probe of the server: a fresh connection (never a pooled one), SELECT 1, bounded."""
        await engine_health_check(self.engine)()
