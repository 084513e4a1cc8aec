"""Settling a lost COMMIT: a mixin of :class:`~resilient_db.units._attempt.Attempt`.

The connection died during COMMIT (or the deadline fired while it was in flight): the
outcome is committed (the unit succeeded), aborted (safe to run again) or in doubt
(``CommitOutcomeUnknown`` at once). Either way the resolution runs in a task of its own and
goes on in the background after the caller heard "in doubt" (bounded: what was left of the
deadline plus ``resolve_timeout``), reported as ``commit.resolved``. An xid-identified
transaction asks ``pg_xact_status`` (answered by ``db.commit_status(xid)``); a unit with an
operation key asks the ledger whether its key is there (answered by ``ledger.lookup``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Generic, TypeVar

from resilient_db._errors import CommitOutcomeUnknown
from resilient_db.classify import Classification
from resilient_db.policies import RetryDecision
from resilient_db.units._commit import CommitOutcome, TxnIdentity
from resilient_db.units._context import Call, UnitContext
from resilient_db.units._keys import KeyRecord, KeyState, key_doubts
from resilient_db.units._outcome import Committed, Ended, Raise, Retry

__all__ = ["LostCommit"]

T = TypeVar("T")
R = TypeVar("R")

_KEY_OUTCOME = {True: CommitOutcome.COMMITTED, False: CommitOutcome.ABORTED}


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
        call = self.call
        ident = self.ident
        if self.record is not None:
            return await self._resolve_key(cls, exc, self.record)
        if ident is None:
            if call.options.idempotent or call.options.read_only or not self.wrote:
                assert isinstance(exc, Exception)
                return Retry(exc, RetryDecision(category=cls.category))  # nothing to lose
            return self._in_doubt(cls, exc, "no_xid")
        outcome = await self._wait(self._xid_later(cls, exc, ident))
        if outcome is CommitOutcome.COMMITTED:
            return Committed(self.result)
        if outcome is CommitOutcome.ABORTED:
            return self._aborted(cls, exc, f"pg_xact_status({ident.xid}) = aborted")
        return self._in_doubt(cls, exc, "unknown" if outcome is not None else "pending")

    async def _resolve_key(
        self, cls: Classification, exc: BaseException, record: KeyRecord
    ) -> Ended[T]:
        """A lost COMMIT of a keyed unit: ask whichever primary answers whether the key is
        there (true across a failover). Waited for within the deadline; in doubt then, and
        settled in the background."""
        task = self._key_later(cls, exc, record)
        state = await self._wait(task)
        if state is None:
            return self._in_doubt(cls, exc, "unknown" if task.done() else "pending")
        if state.committed:
            return Committed(self.result)
        return self._aborted(cls, exc, f"operation key {record.key!r} is not in the ledger")

    async def _wait(self, task: asyncio.Task[R]) -> R | None:
        """The resolution's answer if it came within what is left of the deadline, else
        None (it goes on in the background); the caller's cancellation propagates."""
        ctx, call = self.ctx, self.call
        try:
            done, _ = await asyncio.wait((task,), timeout=max(0.0, call.remaining(ctx.clock)))
        except BaseException:
            if not call.own_deadline():
                raise  # the caller cancelled: propagate at once (resolution goes on)
            return None  # our deadline: in doubt now, settled in the background
        return task.result() if done else None

    def _aborted(self, cls: Classification, exc: BaseException, proof: str) -> Ended[T]:
        exc.add_note(
            "resilient_db: the connection was lost during COMMIT; the server rolled the "
            f"transaction back ({proof}), so it is safe to run again"
        )
        assert isinstance(exc, Exception)
        return Retry(exc, RetryDecision(category=cls.category))

    def _budget(self) -> float:
        """How long a resolution may take: what is left of the deadline (at most 30 s) plus
        ``resolve_timeout`` (the grace after a deadline that fired during COMMIT)."""
        left = self.call.remaining(self.ctx.clock)
        return (min(left, 30.0) if left > 0 else 0.0) + self.ctx.resolve_timeout

    def _resolve_later(self, cls: Classification, exc: BaseException) -> None:
        """Start (or join) the background resolution of this attempt's COMMIT."""
        if self.record is not None:
            self._key_later(cls, exc, self.record)
        elif self.ident is not None:
            self._xid_later(cls, exc, self.ident)

    def _xid_later(
        self, cls: Classification, exc: BaseException, ident: TxnIdentity
    ) -> asyncio.Task[CommitOutcome]:
        def report(outcome: CommitOutcome) -> None:
            self._emit("commit.resolved", cls, exc, outcome=outcome.value)

        return self.ctx.resolutions.start(ident, timeout=self._budget(), report=report)

    def _key_later(
        self, cls: Classification, exc: BaseException, record: KeyRecord
    ) -> asyncio.Task[KeyState | None]:
        ctx, timeout = self.ctx, self._budget()

        def work() -> Awaitable[KeyState | None]:
            return ctx.ledger.resolve(ctx.engine, record, timeout=timeout)

        def report(state: KeyState | None) -> None:
            outcome = CommitOutcome.UNKNOWN if state is None else _KEY_OUTCOME[state.committed]
            self._emit("commit.resolved", cls, exc, outcome=outcome.value)

        doubts = key_doubts(ctx.engine)
        task = doubts.start((ctx.ledger.name, record.key), record.xid, record, work, report)
        ctx.resolutions.track(task)  # Database.aclose() waits for it
        return task

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
                f"the COMMIT of unit {name!r} (operation key {key!r}) "
                + (
                    "was still unanswered at the unit's deadline; its resolution goes on in "
                    "the background (listen for commit.resolved): await "
                    f"ledger.lookup(engine, {key!r}) for the answer (it waits for that "
                    "resolution)"
                    if why in ("deadline", "pending")
                    else "was lost and no primary said in time whether it committed; ask "
                    f"later with await ledger.lookup(engine, {key!r})"
                )
                + ", or run the unit again with the same key (it applies at most once)"
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
