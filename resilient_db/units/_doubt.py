"""Settling a lost COMMIT: a mixin of :class:`~resilient_db.units._attempt.Attempt`.

The connection died during COMMIT (or the deadline fired while it was in flight): the
outcome is committed (the unit succeeded), aborted (safe to run again) or in doubt
(``CommitOutcomeUnknown`` at once; an xid-identified transaction keeps being resolved in the
background, reported as ``commit.resolved`` and answered by ``db.commit_status``). A unit
with an operation key asks the ledger instead of ``pg_xact_status``.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from resilient_db._errors import CommitOutcomeUnknown
from resilient_db.classify import Classification
from resilient_db.policies import RetryDecision
from resilient_db.units._commit import CommitOutcome, TxnIdentity
from resilient_db.units._context import Call, UnitContext
from resilient_db.units._keys import KeyRecord
from resilient_db.units._outcome import Committed, Ended, Raise, Retry

__all__ = ["LostCommit"]

T = TypeVar("T")


class LostCommit(Generic[T]):
    """The lost-COMMIT half of an attempt (its state lives in the attempt's slots)."""

    __slots__ = ()

    ctx: UnitContext
    call: Call
    ident: TxnIdentity | None
    record: KeyRecord | None
    result: T
    wrote: bool

    def _emit(
        self,
        event: str,
        cls: Classification | None,
        exc: BaseException | None,
        *,
        outcome: str | None = None,
    ) -> None:
        raise NotImplementedError

    async def _resolve(self, cls: Classification, exc: BaseException) -> Ended[T]:
        """The connection died during COMMIT: committed, safe to retry, or in doubt."""
        ctx, call = self.ctx, self.call
        ident = self.ident
        if self.record is not None:
            return await self._resolve_key(cls, exc, self.record)
        if ident is None:
            if call.options.idempotent or call.options.read_only or not self.wrote:
                assert isinstance(exc, Exception)
                return Retry(exc, RetryDecision(category=cls.category))  # nothing to lose
            return self._in_doubt(cls, exc, "no_xid")
        task = self._resolve_later(cls, exc)
        assert task is not None
        outcome: CommitOutcome | None = None
        try:
            done, _ = await asyncio.wait((task,), timeout=max(0.0, call.remaining(ctx.clock)))
            if done:
                outcome = task.result()
        except BaseException:
            if not call.own_deadline():
                raise  # the caller cancelled: propagate at once (resolution goes on)
            outcome = None  # our deadline: in doubt now, settled in the background
        if outcome is CommitOutcome.COMMITTED:
            return Committed(self.result)
        if outcome is CommitOutcome.ABORTED:
            exc.add_note(
                f"resilient_db: the connection was lost during COMMIT; the server rolled the "
                f"transaction back (pg_xact_status({ident.xid}) = aborted), so it is safe to "
                "run again"
            )
            assert isinstance(exc, Exception)
            return Retry(exc, RetryDecision(category=cls.category))
        return self._in_doubt(cls, exc, "unknown" if outcome is not None else "pending")

    async def _resolve_key(
        self, cls: Classification, exc: BaseException, record: KeyRecord
    ) -> Ended[T]:
        """A lost COMMIT of a keyed unit: ask whichever primary answers whether the key is
        there (true across a failover); within what is left of the deadline."""
        ctx, call = self.ctx, self.call
        left = min(max(call.remaining(ctx.clock), 0.0), 30.0)
        task = asyncio.ensure_future(ctx.ledger.resolve(ctx.engine, record, timeout=left))
        state = None
        try:
            done, _ = await asyncio.wait((task,), timeout=left + 0.05)
            state = task.result() if done else None
        except BaseException:
            if not call.own_deadline():
                raise
        if state is None:
            task.cancel()
            return self._in_doubt(cls, exc, "unknown")
        outcome = "committed" if state.committed else "aborted"
        self._emit("commit.resolved", cls, exc, outcome=outcome)
        if state.committed:
            return Committed(self.result)
        assert isinstance(exc, Exception)
        return Retry(exc, RetryDecision(category=cls.category))

    def _resolve_later(
        self, cls: Classification, exc: BaseException
    ) -> asyncio.Task[CommitOutcome] | None:
        """Start (or join) the background resolution of this attempt's COMMIT."""
        ident = self.ident
        if ident is None:
            return None
        ctx, call = self.ctx, self.call
        left = call.remaining(ctx.clock)
        timeout = (min(left, 30.0) if left > 0 else 0.0) + ctx.resolve_timeout

        def report(outcome: CommitOutcome) -> None:
            self._emit("commit.resolved", cls, exc, outcome=outcome.value)

        return ctx.resolutions.start(ident, timeout=timeout, report=report)

    def _in_doubt(self, cls: Classification, exc: BaseException, why: str) -> Ended[T]:
        call = self.call
        ident = self.ident
        key = call.key
        nothing_written = call.options.idempotent or call.options.read_only or not self.wrote
        if ident is None and key is None and why == "deadline" and nothing_written:
            # Nothing in doubt: the deadline simply ended the unit.
            if isinstance(exc, Exception):
                return Retry(exc, RetryDecision(category=cls.category))  # stops: deadline
            return Raise(exc)
        if why == "deadline":
            self._resolve_later(cls, exc)
        self._emit("commit.unknown", cls, exc, outcome=why)
        name = call.options.name
        if key is not None:
            message = (
                f"the COMMIT of unit {name!r} (operation key {key!r}) was lost and no primary "
                "said within the deadline whether it committed; ask later with "
                f"ledger.lookup(engine, {key!r}), or run the unit again with the same key "
                "(it applies at most once)"
            )
        elif ident is None:
            message = (
                f"the connection was lost during COMMIT of unit {name!r} and its transaction "
                "id was not captured, so its outcome is unknown; make the unit idempotent or "
                "check the data"
            )
        else:
            message = (
                f"the COMMIT of unit {name!r} (xid {ident.xid}) "
                + (
                    "was still unanswered at the unit's deadline"
                    if why in ("deadline", "pending")
                    else "was lost and the server could not say whether it committed"
                )
                + f"; its resolution goes on in the background: await "
                f"db.commit_status({ident.xid}) (or listen for commit.resolved) before "
                "retrying, or check the data"
            )
        err = CommitOutcomeUnknown(
            message,
            xid=ident.xid if ident is not None else None,
            attempts=call.attempts,
            timeline=ident.timeline if ident is not None else None,
            key=key,
        )
        err.__cause__ = exc if isinstance(exc, Exception) else None
        return Raise(err)
